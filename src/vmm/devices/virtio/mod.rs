//! virtio: the device trait shared by all virtio devices, the interrupt, and the MMIO transport.

pub mod block;
pub mod console;
pub mod desc_chain;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Bit 32: the device is virtio 1.x (modern) — always offered by the transport.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Interrupt status bit: a used ring was updated.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x1;
/// Interrupt status bit: the configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x2;

/// A device's interrupt line: the virtio-mmio InterruptStatus register plus an irqfd.
pub struct VirtioInterrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl VirtioInterrupt {
    /// An interrupt raised through `irqfd` (registered with KVM for the device's GSI).
    pub fn new(irqfd: EventFd) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Tell the driver a used ring changed.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_VRING)
    }

    /// Tell the driver the configuration space changed.
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_CONFIG)
    }

    fn raise(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// Current InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clear `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The irqfd.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory.
    pub memory: GuestMemoryMmap,
    /// The configured queues, in index order.
    pub queues: Vec<Queue>,
    /// The interrupt to raise after adding used buffers.
    pub interrupt: std::sync::Arc<VirtioInterrupt>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// A virtio device behind a transport. Devices must validate every guest-supplied descriptor:
/// a bad request fails that request, never the VMM.
pub trait VirtioDevice: Send {
    /// Virtio device id (1 net, 2 block, 4 rng, 19 vsock, 26 fs ...).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device feature bits (the transport adds VIRTIO_F_VERSION_1).
    fn device_features(&self) -> u64;
    /// Read device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write device configuration space at `offset` (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK: take the queues and start serving.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), String>;
    /// The driver notified queue `index` (ioeventfd or QueueNotify write).
    fn process_queue(&mut self, index: usize);
    /// The driver reset the device; drop the queues and return to the initial state.
    fn reset(&mut self) {}
    /// A pollable fd of the device's host-side backend (e.g. an epoll fd over its sockets) that
    /// the event loop watches for readability; `None` (the default) when there is none.
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
    /// [`backend_fd`](Self::backend_fd) became readable: serve the backend without blocking.
    fn process_backend(&mut self) {}
    /// The device hit a queue-level error (a hostile or broken driver) and stopped serving;
    /// the transport then sets DEVICE_NEEDS_RESET. Cleared by [`VirtioDevice::reset`].
    fn needs_reset(&self) -> bool {
        false
    }
}
