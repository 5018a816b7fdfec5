//! Waiting for processes without polling: a pidfd (pidfd_open(2)) becomes readable when its
//! process exits, whether or not it is our child and before anyone reaps it.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::io::AsRawFd;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A pidfd for `pid`.
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Block until the process behind `pidfd` exits or `timeout` passes; true when it exited.
pub fn wait_pidfd(pidfd: &OwnedFd, timeout: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        match n {
            1.. => return Ok(true),
            0 => return Ok(false),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Wait for `child` for at most `timeout`; on timeout kill it, reap it and return `None`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let pidfd = pidfd_open(child.id())?;
    if wait_pidfd(&pidfd, timeout)? {
        return child.wait().map(Some);
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn exited_child_is_seen_at_once() {
        let mut child = Command::new("true").spawn().unwrap();
        let t = Instant::now();
        let status = wait_child(&mut child, Duration::from_secs(10)).unwrap();
        assert!(status.unwrap().success());
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn slow_child_is_killed_at_the_timeout() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let status = wait_child(&mut child, Duration::from_millis(50)).unwrap();
        assert_eq!(status, None);
        assert!(child.try_wait().unwrap().is_some());
    }
}
