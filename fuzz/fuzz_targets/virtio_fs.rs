//! Fuzz the virtio-fs request path: FUSE request parsing in fuse-backend-rs's server and the
//! passthrough behind kvmbox's share guard, reached through the device's queues.
//!
//! Input: a flags byte (bit 0: read-only share, bit 1: hiprio queue), then up to 8 messages,
//! each `len: u16 | reply_len: u16 | split: u8 | place: u8 | len bytes`. A message's bytes are
//! the device-readable part of one chain, split into two descriptors at `split`; the reply
//! buffer of `reply_len` bytes is placed by `place` (normal, straddling the end of the first
//! region, inside the hole, or readable-after-writable). Every input gets a fresh device on a
//! fresh share (deterministic inode numbers: root 1, then 2, 3 ...; file handles from 1) holding
//! `f` (4 KiB), `d/`, `d/g`, and a symlink `l` -> `../outside`.
//!
//! Invariants: no panic; every available request is completed unless the device reported
//! `needs_reset`; nothing outside the share changes (`outside` keeps its content); a read-only
//! share never changes.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use kvmbox::vmm::devices::virtio::fs::Fs;
use kvmbox::vmm::devices::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QSIZE: u16 = 16;
/// Two regions with a hole.
const REGIONS: [(u64, usize); 2] = [(0, 0x2_0000), (0x3_0000, 0x1_0000)];
/// Per queue: descriptor table, avail ring, used ring.
const RINGS: [(u64, u64, u64); 2] = [(0x0, 0x400, 0x800), (0x1000, 0x1400, 0x1800)];
const REQUEST: u64 = 0x4000;
const REPLY: u64 = 0x3_0000;
const OUTSIDE: &[u8] = b"outside the share";

struct Dirs {
    _root: tempfile::TempDir,
    base: PathBuf,
}

fn dirs() -> &'static Dirs {
    static DIRS: OnceLock<Dirs> = OnceLock::new();
    DIRS.get_or_init(|| {
        // Bound what a fuzzed WRITE/FALLOCATE/SETATTR can make the file system hold.
        // SAFETY: plain libc calls on this process's own limits and signal disposition.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 8 << 20,
                rlim_max: 8 << 20,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
        }
        let root =
            tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
        let base = root.path().to_path_buf();
        std::fs::write(base.join("outside"), OUTSIDE).unwrap();
        Dirs { _root: root, base }
    })
}

/// A fresh share with known content.
fn fresh_share(base: &Path) -> PathBuf {
    let share = base.join("share");
    if share.exists() {
        // Modes the guest set do not stop root; ioctls (chattr) are refused by the device.
        std::fs::remove_dir_all(&share).unwrap();
    }
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("f"), vec![b'a'; 4096]).unwrap();
    std::fs::create_dir(share.join("d")).unwrap();
    std::fs::write(share.join("d/g"), b"g").unwrap();
    std::os::unix::fs::symlink("../outside", share.join("l")).unwrap();
    share
}

fn queue(i: usize) -> Queue {
    let (desc, avail, used) = RINGS[i];
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    q
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let k = n.min(data.len());
    let (head, tail) = data.split_at(k);
    *data = tail;
    head
}

fn desc(mem: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let at = GuestAddress(table + 16 * u64::from(i));
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&d, at).unwrap();
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let flags = take(&mut data, 1).first().copied().unwrap_or(0);
    let read_only = flags & 1 != 0;
    let qi = usize::from(flags >> 1 & 1);
    let dirs = dirs();
    let share = fresh_share(&dirs.base);
    let ranges: Vec<_> = REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();

    let mut dev = Fs::new("fuzz", &share, read_only).unwrap();
    let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    dev.activate(ActivateContext {
        memory: mem.clone(),
        queues: vec![queue(0), queue(1)],
        interrupt: irq,
        acked_features: 0,
    })
    .unwrap();
    let (table, avail, used) = RINGS[qi];

    for n in 0..8u16 {
        if data.len() < 6 {
            break;
        }
        let hdr = take(&mut data, 6);
        let len = usize::from(u16::from_le_bytes([hdr[0], hdr[1]]));
        let reply_len = u32::from(u16::from_le_bytes([hdr[2], hdr[3]]));
        let msg = take(&mut data, len);
        let split = (usize::from(hdr[4]) * msg.len()) / 255;
        mem.write_slice(msg, GuestAddress(REQUEST)).unwrap();
        let (a, b) = msg.split_at(split);
        const NEXT: u16 = 1;
        const WRITE: u16 = 2;
        desc(&mem, table, 0, REQUEST, a.len() as u32, NEXT, 1);
        desc(&mem, table, 1, REQUEST + a.len() as u64, b.len() as u32, NEXT, 2);
        match hdr[5] % 4 {
            // Normal reply buffer.
            0 | 1 => desc(&mem, table, 2, REPLY, reply_len, WRITE, 0),
            // Straddling the end of the first region into the hole.
            2 => desc(&mem, table, 2, 0x2_0000 - 64, reply_len, WRITE, 0),
            // Readable after writable.
            _ => {
                desc(&mem, table, 2, REPLY, reply_len, WRITE | NEXT, 3);
                desc(&mem, table, 3, REPLY, 16, 0, 0);
            }
        }
        mem.write_obj(0u16, GuestAddress(avail + 4 + 2 * u64::from(n % QSIZE)))
            .unwrap();
        mem.write_obj(n + 1, GuestAddress(avail + 2)).unwrap();
        dev.process_queue(qi);
        if dev.needs_reset() {
            break;
        }
        let used_idx: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap();
        assert_eq!(used_idx, n + 1, "request left unanswered");
    }
    drop(dev);
    assert_eq!(
        std::fs::read(dirs.base.join("outside")).unwrap(),
        OUTSIDE,
        "a file outside the share changed"
    );
    if read_only {
        assert_eq!(std::fs::read(share.join("f")).unwrap(), vec![b'a'; 4096]);
        assert_eq!(std::fs::read(share.join("d/g")).unwrap(), b"g");
        let mut names: Vec<_> = std::fs::read_dir(&share)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["d", "f", "l"], "read-only share changed");
    }
});
