//! Giving a new container process its stdio without touching the container module: the agent
//! points its own fds 0/1/2 at the process's streams (or /dev/null) around the call that clones
//! the process (`container::create` / `container::exec`, whose clone inherits 0/1/2), then puts
//! its own back. The agent is single-threaded and logs through a separate fd, so nothing else
//! sees the swap.
//!
//! With a TTY the container module opens the pty inside the container and sends the master over
//! a "console socket": the agent listens on a short-lived Unix socket for that, and receives the
//! master fd once the create/exec call has returned (the message is already queued).

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

/// First fd number used for the saved copies of 0/1/2 while they are swapped.
const SAVE_MIN_FD: RawFd = 10;

/// Run `f` with fds 0/1/2 set to `fds` (None = `null`), restoring the caller's afterwards.
pub fn with_stdio<T>(
    fds: [Option<BorrowedFd<'_>>; 3],
    null: BorrowedFd<'_>,
    f: impl FnOnce() -> T,
) -> io::Result<T> {
    let mut saved: [Option<OwnedFd>; 3] = [None, None, None];
    for (i, slot) in saved.iter_mut().enumerate() {
        // SAFETY: F_DUPFD_CLOEXEC of fd i; a closed fd just fails.
        let d = unsafe { libc::fcntl(i as RawFd, libc::F_DUPFD_CLOEXEC, SAVE_MIN_FD) };
        if d >= 0 {
            // SAFETY: a fresh fd.
            *slot = Some(unsafe { OwnedFd::from_raw_fd(d) });
        }
    }
    let restore = |saved: &[Option<OwnedFd>; 3]| {
        for (i, s) in saved.iter().enumerate() {
            if let Some(s) = s {
                // SAFETY: dup2 onto our own stdio slot.
                unsafe { libc::dup2(s.as_raw_fd(), i as RawFd) };
            }
        }
    };
    for (i, fd) in fds.iter().enumerate() {
        let src = fd.unwrap_or(null);
        // SAFETY: dup2 onto our own stdio slot.
        if unsafe { libc::dup2(src.as_raw_fd(), i as RawFd) } < 0 {
            let e = io::Error::last_os_error();
            restore(&saved);
            return Err(e);
        }
    }
    let out = f();
    restore(&saved);
    Ok(out)
}

/// A console socket waiting for the pty master of one process.
#[derive(Debug)]
pub struct ConsoleSocket {
    fd: OwnedFd,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listen at `path` (short: sun_path holds 108 bytes).
    pub fn bind(path: &Path) -> io::Result<ConsoleSocket> {
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        let _ = std::fs::remove_file(path);
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        socket::listen(&fd, socket::Backlog::new(1).map_err(io::Error::from)?)?;
        Ok(ConsoleSocket {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The socket path (what the container module connects to).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Take the pty master the process sent (call after create/exec returned successfully).
    pub fn receive_master(&self) -> io::Result<OwnedFd> {
        // SAFETY: accept4 on our listening socket.
        let c = unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if c < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd.
        let conn = unsafe { OwnedFd::from_raw_fd(c) };
        let mut data = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut data)];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let msg = socket::recvmsg::<()>(
            conn.as_fd().as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        )?;
        for c in msg.cmsgs()? {
            if let socket::ControlMessageOwned::ScmRights(fds) = c {
                if let Some(&fd) = fds.first() {
                    for &extra in &fds[1..] {
                        // SAFETY: unexpected extra fds we own.
                        unsafe { libc::close(extra) };
                    }
                    // SAFETY: received fd, now ours.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Err(io::Error::other(
            "no pty master received on the console socket",
        ))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Open /dev/null read-write, close-on-exec.
pub fn open_null() -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    Ok(OwnedFd::from(f))
}

/// Make sure fds 0, 1 and 2 are open (the kernel leaves them closed when the initramfs has no
/// /dev/console), so that later sockets never land on them.
pub fn ensure_stdio_open() {
    for i in 0..3 {
        // SAFETY: F_GETFD probe.
        if unsafe { libc::fcntl(i, libc::F_GETFD) } < 0 {
            // SAFETY: opening "/" read-only returns the lowest free fd, which is `i`.
            let fd = unsafe { libc::open(c"/".as_ptr(), libc::O_RDONLY) };
            if fd >= 0 && fd != i {
                // SAFETY: move it onto i.
                unsafe {
                    libc::dup2(fd, i);
                    libc::close(fd);
                }
            }
        }
    }
}

/// Point fds 0/1/2 at `fd` (e.g. /dev/console once devtmpfs is mounted).
pub fn redirect_stdio(fd: BorrowedFd<'_>) {
    for i in 0..3 {
        // SAFETY: dup2 onto our own stdio slot.
        unsafe { libc::dup2(fd.as_raw_fd(), i) };
    }
}
