//! virtio-console on a mock guest memory and queues.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::vmm::devices::virtio::desc_chain::test_util::*;

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

const RXQ_BASE: u64 = 0x0;
const TXQ_BASE: u64 = 0x2000;

struct Harness<'m> {
    mem: &'m GuestMemoryMmap,
    rxq: MockSplitQueue<'m, GuestMemoryMmap>,
    txq: MockSplitQueue<'m, GuestMemoryMmap>,
    dev: Console,
    sink: Sink,
    irq: Arc<VirtioInterrupt>,
}

impl<'m> Harness<'m> {
    fn new(mem: &'m GuestMemoryMmap, input: Option<OwnedFd>) -> Self {
        let rxq = MockSplitQueue::create(mem, GuestAddress(RXQ_BASE), QUEUE_SIZE);
        let txq = MockSplitQueue::create(mem, GuestAddress(TXQ_BASE), QUEUE_SIZE);
        let sink = Sink::default();
        let mut dev = Console::new(Box::new(sink.clone()), input).unwrap();
        let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        dev.activate(ActivateContext {
            memory: mem.clone(),
            queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            interrupt: irq.clone(),
            acked_features: 0,
        })
        .unwrap();
        Harness {
            mem,
            rxq,
            txq,
            dev,
            sink,
            irq,
        }
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

#[test]
fn identity() {
    let dev = Console::new(Box::new(std::io::sink()), None).unwrap();
    assert_eq!(dev.device_type(), 3);
    assert_eq!(dev.queue_max_sizes().len(), 2);
    assert_eq!(dev.device_features(), 0);
    assert!(!dev.has_input());
}

#[test]
fn guest_output_reaches_the_sink() {
    let mem = memory();
    let mut h = Harness::new(&mem, None);
    mem.write_slice(b"hello, ", GuestAddress(0x8000)).unwrap();
    mem.write_slice(b"world\n", GuestAddress(0x9000)).unwrap();
    add_chain(&h.txq, &[rd(0x8000, 7), rd(0x9000, 6)], 0);
    add_chain(&h.txq, &[rd(0x9000, 6)], 2);
    h.dev.process_queue(TX_QUEUE);
    assert_eq!(h.sink.take(), b"hello, world\nworld\n");
    assert_eq!(used_idx(&h.txq), 2);
    assert_eq!(used_elem(&h.txq, 0), (0, 0));
    assert!(h.irq.irqfd().read().unwrap() >= 1);
}

#[test]
fn output_per_chain_is_bounded() {
    let mem = memory();
    let mut h = Harness::new(&mem, None);
    add_chain(&h.txq, &[rd(0x10000, MAX_TX_BYTES_PER_CHAIN * 2)], 0);
    h.dev.process_queue(TX_QUEUE);
    assert_eq!(h.sink.take().len(), MAX_TX_BYTES_PER_CHAIN as usize);
}

#[test]
fn host_input_reaches_the_guest() {
    let mem = memory();
    let mut h = Harness::new(&mem, None);
    // Input before the guest offers buffers is kept...
    h.dev.push_input(b"abcdef");
    assert_eq!(used_idx(&h.rxq), 0);
    // ...and delivered when it does, split over two chains of 4 bytes.
    add_chain(&h.rxq, &[wr(0x8000, 4)], 0);
    add_chain(&h.rxq, &[wr(0x9000, 4)], 1);
    add_chain(&h.rxq, &[wr(0xa000, 4)], 2);
    h.dev.process_queue(RX_QUEUE);
    assert_eq!(used_idx(&h.rxq), 2);
    assert_eq!(used_elem(&h.rxq, 0), (0, 4));
    assert_eq!(used_elem(&h.rxq, 1), (1, 2));
    assert_eq!(h.bytes(0x8000, 4), b"abcd");
    assert_eq!(h.bytes(0x9000, 2), b"ef");
    // The third buffer waits for more input.
    h.dev.push_input(b"xy");
    assert_eq!(used_idx(&h.rxq), 3);
    assert_eq!(h.bytes(0xa000, 2), b"xy");
}

#[test]
fn input_thread_reads_a_pipe() {
    let mem = memory();
    let (r, w) = nix::unistd::pipe().unwrap();
    let h = Harness::new(&mem, Some(r));
    assert!(h.dev.has_input());
    add_chain(&h.rxq, &[wr(0x8000, 64)], 0);
    let mut w = std::fs::File::from(w);
    w.write_all(b"typed\n").unwrap();
    drop(w);
    let deadline = Instant::now() + Duration::from_secs(10);
    while used_idx(&h.rxq) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(used_elem(&h.rxq, 0), (0, 6));
    assert_eq!(h.bytes(0x8000, 6), b"typed\n");
    // Dropping the console stops and joins the thread (EOF already seen).
    drop(h);
}

#[test]
fn pending_input_is_bounded() {
    let mem = memory();
    let h = Harness::new(&mem, None);
    let big = vec![b'z'; MAX_PENDING_INPUT + 1000];
    h.dev.push_input(&big);
    assert_eq!(lock(&h.dev.rx).pending.len(), MAX_PENDING_INPUT);
    assert_eq!(lock(&h.dev.rx).room(), 0);
}

#[test]
fn hostile_chains_fail_only_their_request() {
    let mem = memory();
    let mut h = Harness::new(&mem, None);
    let next = VRING_DESC_F_NEXT;
    let write = VRING_DESC_F_WRITE;
    // transmitq: a writable buffer (wrong direction), outside memory, a loop, then a good one.
    mem.write_slice(b"secret", GuestAddress(0x8000)).unwrap();
    mem.write_slice(b"ok", GuestAddress(0x9000)).unwrap();
    add_chain(&h.txq, &[rd(0x8000, 6), wr(0x8000, 6)], 0);
    add_chain(&h.txq, &[rd(MEM_SIZE - 2, 6)], 2);
    h.txq
        .add_desc_chains(&[raw(0x8000, 6, next, 4), raw(0x8000, 6, next, 3)], 3)
        .unwrap();
    h.txq
        .add_desc_chains(&[raw(0x8000, u32::MAX, next, 6), raw(0x8000, 6, 0, 0)], 5)
        .unwrap();
    add_chain(&h.txq, &[rd(0x9000, 2)], 7);
    h.dev.process_queue(TX_QUEUE);
    assert_eq!(used_idx(&h.txq), 5);
    assert_eq!(h.sink.take(), b"ok");
    // receiveq: a readable buffer, outside memory, a loop, then a good one.
    h.dev.push_input(b"in");
    add_chain(&h.rxq, &[rd(0xa000, 8)], 0);
    add_chain(&h.rxq, &[wr(u64::MAX - 1, 8)], 1);
    h.rxq
        .add_desc_chains(
            &[
                raw(0xa000, 8, next | write, 3),
                raw(0xa000, 8, next | write, 2),
            ],
            2,
        )
        .unwrap();
    add_chain(&h.rxq, &[wr(0xb000, 8)], 4);
    h.dev.process_queue(RX_QUEUE);
    assert_eq!(used_idx(&h.rxq), 4);
    for i in 0..3 {
        assert_eq!(used_elem(&h.rxq, i).1, 0);
    }
    assert_eq!(used_elem(&h.rxq, 3), (4, 2));
    assert_eq!(h.bytes(0xb000, 2), b"in");
    assert_eq!(h.bytes(0xa000, 2), [0, 0]);
    assert!(!h.dev.needs_reset());
}

#[test]
fn corrupt_rings_mark_the_device_broken_until_reset() {
    let mem = memory();
    let mut h = Harness::new(&mem, None);
    h.txq.avail().idx().store(QUEUE_SIZE + 5);
    h.dev.process_queue(TX_QUEUE);
    assert!(h.dev.needs_reset());
    h.dev.reset();
    assert!(!h.dev.needs_reset());

    let mut h = Harness::new(&mem, None);
    h.rxq.avail().idx().store(QUEUE_SIZE + 5);
    h.dev.push_input(b"x");
    assert!(h.dev.needs_reset());
    // Notifications on a broken or unknown queue do nothing.
    h.dev.process_queue(RX_QUEUE);
    h.dev.process_queue(9);
    h.dev.reset();
    assert!(!h.dev.needs_reset());
}
