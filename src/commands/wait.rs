//! Waiting in the foreground for a container process we started, forwarding our signals to it.

use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::runtime::lifecycle::send_signal;
use crate::runtime::process::{proc_state, ProcState};
use crate::runtime::signal::FORWARDED;

use super::tty::TtyProxy;

/// The signals [`wait_forwarding`] handles, blocked in this thread (and threads spawned after).
pub struct BlockedSignals(SigSet);

impl BlockedSignals {
    /// Block the forwarded signals and SIGCHLD so they queue for [`wait_forwarding`]. Call after
    /// the container process was cloned (so it does not inherit the mask) and before spawning
    /// threads.
    pub fn block() -> BlockedSignals {
        let mut set = SigSet::empty();
        for s in FORWARDED {
            set.add(*s);
        }
        set.add(Signal::SIGCHLD);
        let _ = set.thread_block();
        BlockedSignals(set)
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        let _ = self.0.thread_unblock();
    }
}

/// Make this process a child subreaper, so that processes the container setup double-forks
/// are re-parented to us rather than to PID 1 (which reaps late on these hosts).
pub fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) has no memory-safety preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// Wait for `pid` to exit, forwarding signals to it (SIGWINCH resizes the pty instead when a
/// proxy runs). Returns its exit code, or 128+signal if it was killed.
pub fn wait_forwarding(pid: i32, signals: &BlockedSignals, tty: Option<&TtyProxy>) -> i32 {
    loop {
        if let Some(code) = reap(pid) {
            return code;
        }
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        // SAFETY: the set is a valid sigset_t; info may be null.
        let sig = unsafe { libc::sigtimedwait(signals.0.as_ref(), std::ptr::null_mut(), &timeout) };
        if sig < 0 || sig == libc::SIGCHLD {
            continue;
        }
        if sig == libc::SIGWINCH {
            if let Some(tty) = tty {
                tty.resize();
                continue;
            }
        }
        tracing::debug!(pid, sig, "forwarding signal");
        let _ = send_signal(pid, sig);
    }
}

/// Reap exited children; `Some(code)` once `pid` is among them. If `pid` is not our child,
/// fall back to /proc (code 255 as its status is unknowable).
fn reap(pid: i32) -> Option<i32> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(status) if status.pid() == Some(Pid::from_raw(pid)) => return exit_code(status),
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => continue, // some other child (a re-parented orphan): reaped
        }
    }
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(status) => exit_code(status),
        Err(nix::errno::Errno::ECHILD) => match proc_state(pid) {
            ProcState::Alive { .. } => {
                std::thread::sleep(Duration::from_millis(10));
                None
            }
            _ => {
                tracing::warn!(pid, "process is not our child; its exit code is unknown");
                Some(255)
            }
        },
        Err(_) => None,
    }
}

/// Exit code of a final wait status (`None` if the process did not terminate).
fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}
