#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Compiles Demeter's Flink test job (src/demeter/testjob/RateJob.java) against
# the installed Flink and writes OUTDIR/ratejob.jar (main class
# demeter.testjob.RateJob). No Maven: javac + jar, about 3 s.
#
# Usage: tests/flink-job/build.sh OUTDIR
# Needs FLINK_HOME (else sources scripts/env.sh; install with
# scripts/install-deps.sh flink) and a JDK 11+.
set -euo pipefail

JOB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() {
    printf 'build.sh: error: %s\n' "$*" >&2
    exit 1
}

[[ $# -eq 1 ]] || {
    printf 'usage: %s OUTDIR\n' "${0##*/}" >&2
    exit 2
}
out=$1

if [[ -z ${FLINK_HOME:-} ]]; then
    # shellcheck source=../../scripts/env.sh
    . "$JOB_DIR/../../scripts/env.sh"
fi
[[ -n ${FLINK_HOME:-} && -d $FLINK_HOME/lib ]] ||
    die "FLINK_HOME='${FLINK_HOME:-}' has no lib/; run scripts/install-deps.sh flink"
if ! command -v javac >/dev/null || ! command -v jar >/dev/null; then
    die "javac and jar (a JDK 11+) are needed"
fi

mkdir -p "$out"
classes=$(mktemp -d "${TMPDIR:-/tmp}/ratejob-classes.XXXXXX")
trap 'rm -rf "$classes"' EXIT

mapfile -t sources < <(find "$JOB_DIR/src" -name '*.java' | sort)
# --release 11: runs on every JDK that Flink 2.x supports.
javac -nowarn --release 11 -encoding UTF-8 -cp "$FLINK_HOME/lib/*" -d "$classes" "${sources[@]}" ||
    die "javac failed"
jar --create --file "$out/ratejob.jar.tmp" --main-class demeter.testjob.RateJob -C "$classes" .
mv "$out/ratejob.jar.tmp" "$out/ratejob.jar"
printf '%s\n' "$(cd "$out" && pwd)/ratejob.jar"
