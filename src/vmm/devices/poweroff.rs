//! Guest power-off ports.
//!
//! * 0xf4 (isa-debug-exit style, 4 bytes): writing `v` powers off with exit status `v & 0xff`.
//!   (QEMU's isa-debug-exit reports `(v << 1) | 1` for the same write; kvmbox reports `v`
//!   unchanged so a guest can pass its status through, and 0 means success.)
//! * 0x604 (ACPI-like PM1a control, 2 bytes): a write with SLP_EN (bit 13) set powers off with
//!   status 0.

use super::bus::BusDevice;
use crate::vmm::exit::{ExitSignal, VmExit};

const SLP_EN: u16 = 1 << 13;

fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .take(8)
        .enumerate()
        .fold(0u64, |v, (i, b)| v | (u64::from(*b) << (8 * i)))
}

/// The isa-debug-exit style port.
pub struct DebugExit {
    exit: ExitSignal,
}

impl DebugExit {
    /// A port that ends the VM through `exit`.
    pub fn new(exit: ExitSignal) -> Self {
        DebugExit { exit }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let status = (le_value(data) & 0xff) as i32;
        self.exit.set(VmExit::PowerOff(status));
    }
}

/// The PM1a control register.
pub struct Pm1aControl {
    exit: ExitSignal,
}

impl Pm1aControl {
    /// A register that ends the VM through `exit`.
    pub fn new(exit: ExitSignal) -> Self {
        Pm1aControl { exit }
    }
}

impl BusDevice for Pm1aControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && (le_value(data) as u16) & SLP_EN != 0 {
            self.exit.set(VmExit::PowerOff(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_exit_reports_the_written_byte() {
        let exit = ExitSignal::new().unwrap();
        DebugExit::new(exit.clone()).write(0, &[42, 0, 0, 0]);
        assert_eq!(exit.get(), Some(VmExit::PowerOff(42)));
    }

    #[test]
    fn pm1a_needs_slp_en() {
        let exit = ExitSignal::new().unwrap();
        let mut d = Pm1aControl::new(exit.clone());
        d.write(0, &[0x00, 0x00]);
        assert_eq!(exit.get(), None);
        d.write(0, &0x2000u16.to_le_bytes());
        assert_eq!(exit.get(), Some(VmExit::PowerOff(0)));
    }
}
