//! A process's standard streams as containerd hands them over: FIFO paths (or `file://` URIs)
//! for stdin, stdout and stderr, or a terminal.
//!
//! Without a terminal the container process writes straight into the stdout/stderr FIFOs (the
//! shim opens them, once the client's read end is open, and the process inherits them); the
//! shim also holds a read end open so that a client going away (`ctr run -d`) never turns the
//! process's writes into SIGPIPE. Stdin is a pipe the shim feeds from the stdin FIFO, so CloseIO
//! can close it. With a terminal, the pty master arrives on a console socket and the shim copies
//! between it and the FIFOs; the process's exit is reported once its output is copied out.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use guest_agent::protocol::{ProcessRef, Request};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use std::os::unix::net::UnixStream;

use crate::runtime::vm::stdio::ProcessStreams;
use crate::runtime::vm::{AgentClient, AgentTarget};

use super::error::{Result, ShimError};
use super::kvmbox_cli::ChildStdio;

/// How long Create waits for the client to open the read end of an output FIFO.
const READER_WAIT: Duration = Duration::from_secs(5);

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
    keep_open: Vec<File>,
    /// Disconnects once a terminal's output (or a guest process's output) has been copied
    /// out.
    output_done: Option<mpsc::Receiver<()>>,
    /// A guest process's TTY: resized through the agent (vm exec).
    guest_tty: Option<(AgentTarget, ProcessRef)>,
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

    /// Relay the streams of a process running in a microVM (vm exec) to and from its FIFOs,
    /// from threads of the shim: output streams into the stdout/stderr FIFOs (their end is
    /// what [`ProcessIo::take_output_waiter`] waits for), the stdin FIFO into the stdin or TTY
    /// stream (closing it is stdin EOF in the guest).
    pub fn open_guest(
        streams: ProcessStreams,
        paths: &StdioPaths,
        target: &AgentTarget,
        process: &ProcessRef,
    ) -> Result<ProcessIo> {
        let mut io = ProcessIo::default();
        let (done, waiter) = mpsc::channel::<()>();
        let clone = |s: &UnixStream| {
            s.try_clone()
                .map_err(|e| ShimError::io("dup guest stream for", &paths.stdout, e))
        };
        let (input, outputs) = match streams.tty {
            Some(tty) => {
                io.guest_tty = Some((target.clone(), process.clone()));
                (Some(clone(&tty)?), vec![(tty, paths.stdout.as_str())])
            }
            None => {
                let outputs = [
                    (streams.stdout, paths.stdout.as_str()),
                    (streams.stderr, paths.stderr.as_str()),
                ]
                .into_iter()
                .filter_map(|(s, p)| Some((s?, p)))
                .collect();
                (streams.stdin, outputs)
            }
        };
        for (stream, path) in outputs {
            let sink: Box<dyn Write + Send> = match io.open_output(path)? {
                Some(file) => Box::new(file),
                // Nobody wants it: drain it so the guest process never blocks on it.
                None => Box::new(std::io::sink()),
            };
            let done = done.clone();
            thread::spawn(move || {
                let (mut stream, mut sink) = (stream, sink);
                let _ = std::io::copy(&mut stream, &mut sink);
                drop(done);
            });
        }
        drop(done);
        io.output_done = Some(waiter);
        if let (Some(input), false) = (input, paths.stdin.is_empty()) {
            *io.stdin.lock().unwrap() = Some(File::from(OwnedFd::from(input)));
            copy_stdin(paths.stdin.clone(), Arc::clone(&io.stdin));
        }
        // Without a stdin FIFO the stream is dropped here: EOF in the guest.
        Ok(io)
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
            let (done, waiter) = mpsc::channel::<()>();
            thread::spawn(move || {
                let mut out = out;
                // EIO once every slave fd is closed: the process is gone.
                let _ = std::io::copy(&mut from, &mut out);
                drop(done);
            });
            self.output_done = Some(waiter);
        }
        if !paths.stdin.is_empty() {
            *self.stdin.lock().unwrap() = Some(clone(&master)?);
            copy_stdin(paths.stdin.clone(), Arc::clone(&self.stdin));
        }
        self.console = Some(master);
        Ok(())
    }

    /// For a terminal process, what disconnects once all its output has been copied to the
    /// client: its exit must be reported only then, or a client that stops reading at the
    /// exit loses the tail of the output.
    pub fn take_output_waiter(&mut self) -> Option<mpsc::Receiver<()>> {
        self.output_done.take()
    }

    /// Close the process's stdin (CloseIO): it reads EOF once buffered data is consumed.
    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap().take();
    }

    /// Set the terminal size of a terminal process.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        if let Some((target, process)) = &self.guest_tty {
            let request = Request::ResizeTty {
                process: process.clone(),
                rows: height.min(u16::MAX as u32) as u16,
                cols: width.min(u16::MAX as u32) as u16,
            };
            return AgentClient::connect(target)
                .and_then(|mut c| c.request_ok(&request))
                .map_err(|e| ShimError::FailedPrecondition(format!("resize: {e}")));
        }
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
        // Wait (bounded) for the client's read end: a client that opens it only after the
        // process's writes and exit would block in open() and lose the output. The write end
        // then opens without waiting; the shim's own read end keeps writes from failing once
        // the client goes away.
        let deadline = Instant::now() + READER_WAIT;
        let mut kept = false;
        let writer = loop {
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
            {
                Ok(writer) => break writer,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(2));
                }
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    // No client reader: open our read end first so the write end can open.
                    self.keep_open.push(open_reader(path)?);
                    kept = true;
                    break OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(path)
                        .map_err(|e| ShimError::io("open stdio fifo", path, e))?;
                }
                Err(e) => return Err(ShimError::io("open stdio fifo", path, e)),
            }
        };
        if !kept {
            self.keep_open.push(open_reader(path)?);
        }
        fcntl(&writer, FcntlArg::F_SETFL(OFlag::empty()))
            .map_err(|e| ShimError::io("clear O_NONBLOCK on", path, e.into()))?;
        Ok(Some(writer))
    }
}

/// A non-blocking read end of the FIFO at `path` (never waits for a writer).
fn open_reader(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| ShimError::io("open stdio fifo", path, e))
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
    fn output_fifo_delivers_data_to_the_client_reader() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        mkfifo(&fifo);
        let paths = StdioPaths {
            stdout: fifo.to_string_lossy().into_owned(),
            ..Default::default()
        };
        // The client's read end, as ctr opens it before Create.
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let (io, child) = ProcessIo::open(&paths).unwrap();
        fcntl(&reader, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
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
