//! Device-level tests: a mock driver on mock guest memory (virtio-queue `Queue`s over a
//! `GuestMemoryMmap`) talks to the device while real host Unix sockets sit on the backend side.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use virtio_vsock::packet::PKT_HEADER_SIZE;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::connection::CONN_BUF_ALLOC;
use super::device::{Vsock, RX_QUEUE, TX_QUEUE};
use super::packet::*;
use crate::vmm::devices::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};

const GUEST_CID: u64 = 3;
const MEM_SIZE: usize = 0x100_0000;
const QSIZE: u16 = 16;
const RX_DATA: u32 = 4096;

/// Addresses of one split queue in guest memory.
#[derive(Clone, Copy)]
struct Rings {
    desc: u64,
    avail: u64,
    used: u64,
}

/// A mock virtio-vsock driver.
struct Driver {
    mem: GuestMemoryMmap,
    dev: Vsock,
    _dir: tempfile::TempDir,
    uds: PathBuf,
    interrupt: Arc<VirtioInterrupt>,
    rings: [Rings; 3],
    next_desc: [u16; 3],
    avail_idx: [u16; 3],
    used_seen: [u16; 3],
    next_buf: u64,
    rx_bufs: HashMap<u16, (u64, u64)>,
    rx_outstanding: usize,
}

fn hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

impl Driver {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mut dev = Vsock::new(GUEST_CID, &uds).unwrap();
        let mut queues = Vec::new();
        let mut rings = [Rings {
            desc: 0,
            avail: 0,
            used: 0,
        }; 3];
        // The rings are laid out here rather than by virtio-queue's `MockSplitQueue`, whose
        // layout (0.18) puts the used ring inside the avail ring for queues larger than 8
        // (`SplitQueueRing::end` adds the element count, not the byte size).
        for (i, r) in rings.iter_mut().enumerate() {
            let base = i as u64 * 0x1000;
            *r = Rings {
                desc: base,
                avail: base + 0x400,
                used: base + 0x800,
            };
            let mut q = Queue::new(QSIZE).unwrap();
            q.set_size(QSIZE);
            q.try_set_desc_table_address(GuestAddress(r.desc)).unwrap();
            q.try_set_avail_ring_address(GuestAddress(r.avail)).unwrap();
            q.try_set_used_ring_address(GuestAddress(r.used)).unwrap();
            q.set_ready(true);
            assert!(q.is_valid(&mem));
            queues.push(q);
        }
        let interrupt = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        // Notifications before activation are ignored without harm.
        dev.process_queue(TX_QUEUE);
        dev.process_backend();
        dev.activate(ActivateContext {
            memory: mem.clone(),
            queues,
            interrupt: interrupt.clone(),
            acked_features: crate::vmm::devices::virtio::VIRTIO_F_VERSION_1,
        })
        .unwrap();
        Driver {
            mem,
            dev,
            _dir: dir,
            uds,
            interrupt,
            rings,
            next_desc: [0; 3],
            avail_idx: [0; 3],
            used_seen: [0; 3],
            next_buf: 0x10_0000,
            rx_bufs: HashMap::new(),
            rx_outstanding: 0,
        }
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let a = self.next_buf;
        self.next_buf += len.div_ceil(16) * 16;
        if self.next_buf > MEM_SIZE as u64 - 0x10000 {
            self.next_buf = 0x10_0000;
        }
        a
    }

    fn store_desc(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        self.mem
            .write_obj(d, GuestAddress(self.rings[q].desc + 16 * u64::from(index)))
            .unwrap();
    }

    fn publish(&mut self, q: usize, head: u16) {
        let slot = self.avail_idx[q] % QSIZE;
        let r = self.rings[q];
        self.mem
            .write_obj(head, GuestAddress(r.avail + 4 + 2 * u64::from(slot)))
            .unwrap();
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx[q], GuestAddress(r.avail + 2))
            .unwrap();
    }

    /// Put a chain of (addr, len, flags) descriptors on queue `q`; NEXT links are added.
    fn push_chain(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc[q];
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = (head + i as u16) % QSIZE;
            let last = i + 1 == descs.len();
            let (flags, next) = if last {
                (flags & !(VRING_DESC_F_NEXT as u16), 0)
            } else {
                (flags | VRING_DESC_F_NEXT as u16, (index + 1) % QSIZE)
            };
            self.store_desc(q, index, addr, len, flags, next);
        }
        self.next_desc[q] = (head + descs.len() as u16) % QSIZE;
        self.publish(q, head);
        head
    }

    fn used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let r = self.rings[q];
        let idx: u16 = self.mem.read_obj(GuestAddress(r.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen[q] != idx {
            let slot = u64::from(self.used_seen[q] % QSIZE);
            let id: u32 = self
                .mem
                .read_obj(GuestAddress(r.used + 4 + 8 * slot))
                .unwrap();
            let len: u32 = self
                .mem
                .read_obj(GuestAddress(r.used + 8 + 8 * slot))
                .unwrap();
            out.push((id, len));
            self.used_seen[q] = self.used_seen[q].wrapping_add(1);
        }
        out
    }

    /// The guest sends a packet (header and payload in separate descriptors).
    fn send(&mut self, h: Header, data: &[u8]) -> Vec<(u32, u32)> {
        let mut h = h;
        h.len = data.len() as u32;
        let ha = self.alloc(PKT_HEADER_SIZE as u64);
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(ha))
            .unwrap();
        let mut descs = vec![(ha, PKT_HEADER_SIZE as u32, 0)];
        if !data.is_empty() {
            let da = self.alloc(data.len() as u64);
            self.mem.write_slice(data, GuestAddress(da)).unwrap();
            descs.push((da, data.len() as u32, 0));
        }
        self.push_chain(TX_QUEUE, &descs);
        self.dev.process_queue(TX_QUEUE);
        self.used(TX_QUEUE)
    }

    /// Offer up to `n` rx buffers (header + 4 KiB data, both device-writable), keeping at most
    /// 6 outstanding (2 descriptors each in a queue of 16).
    fn give_rx(&mut self, n: usize) {
        for _ in 0..n {
            if self.rx_outstanding >= 6 {
                break;
            }
            self.rx_outstanding += 1;
            let ha = self.alloc(PKT_HEADER_SIZE as u64);
            let da = self.alloc(u64::from(RX_DATA));
            let w = VRING_DESC_F_WRITE as u16;
            let head = self.push_chain(
                RX_QUEUE,
                &[(ha, PKT_HEADER_SIZE as u32, w), (da, RX_DATA, w)],
            );
            self.rx_bufs.insert(head, (ha, da));
        }
        self.dev.process_queue(RX_QUEUE);
    }

    /// Packets delivered to the guest since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for (id, len) in self.used(RX_QUEUE) {
            self.rx_outstanding -= 1;
            let (ha, da) = self.rx_bufs[&(id as u16)];
            let mut b = [0u8; PKT_HEADER_SIZE];
            self.mem.read_slice(&mut b, GuestAddress(ha)).unwrap();
            let h = Header::from_bytes(&b);
            assert_eq!(
                len as usize,
                PKT_HEADER_SIZE + h.len as usize,
                "{:?} {h:?} id {id} outstanding {} used_seen {:?} next_desc {:?}",
                self.dev.stats(),
                self.rx_outstanding,
                self.used_seen,
                self.next_desc
            );
            let mut data = vec![0u8; h.len as usize];
            self.mem.read_slice(&mut data, GuestAddress(da)).unwrap();
            out.push((h, data));
        }
        out
    }

    /// Serve backend events until the guest has received at least `n` packets.
    fn recv_n(&mut self, n: usize) -> Vec<(Header, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        loop {
            got.extend(self.recv());
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "only got {got:?}");
            self.give_rx(1);
            self.dev.process_backend();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn connect_host(&self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        writeln!(s, "CONNECT {port}").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }
}

/// The backend fd the event loop polls is not readable: an idle device cannot make the
/// VMM's event loop spin.
fn assert_idle(d: &Driver) {
    use std::os::fd::BorrowedFd;
    let fd = d.dev.backend_fd().unwrap();
    // SAFETY: the device owns the fd for the duration of this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
    let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap();
    assert_eq!(n, 0, "backend fd readable while idle");
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

fn read_exact_from(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

/// Host → guest: CONNECT, REQUEST/RESPONSE, OK line, returns (host stream, host-side port).
fn host_connects(d: &mut Driver, guest_port: u32, guest_buf: u32) -> (UnixStream, u32) {
    let mut s = d.connect_host(guest_port);
    let got = d.recv_n(1);
    let (req, _) = &got[0];
    assert_eq!(req.op, OP_REQUEST);
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(req.dst_port, guest_port);
    assert_eq!(req.type_, TYPE_STREAM);
    assert_eq!(req.buf_alloc, CONN_BUF_ALLOC);
    let host_port = req.src_port;
    let mut resp = hdr(OP_RESPONSE, guest_port, host_port);
    resp.buf_alloc = guest_buf;
    d.send(resp, &[]);
    assert_eq!(read_line(&mut s), format!("OK {host_port}\n"));
    (s, host_port)
}

#[test]
fn config_space_holds_the_guest_cid() {
    let d = Driver::new();
    let mut b = [0u8; 8];
    d.dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), GUEST_CID);
    let mut b = [0xffu8; 4];
    d.dev.read_config(6, &mut b);
    assert_eq!(b, [0, 0, 0, 0]);
    d.dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 4]);
    assert_eq!(d.dev.device_type(), 19);
    assert_eq!(d.dev.queue_max_sizes().len(), 3);
}

#[test]
fn invalid_cids_and_existing_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        assert!(Vsock::new(cid, &dir.path().join("a")).is_err(), "cid {cid}");
    }
    let p = dir.path().join("b");
    let _first = Vsock::new(3, &p).unwrap();
    assert!(Vsock::new(4, &p).is_err());
}

#[test]
fn host_to_guest_connect_data_and_close() {
    let mut d = Driver::new();
    d.give_rx(4);
    let (mut s, host_port) = host_connects(&mut d, 1234, 64 * 1024);
    assert!(host_port >= 1 << 30);

    // Host → guest data.
    s.write_all(b"ping").unwrap();
    let got = d.recv_n(1);
    assert_eq!(got[0].0.op, OP_RW);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (host_port, 1234));
    assert_eq!(got[0].1, b"ping");

    // Guest → host data.
    d.send(hdr(OP_RW, 1234, host_port), b"pong");
    assert_eq!(read_exact_from(&mut s, 4), b"pong");

    // The host stops sending: the guest hears SHUTDOWN(SEND) and may still reply.
    s.shutdown(Shutdown::Write).unwrap();
    let got = d.recv_n(1);
    assert_eq!(got[0].0.op, OP_SHUTDOWN);
    assert_eq!(got[0].0.flags, SHUTDOWN_F_SEND);
    d.send(hdr(OP_RW, 1234, host_port), b"late");
    assert_eq!(read_exact_from(&mut s, 4), b"late");

    // The guest closes both ways: the device resets the stream and the host sees EOF.
    let mut sh = hdr(OP_SHUTDOWN, 1234, host_port);
    sh.flags = SHUTDOWN_F_RCV | SHUTDOWN_F_SEND;
    d.send(sh, &[]);
    let got = d.recv_n(1);
    assert_eq!(got[0].0.op, OP_RST);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(d.dev.connection_count(), 0);
    d.dev.process_backend();
    assert_idle(&d);
}

#[test]
fn host_connect_refused_by_guest_closes_the_host_socket() {
    let mut d = Driver::new();
    d.give_rx(2);
    let mut s = d.connect_host(99);
    let got = d.recv_n(1);
    assert_eq!(got[0].0.op, OP_REQUEST);
    d.send(hdr(OP_RST, 99, got[0].0.src_port), &[]);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(d.dev.connection_count(), 0);
}

#[test]
fn host_connect_the_guest_never_answers_times_out() {
    let mut d = Driver::new();
    d.dev.set_connect_timeout(Duration::from_millis(200));
    d.give_rx(2);
    let mut s = d.connect_host(77);
    let got = d.recv_n(1);
    assert_eq!(got[0].0.op, OP_REQUEST);
    let host_port = got[0].0.src_port;
    // A second request that the guest does answer in time stays up.
    let (mut live, live_port) = host_connects(&mut d, 78, 64 * 1024);
    // The guest stays silent on the first: the timer makes the backend fd readable.
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = loop {
        d.dev.process_backend();
        let got = d.recv();
        if !got.is_empty() {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "no reset after the connect timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(got[0].0.op, OP_RST);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (host_port, 77));
    assert_eq!(d.dev.backend_stats().connect_timeouts, 1);
    // The host program sees its socket closed without an OK line.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(d.dev.connection_count(), 1);
    // The answered connection still works and the timer no longer fires.
    live.write_all(b"still").unwrap();
    let got = d.recv_n(1);
    assert_eq!((got[0].0.op, got[0].0.src_port), (OP_RW, live_port));
    std::thread::sleep(Duration::from_millis(300));
    d.dev.process_backend();
    assert_eq!(d.dev.backend_stats().connect_timeouts, 1);
    assert_idle(&d);
}

#[test]
fn bad_connect_lines_are_dropped() {
    let mut d = Driver::new();
    d.give_rx(2);
    for line in ["HELLO\n", "CONNECT x\n", "CONNECT 99999999999\n"] {
        let mut s = UnixStream::connect(&d.uds).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(line.as_bytes()).unwrap();
        let before = d.dev.backend_stats().bad_handshakes;
        let deadline = Instant::now() + Duration::from_secs(5);
        while d.dev.backend_stats().bad_handshakes == before {
            assert!(Instant::now() < deadline, "{line:?} not rejected");
            d.dev.process_backend();
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{line:?}");
    }
    // An over-long line without newline is dropped too.
    let mut s = UnixStream::connect(&d.uds).unwrap();
    s.write_all(&[b'A'; 100]).unwrap();
    for _ in 0..50 {
        d.dev.process_backend();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(d.dev.backend_stats().bad_handshakes >= 4);
    assert!(d.recv().is_empty());
}

#[test]
fn guest_to_host_connect_to_listener_and_data_both_ways() {
    let mut d = Driver::new();
    let listener = UnixListener::bind(format!("{}_1025", d.uds.display())).unwrap();
    d.give_rx(4);
    d.send(hdr(OP_REQUEST, 5000, 1025), &[]);
    let got = d.recv_n(1);
    assert_eq!(got[0].0.op, OP_RESPONSE);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (1025, 5000));
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    d.send(hdr(OP_RW, 5000, 1025), b"hello host\n");
    assert_eq!(read_line(&mut s), "hello host\n");
    s.write_all(b"hello guest\n").unwrap();
    let got = d.recv_n(1);
    assert_eq!(got[0].0.op, OP_RW);
    assert_eq!(got[0].1, b"hello guest\n");
    // An open but quiet stream leaves the backend idle.
    d.dev.process_backend();
    assert_idle(&d);

    // Guest RST: the host socket is closed, no reply.
    d.send(hdr(OP_RST, 5000, 1025), &[]);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(d.dev.connection_count(), 0);
    d.dev.process_backend();
    assert!(d.recv().is_empty());
}

#[test]
fn host_hangup_without_rx_buffers_waits_without_spinning() {
    let mut d = Driver::new();
    let listener = UnixListener::bind(format!("{}_13", d.uds.display())).unwrap();
    d.give_rx(1);
    d.send(hdr(OP_REQUEST, 8, 13), &[]);
    assert_eq!(d.recv_n(1)[0].0.op, OP_RESPONSE);
    let (mut s, _) = listener.accept().unwrap();
    s.write_all(b"x").unwrap();
    drop(s);
    // No rx buffers: the readable, hung-up socket is parked, not polled.
    for _ in 0..3 {
        d.dev.process_backend();
        assert_idle(&d);
    }
    d.give_rx(2);
    let got = d.recv_n(2);
    assert_eq!((got[0].0.op, got[0].1.as_slice()), (OP_RW, &b"x"[..]));
    assert_eq!(
        (got[1].0.op, got[1].0.flags),
        (OP_SHUTDOWN, SHUTDOWN_F_SEND)
    );
    d.dev.process_backend();
    assert_idle(&d);
}

#[test]
fn many_concurrent_streams_stay_separate() {
    let mut d = Driver::new();
    let listener = UnixListener::bind(format!("{}_7", d.uds.display())).unwrap();
    d.give_rx(8);
    let mut hosts = Vec::new();
    for port in 100..108u32 {
        d.send(hdr(OP_REQUEST, port, 7), &[]);
        let got = d.recv_n(1);
        assert_eq!(got[0].0.op, OP_RESPONSE);
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        hosts.push((port, s));
    }
    assert_eq!(d.dev.connection_count(), 8);
    for (port, _) in &hosts {
        d.send(hdr(OP_RW, *port, 7), format!("{port}").as_bytes());
    }
    for (port, s) in &mut hosts {
        assert_eq!(read_exact_from(s, 3), format!("{port}").as_bytes());
        s.write_all(format!("r{port}").as_bytes()).unwrap();
    }
    let got = d.recv_n(8);
    for (h, data) in got {
        assert_eq!(h.op, OP_RW);
        assert_eq!(data, format!("r{}", h.dst_port).as_bytes());
    }
}

#[test]
fn guest_connect_to_nothing_gets_rst() {
    let mut d = Driver::new();
    d.give_rx(2);
    d.send(hdr(OP_REQUEST, 5000, 4242), &[]);
    let got = d.recv_n(1);
    assert_eq!(got[0].0.op, OP_RST);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (4242, 5000));
    assert_eq!((got[0].0.src_cid, got[0].0.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(d.dev.connection_count(), 0);
}

#[test]
fn unknown_connections_types_and_ops_get_rst() {
    let mut d = Driver::new();
    d.give_rx(8);
    // Data, shutdown, credit traffic for a connection that does not exist.
    for op in [OP_RW, OP_SHUTDOWN, OP_CREDIT_UPDATE, OP_RESPONSE, 0, 99] {
        d.send(hdr(op, 1, 2), b"x");
        let got = d.recv_n(1);
        assert_eq!(got[0].0.op, OP_RST, "op {op}");
    }
    // A RST for nothing is not answered.
    d.send(hdr(OP_RST, 1, 2), &[]);
    // Seqpacket / unknown types, and other destination cids, are refused.
    let mut h = hdr(OP_REQUEST, 1, 2);
    h.type_ = 2;
    d.send(h, &[]);
    assert_eq!(d.recv_n(1)[0].0.op, OP_RST);
    let mut h = hdr(OP_REQUEST, 1, 2);
    h.dst_cid = 7;
    d.send(h, &[]);
    assert_eq!(d.recv_n(1)[0].0.op, OP_RST);
    // A forged source cid is dropped silently.
    let mut h = hdr(OP_REQUEST, 1, 2);
    h.src_cid = 42;
    d.send(h, &[]);
    d.dev.process_backend();
    assert!(d.recv().is_empty());
    assert_eq!(d.dev.backend_stats().bad_src_cid, 1);
    assert_eq!(d.dev.stats().malformed_tx, 0);
}

#[test]
fn unexpected_op_on_a_live_stream_resets_it() {
    let mut d = Driver::new();
    let listener = UnixListener::bind(format!("{}_9", d.uds.display())).unwrap();
    d.give_rx(4);
    d.send(hdr(OP_REQUEST, 5, 9), &[]);
    assert_eq!(d.recv_n(1)[0].0.op, OP_RESPONSE);
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    d.send(hdr(77, 5, 9), &[]);
    assert_eq!(d.recv_n(1)[0].0.op, OP_RST);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(d.dev.connection_count(), 0);
}

#[test]
fn host_data_respects_guest_credit() {
    let mut d = Driver::new();
    d.give_rx(4);
    let (mut s, host_port) = host_connects(&mut d, 80, 8);
    s.write_all(&[b'a'; 20]).unwrap();
    let got = d.recv_n(1);
    assert_eq!(got[0].1, vec![b'a'; 8]);
    // No credit left: nothing more arrives.
    for _ in 0..20 {
        d.dev.process_backend();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(d.recv().is_empty());
    // The guest consumed 8 bytes.
    let mut cu = hdr(OP_CREDIT_UPDATE, 80, host_port);
    cu.buf_alloc = 8;
    cu.fwd_cnt = 8;
    d.send(cu, &[]);
    let got = d.recv_n(1);
    assert_eq!(got[0].1, vec![b'a'; 8]);
    // A credit request is answered with our buffer space.
    d.send(hdr(OP_CREDIT_REQUEST, 80, host_port), &[]);
    let got = d.recv_n(1);
    assert_eq!(got[0].0.op, OP_CREDIT_UPDATE);
    assert_eq!(got[0].0.buf_alloc, CONN_BUF_ALLOC);
    // A guest claiming to have consumed more than it received gets nothing extra.
    let mut cu = hdr(OP_CREDIT_UPDATE, 80, host_port);
    cu.buf_alloc = 8;
    cu.fwd_cnt = 1_000_000;
    d.send(cu, &[]);
    for _ in 0..20 {
        d.dev.process_backend();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(d.recv().is_empty());
}

#[test]
fn guest_data_is_credited_back_and_overruns_reset() {
    let mut d = Driver::new();
    d.give_rx(8);
    let (mut s, host_port) = host_connects(&mut d, 81, 64 * 1024);
    // The host reads slowly: the guest sends within its credit, then the host drains and the
    // guest is told about the freed space.
    let chunk = vec![b'z'; 32 * 1024];
    let mut sent = 0;
    while sent + chunk.len() <= CONN_BUF_ALLOC as usize {
        assert!(d.send(hdr(OP_RW, 81, host_port), &chunk).len() == 1);
        sent += chunk.len();
    }
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let mut update = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    s.set_nonblocking(true).unwrap();
    while update.is_none() || got < sent {
        assert!(Instant::now() < deadline, "got {got} of {sent}");
        match s.read(&mut buf) {
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        d.give_rx(1);
        d.dev.process_backend();
        if let Some(u) = d.recv().into_iter().find(|(h, _)| h.op == OP_CREDIT_UPDATE) {
            update = Some(u);
        }
    }
    let (h, _) = update.unwrap();
    assert!(h.fwd_cnt > 0);
    assert_eq!(got, sent);

    // A guest that ignores its credit while the host does not read is reset.
    let mut resets = 0;
    for _ in 0..200 {
        d.send(hdr(OP_RW, 81, host_port), &chunk);
        d.give_rx(1);
        if d.recv().iter().any(|(h, _)| h.op == OP_RST) {
            resets += 1;
            break;
        }
    }
    assert_eq!(resets, 1);
    assert_eq!(d.dev.backend_stats().credit_violations, 1);
    assert_eq!(d.dev.connection_count(), 0);
}

#[test]
fn guest_shutdown_send_half_closes_the_host_side() {
    let mut d = Driver::new();
    let listener = UnixListener::bind(format!("{}_11", d.uds.display())).unwrap();
    d.give_rx(4);
    d.send(hdr(OP_REQUEST, 6, 11), &[]);
    assert_eq!(d.recv_n(1)[0].0.op, OP_RESPONSE);
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    d.send(hdr(OP_RW, 6, 11), b"req");
    let mut sh = hdr(OP_SHUTDOWN, 6, 11);
    sh.flags = SHUTDOWN_F_SEND;
    d.send(sh, &[]);
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert_eq!(all, "req");
    // The host still answers after the guest's half close.
    s.write_all(b"resp").unwrap();
    assert_eq!(d.recv_n(1)[0].1, b"resp");
    // Data after SHUTDOWN(SEND) is a protocol error.
    d.send(hdr(OP_RW, 6, 11), b"x");
    assert_eq!(d.recv_n(1)[0].0.op, OP_RST);
}

#[test]
fn reset_drops_every_connection() {
    let mut d = Driver::new();
    d.give_rx(2);
    let (mut s, _) = host_connects(&mut d, 5, 4096);
    d.dev.reset();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(d.dev.connection_count(), 0);
    // After reset the device ignores notifications.
    d.dev.process_queue(TX_QUEUE);
    d.dev.process_backend();
}

// ----- hostile descriptor chains ----------------------------------------------------------

/// After each hostile chain the device must still serve a well-formed request.
fn still_works(d: &mut Driver) {
    d.give_rx(1);
    d.send(hdr(OP_RW, 31337, 1), b"?");
    let got = d.recv_n(1);
    assert_eq!(got.last().unwrap().0.op, OP_RST);
}

#[test]
fn tx_chains_outside_memory_or_too_short_are_dropped() {
    let mut d = Driver::new();
    let h = hdr(OP_REQUEST, 1, 2).to_bytes();
    let ha = d.alloc(64);
    d.mem.write_slice(&h, GuestAddress(ha)).unwrap();
    let mut rw = hdr(OP_RW, 1, 2);
    rw.len = 1000;
    let rwa = d.alloc(64);
    d.mem
        .write_slice(&rw.to_bytes(), GuestAddress(rwa))
        .unwrap();
    let mut huge = hdr(OP_RW, 1, 2);
    huge.len = u32::MAX;
    let hugea = d.alloc(64);
    d.mem
        .write_slice(&huge.to_bytes(), GuestAddress(hugea))
        .unwrap();
    let hdr_len = PKT_HEADER_SIZE as u32;
    let cases: Vec<Vec<(u64, u32, u16)>> = vec![
        // Header outside guest memory, straddling its end, at the top of the address space.
        vec![(MEM_SIZE as u64 + 0x1000, hdr_len, 0)],
        vec![(MEM_SIZE as u64 - 8, hdr_len, 0)],
        vec![(u64::MAX - 10, hdr_len, 0)],
        // Header descriptor too short.
        vec![(ha, 8, 0)],
        // Device-writable header on the tx queue (wrong direction).
        vec![(ha, hdr_len, VRING_DESC_F_WRITE as u16)],
        // Payload length larger than the data descriptor / than any packet / missing data.
        vec![(rwa, hdr_len, 0), (rwa + 64, 10, 0)],
        vec![(hugea, hdr_len, 0), (hugea + 64, 10, 0)],
        vec![(rwa, hdr_len, 0)],
        // Data descriptor outside memory / wrapping the address space / write-only.
        vec![(rwa, hdr_len, 0), (MEM_SIZE as u64 + 4096, 1000, 0)],
        vec![(rwa, hdr_len, 0), (u64::MAX - 100, 1000, 0)],
        vec![
            (rwa, hdr_len, 0),
            (rwa + 64, 1000, VRING_DESC_F_WRITE as u16),
        ],
    ];
    for (i, case) in cases.iter().enumerate() {
        let before = d.dev.stats().malformed_tx;
        let used = {
            d.push_chain(TX_QUEUE, case);
            d.dev.process_queue(TX_QUEUE);
            d.used(TX_QUEUE)
        };
        assert_eq!(used.len(), 1, "case {i}: chain returned");
        assert_eq!(used[0].1, 0, "case {i}");
        assert_eq!(d.dev.stats().malformed_tx, before + 1, "case {i}");
        still_works(&mut d);
    }
}

#[test]
fn looping_and_oversized_chains_do_not_hang() {
    let mut d = Driver::new();
    let mut rw = hdr(OP_RW, 1, 2);
    rw.len = 4;
    let a = d.alloc(64);
    d.mem.write_slice(&rw.to_bytes(), GuestAddress(a)).unwrap();
    let hdr_len = PKT_HEADER_SIZE as u32;
    // A header descriptor whose NEXT points to itself (the payload would be read from itself).
    let head = d.next_desc[TX_QUEUE];
    d.store_desc(TX_QUEUE, head, a, hdr_len, VRING_DESC_F_NEXT as u16, head);
    d.next_desc[TX_QUEUE] = (head + 1) % QSIZE;
    d.publish(TX_QUEUE, head);
    // A two-descriptor cycle.
    let h2 = d.next_desc[TX_QUEUE];
    let n2 = (h2 + 1) % QSIZE;
    d.store_desc(TX_QUEUE, h2, a, hdr_len, VRING_DESC_F_NEXT as u16, n2);
    d.store_desc(TX_QUEUE, n2, a, hdr_len, VRING_DESC_F_NEXT as u16, h2);
    d.next_desc[TX_QUEUE] = (h2 + 2) % QSIZE;
    d.publish(TX_QUEUE, h2);
    // A next index beyond the queue size, and a head index beyond it.
    let h3 = d.next_desc[TX_QUEUE];
    d.store_desc(TX_QUEUE, h3, a, hdr_len, VRING_DESC_F_NEXT as u16, 500);
    d.next_desc[TX_QUEUE] = (h3 + 1) % QSIZE;
    d.publish(TX_QUEUE, h3);
    d.publish(TX_QUEUE, 999);
    // An indirect table that points outside memory, and one that refers to itself.
    let h4 = d.next_desc[TX_QUEUE];
    d.store_desc(
        TX_QUEUE,
        h4,
        MEM_SIZE as u64,
        64,
        VRING_DESC_F_INDIRECT as u16,
        0,
    );
    let table = d.alloc(64);
    d.mem
        .write_obj(
            RawDescriptor::from(SplitDescriptor::new(
                table,
                32,
                VRING_DESC_F_INDIRECT as u16,
                0,
            )),
            GuestAddress(table),
        )
        .unwrap();
    let h5 = (h4 + 1) % QSIZE;
    d.store_desc(TX_QUEUE, h5, table, 32, VRING_DESC_F_INDIRECT as u16, 0);
    d.next_desc[TX_QUEUE] = (h4 + 2) % QSIZE;
    d.publish(TX_QUEUE, h4);
    d.publish(TX_QUEUE, h5);
    d.dev.process_queue(TX_QUEUE);
    let used = d.used(TX_QUEUE);
    // The out-of-range head cannot even be returned; the others are.
    assert_eq!(used.len(), 5, "{used:?}");
    assert!(used.iter().all(|&(_, len)| len == 0));
    assert_eq!(d.dev.stats().used_ring_errors, 1);
    assert!(d.dev.stats().malformed_tx >= 3);
    still_works(&mut d);
}

#[test]
fn avail_index_far_ahead_is_refused() {
    let mut d = Driver::new();
    // The driver claims 1000 new buffers in a queue of 16.
    let r = d.rings[TX_QUEUE];
    d.mem.write_obj(1000u16, GuestAddress(r.avail + 2)).unwrap();
    d.dev.process_queue(TX_QUEUE);
    assert!(d.used(TX_QUEUE).is_empty());
    assert_eq!(d.dev.stats().tx_packets, 0);
}

#[test]
fn bad_rx_buffers_are_returned_unused() {
    let mut d = Driver::new();
    let w = VRING_DESC_F_WRITE as u16;
    let hdr_len = PKT_HEADER_SIZE as u32;
    let a = d.alloc(8192);
    let cases: Vec<Vec<(u64, u32, u16)>> = vec![
        vec![(a, hdr_len, 0), (a + 64, 4096, w)], // read-only header
        vec![(a, hdr_len, w), (a + 64, 4096, 0)], // read-only data
        vec![(MEM_SIZE as u64, hdr_len, w), (a, 4096, w)], // header outside memory
        vec![(a, hdr_len, w), (MEM_SIZE as u64 - 16, 4096, w)], // data straddling the end
        vec![(a, 8, w), (a + 64, 4096, w)],       // header too short
        vec![(a, hdr_len, w)],                    // no data buffer
        vec![(a, hdr_len, w), (a + 64, 0, w)],    // empty data buffer
        vec![(a, hdr_len, w), (a + 64, 1 << 20, w)], // data buffer larger than allowed
    ];
    // Something to deliver: a RST for an unknown connection.
    d.send(hdr(OP_RW, 1, 2), b"x");
    for (i, case) in cases.iter().enumerate() {
        let before = d.dev.stats().malformed_rx;
        d.push_chain(RX_QUEUE, case);
        d.dev.process_queue(RX_QUEUE);
        let used = d.used(RX_QUEUE);
        assert_eq!(used, vec![(used[0].0, 0)], "case {i}");
        assert_eq!(d.dev.stats().malformed_rx, before + 1, "case {i}");
    }
    // The pending RST still reaches a good buffer.
    let got = d.recv_n(1);
    assert_eq!(got[0].0.op, OP_RST);
}

#[test]
fn interrupt_is_raised_for_used_buffers() {
    let mut d = Driver::new();
    let _ = d.interrupt.irqfd().read();
    d.send(hdr(OP_RST, 1, 2), &[]);
    assert_eq!(d.interrupt.irqfd().read().unwrap(), 1);
}
