package demeter.testjob;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;
import java.util.zip.CRC32;

import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.AggregateFunction;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.api.java.tuple.Tuple4;
import org.apache.flink.metrics.Histogram;
import org.apache.flink.runtime.metrics.DescriptiveStatisticsHistogram;
import org.apache.flink.runtime.state.FunctionInitializationContext;
import org.apache.flink.runtime.state.FunctionSnapshotContext;
import org.apache.flink.streaming.api.checkpoint.CheckpointedFunction;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;
import org.apache.flink.streaming.api.windowing.assigners.TumblingProcessingTimeWindows;

/**
 * Demeter's test job: a source whose input follows a workload trace (or a constant rate), a
 * per-record "work" operator and a keyed window, with exact counts of the events taken in and
 * put out that survive rescales and restarts, so that an autoscaler has something real to scale
 * and a test can check that nothing was lost.
 *
 * <p>Pipeline (three vertices):
 *
 * <ol>
 *   <li>{@code Source: rate-source}: a {@link TraceSource}. Record {@code n} is due at a fixed
 *       instant of the trace's timeline; a record that the job cannot take in yet is backlog, not
 *       dropped. Metrics: {@code pendingRecords} (FLIP-33: due but not yet emitted) and
 *       {@code eventsIn} (emitted, checkpointed).
 *   <li>{@code work}: parses the record's payload (a vehicle position), hashes it, runs a busy
 *       loop of {@code --work} iterations and waits {@code --lookup-us} microseconds per record,
 *       an emulated blocking enrichment call (a remote lookup: the thread waits, the CPU does
 *       not, so capacity grows with parallelism even on a small machine). Metric
 *       {@code latencyHistogram}: now − the record's due time, in ms, so a backlog shows.
 *   <li>keyBy → {@code window-count} (tumbling processing-time count per key) → {@code tally}
 *       (adds the window counts up in checkpointed operator state; metric {@code eventsOut}) →
 *       {@code discard} sink.
 * </ol>
 *
 * <p>Once the trace has ended (with {@code --trace-end}), the sum of {@code eventsOut} over the
 * tally subtasks equals the sum of {@code eventsIn} over the source subtasks when no record was
 * lost or duplicated, across any number of rescales and restarts from checkpoints.
 *
 * <p>Arguments:
 *
 * <pre>
 *   --rate N                 total records/s (constant mode; default 1000)
 *   --work N                 busy-loop iterations per record in "work" (default 1000)
 *   --lookup-us N            emulated blocking lookup per record in "work", microseconds (default 0)
 *   --parallelism P          parallelism of all operators (default: the submission's, e.g. the
 *                            REST API's "parallelism" or the cluster's parallelism.default)
 *   --source-parallelism P, --work-parallelism P, --window-parallelism P   per operator
 *   --max-parallelism M      upper bound for rescaling (default: Flink's, 128)
 *   --splits N               logical source splits, at least the largest source parallelism
 *                            (default 16)
 *   --keys N                 number of distinct keys (default 128)
 *   --window-ms N            window size (default 1000)
 *   --name NAME              job name (default demeter-ratejob)
 *   --trace FILE             trace-driven mode: "timestamp|value" CSV at a 1 s step; the
 *                            total rate at trace second s is value(s) * scale
 *   --speedup K              trace seconds per wall-clock second (default 1)
 *   --scale X                multiplier for the trace's values (default 1)
 *   --trace-offset S         start S trace seconds into the trace (default 0)
 *   --trace-end S            stop at trace second S (absolute, > offset); default: wrap around
 *   --trace-anchor-ms T      epoch ms at which the trace (at its offset) starts; default:
 *                            submission time. Pass the first submission's value when
 *                            resubmitting from a savepoint to continue the same timeline.
 * </pre>
 *
 * <p>The schedule is a pure function of the wall clock and the anchor, so restarts and rescales
 * continue the same timeline; the records missed while the job was down are a backlog that the
 * source catches up on.
 */
public final class RateJob {

    private RateJob() {}

    public static void main(String[] args) throws Exception {
        Args a = Args.parse(args);
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        if (a.parallelism > 0) {
            env.setParallelism(a.parallelism);
        }
        if (a.maxParallelism > 0) {
            env.setMaxParallelism(a.maxParallelism);
        }

        long anchor = a.traceAnchorMs > 0 ? a.traceAnchorMs : System.currentTimeMillis();
        TraceSchedule schedule;
        String description;
        if (a.trace != null) {
            int[] values = readTrace(a.trace);
            double end = a.traceEnd >= 0 ? a.traceEnd : Double.NaN;
            schedule = new TraceSchedule(values, a.scale, a.speedup, a.traceOffset, end, anchor);
            long total = schedule.totalCount();
            description = String.format("trace %s (%d s, offset %d, end %s, speedup %s, scale %s, anchor %d, %s records)",
                    a.trace, values.length, a.traceOffset, a.traceEnd >= 0 ? Long.toString(a.traceEnd) : "wrap",
                    a.speedup, a.scale, anchor, total >= 0 ? Long.toString(total) : "unbounded");
        } else {
            schedule = TraceSchedule.constant(a.rate, anchor);
            description = "rate " + a.rate + "/s";
        }

        var events = env.fromSource(
                        new TraceSource(schedule, a.splits, a.keys), WatermarkStrategy.noWatermarks(), "rate-source")
                .uid("rate-source");
        if (a.sourceParallelism > 0) {
            events.setParallelism(a.sourceParallelism);
        }

        var worked = events.map(new Work(a.work, a.lookupMicros))
                .name("work")
                .uid("work")
                .startNewChain();
        if (a.workParallelism > 0) {
            worked.setParallelism(a.workParallelism);
        }

        var windowed = worked.keyBy(event -> event.f0)
                .window(TumblingProcessingTimeWindows.of(Duration.ofMillis(a.windowMs)))
                .aggregate(new Count())
                .name("window-count")
                .uid("window-count");
        var tallied = windowed.map(new Tally()).name("tally").uid("tally");
        var sink = tallied.sinkTo(new DiscardingSink<>()).name("discard").uid("discard");
        if (a.windowParallelism > 0) {
            windowed.setParallelism(a.windowParallelism);
            tallied.setParallelism(a.windowParallelism);
            sink.setParallelism(a.windowParallelism);
        }

        System.out.println("RateJob: " + description + ", work " + a.work + ", lookup " + a.lookupMicros
                + " us, parallelism " + (a.parallelism > 0 ? Integer.toString(a.parallelism) : "default"));
        env.execute(a.name);
    }

    /**
     * The per-record operator: parses the vehicle position, hashes it, busy-loops {@code work}
     * iterations and waits {@code lookupMicros} per record. Emits {@code (key, due time)}.
     */
    static final class Work
            extends RichMapFunction<Tuple4<Integer, Long, Long, String>, Tuple2<Integer, Long>> {
        private static final long serialVersionUID = 1L;
        /** Waits shorter than this are accumulated (timer resolution) and taken together. */
        private static final long MIN_PARK_NANOS = TimeUnit.MILLISECONDS.toNanos(1);
        private final int iterations;
        private final long lookupNanos;
        private transient Histogram latency;
        private transient CRC32 crc;
        /** Lookup time owed: records whose wait has not been taken yet. */
        private transient long owedNanos;
        // Keeps the results alive so the JIT cannot drop the work.
        private transient long sink;

        Work(int iterations, long lookupMicros) {
            this.iterations = iterations;
            this.lookupNanos = TimeUnit.MICROSECONDS.toNanos(lookupMicros);
        }

        @Override
        public void open(OpenContext context) {
            latency = getRuntimeContext().getMetricGroup()
                    .histogram("latencyHistogram", new DescriptiveStatisticsHistogram(500));
            crc = new CRC32();
        }

        @Override
        public Tuple2<Integer, Long> map(Tuple4<Integer, Long, Long, String> event) {
            // Parse "vehicle,speed,lat,lon" and derive something from it.
            String[] f = event.f3.split(",");
            double speed = Double.parseDouble(f[1]);
            double lat = Math.toRadians(Double.parseDouble(f[2]));
            double lon = Math.toRadians(Double.parseDouble(f[3]));
            double dist = Math.acos(Math.min(1, Math.sin(lat) * Math.sin(0.8412) + Math.cos(lat) * Math.cos(0.8412)
                    * Math.cos(lon - 0.2013)));
            crc.reset();
            crc.update(event.f3.getBytes(StandardCharsets.UTF_8));
            long h = crc.getValue() ^ Double.doubleToLongBits(speed * dist);
            for (int i = 0; i < iterations; i++) {
                h ^= h << 13;
                h ^= h >>> 7;
                h ^= h << 17;
            }
            sink += h;
            if (lookupNanos > 0) {
                owedNanos += lookupNanos;
                if (owedNanos >= MIN_PARK_NANOS) {
                    long t0 = System.nanoTime();
                    LockSupport.parkNanos(owedNanos);
                    owedNanos -= System.nanoTime() - t0;
                }
            }
            latency.update(System.currentTimeMillis() - event.f2);
            return Tuple2.of(event.f0, event.f2);
        }
    }

    /** Counts the records of a window: emits {@code (key, count)}. */
    static final class Count implements AggregateFunction<Tuple2<Integer, Long>, Tuple2<Integer, Long>, Tuple2<Integer, Long>> {
        private static final long serialVersionUID = 1L;

        @Override
        public Tuple2<Integer, Long> createAccumulator() {
            return Tuple2.of(0, 0L);
        }

        @Override
        public Tuple2<Integer, Long> add(Tuple2<Integer, Long> value, Tuple2<Integer, Long> acc) {
            return Tuple2.of(value.f0, acc.f1 + 1);
        }

        @Override
        public Tuple2<Integer, Long> getResult(Tuple2<Integer, Long> acc) {
            return acc;
        }

        @Override
        public Tuple2<Integer, Long> merge(Tuple2<Integer, Long> a, Tuple2<Integer, Long> b) {
            return Tuple2.of(a.f0, a.f1 + b.f1);
        }
    }

    /**
     * Adds up the window counts: the records that made it through the whole pipeline. The sum is
     * operator state, checkpointed, and redistributed on rescale (each subtask restores the sum
     * of the parts it is given), so the total over the subtasks is exact across restarts.
     */
    static final class Tally extends RichMapFunction<Tuple2<Integer, Long>, Tuple2<Integer, Long>>
            implements CheckpointedFunction {
        private static final long serialVersionUID = 1L;
        private transient ListState<Long> state;
        private transient volatile long count;

        @Override
        public void open(OpenContext context) {
            getRuntimeContext().getMetricGroup().gauge("eventsOut", () -> count);
        }

        @Override
        public Tuple2<Integer, Long> map(Tuple2<Integer, Long> windowCount) {
            count += windowCount.f1;
            return windowCount;
        }

        @Override
        public void snapshotState(FunctionSnapshotContext context) throws Exception {
            state.update(List.of(count));
        }

        @Override
        public void initializeState(FunctionInitializationContext context) throws Exception {
            state = context.getOperatorStateStore().getListState(new ListStateDescriptor<>("events-out", Types.LONG));
            long restored = 0;
            for (Long part : state.get()) {
                restored += part;
            }
            count = restored;
        }
    }

    /** Reads the value column of a "timestamp|value" CSV; lines that do not parse are skipped. */
    static int[] readTrace(String path) throws IOException {
        List<Integer> values = new ArrayList<>();
        for (String line : Files.readAllLines(Paths.get(path), StandardCharsets.UTF_8)) {
            String[] parts = line.trim().split("[|,]");
            if (parts.length < 2) {
                continue;
            }
            try {
                values.add((int) Math.round(Double.parseDouble(parts[1].trim())));
            } catch (NumberFormatException header) {
                // the header line
            }
        }
        if (values.isEmpty()) {
            throw new IllegalArgumentException("no timestamp|value rows in " + path);
        }
        int[] out = new int[values.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = values.get(i);
        }
        return out;
    }

    /** Command-line arguments. */
    static final class Args {
        double rate = 1000;
        int work = 1000;
        long lookupMicros;
        int parallelism;
        int sourceParallelism;
        int workParallelism;
        int windowParallelism;
        int maxParallelism;
        int splits = 16;
        int keys = 128;
        long windowMs = 1000;
        String name = "demeter-ratejob";
        String trace;
        double speedup = 1;
        double scale = 1;
        long traceOffset;
        long traceEnd = -1;
        long traceAnchorMs;

        static Args parse(String[] argv) {
            Args a = new Args();
            for (int i = 0; i < argv.length; i += 2) {
                String key = argv[i];
                if (i + 1 >= argv.length) {
                    throw new IllegalArgumentException(key + " needs a value");
                }
                String v = argv[i + 1];
                switch (key) {
                    case "--rate": a.rate = Double.parseDouble(v); break;
                    case "--work": a.work = Integer.parseInt(v); break;
                    case "--lookup-us": a.lookupMicros = Long.parseLong(v); break;
                    case "--parallelism": a.parallelism = Integer.parseInt(v); break;
                    case "--source-parallelism": a.sourceParallelism = Integer.parseInt(v); break;
                    case "--work-parallelism": a.workParallelism = Integer.parseInt(v); break;
                    case "--window-parallelism": a.windowParallelism = Integer.parseInt(v); break;
                    case "--max-parallelism": a.maxParallelism = Integer.parseInt(v); break;
                    case "--splits": a.splits = Integer.parseInt(v); break;
                    case "--keys": a.keys = Integer.parseInt(v); break;
                    case "--window-ms": a.windowMs = Long.parseLong(v); break;
                    case "--name": a.name = v; break;
                    case "--trace": a.trace = v; break;
                    case "--speedup": a.speedup = Double.parseDouble(v); break;
                    case "--scale": a.scale = Double.parseDouble(v); break;
                    case "--trace-offset": a.traceOffset = Long.parseLong(v); break;
                    case "--trace-end": a.traceEnd = Long.parseLong(v); break;
                    case "--trace-anchor-ms": a.traceAnchorMs = Long.parseLong(v); break;
                    default: throw new IllegalArgumentException("unknown argument " + key);
                }
            }
            if (a.rate <= 0 || a.work < 0 || a.lookupMicros < 0 || a.parallelism < 0 || a.splits < 1 || a.keys < 1
                    || a.windowMs < 1) {
                throw new IllegalArgumentException("need --rate > 0, --work >= 0, --lookup-us >= 0, --parallelism >= 1, "
                        + "--splits >= 1, --keys >= 1, --window-ms >= 1");
            }
            return a;
        }
    }
}
