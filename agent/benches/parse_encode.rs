//! Parse + map + encode of the real Flink 2.3 TaskManager exposition (778 lines), the work the
//! agent does once per scrape. Run: `cargo bench -p demeter-agent --bench parse_encode`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use demeter_agent::batch::BatchBuilder;
use demeter_agent::prom_text;
use demeter_agent::select::Selector;
use demeter_common::UnixMillis;
use demeter_common::wire::{ContainerSample, Sample, Source};
use std::hint::black_box;

const FIXTURE: &str = include_str!("../tests/fixtures/flink-2.3-taskmanager.prom");

fn source() -> Source {
    Source {
        namespace: "flink".into(),
        deployment: "ratejob".into(),
        job_id: None,
        taskmanager_id: "ratejob-taskmanager-1-1".into(),
        pod: "ratejob-taskmanager-1-1".into(),
        host: "node-1".into(),
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("taskmanager_exposition");
    g.throughput(Throughput::Bytes(FIXTURE.len() as u64));
    g.bench_function("parse", |b| {
        b.iter(|| prom_text::parse(black_box(FIXTURE)).filter(|l| l.is_ok()).count())
    });
    let mut selector = Selector::new();
    let mut t = 1_700_000_000_000i64;
    g.bench_function("parse_map", |b| {
        b.iter(|| {
            t += 1000;
            selector.select(black_box(FIXTURE), UnixMillis(t)).samples.len()
        })
    });
    let mut builder = BatchBuilder::new(source(), "0123456789abcdef");
    g.bench_function("parse_map_encode", |b| {
        b.iter(|| {
            t += 1000;
            let now = UnixMillis(t);
            let sel = selector.select(black_box(FIXTURE), now);
            let mut samples = sel.samples;
            samples
                .push(Sample::Container(ContainerSample { origin: "cgroup".into(), ..Default::default() }));
            let batch = builder.build(sel.job_id, samples, now);
            builder.entry(&batch).payload.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
