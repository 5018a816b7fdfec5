//! Shared by the rng, console and net fuzz targets: a guest memory with a hole, split queues
//! whose descriptor tables and avail rings come from the input, and reading the used ring.
#![allow(dead_code)] // each target uses its own subset

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Queue size of every fuzzed queue.
pub const QSIZE: u16 = 16;
/// Two regions with a hole, so descriptors can straddle or fall between regions.
pub const REGIONS: [(u64, usize); 2] = [(0, 0x2_0000), (0x3_0000, 0x1_0000)];
/// Queue i: descriptors at i*0x1000, avail ring at +0x400, used ring at +0x800.
pub const QUEUE_STRIDE: u64 = 0x1000;
/// Where the rest of the input is copied (the buffers the descriptors point to).
pub const BUFFERS: u64 = 0x4000;

/// A fresh guest memory.
pub fn memory() -> GuestMemoryMmap {
    let ranges: Vec<_> = REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap()
}

/// Consume `n` bytes of input (zero-padded when it runs out).
pub fn take(data: &mut &[u8], n: usize) -> Vec<u8> {
    let k = n.min(data.len());
    let mut v = data[..k].to_vec();
    v.resize(n, 0);
    *data = &data[k..];
    v
}

/// Fill queue `q`'s descriptor table and avail ring (flags, idx, ring) from the input.
pub fn load_queue(mem: &GuestMemoryMmap, q: usize, data: &mut &[u8]) {
    let base = q as u64 * QUEUE_STRIDE;
    mem.write_slice(&take(data, 16 * QSIZE as usize), GuestAddress(base))
        .unwrap();
    mem.write_slice(
        &take(data, 4 + 2 * QSIZE as usize),
        GuestAddress(base + 0x400),
    )
    .unwrap();
}

/// Copy what is left of the input to [`BUFFERS`].
pub fn load_buffers(mem: &GuestMemoryMmap, data: &[u8]) {
    let n = data.len().min(REGIONS[0].1 - BUFFERS as usize);
    mem.write_slice(&data[..n], GuestAddress(BUFFERS)).unwrap();
}

/// Driver-side queue `q`, ready.
pub fn queue(q: usize) -> Queue {
    let base = q as u64 * QUEUE_STRIDE;
    let mut queue = Queue::new(QSIZE).unwrap();
    queue.set_size(QSIZE);
    queue.set_desc_table_address(Some(base as u32), Some(0));
    queue.set_avail_ring_address(Some((base + 0x400) as u32), Some(0));
    queue.set_used_ring_address(Some((base + 0x800) as u32), Some(0));
    queue.set_ready(true);
    queue
}

/// Queue `q`'s avail index and used index as the guest sees them.
pub fn indices(mem: &GuestMemoryMmap, q: usize) -> (u16, u16) {
    let base = q as u64 * QUEUE_STRIDE;
    let avail: u16 = mem.read_obj(GuestAddress(base + 0x400 + 2)).unwrap();
    let used: u16 = mem.read_obj(GuestAddress(base + 0x800 + 2)).unwrap();
    (avail, used)
}

/// Used ring entry `i` of queue `q`: (id, len).
pub fn used_elem(mem: &GuestMemoryMmap, q: usize, i: u16) -> (u32, u32) {
    let at = q as u64 * QUEUE_STRIDE + 0x800 + 4 + 8 * u64::from(i % QSIZE);
    (
        mem.read_obj(GuestAddress(at)).unwrap(),
        mem.read_obj(GuestAddress(at + 4)).unwrap(),
    )
}
