//! COM1: a 16550 UART from vm-superio, its interrupt delivered through an irqfd, output to
//! stdout or a log file, input (optionally) from the VMM's stdin.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::bus::BusDevice;
use crate::vmm::timings::BootTimer;

/// An eventfd (registered as an irqfd) that vm-superio devices raise their interrupt on.
pub struct EventFdTrigger(pub EventFd);

impl EventFdTrigger {
    /// A fresh non-blocking eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(EventFdTrigger(EventFd::new(EFD_NONBLOCK)?))
    }
}

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Where serial output goes; marks the first byte on the boot timer.
pub struct SerialWriter {
    out: Box<dyn Write + Send>,
    timer: Option<BootTimer>,
    seen_output: bool,
}

impl SerialWriter {
    /// Wrap `out`.
    pub fn new(out: Box<dyn Write + Send>, timer: Option<BootTimer>) -> Self {
        SerialWriter {
            out,
            timer,
            seen_output: false,
        }
    }
}

impl Write for SerialWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.seen_output && !buf.is_empty() {
            self.seen_output = true;
            if let Some(t) = &self.timer {
                t.first_serial();
            }
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The UART as a bus device (8 ports).
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, SerialWriter>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFdTrigger, out: SerialWriter) -> Self {
        SerialDevice {
            serial: Serial::new(irq, out),
        }
    }

    /// The interrupt eventfd (to register as an irqfd).
    pub fn irq_fd(&self) -> &EventFd {
        &self.serial.interrupt_evt().0
    }

    /// Queue input bytes for the guest; returns how many fit into the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Flush buffered output.
    pub fn flush(&mut self) {
        let _ = self.serial.writer_mut().flush();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&v), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.serial.write(off, v) {
                tracing::debug!("serial write: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmit_reaches_writer_and_marks_first_output() {
        let out = Shared::default();
        let timer = BootTimer::new(std::time::Instant::now());
        let mut dev = SerialDevice::new(
            EventFdTrigger::new().unwrap(),
            SerialWriter::new(Box::new(out.clone()), Some(timer.clone())),
        );
        for b in b"hi" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
        assert!(!timer.report().contains("first serial output -"));
    }

    #[test]
    fn input_is_readable_and_raises_interrupt() {
        let mut dev = SerialDevice::new(
            EventFdTrigger::new().unwrap(),
            SerialWriter::new(Box::new(std::io::sink()), None),
        );
        dev.write(1, &[0x01]); // IER: received-data interrupt
        assert_eq!(dev.enqueue_input(b"x"), 1);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b, [b'x']);
        assert!(dev.irq_fd().read().unwrap() >= 1);
    }
}
