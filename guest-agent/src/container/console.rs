//! The container's terminal: a pty from the container's devpts whose slave becomes the process's
//! controlling terminal and stdio, and whose master is sent to the console socket with
//! SCM_RIGHTS (what runc's recvtty and containerd expect).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::stat::Mode;

use super::error::{ContainerError, Result};

/// Connect to the console socket (close-on-exec), in the caller, before clone.
pub(crate) fn connect(path: &Path) -> Result<OwnedFd> {
    let stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(ContainerError::io("connect to console socket", path))?;
    Ok(OwnedFd::from(stream))
}

/// Open a pty in the current mount namespace, make its slave the controlling terminal and stdio
/// of this process (which must be a session leader), send the master over `socket` and
/// optionally bind the slave over /dev/console.
pub(crate) fn setup(
    socket: RawFd,
    size: Option<(u16, u16)>,
    uid: u32,
    gid: u32,
    bind_console: bool,
) -> Result<()> {
    let master = open(
        "/dev/ptmx",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(ContainerError::sys("open /dev/ptmx"))?;
    let mfd = master.as_raw_fd();
    let mut unlock: libc::c_int = 0;
    let mut ptn: libc::c_uint = 0;
    // SAFETY: ioctls on a pty master with valid pointers.
    unsafe {
        if libc::ioctl(mfd, libc::TIOCSPTLCK, &mut unlock) < 0 {
            return Err(ContainerError::sys("unlock pty")(nix::Error::last()));
        }
        if libc::ioctl(mfd, libc::TIOCGPTN, &mut ptn) < 0 {
            return Err(ContainerError::sys("get pty number")(nix::Error::last()));
        }
    }
    // SAFETY: TIOCGPTPEER opens the slave of this master and returns a new fd.
    let sfd = unsafe {
        libc::ioctl(
            mfd,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    let slave = if sfd >= 0 {
        // SAFETY: a fresh fd.
        unsafe { OwnedFd::from_raw_fd(sfd) }
    } else {
        let path = format!("/dev/pts/{ptn}");
        open(
            path.as_str(),
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(ContainerError::sys(format!("open {path}")))?
    };
    let s = slave.as_raw_fd();
    // SAFETY: fchown and ioctls on our own fds.
    unsafe {
        libc::fchown(s, uid, gid);
        if let Some((rows, cols)) = size {
            let ws = libc::winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            libc::ioctl(s, libc::TIOCSWINSZ, &ws);
        }
        if libc::ioctl(s, libc::TIOCSCTTY, 0) < 0 {
            return Err(
                ContainerError::sys("make the pty the controlling terminal")(nix::Error::last()),
            );
        }
        for target in 0..3 {
            if libc::dup2(s, target) < 0 {
                return Err(ContainerError::sys("dup2 pty to stdio")(nix::Error::last()));
            }
        }
    }
    if bind_console {
        let pts = format!("/dev/pts/{ptn}");
        if Path::new("/dev/console").symlink_metadata().is_err() {
            let _ = std::fs::File::create("/dev/console");
        }
        // Best effort: /dev may be read-only or absent.
        let _ = nix::mount::mount(
            Some(pts.as_str()),
            "/dev/console",
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        );
    }
    send_fd(socket, mfd, b"/dev/ptmx")
}

/// Send `fd` with `name` as the data over a unix socket.
pub(crate) fn send_fd(socket: RawFd, fd: RawFd, name: &[u8]) -> Result<()> {
    let iov = [IoSlice::new(name)];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(socket, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None).map_err(
        ContainerError::sys("send the pty master to the console socket"),
    )?;
    Ok(())
}
