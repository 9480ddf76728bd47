#!/usr/bin/env bash
# The project's test command (README "Tests"; .ci/run calls it).
#
# 1. installs the pinned real components (nats-server 2.15.1, Flink 2.3.0, Helm 4, kubernetes-validate)
#    into $DEMETER_CACHE (default ~/.cache/demeter), reusing what is already there;
# 2. checks formatting and lints;
# 3. runs every test with cargo nextest — tests start their own nats-server and Flink processes on
#    free loopback ports and stop them when done;
# 4. lints and validates the Helm chart offline;
# 5. runs a short simulator comparison as a CLI smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "installing pinned components into ${DEMETER_CACHE:-$HOME/.cache/demeter}"
bash scripts/install-deps.sh nats flink helm
# shellcheck source=scripts/env.sh
source scripts/env.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo nextest"
cargo nextest run --workspace --locked --profile ci

step "Helm chart: lint, render, validate"
bash scripts/check-chart.sh

step "simulator smoke run (1-hour slice)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cargo run --locked -q -p demeter-coordinator -- simulate \
  --workload datasets/CARS_3D_1S_4_sub_35K_max.csv --duration 1h --strategies all --out "$out" --seed 1
python3 - "$out" <<'PY'
import json, sys, os
d = sys.argv[1]
s = json.load(open(os.path.join(d, "summary.json")))
names = {"static", "hpa", "operator", "operator-defaults", "demeter-upstream", "demeter", "oracle"}
assert set(s["strategies"]) == names, s["strategies"].keys()
assert s["strategies"]["static"]["cpu_ratio"] == 1.0
for n in names:
    assert os.path.getsize(os.path.join(d, n + ".csv")) > 0, n
for p in ("rate.png", "resources.png", "latency.png"):
    assert open(os.path.join(d, p), "rb").read(8) == b"\x89PNG\r\n\x1a\n", p
print("simulate: summary.json, 7 CSV series and 3 plots written")
PY
