#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Runs a standalone Flink 2.3.0 session cluster on 127.0.0.1 whose every file
# (conf, logs, pids, tmp, blobs, checkpoints, savepoints) lives under WORKDIR.
# The shared install in $FLINK_HOME is only read, never written.
#
# Usage:
#   flink-cluster.sh start WORKDIR [--taskmanagers N] [--slots S] [--rest-port P]
#                          [--prom-ports A-B] [--rpc-port P] [--tm-memory SIZE]
#                          [--jm-memory SIZE] [--conf KEY=VALUE]... [--timeout SECS]
#   flink-cluster.sh stop WORKDIR        stop every process started for WORKDIR
#   flink-cluster.sh status WORKDIR      key=value lines; exit 0 up, 1 degraded, 3 stopped
#   flink-cluster.sh add-tm WORKDIR      start one more TaskManager, wait until registered
#   flink-cluster.sh remove-tm WORKDIR   stop the most recently started TaskManager
#   flink-cluster.sh flink WORKDIR ARGS  run `$FLINK_HOME/bin/flink ARGS` against the cluster
#
# Defaults: 1 TaskManager, 4 slots, REST 8081, RPC 6123, Prometheus 9249-9260
# (the JobManager gets 9249, each TaskManager the first free one of
# 9250-9260), 1g per process. A default port that is busy is replaced by a
# free one; an explicit one that is busy is an error. After `start`,
# WORKDIR/cluster.env holds the chosen values (FLINK_REST_URL,
# FLINK_REST_PORT, FLINK_JM_PROM_PORT, FLINK_TM_PROM_PORTS, ...).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly IDENT=demeter  # FLINK_IDENT_STRING: names the pid and log files
readonly DEFAULT_REST_PORT=8081 DEFAULT_RPC_PORT=6123 DEFAULT_PROM_PORTS=9249-9260

die() {
    printf 'flink-cluster: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '/^# Usage:/,/^# Defaults:/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

load_flink_home() {
    if [[ -z ${FLINK_HOME:-} ]]; then
        # shellcheck source=env.sh
        . "$SCRIPT_DIR/env.sh"
    fi
    [[ -n ${FLINK_HOME:-} && -x $FLINK_HOME/bin/jobmanager.sh ]] ||
        die "Flink is not installed (FLINK_HOME='${FLINK_HOME:-}'); run scripts/install-deps.sh flink"
    command -v java >/dev/null || die "java not found on PATH"
    command -v curl >/dev/null || die "curl not found on PATH"
}

# set_workdir DIR [create]: absolute WORKDIR and the paths under it. Without
# `create`, DIR need not exist any more: `stop` still finds its processes.
set_workdir() {
    [[ -n $1 ]] || die "WORKDIR is empty"
    if [[ ${2:-} == create ]]; then
        mkdir -p "$1"
    fi
    WORKDIR=$(realpath -m -- "$1")
    CONF_DIR=$WORKDIR/conf
    LOG_DIR=$WORKDIR/log
    PID_DIR=$WORKDIR/pid
    JM_PID_FILE=$PID_DIR/flink-$IDENT-standalonesession.pid
    TM_PID_FILE=$PID_DIR/flink-$IDENT-taskexecutor.pid
}

flink_env() {
    export FLINK_CONF_DIR=$CONF_DIR FLINK_LOG_DIR=$LOG_DIR FLINK_PID_DIR=$PID_DIR FLINK_IDENT_STRING=$IDENT
}

py() {
    if command -v python3 >/dev/null; then python3 "$@"; else "${DEMETER_CACHE:-$HOME/.cache/demeter}/venv/bin/python" "$@"; fi
}

# port_free PORT: whether 127.0.0.1:PORT can be bound (as the JVM binds it).
port_free() {
    py - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
EOF
}

free_port() {
    py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# pick_port NAME REQUESTED DEFAULT: REQUESTED (an explicit port) if free,
# else an error; with no REQUESTED, DEFAULT if free, else any free port.
pick_port() {
    local name=$1 requested=$2 default=$3
    if [[ -n $requested ]]; then
        port_free "$requested" || die "$name port $requested is in use"
        printf '%s\n' "$requested"
    elif port_free "$default"; then
        printf '%s\n' "$default"
    else
        free_port
    fi
}

# count_free_ports A B
count_free_ports() {
    local p n=0
    for ((p = $1; p <= $2; p++)); do
        if port_free "$p"; then n=$((n + 1)); fi
    done
    printf '%s\n' "$n"
}

# pick_prom_ports REQUESTED NEEDED: a port range with at least NEEDED free
# ports (each JVM's reporter binds the first free port of the range). An
# explicit REQUESTED range is used as given; the default one is replaced by
# the next range of the same width that has room.
pick_prom_ports() {
    local requested=$1 needed=$2 range a b width base
    range=${requested:-$DEFAULT_PROM_PORTS}
    [[ $range =~ ^([0-9]+)-([0-9]+)$ ]] || die "--prom-ports must look like 9249-9260, got '$range'"
    a=${BASH_REMATCH[1]} b=${BASH_REMATCH[2]}
    ((a <= b && b < 65536)) || die "--prom-ports: bad range $range"
    if [[ -n $requested ]] || (($(count_free_ports "$a" "$b") >= needed)); then
        printf '%s\n' "$range"
        return
    fi
    width=$((b - a))
    for ((base = b + 1; base + width < 65536; base += width + 1)); do
        if (($(count_free_ports "$base" $((base + width))) >= needed)); then
            printf '%s-%s\n' "$base" $((base + width))
            return
        fi
    done
    die "no free range of $((width + 1)) ports for the Prometheus reporter"
}

# The JVM options of the shipped config (needed on Java 17), read from the
# install's nested config.yaml.
default_java_opts() {
    awk '
        /^env:/ { in_env = 1; next }
        /^[^ #]/ { in_env = 0 }
        in_env && /^ +all:/ { sub(/^ +all: */, ""); print; exit }
    ' "$FLINK_HOME/conf/config.yaml"
}

write_config() {
    local java_opts
    java_opts=$(default_java_opts)
    [[ -n $java_opts ]] || die "could not read env.java.opts.all from $FLINK_HOME/conf/config.yaml"
    rm -rf "$CONF_DIR"
    cp -R "$FLINK_HOME/conf" "$CONF_DIR"
    chmod -R u+w "$CONF_DIR"
    mkdir -p "$LOG_DIR" "$PID_DIR" "$WORKDIR/tmp/io" "$WORKDIR/tmp/web" "$WORKDIR/tmp/blob" \
        "$WORKDIR/checkpoints" "$WORKDIR/savepoints"
    {
        printf '# Written by scripts/flink-cluster.sh for %s\n' "$WORKDIR"
        printf 'env.java.opts.all: %s\n' "$java_opts"
        cat <<EOF
env.pid.dir: $PID_DIR
env.log.dir: $LOG_DIR
jobmanager.bind-host: 127.0.0.1
jobmanager.rpc.address: 127.0.0.1
jobmanager.rpc.port: $RPC_PORT
taskmanager.bind-host: 127.0.0.1
taskmanager.host: 127.0.0.1
rest.address: 127.0.0.1
rest.bind-address: 127.0.0.1
rest.port: $REST_PORT
jobmanager.memory.process.size: $JM_MEMORY
taskmanager.memory.process.size: $TM_MEMORY
taskmanager.numberOfTaskSlots: $SLOTS
parallelism.default: 1
jobmanager.execution.failover-strategy: region
jobmanager.scheduler: adaptive
jobmanager.adaptive-scheduler.executing.cooldown-after-rescaling: 5s
execution.checkpointing.interval: 5s
execution.checkpointing.dir: file://$WORKDIR/checkpoints
execution.checkpointing.savepoint-dir: file://$WORKDIR/savepoints
metrics.reporter.prom.factory.class: org.apache.flink.metrics.prometheus.PrometheusReporterFactory
metrics.reporter.prom.port: $PROM_PORTS
web.refresh-interval: 500
io.tmp.dirs: $WORKDIR/tmp/io
web.tmpdir: $WORKDIR/tmp/web
blob.storage.directory: $WORKDIR/tmp/blob
EOF
        local kv
        for kv in "${EXTRA_CONF[@]}"; do
            printf '%s: %s\n' "${kv%%=*}" "${kv#*=}"
        done
    } >"$CONF_DIR/config.yaml"
    printf '127.0.0.1:%s\n' "$REST_PORT" >"$CONF_DIR/masters"
    printf '127.0.0.1\n' >"$CONF_DIR/workers"
    cat >"$WORKDIR/cluster.env" <<EOF
# Written by scripts/flink-cluster.sh start; source it.
FLINK_CLUSTER_WORKDIR=$WORKDIR
FLINK_CONF_DIR=$CONF_DIR
FLINK_LOG_DIR=$LOG_DIR
FLINK_PID_DIR=$PID_DIR
FLINK_REST_PORT=$REST_PORT
FLINK_REST_URL=http://127.0.0.1:$REST_PORT
FLINK_RPC_PORT=$RPC_PORT
FLINK_PROM_PORTS=$PROM_PORTS
FLINK_JM_PROM_PORT=$JM_PROM_PORT
FLINK_TM_PROM_PORTS=$TM_PROM_PORTS
EOF
}

# cluster_var NAME: a value that `start` recorded in WORKDIR/cluster.env.
cluster_var() {
    sed -n "s/^$1=//p" "$WORKDIR/cluster.env" 2>/dev/null | tail -n 1
}

rest_url() {
    local port
    port=$(cluster_var FLINK_REST_PORT)
    [[ -n $port ]] || return 1
    printf 'http://127.0.0.1:%s\n' "$port"
}

# registered_tms: TaskManagers registered at the ResourceManager, or nothing.
registered_tms() {
    local url body
    url=$(rest_url) || return 0
    body=$(curl -fsS --max-time 2 "$url/overview" 2>/dev/null) || return 0
    sed -n 's/.*"taskmanagers":\([0-9]*\).*/\1/p' <<<"$body"
}

# ours PID: whether PID is alive and a JVM of this WORKDIR (guards against
# stale pid files whose pid was reused).
ours() {
    [[ $1 =~ ^[0-9]+$ ]] || return 1
    local argv0
    argv0=$(head -zn 1 "/proc/$1/cmdline" 2>/dev/null | tr -d '\0') || return 1
    [[ $argv0 == java || $argv0 == */java ]] || return 1
    grep -qzxF -- "-Dlog4j.configurationFile=file:$CONF_DIR/log4j.properties" "/proc/$1/cmdline" 2>/dev/null
}

# pids_in FILE: live JVMs of this WORKDIR listed in a pid file.
pids_in() {
    local pid
    [[ -f $1 ]] || return 0
    while read -r pid; do
        if ours "$pid"; then printf '%s\n' "$pid"; fi
    done <"$1"
}

file_pids() {
    pids_in "$JM_PID_FILE"
    pids_in "$TM_PID_FILE"
}

# our_pids: every live JVM of this WORKDIR: the pid files' entries plus any
# process whose command line names this conf dir (one started by a run that
# died before its pid file was written).
our_pids() {
    local pid
    {
        file_pids
        grep -lzxF -- "-Dlog4j.configurationFile=file:$CONF_DIR/log4j.properties" /proc/[0-9]*/cmdline 2>/dev/null |
            sed -n 's|^/proc/\([0-9]*\)/cmdline$|\1|p' || true
    } | sort -un | while read -r pid; do
        if ours "$pid"; then printf '%s\n' "$pid"; fi
    done
}

# stop_pids PID...: SIGTERM, up to 15 s for a clean exit, then SIGKILL.
stop_pids() {
    (($# > 0)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    local deadline=$((SECONDS + 15)) pid alive
    while :; do
        alive=()
        for pid in "$@"; do
            if kill -0 "$pid" 2>/dev/null; then alive+=("$pid"); fi
        done
        ((${#alive[@]} > 0)) || return 0
        if ((SECONDS >= deadline)); then
            printf 'flink-cluster: pids %s did not stop within 15 s; killing them\n' "${alive[*]}" >&2
            kill -KILL "${alive[@]}" 2>/dev/null || true
            return 0
        fi
        sleep 0.2
    done
}

log_tail() {
    local f
    for f in "$LOG_DIR"/*.log "$LOG_DIR"/*.out; do
        [[ -s $f ]] || continue
        printf '==> %s (last 20 lines) <==\n' "$f" >&2
        tail -n 20 "$f" >&2
    done
}

# wait_for_tms COUNT TIMEOUT: until /overview shows COUNT TaskManagers.
wait_for_tms() {
    local want=$1 timeout=$2 deadline have
    deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        have=$(registered_tms)
        if [[ -n $have ]] && ((have == want)); then return 0; fi
        if [[ -z $(file_pids) ]]; then
            printf 'flink-cluster: error: no Flink process of %s is running any more\n' "$WORKDIR" >&2
            return 1
        fi
        sleep 0.5
    done
    printf 'flink-cluster: error: %s TaskManager(s) registered after %s s, expected %s\n' \
        "${have:-no REST answer;}" "$timeout" "$want" >&2
    return 1
}

start_tm() {
    flink_env
    "$FLINK_HOME/bin/taskmanager.sh" start -D "metrics.reporter.prom.port=$TM_PROM_PORTS" \
        >>"$LOG_DIR/scripts.out" 2>&1 ||
        die "taskmanager.sh start failed; see $LOG_DIR/scripts.out"
}

start_failed() {
    local rc=$?
    ((rc != 0)) || return 0
    printf 'flink-cluster: start failed (exit %s); logs:\n' "$rc" >&2
    log_tail
    printf 'flink-cluster: stopping what was started in %s\n' "$WORKDIR" >&2
    cmd_stop >&2 || true
}

cmd_start() {
    # Empty port options mean "not given": defaults, or free ports if busy.
    local tms=1 slots=4 rest_port="" rpc_port="" prom_ports="" timeout=90
    JM_MEMORY=1g TM_MEMORY=1g EXTRA_CONF=()
    while (($# > 0)); do
        [[ $# -ge 2 ]] || die "$1 needs a value"
        case $1 in
            --taskmanagers) tms=$2 ;;
            --slots) slots=$2 ;;
            --rest-port) rest_port=$2 ;;
            --rpc-port) rpc_port=$2 ;;
            --prom-ports) prom_ports=$2 ;;
            --tm-memory) TM_MEMORY=$2 ;;
            --jm-memory) JM_MEMORY=$2 ;;
            --timeout) timeout=$2 ;;
            --conf)
                [[ $2 == *=* ]] || die "--conf needs KEY=VALUE, got '$2'"
                EXTRA_CONF+=("$2")
                ;;
            *) die "unknown option $1" ;;
        esac
        shift 2
    done
    local n
    for n in "$tms" "$slots" "${rest_port:-0}" "${rpc_port:-0}" "$timeout"; do
        [[ $n =~ ^[0-9]+$ ]] || die "not a number: '$n'"
    done
    ((tms >= 1 && slots >= 1)) || die "--taskmanagers and --slots must be at least 1"

    load_flink_home
    if [[ -n $(our_pids) ]]; then
        die "a cluster is already running in $WORKDIR; run: $0 stop $WORKDIR"
    fi
    local t0=$SECONDS
    REST_PORT=$(pick_port REST "$rest_port" "$DEFAULT_REST_PORT")
    RPC_PORT=$(pick_port RPC "$rpc_port" "$DEFAULT_RPC_PORT")
    [[ $REST_PORT != "$RPC_PORT" ]] || die "the REST and RPC ports are both $REST_PORT"
    # Room for the JobManager, the TaskManagers and two more (add-tm).
    PROM_PORTS=$(pick_prom_ports "$prom_ports" $((tms + 3)))
    # The JobManager gets the first free port of the range to itself and the
    # TaskManagers the rest, so that the JobManager's port is known and a
    # TaskManager's never is the JobManager's (9249 and 9250-9260 by default).
    local p last=${PROM_PORTS#*-}
    JM_PROM_PORT=""
    for ((p = ${PROM_PORTS%-*}; p < last; p++)); do
        if port_free "$p"; then
            JM_PROM_PORT=$p
            break
        fi
    done
    [[ -n $JM_PROM_PORT ]] || die "no free Prometheus port in $PROM_PORTS below its last one"
    TM_PROM_PORTS=$((JM_PROM_PORT + 1))-$last
    SLOTS=$slots
    rm -rf "$LOG_DIR" "$PID_DIR"
    write_config

    # From here on, a failure or an interrupt stops whatever was started.
    trap 'start_failed' EXIT
    trap 'exit 130' INT TERM
    flink_env
    # The launch scripts spend seconds each in a JVM that derives the memory
    # settings, so run them side by side; TaskManagers retry until the
    # ResourceManager is up.
    local launchers=() i pid failed=0
    "$FLINK_HOME/bin/jobmanager.sh" start -D "metrics.reporter.prom.port=$JM_PROM_PORT" \
        >>"$LOG_DIR/scripts.out" 2>&1 &
    launchers+=("$!")
    for ((i = 0; i < tms; i++)); do
        start_tm &
        launchers+=("$!")
    done
    for pid in "${launchers[@]}"; do
        wait "$pid" || failed=1
    done
    ((failed == 0)) || die "a Flink launch script failed; see $LOG_DIR/scripts.out"
    # The timeout counts from the start of this command.
    local left=$((timeout - (SECONDS - t0)))
    wait_for_tms "$tms" $((left > 1 ? left : 1))
    trap - EXIT INT TERM
    printf 'flink cluster up in %ss: %s (%s TaskManager(s) x %s slots; Prometheus: JobManager %s, TaskManagers %s; workdir %s)\n' \
        $((SECONDS - t0)) "http://127.0.0.1:$REST_PORT" "$tms" "$slots" "$JM_PROM_PORT" "$TM_PROM_PORTS" "$WORKDIR"
}

cmd_stop() {
    local pids
    mapfile -t pids < <(our_pids)
    stop_pids "${pids[@]}"
    rm -f "$JM_PID_FILE" "$TM_PID_FILE" "$JM_PID_FILE.tmp" "$TM_PID_FILE.tmp"
    if ((${#pids[@]} > 0)); then
        printf 'flink cluster in %s stopped (%s process(es))\n' "$WORKDIR" "${#pids[@]}"
    fi
}

# prom_port LOGFILE: the port its Prometheus reporter logged.
prom_port() {
    sed -n 's/.*Started PrometheusReporter HTTP server on port \([0-9]*\).*/\1/p' "$1" 2>/dev/null | tail -n 1
}

# log_of PID: the log file of one of our JVMs (its -Dlog.file).
log_of() {
    tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | sed -n 's/^-Dlog\.file=//p' | head -n 1
}

# resource_id LOGFILE: the TaskManager's ResourceID (tm_id in metrics, with
# '.' and '-' turned into '_').
resource_id() {
    sed -n 's/.*Starting TaskManager with ResourceID: \([^ ]*\).*/\1/p' "$1" 2>/dev/null | tail -n 1
}

# status: key=value lines; one `taskmanager=PID PROM_PORT RESOURCE_ID` line
# per live TaskManager, oldest first. Ports and ids are read from each live
# process's own log, so they are right however many were added or removed.
cmd_status() {
    local jm tm=() url body pid log ports=()
    mapfile -t tm < <(pids_in "$TM_PID_FILE")
    jm=$(pids_in "$JM_PID_FILE")
    url=$(rest_url || true)
    body=""
    if [[ -n $url ]]; then body=$(curl -fsS --max-time 2 "$url/overview" 2>/dev/null || true); fi
    printf 'workdir=%s\n' "$WORKDIR"
    printf 'conf_dir=%s\n' "$CONF_DIR"
    printf 'rest_url=%s\n' "$url"
    printf 'jobmanager_pid=%s\n' "$jm"
    if [[ -n $jm ]]; then
        printf 'jobmanager_prom_port=%s\n' "$(prom_port "$(log_of "$jm")")"
    fi
    for pid in "${tm[@]}"; do
        log=$(log_of "$pid")
        ports+=("$(prom_port "$log")")
        printf 'taskmanager=%s %s %s\n' "$pid" "${ports[-1]:--}" "$(resource_id "$log")"
    done
    printf 'taskmanager_pids=%s\n' "${tm[*]}"
    printf 'taskmanager_prom_ports=%s\n' "${ports[*]}"
    if [[ -n $body ]]; then
        printf 'taskmanagers=%s\n' "$(sed -n 's/.*"taskmanagers":\([0-9]*\).*/\1/p' <<<"$body")"
        printf 'slots_total=%s\n' "$(sed -n 's/.*"slots-total":\([0-9]*\).*/\1/p' <<<"$body")"
        printf 'slots_available=%s\n' "$(sed -n 's/.*"slots-available":\([0-9]*\).*/\1/p' <<<"$body")"
        printf 'jobs_running=%s\n' "$(sed -n 's/.*"jobs-running":\([0-9]*\).*/\1/p' <<<"$body")"
        printf 'state=running\n'
        return 0
    elif [[ -n $jm || ${#tm[@]} -gt 0 ]]; then
        printf 'state=degraded\n'
        return 1
    fi
    printf 'state=stopped\n'
    return 3
}

cmd_add_tm() {
    load_flink_home
    [[ -n $(rest_url) && -f $CONF_DIR/config.yaml ]] || die "no cluster was started in $WORKDIR"
    local before
    before=$(registered_tms)
    [[ -n $before ]] || die "the cluster in $WORKDIR does not answer on $(rest_url)"
    TM_PROM_PORTS=$(cluster_var FLINK_TM_PROM_PORTS)
    [[ -n $TM_PROM_PORTS ]] || die "$WORKDIR/cluster.env lacks FLINK_TM_PROM_PORTS"
    start_tm
    wait_for_tms $((before + 1)) 90 || {
        log_tail
        exit 1
    }
    printf 'taskmanager added: %s registered\n' $((before + 1))
}

cmd_remove_tm() {
    [[ -s $TM_PID_FILE ]] || die "no TaskManager to remove in $WORKDIR"
    local last before
    before=$(registered_tms)
    last=$(tail -n 1 "$TM_PID_FILE")
    # Same bookkeeping as `taskmanager.sh stop`: drop the last line.
    sed '$d' "$TM_PID_FILE" >"$TM_PID_FILE.tmp"
    mv "$TM_PID_FILE.tmp" "$TM_PID_FILE"
    if ours "$last"; then
        stop_pids "$last"
    fi
    # A TaskManager that shuts down cleanly deregisters at once.
    if [[ -n $before ]] && ((before > 0)); then
        local deadline=$((SECONDS + 30)) have
        while ((SECONDS < deadline)); do
            have=$(registered_tms)
            [[ -n $have ]] && ((have < before)) && break
            sleep 0.5
        done
    fi
    printf 'taskmanager removed (pid %s): %s registered\n' "$last" "$(registered_tms)"
}

cmd_flink() {
    load_flink_home
    [[ -f $CONF_DIR/config.yaml ]] || die "no cluster was started in $WORKDIR"
    flink_env
    exec "$FLINK_HOME/bin/flink" "$@"
}

main() {
    (($# >= 2)) || usage
    local cmd=$1 dir=$2
    shift 2
    case $cmd in
        start)
            set_workdir "$dir" create
            cmd_start "$@"
            ;;
        stop | status | add-tm | remove-tm | flink)
            set_workdir "$dir"
            [[ $cmd == stop || $cmd == status || -d $WORKDIR ]] || die "no such WORKDIR: $dir"
            [[ $cmd == flink || $# -eq 0 ]] || die "$cmd takes no options"
            "cmd_${cmd//-/_}" "$@"
            ;;
        *) usage ;;
    esac
}

main "$@"
