//! virtio-blk on a mock guest memory and queue: normal requests and hostile ones.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::vmm::devices::bus::BusDevice;
use crate::vmm::devices::virtio::desc_chain::test_util::*;
use crate::vmm::devices::virtio::mmio::{regs, status, MmioTransport};
use crate::vmm::devices::virtio::{ActivateContext, VirtioInterrupt};

const SECTORS: u64 = 16;
const HDR: u64 = 0x8000;
const DATA: u64 = 0x9000;
const STATUS: u64 = 0xf000;
const UNTOUCHED: u8 = 0xee;

/// A disk image whose byte `i` is `i * 7 + 3 (mod 256)`.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7).wrapping_add(3) & 0xff) as u8
}

fn image() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let bytes: Vec<u8> = (0..(SECTORS as usize * 512)).map(pattern).collect();
    f.write_all(&bytes).unwrap();
    f
}

fn file_bytes(f: &tempfile::NamedTempFile) -> Vec<u8> {
    let mut file = f.reopen().unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    let mut v = Vec::new();
    file.read_to_end(&mut v).unwrap();
    v
}

struct Harness<'m> {
    mem: &'m GuestMemoryMmap,
    vq: MockSplitQueue<'m, GuestMemoryMmap>,
    dev: Block,
    irq: Arc<VirtioInterrupt>,
}

impl<'m> Harness<'m> {
    fn new(mem: &'m GuestMemoryMmap, image: &tempfile::NamedTempFile, read_only: bool) -> Self {
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let mut dev = Block::open(image.path(), read_only).unwrap();
        let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        dev.activate(ActivateContext {
            memory: mem.clone(),
            queues: vec![vq.create_queue().unwrap()],
            interrupt: irq.clone(),
            acked_features: 0,
        })
        .unwrap();
        Harness { mem, vq, dev, irq }
    }

    fn header(&self, request_type: u32, sector: u64) {
        self.mem
            .write_obj(request_type.to_le(), GuestAddress(HDR))
            .unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem
            .write_obj(sector.to_le(), GuestAddress(HDR + 8))
            .unwrap();
        self.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
    }

    /// Make `descs` available as one chain (at table index 0: requests complete one at a
    /// time), notify, return the used element.
    fn submit(&mut self, descs: &[virtio_queue::desc::RawDescriptor]) -> (u32, u32) {
        add_chain(&self.vq, descs, 0);
        self.kick()
    }

    fn kick(&mut self) -> (u32, u32) {
        let before = used_idx(&self.vq);
        self.dev.process_queue(0);
        assert_eq!(used_idx(&self.vq), before + 1, "request not completed");
        used_elem(&self.vq, before)
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn data(&self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(DATA)).unwrap();
        v
    }

    /// A plain request: header, `len` data bytes at DATA (`write` = device-writable), status.
    fn simple(&mut self, request_type: u32, sector: u64, len: u32, writable: bool) -> (u32, u32) {
        self.header(request_type, sector);
        let data = if writable {
            wr(DATA, len)
        } else {
            rd(DATA, len)
        };
        self.submit(&[rd(HDR, 16), data, wr(STATUS, 1)])
    }
}

#[test]
fn config_and_features() {
    let img = image();
    let dev = Block::open(img.path(), false).unwrap();
    assert_eq!(dev.device_type(), 2);
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
    let mut seg = [0u8; 4];
    dev.read_config(12, &mut seg);
    assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
    let mut beyond = [0xffu8; 4];
    dev.read_config(u64::MAX - 1, &mut beyond);
    assert_eq!(beyond, [0; 4]);
    assert_eq!(dev.device_features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_ne!(dev.device_features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
    let ro = Block::open(img.path(), true);
    // The read-write instance holds an exclusive lock.
    assert!(ro.is_err());
    drop(dev);
    let ro = Block::open(img.path(), true).unwrap();
    assert_ne!(ro.device_features() & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn read_write_flush_get_id_round_trip() {
    let mem = memory();
    let img = image();
    let mut h = Harness::new(&mem, &img, false);

    // IN: sectors 2..4 into two data descriptors.
    h.header(VIRTIO_BLK_T_IN, 2);
    let used = h.submit(&[
        rd(HDR, 16),
        wr(DATA, 512),
        wr(DATA + 512, 512),
        wr(STATUS, 1),
    ]);
    assert_eq!(used, (0, 1025));
    assert_eq!(h.status(), VIRTIO_BLK_S_OK as u8);
    let expect: Vec<u8> = (1024..2048).map(pattern).collect();
    assert_eq!(h.data(1024), expect);
    assert!(h.irq.irqfd().read().unwrap() >= 1);

    // OUT: one sector of 0xab at sector 5.
    mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    let used = h.simple(VIRTIO_BLK_T_OUT, 5, 512, false);
    assert_eq!(used.1, 1);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK as u8);
    let bytes = file_bytes(&img);
    assert!(bytes[5 * 512..6 * 512].iter().all(|&b| b == 0xab));
    assert_eq!(bytes[6 * 512], pattern(6 * 512));
    assert_eq!(bytes[5 * 512 - 1], pattern(5 * 512 - 1));

    // FLUSH: header and status only.
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    let used = h.submit(&[rd(HDR, 16), wr(STATUS, 1)]);
    assert_eq!(used.1, 1);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK as u8);

    // GET_ID: 20 bytes.
    let used = h.simple(VIRTIO_BLK_T_GET_ID, 0, 20, true);
    assert_eq!(used.1, 21);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(&h.data(20)[..], &h.dev.disk().id()[..]);
    assert!(h.data(7).starts_with(b"kvmbox-"));

    // The header and status may share descriptors with the data (framing-agnostic).
    h.header(VIRTIO_BLK_T_IN, 0);
    let used = h.submit(&[rd(HDR, 16), wr(DATA, 513)]);
    assert_eq!(used.1, 513);
    assert_eq!(h.data(512), (0..512).map(pattern).collect::<Vec<u8>>());
    let st: u8 = mem.read_obj(GuestAddress(DATA + 512)).unwrap();
    assert_eq!(st, VIRTIO_BLK_S_OK as u8);
}

#[test]
fn read_only_disk_refuses_writes() {
    let mem = memory();
    let img = image();
    let before = file_bytes(&img);
    let mut h = Harness::new(&mem, &img, true);
    mem.write_slice(&[0xcd; 512], GuestAddress(DATA)).unwrap();
    let used = h.simple(VIRTIO_BLK_T_OUT, 0, 512, false);
    assert_eq!(used.1, 1);
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(file_bytes(&img), before);
    // Reads and flushes still work.
    h.simple(VIRTIO_BLK_T_IN, 1, 512, true);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK as u8);
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    h.submit(&[rd(HDR, 16), wr(STATUS, 1)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn sector_ranges_are_checked_against_the_capacity() {
    let mem = memory();
    let img = image();
    let before = file_bytes(&img);
    let mut h = Harness::new(&mem, &img, false);
    // Last sector: fine.
    h.simple(VIRTIO_BLK_T_IN, SECTORS - 1, 512, true);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK as u8);
    // One past the end, or straddling it.
    for (sector, len) in [(SECTORS, 512), (SECTORS - 1, 1024), (SECTORS + 100, 512)] {
        mem.write_slice(&[0x11; 1024], GuestAddress(DATA)).unwrap();
        let used = h.simple(VIRTIO_BLK_T_IN, sector, len, true);
        assert_eq!(used.1, 1, "sector {sector}");
        assert_eq!(h.status(), VIRTIO_BLK_S_IOERR as u8);
        assert!(h.data(1024).iter().all(|&b| b == 0x11), "data written");
        h.simple(VIRTIO_BLK_T_OUT, sector, len, false);
        assert_eq!(h.status(), VIRTIO_BLK_S_IOERR as u8);
    }
    // sector * 512 and sector + sectors overflow u64.
    for sector in [u64::MAX, u64::MAX / 512 + 1, u64::MAX - 1] {
        h.simple(VIRTIO_BLK_T_IN, sector, 512, true);
        assert_eq!(h.status(), VIRTIO_BLK_S_IOERR as u8, "sector {sector:#x}");
        h.simple(VIRTIO_BLK_T_OUT, sector, 512, false);
        assert_eq!(h.status(), VIRTIO_BLK_S_IOERR as u8, "sector {sector:#x}");
    }
    assert_eq!(file_bytes(&img), before);
}

#[test]
fn data_must_be_whole_sectors() {
    let mem = memory();
    let img = image();
    let before = file_bytes(&img);
    let mut h = Harness::new(&mem, &img, false);
    h.simple(VIRTIO_BLK_T_OUT, 0, 100, false);
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR as u8);
    h.simple(VIRTIO_BLK_T_IN, 0, 513, true);
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(file_bytes(&img), before);
}

#[test]
fn unknown_request_types_are_unsupported() {
    let mem = memory();
    let img = image();
    let mut h = Harness::new(&mem, &img, false);
    for t in [
        VIRTIO_BLK_T_SCSI_CMD,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
        0xdead_beef,
    ] {
        let used = h.simple(t, 0, 512, false);
        assert_eq!(used.1, 1);
        assert_eq!(h.status(), VIRTIO_BLK_S_UNSUPP as u8, "type {t:#x}");
    }
}

#[test]
fn short_header_is_an_io_error() {
    let mem = memory();
    let img = image();
    let mut h = Harness::new(&mem, &img, false);
    h.header(VIRTIO_BLK_T_IN, 0);
    h.submit(&[rd(HDR, 8), wr(DATA, 512), wr(STATUS, 1)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn descriptor_outside_memory_fails_only_that_request() {
    let mem = memory();
    let img = image();
    let mut h = Harness::new(&mem, &img, false);
    for addr in [MEM_SIZE, MEM_SIZE - 256, u64::MAX - 511, 0x1_0000_0000] {
        h.header(VIRTIO_BLK_T_IN, 0);
        let used = h.submit(&[rd(HDR, 16), wr(addr, 512), wr(STATUS, 1)]);
        assert_eq!(used.1, 0);
        assert_eq!(h.status(), UNTOUCHED);
    }
    // The header itself outside memory.
    let used = h.submit(&[rd(u64::MAX - 4, 16), wr(STATUS, 1)]);
    assert_eq!(used.1, 0);
    // The device still serves well-formed requests.
    assert!(!h.dev.needs_reset());
    h.simple(VIRTIO_BLK_T_IN, 0, 512, true);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn overflowing_chain_length_fails_the_request() {
    let mem = memory();
    let img = image();
    let mut h = Harness::new(&mem, &img, false);
    h.header(VIRTIO_BLK_T_OUT, 0);
    // 16 + (u32::MAX - 8) overflows the chain's u32 byte count.
    let used = h.submit(&[rd(HDR, 16), rd(DATA, u32::MAX - 8), wr(STATUS, 1)]);
    assert_eq!(used.1, 0);
    assert_eq!(h.status(), UNTOUCHED);
    assert!(!h.dev.needs_reset());
}

#[test]
fn looped_chain_fails_the_request() {
    let mem = memory();
    let img = image();
    let mut h = Harness::new(&mem, &img, false);
    h.header(VIRTIO_BLK_T_IN, 0);
    let next = VRING_DESC_F_NEXT;
    let write = VRING_DESC_F_WRITE;
    h.vq.add_desc_chains(
        &[
            raw(HDR, 16, next, 1),
            raw(DATA, 512, next | write, 2),
            raw(STATUS, 1, next | write, 1),
        ],
        0,
    )
    .unwrap();
    let used = h.kick();
    assert_eq!(used, (0, 0));
    assert_eq!(h.status(), UNTOUCHED);
    // A `next` beyond the queue.
    h.vq.add_desc_chains(&[raw(HDR, 16, next, 999)], 3).unwrap();
    let used = h.kick();
    assert_eq!(used, (3, 0));
    assert!(!h.dev.needs_reset());
}

#[test]
fn wrong_descriptor_direction_fails_the_request() {
    let mem = memory();
    let img = image();
    let before = file_bytes(&img);
    let mut h = Harness::new(&mem, &img, false);
    // A readable status descriptor: no place for a status, nothing written.
    h.header(VIRTIO_BLK_T_IN, 0);
    let used = h.submit(&[rd(HDR, 16), wr(DATA, 512), rd(STATUS, 1)]);
    assert_eq!(used.1, 0);
    assert_eq!(h.status(), UNTOUCHED);
    // A device-writable header: no header to read.
    h.header(VIRTIO_BLK_T_OUT, 0);
    h.submit(&[wr(HDR, 16), wr(DATA, 512), wr(STATUS, 1)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR as u8);
    // Data of an IN request in a readable descriptor.
    mem.write_slice(&[0x22; 512], GuestAddress(DATA)).unwrap();
    h.header(VIRTIO_BLK_T_IN, 0);
    let used = h.submit(&[rd(HDR, 16), rd(DATA, 512), wr(STATUS, 1)]);
    assert_eq!(used.1, 1);
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR as u8);
    assert!(h.data(512).iter().all(|&b| b == 0x22));
    // Data of an OUT request in a writable descriptor.
    h.header(VIRTIO_BLK_T_OUT, 0);
    h.submit(&[rd(HDR, 16), wr(DATA, 512), wr(STATUS, 1)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_IOERR as u8);
    assert!(h.data(512).iter().all(|&b| b == 0x22));
    // Readable after writable.
    let used = h.submit(&[rd(HDR, 16), wr(DATA, 512), rd(STATUS, 1), wr(STATUS, 1)]);
    assert_eq!(used.1, 0);
    assert_eq!(file_bytes(&img), before);
}

#[test]
fn corrupt_avail_index_marks_the_device_broken_until_reset() {
    let mem = memory();
    let img = image();
    let mut h = Harness::new(&mem, &img, false);
    h.vq.avail().idx().store(1000);
    h.dev.process_queue(0);
    assert!(h.dev.needs_reset());
    assert_eq!(used_idx(&h.vq), 0);
    // Further notifications are ignored.
    h.dev.process_queue(0);
    assert_eq!(used_idx(&h.vq), 0);
    h.dev.reset();
    assert!(!h.dev.needs_reset());
    // Notifications after a reset without re-activation do nothing.
    h.dev.process_queue(0);
    assert_eq!(used_idx(&h.vq), 0);
}

#[test]
fn queue_size_must_be_a_power_of_two() {
    assert!(Queue::new(3).is_err());
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_size(100);
    assert_eq!(q.size(), QUEUE_SIZE);
    q.set_size(64);
    assert_eq!(q.size(), 64);
}

// ---- through the virtio-mmio transport ----

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Negotiate features and set up queue 0 with `size` at the mock queue's addresses.
fn init_transport(t: &mut MmioTransport, vq: &MockSplitQueue<GuestMemoryMmap>, size: u32) {
    w(t, regs::STATUS, status::ACKNOWLEDGE);
    w(t, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(t, regs::DRIVER_FEATURES_SEL, 1);
    w(t, regs::DRIVER_FEATURES, 1);
    w(
        t,
        regs::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    w(t, regs::QUEUE_SEL, 0);
    w(t, regs::QUEUE_NUM, size);
    w(t, regs::QUEUE_DESC_LOW, vq.desc_table_addr().0 as u32);
    w(t, regs::QUEUE_AVAIL_LOW, vq.avail_addr().0 as u32);
    w(t, regs::QUEUE_USED_LOW, vq.used_addr().0 as u32);
    w(t, regs::QUEUE_READY, 1);
}

const DRIVER_OK: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn notifications_before_driver_ok_are_ignored() {
    let mem = memory();
    let img = image();
    let vq = MockSplitQueue::new(&mem, 16);
    let dev = Block::open(img.path(), false).unwrap();
    let mut t = MmioTransport::new(
        Box::new(dev),
        mem.clone(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    )
    .unwrap();
    init_transport(&mut t, &vq, 16);
    mem.write_obj(VIRTIO_BLK_T_IN.to_le(), GuestAddress(HDR))
        .unwrap();
    mem.write_obj(0u64, GuestAddress(HDR + 8)).unwrap();
    add_chain(&vq, &[rd(HDR, 16), wr(DATA, 512), wr(STATUS, 1)], 0);
    w(&mut t, regs::QUEUE_NOTIFY, 0);
    t.queue_notified(0);
    assert_eq!(used_idx(&vq), 0);
    w(&mut t, regs::STATUS, DRIVER_OK);
    assert!(t.is_activated());
    w(&mut t, regs::QUEUE_NOTIFY, 0);
    assert_eq!(used_idx(&vq), 1);
    let st: u8 = mem.read_obj(GuestAddress(STATUS)).unwrap();
    assert_eq!(st, VIRTIO_BLK_S_OK as u8);
    // Notifying a queue the device does not have is ignored.
    w(&mut t, regs::QUEUE_NOTIFY, 7);
    assert_eq!(used_idx(&vq), 1);
}

#[test]
fn non_power_of_two_queue_size_is_ignored_by_the_transport() {
    let mem = memory();
    let img = image();
    // Lay the rings out for the maximum size, which the transport keeps.
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let dev = Block::open(img.path(), false).unwrap();
    let mut t = MmioTransport::new(
        Box::new(dev),
        mem.clone(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    )
    .unwrap();
    init_transport(&mut t, &vq, 3);
    w(&mut t, regs::STATUS, DRIVER_OK);
    assert!(t.is_activated());
    mem.write_obj(VIRTIO_BLK_T_IN.to_le(), GuestAddress(HDR))
        .unwrap();
    mem.write_obj(0u64, GuestAddress(HDR + 8)).unwrap();
    add_chain(&vq, &[rd(HDR, 16), wr(DATA, 512), wr(STATUS, 1)], 0);
    w(&mut t, regs::QUEUE_NOTIFY, 0);
    assert_eq!(used_idx(&vq), 1);
}

#[test]
fn broken_device_sets_needs_reset_in_the_transport() {
    let mem = memory();
    let img = image();
    let vq = MockSplitQueue::new(&mem, 16);
    let dev = Block::open(img.path(), false).unwrap();
    let mut t = MmioTransport::new(
        Box::new(dev),
        mem.clone(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    )
    .unwrap();
    init_transport(&mut t, &vq, 16);
    w(&mut t, regs::STATUS, DRIVER_OK);
    vq.avail().idx().store(500);
    w(&mut t, regs::QUEUE_NOTIFY, 0);
    let s = r(&mut t, regs::STATUS);
    assert_ne!(s & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(r(&mut t, regs::INTERRUPT_STATUS) & 2, 0);
    // Reset and re-initialise: the device serves again.
    w(&mut t, regs::STATUS, 0);
    assert_eq!(r(&mut t, regs::STATUS), 0);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
    init_transport(&mut t, &vq, 16);
    w(&mut t, regs::STATUS, DRIVER_OK);
    assert_eq!(r(&mut t, regs::STATUS), DRIVER_OK);
    mem.write_obj(VIRTIO_BLK_T_IN.to_le(), GuestAddress(HDR))
        .unwrap();
    mem.write_obj(0u64, GuestAddress(HDR + 8)).unwrap();
    add_chain(&vq, &[rd(HDR, 16), wr(DATA, 512), wr(STATUS, 1)], 0);
    w(&mut t, regs::QUEUE_NOTIFY, 0);
    assert_eq!(used_idx(&vq), 1);
}
