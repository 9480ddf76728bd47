//! Shared pieces of the agent's integration tests: the agent binary as a child process, a small
//! HTTP server that serves an exposition (the captured Flink one, or a broken one), and reading
//! the `DEMETER_METRICS` stream back.
#![allow(dead_code)]

use demeter_common::MetricBatch;
use demeter_testkit::{free_port, http_get, sigterm, wait_child, wait_until};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub const FIXTURE: &str = include_str!("../fixtures/flink-2.3-taskmanager.prom");

/// Serves `GET /metrics` with whatever body is set, on a fixed loopback port; can be stopped
/// (connection refused, like a TaskManager that is restarting) and started again on that port.
pub struct ExpositionServer {
    pub port: u16,
    body: Arc<Mutex<String>>,
    pub requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ExpositionServer {
    pub fn start(body: &str) -> Self {
        let mut s = ExpositionServer {
            port: free_port(),
            body: Arc::new(Mutex::new(body.to_string())),
            requests: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        s.resume();
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.port)
    }

    pub fn set_body(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_string();
    }

    /// Stops listening: connections are refused.
    pub fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Listens again on the same port.
    pub fn resume(&mut self) {
        assert!(self.thread.is_none());
        self.stop.store(false, Ordering::SeqCst);
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("bind the exposition port");
        let (body, requests, stop) = (self.body.clone(), self.requests.clone(), self.stop.clone());
        self.thread = Some(std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                requests.fetch_add(1, Ordering::SeqCst);
                let b = body.lock().unwrap().clone();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                    b.len()
                );
            }
        }));
    }
}

impl Drop for ExpositionServer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The `demeter-agent` binary as a child process; killed on drop.
pub struct Agent {
    pub child: Child,
    pub listen_port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent with `args` plus `--listen 127.0.0.1:<free port>` and JSON debug logs.
    pub fn spawn(args: &[&str]) -> Agent {
        Agent::spawn_with_env(args, &[])
    }

    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        let listen_port = free_port();
        let listen = format!("127.0.0.1:{listen_port}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_demeter-agent"));
        cmd.args(["--listen", &listen, "--log-format", "json", "--log-level", "debug"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // Nothing from the test runner's environment leaks into the agent's configuration.
        for (k, _) in std::env::vars() {
            if k.starts_with("DEMETER_AGENT_") || k.starts_with("POD_") || k == "NODE_NAME" {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start demeter-agent");
        let agent = Agent { child, listen_port, log, _dir: dir };
        assert!(
            wait_until(Duration::from_secs(10), || http_get(listen_port, "/healthz").is_some()),
            "the agent does not serve /healthz:\n{}",
            agent.log_text()
        );
        agent
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http_get(self.listen_port, "/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    /// Sum of every series of `name` (with or without labels) in the agent's /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.metrics(), name)
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; returns whether it exited with 0.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        sigterm(self.child.id());
        match wait_child(&mut self.child, timeout) {
            Some(st) => st.success(),
            None => false,
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ') || r.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every message of `DEMETER_METRICS`, in stream order, decoded.
pub async fn read_stream(nats_url: &str) -> Vec<(String, MetricBatch)> {
    let client = async_nats::connect(nats_url).await.expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("DEMETER_METRICS").await.expect("the agent created DEMETER_METRICS");
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let m = stream.get_raw_message(seq).await.expect("get message");
        let id = m.headers.get("Nats-Msg-Id").map(|v| v.to_string()).unwrap_or_default();
        out.push((id, MetricBatch::decode(&m.payload).expect("a valid batch")));
    }
    out
}

/// Checks that `batches` are one run numbered 0..n without gaps or duplicates, in order, each
/// with its message id; returns n.
pub fn assert_contiguous(batches: &[(String, MetricBatch)]) -> u64 {
    assert!(!batches.is_empty(), "no batches");
    let run = &batches[0].1.agent_run_id;
    for (i, (id, b)) in batches.iter().enumerate() {
        assert_eq!(&b.agent_run_id, run, "one agent run");
        assert_eq!(b.agent_seq, i as u64, "gap or reordering at stream position {i}");
        assert_eq!(id, &format!("{run}-{i}"), "Nats-Msg-Id");
    }
    batches.len() as u64
}
