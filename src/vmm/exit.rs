//! How a VM ends, and the one-shot signal vCPUs and devices use to end it.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (port 0xf4 value, or 0 via the PM1a port / KVM system event).
    PowerOff(i32),
    /// The guest reset its CPU (i8042 0xfe, triple fault / KVM_EXIT_SHUTDOWN, reset event).
    Reset(String),
    /// A vCPU executed HLT without an in-kernel irqchip (only tiny test guests do this).
    Halted(u8),
    /// KVM could not run the guest (internal/emulation error, failed entry, unexpected exit).
    Error(String),
    /// The VMM was asked to stop.
    Stopped,
}

impl VmExit {
    /// The process exit status `kvmbox vm boot` reports for this outcome.
    pub fn status(&self) -> i32 {
        match self {
            VmExit::PowerOff(s) => *s,
            VmExit::Reset(_) => RESET_EXIT_STATUS,
            VmExit::Halted(_) | VmExit::Stopped => 0,
            VmExit::Error(_) => ERROR_EXIT_STATUS,
        }
    }
}

/// Exit status after a guest reset (kvmbox does not reboot guests; `panic=-1 reboot=k` turns
/// a guest panic into a reset).
pub const RESET_EXIT_STATUS: i32 = 2;
/// Exit status after a KVM error (emulation failure, unexpected exit).
pub const ERROR_EXIT_STATUS: i32 = 1;

/// First-writer-wins exit slot shared by vCPU threads, devices and the event loop.
#[derive(Clone)]
pub struct ExitSignal {
    inner: Arc<(Mutex<Option<VmExit>>, Condvar)>,
    event: Arc<EventFd>,
}

impl ExitSignal {
    /// A fresh, unset signal.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            inner: Arc::new((Mutex::new(None), Condvar::new())),
            event: Arc::new(EventFd::new(EFD_NONBLOCK)?),
        })
    }

    /// Record `exit` unless an earlier one was recorded; wakes waiters and the event loop.
    pub fn set(&self, exit: VmExit) {
        let (m, cv) = &*self.inner;
        let mut slot = m.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(exit);
            cv.notify_all();
            let _ = self.event.write(1);
        }
    }

    /// Whether an exit was recorded.
    pub fn is_set(&self) -> bool {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The recorded exit, if any.
    pub fn get(&self) -> Option<VmExit> {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Wait up to `timeout` for an exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<VmExit> {
        let (m, cv) = &*self.inner;
        let slot = m.lock().unwrap_or_else(|e| e.into_inner());
        let (slot, _) = cv
            .wait_timeout_while(slot, timeout, |s| s.is_none())
            .unwrap_or_else(|e| e.into_inner());
        slot.clone()
    }

    /// Readable once an exit was recorded (for epoll).
    pub fn event_fd(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_exit_wins() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.get(), None);
        s.set(VmExit::PowerOff(7));
        s.set(VmExit::Reset("x".into()));
        assert_eq!(
            s.wait_timeout(Duration::from_millis(1)),
            Some(VmExit::PowerOff(7))
        );
        assert_eq!(s.event_fd().read().unwrap(), 1);
        assert_eq!(VmExit::PowerOff(7).status(), 7);
        assert_eq!(VmExit::Reset(String::new()).status(), RESET_EXIT_STATUS);
    }
}
