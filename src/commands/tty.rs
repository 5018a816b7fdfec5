//! Foreground terminal handling for `run`/`exec` without --console-socket: our terminal goes
//! into raw mode and bytes are copied between it and the container's pty master.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

/// The window size of our stdin's terminal, if it is one.
pub fn terminal_size() -> Option<oci_spec::runtime::Box> {
    // SAFETY: winsize is plain data; TIOCGWINSZ only writes it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_row > 0 && ws.ws_col > 0).then(|| {
        oci_spec::runtime::BoxBuilder::default()
            .height(u64::from(ws.ws_row))
            .width(u64::from(ws.ws_col))
            .build()
            .expect("box with both fields")
    })
}

/// A running pty proxy; dropping it restores our terminal.
pub struct TtyProxy {
    master: Arc<File>,
    saved: Option<Termios>,
    output_done: Receiver<()>,
}

impl TtyProxy {
    /// Put stdin in raw mode (if it is a terminal), copy its size to the pty and start copying
    /// stdin → master and master → stdout on two threads.
    pub fn start(master: OwnedFd) -> TtyProxy {
        let master = Arc::new(File::from(master));
        let stdin = std::io::stdin();
        let saved = if stdin.is_terminal() {
            tcgetattr(stdin.as_fd()).ok().inspect(|orig| {
                let mut raw = orig.clone();
                cfmakeraw(&mut raw);
                let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
            })
        } else {
            None
        };
        let proxy_master = master.clone();
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 4096];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if (&*proxy_master).write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let (done_tx, output_done) = channel();
        let out_master = master.clone();
        std::thread::spawn(move || {
            let mut stdout = std::io::stdout();
            let mut buf = [0u8; 4096];
            loop {
                match (&*out_master).read(&mut buf) {
                    Ok(0) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break, // EIO: every slave end is closed
                    Ok(n) => {
                        if stdout
                            .write_all(&buf[..n])
                            .and_then(|_| stdout.flush())
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            let _ = done_tx.send(());
        });
        let proxy = TtyProxy {
            master,
            saved,
            output_done,
        };
        proxy.resize();
        proxy
    }

    /// Copy our terminal's window size to the pty (which signals SIGWINCH inside).
    pub fn resize(&self) {
        // SAFETY: winsize is plain data; both ioctls only read/write it.
        unsafe {
            let mut ws: libc::winsize = std::mem::zeroed();
            if libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 {
                libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
            }
        }
    }

    /// Wait (briefly) for the remaining output after the process exited, then restore the
    /// terminal.
    pub fn finish(self, grace: Duration) {
        let _ = self.output_done.recv_timeout(grace);
    }
}

impl Drop for TtyProxy {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}
