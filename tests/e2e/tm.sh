#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Adds or removes one TaskManager of a cluster started by scripts/flink-cluster.sh, for the
# coordinator's flink-rest backend (taskmanager_add_command / taskmanager_remove_command) and the
# tests. With DEMETER_E2E_AGENT_DIR set, each TaskManager also gets its own demeter-agent, started
# after it and stopped before it (one agent per TaskManager, as the sidecar would be).
#
# Usage:
#   tm.sh add WORKDIR [--slots S] [--memory-mb M]   start one TaskManager (with these slots and
#                                                   process memory), wait until it is registered;
#                                                   prints its resource id
#   tm.sh remove WORKDIR TM_ID                      stop the TaskManager with this resource id
#                                                   (as /taskmanagers shows it) and its agent
#   tm.sh agents WORKDIR                            start an agent for every TaskManager that has
#                                                   none (the ones the cluster started with)
#
# Agent settings (only with DEMETER_E2E_AGENT_DIR): DEMETER_E2E_AGENT_BIN (the demeter-agent
# binary), DEMETER_E2E_NATS_URL, DEMETER_E2E_NAMESPACE, DEMETER_E2E_DEPLOYMENT. Agent pid files
# and logs go to DEMETER_E2E_AGENT_DIR.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/../.." && pwd)
CLUSTER="$REPO/scripts/flink-cluster.sh"
readonly E2E_DIR REPO CLUSTER
readonly IDENT=demeter

die() {
    printf 'tm.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '/^# Usage:/,/^# Agent settings/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

py() {
    if command -v python3 >/dev/null; then python3 "$@"; else "${DEMETER_CACHE:-$HOME/.cache/demeter}/venv/bin/python" "$@"; fi
}

# cluster_var NAME: a value that `flink-cluster.sh start` recorded.
cluster_var() {
    sed -n "s/^$1=//p" "$WORKDIR/cluster.env" | tail -n 1
}

registered() {
    curl -fsS --max-time 2 "$(cluster_var FLINK_REST_URL)/overview" 2>/dev/null |
        sed -n 's/.*"taskmanagers":\([0-9]*\).*/\1/p'
}

# taskmanagers: "PID PROM_PORT RESOURCE_ID" per live TaskManager.
taskmanagers() {
    "$CLUSTER" status "$WORKDIR" 2>/dev/null | sed -n 's/^taskmanager=//p' || true
}

# wait_registered at-least|below COUNT TIMEOUT: until the registered TaskManagers are >= COUNT
# (or < COUNT).
wait_registered() {
    local how=$1 want=$2 deadline=$((SECONDS + $3)) have
    while ((SECONDS < deadline)); do
        have=$(registered)
        if [[ -n $have ]]; then
            if [[ $how == at-least ]] && ((have >= want)); then return 0; fi
            if [[ $how == below ]] && ((have < want)); then return 0; fi
        fi
        sleep 0.5
    done
    return 1
}

agent_enabled() {
    [[ -n ${DEMETER_E2E_AGENT_DIR:-} ]]
}

# agent_pidfile RESOURCE_ID
agent_pidfile() {
    printf '%s/agent-%s.pid\n' "$DEMETER_E2E_AGENT_DIR" "${1//[^A-Za-z0-9_.-]/_}"
}

# start_agent RESOURCE_ID PROM_PORT
start_agent() {
    local rid=$1 port=$2 pidfile log listen
    pidfile=$(agent_pidfile "$rid")
    if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then return 0; fi
    [[ -x ${DEMETER_E2E_AGENT_BIN:-} ]] || die "DEMETER_E2E_AGENT_BIN is not an executable: '${DEMETER_E2E_AGENT_BIN:-}'"
    mkdir -p "$DEMETER_E2E_AGENT_DIR"
    log=${pidfile%.pid}.log
    listen=127.0.0.1:$(py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # setsid: the agent outlives this script (it is the coordinator's child when the backend runs
    # it) and is stopped by `remove` or by the e2e teardown through its pid file.
    setsid "$DEMETER_E2E_AGENT_BIN" \
        --metrics-url "http://127.0.0.1:$port/metrics" \
        --nats-url "${DEMETER_E2E_NATS_URL:?}" \
        --namespace "${DEMETER_E2E_NAMESPACE:?}" \
        --deployment "${DEMETER_E2E_DEPLOYMENT:?}" \
        --taskmanager "$rid" --pod "$rid" --host "$(hostname)" \
        --interval 1s --listen "$listen" --log-format json \
        </dev/null >>"$log" 2>&1 &
    printf '%s\n' "$!" >"$pidfile"
    printf 'agent for %s started (pid %s, scraping :%s, listening on %s)\n' "$rid" "$!" "$port" "$listen" >&2
}

stop_agent() {
    local pidfile pid i
    pidfile=$(agent_pidfile "$1")
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if kill -TERM "$pid" 2>/dev/null; then
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

cmd_agents() {
    agent_enabled || die "DEMETER_E2E_AGENT_DIR is not set"
    local pid port rid
    while read -r pid port rid; do
        [[ -n $rid && $port != - ]] || continue
        start_agent "$rid" "$port"
    done < <(taskmanagers)
}

cmd_add() {
    local slots="" memory="" before have dynamic=()
    while (($# > 0)); do
        [[ $# -ge 2 ]] || die "$1 needs a value"
        case $1 in
            --slots) slots=$2 ;;
            --memory-mb) memory=$2 ;;
            *) die "unknown option $1" ;;
        esac
        shift 2
    done
    [[ -z $slots || $slots =~ ^[1-9][0-9]*$ ]] || die "--slots must be a positive number, got '$slots'"
    [[ -z $memory || $memory =~ ^[1-9][0-9]*$ ]] || die "--memory-mb must be a positive number, got '$memory'"
    [[ -f $WORKDIR/cluster.env ]] || die "no cluster was started in $WORKDIR"
    if [[ -z ${FLINK_HOME:-} ]]; then
        # shellcheck source=../../scripts/env.sh
        . "$REPO/scripts/env.sh"
    fi
    mapfile -t before < <(taskmanagers | awk '{print $3}')
    have=$(registered)
    [[ -n $have ]] || die "the cluster in $WORKDIR does not answer"
    [[ -n $slots ]] && dynamic+=(-D "taskmanager.numberOfTaskSlots=$slots")
    [[ -n $memory ]] && dynamic+=(-D "taskmanager.memory.process.size=${memory}m")
    # The same environment and port range as flink-cluster.sh gives its TaskManagers.
    FLINK_CONF_DIR=$(cluster_var FLINK_CONF_DIR) FLINK_LOG_DIR=$(cluster_var FLINK_LOG_DIR) \
        FLINK_PID_DIR=$(cluster_var FLINK_PID_DIR) FLINK_IDENT_STRING=$IDENT \
        "$FLINK_HOME/bin/taskmanager.sh" start -D "metrics.reporter.prom.port=$(cluster_var FLINK_TM_PROM_PORTS)" \
        "${dynamic[@]}" >>"$(cluster_var FLINK_LOG_DIR)/scripts.out" 2>&1 ||
        die "taskmanager.sh start failed; see $(cluster_var FLINK_LOG_DIR)/scripts.out"
    wait_registered at-least $((have + 1)) 90 || die "the new TaskManager did not register within 90 s"
    # Its resource id and Prometheus port, from its log (written shortly after registration).
    local deadline=$((SECONDS + 30)) pid port rid new=""
    while ((SECONDS < deadline)) && [[ -z $new ]]; do
        while read -r pid port rid; do
            [[ -n $rid && $port != - ]] || continue
            if [[ " ${before[*]} " != *" $rid "* ]]; then new="$rid $port"; fi
        done < <(taskmanagers)
        [[ -n $new ]] || sleep 0.5
    done
    [[ -n $new ]] || die "the new TaskManager registered but its log names no resource id and port"
    read -r rid port <<<"$new"
    if agent_enabled; then start_agent "$rid" "$port"; fi
    printf '%s\n' "$rid"
}

cmd_remove() {
    [[ $# -eq 1 && -n $1 ]] || usage
    local want=$1 pid port rid target="" have
    while read -r pid port rid; do
        if [[ $rid == "$want" ]]; then target=$pid; fi
    done < <(taskmanagers)
    [[ -n $target ]] || die "no live TaskManager with resource id $want in $WORKDIR"
    have=$(registered)
    if agent_enabled; then stop_agent "$want"; fi
    kill -TERM "$target" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while kill -0 "$target" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -KILL "$target" 2>/dev/null || true
    # flink-cluster.sh's bookkeeping: drop the pid from the TaskManager pid file.
    local pidfile
    pidfile="$(cluster_var FLINK_PID_DIR)/flink-$IDENT-taskexecutor.pid"
    if [[ -f $pidfile ]]; then
        grep -vx -- "$target" "$pidfile" >"$pidfile.tmp" || true
        mv "$pidfile.tmp" "$pidfile"
    fi
    if [[ -n $have ]] && ((have > 0)); then
        wait_registered below "$have" 30 || die "TaskManager $want stopped but is still registered after 30 s"
    fi
    printf 'taskmanager %s removed (pid %s)\n' "$want" "$target"
}

main() {
    (($# >= 2)) || usage
    local cmd=$1
    WORKDIR=$(realpath -m -- "$2")
    shift 2
    case $cmd in
        add) cmd_add "$@" ;;
        remove) cmd_remove "$@" ;;
        agents) (($# == 0)) || usage && cmd_agents ;;
        *) usage ;;
    esac
}

main "$@"
