//! The VMM's event loop (event-manager): VM exit, serial input from stdin, virtio queue
//! notifications (ioeventfds).

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};

use super::devices::serial::SerialDevice;
use super::devices::virtio::mmio::MmioTransport;
use super::error::{Result, VmmError};
use super::exit::{ExitSignal, VmExit};

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Watches the exit eventfd.
struct ExitWatcher {
    exit: ExitSignal,
    done: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.exit.event_fd().read();
        self.done.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.exit.event_fd(), EventSet::IN)) {
            tracing::error!("event loop: cannot watch the exit event: {e}");
        }
    }
}

/// Feeds a readable fd (the VMM's stdin) into the serial port.
struct SerialInput {
    serial: Arc<Mutex<SerialDevice>>,
    fd: RawFd,
}

impl MutEventSubscriber for SerialInput {
    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // SAFETY: reading into a local buffer of the stated length.
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            let _ = ops.remove(Events::empty_raw(self.fd));
            return;
        }
        let n = n as usize;
        let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        let queued = serial.enqueue_input(&buf[..n]);
        if queued < n {
            tracing::debug!(dropped = n - queued, "serial input FIFO full");
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // Regular files and /dev/null cannot be polled: then there simply is no input.
        if let Err(e) = ops.add(Events::new_raw(self.fd, EventSet::IN)) {
            tracing::debug!("serial input not pollable: {e}");
        }
    }
}

/// Event data marking a device backend's fd (queue ioeventfds use their queue index).
const BACKEND_EVENT: u32 = u32::MAX;

/// Dispatches a virtio-mmio device's queue ioeventfds and its backend fd.
struct VirtioNotifier {
    transport: Arc<Mutex<MmioTransport>>,
}

impl MutEventSubscriber for VirtioNotifier {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let mut t = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        if events.data() == BACKEND_EVENT {
            t.backend_ready();
            return;
        }
        let index = events.data() as usize;
        if let Some(evt) = t.queue_events().get(index) {
            let _ = evt.read();
        }
        t.queue_notified(index);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let t = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        for (i, evt) in t.queue_events().iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data_raw(
                evt.as_raw_fd(),
                i as u32,
                EventSet::IN,
            )) {
                tracing::error!("event loop: cannot watch virtio queue {i}: {e}");
            }
        }
        if let Some(fd) = t.backend_fd() {
            if let Err(e) = ops.add(Events::with_data_raw(fd, BACKEND_EVENT, EventSet::IN)) {
                tracing::error!("event loop: cannot watch virtio backend fd: {e}");
            }
        }
    }
}

/// The event loop of one VM.
pub struct EventLoop {
    manager: EventManager<Subscriber>,
    exit: ExitSignal,
    done: Arc<AtomicBool>,
}

impl EventLoop {
    /// A loop that ends when `exit` is set.
    pub fn new(exit: ExitSignal) -> Result<Self> {
        let mut manager = EventManager::<Subscriber>::new().map_err(|e| {
            VmmError::sys("create event manager", std::io::Error::other(e.to_string()))
        })?;
        let done = Arc::new(AtomicBool::new(false));
        manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher {
            exit: exit.clone(),
            done: done.clone(),
        })));
        Ok(EventLoop {
            manager,
            exit,
            done,
        })
    }

    /// Feed `fd` (normally stdin) into the serial port.
    pub fn add_serial_input(&mut self, serial: Arc<Mutex<SerialDevice>>, fd: RawFd) {
        self.manager
            .add_subscriber(Arc::new(Mutex::new(SerialInput { serial, fd })));
    }

    /// Dispatch the queue notifications of a virtio-mmio device.
    pub fn add_virtio(&mut self, transport: Arc<Mutex<MmioTransport>>) {
        self.manager
            .add_subscriber(Arc::new(Mutex::new(VirtioNotifier { transport })));
    }

    /// Run until the VM exits.
    pub fn run_until_exit(&mut self) -> VmExit {
        loop {
            if self.done.load(Ordering::SeqCst) {
                if let Some(exit) = self.exit.get() {
                    return exit;
                }
            }
            if let Some(exit) = self.exit.get() {
                return exit;
            }
            if let Err(e) = self.manager.run_with_timeout(1000) {
                tracing::error!("event loop: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
