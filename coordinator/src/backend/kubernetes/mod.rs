//! `--backend kubernetes`: FlinkDeployments of the Flink Kubernetes Operator.
//!
//! - [`crd`]: the FlinkDeployment fields Demeter reads and writes, and its labels/annotations.
//! - [`convert`]: pure FlinkDeployment ⇄ [`JobConfig`] translation, patches, readiness.
//! - [`inject`]: the agent sidecar merged into opted-in jobs.
//! - [`profiling`]: profiling copies, failure injection, measurements → [`PerfSample`].
//! - [`leader`]: Lease-based leader election.
//!
//! **Opt-in.** A FlinkDeployment is managed when it carries the label `demeter.dev/managed: "true"`;
//! `demeter.dev/*` annotations set its mode, quota and bounds ([`convert::JobAnnotations`]). One
//! reflector (kube's `watcher`) per configured namespace (or one for all) keeps the opted-in
//! deployments; [`Backend::list_jobs`] reads it, and every change of an object triggers agent
//! injection and annotation checks.
//!
//! **Acting.** Only the leader acts (with `[leader_election] enabled`): patches, profiling
//! copies, events and the status annotation. Reads need no leadership. A job in
//! `recommend-only` mode (globally, by `[[jobs]]` or by annotation) is never patched: Demeter
//! writes only Events and the `demeter.dev/status` annotation on it.
//!
//! **Reconfiguration protocol** ([`KubernetesBackend::reconfigure`], details in
//! `docs/kubernetes.md`): read → refuse when not opted in, recommend-only, over quota or failed →
//! wait while the operator is busy → merge patch with a `resourceVersion` precondition (409: read
//! again and re-plan; a patch whose response was lost is recognised because the object already
//! asks for the target) → wait until the operator has observed the new generation and the job is
//! `RUNNING` and `STABLE` → otherwise roll the changed fields back to their previous values.

pub mod convert;
pub mod crd;
pub mod inject;
pub mod leader;
pub mod profiling;

use demeter_common::{JobConfig, UnixMillis};
use demeter_core::controller::{Mode, ProfilingRun, Reconfiguration};
use demeter_core::obs::PerfSample;
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::convert::{ApplyPath, JobAnnotations, Readiness};
use self::crd::FlinkDeployment;
use self::inject::AgentInjection;
use self::leader::{LeaderElector, LeaseTiming};
use self::profiling::{CopyPlan, ObservationSource, RunTimes};
use super::{Backend, BackendError, BackendJob, BackendResult, JobKey, ReconfigReport};
use crate::runtime::config::CoordinatorConfig;

/// Where the Lease lives.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub timing: LeaseTiming,
}

/// Limits of profiling, across all jobs of this coordinator.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfilingOptions {
    /// Copies running at once.
    pub max_concurrent: usize,
    /// Total TaskManager cores of all running copies.
    pub max_total_cpu: f64,
    /// Total TaskManager memory (MiB) of all running copies.
    pub max_total_memory_mb: u64,
    /// Measurements average this window before the failure (or the end).
    pub sample_window: Duration,
    /// Observations right after the copy starts are skipped.
    pub warmup: Duration,
    /// How long the injected NetworkChaos lasts.
    pub chaos_duration: Duration,
    /// Added to a copy's expected lifetime for its `demeter.dev/expires-at`.
    pub expiry_slack: Duration,
}

impl Default for ProfilingOptions {
    fn default() -> Self {
        ProfilingOptions {
            max_concurrent: 2,
            max_total_cpu: 16.0,
            max_total_memory_mb: 64 * 1024,
            sample_window: Duration::from_secs(60),
            warmup: Duration::from_secs(30),
            chaos_duration: Duration::from_secs(30),
            expiry_slack: Duration::from_secs(600),
        }
    }
}

/// Everything the Kubernetes backend is configured with besides the coordinator's
/// configuration. [`KubernetesOptions::from_config`] fills it from `coordinator.toml`; the other
/// fields have defaults that suit a real cluster.
#[derive(Clone, Debug)]
pub struct KubernetesOptions {
    /// Field manager of every write (`demeter`).
    pub field_manager: String,
    /// This replica's name in the Lease and in Events.
    pub identity: String,
    /// `None`: this replica always acts (one replica only!).
    pub leader_election: Option<LeaseConfig>,
    /// What to inject into opted-in jobs (`[agent_injection]`), if anything.
    pub injection: Option<AgentInjection>,
    /// Inject failures with Chaos Mesh when its CRD is installed (`[profiling] chaos_mesh`);
    /// otherwise a TaskManager pod is deleted.
    pub chaos_mesh: bool,
    /// Upgrade mode written for jobs whose own is `stateless` or unset.
    pub upgrade_mode: String,
    /// How long a change may take to reach RUNNING + STABLE before it is rolled back.
    pub settle_timeout: Duration,
    /// How long to wait for a job that is being upgraded before giving up (transiently).
    pub busy_wait: Duration,
    /// Status polling period while waiting.
    pub poll_interval: Duration,
    /// Bound on every single API request.
    pub api_timeout: Duration,
    /// Attempts at a patch that meets 409 Conflict or a transient error.
    pub max_attempts: u32,
    /// The JobManager's REST endpoint; `{name}` and `{namespace}` are replaced. The operator
    /// names the Service `<name>-rest`.
    pub flink_rest_url: String,
    pub profiling: ProfilingOptions,
    /// How often expired profiling copies are looked for.
    pub janitor_interval: Duration,
}

impl Default for KubernetesOptions {
    fn default() -> Self {
        KubernetesOptions {
            field_manager: "demeter".into(),
            identity: leader::default_identity(),
            leader_election: None,
            injection: None,
            chaos_mesh: false,
            upgrade_mode: "savepoint".into(),
            settle_timeout: Duration::from_secs(600),
            busy_wait: Duration::from_secs(120),
            poll_interval: Duration::from_secs(2),
            api_timeout: Duration::from_secs(15),
            max_attempts: 5,
            flink_rest_url: "http://{name}-rest.{namespace}.svc:8081".into(),
            profiling: ProfilingOptions::default(),
            janitor_interval: Duration::from_secs(60),
        }
    }
}

impl KubernetesOptions {
    /// The options `coordinator.toml` implies: `[leader_election]`, `[agent_injection]` (the two
    /// files are read now), `[profiling] chaos_mesh`, and `[controller] sample_window`.
    pub fn from_config(cfg: &CoordinatorConfig) -> anyhow::Result<Self> {
        let mut o = KubernetesOptions::default();
        let le = &cfg.leader_election;
        if le.enabled {
            let namespace = if le.lease_namespace.is_empty() {
                std::env::var("POD_NAMESPACE").unwrap_or_default()
            } else {
                le.lease_namespace.clone()
            };
            anyhow::ensure!(
                !le.lease_name.is_empty() && !namespace.is_empty(),
                "leader_election.enabled needs leader_election.lease_name and lease_namespace (or POD_NAMESPACE)"
            );
            o.leader_election =
                Some(LeaseConfig { namespace, name: le.lease_name.clone(), timing: LeaseTiming::default() });
        }
        let ai = &cfg.agent_injection;
        if ai.enabled {
            let (Some(sidecar), Some(conf)) = (&ai.sidecar_file, &ai.flink_conf_file) else {
                anyhow::bail!(
                    "agent_injection.enabled needs agent_injection.sidecar_file and flink_conf_file"
                );
            };
            o.injection = Some(AgentInjection::load(sidecar, conf)?);
        }
        o.chaos_mesh = cfg.profiling.chaos_mesh;
        o.profiling.sample_window = cfg.controller.sample_window;
        Ok(o)
    }
}

/// The `demeter.dev/status` annotation: what a person reading the FlinkDeployment wants to know.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DemeterStatus {
    pub mode: Mode,
    pub current: Option<JobConfig>,
    pub recommended: Option<JobConfig>,
    pub reason: String,
    /// `Reconfigured`, `RolledBack`, `ReconfigurationFailed`, `Recommendation`, ...
    pub last_action: String,
    pub updated_at: String,
}

/// A running copy's share of the profiling budget; released when dropped.
struct Reservation {
    inner: Weak<Inner>,
    key: (JobKey, u64),
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(i) = self.inner.upgrade() {
            i.budget.lock().expect("budget lock").remove(&self.key);
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct KubernetesBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    cfg: CoordinatorConfig,
    opts: KubernetesOptions,
    recorder: Recorder,
    leader: watch::Receiver<bool>,
    stores: Vec<Store<FlinkDeployment>>,
    observations: Option<Arc<dyn ObservationSource>>,
    http: reqwest::Client,
    budget: Mutex<BTreeMap<(JobKey, u64), JobConfig>>,
    /// Warnings already sent (job, what), so that a watch event does not repeat them.
    warned: Mutex<HashSet<(JobKey, String)>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    leader_task: Mutex<Option<JoinHandle<()>>>,
    /// Keeps the channel of an always-leading replica open.
    _always_leader: Option<watch::Sender<bool>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
    }
}

impl fmt::Debug for KubernetesBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesBackend")
            .field("identity", &self.inner.opts.identity)
            .field("namespaces", &self.inner.cfg.namespaces)
            .field("leader", &*self.inner.leader.borrow())
            .finish()
    }
}

fn api_error(what: &str, e: kube::Error) -> BackendError {
    match e {
        kube::Error::Api(s) => match s.code {
            404 => BackendError::NotFound(format!("{what}: {}", s.message)),
            401 | 403 => BackendError::Failed(format!(
                "{what}: {} (HTTP {}); check the coordinator's RBAC (docs/kubernetes.md)",
                s.message, s.code
            )),
            409 | 429 | 500..=599 => {
                BackendError::Transient(format!("{what}: {} (HTTP {})", s.message, s.code))
            }
            code => BackendError::Failed(format!("{what}: {} (HTTP {code})", s.message)),
        },
        other => BackendError::Transient(format!("{what}: {other}")),
    }
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Makes ring the process's rustls provider unless one is installed already. The coordinator
/// links two (ring through kube and async-nats, aws-lc-rs through reqwest), and with both rustls
/// cannot pick one itself: building a `kube::Client` would panic. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn now_rfc3339() -> String {
    Timestamp::now().to_string()
}

impl KubernetesBackend {
    /// Starts the backend: reflectors over the configured namespaces, the leader election (if
    /// configured), agent injection and the profiling janitor. Must run inside a Tokio runtime.
    /// `observations` lets profiling measure copies; without it the backend cannot profile.
    pub fn start(
        client: Client,
        cfg: &CoordinatorConfig,
        opts: KubernetesOptions,
        observations: Option<Arc<dyn ObservationSource>>,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let reporter =
            Reporter { controller: opts.field_manager.clone(), instance: Some(opts.identity.clone()) };
        let recorder = Recorder::new(client.clone(), reporter);
        let (leader, always, elector) = match &opts.leader_election {
            Some(l) => {
                let (e, rx) = LeaderElector::new(
                    client.clone(),
                    &l.namespace,
                    &l.name,
                    &opts.identity,
                    l.timing.clone(),
                );
                (rx, None, Some(e))
            }
            None => {
                let (tx, rx) = watch::channel(true);
                (rx, Some(tx), None)
            }
        };
        let namespaces: Vec<Option<String>> = if cfg.namespaces.is_empty() {
            vec![None]
        } else {
            cfg.namespaces.iter().cloned().map(Some).collect()
        };
        let mut writers = Vec::new();
        let mut stores = Vec::new();
        for ns in namespaces {
            let (store, writer) = reflector::store::<FlinkDeployment>();
            stores.push(store);
            writers.push((ns, writer));
        }
        let http = reqwest::Client::builder().timeout(opts.api_timeout).build().unwrap_or_default();
        let inner = Arc::new(Inner {
            client: client.clone(),
            cfg: cfg.clone(),
            opts,
            recorder,
            leader,
            stores,
            observations,
            http,
            budget: Mutex::new(BTreeMap::new()),
            warned: Mutex::new(HashSet::new()),
            stop,
            tasks: Mutex::new(Vec::new()),
            leader_task: Mutex::new(None),
            _always_leader: always,
        });
        if let Some(e) = elector {
            *inner.leader_task.lock().expect("lock") = Some(tokio::spawn(e.run(stop_rx.clone())));
        }
        let mut tasks = Vec::new();
        for (ns, writer) in writers {
            let api: Api<FlinkDeployment> = match &ns {
                Some(n) => Api::namespaced(client.clone(), n),
                None => Api::all(client.clone()),
            };
            let wc = watcher::Config::default().labels(&format!("{}=true", crd::LABEL_MANAGED));
            let weak = Arc::downgrade(&inner);
            tasks.push(tokio::spawn(async move {
                let stream = reflector::reflector(writer, watcher(api, wc).default_backoff()).applied_objects();
                futures::pin_mut!(stream);
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(fd) => {
                            let Some(inner) = weak.upgrade() else { return };
                            inner.on_change(&fd).await;
                        }
                        Err(e) => tracing::warn!(namespace = ?ns, error = %e, "FlinkDeployment watch failed; retrying"),
                    }
                }
            }));
        }
        let weak = Arc::downgrade(&inner);
        let period = inner.opts.janitor_interval;
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let leading = *inner.leader.borrow();
                if leading {
                    inner.janitor().await;
                }
                drop(inner);
                tokio::time::sleep(period).await;
            }
        }));
        *inner.tasks.lock().expect("tasks lock") = tasks;
        KubernetesBackend { inner }
    }

    /// `start` with the client the environment implies (in-cluster service account, else
    /// `KUBECONFIG`/`~/.kube/config`) and the options `cfg` implies.
    pub async fn from_config(
        cfg: &CoordinatorConfig,
        observations: Option<Arc<dyn ObservationSource>>,
    ) -> anyhow::Result<Self> {
        let opts = KubernetesOptions::from_config(cfg)?;
        install_crypto_provider();
        let client = Client::try_default().await.map_err(|e| {
            anyhow::anyhow!("cannot reach the Kubernetes API (in-cluster or kubeconfig): {e}")
        })?;
        Ok(Self::start(client, cfg, opts, observations))
    }

    /// For [`crate::backend::build`] (synchronous, called inside the coordinator's multi-threaded
    /// runtime): the in-cluster service account, else kubeconfig; no observation source, so no
    /// profiling (use [`KubernetesBackend::start`] to provide one).
    pub fn build(cfg: &CoordinatorConfig) -> anyhow::Result<Self> {
        let opts = KubernetesOptions::from_config(cfg)?;
        install_crypto_provider();
        let config = match kube::Config::incluster() {
            Ok(c) => c,
            Err(in_cluster) => {
                let handle = tokio::runtime::Handle::try_current()
                    .map_err(|e| anyhow::anyhow!("the kubernetes backend needs a Tokio runtime: {e}"))?;
                anyhow::ensure!(
                    handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread,
                    "not in a cluster ({in_cluster}) and cannot read a kubeconfig from a single-threaded runtime"
                );
                tokio::task::block_in_place(|| handle.block_on(kube::Config::infer())).map_err(|e| {
                    anyhow::anyhow!("cannot configure the Kubernetes client: not in a cluster ({in_cluster}), no kubeconfig ({e})")
                })?
            }
        };
        let client = Client::try_from(config)
            .map_err(|e| anyhow::anyhow!("cannot create the Kubernetes client: {e}"))?;
        Ok(Self::start(client, cfg, opts, None))
    }

    /// If `job` is the profiling copy of a run this backend is running: its target and run id.
    /// The runtime uses it to route the copy's metrics to its [`ObservationSource`] instead of
    /// managing the copy as a job of its own.
    pub fn profiling_copy_of(&self, job: &JobKey) -> Option<(JobKey, u64)> {
        let budget = self.inner.budget.lock().expect("budget lock");
        budget.keys().find_map(|(target, run_id)| {
            let copy = JobKey::new(&target.namespace, profiling::copy_name(&target.name, *run_id));
            (copy == *job).then(|| (target.clone(), *run_id))
        })
    }

    /// `true` while this replica may act. Follows the Lease; always `true` without election.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.inner.leader.clone()
    }

    pub fn is_leader(&self) -> bool {
        *self.inner.leader.borrow()
    }

    /// Stops the background tasks and releases the Lease (if held). Call on shutdown so that a
    /// standby takes over at once rather than after the lease duration.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let task = self.inner.leader_task.lock().expect("lock").take();
        if let Some(t) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        for t in self.inner.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
    }

    /// The per-job settings the annotations give, with `[controller]`/`[[jobs]]` as the base:
    /// mode, quota (annotations can only lower it) and constraints. `None` for a job that is not
    /// (or not yet) seen as opted in.
    pub fn job_settings(
        &self,
        job: &JobKey,
    ) -> Option<(Mode, demeter_common::Quota, demeter_common::Constraints)> {
        let fd = self.inner.cached(job)?;
        let a = JobAnnotations::of(&fd);
        let base = self.inner.cfg.controller_config_for(job, a.mode);
        Some((base.mode, a.quota(base.quota), a.constraints(base.constraints)))
    }

    /// Records a recommendation (recommend-only mode, or any decision worth showing): a
    /// `Recommendation` Event and the `demeter.dev/status` annotation. Never touches the spec.
    pub async fn recommend(
        &self,
        job: &JobKey,
        current: &JobConfig,
        recommended: &JobConfig,
        reason: &str,
    ) -> BackendResult<()> {
        let inner = &self.inner;
        inner.require_leader("record a recommendation")?;
        let fd = inner.get(job).await?;
        let mode = inner.mode_of(job, &fd);
        let note = if current == recommended {
            format!("keep {current}: {reason}")
        } else {
            format!("recommend {recommended} instead of {current}: {reason}")
        };
        inner.event(&fd, EventType::Normal, "Recommendation", "Recommend", note).await;
        inner
            .write_status(
                job,
                DemeterStatus {
                    mode,
                    current: Some(*current),
                    recommended: Some(*recommended),
                    reason: reason.to_string(),
                    last_action: "Recommendation".into(),
                    updated_at: now_rfc3339(),
                },
            )
            .await
    }
}

impl Inner {
    fn require_leader(&self, what: &str) -> BackendResult<()> {
        if *self.leader.borrow() {
            Ok(())
        } else {
            Err(BackendError::Transient(format!("not the leader: another coordinator replica may {what}")))
        }
    }

    fn api(&self, ns: &str) -> Api<FlinkDeployment> {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn call<T>(&self, what: &str, f: impl Future<Output = Result<T, kube::Error>>) -> BackendResult<T> {
        match tokio::time::timeout(self.opts.api_timeout, f).await {
            Ok(r) => r.map_err(|e| api_error(what, e)),
            Err(_) => {
                Err(BackendError::Transient(format!("{what}: no answer within {:?}", self.opts.api_timeout)))
            }
        }
    }

    async fn get(&self, job: &JobKey) -> BackendResult<FlinkDeployment> {
        self.call(&format!("reading FlinkDeployment {job}"), self.api(&job.namespace).get(&job.name)).await
    }

    fn cached(&self, job: &JobKey) -> Option<Arc<FlinkDeployment>> {
        let r = reflector::ObjectRef::new(&job.name).within(&job.namespace);
        self.stores.iter().find_map(|s| s.get(&r))
    }

    fn patch_params(&self) -> PatchParams {
        PatchParams { field_manager: Some(self.opts.field_manager.clone()), ..Default::default() }
    }

    /// The job's effective mode: global, `[[jobs]]` and the annotation, the most restrictive wins.
    fn mode_of(&self, job: &JobKey, fd: &FlinkDeployment) -> Mode {
        self.cfg.mode_for(job, JobAnnotations::of(fd).mode)
    }

    async fn event(&self, fd: &FlinkDeployment, type_: EventType, reason: &str, action: &str, note: String) {
        if !*self.leader.borrow() {
            return;
        }
        let mut note = note;
        if note.len() > 1000 {
            let cut = (0..=1000).rev().find(|i| note.is_char_boundary(*i)).unwrap_or(0);
            note.truncate(cut);
        }
        let ev =
            Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        let reference = fd.object_ref(&());
        match tokio::time::timeout(self.opts.api_timeout, self.recorder.publish(&ev, &reference)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(object = ?reference.name, reason, error = %e, "could not publish an Event")
            }
            Err(_) => tracing::warn!(object = ?reference.name, reason, "publishing an Event timed out"),
        }
    }

    /// Writes the `demeter.dev/status` annotation (a merge patch of that one key: no
    /// precondition needed, nothing else is touched).
    async fn write_status(&self, job: &JobKey, st: DemeterStatus) -> BackendResult<()> {
        self.require_leader("write the status")?;
        let text = serde_json::to_string(&st).expect("status serialises");
        let patch = json!({ "metadata": { "annotations": { (crd::ANN_STATUS): text } } });
        self.call(
            &format!("writing the status of {job}"),
            self.api(&job.namespace).patch(&job.name, &self.patch_params(), &Patch::Merge(&patch)),
        )
        .await
        .map(|_| ())
    }

    /// Reacts to a watched change of an opted-in deployment: reports unreadable annotations and
    /// injects the agent (leader only, never into a job that is being upgraded or is hands-off).
    async fn on_change(&self, fd: &FlinkDeployment) {
        if !fd.is_managed() || fd.is_profiling_copy() || !*self.leader.borrow() {
            return;
        }
        let Some(ns) = fd.namespace() else { return };
        let key = JobKey::new(ns, fd.name_any());
        let ns = key.namespace.as_str();
        let ann = JobAnnotations::of(fd);
        if !ann.problems.is_empty() && self.first_warning(&key, &ann.problems.join("; ")) {
            let note = format!("ignored: {}", ann.problems.join("; "));
            self.event(fd, EventType::Warning, "InvalidAnnotation", "ReadSettings", note).await;
        }
        let Some(inj) = &self.opts.injection else { return };
        let Some(patch) = inj.patch_for(fd) else { return };
        if self.mode_of(&key, fd) != Mode::Apply {
            if self.first_warning(&key, &format!("agent-missing-{}", inj.digest())) {
                let note = "the demeter-agent sidecar is missing; in recommend-only mode Demeter does not change the \
                            spec: add it by hand (examples/flinkdeployment-with-agent.yaml) or set mode apply"
                    .to_string();
                self.event(fd, EventType::Warning, "AgentMissing", "InjectAgent", note).await;
            }
            return;
        }
        if let Readiness::Busy(why) = convert::readiness(fd) {
            tracing::debug!(job = %key, why, "not injecting the agent while the job is busy");
            return;
        }
        let what = format!("injecting the agent into {key}");
        let r = self
            .call(&what, self.api(ns).patch(&key.name, &self.patch_params(), &Patch::Merge(&patch)))
            .await;
        match r {
            Ok(_) => {
                tracing::info!(job = %key, "injected the demeter-agent sidecar");
                let note = format!(
                    "added the demeter-agent sidecar to spec.taskManager.podTemplate and {} Flink settings; the \
                     operator redeploys the job once",
                    inj.flink_conf().len()
                );
                self.event(fd, EventType::Normal, "AgentInjected", "InjectAgent", note).await;
            }
            // 409: the object changed meanwhile; its next watch event retries.
            Err(e) => tracing::debug!(job = %key, error = %e, "agent injection deferred"),
        }
    }

    fn first_warning(&self, key: &JobKey, what: &str) -> bool {
        self.warned.lock().expect("warned lock").insert((key.clone(), what.to_string()))
    }

    /// Polls until `done` says stop, or `limit` passes (`None`).
    async fn poll_until<T>(
        &self,
        job: &JobKey,
        limit: Duration,
        mut done: impl FnMut(&FlinkDeployment) -> Option<T>,
    ) -> BackendResult<Option<T>> {
        let deadline = Instant::now() + limit;
        loop {
            match self.get(job).await {
                Ok(fd) => {
                    if let Some(t) = done(&fd) {
                        return Ok(Some(t));
                    }
                }
                Err(e @ BackendError::NotFound(_)) => return Err(e),
                Err(e) => tracing::debug!(job = %job, error = %e, "status poll failed; retrying"),
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(
                self.opts.poll_interval.min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }

    /// Vertex ids of the running job, from the JobManager (`GET /jobs/{id}/resource-requirements`).
    async fn vertex_ids(&self, fd: &FlinkDeployment) -> Result<Vec<String>, String> {
        let job_id = convert::job_id(fd).ok_or("no job id")?;
        let base = self
            .opts
            .flink_rest_url
            .replace("{name}", &fd.name_any())
            .replace("{namespace}", fd.namespace().as_deref().unwrap_or_default());
        let url = format!("{}/jobs/{job_id}/resource-requirements", base.trim_end_matches('/'));
        let resp = self.http.get(&url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        let v: Value = resp.json().await.map_err(|e| format!("GET {url}: {e}"))?;
        let ids: Vec<String> = v.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        if ids.is_empty() { Err(format!("GET {url}: no vertices")) } else { Ok(ids) }
    }

    fn upgrade_mode_for(&self, fd: &FlinkDeployment) -> String {
        match fd.spec.job.as_ref().and_then(|j| j.upgrade_mode.as_deref()) {
            Some(m @ ("savepoint" | "last-state")) => m.to_string(),
            _ => self.opts.upgrade_mode.clone(),
        }
    }

    /// The reconfiguration protocol (module documentation, `docs/kubernetes.md`).
    async fn reconfigure(&self, job: &JobKey, r: &Reconfiguration) -> BackendResult<ReconfigReport> {
        self.require_leader("reconfigure it")?;
        let started = Instant::now();
        // The object a patch of ours was computed from, and that patch: what a rollback undoes.
        let mut ours: Option<(Value, Value)> = None;
        let mut attempts = 0u32;
        let mut note = String::new();
        let generation = loop {
            attempts += 1;
            let fd = self.get(job).await?;
            if !fd.is_managed() {
                return Err(BackendError::Failed(format!(
                    "{job} is not opted in (label {}=true)",
                    crd::LABEL_MANAGED
                )));
            }
            if self.mode_of(job, &fd) != Mode::Apply {
                return Err(BackendError::Failed(format!(
                    "{job} is in recommend-only mode: nothing is applied"
                )));
            }
            let a = JobAnnotations::of(&fd);
            let quota = a.quota(self.cfg.controller_config_for(job, a.mode).quota);
            if !quota.admits(&r.to) {
                return Err(BackendError::Failed(format!(
                    "{} needs {} cores and {} MiB, over the quota of {} cores and {} MiB: not applied",
                    r.to,
                    r.to.total_cpu(),
                    r.to.total_memory_mb(),
                    quota.max_total_cpu,
                    quota.max_total_memory_mb
                )));
            }
            let current = convert::job_config_of(&fd)
                .map_err(|e| BackendError::Failed(format!("cannot read the configuration of {job}: {e}")))?;
            if current == r.to {
                // Our earlier patch landed (its answer was lost), or someone else asked for the
                // same: either way nothing is written again.
                break fd.metadata.generation.unwrap_or(0);
            }
            match convert::readiness(&fd) {
                Readiness::Stable => {}
                Readiness::Failed(why) => {
                    return Err(BackendError::Failed(format!(
                        "{job} is not healthy ({why}): not touching it"
                    )));
                }
                Readiness::Busy(why) => {
                    if started.elapsed() >= self.opts.busy_wait {
                        return Err(BackendError::Transient(format!(
                            "{job} is busy ({why}): not touching it"
                        )));
                    }
                    tracing::info!(job = %job, why, "waiting for the operator before reconfiguring");
                    tokio::time::sleep(self.opts.poll_interval).await;
                    attempts -= 1;
                    continue;
                }
            }
            let path = self.plan_path(&fd, &current, r, &mut note).await;
            let patch = convert::reconfig_patch(&fd, &r.to, &path);
            ours = Some((serde_json::to_value(&fd).expect("serialises"), patch.clone()));
            let what = format!("patching {job}");
            match self
                .call(
                    &what,
                    self.api(&job.namespace).patch(&job.name, &self.patch_params(), &Patch::Merge(&patch)),
                )
                .await
            {
                Ok(new) => {
                    tracing::info!(job = %job, id = r.id, ?path, "patched FlinkDeployment");
                    break new.metadata.generation.unwrap_or(0);
                }
                Err(e @ BackendError::Transient(_)) if attempts < self.opts.max_attempts => {
                    // A conflict or an unanswered request: read again; if the patch did land the
                    // object asks for `r.to` and the loop stops without writing twice.
                    tracing::info!(job = %job, attempt = attempts, error = %e, "patch not confirmed; reading again");
                    tokio::time::sleep(self.opts.poll_interval.min(Duration::from_millis(500))).await;
                }
                Err(e) => return Err(e),
            }
        };

        let patched_at = Instant::now();
        let mut down_since: Option<Instant> = None;
        let mut downtime = Duration::ZERO;
        let outcome = self
            .poll_until(job, self.opts.settle_timeout, |fd| {
                let running =
                    fd.status.as_ref().and_then(|s| s.job_status.as_ref()).and_then(|j| j.state.as_deref())
                        == Some("RUNNING");
                match (running, down_since) {
                    (false, None) => down_since = Some(Instant::now()),
                    (true, Some(t)) => {
                        downtime += t.elapsed();
                        down_since = None;
                    }
                    _ => {}
                }
                if convert::observed_generation(fd).is_some_and(|g| g < generation) {
                    return None;
                }
                match convert::readiness(fd) {
                    Readiness::Stable => Some(Ok(())),
                    Readiness::Failed(why) => Some(Err(why)),
                    Readiness::Busy(_) => None,
                }
            })
            .await?;
        let why = match outcome {
            Some(Ok(())) => {
                let fd = self.get(job).await?;
                let note = format!("{} → {} ({:?}){note}", r.from, r.to, r.kind);
                self.event(&fd, EventType::Normal, "Reconfigured", "Reconfigure", note).await;
                let st = DemeterStatus {
                    mode: Mode::Apply,
                    current: Some(r.to),
                    recommended: Some(r.to),
                    reason: format!(
                        "reconfiguration {} applied in {:.0}s",
                        r.id,
                        patched_at.elapsed().as_secs_f64()
                    ),
                    last_action: "Reconfigured".into(),
                    updated_at: now_rfc3339(),
                };
                if let Err(e) = self.write_status(job, st).await {
                    tracing::warn!(job = %job, error = %e, "could not write the status annotation");
                }
                return Ok(ReconfigReport::new(downtime.as_secs_f64()));
            }
            Some(Err(why)) => format!("the operator reports a failure: {why}"),
            None => format!(
                "not RUNNING and STABLE within {}",
                humantime::format_duration(self.opts.settle_timeout)
            ),
        };
        let Some((original, patch)) = ours else {
            return Err(BackendError::Failed(format!(
                "{} → {}: {why} (not changed by this coordinator: not rolled back)",
                r.from, r.to
            )));
        };
        self.roll_back(job, r, &original, &patch, &why).await
    }

    async fn plan_path(
        &self,
        fd: &FlinkDeployment,
        current: &JobConfig,
        r: &Reconfiguration,
        note: &mut String,
    ) -> ApplyPath {
        let redeploy = ApplyPath::Redeploy { upgrade_mode: self.upgrade_mode_for(fd) };
        if r.kind != demeter_core::controller::ReconfigKind::InPlace
            || !current.parallelism_only_change(&r.to)
        {
            return redeploy;
        }
        if let Err(why) = convert::supports_in_place(fd) {
            *note = format!("; redeployed: in-place scaling needs {why}");
            return redeploy;
        }
        match self.vertex_ids(fd).await {
            Ok(vertices) => ApplyPath::InPlace { vertices },
            Err(e) => {
                *note = format!("; redeployed: the job's vertices are unknown ({e})");
                redeploy
            }
        }
    }

    async fn roll_back(
        &self,
        job: &JobKey,
        r: &Reconfiguration,
        original: &Value,
        patch: &Value,
        why: &str,
    ) -> BackendResult<ReconfigReport> {
        tracing::warn!(job = %job, id = r.id, why, "reconfiguration failed; rolling back");
        let mut inverse = convert::inverse_patch(patch, original);
        let mut generation = 0;
        for attempt in 1..=self.opts.max_attempts {
            self.require_leader("roll it back")?;
            let fd = self.get(job).await?;
            inverse["metadata"] = json!({ "resourceVersion": fd.metadata.resource_version });
            let what = format!("rolling back {job}");
            match self
                .call(
                    &what,
                    self.api(&job.namespace).patch(&job.name, &self.patch_params(), &Patch::Merge(&inverse)),
                )
                .await
            {
                Ok(new) => {
                    generation = new.metadata.generation.unwrap_or(0);
                    break;
                }
                Err(BackendError::Transient(e)) if attempt < self.opts.max_attempts => {
                    tracing::info!(job = %job, attempt, error = %e, "rollback patch not confirmed; retrying");
                    tokio::time::sleep(self.opts.poll_interval.min(Duration::from_millis(500))).await;
                }
                Err(e) => return Err(BackendError::Failed(format!("{why}; and the rollback failed: {e}"))),
            }
        }
        let stable = self
            .poll_until(job, self.opts.settle_timeout, |fd| {
                if convert::observed_generation(fd).is_some_and(|g| g < generation) {
                    return None;
                }
                (convert::readiness(fd) == Readiness::Stable).then_some(())
            })
            .await?
            .is_some();
        let fd = self.get(job).await?;
        let back = convert::job_config_of(&fd).ok();
        let note = format!(
            "{} → {} failed ({why}); rolled back to {}{}",
            r.from,
            r.to,
            back.map_or_else(|| "the previous spec".to_string(), |c| c.to_string()),
            if stable { "" } else { ", which is not stable yet either" }
        );
        self.event(&fd, EventType::Warning, "RolledBack", "Reconfigure", note.clone()).await;
        let st = DemeterStatus {
            mode: Mode::Apply,
            current: back,
            recommended: Some(r.to),
            reason: note.clone(),
            last_action: "RolledBack".into(),
            updated_at: now_rfc3339(),
        };
        if let Err(e) = self.write_status(job, st).await {
            tracing::warn!(job = %job, error = %e, "could not write the status annotation");
        }
        Err(BackendError::Failed(note))
    }

    fn chaos_api(&self, ns: &str) -> Api<DynamicObject> {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("chaos-mesh.org", "v1alpha1", "NetworkChaos"),
            "networkchaos",
        );
        Api::namespaced_with(self.client.clone(), ns, &ar)
    }

    fn reserve(self: &Arc<Self>, job: &JobKey, run: &ProfilingRun) -> BackendResult<Reservation> {
        let p = &self.opts.profiling;
        let mut b = self.budget.lock().expect("budget lock");
        let cpu: f64 = b.values().map(|c| c.total_cpu()).sum::<f64>() + run.config.total_cpu();
        let mem: u64 = b.values().map(|c| c.total_memory_mb()).sum::<u64>() + run.config.total_memory_mb();
        if b.len() >= p.max_concurrent || cpu > p.max_total_cpu + 1e-9 || mem > p.max_total_memory_mb {
            return Err(BackendError::Transient(format!(
                "profiling budget exhausted: {} of {} runs, {cpu} of {} cores, {mem} of {} MiB with this one",
                b.len(),
                p.max_concurrent,
                p.max_total_cpu,
                p.max_total_memory_mb
            )));
        }
        let key = (job.clone(), run.run_id);
        b.insert(key.clone(), run.config);
        Ok(Reservation { inner: Arc::downgrade(self), key })
    }

    async fn profile(self: &Arc<Self>, job: &JobKey, run: &ProfilingRun) -> BackendResult<PerfSample> {
        self.require_leader("profile it")?;
        let Some(source) = self.observations.clone() else {
            return Err(BackendError::Unsupported {
                backend: "kubernetes",
                operation: "profiling without an observation source",
            });
        };
        let target = self.get(job).await?;
        if !target.is_managed() || self.mode_of(job, &target) != Mode::Apply {
            return Err(BackendError::Failed(format!("{job} is not opted in with mode apply: no profiling")));
        }
        let a = JobAnnotations::of(&target);
        let quota = a.quota(self.cfg.controller_config_for(job, a.mode).quota);
        if !quota.admits(&run.config) {
            return Err(BackendError::Failed(format!(
                "candidate {} is over the job's quota: not profiled",
                run.config
            )));
        }
        let _reservation = self.reserve(job, run)?;
        let lifetime = Duration::from_secs(run.duration_s as u64)
            + self.opts.settle_timeout
            + self.opts.profiling.expiry_slack;
        let expires_at =
            Timestamp::now() + SignedDuration::try_from(lifetime).unwrap_or(SignedDuration::from_hours(1));
        let plan = CopyPlan {
            run_id: run.run_id,
            config: run.config,
            expires_at: expires_at.to_string(),
            injection: self.opts.injection.as_ref(),
            field_manager: &self.opts.field_manager,
        };
        let copy = profiling::profiling_copy(&target, &plan).map_err(BackendError::Failed)?;
        let copy_key = JobKey::new(&job.namespace, copy.name_any());
        let api = self.api(&job.namespace);
        let pp = PostParams { field_manager: Some(self.opts.field_manager.clone()), ..Default::default() };
        let what = format!("creating {copy_key}");
        let created = match tokio::time::timeout(self.opts.api_timeout, api.create(&pp, &copy)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) if is_code(&e, 409) => {
                // A leftover of the same run (a retried start after a crash): replace it.
                self.delete_copy(&copy_key).await?;
                self.poll_gone(&copy_key).await?;
                self.call(&what, api.create(&pp, &copy)).await?
            }
            Ok(Err(e)) => return Err(api_error(&what, e)),
            Err(_) => {
                return Err(BackendError::Transient(format!(
                    "{what}: no answer within {:?}",
                    self.opts.api_timeout
                )));
            }
        };
        let note = format!(
            "profiling {} in {} for {}s (run {})",
            run.config, copy_key.name, run.duration_s, run.run_id
        );
        self.event(&target, EventType::Normal, "ProfilingStarted", "Profile", note).await;
        let result = self.measure(&created, &copy_key, run, source.as_ref()).await;
        let cleanup = self.delete_run(job, run.run_id).await;
        let (type_, reason, note) = match &result {
            Ok(s) => (
                EventType::Normal,
                "ProfilingFinished",
                format!(
                    "run {}: {} handled {:.0}/s of {:.0}/s at p95 {:.0} ms, recovery {:?}",
                    run.run_id, run.config, s.throughput, s.offered_rate, s.p95_latency_ms, s.recovery
                ),
            ),
            Err(e) => (EventType::Warning, "ProfilingFailed", format!("run {}: {e}", run.run_id)),
        };
        self.event(&target, type_, reason, "Profile", note).await;
        if let Err(e) = cleanup {
            tracing::warn!(job = %job, run_id = run.run_id, error = %e, "profiling copy not deleted yet; the janitor will");
        }
        result
    }

    async fn measure(
        &self,
        copy: &FlinkDeployment,
        copy_key: &JobKey,
        run: &ProfilingRun,
        source: &dyn ObservationSource,
    ) -> BackendResult<PerfSample> {
        let stable = self
            .poll_until(copy_key, self.opts.settle_timeout, |fd| match convert::readiness(fd) {
                Readiness::Stable => Some(Ok(())),
                Readiness::Failed(why) => Some(Err(why)),
                Readiness::Busy(_) => None,
            })
            .await?;
        match stable {
            Some(Ok(())) => {}
            Some(Err(why)) => return Err(BackendError::Failed(format!("the profiling copy failed: {why}"))),
            None => {
                return Err(BackendError::Failed(
                    "the profiling copy did not become RUNNING and STABLE in time".into(),
                ));
            }
        }
        let running_at = UnixMillis::now();
        let started = Instant::now();
        let mut failure_at = None;
        let mut fault_ends_at = None;
        if let Some(after) = run.inject_failure_after_s {
            tokio::time::sleep(Duration::from_secs(after as u64)).await;
            match self.inject_failure(copy, copy_key, run.run_id).await {
                Ok(fault) => {
                    failure_at = Some(UnixMillis::now());
                    fault_ends_at = fault.map(|d| UnixMillis(UnixMillis::now().0 + d.as_millis() as i64));
                }
                Err(e) => {
                    tracing::warn!(copy = %copy_key, error = %e, "no failure injected; measuring without recovery")
                }
            }
        }
        let total = Duration::from_secs(run.duration_s as u64);
        tokio::time::sleep(total.saturating_sub(started.elapsed())).await;
        let end = UnixMillis::now();
        let obs = source.observations(copy_key, running_at).await;
        let times = RunTimes { running_at, failure_at, fault_ends_at, end };
        let p = &self.opts.profiling;
        profiling::sample_from(
            run.config,
            &obs,
            &times,
            p.sample_window.as_millis() as i64,
            p.warmup.as_millis() as i64,
        )
        .map_err(BackendError::Failed)
    }

    /// Injects the failure; returns how long the fault acts when known (the chaos duration).
    async fn inject_failure(
        &self,
        copy: &FlinkDeployment,
        copy_key: &JobKey,
        run_id: u64,
    ) -> Result<Option<Duration>, String> {
        if self.opts.chaos_mesh {
            let dur = self.opts.profiling.chaos_duration;
            let chaos: DynamicObject =
                serde_json::from_value(profiling::network_chaos(copy, run_id, dur.as_secs() as u32))
                    .map_err(|e| e.to_string())?;
            let api = self.chaos_api(&copy_key.namespace);
            match tokio::time::timeout(self.opts.api_timeout, api.create(&PostParams::default(), &chaos))
                .await
            {
                Ok(Ok(_)) => return Ok(Some(dur)),
                Ok(Err(e)) if is_code(&e, 404) => {
                    tracing::info!(copy = %copy_key, "Chaos Mesh is not installed; deleting a TaskManager pod instead");
                }
                Ok(Err(e)) => {
                    tracing::warn!(copy = %copy_key, error = %e, "NetworkChaos not created; deleting a TaskManager pod instead")
                }
                Err(_) => {
                    tracing::warn!(copy = %copy_key, "NetworkChaos creation timed out; deleting a TaskManager pod instead")
                }
            }
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &copy_key.namespace);
        let lp = ListParams::default().labels(&format!("app={},component=taskmanager", copy_key.name));
        let list = self.call("listing TaskManager pods", pods.list(&lp)).await.map_err(|e| e.to_string())?;
        let mut names: Vec<String> = list.items.iter().map(|p| p.name_any()).collect();
        names.sort();
        let victim = names.first().ok_or("no TaskManager pod to delete")?;
        self.call(&format!("deleting pod {victim}"), pods.delete(victim, &DeleteParams::default()))
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(copy = %copy_key, pod = %victim, "deleted a TaskManager pod to measure recovery");
        Ok(None)
    }

    async fn delete_copy(&self, copy: &JobKey) -> BackendResult<()> {
        match self
            .call(
                &format!("deleting {copy}"),
                self.api(&copy.namespace).delete(&copy.name, &DeleteParams::background()),
            )
            .await
        {
            Ok(_) | Err(BackendError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits until a deleted object is gone (the operator's finalizer removes it).
    async fn poll_gone(&self, key: &JobKey) -> BackendResult<()> {
        let deadline = Instant::now() + self.opts.settle_timeout;
        loop {
            match self.get(key).await {
                Err(BackendError::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
                Ok(_) if Instant::now() >= deadline => {
                    return Err(BackendError::Transient(format!("{key} was not deleted in time")));
                }
                Ok(_) => tokio::time::sleep(self.opts.poll_interval).await,
            }
        }
    }

    /// Deletes every object of a profiling run (copies and NetworkChaos), wherever its
    /// coordinator left it. Missing objects are fine.
    async fn delete_run(&self, job: &JobKey, run_id: u64) -> BackendResult<()> {
        let selector =
            format!("{}={},{}={run_id}", crd::LABEL_PROFILING_OF, job.name, crd::LABEL_PROFILING_RUN);
        let lp = ListParams::default().labels(&selector);
        if self.opts.chaos_mesh {
            let api = self.chaos_api(&job.namespace);
            match tokio::time::timeout(self.opts.api_timeout, api.list(&lp)).await {
                Ok(Ok(list)) => {
                    for c in list.items {
                        let _ = self
                            .call(
                                "deleting NetworkChaos",
                                api.delete(&c.name_any(), &DeleteParams::default()),
                            )
                            .await;
                    }
                }
                Ok(Err(e)) if is_code(&e, 404) => {}
                Ok(Err(e)) => tracing::warn!(job = %job, error = %e, "cannot list NetworkChaos objects"),
                Err(_) => tracing::warn!(job = %job, "listing NetworkChaos objects timed out"),
            }
        }
        let list = self.call("listing profiling copies", self.api(&job.namespace).list(&lp)).await?;
        for c in list.items {
            self.delete_copy(&JobKey::new(&job.namespace, c.name_any())).await?;
        }
        Ok(())
    }

    /// Deletes profiling copies whose `demeter.dev/expires-at` has passed (or is unreadable).
    async fn janitor(&self) {
        let lp = ListParams::default().labels(crd::LABEL_PROFILING_OF);
        let apis: Vec<Api<FlinkDeployment>> = if self.cfg.namespaces.is_empty() {
            vec![Api::all(self.client.clone())]
        } else {
            self.cfg.namespaces.iter().map(|n| self.api(n)).collect()
        };
        let now = Timestamp::now();
        for api in apis {
            let list = match self.call("listing profiling copies", api.list(&lp)).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "janitor: cannot list profiling copies");
                    continue;
                }
            };
            for c in list.items {
                let expired = c
                    .annotation(crd::ANN_EXPIRES_AT)
                    .and_then(|s| s.parse::<Timestamp>().ok())
                    .is_none_or(|t| t <= now);
                let Some(ns) = c.namespace() else { continue };
                if expired {
                    let key = JobKey::new(ns, c.name_any());
                    tracing::info!(copy = %key, "deleting an expired profiling copy");
                    if let Err(e) = self.delete_copy(&key).await {
                        tracing::warn!(copy = %key, error = %e, "janitor: cannot delete");
                    }
                }
            }
        }
    }
}

impl Backend for KubernetesBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn can_apply(&self) -> bool {
        true
    }

    fn can_profile(&self) -> bool {
        self.inner.observations.is_some()
    }

    fn list_jobs(&self) -> BoxFuture<'_, BackendResult<Vec<BackendJob>>> {
        Box::pin(async move {
            let inner = &self.inner;
            for s in &inner.stores {
                match tokio::time::timeout(inner.opts.api_timeout, s.wait_until_ready()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        return Err(BackendError::Failed("the FlinkDeployment watch stopped".into()));
                    }
                    Err(_) => {
                        return Err(BackendError::Transient(
                            "the FlinkDeployment watch has not listed yet".into(),
                        ));
                    }
                }
            }
            let mut jobs: Vec<BackendJob> = inner
                .stores
                .iter()
                .flat_map(|s| s.state())
                .filter(|fd| fd.is_managed() && !fd.is_profiling_copy())
                .filter_map(|fd| {
                    let key = JobKey::new(fd.namespace()?, fd.name_any());
                    inner
                        .cfg
                        .watches(&key.namespace)
                        .then(|| BackendJob { key, mode: JobAnnotations::of(&fd).mode })
                })
                .collect();
            jobs.sort_by(|a, b| a.key.cmp(&b.key));
            jobs.dedup_by(|a, b| a.key == b.key);
            Ok(jobs)
        })
    }

    fn current_config<'a>(&'a self, job: &'a JobKey) -> BoxFuture<'a, BackendResult<JobConfig>> {
        Box::pin(async move {
            let fd = self.inner.get(job).await?;
            convert::job_config_of(&fd)
                .map_err(|e| BackendError::Failed(format!("cannot read the configuration of {job}: {e}")))
        })
    }

    fn reconfigure<'a>(
        &'a self,
        job: &'a JobKey,
        r: &'a Reconfiguration,
    ) -> BoxFuture<'a, BackendResult<ReconfigReport>> {
        Box::pin(self.inner.reconfigure(job, r))
    }

    fn start_profiling<'a>(
        &'a self,
        job: &'a JobKey,
        run: &'a ProfilingRun,
    ) -> BoxFuture<'a, BackendResult<PerfSample>> {
        Box::pin(async move { self.inner.profile(job, run).await })
    }

    fn stop_profiling<'a>(&'a self, job: &'a JobKey, run_id: u64) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            self.inner.require_leader("clean its runs up")?;
            self.inner.delete_run(job, run_id).await
        })
    }
}
