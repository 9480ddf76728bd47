#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Captures real Prometheus expositions of Flink 2.3.0 for parser fixtures:
# installs Flink (scripts/install-deps.sh), starts a 1-TaskManager cluster in
# a temporary workdir, runs tests/flink-job's RateJob, waits until the task
# metrics have settled, saves the TaskManager's /metrics to OUTFILE (and the
# JobManager's to JM_OUTFILE if given), and stops everything on exit.
#
# Usage: scripts/capture-exposition.sh OUTFILE [JM_OUTFILE]
#
# Environment (optional):
#   CAPTURE_RATE=1000 CAPTURE_WORK=300000 CAPTURE_PARALLELISM=2   job arguments
#   CAPTURE_SETTLE_SECONDS=65   time after all tasks run before the capture;
#                               *PerSecond meters average over 60 s, so less
#                               gives rates that are still ramping up
#   CAPTURE_KEEP_WORKDIR=1      keep the temporary workdir (logs) on success
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
RATE=${CAPTURE_RATE:-1000}
WORK=${CAPTURE_WORK:-300000}
PARALLELISM=${CAPTURE_PARALLELISM:-2}
SETTLE=${CAPTURE_SETTLE_SECONDS:-65}
readonly SCRIPT_DIR REPO_DIR RATE WORK PARALLELISM SETTLE

# What the TaskManager exposition must contain before it is captured.
readonly TM_REQUIRED=(
    flink_taskmanager_job_task_busyTimeMsPerSecond
    flink_taskmanager_job_task_backPressuredTimeMsPerSecond
    flink_taskmanager_job_task_numRecordsInPerSecond
    flink_taskmanager_job_task_numRecordsOutPerSecond
    flink_taskmanager_job_task_operator_latencyHistogram
    flink_taskmanager_job_task_operator_eventsIn
    flink_taskmanager_Status_JVM_CPU_Load
)

log() { printf 'capture-exposition: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[[ $# -ge 1 && $# -le 2 ]] || {
    printf 'usage: %s OUTFILE [JM_OUTFILE]\n' "${0##*/}" >&2
    exit 2
}
OUT=$1
JM_OUT=${2:-}

WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/demeter-capture.XXXXXX")
cleanup() {
    local rc=$?
    "$SCRIPT_DIR/flink-cluster.sh" stop "$WORKDIR/cluster" >&2 || true
    if ((rc == 0)) && [[ -z ${CAPTURE_KEEP_WORKDIR:-} ]]; then
        rm -rf "$WORKDIR"
    else
        log "workdir kept: $WORKDIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$SCRIPT_DIR/install-deps.sh" flink >&2
# shellcheck source=env.sh
. "$SCRIPT_DIR/env.sh"
command -v curl >/dev/null || die "curl is needed"

t0=$SECONDS
"$SCRIPT_DIR/flink-cluster.sh" start "$WORKDIR/cluster" --taskmanagers 1 >&2
# shellcheck source=/dev/null
. "$WORKDIR/cluster/cluster.env"
log "cluster started in $((SECONDS - t0)) s"

jar=$("$REPO_DIR/tests/flink-job/build.sh" "$WORKDIR/job")
submit=$("$SCRIPT_DIR/flink-cluster.sh" flink "$WORKDIR/cluster" run -d "$jar" \
    --rate "$RATE" --work "$WORK" --parallelism "$PARALLELISM" 2>&1) ||
    die "flink run failed: $submit"
JID=$(sed -n 's/.*JobID \([0-9a-f]\{32\}\).*/\1/p' <<<"$submit" | head -n 1)
[[ -n $JID ]] || die "no JobID in the output of flink run: $submit"
log "job $JID submitted"

# Wait until every task of the job runs.
deadline=$((SECONDS + 120))
until curl -fsS --max-time 2 "$FLINK_REST_URL/jobs/$JID" 2>/dev/null |
    python3 -c '
import json, sys
job = json.load(sys.stdin)
sys.exit(0 if job["state"] == "RUNNING" and all(v["status"] == "RUNNING" for v in job["vertices"]) else 1)'; do
    ((SECONDS < deadline)) || die "job $JID did not reach RUNNING in 120 s"
    sleep 1
done
running_at=$SECONDS
log "all tasks RUNNING $((SECONDS - t0)) s after the cluster start"

# scrape PORT: the exposition of the reporter on PORT, or nothing.
scrape() {
    curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" 2>/dev/null || true
}

# find_port KIND: the reporter port of this cluster's KIND (jobmanager or
# taskmanager). First the port the process logged (flink-cluster.sh
# status), then every port of the range: the one whose exposition has
# flink_KIND_ lines for this job. The JobManager takes the first free port
# of the range, each TaskManager the next free one (9249, 9250 by default).
find_port() {
    local kind=$1 candidates=() p a b
    if [[ $kind == jobmanager ]]; then
        mapfile -t candidates < <("$SCRIPT_DIR/flink-cluster.sh" status "$WORKDIR/cluster" |
            sed -n 's/^jobmanager_prom_port=\([0-9][0-9]*\)$/\1/p')
    else
        mapfile -t candidates < <("$SCRIPT_DIR/flink-cluster.sh" status "$WORKDIR/cluster" |
            sed -n 's/^taskmanager=[0-9]* \([0-9][0-9]*\) .*/\1/p')
    fi
    a=${FLINK_PROM_PORTS%-*} b=${FLINK_PROM_PORTS#*-}
    for ((p = a; p <= b; p++)); do candidates+=("$p"); done
    for p in "${candidates[@]}"; do
        if scrape "$p" | grep -q "^flink_${kind}_job_.*job_id=\"$JID\""; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    return 1
}

deadline=$((SECONDS + 120))
until TM_PORT=$(find_port taskmanager) && JM_PORT=$(find_port jobmanager); do
    ((SECONDS < deadline)) || die "no Prometheus endpoint in $FLINK_PROM_PORTS shows job $JID"
    sleep 2
done
log "Prometheus ports: jobmanager $JM_PORT, taskmanager $TM_PORT"

# ready: the TaskManager shows every required family with a non-zero work
# rate, and the JobManager has a completed checkpoint.
ready() {
    local tm jm name
    tm=$(scrape "$TM_PORT")
    jm=$(scrape "$JM_PORT")
    for name in "${TM_REQUIRED[@]}"; do
        grep -q "^${name}[{ ]" <<<"$tm" || return 1
    done
    grep -q '^flink_taskmanager_job_task_operator_latencyHistogram{.*quantile="0.99"' <<<"$tm" || return 1
    grep '^flink_taskmanager_job_task_busyTimeMsPerSecond{.*task_name="work"' <<<"$tm" |
        grep -qv ' 0\.0$' || return 1
    grep -E '^flink_jobmanager_job_numberOfCompletedCheckpoints\{' <<<"$jm" | grep -qv ' 0\.0$'
}

deadline=$((running_at + SETTLE + 120))
until ((SECONDS - running_at >= SETTLE)) && ready; do
    ((SECONDS < deadline)) || die "the required metrics did not appear within $((SETTLE + 120)) s"
    sleep 2
done
# Status.JVM.CPU.Load reads 0 on its first read: read once, then capture.
scrape "$TM_PORT" >/dev/null
sleep 3
mkdir -p "$(dirname "$OUT")"
scrape "$TM_PORT" >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
if [[ -n $JM_OUT ]]; then
    mkdir -p "$(dirname "$JM_OUT")"
    scrape "$JM_PORT" >"$JM_OUT.tmp"
    mv "$JM_OUT.tmp" "$JM_OUT"
fi

missing=()
for name in "${TM_REQUIRED[@]}"; do
    grep -q "^${name}[{ ]" "$OUT" || missing+=("$name")
done
((${#missing[@]} == 0)) || die "$OUT lacks: ${missing[*]}"
printf '%s: %s lines, %s metric families (taskmanager, port %s, job %s)\n' \
    "$OUT" "$(wc -l <"$OUT")" "$(grep -c '^# TYPE ' "$OUT")" "$TM_PORT" "$JID"
if [[ -n $JM_OUT ]]; then
    printf '%s: %s lines, %s metric families (jobmanager, port %s)\n' \
        "$JM_OUT" "$(wc -l <"$JM_OUT")" "$(grep -c '^# TYPE ' "$JM_OUT")" "$JM_PORT"
fi
