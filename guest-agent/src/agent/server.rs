//! The single-threaded poll loop: listeners, connections, the TTY relays, SIGCHLD (through a
//! signalfd) and zombie reaping. Request handling is in `handlers`.
//!
//! Connections: a control connection sends `Hello`, then requests, each answered in order; a
//! `WaitProcess` on a running process *parks* the connection (the agent stops reading it) until
//! the process is reaped. A stdio connection sends one `StreamHello`, gets one response, and its
//! socket then moves to the pending-stream registry. Any bad frame (oversized, truncated,
//! malformed) closes that connection only. Bounds: [`MAX_CONNS`] connections, a connection
//! that has not said hello within [`HELLO_TIMEOUT`] is closed, and pending streams expire (see
//! `streams`).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::Serialize;

use super::containers::{Container, ExitInfo};
use super::frames::FrameBuf;
use super::listen::{self, ListenKind, Listener};
use super::relay::Relay;
use super::sock;
use super::streams::{self, PendingStreams};
use crate::agent_log;
use crate::protocol::{
    self, Hello, HelloReply, ProcessRef, Request, Response, ResponseBody, StreamHello,
    CONTROL_PORT, PROTOCOL_VERSION, STDIO_PORT,
};

/// Most simultaneous connections (more are accepted and closed at once).
pub const MAX_CONNS: usize = 64;
/// A connection must complete its handshake and hello within this time.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent keeps flushing answers before it stops.
const LINGER: Duration = Duration::from_secs(2);

/// How the agent stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Power the VM off (PID-1 mode).
    PowerOff,
    /// Exit the process (test mode).
    Exit,
}

/// Server settings.
#[derive(Debug)]
pub struct Config {
    /// Listening sockets.
    pub listeners: Vec<Listener>,
    /// Directory for exec FIFOs and console sockets (`/run/kvmbox` in the guest).
    pub run_dir: PathBuf,
    /// Parent cgroup of containers without a cgroupsPath.
    pub cgroup_parent: String,
    /// PID-1 mode: power off on Shutdown and when the last container is deleted.
    pub pid1: bool,
}

#[derive(Debug)]
pub(super) enum Phase {
    /// Unix transport: reading "CONNECT <port>\n".
    Handshake(Vec<u8>),
    /// Control port, waiting for Hello.
    ControlHello,
    /// Control port, serving requests.
    Control,
    /// Control port, waiting for a process to exit (not read meanwhile).
    Parked,
    /// Stdio port, waiting for StreamHello.
    StdioHello,
}

#[derive(Debug)]
pub(super) struct Conn {
    fd: OwnedFd,
    pub(super) phase: Phase,
    frames: FrameBuf,
    out: Vec<u8>,
    since: Instant,
    /// Close once `out` is flushed.
    closing: bool,
}

#[derive(Debug, Clone, Copy)]
enum Token {
    Signal,
    Listener(usize),
    Conn(u64),
    RelayMaster(u64),
    RelayStream(u64),
}

/// The agent's whole state.
#[derive(Debug)]
pub struct Server {
    pub(super) cfg: Config,
    signals: SignalFd,
    pub(super) null: OwnedFd,
    pub(super) conns: HashMap<u64, Conn>,
    next_id: u64,
    pub(super) streams: PendingStreams,
    pub(super) containers: HashMap<String, Container>,
    /// Live processes by pid.
    pub(super) pids: HashMap<i32, ProcessRef>,
    pub(super) relays: HashMap<u64, Relay>,
    pub(super) stop: Option<Outcome>,
}

impl Server {
    /// Set up the signalfd (SIGCHLD, SIGTERM, SIGINT blocked and read from it).
    pub fn new(cfg: Config) -> std::io::Result<Server> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block()?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        std::fs::create_dir_all(&cfg.run_dir)?;
        Ok(Server {
            cfg,
            signals,
            null: super::stdio::open_null()?,
            conns: HashMap::new(),
            next_id: 1,
            streams: PendingStreams::default(),
            containers: HashMap::new(),
            pids: HashMap::new(),
            relays: HashMap::new(),
            stop: None,
        })
    }

    pub(super) fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Serve until Shutdown (or, in PID-1 mode, the last container is deleted).
    pub fn run(mut self) -> Outcome {
        loop {
            self.reap();
            let now = Instant::now();
            self.expire(now);
            self.end_relays(now);
            if let Some(outcome) = self.stop {
                self.linger();
                return outcome;
            }
            let (mut fds, tokens) = self.poll_set();
            // SAFETY: a valid pollfd array.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    agent_log!("poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            for (pfd, token) in fds.iter().zip(tokens) {
                if pfd.revents != 0 {
                    self.dispatch(token, pfd.revents);
                }
            }
        }
    }

    fn poll_set(&self) -> (Vec<libc::pollfd>, Vec<Token>) {
        let mut fds = Vec::new();
        let mut tokens = Vec::new();
        let mut add = |fd: RawFd, events: i16, t: Token| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            tokens.push(t);
        };
        add(self.signals.as_raw_fd(), libc::POLLIN, Token::Signal);
        for (i, l) in self.cfg.listeners.iter().enumerate() {
            add(l.fd.as_raw_fd(), libc::POLLIN, Token::Listener(i));
        }
        for (id, c) in &self.conns {
            let mut ev = 0;
            if !c.out.is_empty() {
                ev |= libc::POLLOUT;
            }
            if !c.closing && !matches!(c.phase, Phase::Parked) {
                ev |= libc::POLLIN;
            }
            add(c.fd.as_raw_fd(), ev, Token::Conn(*id));
        }
        for (id, r) in &self.relays {
            let (m, s) = r.interest();
            // A negative fd is ignored by poll(2).
            let fd_if = |fd: RawFd, ev: i16| if ev == 0 { -1 } else { fd };
            add(fd_if(r.master.as_raw_fd(), m), m, Token::RelayMaster(*id));
            add(fd_if(r.stream.as_raw_fd(), s), s, Token::RelayStream(*id));
        }
        (fds, tokens)
    }

    fn dispatch(&mut self, token: Token, revents: i16) {
        match token {
            Token::Signal => self.on_signals(),
            Token::Listener(i) => self.accept(i),
            Token::Conn(id) => {
                if revents & libc::POLLOUT != 0 {
                    self.flush(id);
                }
                if revents & libc::POLLIN != 0 {
                    self.on_readable(id);
                } else if revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                    self.close(id);
                }
            }
            Token::RelayMaster(id) | Token::RelayStream(id) => {
                if let Some(r) = self.relays.get_mut(&id) {
                    r.pump();
                }
            }
        }
    }

    fn on_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let sig = info.ssi_signo as i32;
            if sig == libc::SIGCHLD {
                continue; // reaped at the top of the loop
            }
            if self.cfg.pid1 {
                agent_log!("ignoring signal {sig} (PID 1)");
            } else {
                agent_log!("signal {sig}: removing every container and exiting");
                self.shutdown_all();
                self.stop = Some(Outcome::Exit);
            }
        }
        self.reap();
    }

    fn accept(&mut self, i: usize) {
        loop {
            let l = &self.cfg.listeners[i];
            let kind = l.kind;
            let fd = match l.accept() {
                Ok(Some(fd)) => fd,
                Ok(None) => return,
                Err(e) => {
                    agent_log!("accept: {e}");
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNS {
                agent_log!("refusing a connection: {MAX_CONNS} connections are open");
                continue;
            }
            let phase = match kind {
                ListenKind::Unix => Phase::Handshake(Vec::new()),
                ListenKind::Vsock(CONTROL_PORT) => Phase::ControlHello,
                ListenKind::Vsock(_) => Phase::StdioHello,
            };
            let id = self.new_id();
            self.conns.insert(
                id,
                Conn {
                    fd,
                    phase,
                    frames: FrameBuf::default(),
                    out: Vec::new(),
                    since: Instant::now(),
                    closing: false,
                },
            );
        }
    }

    pub(super) fn close(&mut self, id: u64) {
        self.conns.remove(&id);
    }

    fn flush(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        match sock::flush(c.fd.as_fd(), &mut c.out) {
            Ok(true) if c.closing => self.close(id),
            Ok(_) => {}
            Err(_) => self.close(id),
        }
    }

    /// Queue one frame on connection `id` and try to send it.
    pub(super) fn send<T: Serialize>(&mut self, id: u64, msg: &T) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if let Err(e) = protocol::write_frame(&mut c.out, msg) {
            agent_log!("encoding a reply: {e}");
            c.closing = true;
        }
        self.flush(id);
    }

    fn bad_frame(&mut self, id: u64, e: protocol::ProtocolError) {
        if !matches!(e, protocol::ProtocolError::Closed) {
            agent_log!("connection {id}: {e}; closing it");
        }
        self.close(id);
    }

    fn on_readable(&mut self, id: u64) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if c.closing || matches!(c.phase, Phase::Parked) {
                return;
            }
            if let Phase::Handshake(line) = &mut c.phase {
                let mut b = [0u8; 1];
                match sock::recv(c.fd.as_fd(), &mut b) {
                    Ok(None) => return,
                    Ok(Some(0)) | Err(_) => return self.close(id),
                    Ok(Some(_)) if b[0] != b'\n' => {
                        line.push(b[0]);
                        if line.len() > listen::MAX_HANDSHAKE {
                            return self.close(id);
                        }
                    }
                    Ok(Some(_)) => match listen::parse_connect(line) {
                        Some(port @ (CONTROL_PORT | STDIO_PORT)) => {
                            c.out.extend_from_slice(format!("OK {port}\n").as_bytes());
                            c.phase = if port == CONTROL_PORT {
                                Phase::ControlHello
                            } else {
                                Phase::StdioHello
                            };
                            self.flush(id);
                        }
                        _ => return self.close(id),
                    },
                }
                continue;
            }
            let want = match c.frames.want() {
                Ok(w) => w.min(buf.len()),
                Err(e) => return self.bad_frame(id, e),
            };
            match sock::recv(c.fd.as_fd(), &mut buf[..want]) {
                Ok(None) => return,
                Ok(Some(0)) => {
                    let e = if c.frames.is_empty() {
                        protocol::ProtocolError::Closed
                    } else {
                        std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()
                    };
                    return self.bad_frame(id, e);
                }
                Ok(Some(n)) => c.frames.push(&buf[..n]),
                Err(e) => return self.bad_frame(id, e.into()),
            }
            match c.phase {
                Phase::ControlHello => match c.frames.take::<Hello>() {
                    Ok(Some(h)) => self.on_hello(id, h),
                    Ok(None) => {}
                    Err(e) => return self.bad_frame(id, e),
                },
                Phase::StdioHello => match c.frames.take::<StreamHello>() {
                    Ok(Some(h)) => return self.on_stream_hello(id, h),
                    Ok(None) => {}
                    Err(e) => return self.bad_frame(id, e),
                },
                Phase::Control => match c.frames.take::<Request>() {
                    Ok(Some(req)) => {
                        if let Some(resp) = self.handle(id, req) {
                            self.send(id, &resp);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => return self.bad_frame(id, e),
                },
                Phase::Handshake(_) | Phase::Parked => {}
            }
        }
    }

    fn on_hello(&mut self, id: u64, h: Hello) {
        let reply = HelloReply {
            version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        self.send(id, &reply);
        if let Some(c) = self.conns.get_mut(&id) {
            if h.version == PROTOCOL_VERSION {
                c.phase = Phase::Control;
            } else {
                agent_log!(
                    "refusing a host with protocol version {} (agent speaks {PROTOCOL_VERSION})",
                    h.version
                );
                c.closing = true;
                if c.out.is_empty() {
                    self.close(id);
                }
            }
        }
    }

    fn on_stream_hello(&mut self, id: u64, h: StreamHello) {
        let check =
            protocol::validate_id("container id", &h.process.container_id).and_then(|()| match &h
                .process
                .exec_id
            {
                Some(e) => protocol::validate_id("exec id", e),
                None => Ok(()),
            });
        if let Err(message) = check {
            return self.refuse(id, message);
        }
        if let Err(message) = self.streams.check(&h.process, h.kind) {
            return self.refuse(id, message);
        }
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        if protocol::write_frame(&mut c.out, &Response::Ok(ResponseBody::Ok)).is_err() {
            return;
        }
        match sock::flush(c.fd.as_fd(), &mut c.out) {
            Ok(true) => {
                if let Err(message) = self
                    .streams
                    .register(h.process, h.kind, c.fd, Instant::now())
                {
                    agent_log!("stdio connection {id}: {message}");
                }
            }
            _ => agent_log!("stdio connection {id}: could not answer its StreamHello; dropped"),
        }
    }

    /// Answer a stdio connection with an error and close it.
    fn refuse(&mut self, id: u64, message: String) {
        self.send(id, &Response::Error { message });
        if let Some(c) = self.conns.get_mut(&id) {
            c.closing = true;
            if c.out.is_empty() {
                self.close(id);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        let n = self.streams.expire(now);
        if n > 0 {
            agent_log!(
                "dropped {n} stdio stream(s) unused for {:?}",
                streams::STREAM_TTL
            );
        }
        let stale: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(
                    c.phase,
                    Phase::Handshake(_) | Phase::ControlHello | Phase::StdioHello
                ) && now.duration_since(c.since) > HELLO_TIMEOUT
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.close(id);
        }
    }

    fn end_relays(&mut self, now: Instant) {
        let done: Vec<u64> = self
            .relays
            .iter()
            .filter(|(_, r)| r.is_done(now))
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(mut r) = self.relays.remove(&id) {
                r.finish();
            }
        }
    }

    /// Reap every exited child; record the exits of container processes.
    pub(super) fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.on_exit(pid.as_raw(), Some(code), None),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.on_exit(pid.as_raw(), None, Some(sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Record that `pid` ended and answer its waiters.
    pub(super) fn on_exit(&mut self, pid: i32, code: Option<i32>, signal: Option<i32>) {
        let Some(pref) = self.pids.remove(&pid) else {
            return;
        };
        let Some(c) = self.containers.get_mut(&pref.container_id) else {
            return;
        };
        let oom = if signal == Some(libc::SIGKILL) {
            super::stats::oom_kills(&c.cgroup_path)
        } else {
            0
        };
        let info = ExitInfo::new(code, signal, oom);
        let Some(p) = c.process_mut(pref.exec_id.as_deref()) else {
            return;
        };
        p.exit = Some(info);
        p.stdin = None;
        let waiters = std::mem::take(&mut p.waiters);
        let relay = p.relay;
        agent_log!(
            "{} (pid {pid}) exited with status {}",
            streams::describe(&pref),
            info.status
        );
        if let Some(r) = relay.and_then(|r| self.relays.get_mut(&r)) {
            r.pump();
            r.process_exited(Instant::now());
        }
        for w in waiters {
            self.answer_wait(w, info);
        }
    }

    /// Unpark connection `id` with the exit of the process it waited for.
    pub(super) fn answer_wait(&mut self, id: u64, info: ExitInfo) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.phase = Phase::Control;
        self.send(id, &exited(info));
    }

    /// Park connection `id` (a WaitProcess on a live process).
    pub(super) fn park(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.phase = Phase::Parked;
        }
    }

    /// Flush answers before stopping; in PID-1 mode also give the host a moment to read them
    /// and close (the VM's vsock packets must leave before the power-off).
    fn linger(&mut self) {
        let deadline = Instant::now() + LINGER;
        let mut scratch = [0u8; 4096];
        while !self.conns.is_empty() && Instant::now() < deadline {
            let all_flushed = self.conns.values().all(|c| c.out.is_empty());
            if all_flushed && !self.cfg.pid1 {
                return;
            }
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            let mut fds: Vec<libc::pollfd> = ids
                .iter()
                .map(|id| {
                    let c = &self.conns[id];
                    libc::pollfd {
                        fd: c.fd.as_raw_fd(),
                        events: libc::POLLIN | if c.out.is_empty() { 0 } else { libc::POLLOUT },
                        revents: 0,
                    }
                })
                .collect();
            // SAFETY: a valid pollfd array.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
            for (pfd, id) in fds.iter().zip(ids) {
                if pfd.revents & libc::POLLOUT != 0 {
                    self.flush(id);
                }
                if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    let Some(c) = self.conns.get(&id) else {
                        continue;
                    };
                    match sock::recv(c.fd.as_fd(), &mut scratch) {
                        Ok(Some(0)) | Err(_) => self.close(id),
                        _ => {}
                    }
                }
            }
        }
    }
}

/// The `WaitProcess` answer for `info`.
pub(super) fn exited(info: ExitInfo) -> Response {
    Response::Ok(ResponseBody::Exited {
        status: info.status,
        signal: info.signal,
        oom_killed: info.oom_killed,
    })
}
