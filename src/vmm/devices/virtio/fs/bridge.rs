//! The bridge between the VMM's rust-vmm versions (vm-memory 0.18, virtio-queue 0.18) and the
//! ones fuse-backend-rs 0.14 is built on (vm-memory =0.17.1, virtio-queue 0.17).
//!
//! fuse-backend-rs's virtio-fs `Reader`/`Writer` take a virtio-queue 0.17 descriptor chain over
//! a vm-memory 0.17 `GuestMemory`. The two versions' types do not mix, so the fs device:
//! - views the same guest RAM through a vm-memory 0.17 `GuestMemoryMmap` whose regions point at
//!   the 0.18 mappings without owning them ([`alias_memory`]); the device keeps the 0.18 memory
//!   alive for as long as the alias exists;
//! - rebuilds each queue the transport configured as a virtio-queue 0.17 `Queue` with the same
//!   size, ring addresses and indices ([`mirror_queue`]) and serves it with that version only.

use fuse_virtio_queue::QueueT as QueueT17;
use virtio_queue::QueueT;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Guest memory as vm-memory 0.17 sees it.
pub type Memory17 = fuse_vm_memory::GuestMemoryMmap<()>;
/// A virtio-queue 0.17 queue.
pub type Queue17 = fuse_virtio_queue::Queue;

/// Why the bridge could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A region could not be wrapped.
    #[error("guest memory region at {addr:#x}: {reason}")]
    Region {
        /// Guest address of the region.
        addr: u64,
        /// What failed.
        reason: String,
    },
    /// The queue's configuration is not valid for virtio-queue 0.17.
    #[error("queue {0} is not valid (size or ring addresses)")]
    Queue(usize),
}

/// A vm-memory 0.17 view of `mem`: same guest addresses, same host pages, no ownership.
///
/// The caller must keep `mem` (a clone shares the mappings) alive as long as the result.
pub fn alias_memory(mem: &GuestMemoryMmap) -> Result<Memory17, BridgeError> {
    let mut regions = Vec::new();
    for region in mem.iter() {
        let addr = region.start_addr().0;
        let err = |reason: String| BridgeError::Region { addr, reason };
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| err(e.to_string()))?;
        let len = usize::try_from(region.len()).map_err(|e| err(e.to_string()))?;
        // SAFETY: `host..host+len` is a live read-write mapping owned by `mem`'s region, which
        // the caller keeps alive while the alias exists; the alias does not own (unmap) it.
        let mapping = unsafe {
            fuse_vm_memory::MmapRegion::<()>::build_raw(
                host,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
            )
        }
        .map_err(|e| err(e.to_string()))?;
        let region =
            fuse_vm_memory::GuestRegionMmap::new(mapping, fuse_vm_memory::GuestAddress(addr))
                .ok_or_else(|| err("region end overflows".into()))?;
        regions.push(region);
    }
    Memory17::from_regions(regions).map_err(|e| BridgeError::Region {
        addr: 0,
        reason: e.to_string(),
    })
}

/// A virtio-queue 0.17 queue in the state of the transport's `queue` (index `index` for
/// errors), checked against `mem`.
pub fn mirror_queue(
    queue: &virtio_queue::Queue,
    mem: &Memory17,
    index: usize,
) -> Result<Queue17, BridgeError> {
    let mut q = Queue17::new(queue.max_size()).map_err(|_| BridgeError::Queue(index))?;
    q.set_size(queue.size());
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(queue.desc_table());
    q.set_desc_table_address(lo, hi);
    let (lo, hi) = split(queue.avail_ring());
    q.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(queue.used_ring());
    q.set_used_ring_address(lo, hi);
    q.set_event_idx(queue.event_idx_enabled());
    q.set_next_avail(queue.next_avail());
    q.set_next_used(queue.next_used());
    q.set_ready(queue.ready());
    if q.size() != queue.size() || !q.is_valid(mem) {
        return Err(BridgeError::Queue(index));
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::virtio::desc_chain::test_util::memory;
    use fuse_vm_memory::{Bytes as _, GuestAddress as Ga17};
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn alias_sees_the_same_bytes_both_ways() {
        let mem = memory();
        let alias = alias_memory(&mem).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1234))
            .unwrap();
        assert_eq!(alias.read_obj::<u32>(Ga17(0x1234)).unwrap(), 0xdead_beef);
        alias.write_obj(0x55_u8, Ga17(0x8000)).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x8000)).unwrap(), 0x55);
        // The alias ends where guest memory ends.
        assert!(alias
            .read_obj::<u8>(Ga17(
                crate::vmm::devices::virtio::desc_chain::test_util::MEM_SIZE
            ))
            .is_err());
        drop(alias);
        // Dropping the alias leaves the mapping in place.
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x8000)).unwrap(), 0x55);
    }

    #[test]
    fn mirrored_queue_keeps_addresses_and_rejects_bad_ones() {
        let mem = memory();
        let alias = alias_memory(&mem).unwrap();
        let vq = virtio_queue::mock::MockSplitQueue::new(&mem, 16);
        let q: virtio_queue::Queue = vq.create_queue().unwrap();
        let m = mirror_queue(&q, &alias, 0).unwrap();
        assert_eq!(m.size(), 16);
        assert_eq!(m.desc_table(), q.desc_table());
        assert_eq!(m.avail_ring(), q.avail_ring());
        assert_eq!(m.used_ring(), q.used_ring());
        assert!(m.ready());
        // A ring outside guest memory is refused.
        let mut bad = virtio_queue::Queue::new(16).unwrap();
        bad.set_size(16);
        bad.set_desc_table_address(Some(0xfff0_0000), Some(0));
        bad.set_ready(true);
        assert!(mirror_queue(&bad, &alias, 1).is_err());
    }
}
