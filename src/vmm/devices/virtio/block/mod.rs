//! virtio-blk (device id 2) on a raw image file: IN, OUT, FLUSH, GET_ID, read-only mode.
//!
//! One request queue, served synchronously on the VMM's event loop thread. Every request is
//! validated before any data moves: the chain ([`collect_chain`]), the header, the sector range
//! against the capacity and the data length (whole sectors). A bad request gets
//! VIRTIO_BLK_S_IOERR (or UNSUPP for an unknown type); a chain without room for a status byte is
//! returned with length 0; a queue-level error (corrupt ring indices) stops the device until the
//! driver resets it (DEVICE_NEEDS_RESET).

pub mod disk;
pub mod request;

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use self::disk::Disk;
use self::request::Outcome;
use super::desc_chain::{collect_chain, drain_queue, SingleQueue};
use super::{ActivateContext, VirtioDevice};

pub use self::disk::DiskError;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Longest chain accepted (header + data segments + status; the queue bounds it anyway, an
/// indirect table could be longer).
pub const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// Data segments per request advertised in `seg_max` (header and status take two descriptors).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// Offsets in `struct virtio_blk_config`.
const CONFIG_CAPACITY: usize = 0;
const CONFIG_SEG_MAX: usize = 12;
/// The part of the config space the device fills (capacity, size_max, seg_max).
const CONFIG_LEN: usize = 16;

/// A virtio-blk device.
pub struct Block {
    disk: Disk,
    queue_sizes: [u16; 1],
    config: [u8; CONFIG_LEN],
    active: Option<SingleQueue>,
    broken: bool,
}

impl Block {
    /// A block device backed by `disk`.
    pub fn new(disk: Disk) -> Self {
        let mut config = [0u8; CONFIG_LEN];
        config[CONFIG_CAPACITY..CONFIG_CAPACITY + 8]
            .copy_from_slice(&disk.capacity_sectors().to_le_bytes());
        config[CONFIG_SEG_MAX..CONFIG_SEG_MAX + 4].copy_from_slice(&SEG_MAX.to_le_bytes());
        Block {
            disk,
            queue_sizes: [QUEUE_SIZE],
            config,
            active: None,
            broken: false,
        }
    }

    /// Open `path` and wrap it.
    pub fn open(path: &std::path::Path, read_only: bool) -> Result<Self, DiskError> {
        Ok(Block::new(Disk::open(path, read_only)?))
    }

    /// The backing disk.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_BLK_F_FLUSH) | (1u64 << VIRTIO_BLK_F_SEG_MAX);
        if self.disk.read_only() {
            f |= 1u64 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), String> {
        self.active = Some(SingleQueue::activate(ctx, "virtio-blk")?);
        self.broken = false;
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        if index != 0 || self.broken {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let disk = &mut self.disk;
        let memory = &active.memory;
        let result = drain_queue(&mut active.queue, memory, &active.interrupt, |chain| {
            let buffers = match collect_chain(chain, MAX_DESCRIPTORS) {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(disk = %disk.path().display(), "virtio-blk: {e}");
                    return 0;
                }
            };
            let (outcome, used) = request::execute(memory, &buffers, disk);
            if outcome != Outcome::Ok {
                tracing::debug!(disk = %disk.path().display(), ?outcome, "virtio-blk request failed");
            }
            used
        });
        if let Err(e) = result {
            tracing::warn!(disk = %self.disk.path().display(), "virtio-blk stopped: {e}");
            self.broken = true;
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
    }

    fn needs_reset(&self) -> bool {
        self.broken
    }
}

/// Copy `data.len()` bytes of `config` at `offset`; bytes beyond it read as zero.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

#[cfg(test)]
mod tests;
