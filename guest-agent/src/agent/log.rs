//! The agent's log: one line per event, written with a single `write(2)` to a dedicated fd
//! (the serial console `/dev/console` as PID 1, a close-on-exec copy of stderr otherwise).
//!
//! The fd is separate from 0/1/2 because the agent temporarily points its own stdio at a
//! container's streams while cloning the container's processes (see `stdio`).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

static LOG_FD: AtomicI32 = AtomicI32::new(2);

/// Send every later log line to `fd` (which the caller keeps open for the process lifetime).
pub fn set_fd(fd: RawFd) {
    LOG_FD.store(fd, Ordering::Relaxed);
}

/// The current log fd.
pub fn fd() -> RawFd {
    LOG_FD.load(Ordering::Relaxed)
}

/// Seconds since boot (CLOCK_BOOTTIME), to time the guest's steps in the serial log.
fn uptime() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Write one line (`[uptime] kvmbox-agent: MSG`); errors are ignored (nowhere else to
/// report them).
pub fn line(msg: &str) {
    let text = format!("[{:9.3}] kvmbox-agent: {msg}\n", uptime());
    // SAFETY: writing a valid buffer to an fd number; a bad fd just fails with EBADF.
    unsafe {
        libc::write(fd(), text.as_ptr().cast(), text.len());
    }
}

/// `format!`-style logging to the agent log.
#[macro_export]
#[doc(hidden)]
macro_rules! agent_log {
    ($($arg:tt)*) => { $crate::agent::log::line(&format!($($arg)*)) };
}
