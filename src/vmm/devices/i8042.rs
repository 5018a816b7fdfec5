//! i8042 keyboard controller: only its CPU-reset command matters; it ends the VM.

use vm_superio::{I8042Device, Trigger};

use super::bus::BusDevice;
use crate::vmm::exit::{ExitSignal, VmExit};

/// Trigger that ends the VM as a guest reset.
pub struct ResetTrigger(pub ExitSignal);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.set(VmExit::Reset(
            "guest CPU reset via the i8042 controller".into(),
        ));
        Ok(())
    }
}

/// The controller on ports 0x60..=0x64.
pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// A controller whose reset ends the VM through `exit`.
    pub fn new(exit: ExitSignal) -> Self {
        I8042 {
            dev: I8042Device::new(ResetTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.dev.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            let _ = self.dev.write(offset as u8, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_vm() {
        let exit = ExitSignal::new().unwrap();
        let mut dev = I8042::new(exit.clone());
        dev.write(4, &[0xfe]);
        assert!(matches!(exit.get(), Some(VmExit::Reset(_))));
    }
}
