//! A process's standard streams as containerd hands them over: FIFO paths (or `file://` URIs)
//! for stdin, stdout and stderr, or a terminal.
//!
//! Without a terminal the container process writes straight into the stdout/stderr FIFOs (the
//! shim opens them and the process inherits them); the shim also holds a read end open so that
//! a client going away (`ctr run -d`) never turns the process's writes into SIGPIPE. Stdin is a
//! pipe the shim feeds from the stdin FIFO, so CloseIO can close it. With a terminal, the pty
//! master arrives on a console socket and the shim copies between it and the FIFOs.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use super::error::{Result, ShimError};
use super::kvmbox_cli::ChildStdio;

/// The stdio paths of one process, as in containerd's requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// Stdin FIFO ("" for none).
    pub stdin: String,
    /// Stdout FIFO or `file://` URI ("" for none).
    pub stdout: String,
    /// Stderr FIFO or `file://` URI ("" for none).
    pub stderr: String,
    /// Whether the process runs on a terminal.
    pub terminal: bool,
}

/// The shim's side of a process's stdio, alive until the process is deleted.
#[derive(Debug, Default)]
pub struct ProcessIo {
    /// Where stdin data goes (a pipe to the process, or the pty master); `None` once closed.
    stdin: Arc<Mutex<Option<File>>>,
    /// The pty master of a terminal process.
    console: Option<File>,
    /// Read ends of the output FIFOs, held so that writes never fail for lack of a reader.
    _keep_open: Vec<File>,
}

impl ProcessIo {
    /// Open the streams for a process about to be created: the returned [`ChildStdio`] is what
    /// the `kvmbox` invocation (and so the process) inherits; a terminal process gets none and
    /// its pty master must be passed to [`ProcessIo::attach_console`].
    pub fn open(paths: &StdioPaths) -> Result<(ProcessIo, ChildStdio)> {
        let mut io = ProcessIo::default();
        let mut child = ChildStdio::default();
        if paths.terminal {
            return Ok((io, child));
        }
        child.stdout = io.open_output(&paths.stdout)?.map(OwnedFd::from);
        child.stderr = io.open_output(&paths.stderr)?.map(OwnedFd::from);
        if !paths.stdin.is_empty() {
            let (reader, writer) = nix::unistd::pipe()
                .map_err(|e| ShimError::io("pipe for stdin", &paths.stdin, e.into()))?;
            *io.stdin.lock().unwrap() = Some(File::from(writer));
            copy_stdin(paths.stdin.clone(), Arc::clone(&io.stdin));
            child.stdin = Some(reader);
        }
        Ok((io, child))
    }

    /// Connect a terminal process's pty master to its FIFOs.
    pub fn attach_console(&mut self, master: OwnedFd, paths: &StdioPaths) -> Result<()> {
        let master = File::from(master);
        let clone = |m: &File| {
            m.try_clone()
                .map_err(|e| ShimError::io("dup pty master for", &paths.stdout, e))
        };
        if let Some(out) = self.open_output(&paths.stdout)? {
            let mut from = clone(&master)?;
            thread::spawn(move || {
                let mut out = out;
                // EIO once every slave fd is closed: the process is gone.
                let _ = std::io::copy(&mut from, &mut out);
            });
        }
        if !paths.stdin.is_empty() {
            *self.stdin.lock().unwrap() = Some(clone(&master)?);
            copy_stdin(paths.stdin.clone(), Arc::clone(&self.stdin));
        }
        self.console = Some(master);
        Ok(())
    }

    /// Close the process's stdin (CloseIO): it reads EOF once buffered data is consumed.
    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap().take();
    }

    /// Set the terminal size of a terminal process.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let Some(console) = &self.console else {
            return Err(ShimError::FailedPrecondition(
                "the process has no terminal".into(),
            ));
        };
        let size = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer; the fd is owned by `console`.
        let rc = unsafe { libc::ioctl(console.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc < 0 {
            return Err(ShimError::io(
                "resize pty",
                "pty master",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Open an output stream for writing: a FIFO (plain path) or a file (`file://`).
    fn open_output(&mut self, uri: &str) -> Result<Option<File>> {
        if uri.is_empty() {
            return Ok(None);
        }
        if let Some(rest) = uri.strip_prefix("binary://") {
            return Err(ShimError::Unimplemented(format!(
                "logging binary {rest:?}: binary:// stdio is not supported by kvmbox yet"
            )));
        }
        if let Some(path) = uri.strip_prefix("file://") {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| ShimError::io("open log file", path, e))?;
            return Ok(Some(file));
        }
        let path = Path::new(uri);
        let is_fifo = std::fs::metadata(path)
            .map_err(|e| ShimError::io("stat stdio fifo", path, e))?
            .file_type()
            .is_fifo();
        if !is_fifo {
            let file = OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| ShimError::io("open stdio file", path, e))?;
            return Ok(Some(file));
        }
        // A non-blocking read end never waits for a writer; with it open, the write end
        // opens at once too.
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| ShimError::io("open stdio fifo", path, e))?;
        let writer = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| ShimError::io("open stdio fifo", path, e))?;
        fcntl(&writer, FcntlArg::F_SETFL(OFlag::empty()))
            .map_err(|e| ShimError::io("clear O_NONBLOCK on", path, e.into()))?;
        self._keep_open.push(reader);
        Ok(Some(writer))
    }
}

/// Copy the stdin FIFO into `sink` until EOF, then close `sink`. Opening the FIFO waits for
/// the client's write end, so this runs on its own thread.
fn copy_stdin(fifo: String, sink: Arc<Mutex<Option<File>>>) {
    thread::spawn(move || {
        let Ok(mut source) = File::open(&fifo) else {
            sink.lock().unwrap().take();
            return;
        };
        let mut buf = [0u8; 32 * 1024];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut guard = sink.lock().unwrap();
            let Some(out) = guard.as_mut() else { return };
            if out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        sink.lock().unwrap().take();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    #[test]
    fn output_fifo_opens_without_a_reader_and_delivers_data() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        mkfifo(&fifo);
        let paths = StdioPaths {
            stdout: fifo.to_string_lossy().into_owned(),
            ..Default::default()
        };
        let (io, child) = ProcessIo::open(&paths).unwrap();
        let mut reader = File::open(&fifo).unwrap();
        let mut writer = File::from(child.stdout.unwrap());
        writer.write_all(b"hello").unwrap();
        drop(writer);
        let mut buf = [0u8; 5];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(child.stdin.is_none() && child.stderr.is_none());
        drop(io);
    }

    #[test]
    fn stdin_is_fed_from_the_fifo_and_close_io_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("in");
        mkfifo(&fifo);
        let paths = StdioPaths {
            stdin: fifo.to_string_lossy().into_owned(),
            ..Default::default()
        };
        let (io, child) = ProcessIo::open(&paths).unwrap();
        let mut client = OpenOptions::new().write(true).open(&fifo).unwrap();
        client.write_all(b"abc").unwrap();
        let mut stdin = File::from(child.stdin.unwrap());
        let mut buf = [0u8; 3];
        stdin.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"abc");
        io.close_stdin();
        let mut rest = Vec::new();
        stdin.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn binary_logging_is_refused_and_resize_needs_a_terminal() {
        let paths = StdioPaths {
            stdout: "binary:///usr/bin/logger".into(),
            ..Default::default()
        };
        let err = ProcessIo::open(&paths).unwrap_err().to_string();
        assert!(err.contains("binary:// stdio is not supported"), "{err}");
        let io = ProcessIo::default();
        assert!(io.resize(80, 24).is_err());
    }
}
