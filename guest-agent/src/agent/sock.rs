//! Non-blocking socket I/O on blocking sockets.
//!
//! Stream sockets stay in blocking mode (O_NONBLOCK belongs to the open file description, and a
//! stdio stream is handed to the container process as its fd 0/1/2, which must block); the agent
//! uses `MSG_DONTWAIT` per call instead, so it never blocks on a peer.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Receive up to `buf.len()` bytes; `Ok(None)` when nothing is available, `Ok(Some(0))` at EOF.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: valid buffer and length.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Send as much of `data` as fits now; returns the number of bytes sent (0 = would block).
pub fn send(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: valid buffer and length.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(e),
        }
    }
}

/// Send the front of `out` and drop what was sent. `Ok(true)` when `out` is empty afterwards.
pub fn flush(fd: BorrowedFd<'_>, out: &mut Vec<u8>) -> io::Result<bool> {
    while !out.is_empty() {
        let n = send(fd, out)?;
        if n == 0 {
            return Ok(false);
        }
        out.drain(..n);
    }
    Ok(true)
}
