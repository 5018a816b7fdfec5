//! Fuzz the virtio-vsock packet path: the input is the guest's side of the tx and rx queues
//! (descriptor tables, avail rings) and the bytes of guest memory the descriptors point into.
//! The device must never panic, loop or touch memory outside the guest.
#![no_main]

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use kvmbox::vmm::devices::virtio::vsock::Vsock;
use kvmbox::vmm::devices::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QSIZE: u16 = 16;
/// Two regions with a hole, so descriptors can straddle or fall between regions.
const REGIONS: [(u64, usize); 2] = [(0, 0x2_0000), (0x3_0000, 0x1_0000)];
const RX: usize = 0;
const TX: usize = 1;
/// Queue i: descriptors at i*0x1000, avail at +0x400, used at +0x800.
const BUFFERS: u64 = 0x4000;

fn socket_dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap())
}

/// Consume `n` bytes of input (zero-padded when it runs out).
fn take<'a>(data: &mut &'a [u8], n: usize) -> Vec<u8> {
    let k = n.min(data.len());
    let mut v = data[..k].to_vec();
    v.resize(n, 0);
    *data = &data[k..];
    v
}

fn load_queue(mem: &GuestMemoryMmap, q: usize, data: &mut &[u8]) {
    let base = q as u64 * 0x1000;
    mem.write_slice(&take(data, 16 * QSIZE as usize), GuestAddress(base))
        .unwrap();
    // flags, idx, ring
    mem.write_slice(&take(data, 4 + 2 * QSIZE as usize), GuestAddress(base + 0x400))
        .unwrap();
}

fuzz_target!(|input: &[u8]| {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut data = input;
    let ranges: Vec<_> = REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
    load_queue(&mem, TX, &mut data);
    load_queue(&mem, RX, &mut data);
    let host_bytes = take(&mut data, 16);
    let rest = data.len().min(REGIONS[0].1 - BUFFERS as usize);
    mem.write_slice(&data[..rest], GuestAddress(BUFFERS)).unwrap();

    let n = N.fetch_add(1, Ordering::Relaxed);
    let uds = socket_dir().path().join(format!("v{n}.sock"));
    let mut dev = Vsock::new(3, &uds).unwrap();
    // Something listens on host port 1, so guest connects there succeed.
    let listener = UnixListener::bind(format!("{}_1", uds.display())).unwrap();
    listener.set_nonblocking(true).unwrap();

    let queues = (0..3u64)
        .map(|i| {
            let mut q = Queue::new(QSIZE).unwrap();
            q.set_size(QSIZE);
            q.try_set_desc_table_address(GuestAddress(i * 0x1000)).unwrap();
            q.try_set_avail_ring_address(GuestAddress(i * 0x1000 + 0x400)).unwrap();
            q.try_set_used_ring_address(GuestAddress(i * 0x1000 + 0x800)).unwrap();
            q.set_ready(true);
            q
        })
        .collect();
    let interrupt = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    dev.activate(ActivateContext {
        memory: mem.clone(),
        queues,
        interrupt,
        acked_features: 1 << 32,
    })
    .unwrap();
    dev.process_queue(TX);
    // The host side of any accepted connection answers, then the device runs again.
    let mut host = Vec::new();
    while let Ok((mut s, _)) = listener.accept() {
        let _ = s.write_all(&host_bytes);
        host.push(s);
    }
    dev.process_backend();
    dev.process_queue(RX);
    host.clear();
    dev.process_backend();
    dev.process_queue(TX);
    drop(dev);
    let _ = std::fs::remove_file(format!("{}_1", uds.display()));
});
