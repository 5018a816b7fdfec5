//! virtio-net (device id 1) on a tap interface: one receive and one transmit queue, a MAC in
//! the config space, no offloads, no control queue, no mergeable receive buffers.
//!
//! The backend is any non-blocking fd where one read or write is one Ethernet frame: a tap
//! opened by [`tap::open_tap`] (`IFF_TAP | IFF_NO_PI`, no vnet header) or, in tests and the fuzz
//! target, a datagram socket. Transmit: each chain is validated ([`collect_chain`]), must be
//! device-readable only and hold the 12-byte header plus 14..=[`MAX_FRAME_LEN`] bytes; the
//! frame (without the header) is written to the backend, and a failed write drops the frame as
//! a full NIC would. Receive: a frame is read from the backend only when it can be delivered:
//! the backend fd is watched (through the device's own epoll fd, which the event loop polls)
//! only while no frame is waiting for a guest buffer, so a guest that posts no receive buffers
//! makes the tap queue up and drop in the host kernel instead of making the VMM spin or buffer.
//! A frame that does not fit the guest's buffer is dropped (the buffer is returned with length
//! 0); a malformed receive chain is returned with length 0 and the frame waits for the next
//! one. Queue-level errors (corrupt ring indices) stop the device until the driver resets it.

pub mod frame;
pub mod tap;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::block::read_config_bytes;
use super::desc_chain::{collect_chain, complete, drain_queue, notify, pop_chain, QueueError};
use super::{ActivateContext, VirtioDevice, VirtioInterrupt};
pub use frame::{FrameError, MAX_FRAME_LEN, MIN_FRAME_LEN, NET_HDR_LEN};
pub use tap::{open_tap, TapError};

/// Queue index of receiveq1 (host → guest).
pub const RX_QUEUE: usize = 0;
/// Queue index of transmitq1 (guest → host).
pub const TX_QUEUE: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Longest chain accepted.
pub const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// Frames moved from the backend per readiness event at most (then the event loop serves
/// other fds and comes back: the backend fd is level-triggered).
pub const RX_FRAMES_PER_PASS: usize = 256;

/// Counters of what the guest or the backend did (for tests and logs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NetStats {
    /// Frames written to the backend.
    pub tx_frames: u64,
    /// Transmit chains refused (malformed, wrong direction, too short or too long).
    pub tx_bad_chains: u64,
    /// Frames the backend did not take (queue full, interface down).
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Receive chains refused (malformed or wrong direction); the frame waited for the next.
    pub rx_bad_chains: u64,
    /// Frames from the backend dropped: larger than the guest's buffer, shorter than an
    /// Ethernet header or longer than [`MAX_FRAME_LEN`].
    pub rx_dropped: u64,
}

/// The device's state while the driver has it running.
struct Active {
    memory: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-net device.
pub struct Net {
    backend: OwnedFd,
    mac: [u8; 6],
    queue_sizes: [u16; 2],
    epoll: Epoll,
    /// The backend fd is registered with `epoll`.
    watching: bool,
    /// The backend failed (e.g. the tap was deleted): no more reads.
    backend_failed: bool,
    active: Option<Active>,
    broken: bool,
    /// A frame read from the backend, waiting for a guest receive buffer: its length in `rx_buf`.
    pending: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    stats: NetStats,
}

impl Net {
    /// A device with MAC `mac` over `backend` (non-blocking, one frame per read/write).
    pub fn new(backend: OwnedFd, mac: [u8; 6]) -> std::io::Result<Self> {
        Ok(Net {
            backend,
            mac,
            queue_sizes: [QUEUE_SIZE, QUEUE_SIZE],
            epoll: Epoll::new()?,
            watching: false,
            backend_failed: false,
            active: None,
            broken: false,
            pending: None,
            // One byte more than the largest frame: a longer one shows up as oversized.
            rx_buf: vec![0u8; MAX_FRAME_LEN + 1],
            tx_buf: vec![0u8; MAX_FRAME_LEN],
            stats: NetStats::default(),
        })
    }

    /// A device on the tap interface `tap` (see [`open_tap`]).
    pub fn open_tap(tap: &str, mac: [u8; 6]) -> Result<Self, NetError> {
        let fd = open_tap(tap)?;
        Net::new(fd, mac).map_err(NetError::Epoll)
    }

    /// The MAC address the guest sees.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Counters.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Whether the backend fd is currently watched for incoming frames.
    pub fn is_watching_backend(&self) -> bool {
        self.watching
    }

    /// Serve the transmit queue: every chain to the backend.
    fn process_tx(&mut self) {
        let Net {
            active: Some(act),
            backend,
            tx_buf,
            stats,
            ..
        } = self
        else {
            return;
        };
        let memory = &act.memory;
        let result = drain_queue(&mut act.tx, memory, &act.interrupt, |chain| {
            let frame = collect_chain(chain, MAX_DESCRIPTORS)
                .map_err(FrameError::from)
                .and_then(|b| frame::gather_tx(memory, &b, tx_buf));
            match frame {
                Ok(n) => match nix::unistd::write(&*backend, &tx_buf[..n]) {
                    Ok(_) => stats.tx_frames += 1,
                    Err(e) => {
                        stats.tx_dropped += 1;
                        tracing::debug!("virtio-net: backend write: {e}; frame dropped");
                    }
                },
                Err(e) => {
                    stats.tx_bad_chains += 1;
                    tracing::debug!("virtio-net transmit chain: {e}");
                }
            }
            // The device writes nothing into transmit buffers.
            0
        });
        if let Err(e) = result {
            self.stop(e);
        }
    }

    /// Move frames from the backend into guest receive buffers while both are there.
    fn process_rx(&mut self) {
        if self.broken {
            return;
        }
        let Some(act) = self.active.as_mut() else {
            return;
        };
        let mut used = 0usize;
        let mut moved = 0usize;
        let mut want_backend = true;
        let mut failure = None;
        loop {
            let len = match self.pending {
                Some(len) => len,
                None if moved >= RX_FRAMES_PER_PASS => break,
                None => match read_frame(&self.backend, &mut self.rx_buf) {
                    ReadOutcome::Frame(len) => len,
                    ReadOutcome::Dropped => {
                        self.stats.rx_dropped += 1;
                        moved += 1;
                        continue;
                    }
                    ReadOutcome::Empty => break,
                    ReadOutcome::Failed(e) => {
                        tracing::warn!("virtio-net: backend read failed: {e}; receive stopped");
                        self.backend_failed = true;
                        break;
                    }
                },
            };
            self.pending = Some(len);
            let chain = match pop_chain(&mut act.rx, &act.memory) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    // No guest buffer: stop reading until the guest posts one.
                    want_backend = false;
                    break;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let head = chain.head_index();
            let written = collect_chain(chain, MAX_DESCRIPTORS)
                .map_err(FrameError::from)
                .and_then(|b| frame::scatter_rx(&act.memory, &b, &self.rx_buf[..len]));
            let used_len = match written {
                Ok(n) => {
                    self.stats.rx_frames += 1;
                    self.pending = None;
                    moved += 1;
                    n
                }
                Err(e @ FrameError::NoRoom { .. }) => {
                    tracing::debug!("virtio-net: {e}; frame dropped");
                    self.stats.rx_dropped += 1;
                    self.pending = None;
                    moved += 1;
                    0
                }
                Err(e) => {
                    tracing::debug!("virtio-net receive chain: {e}");
                    self.stats.rx_bad_chains += 1;
                    0
                }
            };
            if let Err(e) = complete(&mut act.rx, &act.memory, head, used_len) {
                failure = Some(e);
                break;
            }
            used += 1;
        }
        if used > 0 {
            notify(&mut act.rx, &act.memory, &act.interrupt);
        }
        if let Some(e) = failure {
            self.stop(e);
            return;
        }
        self.watch_backend(want_backend);
    }

    /// A queue-level error: stop serving until the driver resets the device.
    fn stop(&mut self, e: QueueError) {
        tracing::warn!("virtio-net stopped: {e}");
        self.broken = true;
        self.watch_backend(false);
    }

    /// Register the backend fd with the device's epoll fd, or remove it: only a registered fd
    /// makes the event loop call [`VirtioDevice::process_backend`]. Not registered at all (rather
    /// than with no events) because EPOLLERR/EPOLLHUP are reported regardless.
    fn watch_backend(&mut self, want: bool) {
        let want = want && !self.backend_failed && !self.broken && self.active.is_some();
        if want == self.watching {
            return;
        }
        let fd = self.backend.as_raw_fd();
        let result = if want {
            self.epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
        } else {
            self.epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        };
        match result {
            Ok(()) => self.watching = want,
            Err(e) => {
                tracing::warn!("virtio-net: epoll_ctl on the backend: {e}; receive stopped");
                self.backend_failed = true;
            }
        }
    }
}

/// What one read of the backend gave.
enum ReadOutcome {
    /// A frame of this length.
    Frame(usize),
    /// A frame too short or too long to pass on.
    Dropped,
    /// Nothing to read now.
    Empty,
    /// The backend is unusable.
    Failed(nix::Error),
}

fn read_frame(backend: &OwnedFd, buf: &mut [u8]) -> ReadOutcome {
    loop {
        return match nix::unistd::read(backend, buf) {
            Ok(n) if (MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&n) => ReadOutcome::Frame(n),
            Ok(_) => ReadOutcome::Dropped,
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::EAGAIN) => ReadOutcome::Empty,
            Err(e) => ReadOutcome::Failed(e),
        };
    }
}

/// Why a net device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The device's epoll fd could not be created.
    #[error("epoll: {0}")]
    Epoll(std::io::Error),
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        1u64 << VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6], then status, max_virtqueue_pairs, mtu...: zero (their features are not
        // offered).
        read_config_bytes(&self.mac, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), String> {
        let mut queues = ctx.queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err("virtio-net needs two queues".into());
        };
        self.active = Some(Active {
            memory: ctx.memory,
            rx,
            tx,
            interrupt: ctx.interrupt,
        });
        self.broken = false;
        self.process_tx();
        self.process_rx();
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        if self.broken {
            return;
        }
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
        self.pending = None;
        self.watch_backend(false);
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn process_backend(&mut self) {
        self.process_rx();
    }

    fn needs_reset(&self) -> bool {
        self.broken
    }
}

#[cfg(test)]
mod tests;
