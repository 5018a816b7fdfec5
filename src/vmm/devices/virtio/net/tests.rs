//! virtio-net on a mock guest memory and queues, with a datagram socket pair standing in for
//! the tap: normal traffic both ways and hostile chains.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::vmm::devices::virtio::desc_chain::test_util::*;

/// Queue size used by the mock driver (the device accepts any power of two up to 256).
const QSIZE: u16 = 8;
const MAC: [u8; 6] = [0x02, 0x6b, 0x76, 0x00, 0x00, 0x01];
const NEXT: u32 = VRING_DESC_F_NEXT;
const WRITE: u32 = VRING_DESC_F_WRITE;

struct Harness<'m> {
    mem: &'m GuestMemoryMmap,
    rxq: MockSplitQueue<'m, GuestMemoryMmap>,
    txq: MockSplitQueue<'m, GuestMemoryMmap>,
    dev: Net,
    irq: Arc<VirtioInterrupt>,
    /// The host end of the "tap".
    host: OwnedFd,
}

fn pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .unwrap()
}

impl<'m> Harness<'m> {
    /// A device over a socket pair, not yet activated.
    fn new(mem: &'m GuestMemoryMmap) -> Self {
        let (dev_end, host) = pair();
        Self::with_backend(mem, dev_end, host)
    }

    fn with_backend(mem: &'m GuestMemoryMmap, backend: OwnedFd, host: OwnedFd) -> Self {
        Harness {
            mem,
            rxq: MockSplitQueue::create(mem, GuestAddress(0), QSIZE),
            txq: MockSplitQueue::create(mem, GuestAddress(0x1000), QSIZE),
            dev: Net::new(backend, MAC).unwrap(),
            irq: Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            host,
        }
    }

    fn activate(&mut self) {
        self.dev
            .activate(ActivateContext {
                memory: self.mem.clone(),
                queues: vec![
                    self.rxq.create_queue().unwrap(),
                    self.txq.create_queue().unwrap(),
                ],
                interrupt: self.irq.clone(),
                acked_features: 1 << VIRTIO_NET_F_MAC,
            })
            .unwrap();
    }

    fn host_send(&self, frame: &[u8]) {
        nix::unistd::write(&self.host, frame).unwrap();
    }

    /// The next frame the device wrote to the "tap", if any.
    fn host_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_FRAME_LEN + 16];
        match nix::unistd::read(&self.host, &mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(nix::Error::EAGAIN) => None,
            Err(e) => panic!("host read: {e}"),
        }
    }

    /// The backend fd is readable as the event loop sees it (the device's epoll fd).
    fn backend_ready(&self) -> bool {
        let fd = self.dev.backend_fd().unwrap();
        let mut pfd = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(pfd.as_mut_ptr(), 1, 0) == 1 }
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// A frame of `len` bytes: broadcast destination, the test MAC as source, then a pattern.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC);
    f.extend((12..len).map(|i| (i as u8).wrapping_mul(3).wrapping_add(seed)));
    f
}

/// Put a 12-byte header and `payload` in guest memory at `addr`.
fn put_tx(mem: &GuestMemoryMmap, addr: u64, payload: &[u8]) {
    mem.write_slice(&[0x55; NET_HDR_LEN], GuestAddress(addr))
        .unwrap();
    mem.write_slice(payload, GuestAddress(addr + NET_HDR_LEN as u64))
        .unwrap();
}

#[test]
fn identity_and_config_space() {
    let mem = memory();
    let h = Harness::new(&mem);
    assert_eq!(h.dev.device_type(), 1);
    assert_eq!(h.dev.queue_max_sizes(), &[256, 256]);
    assert_eq!(h.dev.device_features(), 1 << 5);
    let mut c = [0xaau8; 10];
    h.dev.read_config(0, &mut c);
    assert_eq!(&c[..6], &MAC);
    assert_eq!(&c[6..], &[0; 4]);
    let mut c = [0xaau8; 4];
    h.dev.read_config(4, &mut c);
    assert_eq!(c, [0x00, 0x01, 0, 0]);
    h.dev.read_config(u64::MAX, &mut c);
    assert_eq!(c, [0; 4]);
}

#[test]
fn transmit_strips_the_header_and_writes_one_frame() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.activate();
    let f = frame(100, 1);
    put_tx(&mem, 0x10000, &f);
    // Header and the first 8 frame bytes in one buffer, the rest in another.
    add_chain(&h.txq, &[rd(0x10000, 20), rd(0x10000 + 20, 92)], 0);
    h.dev.process_queue(TX_QUEUE);
    assert_eq!(h.host_recv().as_deref(), Some(&f[..]));
    assert_eq!(h.host_recv(), None);
    assert_eq!(used_idx(&h.txq), 1);
    assert_eq!(used_elem(&h.txq, 0), (0, 0));
    assert_eq!(h.dev.stats().tx_frames, 1);
    assert!(h.irq.irqfd().read().unwrap() >= 1);
}

#[test]
fn receive_writes_header_and_frame_and_watches_only_with_buffers() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    // Before DRIVER_OK the backend is not watched: frames wait in the "tap".
    h.host_send(&frame(60, 2));
    assert!(!h.dev.is_watching_backend());
    assert!(!h.backend_ready());
    h.dev.process_backend();
    h.dev.process_queue(RX_QUEUE);
    h.activate();
    // Activated without receive buffers: the frame is read and parked, the fd unwatched.
    assert!(!h.dev.is_watching_backend());
    h.host_send(&frame(70, 3));
    assert!(
        !h.backend_ready(),
        "no buffers: the event loop must not spin"
    );

    add_chain(&h.rxq, &[wr(0x20000, 1526)], 0);
    add_chain(&h.rxq, &[wr(0x30000, 6), wr(0x31000, 1520)], 1);
    h.dev.process_queue(RX_QUEUE);
    assert_eq!(used_idx(&h.rxq), 2);
    assert_eq!(used_elem(&h.rxq, 0), (0, 72));
    assert_eq!(used_elem(&h.rxq, 1), (1, 82));
    let mut hdr = [0u8; 12];
    hdr[10] = 1; // num_buffers
    assert_eq!(h.read(0x20000, 12), hdr);
    assert_eq!(h.read(0x20000 + 12, 60), frame(60, 2));
    let mut second = h.read(0x30000, 6);
    second.extend(h.read(0x31000, 76));
    assert_eq!(&second[..12], &hdr);
    assert_eq!(&second[12..], &frame(70, 3)[..]);
    // Drained with buffers left (none here): watching again for the next frame.
    assert_eq!(h.dev.stats().rx_frames, 2);

    add_chain(&h.rxq, &[wr(0x40000, 1526)], 2);
    h.dev.process_queue(RX_QUEUE);
    assert!(h.dev.is_watching_backend());
    assert!(!h.backend_ready());
    h.host_send(&frame(64, 4));
    assert!(h.backend_ready());
    h.dev.process_backend();
    assert_eq!(used_elem(&h.rxq, 2), (2, 76));
    assert_eq!(h.read(0x40000 + 12, 64), frame(64, 4));
}

#[test]
fn frames_larger_than_the_buffer_are_dropped_not_truncated() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.activate();
    h.host_send(&frame(1514, 5));
    h.host_send(&frame(100, 6));
    add_chain(&h.rxq, &[wr(0x20000, 1000)], 0);
    add_chain(&h.rxq, &[wr(0x30000, 1000)], 1);
    h.dev.process_queue(RX_QUEUE);
    assert_eq!(used_elem(&h.rxq, 0), (0, 0));
    assert_eq!(h.read(0x20000, 16), vec![0; 16], "nothing of the big frame");
    assert_eq!(used_elem(&h.rxq, 1), (1, 112));
    assert_eq!(h.read(0x30000 + 12, 100), frame(100, 6));
    assert_eq!(h.dev.stats().rx_dropped, 1);
}

#[test]
fn runt_and_oversized_backend_frames_are_dropped() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.activate();
    add_chain(&h.rxq, &[wr(0x20000, 0x1_0000 + 64)], 0);
    h.host_send(&[1, 2, 3]);
    h.host_send(&vec![9u8; MAX_FRAME_LEN + 1]);
    h.host_send(&frame(14, 7));
    h.dev.process_backend();
    assert_eq!(h.dev.stats().rx_dropped, 2);
    assert_eq!(used_idx(&h.rxq), 1);
    assert_eq!(used_elem(&h.rxq, 0), (0, 26));
    assert_eq!(h.read(0x20000 + 12, 14), frame(14, 7));
}

#[test]
fn hostile_transmit_chains_fail_only_themselves() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.activate();
    let good = frame(64, 8);
    put_tx(&mem, 0x10000, &good);
    // 0: a device-writable buffer (wrong direction).
    add_chain(&h.txq, &[rd(0x10000, 12), wr(0x10000 + 12, 64)], 0);
    // 2: outside guest memory / at the top of the address space.
    add_chain(&h.txq, &[rd(MEM_SIZE - 8, 76)], 2);
    add_chain(&h.txq, &[rd(u64::MAX - 8, 76)], 3);
    // 4: shorter than header + Ethernet header.
    add_chain(&h.txq, &[rd(0x10000, 25)], 4);
    // 5, 6: lengths overflowing u32 (the iterator stops: malformed).
    h.txq
        .add_desc_chains(
            &[raw(0x10000, u32::MAX, NEXT, 6), raw(0x10000, 76, 0, 0)],
            5,
        )
        .unwrap();
    h.dev.process_queue(TX_QUEUE);
    assert_eq!(used_idx(&h.txq), 5);
    assert_eq!(h.host_recv(), None, "no hostile chain reached the tap");
    assert_eq!(h.dev.stats().tx_bad_chains, 5);

    // A loop, a next index beyond the queue, a chain longer than a frame, then a good one.
    let h2_mem = memory();
    let mut h2 = Harness::new(&h2_mem);
    h2.activate();
    put_tx(&h2_mem, 0x10000, &good);
    h2.txq
        .add_desc_chains(&[raw(0x10000, 40, NEXT, 1), raw(0x10000, 40, NEXT, 0)], 0)
        .unwrap();
    h2.txq
        .add_desc_chains(&[raw(0x10000, 40, NEXT, 200)], 2)
        .unwrap();
    add_chain(
        &h2.txq,
        &[rd(0x20000, (NET_HDR_LEN + MAX_FRAME_LEN + 1) as u32)],
        3,
    );
    add_chain(&h2.txq, &[rd(0x10000, 76)], 4);
    h2.dev.process_queue(TX_QUEUE);
    assert_eq!(used_idx(&h2.txq), 4);
    for i in 0..4 {
        assert_eq!(used_elem(&h2.txq, i).1, 0);
    }
    assert_eq!(h2.host_recv().as_deref(), Some(&good[..]));
    assert_eq!(h2.host_recv(), None);
    assert_eq!(h2.dev.stats().tx_bad_chains, 3);
    assert!(!h2.dev.needs_reset());
}

#[test]
fn hostile_receive_chains_fail_and_the_frame_waits_for_a_good_one() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.activate();
    let f = frame(80, 9);
    h.host_send(&f);
    // Readable buffer, outside memory, straddling the end, a loop, next beyond the queue.
    add_chain(&h.rxq, &[rd(0x20000, 1526)], 0);
    add_chain(&h.rxq, &[wr(MEM_SIZE + 0x1000, 1526)], 1);
    add_chain(&h.rxq, &[wr(MEM_SIZE - 100, 1526)], 2);
    h.rxq
        .add_desc_chains(&[raw(0x20000, 8, WRITE | NEXT, 3)], 3)
        .unwrap();
    h.rxq
        .add_desc_chains(&[raw(0x20000, 8, WRITE | NEXT, 99)], 4)
        .unwrap();
    add_chain(&h.rxq, &[wr(0x30000, 1526)], 5);
    h.dev.process_backend();
    assert_eq!(used_idx(&h.rxq), 6);
    for i in 0..5 {
        assert_eq!(used_elem(&h.rxq, i).1, 0, "chain {i}");
    }
    assert_eq!(h.read(0x20000, 16), vec![0; 16]);
    assert_eq!(used_elem(&h.rxq, 5), (5, 92));
    assert_eq!(h.read(0x30000 + 12, 80), f);
    assert_eq!(h.dev.stats().rx_bad_chains, 5);
    assert_eq!(h.dev.stats().rx_frames, 1);
    assert!(!h.dev.needs_reset());
}

#[test]
fn corrupt_rings_mark_the_device_broken_until_reset() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.activate();
    h.txq.avail().idx().store(QSIZE + 1);
    h.dev.process_queue(TX_QUEUE);
    assert!(h.dev.needs_reset());
    // Broken: nothing is served, the backend is not watched.
    put_tx(&mem, 0x10000, &frame(64, 1));
    h.dev.process_queue(TX_QUEUE);
    assert!(!h.dev.is_watching_backend());
    h.dev.reset();
    assert!(!h.dev.needs_reset());

    // A head index beyond the queue on the receive side.
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.activate();
    h.rxq.avail().ring().ref_at(0).unwrap().store(40);
    h.rxq.avail().idx().store(1);
    h.host_send(&frame(64, 1));
    h.dev.process_backend();
    h.dev.process_queue(RX_QUEUE);
    assert!(h.dev.needs_reset());
    assert!(!h.backend_ready());
}

#[test]
fn notifications_before_activation_and_after_reset_are_ignored() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    put_tx(&mem, 0x10000, &frame(64, 1));
    add_chain(&h.txq, &[rd(0x10000, 76)], 0);
    h.dev.process_queue(TX_QUEUE);
    h.dev.process_queue(RX_QUEUE);
    h.dev.process_queue(7);
    h.dev.process_backend();
    assert_eq!(h.host_recv(), None);
    assert_eq!(used_idx(&h.txq), 0);
    h.activate();
    assert_eq!(
        h.host_recv().map(|f| f.len()),
        Some(64),
        "served at DRIVER_OK"
    );
    h.dev.reset();
    assert!(!h.dev.is_watching_backend());
    add_chain(&h.txq, &[rd(0x10000, 76)], 1);
    h.dev.process_queue(TX_QUEUE);
    assert_eq!(h.host_recv(), None);
}

#[test]
fn a_failing_backend_drops_frames_and_stops_receiving() {
    let mem = memory();
    // The write end of a pipe: reads fail with EBADF, writes go to the pipe.
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
    let mut h = Harness::with_backend(&mem, w, r);
    h.activate();
    add_chain(&h.rxq, &[wr(0x20000, 1526)], 0);
    h.dev.process_queue(RX_QUEUE);
    assert!(
        !h.dev.is_watching_backend(),
        "a failed backend is not watched"
    );
    assert!(!h.backend_ready());
    assert_eq!(used_idx(&h.rxq), 0);

    // The read end of a pipe: writes fail, the frame is dropped and the chain returned.
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
    let mut h = Harness::with_backend(&mem, r, w);
    h.activate();
    put_tx(&mem, 0x10000, &frame(64, 1));
    add_chain(&h.txq, &[rd(0x10000, 76)], 0);
    h.dev.process_queue(TX_QUEUE);
    assert_eq!(used_idx(&h.txq), 1);
    assert_eq!(h.dev.stats().tx_dropped, 1);
}

#[test]
fn receive_is_bounded_per_pass() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.activate();
    // Runts are dropped without needing buffers: more than a pass's worth of them.
    let n = RX_FRAMES_PER_PASS + 10;
    for _ in 0..n {
        h.host_send(&[0u8; 4]);
    }
    h.dev.process_backend();
    assert_eq!(h.dev.stats().rx_dropped, RX_FRAMES_PER_PASS as u64);
    assert!(h.backend_ready(), "the rest waits for the next event");
    h.dev.process_backend();
    assert_eq!(h.dev.stats().rx_dropped, n as u64);
}
