//! Stdio streams registered by `StreamHello` and not yet used by a `CreateContainer` /
//! `ExecProcess`. Bounded: at most [`MAX_PENDING`] streams, each dropped after [`STREAM_TTL`].
//!
//! While the agent clones a container process, the streams pending for *other* processes are
//! parked ([`PendingStreams::park`]): sent with SCM_RIGHTS into a socketpair's queue, so they
//! are not in the agent's fd table at the clone, and received back right after
//! ([`PendingStreams::unpark`]). A container init waits for `start` before it execs (and
//! close-on-exec applies); without parking it would hold copies of those streams until then,
//! and the host would see another process's stdout EOF late.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};

use crate::protocol::{ProcessRef, StdioSpec, StreamKind};

/// Most streams waiting for their process at once.
pub const MAX_PENDING: usize = 64;
/// A registered stream unused for this long is closed.
pub const STREAM_TTL: Duration = Duration::from_secs(60);

/// The pending streams, by (process, kind).
#[derive(Debug, Default)]
pub struct PendingStreams {
    map: HashMap<(ProcessRef, StreamKind), (OwnedFd, Instant)>,
    /// The socketpair streams are parked in (created on first use).
    parking: Option<(OwnedFd, OwnedFd)>,
}

/// Streams parked by [`PendingStreams::park`], in the order they were sent.
#[derive(Debug, Default)]
#[must_use = "parked streams must be unparked"]
pub struct Parked {
    keys: Vec<((ProcessRef, StreamKind), Instant)>,
}

fn parking_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socket::socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )?)
}

/// The streams of one new process, taken from the registry.
#[derive(Debug, Default)]
pub struct ProcessStreams {
    /// Stdin stream.
    pub stdin: Option<OwnedFd>,
    /// Stdout stream.
    pub stdout: Option<OwnedFd>,
    /// Stderr stream.
    pub stderr: Option<OwnedFd>,
    /// The TTY stream (with `terminal`).
    pub tty: Option<OwnedFd>,
}

fn kind_name(k: StreamKind) -> &'static str {
    match k {
        StreamKind::Stdin => "stdin",
        StreamKind::Stdout => "stdout",
        StreamKind::Stderr => "stderr",
        StreamKind::Tty => "tty",
    }
}

/// Describe a process for error messages.
pub fn describe(p: &ProcessRef) -> String {
    match &p.exec_id {
        Some(e) => format!("exec {e} of container {}", p.container_id),
        None => format!("container {}", p.container_id),
    }
}

impl PendingStreams {
    /// Whether a stream could be registered: errors on a duplicate or a full registry.
    pub fn check(&self, process: &ProcessRef, kind: StreamKind) -> Result<(), String> {
        if self.map.contains_key(&(process.clone(), kind)) {
            return Err(format!(
                "{} stream of {} is already open",
                kind_name(kind),
                describe(process)
            ));
        }
        if self.map.len() >= MAX_PENDING {
            return Err(format!(
                "too many pending stdio streams ({MAX_PENDING}); start their processes first"
            ));
        }
        Ok(())
    }

    /// Register a stream (see [`PendingStreams::check`]).
    pub fn register(
        &mut self,
        process: ProcessRef,
        kind: StreamKind,
        fd: OwnedFd,
        now: Instant,
    ) -> Result<(), String> {
        self.check(&process, kind)?;
        self.map.insert((process, kind), (fd, now));
        Ok(())
    }

    /// Take the streams `stdio` announces for `process`; errors naming the first missing one
    /// (the streams taken so far are closed).
    pub fn take(
        &mut self,
        process: &ProcessRef,
        stdio: &StdioSpec,
    ) -> Result<ProcessStreams, String> {
        let mut want = Vec::new();
        if stdio.terminal {
            want.push(StreamKind::Tty);
        } else {
            for (on, k) in [
                (stdio.stdin, StreamKind::Stdin),
                (stdio.stdout, StreamKind::Stdout),
                (stdio.stderr, StreamKind::Stderr),
            ] {
                if on {
                    want.push(k);
                }
            }
        }
        if let Some(missing) = want
            .iter()
            .find(|k| !self.map.contains_key(&(process.clone(), **k)))
        {
            return Err(format!(
                "stdio: the {} stream of {} was not opened (StreamHello) before the request",
                kind_name(*missing),
                describe(process)
            ));
        }
        let mut out = ProcessStreams::default();
        for k in want {
            let fd = self.map.remove(&(process.clone(), k)).map(|(fd, _)| fd);
            match k {
                StreamKind::Stdin => out.stdin = fd,
                StreamKind::Stdout => out.stdout = fd,
                StreamKind::Stderr => out.stderr = fd,
                StreamKind::Tty => out.tty = fd,
            }
        }
        Ok(out)
    }

    /// Move every pending stream out of the fd table (see the module doc). On failure the
    /// streams stay where they were (and are logged by the caller).
    pub fn park(&mut self) -> io::Result<Parked> {
        if self.map.is_empty() {
            return Ok(Parked::default());
        }
        if self.parking.is_none() {
            self.parking = Some(parking_pair()?);
        }
        let (tx, _) = self.parking.as_ref().expect("created above");
        let entries: Vec<_> = self.map.drain().collect();
        let raw: Vec<RawFd> = entries.iter().map(|(_, (fd, _))| fd.as_raw_fd()).collect();
        let sent = socket::sendmsg::<()>(
            tx.as_raw_fd(),
            &[IoSlice::new(b"p")],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        );
        match sent {
            Ok(_) => Ok(Parked {
                // Our copies close here; the queued message holds the streams.
                keys: entries.into_iter().map(|(k, (_, t))| (k, t)).collect(),
            }),
            Err(e) => {
                self.map.extend(entries);
                Err(e.into())
            }
        }
    }

    /// Take the streams of `parked` back (the counterpart of [`PendingStreams::park`]).
    pub fn unpark(&mut self, parked: Parked) -> io::Result<()> {
        if parked.keys.is_empty() {
            return Ok(());
        }
        let Some((_, rx)) = self.parking.as_ref() else {
            return Err(io::Error::other("no parked streams"));
        };
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_PENDING]);
        let msg = socket::recvmsg::<()>(
            rx.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let socket::ControlMessageOwned::ScmRights(got) = c {
                // SAFETY: fds just received with SCM_RIGHTS: ours alone.
                fds.extend(
                    got.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if fds.len() != parked.keys.len() {
            return Err(io::Error::other(format!(
                "{} parked streams, {} came back",
                parked.keys.len(),
                fds.len()
            )));
        }
        for ((key, since), fd) in parked.keys.into_iter().zip(fds) {
            self.map.insert(key, (fd, since));
        }
        Ok(())
    }

    /// Drop streams older than [`STREAM_TTL`]; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.map.len();
        self.map
            .retain(|_, (_, since)| now.duration_since(*since) < STREAM_TTL);
        before - self.map.len()
    }

    /// Number of pending streams.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when none is pending.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
    }

    fn pr(id: &str) -> ProcessRef {
        ProcessRef {
            container_id: id.into(),
            exec_id: None,
        }
    }

    #[test]
    fn streams_are_taken_by_spec_and_missing_ones_named() {
        let mut s = PendingStreams::default();
        let now = Instant::now();
        s.register(pr("c"), StreamKind::Stdout, fd(), now).unwrap();
        assert!(s.register(pr("c"), StreamKind::Stdout, fd(), now).is_err());
        let spec = StdioSpec {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let err = s.take(&pr("c"), &spec).unwrap_err();
        assert!(
            err.contains("stderr") && err.contains("container c"),
            "{err}"
        );
        let only_out = StdioSpec {
            stdout: true,
            ..Default::default()
        };
        let got = s.take(&pr("c"), &only_out).unwrap();
        assert!(got.stdout.is_some() && got.stdin.is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn parked_streams_leave_the_fd_table_and_come_back_working() {
        use std::io::{Read, Write};
        let mut s = PendingStreams::default();
        let now = Instant::now();
        let (mut host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        let guest = OwnedFd::from(guest);
        let raw = guest.as_raw_fd();
        let inode = |fd: i32| {
            // SAFETY: fstat fills a plain struct; an fd we do not own is only probed.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
        };
        let socket = inode(raw).unwrap();
        s.register(pr("a"), StreamKind::Stdout, guest, now).unwrap();
        s.register(pr("b"), StreamKind::Stdin, fd(), now).unwrap();
        let parked = s.park().unwrap();
        assert!(s.is_empty());
        // Other tests run on other threads and may reuse the number: compare the file, not
        // only whether the number is open.
        assert_ne!(
            inode(raw),
            Some(socket),
            "the parked stream is still in the fd table"
        );
        s.unpark(parked).unwrap();
        assert_eq!(s.len(), 2);
        let spec = StdioSpec {
            stdout: true,
            ..Default::default()
        };
        let got = s.take(&pr("a"), &spec).unwrap();
        let mut out = std::fs::File::from(got.stdout.unwrap());
        out.write_all(b"still connected").unwrap();
        drop(out);
        let mut text = String::new();
        host.read_to_string(&mut text).unwrap();
        assert_eq!(text, "still connected");
        // Nothing pending: nothing to park.
        s.map.clear();
        let parked = s.park().unwrap();
        s.unpark(parked).unwrap();
    }

    #[test]
    fn old_streams_expire_and_the_registry_is_bounded() {
        let mut s = PendingStreams::default();
        let t0 = Instant::now();
        for i in 0..MAX_PENDING {
            s.register(pr(&format!("c{i}")), StreamKind::Stdin, fd(), t0)
                .unwrap();
        }
        assert!(s.register(pr("x"), StreamKind::Stdin, fd(), t0).is_err());
        assert_eq!(s.expire(t0 + STREAM_TTL), MAX_PENDING);
        assert_eq!(s.len(), 0);
    }
}
