#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Demeter end to end, for real: a standalone Flink 2.3.0 cluster (adaptive scheduler, Prometheus
# reporter, checkpoints) runs tests/flink-job's RateJob, whose input follows a time-compressed
# slice of the CARS trace; one demeter-agent per TaskManager publishes its metrics to a real
# nats-server with JetStream; the coordinator runs in apply mode with the flink-rest backend,
# which rescales the job in place through Flink's REST API and adds and removes TaskManagers with
# tests/e2e/tm.sh. tests/e2e/report.py samples the job and writes target/e2e/report.json.
#
# Usage: tests/e2e/run.sh            (no arguments; settings below can be overridden from the
#                                     environment, e.g. DEMETER_E2E_SPEEDUP=28 for a 5-minute run;
#                                     DEMETER_E2E_COORDINATOR_BIN / DEMETER_E2E_AGENT_BIN use given
#                                     binaries instead of building the debug ones)
#
# It passes (exit 0) when the coordinator scaled up by the peak and down after it, events in =
# events out, no job failure, every in-place rescale's downtime <= 2 s, and the slot-seconds used
# <= 0.7 of a static deployment at the peak parallelism. Everything it started is stopped on exit,
# also on failure or interrupt. Logs: target/e2e/logs/.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/../.." && pwd)
cd "$REPO"

# --- settings ----------------------------------------------------------------------------------
OUT=${DEMETER_E2E_OUT:-$REPO/target/e2e}
TRACE=${DEMETER_E2E_TRACE:-$REPO/datasets/CARS_3D_1S_4_sub_35K_max.csv}
# Trace seconds 13200..21600 of CARS (hours 3:40 to 6:00 of its 6-hour cycle: a plateau, the
# ramp to the daily peak, the peak, the fall and the night), 14x faster: 10 minutes.
OFFSET=${DEMETER_E2E_OFFSET:-13200}
END=${DEMETER_E2E_END:-21600}
SPEEDUP=${DEMETER_E2E_SPEEDUP:-14}
# Peak 37563 records/s in the trace -> about 2400/s here.
SCALE=${DEMETER_E2E_SCALE:-0.064}
# Per record in "work": a small CPU part plus a 1.6 ms emulated lookup, so about 600 records/s
# per subtask: the peak needs 4-6 subtasks, the night 2.
LOOKUP_US=${DEMETER_E2E_LOOKUP_US:-1600}
WORK_ITERATIONS=${DEMETER_E2E_WORK:-200}
START_PARALLELISM=${DEMETER_E2E_START_PARALLELISM:-3}
SLOTS=4
LATENCY_BOUND_MS=${DEMETER_E2E_LATENCY_BOUND_MS:-1000}
LOOP=${DEMETER_E2E_LOOP:-30s}
NAMESPACE=flink
JOB_NAME=cars
# Seconds between the submission and the trace's start (the job and the coordinator start).
LEAD_S=${DEMETER_E2E_LEAD_S:-45}

WORK=$OUT/work
LOGS=$OUT/logs
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}

log() { printf '[e2e %s] %s\n' "$(date +%T)" "$*"; }
die() {
    log "error: $*" >&2
    exit 1
}

py() {
    if command -v python3 >/dev/null; then python3 "$@"; else "$DEMETER_VENV/bin/python" "$@"; fi
}

free_port() {
    py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

now_ms() {
    py -c 'import time; print(int(time.time() * 1000))'
}

# wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds.
wait_for() {
    local timeout=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what: not ready after ${timeout} s"
        sleep 0.5
    done
}

# stop_pidfile FILE: SIGTERM, up to 15 s, then SIGKILL.
stop_pidfile() {
    local pid i
    [[ -f $1 ]] || return 0
    pid=$(cat "$1")
    if [[ $pid =~ ^[0-9]+$ ]] && kill -TERM "$pid" 2>/dev/null; then
        for ((i = 0; i < 150; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    log "stopping everything this run started"
    stop_pidfile "$WORK/sampler.pid"
    stop_pidfile "$WORK/coordinator.pid"
    local f
    for f in "$WORK"/agents/*.pid; do
        [[ -e $f ]] && stop_pidfile "$f"
    done
    if [[ -d $WORK/flink ]]; then
        bash scripts/flink-cluster.sh stop "$WORK/flink" >>"$LOGS/flink-cluster.log" 2>&1
        # The Flink logs are worth keeping with the report.
        cp -R "$WORK/flink/log" "$LOGS/flink" 2>/dev/null
    fi
    stop_pidfile "$WORK/nats.pid"
    exit "$rc"
}

rm -rf "$OUT"
mkdir -p "$WORK/agents" "$LOGS"
trap cleanup EXIT
trap 'exit 130' INT TERM
t_start=$SECONDS

# --- components --------------------------------------------------------------------------------
log "installing (or reusing) nats-server and Flink"
bash scripts/install-deps.sh nats flink
# shellcheck source=../../scripts/env.sh
. scripts/env.sh
command -v curl >/dev/null || die "curl is needed"

COORDINATOR=${DEMETER_E2E_COORDINATOR_BIN:-}
AGENT=${DEMETER_E2E_AGENT_BIN:-}
if [[ -z $COORDINATOR || -z $AGENT ]]; then
    log "building demeter-coordinator and demeter-agent"
    cargo build -q -p demeter-coordinator -p demeter-agent
    COORDINATOR=${COORDINATOR:-$TARGET_DIR/debug/demeter-coordinator}
    AGENT=${AGENT:-$TARGET_DIR/debug/demeter-agent}
fi
[[ -x $COORDINATOR && -x $AGENT ]] || die "binaries missing in $TARGET_DIR/debug"

log "building the Flink job"
JAR=$(bash tests/flink-job/build.sh "$WORK/job")

log "starting nats-server"
NATS_PORT=$(free_port)
NATS_MONITOR=$(free_port)
"$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR" -js -sd "$WORK/nats" >"$LOGS/nats.log" 2>&1 &
echo $! >"$WORK/nats.pid"
wait_for 20 "nats-server" curl -fsS "http://127.0.0.1:$NATS_MONITOR/healthz?js-enabled-only=true"
NATS_URL=nats://127.0.0.1:$NATS_PORT

log "starting the Flink cluster (1 TaskManager x $SLOTS slots)"
# prefer-minimal-taskmanagers + execution.target=embedded: a scale-down packs the job onto the
# fewest TaskManagers, so whole TaskManagers become idle and can be stopped (see the backend).
bash scripts/flink-cluster.sh start "$WORK/flink" --taskmanagers 1 --slots "$SLOTS" \
    --conf jobmanager.adaptive-scheduler.prefer-minimal-taskmanagers=true \
    --conf execution.target=embedded \
    --conf metrics.fetcher.update-interval=2000 \
    >"$LOGS/flink-cluster.log" 2>&1 || {
    cat "$LOGS/flink-cluster.log" >&2
    die "the Flink cluster did not start"
}
REST=$(sed -n 's/^FLINK_REST_URL=//p' "$WORK/flink/cluster.env")

log "starting one agent per TaskManager"
export DEMETER_E2E_AGENT_DIR=$WORK/agents DEMETER_E2E_AGENT_BIN=$AGENT DEMETER_E2E_NATS_URL=$NATS_URL
export DEMETER_E2E_NAMESPACE=$NAMESPACE DEMETER_E2E_DEPLOYMENT=$JOB_NAME
bash tests/e2e/tm.sh agents "$WORK/flink"

# --- the job -----------------------------------------------------------------------------------
ANCHOR_MS=$(($(now_ms) + LEAD_S * 1000))
DURATION_S=$(py -c "print(($END - $OFFSET) / $SPEEDUP)")
PROGRAM_ARGS=(--trace "$TRACE" --trace-offset "$OFFSET" --trace-end "$END" --speedup "$SPEEDUP"
    --scale "$SCALE" --trace-anchor-ms "$ANCHOR_MS" --lookup-us "$LOOKUP_US" --work "$WORK_ITERATIONS"
    --splits 16 --name "$JOB_NAME")
log "submitting $JOB_NAME at parallelism $START_PARALLELISM; the trace starts in ${LEAD_S} s and lasts ${DURATION_S} s"
JAR_ID=$(curl -fsS -F "jarfile=@$JAR" "$REST/jars/upload" | py -c 'import json,sys; print(json.load(sys.stdin)["filename"].rsplit("/",1)[-1])')
RUN_BODY=$(py -c 'import json,sys; print(json.dumps({"programArgsList": sys.argv[2:], "parallelism": int(sys.argv[1])}))' \
    "$START_PARALLELISM" "${PROGRAM_ARGS[@]}")
JOB_ID=$(curl -fsS -X POST -H 'Content-Type: application/json' -d "$RUN_BODY" "$REST/jars/$JAR_ID/run" |
    py -c 'import json,sys; print(json.load(sys.stdin)["jobid"])')
# shellcheck disable=SC2317 # invoked through wait_for
job_running() {
    curl -fsS "$REST/jobs/$JOB_ID" | py -c 'import json,sys
d = json.load(sys.stdin)
ok = d["state"] == "RUNNING" and all(v["tasks"].get("RUNNING", 0) == v["parallelism"] for v in d["vertices"])
sys.exit(0 if ok else 1)'
}
wait_for 120 "job $JOB_ID" job_running

# --- the coordinator ---------------------------------------------------------------------------
API_PORT=$(free_port)
q() { py -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
{
    printf 'rest_url = %s\n' "$(q "$REST")"
    printf 'namespace = %s\n' "$(q "$NAMESPACE")"
    printf 'jar = %s\n' "$(q "$JAR")"
    printf 'program_args = [%s]\n' "$(for a in "${PROGRAM_ARGS[@]}"; do printf '%s, ' "$(q "$a")"; done)"
    printf 'taskmanager_add_command = ["bash", %s, "add", %s, "--slots", "{slots}", "--memory-mb", "{memory_mb}"]\n' \
        "$(q "$E2E_DIR/tm.sh")" "$(q "$WORK/flink")"
    printf 'taskmanager_remove_command = ["bash", %s, "remove", %s, "{tm_id}"]\n' "$(q "$E2E_DIR/tm.sh")" "$(q "$WORK/flink")"
    printf 'min_taskmanagers = 1\nmax_taskmanagers = 2\n'
    # A standalone TaskManager has no CPU limit; the two of them share the machine's two cores.
    printf 'tm_cpu_milli = 1000\n'
    printf 'journal = %s\n' "$(q "$OUT/journal.jsonl")"
    printf 'poll_interval = "100ms"\nrunning_timeout = "150s"\n'
} >"$WORK/flink-rest.toml"
cat >"$WORK/coordinator.toml" <<EOF
nats_url = "$NATS_URL"
listen = "127.0.0.1:$API_PORT"
data_dir = "$WORK/coordinator"
mode = "apply"
backend = "flink-rest"
namespaces = ["$NAMESPACE"]
discover_jobs = true
backend_poll_interval = "15s"
log_format = "json"

[store]
snapshot_interval = "5s"
observation_bucket = "5s"

[ingest]
ack_wait = "30s"

[controller]
loop_interval = "$LOOP"
max_reconfigs_per_hour = 60
# A change must be given time to show its effect (and to yield a training sample) before the
# next planned one; urgent ones wait settle_time.
min_reconfig_spacing = "60s"
overload_grace = "15s"
sample_window = "10s"
settle_time = "20s"
# No profiling: a profiling run is a second copy of the job on its own TaskManagers, and this
# machine's two cores already run the JobManager, up to two TaskManagers, NATS, the agents and
# the coordinator. The controller learns from the production job only.
profiling_enabled = false

[controller.constraints]
latency_p95_ms = $LATENCY_BOUND_MS.0
recovery_time_s = 60.0

[controller.quota]
max_total_cpu = 2.0
max_total_memory_mb = 2048

# Parallelism only: slots, memory and checkpoint interval are fixed at the cluster's, so that
# every change is an in-place rescale.
[controller.search_space]
parallelism = { min = 1, max = 8, step = 1 }
task_slots = { min = $SLOTS, max = $SLOTS, step = 1 }
tm_cpu_milli = { min = 1000, max = 1000, step = 1 }
tm_memory_mb = { min = 1024, max = 1024, step = 1 }
checkpoint_interval_ms = { min = 5000, max = 5000, step = 1 }
full_taskmanagers_only = false

# The trace runs ${SPEEDUP}x faster than real time: a 2-minute horizon in 10-second steps.
[controller.model.features]
parallelism = { lo = 1.0, hi = 8.0 }

[controller.forecast]
horizon_s = 120
step_s = 5
bin_s = 10
shadow_every_s = 10
EOF

log "starting the coordinator (apply mode, flink-rest backend, loop $LOOP)"
DEMETER_FLINK_REST_CONFIG=$WORK/flink-rest.toml RUST_LOG=${RUST_LOG:-info} \
    "$COORDINATOR" run --config "$WORK/coordinator.toml" >"$LOGS/coordinator.log" 2>&1 &
echo $! >"$WORK/coordinator.pid"
wait_for 60 "coordinator" curl -fsS "http://127.0.0.1:$API_PORT/healthz"

# --- the run -----------------------------------------------------------------------------------
UNTIL_MS=$(py -c "print(int($ANCHOR_MS + ($END - $OFFSET) / $SPEEDUP * 1000))")
log "sampling until the trace ends and the pipeline drains (report: $OUT/report.json)"
py tests/e2e/report.py sample --rest "$REST" --job "$JOB_NAME" --out "$OUT/samples.jsonl" \
    --until-ms "$UNTIL_MS" --every 2 2>>"$LOGS/sampler.log" &
echo $! >"$WORK/sampler.pid"
sampler=$(cat "$WORK/sampler.pid")
while kill -0 "$sampler" 2>/dev/null; do
    kill -0 "$(cat "$WORK/coordinator.pid")" 2>/dev/null || die "the coordinator exited; see $LOGS/coordinator.log"
    sleep 5
done
wait "$sampler" || true
rm -f "$WORK/sampler.pid"
curl -fsS "http://127.0.0.1:$API_PORT/api/v1/jobs/$NAMESPACE/$JOB_NAME" >"$OUT/coordinator-job.json" 2>/dev/null || true
curl -fsS "http://127.0.0.1:$API_PORT/metrics" >"$OUT/coordinator-metrics.txt" 2>/dev/null || true
stop_pidfile "$WORK/coordinator.pid"

log "report"
rc=0
py tests/e2e/report.py report --samples "$OUT/samples.jsonl" --journal "$OUT/journal.jsonl" --trace "$TRACE" \
    --offset "$OFFSET" --end "$END" --speedup "$SPEEDUP" --scale "$SCALE" --anchor-ms "$ANCHOR_MS" \
    --latency-bound-ms "$LATENCY_BOUND_MS" --max-downtime-s 2 --max-slot-ratio 0.7 --out "$OUT/report.json" || rc=$?
log "finished in $((SECONDS - t_start)) s: $([[ $rc -eq 0 ]] && echo PASSED || echo FAILED) (report: $OUT/report.json)"
exit "$rc"
