//! virtio-fs on a mock guest memory and queues (a driver speaking raw FUSE): the INIT handshake,
//! LOOKUP + OPEN + READ of a host file, CREATE + WRITE, read-only shares, the directory
//! boundary, and hostile requests.

use std::mem::size_of;
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{
    Attr, CreateIn, EntryOut, InHeader, InitIn, InitOut, Opcode, OpenIn, OpenOut, OutHeader,
    ReadIn, WriteIn, WriteOut,
};
use fuse_vm_memory::ByteValued;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::vmm::devices::virtio::desc_chain::test_util::*;

/// virtio-queue 0.18's `MockSplitQueue` puts the used ring right after the first `QSIZE` bytes of
/// the avail ring, so avail entries from `QSIZE / 2` on overlap it: a large queue keeps every
/// test below that.
const QSIZE: u16 = 256;
const HIPRIO_AT: u64 = 0x0;
const REQUEST_AT: u64 = 0x4000;
const IN: u64 = 0x10000;
const OUT: u64 = 0x40000;
const OUT_LEN: u32 = 0x10000;
const ROOT: u64 = 1;
/// FUSE_MAX_PAGES in the INIT flags.
const FUSE_MAX_PAGES: u32 = 1 << 22;

/// Copy a FUSE struct out of raw bytes (no alignment needed).
fn parse<T: ByteValued + Default>(bytes: &[u8]) -> T {
    let mut v = T::default();
    let n = size_of::<T>();
    v.as_mut_slice().copy_from_slice(&bytes[..n]);
    v
}

/// A reply: used length, out header and the bytes after it.
struct Reply {
    used: u32,
    header: OutHeader,
    body: Vec<u8>,
}

struct Harness<'m> {
    mem: &'m GuestMemoryMmap,
    hiprio: MockSplitQueue<'m, GuestMemoryMmap>,
    requests: MockSplitQueue<'m, GuestMemoryMmap>,
    dev: Fs,
    unique: u64,
}

impl<'m> Harness<'m> {
    fn new(mem: &'m GuestMemoryMmap, dir: &std::path::Path, read_only: bool) -> Self {
        let hiprio = MockSplitQueue::create(mem, GuestAddress(HIPRIO_AT), QSIZE);
        let requests = MockSplitQueue::create(mem, GuestAddress(REQUEST_AT), QSIZE);
        let mut dev = Fs::new("share", dir, read_only).unwrap();
        let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        dev.activate(ActivateContext {
            memory: mem.clone(),
            queues: vec![
                hiprio.create_queue().unwrap(),
                requests.create_queue().unwrap(),
            ],
            interrupt: irq,
            acked_features: 0,
        })
        .unwrap();
        Harness {
            mem,
            hiprio,
            requests,
            dev,
            unique: 0,
        }
    }

    /// Write a request (header + body) at IN and return its length.
    fn put_request(
        &mut self,
        opcode: u32,
        nodeid: u64,
        body: &[u8],
        claimed_len: Option<u32>,
    ) -> u32 {
        self.unique += 1;
        let len = (size_of::<InHeader>() + body.len()) as u32;
        let header = InHeader {
            len: claimed_len.unwrap_or(len),
            opcode,
            unique: self.unique,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 1,
            padding: 0,
        };
        let mut bytes = header.as_slice().to_vec();
        bytes.extend_from_slice(body);
        self.mem.write_slice(&bytes, GuestAddress(IN)).unwrap();
        // Poison the reply area so stale replies cannot pass for new ones.
        self.mem
            .write_slice(&[0xee; 64], GuestAddress(OUT))
            .unwrap();
        len
    }

    /// Submit `descs` as one chain on the request queue and return the used length.
    fn submit(&mut self, descs: &[RawDescriptor]) -> u32 {
        add_chain(&self.requests, descs, 0);
        let before = used_idx(&self.requests);
        self.dev.process_queue(REQUEST_QUEUE);
        assert_eq!(
            used_idx(&self.requests),
            before + 1,
            "request not completed"
        );
        used_elem(&self.requests, before).1
    }

    fn reply(&self, used: u32) -> Reply {
        let mut bytes = vec![0u8; OUT_LEN as usize];
        self.mem.read_slice(&mut bytes, GuestAddress(OUT)).unwrap();
        let header: OutHeader = parse(&bytes);
        let end = (used as usize).max(size_of::<OutHeader>());
        Reply {
            used,
            header,
            body: bytes[size_of::<OutHeader>()..end].to_vec(),
        }
    }

    /// A well-formed request with a 64 KiB reply buffer.
    fn call(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> Reply {
        let len = self.put_request(opcode as u32, nodeid, body, None);
        let used = self.submit(&[rd(IN, len), wr(OUT, OUT_LEN)]);
        self.reply(used)
    }

    fn init(&mut self) -> InitOut {
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0x20000,
            flags: FUSE_MAX_PAGES,
        };
        let r = self.call(Opcode::Init, 0, init.as_slice());
        assert_eq!(r.header.error, 0, "INIT failed");
        assert_eq!(r.header.unique, self.unique);
        assert_eq!(r.header.len, r.used);
        parse(&r.body)
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        let r = self.call(Opcode::Lookup, parent, &body);
        match r.header.error {
            0 => Ok(parse(&r.body)),
            e => Err(-e),
        }
    }

    fn open(&mut self, nodeid: u64, flags: i32) -> Result<u64, i32> {
        let open = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        let r = self.call(Opcode::Open, nodeid, open.as_slice());
        match r.header.error {
            0 => Ok(parse::<OpenOut>(&r.body).fh),
            e => Err(-e),
        }
    }

    fn read(&mut self, nodeid: u64, fh: u64, size: u32) -> Result<Vec<u8>, i32> {
        let read = ReadIn {
            fh,
            offset: 0,
            size,
            ..Default::default()
        };
        let r = self.call(Opcode::Read, nodeid, read.as_slice());
        match r.header.error {
            0 => Ok(r.body),
            e => Err(-e),
        }
    }

    fn create(&mut self, name: &str, flags: i32) -> Result<(EntryOut, u64), i32> {
        self.create_mode(name, flags, 0o644)
    }

    fn create_mode(&mut self, name: &str, flags: i32, mode: u32) -> Result<(EntryOut, u64), i32> {
        let create = CreateIn {
            flags: flags as u32,
            mode: libc::S_IFREG | mode,
            umask: 0,
            fuse_flags: 0,
        };
        let mut body = create.as_slice().to_vec();
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        let r = self.call(Opcode::Create, ROOT, &body);
        match r.header.error {
            0 => {
                let entry: EntryOut = parse(&r.body);
                let open: OpenOut = parse(&r.body[size_of::<EntryOut>()..]);
                Ok((entry, open.fh))
            }
            e => Err(-e),
        }
    }
}

fn share_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    dir
}

#[test]
fn config_space_and_queues() {
    let dir = share_with(&[]);
    let dev = Fs::new("myfs", dir.path(), false).unwrap();
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(dev.device_features(), 0);
    let mut tag = [0xffu8; TAG_LEN];
    dev.read_config(0, &mut tag);
    assert_eq!(&tag[..4], b"myfs");
    assert!(tag[4..].iter().all(|&b| b == 0));
    let mut n = [0u8; 4];
    dev.read_config(TAG_LEN as u64, &mut n);
    assert_eq!(u32::from_le_bytes(n), 1);
    // Beyond the config space reads as zero.
    let mut beyond = [0xffu8; 8];
    dev.read_config(CONFIG_LEN as u64, &mut beyond);
    assert_eq!(beyond, [0; 8]);
}

#[test]
fn bad_tags_and_paths_are_refused() {
    let dir = share_with(&[("f", b"x")]);
    assert!(matches!(
        Fs::new("", dir.path(), false),
        Err(FsError::BadTag(_))
    ));
    assert!(matches!(
        Fs::new(&"t".repeat(37), dir.path(), false),
        Err(FsError::BadTag(_))
    ));
    assert!(Fs::new(&"t".repeat(36), dir.path(), false).is_ok());
    assert!(matches!(
        Fs::new("t", &dir.path().join("f"), false),
        Err(FsError::NotADirectory(_))
    ));
    assert!(matches!(
        Fs::new("t", &dir.path().join("missing"), false),
        Err(FsError::NotADirectory(_))
    ));
}

#[test]
fn init_handshake() {
    let dir = share_with(&[]);
    let mem = memory();
    let mut h = Harness::new(&mem, dir.path(), false);
    let out = h.init();
    assert_eq!(out.major, 7);
    assert!(out.minor >= 31);
    assert_eq!(out.max_pages, 256);
    assert_eq!(out.max_write, 256 * 4096);
    assert_eq!(h.dev.stats().served, 1);
    // An older major version is refused with EPROTO.
    let old = InitIn {
        major: 6,
        minor: 0,
        max_readahead: 0,
        flags: 0,
    };
    let r = h.call(Opcode::Init, 0, old.as_slice());
    assert_eq!(r.header.error, -libc::EPROTO);
}

#[test]
fn lookup_open_and_read_a_host_file() {
    let content = b"hello from the host\n";
    let dir = share_with(&[("hello.txt", content)]);
    let mem = memory();
    let mut h = Harness::new(&mem, dir.path(), false);
    h.init();
    let entry = h.lookup(ROOT, "hello.txt").unwrap();
    assert_ne!(entry.nodeid, ROOT);
    let attr: Attr = entry.attr;
    assert_eq!(attr.size, content.len() as u64);
    assert_eq!(attr.mode & libc::S_IFMT, libc::S_IFREG);
    let fh = h.open(entry.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(entry.nodeid, fh, 4096).unwrap(), content);
    assert_eq!(h.lookup(ROOT, "missing").err(), Some(libc::ENOENT));
}

#[test]
fn handle_fds_survive_odd_flags_and_o_path_is_refused() {
    let dir = share_with(&[("f", b"data")]);
    let mem = memory();
    let mut h = Harness::new(&mem, dir.path(), false);
    h.init();
    let e = h.lookup(ROOT, "f").unwrap();
    // fuse-backend-rs would close an O_PATH handle's fd on the first READ (double close).
    assert_eq!(
        h.open(e.nodeid, libc::O_PATH | libc::O_NOFOLLOW).err(),
        Some(libc::EINVAL)
    );
    // READs carrying flags other than the handle's: the handle keeps working.
    let fh = h.open(e.nodeid, libc::O_RDONLY).unwrap();
    for flags in [libc::O_PATH, libc::O_DIRECT | libc::O_NOATIME, -1] {
        let r = h.call(
            Opcode::Read,
            e.nodeid,
            ReadIn {
                fh,
                size: 64,
                flags: flags as u32,
                ..Default::default()
            }
            .as_slice(),
        );
        assert_eq!(r.header.error, 0, "flags {flags:#x}");
        assert_eq!(r.body, b"data");
    }
}

#[test]
fn create_and_write_reach_the_host() {
    let dir = share_with(&[]);
    let mem = memory();
    let mut h = Harness::new(&mem, dir.path(), false);
    h.init();
    let (entry, fh) = h.create("new.txt", libc::O_WRONLY | libc::O_CREAT).unwrap();
    let data = b"written by the guest";
    let write = WriteIn {
        fh,
        offset: 0,
        size: data.len() as u32,
        ..Default::default()
    };
    let mut body = write.as_slice().to_vec();
    body.extend_from_slice(data);
    let r = h.call(Opcode::Write, entry.nodeid, &body);
    assert_eq!(r.header.error, 0);
    assert_eq!(parse::<WriteOut>(&r.body).size, data.len() as u32);
    assert_eq!(std::fs::read(dir.path().join("new.txt")).unwrap(), data);
    // The guest's mode applies exactly (the VMM's umask is not applied on top).
    h.create_mode("open.txt", libc::O_WRONLY | libc::O_CREAT, 0o666)
        .unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("open.txt"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o666);
}

#[test]
fn read_only_share_refuses_changes() {
    let dir = share_with(&[("ro.txt", b"keep")]);
    let mem = memory();
    let mut h = Harness::new(&mem, dir.path(), true);
    h.init();
    assert_eq!(
        h.create("new.txt", libc::O_WRONLY | libc::O_CREAT).err(),
        Some(libc::EROFS)
    );
    assert!(!dir.path().join("new.txt").exists());
    let entry = h.lookup(ROOT, "ro.txt").unwrap();
    assert_eq!(h.open(entry.nodeid, libc::O_RDWR), Err(libc::EROFS));
    assert_eq!(
        h.open(entry.nodeid, libc::O_RDONLY | libc::O_TRUNC),
        Err(libc::EROFS)
    );
    // Unlink and mkdir are refused too; reading still works.
    let r = h.call(Opcode::Unlink, ROOT, b"ro.txt\0");
    assert_eq!(r.header.error, -libc::EROFS);
    let mut mkdir = vec![0u8; 8]; // MkdirIn { mode, umask }
    mkdir[..4].copy_from_slice(&0o755u32.to_ne_bytes());
    mkdir.extend_from_slice(b"d\0");
    assert_eq!(
        h.call(Opcode::Mkdir, ROOT, &mkdir).header.error,
        -libc::EROFS
    );
    let fh = h.open(entry.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(entry.nodeid, fh, 100).unwrap(), b"keep");
    assert_eq!(std::fs::read(dir.path().join("ro.txt")).unwrap(), b"keep");
}

#[test]
fn the_guest_cannot_leave_the_directory() {
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(outer.path().join("secret"), b"host only").unwrap();
    let share = outer.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::os::unix::fs::symlink("../secret", share.join("up")).unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret"), share.join("abs")).unwrap();
    std::fs::create_dir(share.join("sub")).unwrap();
    let mem = memory();
    let mut h = Harness::new(&mem, &share, false);
    h.init();
    // `..` of the root is the root.
    let root_ino = std::fs::metadata(&share).unwrap();
    let dotdot = h.lookup(ROOT, "..").unwrap();
    assert_eq!(
        dotdot.attr.ino,
        std::os::unix::fs::MetadataExt::ino(&root_ino)
    );
    // `..` of a subdirectory is the share again, not its parent.
    let sub = h.lookup(ROOT, "sub").unwrap();
    let up = h.lookup(sub.nodeid, "..").unwrap();
    assert_eq!(up.attr.ino, dotdot.attr.ino);
    // A name with a slash is refused.
    assert_eq!(h.lookup(ROOT, "../secret").err(), Some(libc::EINVAL));
    assert_eq!(
        h.lookup(sub.nodeid, "../../secret").err(),
        Some(libc::EINVAL)
    );
    // Symlinks are looked up as links, never followed on the host, and cannot be opened.
    for link in ["up", "abs"] {
        let e = h.lookup(ROOT, link).unwrap();
        assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        assert!(h.open(e.nodeid, libc::O_RDONLY).is_err());
    }
    // Device nodes cannot be created.
    let mut mknod = vec![0u8; 16]; // MknodIn { mode, rdev, umask, padding }
    mknod[..4].copy_from_slice(&(libc::S_IFCHR | 0o666).to_ne_bytes());
    mknod[4..8].copy_from_slice(&(libc::makedev(1, 3) as u32).to_ne_bytes());
    mknod.extend_from_slice(b"null\0");
    assert_eq!(
        h.call(Opcode::Mknod, ROOT, &mknod).header.error,
        -libc::EPERM
    );
    assert!(!share.join("null").exists());
}

#[test]
fn malformed_fuse_requests_get_error_replies() {
    let dir = share_with(&[("f", b"data")]);
    let mem = memory();
    let mut h = Harness::new(&mem, dir.path(), false);
    h.init();

    // Unknown opcode: ENOSYS from the server.
    let r = h.call_raw(9999, ROOT, b"", None);
    assert_eq!(r.header.error, -libc::ENOSYS);

    // Header len claims more than the guest sent: EINVAL, not a 1 MiB allocation.
    let r = h.call_raw(Opcode::Lookup as u32, ROOT, b"f\0", Some(1 << 20));
    assert_eq!(r.header.error, -libc::EINVAL);
    // Header len below the header size.
    let r = h.call_raw(Opcode::Lookup as u32, ROOT, b"f\0", Some(8));
    assert_eq!(r.header.error, -libc::EINVAL);

    // A name without NUL.
    let r = h.call(Opcode::Lookup, ROOT, b"f");
    assert!(r.header.error < 0);
    // A truncated body for a fixed-size argument (READ needs 40 bytes).
    let r = h.call(Opcode::Read, ROOT, &[0u8; 8]);
    assert!(r.header.error < 0);
    // An unknown inode and an unknown file handle.
    assert_eq!(h.lookup(0xdead_beef, "f").err(), Some(libc::EBADF));
    let e = h.lookup(ROOT, "f").unwrap();
    assert!(h.read(e.nodeid, 0x1234_5678, 10).is_err());
    // A READ asking for 4 GiB into a 64 KiB buffer gets what fits, no more.
    let fh = h.open(e.nodeid, libc::O_RDONLY).unwrap();
    let r = h.call(
        Opcode::Read,
        e.nodeid,
        ReadIn {
            fh,
            size: u32::MAX,
            ..Default::default()
        }
        .as_slice(),
    );
    assert!(r.header.error == 0 && r.body == b"data" || r.header.error < 0);
    // A WRITE claiming more data than it carries writes what it carries (here nothing).
    let w = WriteIn {
        fh,
        size: 1 << 19,
        ..Default::default()
    };
    let r = h.call(Opcode::Write, e.nodeid, w.as_slice());
    assert!(r.header.error < 0 || parse::<WriteOut>(&r.body).size == 0);
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"data");
    // GETXATTR / LISTXATTR asking for 4 GiB: answered (clamped to 64 KiB), no huge allocation.
    let mut getx = Vec::new();
    getx.extend_from_slice(&u32::MAX.to_ne_bytes()); // GetxattrIn { size, padding }
    getx.extend_from_slice(&0u32.to_ne_bytes());
    let mut named = getx.clone();
    named.extend_from_slice(b"user.none\0");
    let r = h.call(Opcode::Getxattr, e.nodeid, &named);
    assert!(r.header.error < 0, "{}", r.header.error);
    let r = h.call(Opcode::Listxattr, e.nodeid, &getx);
    assert!(r.header.error <= 0);
    // READDIR asking for more than the reply buffer holds: ENOMEM from the server.
    let r = h.call(Opcode::Opendir, ROOT, OpenIn::default().as_slice());
    assert_eq!(r.header.error, 0);
    let dh = parse::<OpenOut>(&r.body).fh;
    let big = ReadIn {
        fh: dh,
        size: u32::MAX,
        ..Default::default()
    };
    assert_eq!(
        h.call(Opcode::Readdirplus, ROOT, big.as_slice())
            .header
            .error,
        -libc::ENOMEM
    );
    assert!(h.dev.stats().refused >= 3);
    assert!(!h.dev.needs_reset());
}

impl Harness<'_> {
    /// A request with an arbitrary opcode and optionally a lying header length.
    fn call_raw(&mut self, opcode: u32, nodeid: u64, body: &[u8], len: Option<u32>) -> Reply {
        let real = self.put_request(opcode, nodeid, body, len);
        let used = self.submit(&[rd(IN, real), wr(OUT, OUT_LEN)]);
        self.reply(used)
    }
}

#[test]
fn hostile_chains_are_returned_unanswered() {
    let dir = share_with(&[]);
    let mem = memory();
    let mut h = Harness::new(&mem, dir.path(), false);
    h.init();
    let len = h.put_request(Opcode::Getattr as u32, ROOT, &[0u8; 16], None);

    // Shorter than a FUSE header.
    assert_eq!(h.submit(&[rd(IN, 10), wr(OUT, OUT_LEN)]), 0);
    // Reply buffer outside guest memory.
    assert_eq!(h.submit(&[rd(IN, len), wr(MEM_SIZE - 8, 64)]), 0);
    // Request at the top of the address space.
    assert_eq!(h.submit(&[rd(u64::MAX - 16, 64), wr(OUT, OUT_LEN)]), 0);
    // Device-readable after device-writable.
    assert_eq!(h.submit(&[wr(OUT, OUT_LEN), rd(IN, len)]), 0);
    // A reply buffer too small for even an error header: nothing is written.
    assert_eq!(h.submit(&[rd(IN, len), wr(OUT, 8)]), 0);
    let bad_before = h.dev.stats().bad_chains;
    assert!(bad_before >= 4);

    // A looping chain.
    h.requests
        .add_desc_chains(
            &[
                raw(IN, len, VRING_DESC_F_NEXT, 1),
                raw(OUT, 64, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1),
            ],
            0,
        )
        .unwrap();
    h.dev.process_queue(REQUEST_QUEUE);
    // `next` beyond the queue.
    h.requests
        .add_desc_chains(&[raw(IN, len, VRING_DESC_F_NEXT, 1000)], 0)
        .unwrap();
    h.dev.process_queue(REQUEST_QUEUE);
    assert_eq!(h.dev.stats().bad_chains, bad_before + 2);
    assert_eq!(used_elem(&h.requests, used_idx(&h.requests) - 1).1, 0);

    // FORGET on the hiprio queue needs no reply buffer.
    let forget = 1u64.to_ne_bytes();
    let flen = h.put_request(Opcode::Forget as u32, 5, &forget, None);
    add_chain(&h.hiprio, &[rd(IN, flen)], 0);
    h.dev.process_queue(HIPRIO_QUEUE);
    assert_eq!(used_idx(&h.hiprio), 1);
    assert_eq!(used_elem(&h.hiprio, 0).1, 0);

    // The device still works.
    assert!(!h.dev.needs_reset());
    h.lookup(ROOT, ".").unwrap();
}

#[test]
fn queue_errors_need_a_reset_and_reset_recovers() {
    let dir = share_with(&[]);
    let mem = memory();
    let mut h = Harness::new(&mem, dir.path(), false);
    h.requests.avail().idx().store(1000);
    h.dev.process_queue(REQUEST_QUEUE);
    assert!(h.dev.needs_reset());
    h.dev.reset();
    assert!(!h.dev.needs_reset());
    // After the reset nothing is served until the driver activates again.
    h.requests.avail().idx().store(0);
    h.dev.process_queue(REQUEST_QUEUE);
    assert_eq!(used_idx(&h.requests), 0);
    // Unknown queue indices are ignored.
    h.dev.process_queue(7);
}

#[test]
fn notifications_before_activation_are_ignored() {
    let dir = share_with(&[]);
    let mut dev = Fs::new("t", dir.path(), false).unwrap();
    dev.process_queue(REQUEST_QUEUE);
    dev.process_queue(HIPRIO_QUEUE);
    assert_eq!(dev.stats(), FsStats::default());
    // Activation with the wrong number of queues fails.
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    assert!(dev
        .activate(ActivateContext {
            memory: mem.clone(),
            queues: vec![vq.create_queue().unwrap()],
            interrupt: irq,
            acked_features: 0,
        })
        .is_err());
}
