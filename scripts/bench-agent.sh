#!/usr/bin/env bash
# Steady-state footprint of the release demeter-agent: it scrapes a real Flink 2.3 TaskManager
# exposition (agent/tests/fixtures/flink-2.3-taskmanager.prom, served by python3 -m http.server)
# every second and publishes to a real nats-server with JetStream, for DURATION seconds after a
# 10 s warm-up. Samples the agent's RSS from /proc every second and its CPU time (utime+stime)
# over the measured window; reads batch and exposition sizes from the agent's own /metrics.
#
# Usage: scripts/bench-agent.sh [DURATION_SECONDS]   (default 60)
# Needs: scripts/install-deps.sh nats (or nats-server on PATH / $NATS_SERVER), python3, curl.
# Prints one JSON object on stdout; progress goes to stderr.
set -euo pipefail

DURATION=${1:-60}
WARMUP=10
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FIXTURE=$ROOT/agent/tests/fixtures/flink-2.3-taskmanager.prom

die() {
    printf 'bench-agent: error: %s\n' "$*" >&2
    exit 1
}

[[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 5)) || die "DURATION must be a number of seconds >= 5"
[[ -f $FIXTURE ]] || die "missing $FIXTURE"
command -v python3 >/dev/null || die "python3 is needed"
command -v curl >/dev/null || die "curl is needed"

# shellcheck source=env.sh
. "$ROOT/scripts/env.sh"
NATS_BIN=${NATS_SERVER:-}
[[ -x $NATS_BIN ]] || NATS_BIN=$(command -v nats-server || true)
[[ -x $NATS_BIN ]] || die "nats-server not found; run scripts/install-deps.sh nats"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-agent.XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

printf 'bench-agent: building the release agent\n' >&2
(cd "$ROOT" && cargo build --release -p demeter-agent --quiet) >&2
AGENT_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/demeter-agent
[[ -x $AGENT_BIN ]] || die "no $AGENT_BIN after the build"

NATS_PORT=$(free_port)
NATS_MON=$(free_port)
"$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON" -js -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
HTTP_PORT=$(free_port)
mkdir -p "$WORK/www"
cp "$FIXTURE" "$WORK/www/metrics"
python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$WORK/www" >"$WORK/http.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$NATS_MON/healthz?js-enabled-only=true" >/dev/null 2>&1 &&
        curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" >/dev/null 2>&1 && break
    sleep 0.1
done

LISTEN_PORT=$(free_port)
"$AGENT_BIN" --metrics-url "http://127.0.0.1:$HTTP_PORT/metrics" --nats-url "nats://127.0.0.1:$NATS_PORT" \
    --namespace bench --deployment ratejob --taskmanager tm-1 --interval 1s \
    --listen "127.0.0.1:$LISTEN_PORT" --log-level warn >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
PIDS+=("$AGENT_PID")

printf 'bench-agent: warming up for %s s, then measuring for %s s\n' "$WARMUP" "$DURATION" >&2
sleep "$WARMUP"
kill -0 "$AGENT_PID" 2>/dev/null || die "the agent exited: $(tail -n 20 "$WORK/agent.log")"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$AGENT_PID/stat"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$AGENT_PID/status"; }
metrics() { curl -fsS "http://127.0.0.1:$LISTEN_PORT/metrics"; }

M0=$(metrics)
T0=$(date +%s.%N)
C0=$(cpu_ticks)
RSS=()
for _ in $(seq "$DURATION"); do
    sleep 1
    RSS+=("$(rss_kb)")
done
C1=$(cpu_ticks)
T1=$(date +%s.%N)
M1=$(metrics)
HWM=$(awk '/^VmHWM:/ {print $2}' "/proc/$AGENT_PID/status")

python3 - "$T0" "$T1" "$C0" "$C1" "$(getconf CLK_TCK)" "$HWM" "${RSS[*]}" "$FIXTURE" <<EOF
import json, statistics, sys
t0, t1, c0, c1, tck, hwm = (float(x) for x in sys.argv[1:7])
rss = [int(x) for x in sys.argv[7].split()]
fixture = sys.argv[8]
def metric(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
m0 = """$M0"""
m1 = """$M1"""
d = lambda n: metric(m1, n) - metric(m0, n)
scrapes = d("demeter_agent_scrapes_total")
wall = t1 - t0
cpu_s = (c1 - c0) / tck
batch_bytes = d("demeter_agent_batch_bytes_total") / max(scrapes, 1)
expo_bytes = d("demeter_agent_exposition_bytes_total") / max(scrapes, 1)
with open(fixture) as f:
    lines = sum(1 for _ in f)
print(json.dumps({
    "measured_seconds": round(wall, 1),
    "scrape_interval_seconds": 1,
    "exposition_lines": lines,
    "scrapes": int(scrapes),
    "published_batches": int(d("demeter_agent_published_batches_total")),
    "scrape_errors": int(d("demeter_agent_scrape_errors_total")),
    "publish_errors": int(d("demeter_agent_publish_errors_total")),
    "rss_kib": {"min": min(rss), "median": int(statistics.median(rss)), "max": max(rss), "peak_hwm": int(hwm)},
    "cpu_seconds": round(cpu_s, 3),
    "cpu_percent_of_one_core": round(100 * cpu_s / wall, 3),
    "scrape_duration_ms_mean": round(1000 * d("demeter_agent_scrape_duration_seconds_sum") / max(scrapes, 1), 3),
    "exposition_bytes_per_scrape": int(expo_bytes),
    "batch_bytes_per_scrape": int(batch_bytes),
    "wire_to_text_ratio": round(batch_bytes / expo_bytes, 4) if expo_bytes else None,
}, indent=2))
EOF
