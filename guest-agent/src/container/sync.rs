//! The parent/child synchronisation channel: a `SOCK_SEQPACKET` socketpair carrying small tagged
//! messages (one message per `send`, so no framing is needed).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::error::{ContainerError, Result};

/// Parent → child: go ahead (payload: the OCI state JSON for in-container hooks, may be empty).
pub(crate) const MSG_GO: u8 = b'G';
/// Child → parent: setup done; the process is about to wait on the exec FIFO or exec.
pub(crate) const MSG_READY: u8 = b'R';
/// Child → parent: setup failed (payload: the error message).
pub(crate) const MSG_ERROR: u8 = b'E';

/// One end of the channel.
#[derive(Debug)]
pub(crate) struct Channel {
    fd: OwnedFd,
}

/// Create a connected pair (close-on-exec): (parent end, child end).
pub(crate) fn pair() -> Result<(Channel, Channel)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array on success.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(ContainerError::sys("socketpair")(nix::Error::last()));
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe {
        Ok((
            Channel {
                fd: OwnedFd::from_raw_fd(fds[0]),
            },
            Channel {
                fd: OwnedFd::from_raw_fd(fds[1]),
            },
        ))
    }
}

impl Channel {
    /// Take the fd back.
    pub(crate) fn into_owned(self) -> OwnedFd {
        self.fd
    }

    /// Wrap an existing fd.
    pub(crate) fn from_owned(fd: OwnedFd) -> Self {
        Channel { fd }
    }

    /// Send one message; never raises SIGPIPE.
    pub(crate) fn send(&self, tag: u8, payload: &[u8]) -> Result<()> {
        let mut buf = Vec::with_capacity(payload.len() + 1);
        buf.push(tag);
        buf.extend_from_slice(payload);
        loop {
            // SAFETY: buf is a valid readable buffer of buf.len() bytes.
            let rc = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let err = nix::Error::last();
            if err != nix::Error::EINTR {
                return Err(ContainerError::sys("sync channel send")(err));
            }
        }
    }

    /// Receive one message; `None` at end of stream (the peer closed or exec'd).
    pub(crate) fn recv(&self) -> Result<Option<(u8, Vec<u8>)>> {
        let fd = self.fd.as_raw_fd();
        // Peek the real size of the next message first (MSG_TRUNC reports it).
        let size = loop {
            // SAFETY: a zero-length peek with a null buffer is allowed with MSG_TRUNC.
            let rc = unsafe {
                libc::recv(
                    fd,
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_PEEK | libc::MSG_TRUNC,
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let err = nix::Error::last();
            if err == nix::Error::ECONNRESET {
                return Ok(None);
            }
            if err != nix::Error::EINTR {
                return Err(ContainerError::sys("sync channel receive")(err));
            }
        };
        let mut buf = vec![0u8; size.max(1)];
        let n = loop {
            // SAFETY: buf is a valid writable buffer of buf.len() bytes.
            let rc = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if rc >= 0 {
                break rc as usize;
            }
            let err = nix::Error::last();
            if err == nix::Error::ECONNRESET {
                return Ok(None);
            }
            if err != nix::Error::EINTR {
                return Err(ContainerError::sys("sync channel receive")(err));
            }
        };
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        let tag = buf.remove(0);
        Ok(Some((tag, buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_boundaries_and_eof_is_none() {
        let (a, b) = pair().unwrap();
        a.send(MSG_GO, b"{\"id\":\"x\"}").unwrap();
        a.send(MSG_READY, b"").unwrap();
        let big = vec![7u8; 100_000];
        a.send(MSG_ERROR, &big).unwrap();
        assert_eq!(
            b.recv().unwrap(),
            Some((MSG_GO, b"{\"id\":\"x\"}".to_vec()))
        );
        assert_eq!(b.recv().unwrap(), Some((MSG_READY, Vec::new())));
        assert_eq!(b.recv().unwrap(), Some((MSG_ERROR, big)));
        drop(a);
        assert_eq!(b.recv().unwrap(), None);
    }
}
