//! Foreground `run`/`exec` of a guest process: relay our stdio to its streams, forward our
//! signals to it (SIGWINCH as ResizeTty), wait for its exit status.

use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::time::Duration;

use guest_agent::protocol::{ProcessRef, Request, ResponseBody};
use nix::sys::signal::{SigSet, Signal};

use super::client::{AgentClient, AgentError, AgentTarget};
use super::stdio::{HostEnd, ProcessStreams, RawMode, Relay, Resizer};
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::signal::FORWARDED;

/// How long to wait for the last output after the process exited.
const OUTPUT_GRACE: Duration = Duration::from_secs(5);
/// Status reported for a process the guest's OOM killer killed.
pub const OOM_STATUS: i32 = 137;

/// Block the forwarded signals now, before a long `create` (the boot): an interrupt during
/// the boot then neither kills us half-way (leaving a VMM behind) nor gets lost; see
/// [`pending_termination`].
pub fn block_forwarded() {
    let mut signals = SigSet::empty();
    for s in FORWARDED {
        signals.add(*s);
    }
    let _ = signals.thread_block();
}

/// A SIGINT, SIGTERM, SIGHUP or SIGQUIT that arrived while blocked (consumed), if any.
pub fn pending_termination() -> Option<i32> {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid sigset; info may be null.
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &zero) };
    (sig > 0).then_some(sig)
}

/// A guest process relayed in the foreground.
pub struct Foreground {
    id: String,
    target: AgentTarget,
    process: ProcessRef,
    terminal: bool,
    relay: Relay,
    signals: SigSet,
    _raw: RawMode,
}

impl Foreground {
    /// Block the forwarded signals (before any thread starts, so threads inherit the mask),
    /// put a terminal stdin in raw mode for a TTY, and start relaying.
    pub fn begin(
        id: &str,
        target: &AgentTarget,
        process: &ProcessRef,
        streams: ProcessStreams,
    ) -> Result<Foreground> {
        let mut signals = SigSet::empty();
        for s in FORWARDED {
            signals.add(*s);
        }
        let _ = signals.thread_block();
        let terminal = streams.spec.terminal;
        let raw = if terminal {
            RawMode::enter()
        } else {
            RawMode::none()
        };
        let relay = Relay::start(streams, HostEnd::Stdio).map_err(|e| {
            RuntimeError::Invalid(format!("container {id}: start the stdio relay: {e}"))
        })?;
        Ok(Foreground {
            id: id.to_string(),
            target: target.clone(),
            process: process.clone(),
            terminal,
            relay,
            signals,
            _raw: raw,
        })
    }

    /// Wait for the process to exit, forwarding signals; returns its shell-style status
    /// (128+n for signal n, 137 when the guest OOM-killed it).
    pub fn wait(self) -> Result<i32> {
        self.wait_on(None)
    }

    /// [`Foreground::wait`], sending WaitProcess on `client` (a connection already open)
    /// instead of a new one.
    pub fn wait_on(mut self, client: Option<AgentClient>) -> Result<i32> {
        let exited = spawn_waiter(self.target.clone(), self.process.clone(), client);
        let mut resizer = Resizer::new(self.target.clone(), self.process.clone());
        let mut signaller: Option<AgentClient> = None;
        if self.terminal {
            resizer.resize_from(libc::STDIN_FILENO);
        }
        let result = loop {
            match exited.try_recv() {
                Ok(r) => break r,
                Err(TryRecvError::Disconnected) => {
                    break Err(AgentError::Unexpected("the wait thread ended".into()))
                }
                Err(TryRecvError::Empty) => {}
            }
            let timeout = libc::timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            };
            // SAFETY: a valid sigset; info may be null.
            let sig = unsafe {
                libc::sigtimedwait(self.signals.as_ref(), std::ptr::null_mut(), &timeout)
            };
            if sig <= 0 {
                continue;
            }
            if sig == libc::SIGWINCH {
                if self.terminal {
                    resizer.resize_from(libc::STDIN_FILENO);
                }
                continue;
            }
            tracing::debug!(id = self.id, sig, "forwarding signal to the guest process");
            if signaller.is_none() {
                signaller = AgentClient::connect(&self.target).ok();
            }
            if let Some(client) = signaller.as_mut() {
                let request = Request::SignalProcess {
                    process: self.process.clone(),
                    signal: sig,
                    all: false,
                };
                if let Err(e) = client.request_ok(&request) {
                    tracing::debug!("forward signal {sig}: {e}");
                    signaller = None;
                }
            }
        };
        let body = result.map_err(|err| RuntimeError::Agent {
            id: self.id.clone(),
            err: Box::new(err),
        })?;
        tracing::debug!(id = self.id, "process exited: {body:?}");
        if !self.relay.wait_output(Some(OUTPUT_GRACE)) {
            tracing::debug!(id = self.id, "output did not end within the grace period");
        } else {
            tracing::debug!(id = self.id, "output ended");
        }
        let _ = self.signals.thread_unblock();
        match body {
            ResponseBody::Exited {
                oom_killed: true, ..
            } => {
                tracing::warn!(
                    "container {}: the process was killed by the guest's OOM killer (memory limit reached); exit status {OOM_STATUS}",
                    self.id
                );
                Ok(OOM_STATUS)
            }
            ResponseBody::Exited { status, .. } => Ok(status),
            other => Err(RuntimeError::Agent {
                id: self.id.clone(),
                err: Box::new(AgentError::Unexpected(format!("{other:?}"))),
            }),
        }
    }
}

/// WaitProcess on its own connection, in a thread; the answer arrives on the channel.
fn spawn_waiter(
    target: AgentTarget,
    process: ProcessRef,
    client: Option<AgentClient>,
) -> Receiver<std::result::Result<ResponseBody, AgentError>> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let result = match client {
            Some(c) => Ok(c),
            None => AgentClient::connect(&target),
        }
        .and_then(|mut c| c.request(&Request::WaitProcess { process }));
        if result.is_ok() {
            super::timing::mark(super::timing::EXIT_OBSERVED);
        }
        let _ = tx.send(result);
    });
    rx
}
