//! Stdio of guest processes on the host: the agent's stream connections, the threads copying
//! them to and from the host side (our stdio or a host pty), the forked relay process that
//! outlives `create`/`exec -d`, and window sizes (SIGWINCH → ResizeTty).

use std::fs::File;
use std::io::{IoSlice, IsTerminal, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use guest_agent::protocol::{ProcessRef, Request, StdioSpec, StreamKind};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

use super::client::{open_stream, AgentClient, AgentError, AgentTarget};

/// The stream connections of one guest process.
#[derive(Debug)]
pub struct ProcessStreams {
    /// What the agent is told to expect.
    pub spec: StdioSpec,
    /// The TTY stream (both directions), when `spec.terminal`.
    pub tty: Option<UnixStream>,
    /// Host → process.
    pub stdin: Option<UnixStream>,
    /// Process → host.
    pub stdout: Option<UnixStream>,
    /// Process → host.
    pub stderr: Option<UnixStream>,
}

impl ProcessStreams {
    /// Open the streams of `process` (one TTY stream, or stdin, stdout and stderr) before the
    /// request that starts it.
    pub fn open(
        target: &AgentTarget,
        process: &ProcessRef,
        terminal: bool,
    ) -> Result<ProcessStreams, AgentError> {
        if terminal {
            return Ok(ProcessStreams {
                spec: StdioSpec {
                    terminal: true,
                    ..StdioSpec::default()
                },
                tty: Some(open_stream(target, process, StreamKind::Tty)?),
                stdin: None,
                stdout: None,
                stderr: None,
            });
        }
        // Three guest round trips in parallel (each costs a vsock connection in a slow guest).
        // The threads are joined here: a caller that forks afterwards is single-threaded again.
        let (stdin, stdout, stderr) = std::thread::scope(|s| {
            let open = |kind| s.spawn(move || open_stream(target, process, kind));
            let (i, o, e) = (
                open(StreamKind::Stdin),
                open(StreamKind::Stdout),
                open(StreamKind::Stderr),
            );
            let join = |h: std::thread::ScopedJoinHandle<'_, Result<UnixStream, AgentError>>| {
                h.join().unwrap_or_else(|_| {
                    Err(AgentError::Unexpected("stream opener panicked".into()))
                })
            };
            (join(i), join(o), join(e))
        });
        Ok(ProcessStreams {
            spec: StdioSpec {
                terminal: false,
                stdin: true,
                stdout: true,
                stderr: true,
            },
            tty: None,
            stdin: Some(stdin?),
            stdout: Some(stdout?),
            stderr: Some(stderr?),
        })
    }

    /// No streams (the process's stdio is relayed elsewhere, e.g. by a forked relay).
    pub fn none() -> ProcessStreams {
        ProcessStreams {
            spec: StdioSpec::default(),
            tty: None,
            stdin: None,
            stdout: None,
            stderr: None,
        }
    }

    /// Raw fds of the open streams (kept open in a forked relay).
    fn raw_fds(&self) -> Vec<RawFd> {
        [&self.tty, &self.stdin, &self.stdout, &self.stderr]
            .into_iter()
            .flatten()
            .map(|s| s.as_raw_fd())
            .collect()
    }
}

/// The host side of a process's stdio.
#[derive(Debug)]
pub enum HostEnd {
    /// Our own fds 0, 1 and 2.
    Stdio,
    /// The slave of a host pty (its master went to a console socket).
    PtySlave(File),
    /// Three files (e.g. pipes).
    Files {
        /// Read for the process's stdin.
        stdin: File,
        /// Receives its stdout (or the TTY's output).
        stdout: File,
        /// Receives its stderr.
        stderr: File,
    },
}

impl HostEnd {
    /// (input, output, error output) writers for the copy threads.
    #[allow(clippy::type_complexity)]
    fn split(
        &self,
    ) -> std::io::Result<(
        Box<dyn Read + Send>,
        Box<dyn Write + Send>,
        Box<dyn Write + Send>,
    )> {
        Ok(match self {
            HostEnd::Stdio => (
                Box::new(std::io::stdin()),
                Box::new(std::io::stdout()),
                Box::new(std::io::stderr()),
            ),
            HostEnd::PtySlave(f) => (
                Box::new(f.try_clone()?),
                Box::new(f.try_clone()?),
                Box::new(f.try_clone()?),
            ),
            HostEnd::Files {
                stdin,
                stdout,
                stderr,
            } => (
                Box::new(stdin.try_clone()?),
                Box::new(stdout.try_clone()?),
                Box::new(stderr.try_clone()?),
            ),
        })
    }
}

/// Running copy threads; [`Relay::wait_output`] says when the process's output has ended.
#[derive(Debug)]
pub struct Relay {
    done: Receiver<()>,
    outputs: usize,
}

impl Relay {
    /// Start copying between the streams and the host end.
    pub fn start(streams: ProcessStreams, end: HostEnd) -> std::io::Result<Relay> {
        let (tx, done) = channel();
        let mut outputs = 0;
        let (input, out, err) = end.split()?;
        if let Some(tty) = streams.tty {
            copy_in(input, tty.try_clone()?, false);
            copy_out(tty, out, tx.clone());
            outputs += 1;
        } else {
            if let Some(stdin) = streams.stdin {
                copy_in(input, stdin, true);
            }
            if let Some(stdout) = streams.stdout {
                copy_out(stdout, out, tx.clone());
                outputs += 1;
            }
            if let Some(stderr) = streams.stderr {
                copy_out(stderr, err, tx.clone());
                outputs += 1;
            }
        }
        Ok(Relay { done, outputs })
    }

    /// Wait until every output stream reached EOF (`None`: forever). True if they did.
    pub fn wait_output(&mut self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        while self.outputs > 0 {
            let got = match deadline {
                None => self.done.recv().is_ok(),
                Some(d) => self
                    .done
                    .recv_timeout(d.saturating_duration_since(std::time::Instant::now()))
                    .is_ok(),
            };
            if !got {
                return false;
            }
            self.outputs -= 1;
        }
        true
    }
}

/// Copy `input` to the stream; at EOF shut down the stream's write side (stdin EOF for the
/// process) when `shutdown_at_eof`.
fn copy_in(mut input: Box<dyn Read + Send>, mut stream: UnixStream, shutdown_at_eof: bool) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if shutdown_at_eof {
            let _ = stream.shutdown(Shutdown::Write);
        }
    });
}

/// Copy the stream to `output` until EOF, then report on `done`.
fn copy_out(mut stream: UnixStream, mut output: Box<dyn Write + Send>, done: Sender<()>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if output
                        .write_all(&buf[..n])
                        .and_then(|()| output.flush())
                        .is_err()
                    {
                        // Nobody reads the output any more: let the process see EPIPE.
                        let _ = stream.shutdown(Shutdown::Read);
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = done.send(());
    });
}

/// A host pty for `--console-socket`: the master goes to the socket, the relay keeps the slave.
#[derive(Debug)]
pub struct HostPty {
    /// The slave side (raw mode: the guest's pty does the line discipline).
    pub slave: File,
}

impl HostPty {
    /// Open a pty, put the slave in raw mode and send the master to `console_socket` (runc's
    /// protocol: one SCM_RIGHTS message).
    pub fn open_and_send(console_socket: &Path) -> Result<HostPty, String> {
        let pty = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
        if let Ok(mut t) = tcgetattr(pty.slave.as_fd()) {
            cfmakeraw(&mut t);
            let _ = tcsetattr(pty.slave.as_fd(), SetArg::TCSANOW, &t);
        }
        let sock = UnixStream::connect(console_socket)
            .map_err(|e| format!("console socket {}: connect: {e}", console_socket.display()))?;
        let fds = [pty.master.as_raw_fd()];
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(b"/dev/ptmx")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| format!("console socket {}: sendmsg: {e}", console_socket.display()))?;
        Ok(HostPty {
            slave: File::from(pty.slave),
        })
    }
}

/// The window size of a terminal fd, if it is one with a size.
pub fn window_size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data; TIOCGWINSZ only writes it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Sends ResizeTty for one process, connecting on first use.
#[derive(Debug)]
pub struct Resizer {
    target: AgentTarget,
    process: ProcessRef,
    client: Option<AgentClient>,
}

impl Resizer {
    /// A resizer for `process`'s TTY.
    pub fn new(target: AgentTarget, process: ProcessRef) -> Resizer {
        Resizer {
            target,
            process,
            client: None,
        }
    }

    /// Copy the size of terminal `fd` to the guest pty (no-op if `fd` has no size).
    pub fn resize_from(&mut self, fd: RawFd) {
        let Some((rows, cols)) = window_size(fd) else {
            return;
        };
        if self.client.is_none() {
            self.client = AgentClient::connect(&self.target).ok();
        }
        let request = Request::ResizeTty {
            process: self.process.clone(),
            rows,
            cols,
        };
        if let Some(client) = self.client.as_mut() {
            if let Err(e) = client.request_ok(&request) {
                tracing::debug!("resize: {e}");
                self.client = None;
            }
        }
    }
}

/// Our stdin in raw mode while this lives (no-op if stdin is not a terminal).
pub struct RawMode(Option<Termios>);

impl RawMode {
    /// Leave the terminal alone.
    pub fn none() -> RawMode {
        RawMode(None)
    }

    /// Put stdin in raw mode if it is a terminal.
    pub fn enter() -> RawMode {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawMode(None);
        }
        RawMode(tcgetattr(stdin.as_fd()).ok().inspect(|orig| {
            let mut raw = orig.clone();
            cfmakeraw(&mut raw);
            let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

/// Fork a relay process that copies between `streams` and `end` until the process's output
/// ends (and forwards SIGWINCH of a pty slave as ResizeTty). The relay starts a new session
/// (so it gets no job-control signals from the caller's terminal) and, with a pty, makes the
/// slave its controlling terminal. Must be called while this process is single-threaded.
/// Returns the relay's pid.
pub fn fork_relay(
    streams: ProcessStreams,
    end: HostEnd,
    target: &AgentTarget,
    process: &ProcessRef,
) -> Result<i32, String> {
    let mut keep = streams.raw_fds();
    keep.extend([0, 1, 2]);
    match &end {
        HostEnd::Stdio => {}
        HostEnd::PtySlave(f) => keep.push(f.as_raw_fd()),
        HostEnd::Files {
            stdin,
            stdout,
            stderr,
        } => keep.extend([stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()]),
    }
    // SAFETY: the caller is single-threaded; the child only runs the relay and then _exits.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork stdio relay: {e}"))? {
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw()),
        nix::unistd::ForkResult::Child => {
            let code = relay_child(streams, end, target, process, &keep);
            // SAFETY: _exit never returns and runs no destructors of the parent's state.
            unsafe { libc::_exit(code) }
        }
    }
}

fn relay_child(
    streams: ProcessStreams,
    end: HostEnd,
    target: &AgentTarget,
    process: &ProcessRef,
    keep: &[RawFd],
) -> i32 {
    close_other_fds(keep);
    let _ = nix::unistd::setsid();
    let tty_fd = match &end {
        HostEnd::PtySlave(f) => {
            // SAFETY: TIOCSCTTY takes an int argument; we are a session leader.
            unsafe { libc::ioctl(f.as_raw_fd(), libc::TIOCSCTTY, 0) };
            Some(f.as_raw_fd())
        }
        _ => None,
    };
    // Only SIGWINCH is blocked (and waited for): a mask inherited from a foreground caller
    // must not keep SIGTERM/SIGHUP from ending the relay.
    let mut winch = SigSet::empty();
    winch.add(Signal::SIGWINCH);
    let _ = winch.thread_set_mask();
    let terminal = streams.spec.terminal;
    let mut relay = match Relay::start(streams, end) {
        Ok(r) => r,
        Err(_) => return 1,
    };
    let mut resizer = Resizer::new(target.clone(), process.clone());
    if let (true, Some(fd)) = (terminal, tty_fd) {
        resizer.resize_from(fd);
    }
    loop {
        if relay.wait_output(Some(Duration::from_millis(200))) {
            return 0;
        }
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid sigset; info may be null.
        let sig = unsafe { libc::sigtimedwait(winch.as_ref(), std::ptr::null_mut(), &timeout) };
        if sig == libc::SIGWINCH && terminal {
            if let Some(fd) = tty_fd {
                resizer.resize_from(fd);
            }
        }
    }
}

/// Close every fd not in `keep` (a forked relay must not hold the state lock file, the
/// control connection or the VMM's pipes).
fn close_other_fds(keep: &[RawFd]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| !keep.contains(fd))
        .collect();
    for fd in fds {
        // SAFETY: closing an fd nothing in this process uses any more (EBADF for the
        // directory's own fd, already closed, is harmless).
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_copies_both_ways_and_ends_with_the_output() {
        let (host_in, mut guest_in) = UnixStream::pair().unwrap();
        let (host_out, mut guest_out) = UnixStream::pair().unwrap();
        let (host_err, guest_err) = UnixStream::pair().unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let slave = File::from(pty.slave);
        let mut t = tcgetattr(slave.as_fd()).unwrap();
        cfmakeraw(&mut t);
        tcsetattr(slave.as_fd(), SetArg::TCSANOW, &t).unwrap();
        let mut master = File::from(pty.master);
        let streams = ProcessStreams {
            spec: StdioSpec {
                terminal: false,
                stdin: true,
                stdout: true,
                stderr: true,
            },
            tty: None,
            stdin: Some(host_in),
            stdout: Some(host_out),
            stderr: Some(host_err),
        };
        let mut relay = Relay::start(streams, HostEnd::PtySlave(slave)).unwrap();
        master.write_all(b"typed").unwrap();
        let mut buf = [0u8; 5];
        guest_in.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"typed");
        guest_out.write_all(b"printed").unwrap();
        let mut buf = [0u8; 7];
        master.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"printed");
        assert!(!relay.wait_output(Some(Duration::from_millis(50))));
        drop(guest_out);
        drop(guest_err);
        assert!(relay.wait_output(Some(Duration::from_secs(5))));
    }

    #[test]
    fn window_size_of_a_pty() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let ws = libc::winsize {
            ws_row: 33,
            ws_col: 101,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a valid winsize.
        unsafe { libc::ioctl(pty.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(window_size(pty.slave.as_raw_fd()), Some((33, 101)));
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(window_size(a.as_raw_fd()), None);
    }
}
