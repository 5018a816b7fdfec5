//! Stdio streams registered by `StreamHello` and not yet used by a `CreateContainer` /
//! `ExecProcess`. Bounded: at most [`MAX_PENDING`] streams, each dropped after [`STREAM_TTL`].

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::protocol::{ProcessRef, StdioSpec, StreamKind};

/// Most streams waiting for their process at once.
pub const MAX_PENDING: usize = 64;
/// A registered stream unused for this long is closed.
pub const STREAM_TTL: Duration = Duration::from_secs(60);

/// The pending streams, by (process, kind).
#[derive(Debug, Default)]
pub struct PendingStreams {
    map: HashMap<(ProcessRef, StreamKind), (OwnedFd, Instant)>,
}

/// The streams of one new process, taken from the registry.
#[derive(Debug, Default)]
pub struct ProcessStreams {
    /// Stdin stream.
    pub stdin: Option<OwnedFd>,
    /// Stdout stream.
    pub stdout: Option<OwnedFd>,
    /// Stderr stream.
    pub stderr: Option<OwnedFd>,
    /// The TTY stream (with `terminal`).
    pub tty: Option<OwnedFd>,
}

fn kind_name(k: StreamKind) -> &'static str {
    match k {
        StreamKind::Stdin => "stdin",
        StreamKind::Stdout => "stdout",
        StreamKind::Stderr => "stderr",
        StreamKind::Tty => "tty",
    }
}

/// Describe a process for error messages.
pub fn describe(p: &ProcessRef) -> String {
    match &p.exec_id {
        Some(e) => format!("exec {e} of container {}", p.container_id),
        None => format!("container {}", p.container_id),
    }
}

impl PendingStreams {
    /// Whether a stream could be registered: errors on a duplicate or a full registry.
    pub fn check(&self, process: &ProcessRef, kind: StreamKind) -> Result<(), String> {
        if self.map.contains_key(&(process.clone(), kind)) {
            return Err(format!(
                "{} stream of {} is already open",
                kind_name(kind),
                describe(process)
            ));
        }
        if self.map.len() >= MAX_PENDING {
            return Err(format!(
                "too many pending stdio streams ({MAX_PENDING}); start their processes first"
            ));
        }
        Ok(())
    }

    /// Register a stream (see [`PendingStreams::check`]).
    pub fn register(
        &mut self,
        process: ProcessRef,
        kind: StreamKind,
        fd: OwnedFd,
        now: Instant,
    ) -> Result<(), String> {
        self.check(&process, kind)?;
        self.map.insert((process, kind), (fd, now));
        Ok(())
    }

    /// Take the streams `stdio` announces for `process`; errors naming the first missing one
    /// (the streams taken so far are closed).
    pub fn take(
        &mut self,
        process: &ProcessRef,
        stdio: &StdioSpec,
    ) -> Result<ProcessStreams, String> {
        let mut want = Vec::new();
        if stdio.terminal {
            want.push(StreamKind::Tty);
        } else {
            for (on, k) in [
                (stdio.stdin, StreamKind::Stdin),
                (stdio.stdout, StreamKind::Stdout),
                (stdio.stderr, StreamKind::Stderr),
            ] {
                if on {
                    want.push(k);
                }
            }
        }
        if let Some(missing) = want
            .iter()
            .find(|k| !self.map.contains_key(&(process.clone(), **k)))
        {
            return Err(format!(
                "stdio: the {} stream of {} was not opened (StreamHello) before the request",
                kind_name(*missing),
                describe(process)
            ));
        }
        let mut out = ProcessStreams::default();
        for k in want {
            let fd = self.map.remove(&(process.clone(), k)).map(|(fd, _)| fd);
            match k {
                StreamKind::Stdin => out.stdin = fd,
                StreamKind::Stdout => out.stdout = fd,
                StreamKind::Stderr => out.stderr = fd,
                StreamKind::Tty => out.tty = fd,
            }
        }
        Ok(out)
    }

    /// Drop streams older than [`STREAM_TTL`]; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.map.len();
        self.map
            .retain(|_, (_, since)| now.duration_since(*since) < STREAM_TTL);
        before - self.map.len()
    }

    /// Number of pending streams.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when none is pending.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
    }

    fn pr(id: &str) -> ProcessRef {
        ProcessRef {
            container_id: id.into(),
            exec_id: None,
        }
    }

    #[test]
    fn streams_are_taken_by_spec_and_missing_ones_named() {
        let mut s = PendingStreams::default();
        let now = Instant::now();
        s.register(pr("c"), StreamKind::Stdout, fd(), now).unwrap();
        assert!(s.register(pr("c"), StreamKind::Stdout, fd(), now).is_err());
        let spec = StdioSpec {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let err = s.take(&pr("c"), &spec).unwrap_err();
        assert!(
            err.contains("stderr") && err.contains("container c"),
            "{err}"
        );
        let only_out = StdioSpec {
            stdout: true,
            ..Default::default()
        };
        let got = s.take(&pr("c"), &only_out).unwrap();
        assert!(got.stdout.is_some() && got.stdin.is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn old_streams_expire_and_the_registry_is_bounded() {
        let mut s = PendingStreams::default();
        let t0 = Instant::now();
        for i in 0..MAX_PENDING {
            s.register(pr(&format!("c{i}")), StreamKind::Stdin, fd(), t0)
                .unwrap();
        }
        assert!(s.register(pr("x"), StreamKind::Stdin, fd(), t0).is_err());
        assert_eq!(s.expire(t0 + STREAM_TTL), MAX_PENDING);
        assert_eq!(s.len(), 0);
    }
}
