//! Debug port 0x3f0: the guest writes a byte (123 = userspace reached) and the VMM timestamps it.

use super::bus::BusDevice;
use crate::vmm::timings::BootTimer;

/// The boot-timer port.
pub struct BootTimerPort {
    timer: BootTimer,
}

impl BootTimerPort {
    /// A port recording into `timer`.
    pub fn new(timer: BootTimer) -> Self {
        BootTimerPort { timer }
    }
}

impl BusDevice for BootTimerPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            self.timer.guest_mark(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::timings::USERSPACE_MARK;

    #[test]
    fn userspace_mark_is_recorded() {
        let t = BootTimer::new(std::time::Instant::now());
        BootTimerPort::new(t.clone()).write(0, &[USERSPACE_MARK]);
        assert!(t.userspace().is_some());
    }
}
