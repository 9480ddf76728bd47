//! An in-process fake Kubernetes API server for tests: HTTP/JSON over a real socket, so that the
//! real `kube::Client` talks to it exactly as to a cluster.
//!
//! - Objects live in memory, keyed by (group, version, plural), namespace and name, with real
//!   `resourceVersion` semantics: one counter for the whole store, bumped by every write; a write
//!   that carries a stale `metadata.resourceVersion` (PUT, or a patch that includes it) is
//!   refused with 409 Conflict; a write that changes nothing bumps nothing.
//! - `metadata.generation` starts at 1 and grows when anything besides metadata and status
//!   changes. Resources registered with a status subresource keep status and spec apart like the
//!   API server does (`/status` writes only status, the main resource never writes it).
//! - GET, LIST (label selectors `k=v`, `k!=v`, `k`, `!k`, `k in (..)`, `k notin (..)`; field
//!   selectors on `metadata.name`/`metadata.namespace`), WATCH (`?watch=true`: a chunked stream
//!   of JSON lines from `resourceVersion`, replayed from the event history; `410 Expired` when
//!   that is too old; ends after `timeoutSeconds`), POST (`generateName` too), PUT, PATCH (JSON
//!   merge patch, JSON patch, server-side apply — approximated as a merge without deletions that
//!   creates missing objects — and strategic merge for built-in kinds only, 415 for custom
//!   resources as in a real cluster), DELETE (with garbage collection of dependents by owner
//!   reference).
//! - Faults: the next N matching requests fail with a status code, are delayed past the client's
//!   timeout, or are carried out and then answered late (a lost response); watch streams can be
//!   dropped at will.
//! - Every request is recorded (method, path, query, content type, body, answer) for assertions.
//!
//! [`operator::OperatorSim`] plays the Flink Kubernetes Operator against it.

pub mod operator;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// (group, version, plural); the core group is `""`.
pub type Gvr = (String, String, String);

pub fn gvr(group: &str, version: &str, plural: &str) -> Gvr {
    (group.to_string(), version.to_string(), plural.to_string())
}

pub fn flinkdeployments() -> Gvr {
    gvr("flink.apache.org", "v1beta1", "flinkdeployments")
}
pub fn leases() -> Gvr {
    gvr("coordination.k8s.io", "v1", "leases")
}
pub fn events_v1() -> Gvr {
    gvr("events.k8s.io", "v1", "events")
}
pub fn core_events() -> Gvr {
    gvr("", "v1", "events")
}
pub fn pods() -> Gvr {
    gvr("", "v1", "pods")
}
pub fn networkchaos() -> Gvr {
    gvr("chaos-mesh.org", "v1alpha1", "networkchaos")
}

#[derive(Clone, Debug)]
struct ResourceInfo {
    kind: String,
    status_subresource: bool,
    custom: bool,
}

/// What a fault does to a matching request.
#[derive(Clone, Debug)]
pub enum FaultAction {
    /// Answer with this status code (and a Status body) without doing anything.
    Status(u16),
    /// Do nothing for this long, then answer normally (clients time out first).
    Delay(Duration),
    /// Carry the request out, then wait this long before answering: the write happened, the
    /// client never learns it did.
    ApplyThenDelay(Duration),
}

#[derive(Clone, Debug)]
pub struct Fault {
    pub method: Option<Method>,
    /// Substring of the path the fault applies to.
    pub path_contains: String,
    /// Only requests whose query contains this (e.g. `watch=true`); empty matches any.
    pub query_contains: String,
    pub times: usize,
    pub action: FaultAction,
}

impl Fault {
    pub fn new(method: Option<Method>, path_contains: &str, times: usize, action: FaultAction) -> Self {
        Fault { method, path_contains: path_contains.into(), query_contains: String::new(), times, action }
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Option<Value>,
    pub status: u16,
}

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    gvr: Gvr,
    namespace: String,
    kind: &'static str,
    object: Value,
}

struct Db {
    rv: u64,
    uid: u64,
    objects: BTreeMap<(Gvr, String, String), Value>,
    history: VecDeque<Change>,
    resources: HashMap<Gvr, ResourceInfo>,
}

struct Shared {
    db: Mutex<Db>,
    changes: broadcast::Sender<Change>,
    faults: Mutex<Vec<Fault>>,
    log: Mutex<Vec<Recorded>>,
    epoch: watch::Sender<u64>,
}

const HISTORY: usize = 10_000;

/// See the module documentation.
#[derive(Clone)]
pub struct FakeApiServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer").field("addr", &self.addr).finish()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(code: u16, body: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(code).expect("status"))
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

fn fail(code: u16, reason: &str, message: impl Into<String>) -> (u16, Value) {
    (code, status_body(code, reason, &message.into()))
}

impl FakeApiServer {
    /// Binds 127.0.0.1 on a free port and serves FlinkDeployments, Leases, Events (core and
    /// events.k8s.io) and Pods. NetworkChaos only after [`FakeApiServer::install_chaos_mesh`].
    pub async fn start() -> Self {
        let (changes, _) = broadcast::channel(4096);
        let (epoch, _) = watch::channel(0);
        let mut resources = HashMap::new();
        let mut reg = |g: Gvr, kind: &str, status: bool, custom: bool| {
            resources.insert(g, ResourceInfo { kind: kind.into(), status_subresource: status, custom });
        };
        reg(flinkdeployments(), "FlinkDeployment", true, true);
        reg(leases(), "Lease", false, false);
        reg(events_v1(), "Event", false, false);
        reg(core_events(), "Event", false, false);
        reg(pods(), "Pod", true, false);
        let shared = Arc::new(Shared {
            db: Mutex::new(Db {
                rv: 100,
                uid: 0,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                resources,
            }),
            changes,
            faults: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            epoch,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let s = shared.clone();
        let app =
            axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let s = s.clone();
                async move { handle(s, method, uri, headers, body).await }
            });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApiServer { addr, shared, task: Arc::new(task) }
    }

    /// A `kube::Client` for this server.
    pub fn client(&self) -> kube::Client {
        // Several rustls providers are compiled in (ring for kube, aws-lc-rs for reqwest): pick one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url: axum::http::Uri = format!("http://{}", self.addr).parse().expect("uri");
        let mut cfg = kube::Config::new(url);
        cfg.default_namespace = "default".into();
        cfg.connect_timeout = Some(Duration::from_secs(2));
        kube::Client::try_from(cfg).expect("client")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Registers the NetworkChaos resource, as installing Chaos Mesh's CRD does.
    pub fn install_chaos_mesh(&self) {
        let mut db = self.shared.db.lock().unwrap();
        db.resources.insert(
            networkchaos(),
            ResourceInfo { kind: "NetworkChaos".into(), status_subresource: true, custom: true },
        );
    }

    pub fn inject(&self, fault: Fault) {
        self.shared.faults.lock().unwrap().push(fault);
    }

    pub fn clear_faults(&self) {
        self.shared.faults.lock().unwrap().clear();
    }

    /// Ends every open watch stream (clients see the connection close and re-watch).
    pub fn drop_watches(&self) {
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.log.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.shared.log.lock().unwrap().clear();
    }

    pub fn get(&self, g: &Gvr, ns: &str, name: &str) -> Option<Value> {
        self.shared.db.lock().unwrap().objects.get(&(g.clone(), ns.into(), name.into())).cloned()
    }

    pub fn list(&self, g: &Gvr, ns: Option<&str>) -> Vec<Value> {
        let db = self.shared.db.lock().unwrap();
        db.objects
            .iter()
            .filter(|((gg, n, _), _)| gg == g && ns.is_none_or(|x| x == n))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates or replaces an object directly (a user's `kubectl apply`), bumping the version.
    pub fn put(&self, g: &Gvr, mut obj: Value) -> Value {
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).expect("name").to_string();
        let mut db = self.shared.db.lock().unwrap();
        let key = (g.clone(), ns.clone(), name);
        let (kind, old) = match db.objects.get(&key) {
            Some(o) => ("MODIFIED", Some(o.clone())),
            None => ("ADDED", None),
        };
        prepare_new(&mut db, &mut obj, old.as_ref());
        commit(&self.shared, &mut db, key, kind, obj)
    }

    /// Changes an object in place (the operator updating status, a user editing), bumping the
    /// version and notifying watchers. Returns `None` if the object does not exist.
    pub fn update(&self, g: &Gvr, ns: &str, name: &str, f: impl FnOnce(&mut Value)) -> Option<Value> {
        let mut db = self.shared.db.lock().unwrap();
        let key = (g.clone(), ns.to_string(), name.to_string());
        let old = db.objects.get(&key)?.clone();
        let mut obj = old.clone();
        f(&mut obj);
        if strip_rv(&obj) == strip_rv(&old) {
            return Some(old);
        }
        prepare_new(&mut db, &mut obj, Some(&old));
        Some(commit(&self.shared, &mut db, key, "MODIFIED", obj))
    }

    pub fn delete(&self, g: &Gvr, ns: &str, name: &str) -> Option<Value> {
        let mut db = self.shared.db.lock().unwrap();
        delete_cascade(&self.shared, &mut db, &(g.clone(), ns.to_string(), name.to_string()))
    }

    pub fn resource_version(&self) -> u64 {
        self.shared.db.lock().unwrap().rv
    }
}

fn strip_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    v
}

fn without(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        for k in keys {
            m.remove(*k);
        }
    }
    v
}

/// Fills server-managed metadata of an object about to be stored.
fn prepare_new(db: &mut Db, obj: &mut Value, old: Option<&Value>) {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match old {
        Some(o) => {
            for k in ["uid", "creationTimestamp"] {
                if let Some(v) = o.pointer(&format!("/metadata/{k}")) {
                    obj["metadata"][k] = v.clone();
                }
            }
            let gen_old = o.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
            let changed = without(obj, &["metadata", "status"]) != without(o, &["metadata", "status"]);
            obj["metadata"]["generation"] = json!(if changed { gen_old + 1 } else { gen_old });
        }
        None => {
            db.uid += 1;
            obj["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", db.uid));
            obj["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            obj["metadata"]["generation"] = json!(1);
        }
    }
}

fn commit(
    shared: &Shared,
    db: &mut Db,
    key: (Gvr, String, String),
    kind: &'static str,
    mut obj: Value,
) -> Value {
    db.rv += 1;
    obj["metadata"]["resourceVersion"] = json!(db.rv.to_string());
    let change =
        Change { rv: db.rv, gvr: key.0.clone(), namespace: key.1.clone(), kind, object: obj.clone() };
    if kind == "DELETED" {
        db.objects.remove(&key);
    } else {
        db.objects.insert(key, obj.clone());
    }
    db.history.push_back(change.clone());
    while db.history.len() > HISTORY {
        db.history.pop_front();
    }
    let _ = shared.changes.send(change);
    obj
}

fn delete_cascade(shared: &Shared, db: &mut Db, key: &(Gvr, String, String)) -> Option<Value> {
    let obj = db.objects.get(key)?.clone();
    let out = commit(shared, db, key.clone(), "DELETED", obj.clone());
    let uid = obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string();
    let dependents: Vec<(Gvr, String, String)> = db
        .objects
        .iter()
        .filter(|(_, v)| {
            v.pointer("/metadata/ownerReferences").and_then(Value::as_array).is_some_and(|refs| {
                refs.iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(uid.as_str()))
            })
        })
        .map(|(k, _)| k.clone())
        .collect();
    for d in dependents {
        delete_cascade(shared, db, &d);
    }
    Some(out)
}

/// A parsed request path.
struct Target {
    gvr: Gvr,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    Some(Target { gvr: gvr(group, version, plural), namespace, name, sub })
}

fn query_map(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(x) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or(""), 16)
        {
            out.push(x);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Label selector matching (the equality- and set-based forms).
pub fn selector_matches(selector: &str, labels: &Map<String, Value>) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    split_selector(selector).iter().all(|term| {
        let t = term.trim();
        if t.is_empty() {
            return true;
        }
        if let Some((k, vs)) = t.split_once(" notin ") {
            let set = parse_set(vs);
            return get(k.trim()).is_none_or(|v| !set.contains(&v.to_string()));
        }
        if let Some((k, vs)) = t.split_once(" in ") {
            let set = parse_set(vs);
            return get(k.trim()).is_some_and(|v| set.contains(&v.to_string()));
        }
        if let Some((k, v)) = t.split_once("!=") {
            return get(k.trim()) != Some(v.trim());
        }
        if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            return get(k.trim()) == Some(v.trim());
        }
        if let Some(k) = t.strip_prefix('!') {
            return get(k.trim()).is_none();
        }
        get(t).is_some()
    })
}

fn split_selector(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

fn parse_set(s: &str) -> Vec<String> {
    s.trim().trim_start_matches('(').trim_end_matches(')').split(',').map(|x| x.trim().to_string()).collect()
}

fn field_matches(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|t| {
        let (k, v, neg) = match t.split_once("!=") {
            Some((k, v)) => (k, v, true),
            None => match t.split_once("==").or_else(|| t.split_once('=')) {
                Some((k, v)) => (k, v, false),
                None => return true,
            },
        };
        let actual =
            obj.pointer(&format!("/{}", k.trim().replace('.', "/"))).and_then(Value::as_str).unwrap_or("");
        (actual == v.trim()) != neg
    })
}

fn object_matches(obj: &Value, q: &HashMap<String, String>) -> bool {
    let empty = Map::new();
    let labels = obj.pointer("/metadata/labels").and_then(Value::as_object).unwrap_or(&empty);
    q.get("labelSelector").is_none_or(|s| selector_matches(s, labels))
        && q.get("fieldSelector").is_none_or(|s| field_matches(s, obj))
}

async fn handle(s: Arc<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let parsed_body: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok().or_else(|| serde_saphyr::from_slice::<Value>(&body).ok())
    };
    let fault = {
        let mut faults = s.faults.lock().unwrap();
        let pos = faults.iter().position(|f| {
            f.times > 0
                && f.method.as_ref().is_none_or(|m| *m == method)
                && path.contains(&f.path_contains)
                && (f.query_contains.is_empty() || query.contains(&f.query_contains))
        });
        pos.map(|i| {
            faults[i].times -= 1;
            let a = faults[i].action.clone();
            if faults[i].times == 0 {
                faults.remove(i);
            }
            a
        })
    };
    let record = |status: u16| Recorded {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        body: parsed_body.clone(),
        status,
    };
    match fault {
        Some(FaultAction::Status(code)) => {
            s.log.lock().unwrap().push(record(code));
            let reason = match code {
                409 => "Conflict",
                500 => "InternalError",
                503 => "ServiceUnavailable",
                429 => "TooManyRequests",
                _ => "Unknown",
            };
            return respond(code, &status_body(code, reason, "injected fault"));
        }
        Some(FaultAction::Delay(d)) => {
            tokio::time::sleep(d).await;
        }
        _ => {}
    }
    let q = query_map(&query);
    if method == Method::GET && q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        s.log.lock().unwrap().push(record(200));
        return watch_response(s.clone(), &path, q);
    }
    let (code, out) = execute(&s, &method, &path, &q, &content_type, parsed_body.as_ref());
    s.log.lock().unwrap().push(record(code));
    if let Some(FaultAction::ApplyThenDelay(d)) = fault {
        tokio::time::sleep(d).await;
    }
    respond(code, &out)
}

fn execute(
    s: &Shared,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
    content_type: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let Some(t) = parse_path(path) else { return fail(404, "NotFound", format!("no route {path}")) };
    let mut db = s.db.lock().unwrap();
    let Some(info) = db.resources.get(&t.gvr).cloned() else {
        return fail(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({})", t.gvr.2),
        );
    };
    let ns = t.namespace.clone().unwrap_or_default();
    let api_version = if t.gvr.0.is_empty() { t.gvr.1.clone() } else { format!("{}/{}", t.gvr.0, t.gvr.1) };
    match (method.as_str(), &t.name) {
        ("GET", None) => {
            let items: Vec<Value> = db
                .objects
                .iter()
                .filter(|((g, n, _), v)| {
                    *g == t.gvr && (t.namespace.is_none() || *n == ns) && object_matches(v, q)
                })
                .map(|(_, v)| v.clone())
                .collect();
            (
                200,
                json!({"apiVersion": api_version, "kind": format!("{}List", info.kind),
                         "metadata": {"resourceVersion": db.rv.to_string()}, "items": items}),
            )
        }
        ("GET", Some(name)) => match db.objects.get(&(t.gvr.clone(), ns.clone(), name.clone())) {
            Some(o) => (200, o.clone()),
            None => fail(404, "NotFound", format!("{} \"{name}\" not found", t.gvr.2)),
        },
        ("POST", None) => {
            let Some(mut obj) = body.cloned() else { return fail(400, "BadRequest", "no body") };
            if obj.pointer("/metadata/name").and_then(Value::as_str).is_none() {
                match obj.pointer("/metadata/generateName").and_then(Value::as_str) {
                    Some(prefix) => {
                        let n = format!("{prefix}{:05x}", db.uid + 1);
                        obj["metadata"]["name"] = json!(n);
                    }
                    None => return fail(422, "Invalid", "metadata.name: Required value"),
                }
            }
            let name = obj["metadata"]["name"].as_str().unwrap().to_string();
            if t.namespace.is_some() {
                obj["metadata"]["namespace"] = json!(ns);
            }
            let key = (t.gvr.clone(), ns.clone(), name.clone());
            if db.objects.contains_key(&key) {
                return fail(409, "AlreadyExists", format!("{} \"{name}\" already exists", t.gvr.2));
            }
            if info.status_subresource
                && let Some(m) = obj.as_object_mut()
            {
                m.remove("status");
            }
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            prepare_new(&mut db, &mut obj, None);
            (201, commit(s, &mut db, key, "ADDED", obj))
        }
        ("PUT", Some(name)) => {
            let Some(mut obj) = body.cloned() else { return fail(400, "BadRequest", "no body") };
            let key = (t.gvr.clone(), ns.clone(), name.clone());
            let Some(old) = db.objects.get(&key).cloned() else {
                return fail(404, "NotFound", format!("{} \"{name}\" not found", t.gvr.2));
            };
            if let Some(rv) = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str)
                && Some(rv) != old.pointer("/metadata/resourceVersion").and_then(Value::as_str)
            {
                return fail(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        t.gvr.2
                    ),
                );
            }
            obj = split_status(&info, t.sub.as_deref(), &old, obj);
            write(s, &mut db, key, &old, obj)
        }
        ("PATCH", Some(name)) => {
            let Some(patch) = body.cloned() else { return fail(400, "BadRequest", "no body") };
            let key = (t.gvr.clone(), ns.clone(), name.clone());
            let ct = content_type.split(';').next().unwrap_or("").trim();
            let existing = db.objects.get(&key).cloned();
            let old = match (existing, ct) {
                (Some(o), _) => o,
                (None, "application/apply-patch+yaml") => {
                    if q.get("fieldManager").is_none() {
                        return fail(422, "Invalid", "fieldManager is required for apply requests");
                    }
                    let mut obj = patch.clone();
                    obj["metadata"]["namespace"] = json!(ns);
                    prepare_new(&mut db, &mut obj, None);
                    return (201, commit(s, &mut db, key, "ADDED", obj));
                }
                (None, _) => return fail(404, "NotFound", format!("{} \"{name}\" not found", t.gvr.2)),
            };
            let mut obj = old.clone();
            match ct {
                "application/merge-patch+json" => merge(&mut obj, &patch, true),
                "application/strategic-merge-patch+json" if !info.custom => merge(&mut obj, &patch, true),
                "application/strategic-merge-patch+json" => {
                    return fail(
                        415,
                        "UnsupportedMediaType",
                        "strategic merge patch is not supported for custom resources",
                    );
                }
                "application/apply-patch+yaml" => {
                    if q.get("fieldManager").is_none() {
                        return fail(422, "Invalid", "fieldManager is required for apply requests");
                    }
                    merge(&mut obj, &patch, false)
                }
                "application/json-patch+json" => {
                    let p: json_patch::Patch = match serde_json::from_value(patch.clone()) {
                        Ok(p) => p,
                        Err(e) => return fail(400, "BadRequest", e.to_string()),
                    };
                    if let Err(e) = json_patch::patch(&mut obj, &p) {
                        return fail(422, "Invalid", e.to_string());
                    }
                }
                other => {
                    return fail(415, "UnsupportedMediaType", format!("unsupported patch type {other:?}"));
                }
            }
            let want_rv =
                obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string);
            let have_rv =
                old.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string);
            if want_rv.is_some() && want_rv != have_rv {
                return fail(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        t.gvr.2
                    ),
                );
            }
            obj = split_status(&info, t.sub.as_deref(), &old, obj);
            write(s, &mut db, key, &old, obj)
        }
        ("DELETE", Some(name)) => {
            let key = (t.gvr.clone(), ns.clone(), name.clone());
            match delete_cascade(s, &mut db, &key) {
                Some(o) => (200, o),
                None => fail(404, "NotFound", format!("{} \"{name}\" not found", t.gvr.2)),
            }
        }
        _ => fail(405, "MethodNotAllowed", format!("{method} {path}")),
    }
}

/// Keeps status and the rest apart for resources with a status subresource.
fn split_status(info: &ResourceInfo, sub: Option<&str>, old: &Value, new: Value) -> Value {
    if !info.status_subresource {
        return new;
    }
    if sub == Some("status") {
        let mut out = old.clone();
        match new.get("status") {
            Some(st) => out["status"] = st.clone(),
            None => {
                out.as_object_mut().unwrap().remove("status");
            }
        }
        out
    } else {
        let mut out = new;
        match old.get("status") {
            Some(st) => out["status"] = st.clone(),
            None => {
                out.as_object_mut().unwrap().remove("status");
            }
        }
        out
    }
}

fn write(s: &Shared, db: &mut Db, key: (Gvr, String, String), old: &Value, mut obj: Value) -> (u16, Value) {
    for k in ["name", "namespace", "uid", "creationTimestamp"] {
        if let Some(v) = old.pointer(&format!("/metadata/{k}")) {
            obj["metadata"][k] = v.clone();
        }
    }
    obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    if let Some(g) = old.pointer("/metadata/generation") {
        obj["metadata"]["generation"] = g.clone();
    }
    if strip_rv(&obj) == strip_rv(old) {
        // A no-op write: nothing changes, not even the resourceVersion.
        return (200, old.clone());
    }
    prepare_new(db, &mut obj, Some(old));
    (200, commit(s, db, key, "MODIFIED", obj))
}

/// JSON merge patch; `deletions: false` ignores nulls (the server-side apply approximation).
fn merge(target: &mut Value, patch: &Value, deletions: bool) {
    if let Value::Object(pm) = patch {
        if !target.is_object() {
            *target = json!({});
        }
        let tm = target.as_object_mut().unwrap();
        for (k, v) in pm {
            if v.is_null() {
                if deletions {
                    tm.remove(k);
                }
            } else {
                merge(tm.entry(k.clone()).or_insert(Value::Null), v, deletions);
            }
        }
    } else {
        *target = patch.clone();
    }
}

fn watch_line(kind: &str, obj: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap();
    v.push(b'\n');
    Bytes::from(v)
}

fn watch_response(s: Arc<Shared>, path: &str, q: HashMap<String, String>) -> Response {
    let Some(t) = parse_path(path) else { return respond(404, &status_body(404, "NotFound", "no route")) };
    let known = s.db.lock().unwrap().resources.contains_key(&t.gvr);
    if !known {
        return respond(
            404,
            &status_body(404, "NotFound", "the server could not find the requested resource"),
        );
    }
    let timeout = q.get("timeoutSeconds").and_then(|x| x.parse::<u64>().ok()).unwrap_or(290);
    let from: Option<u64> =
        q.get("resourceVersion").filter(|x| !x.is_empty() && *x != "0").and_then(|x| x.parse().ok());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(1024);
    let mut live = s.changes.subscribe();
    let mut epoch = s.epoch.subscribe();
    let ns = t.namespace.clone();
    let gvr_ = t.gvr.clone();
    let in_scope = move |c: &Change, q: &HashMap<String, String>| {
        c.gvr == gvr_ && ns.as_ref().is_none_or(|n| *n == c.namespace) && object_matches(&c.object, q)
    };
    // What to send first, computed under the lock together with the position in the history.
    let (initial, mut last, expired) = {
        let db = s.db.lock().unwrap();
        match from {
            None => {
                let items: Vec<Bytes> = db
                    .objects
                    .iter()
                    .filter(|((g, n, _), v)| {
                        *g == t.gvr && t.namespace.as_ref().is_none_or(|x| x == n) && object_matches(v, &q)
                    })
                    .map(|(_, v)| watch_line("ADDED", v))
                    .collect();
                (items, db.rv, false)
            }
            Some(rv) => {
                let oldest = db.history.front().map_or(db.rv + 1, |c| c.rv);
                if rv + 1 < oldest && rv < db.rv {
                    (vec![], rv, true)
                } else {
                    let items = db
                        .history
                        .iter()
                        .filter(|c| c.rv > rv && in_scope(c, &q))
                        .map(|c| watch_line(c.kind, &c.object))
                        .collect();
                    (items, db.rv.max(rv), false)
                }
            }
        }
    };
    tokio::spawn(async move {
        if expired {
            let st = status_body(410, "Expired", "too old resource version");
            let _ = tx.send(Ok(watch_line("ERROR", &st))).await;
            return;
        }
        for b in initial {
            if tx.send(Ok(b)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let start_epoch = *epoch.borrow();
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                r = epoch.changed() => {
                    if r.is_err() || *epoch.borrow() != start_epoch {
                        return;
                    }
                }
                c = live.recv() => match c {
                    Ok(c) => {
                        if c.rv <= last || !in_scope(&c, &q) {
                            continue;
                        }
                        last = c.rv;
                        if tx.send(Ok(watch_line(c.kind, &c.object))).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let st = status_body(410, "Expired", "watch fell behind");
                        let _ = tx.send(Ok(watch_line("ERROR", &st))).await;
                        return;
                    }
                    Err(_) => return,
                },
            }
        }
    });
    let stream = tokio_stream_from(rx);
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("response")
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::convert::Infallible>>,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
