//! The binary's command line: `--help` and configuration errors.

use std::process::Command;

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_demeter-agent"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DEMETER_AGENT_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn help_explains_every_option_with_its_environment_variable() {
    let out = agent().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--config",
        "--metrics-url",
        "--nats-url",
        "--namespace",
        "--deployment",
        "--taskmanager",
        "--pod",
        "--interval",
        "--heartbeat-interval",
        "--listen",
        "--log-format",
        "--buffer-size",
        "--spool-dir",
        "--stream-max-age",
        "--nats-user",
        "--nats-password",
        "--nats-token",
        "--nats-creds",
        "--nats-tls-ca",
        "--nats-tls-cert",
        "--nats-tls-key",
        "--scrape-timeout",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        let env = format!("DEMETER_AGENT_{}", flag.trim_start_matches("--").replace('-', "_").to_uppercase());
        assert!(help.contains(&env), "{env} missing from --help");
    }
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("Precedence: flags, then environment, then file, then defaults"), "{flat}");
}

#[test]
fn invalid_configuration_names_key_value_and_range_and_exits_2() {
    let out = agent()
        .args(["--interval", "5ms", "--buffer-size", "many", "--nats-password", "Sekrit-9"])
        .env("DEMETER_AGENT_STREAM_MAX_AGE", "1s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("invalid value \"5ms\" for `interval`: allowed a duration 100ms..=1h"), "{err}");
    assert!(err.contains("invalid value \"many\" for `buffer_size`: allowed 1..=1000000"), "{err}");
    assert!(err.contains("`stream_max_age`: allowed a duration 1m..=365d"), "{err}");
    assert!(err.contains("`nats_user`"), "{err}");
    assert!(!err.contains("Sekrit-9"), "{err}");
}

#[test]
fn a_config_file_is_read_and_unknown_keys_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("agent.toml");
    std::fs::write(&f, "interval = \"250ms\"\nbufer_size = 3\n").unwrap();
    let out = agent().args(["--config", f.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("bufer_size"), "{err}");
}
