//! NATS security against a real `nats-server`: user and password, token, NKey, TLS with a custom
//! CA and mutual TLS; secrets never appear in the agent's logs, also at debug level and when the
//! server rejects them.

mod support;

use demeter_testkit::{NatsServer, ServerTls, http_get, wait_until};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::{Agent, ExpositionServer, FIXTURE};

fn args<'a>(url: &'a str, nats: &'a str) -> Vec<&'a str> {
    vec![
        "--metrics-url",
        url,
        "--nats-url",
        nats,
        "--interval",
        "200ms",
        "--deployment",
        "sec",
        "--taskmanager",
        "tm",
    ]
}

fn publishes(agent: &Agent) -> bool {
    wait_until(Duration::from_secs(20), || agent.metric("demeter_agent_published_batches_total") >= 3.0)
}

#[test]
fn user_and_password_from_the_environment() {
    let nats = NatsServer::builder().user_password("agent", "pw-Quartz-77").start();
    let tm = ExpositionServer::start(FIXTURE);
    let (url, nats_url) = (tm.url(), nats.url());
    let mut a = args(&url, &nats_url);
    a.extend(["--nats-user", "agent"]);
    let mut agent = Agent::spawn_with_env(&a, &[("DEMETER_AGENT_NATS_PASSWORD", "pw-Quartz-77")]);
    assert!(publishes(&agent), "{}", agent.log_text());
    assert!(agent.terminate(Duration::from_secs(15)));
    assert!(!agent.log_text().contains("pw-Quartz-77"), "the password leaked into the log");

    // A wrong password: the agent keeps running, is not ready, and does not log the secret.
    let mut a = args(&url, &nats_url);
    a.extend(["--nats-user", "agent"]);
    let mut agent = Agent::spawn_with_env(&a, &[("DEMETER_AGENT_NATS_PASSWORD", "wrong-Basalt-13")]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(agent.is_running());
    assert_eq!(http_get(agent.listen_port, "/readyz").unwrap().0, 503);
    assert_eq!(agent.metric("demeter_agent_published_batches_total"), 0.0);
    assert!(agent.metric("demeter_agent_scrapes_total") >= 5.0, "scraping goes on");
    assert!(agent.terminate(Duration::from_secs(15)));
    let log = agent.log_text();
    assert!(!log.contains("wrong-Basalt-13"), "the password leaked into the log:\n{log}");
}

#[test]
fn token_and_credentials_in_the_url_stay_out_of_the_log() {
    let nats = NatsServer::builder().token("tok-Granite-42").start();
    let tm = ExpositionServer::start(FIXTURE);
    let url = tm.url();
    let nats_url = nats.url();
    let mut agent =
        Agent::spawn_with_env(&args(&url, &nats_url), &[("DEMETER_AGENT_NATS_TOKEN", "tok-Granite-42")]);
    assert!(publishes(&agent), "{}", agent.log_text());
    assert!(agent.terminate(Duration::from_secs(15)));
    assert!(!agent.log_text().contains("tok-Granite-42"));

    // The token inside the URL works too and is redacted in the log.
    let with_token = format!("nats://tok-Granite-42@127.0.0.1:{}", nats.port());
    let mut agent = Agent::spawn(&args(&url, &with_token));
    assert!(publishes(&agent), "{}", agent.log_text());
    assert!(agent.terminate(Duration::from_secs(15)));
    let log = agent.log_text();
    assert!(!log.contains("tok-Granite-42"), "{log}");
    assert!(log.contains("nats://***@127.0.0.1"), "{log}");
}

#[test]
fn nkey_seed_file() {
    let user = nkeys::KeyPair::new_user();
    let nats = NatsServer::builder().nkey_user(&user.public_key()).start();
    let tm = ExpositionServer::start(FIXTURE);
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("agent.nk");
    let seed = user.seed().unwrap();
    std::fs::write(&seed_file, format!("{seed}\n")).unwrap();
    let (url, nats_url) = (tm.url(), nats.url());
    let mut a = args(&url, &nats_url);
    a.extend(["--nats-creds", seed_file.to_str().unwrap()]);
    let mut agent = Agent::spawn(&a);
    assert!(publishes(&agent), "{}", agent.log_text());
    assert!(agent.terminate(Duration::from_secs(15)));
    assert!(!agent.log_text().contains(&seed));
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=demeter-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                &pem,
            ],
        );
    }
}

#[test]
fn tls_with_a_custom_ca_and_mutual_tls() {
    let pki = tempfile::tempdir().unwrap();
    let d = pki.path();
    make_pki(d);
    let p = |f: &str| d.join(f).to_str().unwrap().to_string();
    let tm = ExpositionServer::start(FIXTURE);
    let url = tm.url();

    let nats = NatsServer::builder()
        .tls(ServerTls { cert: d.join("server.pem"), key: d.join("server.key"), client_ca: None })
        .start();
    let nats_url = nats.url();
    let ca = p("ca.pem");
    let mut a = args(&url, &nats_url);
    a.extend(["--nats-tls-ca", &ca]);
    let mut agent = Agent::spawn(&a);
    assert!(publishes(&agent), "{}", agent.log_text());
    assert!(agent.terminate(Duration::from_secs(15)));

    // Without the CA the server's certificate is not trusted: nothing is published.
    let mut agent = Agent::spawn(&args(&url, &nats_url));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.metric("demeter_agent_published_batches_total"), 0.0);
    assert!(agent.terminate(Duration::from_secs(15)));
    drop(nats);

    // Mutual TLS: the server verifies the agent's client certificate.
    let nats = NatsServer::builder()
        .tls(ServerTls {
            cert: d.join("server.pem"),
            key: d.join("server.key"),
            client_ca: Some(d.join("ca.pem")),
        })
        .start();
    let nats_url = nats.url();
    let (cert, key) = (p("client.pem"), p("client.key"));
    let mut a = args(&url, &nats_url);
    a.extend(["--nats-tls-ca", &ca, "--nats-tls-cert", &cert, "--nats-tls-key", &key]);
    let mut agent = Agent::spawn(&a);
    assert!(publishes(&agent), "{}", agent.log_text());
    assert!(agent.terminate(Duration::from_secs(15)));
}
