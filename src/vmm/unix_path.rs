//! Unix socket addresses for any path length. `sun_path` holds 107 bytes, and a VM's vsock
//! socket lives in its container's state directory, whose path grows with `--root` and the
//! container id (CRI ids alone are 64 characters). A longer path is reached through
//! `/proc/self/fd/<fd of its directory>/<name>`, which the kernel resolves like any other path,
//! so the socket stays where the caller put it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The longest path a `sockaddr_un` holds (108 bytes with the NUL).
pub const SUN_PATH_MAX: usize = 107;

/// A socket path that fits in `sun_path`, with the directory fd that keeps it valid (when the
/// original path did not fit). Use it only while this value lives.
#[derive(Debug)]
pub struct SocketAddrPath {
    path: PathBuf,
    _dir: Option<File>,
}

impl SocketAddrPath {
    /// `path` itself when it fits; otherwise `/proc/self/fd/N/<file name>` for an `O_PATH` fd
    /// of its directory. Fails when the directory cannot be opened or the file name alone is
    /// too long.
    pub fn new(path: &Path) -> io::Result<Self> {
        if path.as_os_str().len() <= SUN_PATH_MAX {
            return Ok(SocketAddrPath {
                path: path.to_path_buf(),
                _dir: None,
            });
        }
        let too_long = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket path {} is too long", path.display()),
            )
        };
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(too_long());
        };
        let dir = open_path(dir)?;
        let short = Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        if short.as_os_str().len() > SUN_PATH_MAX {
            return Err(too_long());
        }
        Ok(SocketAddrPath {
            path: short,
            _dir: Some(dir),
        })
    }

    /// The path to give to bind/connect.
    pub fn as_path(&self) -> &Path {
        &self.path
    }
}

/// `O_PATH | O_DIRECTORY | O_CLOEXEC` open of `dir`.
fn open_path(dir: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", dir.display())))
}

/// `UnixListener::bind` for a path of any length.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    UnixListener::bind(SocketAddrPath::new(path)?.as_path())
}

/// `UnixStream::connect` for a path of any length.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    UnixStream::connect(SocketAddrPath::new(path)?.as_path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A directory whose socket path is longer than `sun_path`.
    fn deep_dir(root: &Path) -> PathBuf {
        let dir = root.join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn short_paths_are_used_as_they_are() {
        let p = Path::new("/run/x/vsock.sock");
        assert_eq!(SocketAddrPath::new(p).unwrap().as_path(), p);
    }

    #[test]
    fn long_paths_bind_and_connect_in_their_own_directory() {
        let root = tempfile::tempdir().unwrap();
        let sock = deep_dir(root.path()).join("vsock.sock");
        assert!(sock.as_os_str().len() > SUN_PATH_MAX);
        // The plain calls fail on such a path.
        assert!(UnixListener::bind(&sock).is_err());
        let listener = bind(&sock).unwrap();
        assert!(sock.exists(), "the socket is where the caller asked");
        let mut client = connect(&sock).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn missing_directory_and_overlong_names_are_errors() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("c".repeat(120)).join("s.sock");
        let e = connect(&missing).unwrap_err();
        assert!(e.to_string().contains("open "), "{e}");
        let name = root.path().join("n".repeat(120));
        let e = bind(&name).unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
    }
}
