//! Runs the configured TaskManager commands (`taskmanager_add_command`,
//! `taskmanager_remove_command`) with their placeholders filled in.

use super::super::{BackendError, BackendResult};
use super::client::shorten;
use std::process::Stdio;
use std::time::Duration;

/// Placeholders a command may contain, each replaced wherever it appears in an argument.
pub const PLACEHOLDERS: &[&str] = &["{tm_id}", "{slots}", "{memory_mb}"];

/// `args` with every `{name}` of `vars` replaced by its value.
pub fn fill(args: &[String], vars: &[(&str, String)]) -> Vec<String> {
    args.iter()
        .map(|a| {
            let mut a = a.clone();
            for (name, value) in vars {
                a = a.replace(name, value);
            }
            a
        })
        .collect()
}

/// Whether any argument contains `placeholder`.
pub fn mentions(args: &[String], placeholder: &str) -> bool {
    args.iter().any(|a| a.contains(placeholder))
}

/// Runs `args` (no shell), waits at most `timeout`, and returns its standard output. A non-zero
/// exit or a timeout is an error carrying the tail of its output. The child is killed when the
/// timeout fires.
pub async fn run(args: &[String], timeout: Duration) -> BackendResult<String> {
    let Some((program, rest)) = args.split_first() else {
        return Err(BackendError::Failed("empty command".into()));
    };
    let shown = args.join(" ");
    let child = tokio::process::Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BackendError::Failed(format!("cannot run `{shown}`: {e}")))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(BackendError::Failed(format!("`{shown}` failed: {e}"))),
        Err(_) => {
            return Err(BackendError::Transient(format!(
                "`{shown}` did not finish within {}",
                humantime::format_duration(timeout)
            )));
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().chain(stdout.lines()).rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(BackendError::Failed(format!(
            "`{shown}` exited with {}: {}",
            out.status,
            shorten(&tail.join(" | "), 800)
        )));
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn placeholders_are_filled_everywhere() {
        let args = s(&["tm.sh", "add", "--slots={slots}", "{memory_mb}m", "{tm_id}"]);
        let out = fill(
            &args,
            &[("{slots}", "4".into()), ("{memory_mb}", "1024".into()), ("{tm_id}", "tm-1".into())],
        );
        assert_eq!(out, s(&["tm.sh", "add", "--slots=4", "1024m", "tm-1"]));
        assert!(mentions(&args, "{slots}"));
        assert!(!mentions(&s(&["x"]), "{slots}"));
    }

    #[tokio::test]
    async fn output_failures_and_timeouts_are_reported() {
        assert_eq!(run(&s(&["sh", "-c", "echo hi"]), Duration::from_secs(5)).await.unwrap(), "hi\n");
        let e = run(&s(&["sh", "-c", "echo boom >&2; exit 3"]), Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("boom") && e.to_string().contains("exit"), "{e}");
        let e = run(&s(&["sleep", "5"]), Duration::from_millis(200)).await.unwrap_err();
        assert_eq!(e.kind(), "transient");
        let e = run(&s(&["/nonexistent/demeter-command"]), Duration::from_secs(1)).await.unwrap_err();
        assert!(e.to_string().contains("cannot run"), "{e}");
        assert!(run(&[], Duration::from_secs(1)).await.is_err());
    }
}
