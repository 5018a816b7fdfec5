//! The virtio-vsock device: three queues (rx, tx, event), config space = guest cid.

use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::GuestMemoryMmap;

use super::backend::{BackendStats, UnixBackend};
use super::packet::{Header, MAX_PKT_DATA};
use crate::vmm::devices::virtio::{
    ActivateContext, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};

/// Virtio device id of vsock.
pub const VSOCK_DEVICE_ID: u32 = 19;
/// Queue carrying packets to the guest.
pub const RX_QUEUE: usize = 0;
/// Queue carrying packets from the guest.
pub const TX_QUEUE: usize = 1;
/// Event queue (transport reset events; unused by this device).
pub const EVENT_QUEUE: usize = 2;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// Errors creating a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest cid is reserved or out of range.
    #[error("vsock guest cid {0} is invalid: it must be in 3..=4294967294")]
    InvalidCid(u64),
    /// The listening socket could not be created.
    #[error("vsock socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Counters of what the guest got wrong.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VsockStats {
    /// TX chains that did not parse as a vsock packet (dropped).
    pub malformed_tx: u64,
    /// RX chains that could not hold a packet (returned unused).
    pub malformed_rx: u64,
    /// Used-ring updates that failed (bad queue memory).
    pub used_ring_errors: u64,
    /// Packets taken from the guest.
    pub tx_packets: u64,
    /// Packets delivered to the guest.
    pub rx_packets: u64,
}

struct Active {
    memory: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    backend: UnixBackend,
    active: Option<Active>,
    stats: VsockStats,
    scratch: Vec<u8>,
}

impl Vsock {
    /// A device for guest `guest_cid` whose host side listens on `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        if !(3..=u64::from(u32::MAX - 1)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let backend =
            UnixBackend::new(guest_cid, uds_path).map_err(|source| VsockError::Socket {
                path: uds_path.to_path_buf(),
                source,
            })?;
        Ok(Vsock {
            guest_cid,
            backend,
            active: None,
            stats: VsockStats::default(),
            scratch: vec![0u8; MAX_PKT_DATA as usize],
        })
    }

    /// The guest's cid.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Counters of malformed guest input.
    pub fn stats(&self) -> &VsockStats {
        &self.stats
    }

    /// The backend's counters.
    pub fn backend_stats(&self) -> &BackendStats {
        self.backend.stats()
    }

    /// How long a host `CONNECT` waits for the guest to accept (default
    /// [`CONNECT_TIMEOUT`](super::backend::CONNECT_TIMEOUT)); then the guest gets a RST and
    /// the host socket is closed.
    pub fn set_connect_timeout(&mut self, timeout: std::time::Duration) {
        self.backend.set_connect_timeout(timeout);
    }

    /// Open streams.
    pub fn connection_count(&self) -> usize {
        self.backend.connection_count()
    }

    /// Move packets until neither direction makes progress.
    fn process_all(&mut self) {
        loop {
            let tx = self.process_tx();
            let rx = self.process_rx();
            // Guest packets wait only when replies had no room; go on if rx made room.
            if !(tx.blocked && rx.progress) {
                break;
            }
        }
    }

    /// Take packets from the tx queue while the backend has room for the replies.
    fn process_tx(&mut self) -> Progress {
        let Vsock {
            active: Some(act),
            backend,
            stats,
            scratch,
            ..
        } = self
        else {
            return Progress::default();
        };
        let mut progress = Progress::default();
        loop {
            if !backend.can_accept_tx() {
                progress.blocked = true;
                break;
            }
            let Some(mut chain) = act.queues[TX_QUEUE].pop_descriptor_chain(&act.memory) else {
                break;
            };
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(&act.memory, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let hdr = Header::from_packet(&pkt);
                    let n = match pkt.data_slice() {
                        Some(data) => data
                            .copy_to(&mut scratch[..(hdr.len as usize).min(MAX_PKT_DATA as usize)]),
                        None => 0,
                    };
                    stats.tx_packets += 1;
                    backend.handle_tx(&hdr, &scratch[..n]);
                }
                Err(e) => {
                    stats.malformed_tx += 1;
                    tracing::debug!(head, "vsock: dropped malformed tx chain: {e}");
                }
            }
            if let Err(e) = act.queues[TX_QUEUE].add_used(&act.memory, head, 0) {
                stats.used_ring_errors += 1;
                tracing::debug!("vsock: tx used ring: {e:?}");
            }
            progress.progress = true;
        }
        if progress.progress {
            notify(act, TX_QUEUE);
        }
        progress
    }

    /// Fill guest rx buffers with what the backend has for the guest.
    fn process_rx(&mut self) -> Progress {
        let Vsock {
            active: Some(act),
            backend,
            stats,
            scratch,
            ..
        } = self
        else {
            return Progress::default();
        };
        let mut progress = Progress::default();
        while backend.has_rx() {
            let Some(mut chain) = act.queues[RX_QUEUE].pop_descriptor_chain(&act.memory) else {
                break;
            };
            let head = chain.head_index();
            let used_len =
                match VsockPacket::from_rx_virtq_chain(&act.memory, &mut chain, MAX_PKT_DATA) {
                    Ok(mut pkt) => {
                        let room = pkt.data_slice().map_or(0, |d| d.len());
                        if room == 0 {
                            stats.malformed_rx += 1;
                            tracing::debug!(head, "vsock: rx chain without a data buffer");
                            0
                        } else {
                            let room = room.min(scratch.len());
                            let Some(hdr) = backend.next_rx(&mut scratch[..room]) else {
                                // Nothing after all: give the buffer back for later.
                                act.queues[RX_QUEUE].go_to_previous_position();
                                break;
                            };
                            let n = (hdr.len as usize).min(room);
                            match pkt.set_header_from_raw(&hdr.to_bytes()) {
                                Ok(()) => {
                                    if let Some(data) = pkt.data_slice() {
                                        data.copy_from(&scratch[..n]);
                                    }
                                    stats.rx_packets += 1;
                                    (PKT_HEADER_SIZE + n) as u32
                                }
                                Err(e) => {
                                    stats.malformed_rx += 1;
                                    tracing::debug!(head, "vsock: rx header write: {e}");
                                    0
                                }
                            }
                        }
                    }
                    Err(e) => {
                        stats.malformed_rx += 1;
                        tracing::debug!(head, "vsock: malformed rx chain: {e}");
                        0
                    }
                };
            if let Err(e) = act.queues[RX_QUEUE].add_used(&act.memory, head, used_len) {
                stats.used_ring_errors += 1;
                tracing::debug!("vsock: rx used ring: {e:?}");
            }
            progress.progress = true;
        }
        if progress.progress {
            notify(act, RX_QUEUE);
        }
        progress
    }
}

/// What a queue pass did.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// Used buffers were returned.
    progress: bool,
    /// Work remains that waits for room elsewhere.
    blocked: bool,
}

fn notify(act: &mut Active, index: usize) {
    if act.queues[index]
        .needs_notification(&act.memory)
        .unwrap_or(true)
    {
        if let Err(e) = act.interrupt.signal_used_queue() {
            tracing::warn!("vsock: interrupt: {e}");
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VSOCK_DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cid = self.guest_cid.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| cid.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), String> {
        if ctx.queues.len() != QUEUE_SIZES.len() {
            return Err(format!(
                "vsock needs {} queues, got {}",
                QUEUE_SIZES.len(),
                ctx.queues.len()
            ));
        }
        self.active = Some(Active {
            memory: ctx.memory,
            queues: ctx.queues,
            interrupt: ctx.interrupt,
        });
        self.backend.start();
        self.process_all();
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        match index {
            RX_QUEUE | TX_QUEUE => self.process_all(),
            _ => {} // event queue: the device sends no events
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.backend.reset();
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.backend.epoll_fd())
    }

    fn process_backend(&mut self) {
        self.backend.process_events();
        self.process_all();
    }
}
