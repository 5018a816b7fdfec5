//! The agent's listening sockets: AF_VSOCK on the control and stdio ports (in the VM), or one
//! Unix socket (`--listen-unix`, the test transport) whose connections start with the VMM's
//! hybrid-vsock handshake `CONNECT <port>\n`, answered with `OK <port>\n`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr, VsockAddr};

/// Longest accepted handshake line.
pub const MAX_HANDSHAKE: usize = 64;

/// What a listener's connections are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenKind {
    /// A vsock port: connections are already on that port.
    Vsock(u32),
    /// The Unix test socket: connections name their port in a handshake line.
    Unix,
}

/// A listening socket (non-blocking, close-on-exec).
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub fd: OwnedFd,
    /// Its kind.
    pub kind: ListenKind,
}

fn flags() -> SockFlag {
    SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK
}

impl Listener {
    /// Listen on vsock `port` of any local CID.
    pub fn vsock(port: u32) -> io::Result<Listener> {
        let fd = socket::socket(AddressFamily::Vsock, SockType::Stream, flags(), None)?;
        let addr = VsockAddr::new(libc::VMADDR_CID_ANY, port);
        socket::bind(fd.as_raw_fd(), &addr)?;
        socket::listen(&fd, socket::Backlog::new(64).map_err(io::Error::from)?)?;
        Ok(Listener {
            fd,
            kind: ListenKind::Vsock(port),
        })
    }

    /// Listen on the Unix socket `path` (a stale socket file is replaced).
    pub fn unix(path: &Path) -> io::Result<Listener> {
        let fd = socket::socket(AddressFamily::Unix, SockType::Stream, flags(), None)?;
        let _ = std::fs::remove_file(path);
        let addr = UnixAddr::new(path)?;
        socket::bind(fd.as_raw_fd(), &addr)?;
        socket::listen(&fd, socket::Backlog::new(64).map_err(io::Error::from)?)?;
        Ok(Listener {
            fd,
            kind: ListenKind::Unix,
        })
    }

    /// Accept one connection (blocking mode, close-on-exec); `Ok(None)` when none is pending.
    pub fn accept(&self) -> io::Result<Option<OwnedFd>> {
        // SAFETY: accept4 on our listening socket without an address buffer.
        let fd = unsafe {
            libc::accept4(
                self.fd.as_fd().as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                // A connection that died before accept, or fd exhaustion: not fatal.
                _ => Err(e),
            };
        }
        // SAFETY: a fresh fd from accept4.
        Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

/// Parse a handshake line `CONNECT <port>` (without the newline).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_parse() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 1025\r"), Some(1025));
        assert_eq!(parse_connect(b"CONNECT x"), None);
        assert_eq!(parse_connect(b"HELLO 1"), None);
    }

    #[test]
    fn unix_listener_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let l = Listener::unix(&path).unwrap();
        assert!(l.accept().unwrap().is_none());
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert!(l.accept().unwrap().is_some());
    }
}
