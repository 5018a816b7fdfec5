//! Fuzz the virtio-blk request path: the input is the guest's side of the request queue (the
//! descriptor table and the avail ring) and the guest memory the descriptors point into, over a
//! small raw disk (read-write or read-only). The device must never panic, loop or touch memory
//! outside the guest; every request it completes must be on the used ring.
#![no_main]

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};

use kvmbox::vmm::devices::virtio::block::Block;
use kvmbox::vmm::devices::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QSIZE: u16 = 16;
/// Two regions with a hole, so descriptors can straddle or fall between regions.
const REGIONS: [(u64, usize); 2] = [(0, 0x2_0000), (0x3_0000, 0x1_0000)];
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x400;
const USED_RING: u64 = 0x800;
/// Request headers, data and status bytes live from here on.
const BUFFERS: u64 = 0x4000;
const DISK_SECTORS: usize = 16;

struct Disks {
    _dir: tempfile::TempDir,
    images: [std::fs::File; 2],
    devices: [Mutex<Block>; 2],
}

/// A read-write and a read-only disk, opened once (flock, open are too slow per input).
fn disks() -> &'static Disks {
    static DISKS: OnceLock<Disks> = OnceLock::new();
    DISKS.get_or_init(|| {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
        let mk = |name: &str, ro: bool| {
            let path = dir.path().join(name);
            std::fs::write(&path, vec![0u8; DISK_SECTORS * 512]).unwrap();
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            (file, Mutex::new(Block::open(&path, ro).unwrap()))
        };
        let (f0, d0) = mk("rw.img", false);
        let (f1, d1) = mk("ro.img", true);
        Disks {
            _dir: dir,
            images: [f0, f1],
            devices: [d0, d1],
        }
    })
}

/// Consume `n` bytes of input (zero-padded when it runs out).
fn take(data: &mut &[u8], n: usize) -> Vec<u8> {
    let k = n.min(data.len());
    let mut v = data[..k].to_vec();
    v.resize(n, 0);
    *data = &data[k..];
    v
}

fn queue() -> Queue {
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_ready(true);
    q
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let flags = take(&mut data, 1)[0];
    let which = usize::from(flags & 1);
    let ranges: Vec<_> = REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
    mem.write_slice(&take(&mut data, 16 * QSIZE as usize), GuestAddress(DESC_TABLE))
        .unwrap();
    // flags, idx, ring[QSIZE]
    mem.write_slice(&take(&mut data, 4 + 2 * QSIZE as usize), GuestAddress(AVAIL_RING))
        .unwrap();
    let rest = data.len().min(REGIONS[0].1 - BUFFERS as usize);
    mem.write_slice(&data[..rest], GuestAddress(BUFFERS)).unwrap();

    let disks = disks();
    // Same starting content for every input.
    let pattern: Vec<u8> = (0..DISK_SECTORS * 512).map(|i| (i * 7) as u8).collect();
    disks.images[which].write_all_at(&pattern, 0).unwrap();

    let mut dev = disks.devices[which].lock().unwrap();
    dev.reset();
    let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    dev.activate(ActivateContext {
        memory: mem.clone(),
        queues: vec![queue()],
        interrupt: irq,
        acked_features: 0,
    })
    .unwrap();
    dev.process_queue(0);
    // A second notification must be harmless (nothing new, or the device is broken).
    dev.process_queue(0);

    let avail_idx: u16 = mem.read_obj(GuestAddress(AVAIL_RING + 2)).unwrap();
    let used_idx: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).unwrap();
    if !dev.needs_reset() {
        // A healthy device consumed every available request.
        assert_eq!(used_idx, avail_idx, "requests left unanswered");
    }
    // The read-only image never changes.
    if which == 1 {
        let mut now = vec![0u8; pattern.len()];
        disks.images[1].read_exact_at(&mut now, 0).unwrap();
        assert!(now == pattern, "read-only disk modified");
    }
});
