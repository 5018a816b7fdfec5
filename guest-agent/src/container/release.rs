//! `release`: the `start` step. Opens the exec FIFO for reading (which lets the init's blocking
//! open for writing complete) and reads its byte, watching a pidfd of the init so that a dead
//! init is an error instead of a hang.

use std::os::fd::AsRawFd;
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use super::error::{ContainerError, Result};
use super::hooks::pidfd_open;

/// See [`super::release`].
pub(crate) fn release(fifo: &Path, init_pid: i32) -> Result<()> {
    let pidfd = pidfd_open(init_pid).ok_or(ContainerError::NotRunning(init_pid))?;
    let f = open(
        fifo,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(ContainerError::sys(format!(
        "open exec fifo {}",
        fifo.display()
    )))?;
    let try_read = || -> Result<Option<bool>> {
        let mut b = [0u8; 1];
        match nix::unistd::read(&f, &mut b) {
            Ok(1) => Ok(Some(true)),
            Ok(_) => Ok(Some(false)),
            Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => Ok(None),
            Err(e) => Err(ContainerError::sys(format!(
                "read exec fifo {}",
                fifo.display()
            ))(e)),
        }
    };
    loop {
        let mut fds = [
            libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let err = nix::Error::last();
            if err == nix::Error::EINTR {
                continue;
            }
            return Err(ContainerError::sys("poll exec fifo")(err));
        }
        if fds[0].revents != 0 {
            match try_read()? {
                Some(true) => return Ok(()),
                // The writer closed without writing: the init died.
                Some(false) => return Err(ContainerError::NotRunning(init_pid)),
                None => {}
            }
        }
        if fds[1].revents != 0 {
            // Exited: a byte written just before exiting still counts.
            return match try_read()? {
                Some(true) => Ok(()),
                _ => Err(ContainerError::NotRunning(init_pid)),
            };
        }
    }
}
