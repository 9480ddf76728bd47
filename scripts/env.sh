# shellcheck shell=bash
# Source this file (`. scripts/env.sh`) after scripts/install-deps.sh to get
# the paths of the installed components:
#
#   DEMETER_CACHE  the cache folder (default $HOME/.cache/demeter)
#   DEMETER_VENV   $DEMETER_CACHE/venv; its bin/ is put first on PATH
#   NATS_SERVER    $DEMETER_VENV/bin/nats-server
#   FLINK_HOME     the venv's site-packages/pyflink (bin/, lib/, conf/, plugins/)
#   HELM           $DEMETER_CACHE/helm-layer/helm/helm (Helm 4)
#   KUBECTL        $DEMETER_CACHE/helm-layer/kubectl/kubectl
#   HELM_CACHE_HOME, HELM_CONFIG_HOME, HELM_DATA_HOME
#                  under $DEMETER_CACHE/helm-home unless already set, so that
#                  helm lint/template work offline and touch nothing else
#
# This file is sourced, so it deliberately sets no shell options (no
# `set -euo pipefail`: that would leak into the caller's shell). It is safe
# to source from a script that runs under `set -euo pipefail`, and sourcing
# it twice does not grow PATH. A component that is not installed still gets
# its path exported; in an interactive shell a warning says which one.

export DEMETER_CACHE="${DEMETER_CACHE:-${HOME:-/root}/.cache/demeter}"
export DEMETER_VENV="$DEMETER_CACHE/venv"
export NATS_SERVER="$DEMETER_VENV/bin/nats-server"
export HELM="$DEMETER_CACHE/helm-layer/helm/helm"
export KUBECTL="$DEMETER_CACHE/helm-layer/kubectl/kubectl"
export HELM_CACHE_HOME="${HELM_CACHE_HOME:-$DEMETER_CACHE/helm-home/cache}"
export HELM_CONFIG_HOME="${HELM_CONFIG_HOME:-$DEMETER_CACHE/helm-home/config}"
export HELM_DATA_HOME="${HELM_DATA_HOME:-$DEMETER_CACHE/helm-home/data}"

if [[ -x $DEMETER_VENV/bin/python ]]; then
    # pyflink is never imported here (that needs its Python dependencies,
    # which are not installed); only its folder is located.
    FLINK_HOME="$("$DEMETER_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"] + "/pyflink")' 2>/dev/null || true)"
    export FLINK_HOME
    case ":${PATH:-}:" in
        *":$DEMETER_VENV/bin:"*) ;;
        *) export PATH="$DEMETER_VENV/bin${PATH:+:$PATH}" ;;
    esac
else
    export FLINK_HOME=""
fi

_demeter_missing=""
[[ -x $NATS_SERVER ]] || _demeter_missing+=" nats"
[[ -n $FLINK_HOME && -f $FLINK_HOME/bin/config.sh ]] || _demeter_missing+=" flink"
[[ -x $HELM ]] || _demeter_missing+=" helm"
if [[ -n $_demeter_missing && $- == *i* ]]; then
    printf 'env.sh: not installed:%s (run scripts/install-deps.sh%s)\n' "$_demeter_missing" "$_demeter_missing" >&2
fi
unset _demeter_missing
