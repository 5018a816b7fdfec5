//! The hybrid Unix-socket backend: host programs reach guest ports through one listening socket
//! (`CONNECT <port>\n` → `OK <host_port>\n`), guest connections to host port P go to the Unix
//! socket `<uds_path>_P`. All sockets are non-blocking and watched by one epoll fd, which the
//! VMM's event loop polls; nothing here ever blocks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnKey, ConnState, Connection, TxError, CONN_BUF_ALLOC};
use super::packet::*;

/// Most connections (both directions together) a VM may have open.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host connections waiting to send their `CONNECT` line.
pub const MAX_HANDSHAKES: usize = 64;
/// Longest accepted `CONNECT <port>\n` line.
const MAX_HANDSHAKE_LINE: usize = 32;
/// Control packets queued for the guest before the device stops taking guest packets.
pub const MAX_CONTROL_QUEUE: usize = 1024;
/// First port handed to host-initiated connections.
const FIRST_HOST_PORT: u32 = 1 << 30;

/// How long a host-initiated connection waits for the guest's RESPONSE before the device
/// gives up: the guest gets a RST and the host program sees its socket closed without `OK`.
/// Generous because the guest kernel is emulated on this project's hosts (seconds per request
/// under load).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

const LISTENER_TOKEN: u64 = 0;
/// The connect-timeout timer's epoll token (connection tokens count up from 1).
const TIMER_TOKEN: u64 = u64::MAX;

/// What an epoll token stands for.
#[derive(Debug, Clone, Copy)]
enum Token {
    Handshake,
    Conn(ConnKey),
}

/// Counters for what the guest or host did wrong (exposed for tests and logs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BackendStats {
    /// Guest packets with a forged source cid (dropped).
    pub bad_src_cid: u64,
    /// Guest packets answered with a reset (unknown port/connection, bad type or op...).
    pub resets_sent: u64,
    /// Guest streams reset for sending beyond their credit.
    pub credit_violations: u64,
    /// Host connections dropped before or at their `CONNECT` line.
    pub bad_handshakes: u64,
    /// Host-initiated connections the guest did not answer within the connect timeout.
    pub connect_timeouts: u64,
}

/// The backend of one vsock device.
pub struct UnixBackend {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    /// The device is active: host connections should be accepted.
    accepting: bool,
    /// The listener is registered with the epoll fd.
    listening: bool,
    epoll: Epoll,
    next_token: u64,
    tokens: HashMap<u64, Token>,
    handshakes: HashMap<u64, UnixStream>,
    conns: HashMap<ConnKey, Connection>,
    conn_tokens: HashMap<ConnKey, u64>,
    /// Connections whose epoll registration currently covers these events.
    registered: HashMap<ConnKey, EventSet>,
    host_ports: HashSet<u32>,
    next_host_port: u32,
    control: VecDeque<(Header, Option<ConnKey>)>,
    read_ready: VecDeque<ConnKey>,
    /// Host-initiated connections waiting for the guest's RESPONSE, with their deadline.
    connecting: HashMap<ConnKey, Instant>,
    connect_timeout: Duration,
    /// Fires at the earliest deadline in `connecting`; registered with `epoll`.
    timer: TimerFd,
    stats: BackendStats,
}

impl UnixBackend {
    /// Bind the listening socket at `uds_path` (which must not exist).
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Self> {
        if uds_path.exists() || uds_path.is_symlink() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("vsock socket {} already exists", uds_path.display()),
            ));
        }
        let listener = crate::vmm::unix_path::bind(uds_path)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", uds_path.display())))?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let timer = TimerFd::new()?;
        epoll.ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TIMER_TOKEN),
        )?;
        Ok(UnixBackend {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            accepting: false,
            listening: false,
            epoll,
            next_token: LISTENER_TOKEN + 1,
            tokens: HashMap::new(),
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            conn_tokens: HashMap::new(),
            registered: HashMap::new(),
            host_ports: HashSet::new(),
            next_host_port: FIRST_HOST_PORT,
            control: VecDeque::new(),
            read_ready: VecDeque::new(),
            connecting: HashMap::new(),
            connect_timeout: CONNECT_TIMEOUT,
            timer,
            stats: BackendStats::default(),
        })
    }

    /// The epoll fd to watch for readability.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The listening socket's path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Change the connect timeout (for connections requested from now on).
    pub fn set_connect_timeout(&mut self, timeout: Duration) {
        self.connect_timeout = timeout;
    }

    /// Error counters.
    pub fn stats(&self) -> &BackendStats {
        &self.stats
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Start accepting host connections (the driver is ready).
    pub fn start(&mut self) {
        self.accepting = true;
        self.resume_listener();
    }

    fn resume_listener(&mut self) {
        if self.accepting && !self.listening {
            let ev = EpollEvent::new(EventSet::IN, LISTENER_TOKEN);
            match self
                .epoll
                .ctl(ControlOperation::Add, self.listener.as_raw_fd(), ev)
            {
                Ok(()) => self.listening = true,
                Err(e) => tracing::error!("vsock: cannot watch the listening socket: {e}"),
            }
        }
    }

    /// Drop every connection and pending packet; stop accepting (device reset).
    pub fn reset(&mut self) {
        self.accepting = false;
        self.pause_listener();
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove_conn(key);
        }
        let tokens: Vec<u64> = self.handshakes.keys().copied().collect();
        for t in tokens {
            self.drop_handshake(t);
        }
        self.control.clear();
        self.read_ready.clear();
        self.connecting.clear();
        self.arm_timer();
    }

    /// Stop watching the listener (reset, or accept failing for lack of fds: it resumes when
    /// a connection closes).
    fn pause_listener(&mut self) {
        if self.listening {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                self.listener.as_raw_fd(),
                EpollEvent::default(),
            );
            self.listening = false;
        }
    }

    /// Whether the backend can take another guest packet (its replies have room).
    pub fn can_accept_tx(&self) -> bool {
        self.control.len() < MAX_CONTROL_QUEUE
    }

    /// Whether a packet for the guest may be ready.
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || !self.read_ready.is_empty()
    }

    // ----- guest → backend -------------------------------------------------------------

    /// Handle one packet the guest sent; `data` is its payload (`hdr.len` bytes).
    pub fn handle_tx(&mut self, hdr: &Header, data: &[u8]) {
        if hdr.src_cid != self.guest_cid {
            self.stats.bad_src_cid += 1;
            tracing::debug!(
                src_cid = hdr.src_cid,
                "vsock: dropped packet with forged source cid"
            );
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            self.reset_unknown(hdr);
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if !self.conns.contains_key(&key) {
            match hdr.op {
                OP_REQUEST => self.connect_to_host(hdr, key),
                OP_RST => {}
                _ => self.reset_unknown(hdr),
            }
            return;
        }
        let conn = self.conns.get_mut(&key).expect("checked above");
        conn.update_peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        match (conn.state, hdr.op) {
            (_, OP_RST) => self.remove_conn(key),
            (ConnState::Connecting, OP_RESPONSE) => {
                conn.state = ConnState::Established;
                self.connecting.remove(&key);
                conn.queue_reply(format!("OK {}\n", key.0).as_bytes());
                self.flush_conn(key);
            }
            (ConnState::Established, OP_RW) if !conn.guest_shut_send => {
                match conn.send_to_host(data) {
                    Ok(()) => {
                        if conn.credit_update_due() {
                            self.queue_credit_update(key);
                        }
                        self.update_interest(key);
                    }
                    Err(TxError::CreditExceeded) => {
                        self.stats.credit_violations += 1;
                        tracing::debug!(?key, "vsock: guest exceeded its credit; reset");
                        self.reset_conn(key);
                    }
                    Err(TxError::Host(kind)) => {
                        tracing::debug!(?key, ?kind, "vsock: host socket write failed; reset");
                        self.reset_conn(key);
                    }
                }
            }
            (ConnState::Established | ConnState::Closing, OP_CREDIT_UPDATE) => {
                self.update_interest(key)
            }
            (ConnState::Established | ConnState::Closing, OP_CREDIT_REQUEST) => {
                self.queue_credit_update(key)
            }
            (ConnState::Established | ConnState::Closing, OP_SHUTDOWN) => {
                conn.guest_shut_rcv |= hdr.flags & SHUTDOWN_F_RCV != 0;
                conn.guest_shut_send |= hdr.flags & SHUTDOWN_F_SEND != 0;
                if conn.guest_shut_rcv && conn.guest_shut_send {
                    conn.state = ConnState::Closing;
                }
                conn.maybe_shut_host_write();
                self.finish_if_closed(key);
                self.update_interest(key);
            }
            _ => {
                tracing::debug!(?key, op = hdr.op, "vsock: unexpected packet; reset");
                self.reset_conn(key);
            }
        }
    }

    /// Answer a packet that belongs to no connection with RST (never answering a RST).
    fn reset_unknown(&mut self, hdr: &Header) {
        if hdr.op == OP_RST {
            return;
        }
        self.stats.resets_sent += 1;
        let mut rst = hdr.reply(OP_RST);
        rst.src_cid = HOST_CID;
        rst.dst_cid = self.guest_cid;
        self.control.push_back((rst, None));
    }

    /// A guest REQUEST: connect to `<uds_path>_<port>` and answer RESPONSE, or RST.
    fn connect_to_host(&mut self, hdr: &Header, key: ConnKey) {
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::debug!("vsock: connection limit reached");
            self.reset_unknown(hdr);
            return;
        }
        let path = format!("{}_{}", self.uds_path.display(), hdr.dst_port);
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(path, "vsock: guest connect refused: {e}");
                self.reset_unknown(hdr);
                return;
            }
        };
        let mut conn = Connection::new(stream, ConnState::Established);
        conn.update_peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        self.insert_conn(key, conn);
        self.push_conn_control(key, OP_RESPONSE, 0);
        self.update_interest(key);
    }

    // ----- backend → guest -------------------------------------------------------------

    /// The next packet for the guest, its payload (if any) read into `buf` (whose length is the
    /// room in the guest's buffer). `None` when nothing is ready.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<Header> {
        while let Some((mut hdr, key)) = self.control.pop_front() {
            if let Some(key) = key {
                match self.conns.get_mut(&key) {
                    Some(conn) => {
                        if hdr.op == OP_CREDIT_UPDATE {
                            conn.credit_update_queued = false;
                        }
                        hdr.buf_alloc = CONN_BUF_ALLOC;
                        hdr.fwd_cnt = conn.take_fwd_cnt();
                    }
                    // The connection went away after the packet was queued: only a RST
                    // still makes sense.
                    None if hdr.op != OP_RST => continue,
                    None => {}
                }
            }
            return Some(hdr);
        }
        while let Some(key) = self.read_ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.read_queued = false;
            if conn.state != ConnState::Established || conn.guest_shut_rcv || conn.host_eof {
                self.update_interest(key);
                continue;
            }
            match conn.read_from_host(buf) {
                Ok(None) => self.update_interest(key),
                Ok(Some(0)) => {
                    conn.host_eof = true;
                    let hdr = self.conn_header(key, OP_SHUTDOWN, SHUTDOWN_F_SEND);
                    self.update_interest(key);
                    return Some(hdr);
                }
                Ok(Some(n)) => {
                    conn.record_sent(n as u32);
                    let mut hdr = self.conn_header(key, OP_RW, 0);
                    hdr.len = n as u32;
                    self.update_interest(key);
                    return Some(hdr);
                }
                Err(e) => {
                    tracing::debug!(?key, "vsock: host socket read failed: {e}; reset");
                    self.reset_conn(key);
                    return self.control.pop_front().map(|(h, _)| h);
                }
            }
        }
        None
    }

    /// A header from the host end of connection `key` to the guest, with current credit.
    fn conn_header(&mut self, key: ConnKey, op: u16, flags: u32) -> Header {
        let fwd_cnt = self.conns.get_mut(&key).map_or(0, |c| c.take_fwd_cnt());
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt,
        }
    }

    fn push_conn_control(&mut self, key: ConnKey, op: u16, flags: u32) {
        let hdr = Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            type_: TYPE_STREAM,
            op,
            flags,
            ..Header::default()
        };
        self.control.push_back((hdr, Some(key)));
    }

    fn queue_credit_update(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(&key) {
            if !conn.credit_update_queued {
                conn.credit_update_queued = true;
                self.push_conn_control(key, OP_CREDIT_UPDATE, 0);
            }
        }
    }

    // ----- host events -----------------------------------------------------------------

    /// Serve every ready host socket (the epoll fd was readable).
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("vsock: epoll_wait: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let token = ev.data();
            let set = ev.event_set();
            if token == LISTENER_TOKEN {
                self.accept_host_connections();
                continue;
            }
            if token == TIMER_TOKEN {
                let _ = self.timer.wait();
                self.expire_connects();
                continue;
            }
            match self.tokens.get(&token).copied() {
                Some(Token::Handshake) => self.read_handshake(token),
                Some(Token::Conn(key)) => self.conn_event(key, set),
                None => {}
            }
        }
    }

    fn accept_host_connections(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // E.g. out of fds: stop polling the listener so it cannot spin.
                    tracing::warn!("vsock: accept on {}: {e}", self.uds_path.display());
                    self.pause_listener();
                    return;
                }
            };
            if self.handshakes.len() >= MAX_HANDSHAKES
                || self.conns.len() >= MAX_CONNECTIONS
                || stream.set_nonblocking(true).is_err()
            {
                self.stats.bad_handshakes += 1;
                continue; // dropped: the host program sees EOF
            }
            let token = self.new_token(Token::Handshake);
            let ev = EpollEvent::new(EventSet::IN, token);
            if self
                .epoll
                .ctl(ControlOperation::Add, stream.as_raw_fd(), ev)
                .is_err()
            {
                self.tokens.remove(&token);
                continue;
            }
            self.handshakes.insert(token, stream);
        }
    }

    /// Read `CONNECT <port>\n` without consuming anything after the newline.
    fn read_handshake(&mut self, token: u64) {
        let Some(stream) = self.handshakes.get(&token) else {
            return;
        };
        let mut buf = [0u8; MAX_HANDSHAKE_LINE];
        let peeked = match nix::sys::socket::recv(
            stream.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return,
            Err(_) => 0,
        };
        let line_end = buf[..peeked].iter().position(|&b| b == b'\n');
        let Some(end) = line_end else {
            if peeked == 0 || peeked == buf.len() {
                // EOF, error or an over-long line.
                self.stats.bad_handshakes += 1;
                self.drop_handshake(token);
            }
            return;
        };
        let mut line = vec![0u8; end + 1];
        let consumed = nix::sys::socket::recv(
            stream.as_raw_fd(),
            &mut line,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        );
        let port = match (consumed, parse_connect(&line[..end])) {
            (Ok(n), Some(port)) if n == end + 1 => port,
            _ => {
                self.stats.bad_handshakes += 1;
                self.drop_handshake(token);
                return;
            }
        };
        let Some(stream) = self.take_handshake(token) else {
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            self.stats.bad_handshakes += 1;
            return;
        }
        let local_port = self.allocate_host_port(port);
        let key = (local_port, port);
        self.host_ports.insert(local_port);
        let mut conn = Connection::new(stream, ConnState::Connecting);
        conn.allocated_port = true;
        self.insert_conn(key, conn);
        self.push_conn_control(key, OP_REQUEST, 0);
        self.connecting
            .insert(key, Instant::now() + self.connect_timeout);
        self.arm_timer();
    }

    /// Reset every host-initiated connection whose guest did not answer in time.
    fn expire_connects(&mut self) {
        let now = Instant::now();
        let expired: Vec<ConnKey> = self
            .connecting
            .iter()
            .filter(|(_, &deadline)| deadline <= now)
            .map(|(&key, _)| key)
            .collect();
        for key in expired {
            self.connecting.remove(&key);
            if self.conns.get(&key).map(|c| c.state) == Some(ConnState::Connecting) {
                self.stats.connect_timeouts += 1;
                tracing::debug!(
                    ?key,
                    "vsock: the guest did not answer the connection request"
                );
                self.reset_conn(key);
            }
        }
        self.arm_timer();
    }

    /// Arm the timer for the earliest connect deadline, or disarm it when there is none.
    fn arm_timer(&mut self) {
        let next = self.connecting.values().min().copied();
        let result = match next {
            // A zero duration would disarm the timer: at least 1 ns.
            Some(deadline) => self.timer.reset(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_nanos(1)),
                None,
            ),
            None => self.timer.clear(),
        };
        if let Err(e) = result {
            tracing::warn!("vsock: connect timer: {e}");
        }
    }

    fn conn_event(&mut self, key: ConnKey, set: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set.contains(EventSet::OUT) || (set.contains(EventSet::ERROR) && conn.wants_write()) {
            self.flush_conn(key);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if (set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR)) && conn.wants_read()
        {
            conn.read_queued = true;
            self.read_ready.push_back(key);
        }
        self.update_interest(key);
    }

    /// Write what is buffered for the host; reset on error; send credit or finish a close.
    fn flush_conn(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let Err(e) = conn.flush() {
            tracing::debug!(?key, "vsock: host socket write failed: {e}; reset");
            self.reset_conn(key);
            return;
        }
        if conn.credit_update_due() && conn.state == ConnState::Established {
            self.queue_credit_update(key);
        }
        self.finish_if_closed(key);
        self.update_interest(key);
    }

    /// A connection the guest shut down both ways and whose data is out: reset and forget it.
    fn finish_if_closed(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get(&key) {
            if conn.state == ConnState::Closing && !conn.wants_write() {
                self.reset_conn(key);
            }
        }
    }

    // ----- bookkeeping -----------------------------------------------------------------

    fn new_token(&mut self, what: Token) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        self.tokens.insert(t, what);
        t
    }

    fn take_handshake(&mut self, token: u64) -> Option<UnixStream> {
        self.tokens.remove(&token);
        let stream = self.handshakes.remove(&token)?;
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            stream.as_raw_fd(),
            EpollEvent::default(),
        );
        Some(stream)
    }

    fn drop_handshake(&mut self, token: u64) {
        drop(self.take_handshake(token));
    }

    /// A host-side port for a new connection to guest port `peer` (at most MAX_CONNECTIONS
    /// are in use, so this ends quickly).
    fn allocate_host_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_host_port;
            self.next_host_port = self
                .next_host_port
                .checked_add(1)
                .unwrap_or(FIRST_HOST_PORT);
            if !self.host_ports.contains(&p) && !self.conns.contains_key(&(p, peer)) {
                return p;
            }
        }
    }

    fn insert_conn(&mut self, key: ConnKey, conn: Connection) {
        let token = self.new_token(Token::Conn(key));
        self.conn_tokens.insert(key, token);
        self.conns.insert(key, conn);
    }

    /// Queue a RST for the guest and drop the connection.
    fn reset_conn(&mut self, key: ConnKey) {
        if self.conns.contains_key(&key) {
            self.stats.resets_sent += 1;
            self.remove_conn(key);
            self.push_conn_control(key, OP_RST, 0);
        }
    }

    fn remove_conn(&mut self, key: ConnKey) {
        self.connecting.remove(&key);
        if let Some(conn) = self.conns.remove(&key) {
            if conn.allocated_port {
                self.host_ports.remove(&key.0);
            }
            if self.registered.remove(&key).is_some() {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    conn.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
        if let Some(token) = self.conn_tokens.remove(&key) {
            self.tokens.remove(&token);
        }
        self.resume_listener();
    }

    /// Make the epoll registration match what the connection wants. A connection that wants
    /// nothing is not registered at all, so a hung-up peer cannot make the epoll fd spin.
    fn update_interest(&mut self, key: ConnKey) {
        let (Some(conn), Some(&token)) = (self.conns.get(&key), self.conn_tokens.get(&key)) else {
            return;
        };
        let mut want = EventSet::empty();
        if conn.wants_read() {
            want |= EventSet::IN;
        }
        if conn.wants_write() {
            want |= EventSet::OUT;
        }
        let fd = conn.stream.as_raw_fd();
        let current = self.registered.get(&key).copied();
        let result = match (current, want.is_empty()) {
            (None, true) => Ok(()),
            (Some(c), false) if c == want => Ok(()),
            (None, false) => {
                self.epoll
                    .ctl(ControlOperation::Add, fd, EpollEvent::new(want, token))
            }
            (Some(_), false) => {
                self.epoll
                    .ctl(ControlOperation::Modify, fd, EpollEvent::new(want, token))
            }
            (Some(_), true) => self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default()),
        };
        match result {
            Ok(()) if want.is_empty() => {
                self.registered.remove(&key);
            }
            Ok(()) => {
                self.registered.insert(key, want);
            }
            Err(e) => {
                tracing::debug!(?key, "vsock: epoll_ctl: {e}; reset");
                self.reset_conn(key);
            }
        }
    }
}

impl Drop for UnixBackend {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// Parse `CONNECT <port>` (the newline already stripped).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

/// Connect to a Unix socket without ever blocking: a full backlog is a refusal.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let short = crate::vmm::unix_path::SocketAddrPath::new(path)?;
    let addr = UnixAddr::new(short.as_path()).map_err(io::Error::from)?;
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    connect(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT  7 "), Some(7));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"connect 5"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }

    #[test]
    fn refuses_an_existing_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.sock");
        std::fs::write(&p, b"").unwrap();
        assert!(UnixBackend::new(3, &p).is_err());
    }

    #[test]
    fn removes_its_socket_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.sock");
        let b = UnixBackend::new(3, &p).unwrap();
        assert!(p.exists());
        drop(b);
        assert!(!p.exists());
    }
}
