//! The shim is the child subreaper of everything it starts: `kvmbox` invocations, and the
//! container processes they leave behind (re-parented to the shim when `kvmbox` exits). One
//! thread reaps them all on SIGCHLD and reports each exit to the containerd-shim crate's exit
//! monitor, where the shim's process table and its `kvmbox` runner subscribe.

use std::thread;

use containerd_shim::monitor::monitor_notify_by_pid;
use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::error::{Result, ShimError};

/// Make this process the child subreaper, block SIGCHLD (and SIGTERM/SIGINT, which containerd
/// does not use to stop a shim) and start the reaping thread. Call before any other thread
/// exists so every thread inherits the blocked mask.
pub fn start() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| {
        ShimError::FailedPrecondition(format!("prctl(PR_SET_CHILD_SUBREAPER): {e}"))
    })?;
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| ShimError::FailedPrecondition(format!("block SIGCHLD: {e}")))?;
    let fd = SignalFd::new(&mask)
        .map_err(|e| ShimError::FailedPrecondition(format!("signalfd: {e}")))?;
    thread::Builder::new()
        .name("reaper".into())
        .spawn(move || loop {
            match fd.read_signal() {
                Ok(Some(info)) if info.ssi_signo == Signal::SIGCHLD as u32 => reap_all(),
                Ok(Some(info)) => containerd_shim::debug!("ignoring signal {}", info.ssi_signo),
                Ok(None) | Err(Errno::EINTR) => {}
                Err(e) => {
                    containerd_shim::error!("signalfd read: {e}");
                    return;
                }
            }
        })
        .map_err(|e| ShimError::FailedPrecondition(format!("spawn reaper thread: {e}")))?;
    Ok(())
}

/// Reap every exited child; an exit by signal N is reported as 128+N, as a shell does.
fn reap_all() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => notify(pid, code),
            Ok(WaitStatus::Signaled(pid, sig, _)) => notify(pid, 128 + sig as i32),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                containerd_shim::warn!("waitpid: {e}");
                return;
            }
        }
    }
}

fn notify(pid: Pid, code: i32) {
    if let Err(e) = monitor_notify_by_pid(pid.as_raw(), code) {
        containerd_shim::error!("exit of {pid}: {e}");
    }
}
