//! The receiving end of a console socket: the container's init (or an exec'd process) connects
//! to it and sends the pty master over SCM_RIGHTS.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use super::error::{Result, RuntimeError};

/// A listening console socket; the socket file is removed when this is dropped.
#[derive(Debug)]
pub struct ConsoleListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleListener {
    /// Listen on `path`.
    pub fn bind(path: &Path) -> Result<Self> {
        let listener = UnixListener::bind(path)
            .map_err(|e| RuntimeError::io("bind console socket", path, e))?;
        Ok(ConsoleListener {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Listen on a fresh private path in the temporary directory (mode 0600 parent-less file:
    /// only root can connect to it in /tmp's sticky dir, and it is removed after use).
    pub fn bind_private() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "kvmbox-console-{}-{nanos}.sock",
            std::process::id()
        ));
        let listener = Self::bind(&path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| RuntimeError::io("chmod console socket", &path, e))?;
        Ok(listener)
    }

    /// The socket path to hand to the container.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accept one connection and receive the pty master it sends, waiting at most `timeout`.
    pub fn receive_master(&self, timeout: Duration) -> Result<OwnedFd> {
        let err = |msg: String| {
            RuntimeError::Invalid(format!("console socket {}: {msg}", self.path.display()))
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(n) if n > 0 => {}
            Ok(_) => return Err(err("no connection from the container".into())),
            Err(e) => return Err(err(format!("poll: {e}"))),
        }
        let (stream, _) = self
            .listener
            .accept()
            .map_err(|e| err(format!("accept: {e}")))?;
        receive_fd(stream.as_raw_fd()).map_err(err)
    }
}

impl Drop for ConsoleListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Receive one fd sent with SCM_RIGHTS on a connected unix stream socket.
pub fn receive_fd(sock: std::os::fd::RawFd) -> std::result::Result<OwnedFd, String> {
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| format!("recvmsg: {e}"))?;
    let mut received: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs().map_err(|e| format!("control message: {e}"))? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just installed these fds in our table; we own them.
            received.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if received.is_empty() {
        return Err("the container sent no file descriptor".into());
    }
    Ok(received.swap_remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage};
    use std::io::{IoSlice, Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn receives_an_fd_and_cleans_up() {
        let listener = ConsoleListener::bind_private().unwrap();
        let path = listener.path().to_path_buf();
        let (mut r, mut w) = UnixStream::pair().unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let fds = [w.as_raw_fd()];
        sendmsg::<()>(
            client.as_raw_fd(),
            &[IoSlice::new(b"/dev/ptmx")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let got = listener.receive_master(Duration::from_secs(5)).unwrap();
        let mut got = std::fs::File::from(got);
        got.write_all(b"hi").unwrap();
        drop(got);
        w.flush().unwrap();
        let mut buf = [0u8; 2];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        drop(listener);
        assert!(!path.exists());
    }

    #[test]
    fn times_out_without_a_peer() {
        let listener = ConsoleListener::bind_private().unwrap();
        let err = listener
            .receive_master(Duration::from_millis(10))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no connection"), "{err}");
    }
}
