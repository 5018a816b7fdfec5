//! One vsock stream proxied to a host Unix socket: its state, credit accounting and the bounded
//! buffer of guest data the host has not read yet.

use std::io::{self, Read};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// Bytes of guest data a connection buffers for a slow host reader; advertised to the guest as
/// `buf_alloc`. A guest that sends more than this (ignoring its credit) gets the stream reset.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Send a credit update once the host has consumed this many bytes since the last update.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent to the guest, waiting for RESPONSE.
    Connecting,
    /// Data flows both ways.
    Established,
    /// The guest shut down both directions: flush what is buffered, then reset.
    Closing,
}

/// A connection key: (host-side port, guest-side port).
pub type ConnKey = (u32, u32);

/// Why a guest write could not be accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum TxError {
    /// The guest sent more than the credit it was given.
    CreditExceeded,
    /// Writing to the host socket failed.
    Host(io::ErrorKind),
}

/// One proxied stream.
#[derive(Debug)]
pub struct Connection {
    /// The host end.
    pub stream: UnixStream,
    /// Life-cycle state.
    pub state: ConnState,
    /// Guest data (and, first, the `OK` reply line) not yet written to the host socket.
    pending: Vec<u8>,
    /// Leading bytes of `pending` that are not guest data (the `OK <port>\n` reply).
    uncounted: usize,
    /// Guest bytes written to the host socket (our fwd_cnt).
    fwd_cnt: Wrapping<u32>,
    /// The fwd_cnt the guest last heard from us.
    fwd_cnt_sent: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// The guest's receive buffer size.
    peer_buf_alloc: u32,
    /// Bytes the guest has consumed.
    peer_fwd_cnt: Wrapping<u32>,
    /// The guest will send no more data.
    pub guest_shut_send: bool,
    /// The guest will receive no more data.
    pub guest_shut_rcv: bool,
    /// The host closed its sending side (read returned 0).
    pub host_eof: bool,
    /// The host socket's write side was shut down after the guest's SHUTDOWN(SEND).
    host_write_shut: bool,
    /// Queued in the backend's read-ready list (epoll read interest is off meanwhile).
    pub read_queued: bool,
    /// A CREDIT_UPDATE for this connection is queued.
    pub credit_update_queued: bool,
    /// Host-initiated: the host-side port was allocated by the backend.
    pub allocated_port: bool,
}

impl Connection {
    /// A connection over `stream` in `state`.
    pub fn new(stream: UnixStream, state: ConnState) -> Self {
        Connection {
            stream,
            state,
            pending: Vec::new(),
            uncounted: 0,
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            guest_shut_send: false,
            guest_shut_rcv: false,
            host_eof: false,
            host_write_shut: false,
            read_queued: false,
            credit_update_queued: false,
            allocated_port: false,
        }
    }

    /// Record the guest's view of its receive buffer (every guest packet carries it).
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// How many bytes the guest can still take. A guest claiming to have consumed more than
    /// it was sent gets no credit rather than an overflowed one.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// `n` bytes were sent to the guest.
    pub fn record_sent(&mut self, n: u32) {
        self.rx_cnt += Wrapping(n);
    }

    /// Our fwd_cnt, to put in a packet header; the guest is now up to date.
    pub fn take_fwd_cnt(&mut self) -> u32 {
        self.fwd_cnt_sent = self.fwd_cnt;
        self.fwd_cnt.0
    }

    /// The host consumed enough since the last update that the guest should hear about it.
    pub fn credit_update_due(&self) -> bool {
        (self.fwd_cnt - self.fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD
    }

    /// Guest data waiting for the host.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// Whether the host should be polled for writability.
    pub fn wants_write(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether the host should be polled for readability.
    pub fn wants_read(&self) -> bool {
        self.state == ConnState::Established
            && !self.guest_shut_rcv
            && !self.host_eof
            && !self.read_queued
            && self.peer_credit() > 0
    }

    /// Queue the reply line sent to a host program once the guest accepted its CONNECT.
    pub fn queue_reply(&mut self, line: &[u8]) {
        let mut v = line.to_vec();
        v.extend_from_slice(&self.pending);
        self.uncounted += line.len();
        self.pending = v;
    }

    /// Accept guest data: write what the host takes now, buffer the rest within the credit
    /// the guest was given.
    pub fn send_to_host(&mut self, data: &[u8]) -> Result<(), TxError> {
        let guest_buffered = self.pending.len() - self.uncounted;
        if guest_buffered + data.len() > CONN_BUF_ALLOC as usize {
            return Err(TxError::CreditExceeded);
        }
        let mut written = 0;
        if self.pending.is_empty() {
            written = match write_nonblocking(&mut self.stream, data) {
                Ok(n) => n,
                Err(e) => return Err(TxError::Host(e.kind())),
            };
            self.fwd_cnt += Wrapping(written as u32);
        }
        self.pending.extend_from_slice(&data[written..]);
        Ok(())
    }

    /// Write buffered data to the host. Returns `Err` when the host socket failed.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let n = write_nonblocking(&mut self.stream, &self.pending)?;
            if n == 0 {
                break;
            }
            let reply = n.min(self.uncounted);
            self.uncounted -= reply;
            self.fwd_cnt += Wrapping((n - reply) as u32);
            self.pending.drain(..n);
        }
        self.maybe_shut_host_write();
        Ok(())
    }

    /// Once the guest will send nothing more and all its data is out, shut the host's write
    /// side so the host program sees end of file.
    pub fn maybe_shut_host_write(&mut self) {
        if self.guest_shut_send && self.pending.is_empty() && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }

    /// Read host data for the guest into `buf` (at most the guest's credit). `Ok(None)`: nothing
    /// available now; `Ok(Some(0))`: the host closed its sending side.
    pub fn read_from_host(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let max = buf.len().min(self.peer_credit() as usize);
        if max == 0 {
            return Ok(None);
        }
        loop {
            match self.stream.read(&mut buf[..max]) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Write without blocking: `Ok(0)` when the socket is full. MSG_NOSIGNAL: a host program that
/// went away yields EPIPE, never a SIGPIPE for the VMM.
fn write_nonblocking(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    use nix::errno::Errno;
    use nix::sys::socket::{send, MsgFlags};
    loop {
        match send(
            stream.as_raw_fd(),
            data,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(0),
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (Connection::new(a, ConnState::Established), b)
    }

    #[test]
    fn credit_never_underflows() {
        let (mut c, _peer) = pair();
        c.update_peer_credit(100, 0);
        c.record_sent(60);
        assert_eq!(c.peer_credit(), 40);
        // A guest claiming to have consumed more than it got: no credit, no wrap-around.
        c.update_peer_credit(100, 1000);
        assert_eq!(c.peer_credit(), 0);
        c.update_peer_credit(10, 0);
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn buffers_up_to_credit_then_refuses() {
        let (mut c, mut peer) = pair();
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0usize;
        loop {
            match c.send_to_host(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(e) => {
                    assert_eq!(e, TxError::CreditExceeded);
                    break;
                }
            }
            assert!(sent < 16 << 20, "never refused");
        }
        assert!(c.buffered() <= CONN_BUF_ALLOC as usize);
        // The host drains; the connection flushes and credits the guest.
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while got < sent {
            c.flush().unwrap();
            match peer.read(&mut buf) {
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(c.buffered(), 0);
        assert!(c.credit_update_due());
        assert_eq!(c.take_fwd_cnt() as usize, sent);
        assert!(!c.credit_update_due());
    }

    #[test]
    fn reply_line_is_not_counted_as_guest_data() {
        let (mut c, mut peer) = pair();
        c.send_to_host(b"x").unwrap();
        c.queue_reply(b"OK 5\n");
        c.flush().unwrap();
        let mut buf = [0u8; 16];
        let n = peer.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"xOK 5\n");
        assert_eq!(c.take_fwd_cnt(), 1);
    }

    #[test]
    fn guest_shutdown_send_closes_host_write_side_after_flush() {
        let (mut c, mut peer) = pair();
        c.send_to_host(b"bye").unwrap();
        c.guest_shut_send = true;
        c.flush().unwrap();
        let mut s = String::new();
        peer.set_nonblocking(false).unwrap();
        peer.read_to_string(&mut s).unwrap();
        assert_eq!(s, "bye");
    }
}
