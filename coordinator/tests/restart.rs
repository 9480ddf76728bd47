//! Crash and restart of the coordinator process with a real nats-server and the SQLite store.
//!
//! - `sigkill_mid_run_loses_no_batch_and_restores_the_controller`: the coordinator is killed
//!   with SIGKILL while it processes a stream of batches (and, when the controller decided to
//!   scale, while the reconfiguration is in flight); batches keep arriving while it is down. After
//!   the restart every batch has been absorbed exactly once (one observation per second of
//!   data, none twice), the durable consumer has nothing pending, the controller resumed from
//!   its stored state, and no reconfiguration id was applied twice.
//! - `an_interrupted_reconfiguration_is_reconciled_not_reapplied_*`: the store holds what a crash
//!   in the middle of a reconfiguration leaves (an intent without outcome and the snapshot that
//!   has it in flight); on start the coordinator asks the backend what runs and records the
//!   outcome, and never calls `reconfigure` again.

mod common;

use async_nats::jetstream;
use common::*;
use demeter_common::{JobConfig, UnixMillis};
use demeter_coordinator::backend::JobKey;
use demeter_coordinator::backend::file::FileBackend;
use demeter_coordinator::runtime::config::StreamConfig;
use demeter_coordinator::runtime::ingest::ensure_stream;
use demeter_coordinator::runtime::store::{Checkpoint, Intent, IntentKind, SnapshotRow, StateBlob, Store};
use demeter_core::controller::{Controller, ControllerConfig, ReconfigKind, Reconfiguration};
use demeter_testkit::{NatsServer, wait_until};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn job() -> JobKey {
    JobKey::new("flink", "cars")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_loses_no_batch_and_restores_the_controller() {
    let nats = NatsServer::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fb_dir = dir.path().join("fb");
    let fb = FileBackend::new(fb_dir.clone()).unwrap();
    fb.write_config(&job(), &small_config()).unwrap();
    let port = api_port();
    let cfg = dir.path().join("coordinator.toml");
    std::fs::write(&cfg, config_toml(&nats.url(), port, &data, "apply", &fb_dir, "4s", "")).unwrap();
    let log = dir.path().join("coordinator.log");

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    ensure_stream(&js, &StreamConfig::default()).await.unwrap();

    let mut coord = Coordinator::start(&cfg, port, &log);
    coord.wait_ready(Duration::from_secs(20));

    // 150 seconds of one TaskManager, replayed fast: event time is 200 s in the past. From
    // second 20 to 89 the job is overloaded (p95 far above the bound), which makes the
    // controller scale up; afterwards it is healthy.
    let t0 = UnixMillis::now().0 - 200_000;
    let total: u64 = 150;
    let at = |i: u64| UnixMillis(t0 + i as i64 * 1000);
    let make = |i: u64| batch("flink", "cars", "cars-tm-1", "run-1", i, at(i), 2000.0, (20..90).contains(&i));

    // Phase 1: publish while the coordinator runs, and kill it mid-run: as soon as a
    // reconfiguration is in flight (the file backend journals it, then takes 4 s), or after
    // enough seconds were absorbed.
    let mut published = 0u64;
    let mut killed_at = None;
    let started = Instant::now();
    while published < total {
        publish(&js, &make(published)).await;
        published += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
        if published.is_multiple_of(5) {
            let in_flight = !fb.journal(&job()).unwrap().is_empty();
            let (_, v) = coord.get("/api/v1/jobs/flink/cars");
            let absorbed = v["observations"].as_u64().unwrap_or(0);
            if in_flight || absorbed >= 100 || started.elapsed() > Duration::from_secs(60) {
                coord.kill9();
                killed_at = Some((published, absorbed, in_flight));
                break;
            }
        }
    }
    let (published_before_kill, absorbed_seen, reconfig_in_flight) =
        killed_at.expect("the coordinator was killed mid-run");

    // What the crash left in the store.
    let (durable_obs, durable_samples, open_intents) = {
        let conn = db(&data);
        let obs = count(&conn, "SELECT COALESCE(MAX(observations), 0) FROM controller_state");
        let state: String = conn.query_row("SELECT state FROM controller_state", [], |r| r.get(0)).unwrap();
        let state: serde_json::Value = serde_json::from_str(&state).unwrap();
        let samples = state["samples"].as_array().map_or(0, |a| a.len());
        let open = count(
            &conn,
            "SELECT COUNT(*) FROM intents i WHERE NOT EXISTS (SELECT 1 FROM outcomes o
             WHERE o.namespace = i.namespace AND o.name = i.name AND o.kind = i.kind AND o.id = i.id)",
        );
        (obs as u64, samples, open)
    };
    assert!(durable_obs > 0, "nothing was persisted before the kill");
    assert!(
        durable_obs < published_before_kill,
        "the kill was not mid-run: {durable_obs} of {published_before_kill} seconds persisted"
    );
    if reconfig_in_flight {
        assert_eq!(
            open_intents,
            1,
            "a reconfiguration was in flight, so its intent has no outcome yet; journal {:?}\n{}",
            fb.journal(&job()).unwrap(),
            coord.log_tail(40)
        );
    }

    // Deliveries the dead process never acknowledged.
    let unacked_at_kill = consumer_state(&js).await.1;

    // Phase 2: the coordinator is down; agents keep publishing.
    while published < total {
        publish(&js, &make(published)).await;
        published += 1;
    }

    // Restart: the durable consumer resumes, the state is restored.
    let mut coord = Coordinator::start(&cfg, port, &log);
    coord.wait_ready(Duration::from_secs(30));
    if unacked_at_kill > 0 {
        let rewound = wait_until(Duration::from_secs(10), || {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            log.contains("rewound the consumer") || log.contains("recreating the consumer from its ack floor")
        });
        assert!(rewound, "{unacked_at_kill} unacknowledged deliveries, but the consumer was not rewound");
    }
    let restored =
        wait_until(Duration::from_secs(10), || coord.get("/api/v1/jobs/flink/cars").1["restored"] == true);
    assert!(restored, "the controller was not restored from the store:\n{}", coord.log_tail(40));

    let caught_up = wait_until(Duration::from_secs(60), || {
        let (_, v) = coord.get("/api/v1/jobs/flink/cars");
        v["observations"].as_u64() == Some(total) && v["pending_acks"].as_u64() == Some(0)
    });
    let (_, v) = coord.get("/api/v1/jobs/flink/cars");
    assert!(caught_up, "not every second was absorbed once: {}\n{}", v["observations"], coord.log_tail(40));

    // Nothing pending in the durable consumer: every batch was delivered and acknowledged.
    let acked = {
        let js = js.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = consumer_state(&js).await;
            if s.0 == 0 && s.1 == 0 {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(acked, "consumer still has pending batches: {:?}", consumer_state(&js).await);

    // Let in-flight work finish, then stop cleanly (final checkpoint).
    wait_until(Duration::from_secs(20), || {
        let (_, v) = coord.get("/api/v1/jobs/flink/cars");
        v["status"]["in_flight"].is_null()
    });
    let st = coord.stop();
    assert!(st.success(), "exit status {st}:\n{}", coord.log_tail(40));

    let conn = db(&data);
    // One observation per second of data, none counted twice, none lost.
    assert_eq!(
        count(&conn, "SELECT SUM(n) FROM observations WHERE namespace = 'flink' AND name = 'cars'"),
        total as i64
    );
    assert_eq!(count(&conn, "SELECT observations FROM controller_state"), total as i64);
    // The model kept what it had learnt before the crash, and every sample it holds is on record.
    let state: String = conn.query_row("SELECT state FROM controller_state", [], |r| r.get(0)).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let samples = state["samples"].as_array().map_or(0, |a| a.len());
    assert!(samples >= durable_samples, "samples went from {durable_samples} to {samples}");
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM samples") as usize, samples, "every sample is stored once");

    // No reconfiguration applied twice, and each one has an outcome.
    let journal = fb.journal(&job()).unwrap();
    let mut per_id: BTreeMap<u64, usize> = BTreeMap::new();
    for e in &journal {
        *per_id.entry(e.id).or_default() += 1;
    }
    assert!(per_id.values().all(|n| *n == 1), "a reconfiguration was applied twice: {journal:?}");
    let open = count(
        &conn,
        "SELECT COUNT(*) FROM intents i WHERE NOT EXISTS (SELECT 1 FROM outcomes o
         WHERE o.namespace = i.namespace AND o.name = i.name AND o.kind = i.kind AND o.id = i.id)",
    );
    assert_eq!(open, 0, "every intent has an outcome after the restart");
    for id in per_id.keys() {
        let ok: bool = conn
            .query_row("SELECT ok FROM outcomes WHERE kind = 'reconfigure' AND id = ?1", [*id as i64], |r| {
                r.get(0)
            })
            .unwrap_or_else(|e| panic!("no outcome for applied reconfiguration {id}: {e}"));
        assert!(ok, "reconfiguration {id} reached the backend, so it counts as applied");
    }
    // The controller runs what the backend runs.
    let running: JobConfig =
        serde_json::from_slice(&std::fs::read(fb.config_path(&job()).unwrap()).unwrap()).unwrap();
    let current: JobConfig = serde_json::from_value(state["current"].clone()).unwrap();
    assert_eq!(current, running);
    eprintln!(
        "killed after {published_before_kill} batches ({absorbed_seen} absorbed, {durable_obs} durable, \
         {unacked_at_kill} unacknowledged, reconfiguration in flight: {reconfig_in_flight}); \
         {} reconfiguration(s) applied",
        journal.len()
    );
}

/// What a crash in the middle of a reconfiguration leaves in the store.
async fn crashed_mid_reconfiguration(data: &std::path::Path, from: JobConfig, to: JobConfig) {
    let mut cc = ControllerConfig::default();
    let text = config_toml("nats://127.0.0.1:1", 1, data, "apply", data, "0s", "");
    let parsed: toml::Value = toml::from_str(&text).unwrap();
    cc.search_space = parsed["controller"]["search_space"].clone().try_into().unwrap();
    cc.quota = parsed["controller"]["quota"].clone().try_into().unwrap();
    let now = UnixMillis::now();
    let mut c = Controller::new(cc, from, now).unwrap();
    let decision = c.recommend(now).decision;
    let r = Reconfiguration { id: 7, from, to, kind: ReconfigKind::Redeploy, decision };
    let mut state = serde_json::to_value(c.snapshot()).unwrap();
    state["in_flight"] = serde_json::json!({ "reconfiguration": r, "since": now });
    state["next_id"] = serde_json::json!(8);
    let store = Store::open_in(data);
    let cp = Checkpoint {
        intents: vec![Intent {
            kind: IntentKind::Reconfigure,
            id: 7,
            created_at: now,
            body: serde_json::to_value(&r).unwrap(),
        }],
        snapshot: Some(SnapshotRow {
            state: StateBlob::Json(state.to_string()),
            last_obs_at: None,
            observations: 0,
            saved_at: now,
        }),
        ..Default::default()
    };
    store.commit(&job(), cp).await.map_err(|e| e.0).unwrap();
}

async fn reconcile_case(backend_runs_target: bool) {
    let nats = NatsServer::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fb_dir = dir.path().join("fb");
    let fb = FileBackend::new(fb_dir.clone()).unwrap();
    let from = small_config();
    let to = JobConfig { parallelism: 4, task_slots: 2, ..from };
    crashed_mid_reconfiguration(&data, from, to).await;
    // The backend accepted the change before the crash, or never saw it.
    fb.write_config(&job(), if backend_runs_target { &to } else { &from }).unwrap();

    let port = api_port();
    let cfg = dir.path().join("coordinator.toml");
    std::fs::write(&cfg, config_toml(&nats.url(), port, &data, "apply", &fb_dir, "0s", "")).unwrap();
    let mut coord = Coordinator::start(&cfg, port, &dir.path().join("coordinator.log"));
    let reconciled = wait_until(Duration::from_secs(30), || {
        let (_, v) = coord.get("/api/v1/jobs/flink/cars");
        v["state"]["state"] == "running" && v["status"]["in_flight"].is_null()
    });
    assert!(reconciled, "{}", coord.log_tail(40));
    let (_, v) = coord.get("/api/v1/jobs/flink/cars");
    let current: JobConfig = serde_json::from_value(v["status"]["current"].clone()).unwrap();
    let outcome = &v["intents"][0]["outcome"];
    assert_eq!(v["intents"][0]["intent"]["id"], 7, "{v}");
    if backend_runs_target {
        assert_eq!(current, to);
        assert_eq!(outcome["ok"], true, "{outcome}");
        assert_eq!(outcome["body"]["outcome"], "reconfig_applied", "{outcome}");
        assert_eq!(v["status"]["stats"]["reconfigurations"], 1);
    } else {
        assert_eq!(current, from);
        assert_eq!(outcome["ok"], false, "{outcome}");
        assert_eq!(outcome["body"]["outcome"], "reconfig_failed", "{outcome}");
        assert!(outcome["body"]["reason"].as_str().unwrap().contains("restart"), "{outcome}");
    }
    // Nothing was applied by the restarted coordinator.
    assert!(fb.journal(&job()).unwrap().is_empty(), "the reconfiguration was applied again");
    let st = coord.stop();
    assert!(st.success());
    let conn = db(&data);
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM outcomes WHERE kind = 'reconfigure' AND id = 7"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_reconfiguration_is_reconciled_not_reapplied_when_it_took_effect() {
    reconcile_case(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_reconfiguration_is_reconciled_not_reapplied_when_it_did_not() {
    reconcile_case(false).await;
}
