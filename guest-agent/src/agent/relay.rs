//! The TTY relay: bytes between a process's pty master (non-blocking, owned by the agent) and
//! its `Tty` stream connection, in both directions, driven by the poll loop. Each direction is
//! buffered up to [`BUF_CAP`]; a full buffer stops reading its source (back-pressure).
//!
//! The relay ends when the pty has no slave left (read gives EIO) and everything was sent, or
//! [`EXIT_GRACE`] after the process exited (a background process may keep the slave open).
//! Then the agent shuts down the stream's write side so the host sees end-of-file.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::sock;

/// Largest buffered amount per direction.
pub const BUF_CAP: usize = 64 * 1024;
/// How long output is still relayed after the process exited.
pub const EXIT_GRACE: Duration = Duration::from_secs(2);
/// The terminal's end-of-file character (VEOF, ^D), written for `CloseStdin`.
const VEOF: u8 = 4;

/// One pty master ↔ stream relay.
#[derive(Debug)]
pub struct Relay {
    /// The pty master (O_NONBLOCK).
    pub master: OwnedFd,
    /// The Tty stream.
    pub stream: OwnedFd,
    to_stream: Vec<u8>,
    to_master: Vec<u8>,
    master_open: bool,
    stream_in_open: bool,
    stream_out_ok: bool,
    exited_at: Option<Instant>,
}

impl Relay {
    /// Relay `master` (made non-blocking here) and `stream`.
    pub fn new(master: OwnedFd, stream: OwnedFd) -> io::Result<Relay> {
        // SAFETY: fcntl on our fd.
        unsafe {
            let fl = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
            if fl < 0 || libc::fcntl(master.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Relay {
            master,
            stream,
            to_stream: Vec::new(),
            to_master: Vec::new(),
            master_open: true,
            stream_in_open: true,
            stream_out_ok: true,
            exited_at: None,
        })
    }

    /// poll(2) events wanted on (master, stream); 0 = nothing to do on that side (the caller
    /// then leaves it out of the poll set, so a hung-up side cannot make poll spin).
    pub fn interest(&self) -> (i16, i16) {
        let mut m = 0;
        let mut s = 0;
        if self.master_open && self.to_stream.len() < BUF_CAP {
            m |= libc::POLLIN;
        }
        if self.master_open && !self.to_master.is_empty() {
            m |= libc::POLLOUT;
        }
        if self.stream_in_open && self.to_master.len() < BUF_CAP {
            s |= libc::POLLIN;
        }
        if !self.to_stream.is_empty() && self.stream_out_ok {
            s |= libc::POLLOUT;
        }
        (m, s)
    }

    /// Move whatever can move now, in both directions.
    pub fn pump(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        // pty → stream
        while self.master_open && self.to_stream.len() < BUF_CAP {
            // SAFETY: read into a valid buffer.
            let n =
                unsafe { libc::read(self.master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                if self.stream_out_ok {
                    self.to_stream.extend_from_slice(&buf[..n as usize]);
                }
                continue;
            }
            let e = io::Error::last_os_error();
            if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if n < 0 && e.kind() == io::ErrorKind::WouldBlock {
                break;
            }
            // EOF or EIO: no slave left.
            self.master_open = false;
        }
        if self.stream_out_ok && sock::flush(self.stream.as_fd(), &mut self.to_stream).is_err() {
            self.stream_out_ok = false;
            self.to_stream.clear();
        }
        // stream → pty
        while self.stream_in_open && self.to_master.len() < BUF_CAP {
            match sock::recv(self.stream.as_fd(), &mut buf) {
                Ok(Some(0)) | Err(_) => {
                    self.stream_in_open = false;
                }
                Ok(Some(n)) => self.to_master.extend_from_slice(&buf[..n]),
                Ok(None) => break,
            }
        }
        while !self.to_master.is_empty() && self.master_open {
            // SAFETY: write from a valid buffer.
            let n = unsafe {
                libc::write(
                    self.master.as_raw_fd(),
                    self.to_master.as_ptr().cast(),
                    self.to_master.len(),
                )
            };
            if n > 0 {
                self.to_master.drain(..n as usize);
                continue;
            }
            let e = io::Error::last_os_error();
            if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if n < 0 && e.kind() != io::ErrorKind::WouldBlock {
                self.to_master.clear();
            }
            break;
        }
    }

    /// Queue an end-of-file for the terminal's reader (`CloseStdin`).
    pub fn send_eof(&mut self) {
        self.to_master.push(VEOF);
    }

    /// Set the window size.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize on our pty master.
        if unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The process exited: the relay may end after [`EXIT_GRACE`].
    pub fn process_exited(&mut self, now: Instant) {
        self.exited_at.get_or_insert(now);
    }

    /// True when the relay is over (then drop it after [`Relay::finish`]).
    pub fn is_done(&self, now: Instant) -> bool {
        let drained = self.to_stream.is_empty() || !self.stream_out_ok;
        (!self.master_open && drained)
            || self
                .exited_at
                .is_some_and(|t| now.duration_since(t) >= EXIT_GRACE)
    }

    /// Tell the host no more output comes.
    pub fn finish(&mut self) {
        let _ = sock::flush(self.stream.as_fd(), &mut self.to_stream);
        // SAFETY: shutdown on our socket.
        unsafe { libc::shutdown(self.stream.as_raw_fd(), libc::SHUT_WR) };
    }
}
