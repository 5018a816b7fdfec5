//! Running OCI hooks: path, args (args[0] is argv[0]), env, the state JSON on stdin, and an
//! optional timeout after which the hook is killed.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use oci_spec::runtime::Hook;

use super::error::{ContainerError, Result};

/// Run `hooks` in order with `state_json` on stdin; stop at the first failure.
pub(crate) fn run_all(hooks: &[Hook], state_json: &[u8], kind: &str) -> Result<()> {
    for hook in hooks {
        run_one(hook, state_json, kind)?;
    }
    Ok(())
}

fn hook_err(kind: &str, hook: &Hook, msg: String) -> ContainerError {
    ContainerError::Hook {
        kind: kind.into(),
        path: hook.path().clone(),
        msg,
    }
}

/// Run one hook.
pub(crate) fn run_one(hook: &Hook, state_json: &[u8], kind: &str) -> Result<()> {
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args().as_deref().filter(|a| !a.is_empty()) {
        cmd.arg0(&args[0]).args(&args[1..]);
    }
    cmd.env_clear();
    for kv in hook.env().as_deref().unwrap_or(&[]) {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| hook_err(kind, hook, format!("start: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(state_json);
    }
    if let Some(timeout) = hook.timeout() {
        if timeout <= 0 {
            let _ = child.kill();
            let _ = child.wait();
            return Err(hook_err(kind, hook, format!("invalid timeout {timeout}")));
        }
        if !wait_exit(child.id() as i32, timeout.saturating_mul(1000)) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(hook_err(
                kind,
                hook,
                format!("timed out after {timeout}s (killed)"),
            ));
        }
    }
    let status = child
        .wait()
        .map_err(|e| hook_err(kind, hook, format!("wait: {e}")))?;
    if !status.success() {
        return Err(hook_err(kind, hook, format!("failed: {status}")));
    }
    Ok(())
}

/// Open a pidfd for `pid` (None if the kernel or the process refuses).
pub(crate) fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; on success the returned fd is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        None
    } else {
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
}

/// Wait up to `timeout_ms` for process `pid` to exit (without reaping it). True if it exited.
fn wait_exit(pid: i32, timeout_ms: i64) -> bool {
    let Some(fd) = pidfd_open(pid) else {
        return true;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms as u64);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            return true;
        }
        if rc == 0 {
            return false;
        }
        if nix::Error::last() != nix::Error::EINTR {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::HookBuilder;

    #[test]
    fn hook_gets_state_args_and_env() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        let hook = HookBuilder::default()
            .path("/bin/sh")
            .args(vec![
                "sh".to_string(),
                "-c".to_string(),
                format!(
                    "cat > {}; echo \" $0 $FOO\" >> {}",
                    out.display(),
                    out.display()
                ),
            ])
            .env(vec!["FOO=bar".to_string()])
            .build()
            .unwrap();
        run_one(&hook, b"{\"id\":\"x\"}", "poststart").unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "{\"id\":\"x\"} sh bar\n"
        );
    }

    #[test]
    fn failing_and_slow_hooks_are_errors() {
        let fail = HookBuilder::default().path("/bin/false").build().unwrap();
        let e = run_one(&fail, b"", "poststop").unwrap_err().to_string();
        assert!(e.contains("poststop hook /bin/false"), "{e}");
        let slow = HookBuilder::default()
            .path("/bin/sleep")
            .args(vec!["sleep".to_string(), "10".to_string()])
            .timeout(1i64)
            .build()
            .unwrap();
        let start = std::time::Instant::now();
        let e = run_one(&slow, b"", "createRuntime")
            .unwrap_err()
            .to_string();
        assert!(e.contains("timed out"), "{e}");
        assert!(start.elapsed().as_secs() < 5);
    }
}
