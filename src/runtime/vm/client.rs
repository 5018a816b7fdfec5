//! The host side of the agent protocol: connections to the guest agent through the VMM's
//! hybrid vsock Unix socket (`CONNECT <port>\n` → `OK <n>\n`), then framed requests
//! ([`guest_agent::protocol`]).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_agent::protocol::{
    read_frame, write_frame, Hello, HelloReply, ProcessRef, ProtocolError, Request, Response,
    ResponseBody, StreamHello, StreamKind, CONTROL_PORT, PROTOCOL_VERSION, STDIO_PORT,
};

use super::console_log::ConsoleLog;
use crate::runtime::process::{proc_state, ProcState};

/// Pause between connection attempts while the guest boots.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Longest wait for one connection attempt (handshake and first answer).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest accepted `OK <n>` line.
const MAX_OK_LINE: usize = 32;

/// Where the agent of one VM is reached, and how to tell that its VMM is gone.
#[derive(Debug, Clone)]
pub struct AgentTarget {
    /// The VMM's hybrid vsock socket.
    pub uds: PathBuf,
    /// The VMM's host pid (0: unknown, not checked).
    pub vmm_pid: i32,
    /// Start time of `vmm_pid` (against PID reuse; 0: not checked).
    pub vmm_start_time: u64,
    /// The guest's serial console log, quoted in errors.
    pub console_log: PathBuf,
    /// How long to keep trying to reach the agent, and to wait for an answer.
    pub timeout: Duration,
}

/// Errors talking to the agent. Each names what to look at.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The VMM process exited (the guest powered off, panicked, or the VMM was killed).
    #[error("the VMM (pid {pid}) is gone{tail}", tail = .log.describe())]
    VmmGone {
        /// VMM pid.
        pid: i32,
        /// The console log and its last lines.
        log: ConsoleLog,
    },
    /// The agent did not answer in time.
    #[error("the guest agent did not answer within {}s ({last}){tail}", .timeout.as_secs_f32(), tail = .log.describe())]
    Timeout {
        /// The timeout.
        timeout: Duration,
        /// The last connection error.
        last: String,
        /// The console log and its last lines.
        log: ConsoleLog,
    },
    /// The agent answered the request with an error.
    #[error("agent: {0}")]
    Refused(String),
    /// The agent answered with something the request does not expect.
    #[error("unexpected answer from the agent: {0}")]
    Unexpected(String),
    /// The agent speaks another protocol version.
    #[error("agent protocol version {agent} ({agent_version}), kvmbox expects {host}")]
    Version {
        /// The agent's protocol version.
        agent: u32,
        /// The agent's crate version.
        agent_version: String,
        /// Ours.
        host: u32,
    },
    /// The connection failed after the handshake.
    #[error("connection to the agent via {uds}: {err}{tail}", uds = .uds.display(), tail = .log.describe())]
    Connection {
        /// The VMM's socket.
        uds: PathBuf,
        /// What failed.
        err: ProtocolError,
        /// The console log and its last lines.
        log: ConsoleLog,
    },
}

impl AgentError {
    /// The same error pointing at a copy of the console log (the original is being removed).
    pub fn with_log_path(self, path: &Path) -> AgentError {
        match self {
            AgentError::VmmGone { pid, log } => AgentError::VmmGone {
                pid,
                log: log.moved_to(path),
            },
            AgentError::Timeout { timeout, last, log } => AgentError::Timeout {
                timeout,
                last,
                log: log.moved_to(path),
            },
            AgentError::Connection { uds, err, log } => AgentError::Connection {
                uds,
                err,
                log: log.moved_to(path),
            },
            other => other,
        }
    }
}

/// One control connection to the agent (Hello done).
#[derive(Debug)]
pub struct AgentClient {
    stream: UnixStream,
    target: AgentTarget,
    agent_version: String,
}

impl AgentClient {
    /// Connect to the control port and say Hello, retrying until the agent answers, the
    /// timeout passes or the VMM is gone.
    pub fn connect(target: &AgentTarget) -> Result<AgentClient, AgentError> {
        let deadline = Instant::now() + target.timeout;
        let (stream, reply) = retry_until(target, deadline, |left| {
            let mut stream = dial(&target.uds, CONTROL_PORT, left)?;
            write_frame(
                &mut stream,
                &Hello {
                    version: PROTOCOL_VERSION,
                },
            )?;
            let reply: HelloReply = read_frame(&mut stream)?;
            Ok((stream, reply))
        })?;
        if reply.version != PROTOCOL_VERSION {
            return Err(AgentError::Version {
                agent: reply.version,
                agent_version: reply.agent_version,
                host: PROTOCOL_VERSION,
            });
        }
        stream
            .set_read_timeout(None)
            .and_then(|()| stream.set_write_timeout(None))
            .map_err(|e| target.connection_error(e.into()))?;
        tracing::debug!(uds = %target.uds.display(), agent = %reply.agent_version, "agent connected");
        Ok(AgentClient {
            stream,
            target: target.clone(),
            agent_version: reply.agent_version,
        })
    }

    /// The agent's crate version (from its HelloReply).
    pub fn agent_version(&self) -> &str {
        &self.agent_version
    }

    /// Send one request and read its answer. Every request but `WaitProcess` must be answered
    /// within the target's timeout; `WaitProcess` waits as long as the process runs (the
    /// connection closes if the VMM dies).
    pub fn request(&mut self, request: &Request) -> Result<ResponseBody, AgentError> {
        let timeout = match request {
            Request::WaitProcess { .. } => None,
            _ => Some(self.target.timeout),
        };
        let result = (|| {
            self.stream.set_read_timeout(timeout)?;
            write_frame(&mut self.stream, request)?;
            read_frame::<_, Response>(&mut self.stream)
        })();
        match result {
            Ok(Response::Ok(body)) => Ok(body),
            Ok(Response::Error { message }) => Err(AgentError::Refused(message)),
            Err(ProtocolError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(AgentError::Timeout {
                    timeout: self.target.timeout,
                    last: format!("no answer to {}", request_name(request)),
                    log: self.target.log(),
                })
            }
            Err(err) => Err(self.target.failure(err)),
        }
    }

    /// Send a request that is answered with `Ok`.
    pub fn request_ok(&mut self, request: &Request) -> Result<(), AgentError> {
        match self.request(request)? {
            ResponseBody::Ok => Ok(()),
            other => Err(AgentError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// Open a stdio stream of `process` on the stdio port; returns the raw byte stream once the
/// agent accepted it.
pub fn open_stream(
    target: &AgentTarget,
    process: &ProcessRef,
    kind: StreamKind,
) -> Result<UnixStream, AgentError> {
    let deadline = Instant::now() + target.timeout;
    let (stream, response) = retry_until(target, deadline, |left| {
        let mut stream = dial(&target.uds, STDIO_PORT, left)?;
        write_frame(
            &mut stream,
            &StreamHello {
                process: process.clone(),
                kind,
            },
        )?;
        let response: Response = read_frame(&mut stream)?;
        Ok((stream, response))
    })?;
    match response {
        Response::Ok(_) => {}
        Response::Error { message } => return Err(AgentError::Refused(message)),
    }
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(|e| target.connection_error(e.into()))?;
    Ok(stream)
}

impl AgentTarget {
    /// True while the VMM process runs (not a zombie, same start time).
    pub fn vmm_alive(&self) -> bool {
        if self.vmm_pid <= 0 {
            return true;
        }
        match proc_state(self.vmm_pid) {
            ProcState::Alive { start_time } => {
                self.vmm_start_time == 0 || start_time == self.vmm_start_time
            }
            _ => false,
        }
    }

    /// The console log with its last lines.
    pub fn log(&self) -> ConsoleLog {
        ConsoleLog::read(&self.console_log)
    }

    fn connection_error(&self, err: ProtocolError) -> AgentError {
        AgentError::Connection {
            uds: self.uds.clone(),
            err,
            log: self.log(),
        }
    }

    /// A connection that broke: because the VMM is gone, or for another reason.
    fn failure(&self, err: ProtocolError) -> AgentError {
        // The VMM closes its sockets as it exits: give it a moment to be seen as gone.
        for _ in 0..20 {
            if !self.vmm_alive() {
                return AgentError::VmmGone {
                    pid: self.vmm_pid,
                    log: self.log(),
                };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.connection_error(err)
    }
}

/// Run `attempt` until it succeeds, the VMM is gone or `deadline` passes.
fn retry_until<T>(
    target: &AgentTarget,
    deadline: Instant,
    mut attempt: impl FnMut(Duration) -> Result<T, ProtocolError>,
) -> Result<T, AgentError> {
    let mut last = String::from("no attempt");
    loop {
        if !target.vmm_alive() {
            return Err(AgentError::VmmGone {
                pid: target.vmm_pid,
                log: target.log(),
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(AgentError::Timeout {
                timeout: target.timeout,
                last,
                log: target.log(),
            });
        }
        // Bounded attempts: a CONNECT the guest does not answer yet must not keep us from
        // noticing that the VMM died.
        match attempt(left.min(ATTEMPT_TIMEOUT)) {
            Ok(v) => return Ok(v),
            Err(ProtocolError::Malformed(e)) => {
                return Err(target.connection_error(ProtocolError::Malformed(e)))
            }
            Err(ProtocolError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                last = "no answer from the guest yet".into()
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// Connect to the VMM's socket and ask for guest `port`; read/write timeouts stay at `left`.
fn dial(uds: &Path, port: u32, left: Duration) -> Result<UnixStream, ProtocolError> {
    let mut stream = crate::vmm::unix_path::connect(uds)?;
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Byte by byte: what follows the line belongs to the agent's stream.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!(
                        "vsock port {port}: connection closed before OK (agent not listening yet)"
                    ),
                )
                .into())
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        if line.len() > MAX_OK_LINE {
            break;
        }
    }
    let text = String::from_utf8_lossy(&line);
    match text.strip_prefix("OK ") {
        Some(n) if n.trim().parse::<u32>().is_ok() => Ok(stream),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vsock port {port}: expected \"OK <port>\", got {text:?}"),
        )
        .into()),
    }
}

fn request_name(request: &Request) -> &'static str {
    match request {
        Request::CreateContainer { .. } => "CreateContainer",
        Request::StartContainer { .. } => "StartContainer",
        Request::ExecProcess { .. } => "ExecProcess",
        Request::SignalProcess { .. } => "SignalProcess",
        Request::WaitProcess { .. } => "WaitProcess",
        Request::ResizeTty { .. } => "ResizeTty",
        Request::CloseStdin { .. } => "CloseStdin",
        Request::ContainerState { .. } => "ContainerState",
        Request::Stats { .. } => "Stats",
        Request::ListProcesses { .. } => "ListProcesses",
        Request::DeleteContainer { .. } => "DeleteContainer",
        Request::Shutdown => "Shutdown",
        Request::Pause { .. } => "Pause",
        Request::Resume { .. } => "Resume",
        Request::UpdateContainer { .. } => "UpdateContainer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    fn target(uds: &Path, log: &Path, timeout_ms: u64) -> AgentTarget {
        AgentTarget {
            uds: uds.to_path_buf(),
            vmm_pid: 0,
            vmm_start_time: 0,
            console_log: log.to_path_buf(),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    /// A fake VMM + agent answering one connection with `reply_version`.
    fn fake_agent(listener: UnixListener, reply_version: u32, refuse_first: bool) {
        std::thread::spawn(move || {
            let mut refused = !refuse_first;
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut reader = io::BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                assert_eq!(line, "CONNECT 1024\n");
                if !refused {
                    refused = true;
                    continue; // the guest is not listening yet: closed without OK
                }
                conn.write_all(b"OK 1073741824\n").unwrap();
                let hello: Hello = read_frame(&mut conn).unwrap();
                assert_eq!(hello.version, PROTOCOL_VERSION);
                write_frame(
                    &mut conn,
                    &HelloReply {
                        version: reply_version,
                        agent_version: "test".into(),
                    },
                )
                .unwrap();
                let req: Request = read_frame(&mut conn).unwrap();
                let answer = match req {
                    Request::ListProcesses { .. } => {
                        Response::Ok(ResponseBody::Processes { pids: vec![1, 7] })
                    }
                    _ => Response::Error {
                        message: "container x does not exist".into(),
                    },
                };
                write_frame(&mut conn, &answer).unwrap();
            }
        });
    }

    #[test]
    fn connects_after_refusals_and_speaks_frames() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        fake_agent(UnixListener::bind(&uds).unwrap(), PROTOCOL_VERSION, true);
        let t = target(&uds, &dir.path().join("console.log"), 5000);
        let mut client = AgentClient::connect(&t).unwrap();
        assert_eq!(client.agent_version(), "test");
        let body = client
            .request(&Request::ListProcesses { id: "x".into() })
            .unwrap();
        assert_eq!(body, ResponseBody::Processes { pids: vec![1, 7] });
        let mut client = AgentClient::connect(&t).unwrap();
        let err = client.request(&Request::Shutdown).unwrap_err().to_string();
        assert_eq!(err, "agent: container x does not exist");
    }

    #[test]
    fn version_mismatch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        fake_agent(UnixListener::bind(&uds).unwrap(), 99, false);
        let t = target(&uds, &dir.path().join("console.log"), 5000);
        let err = AgentClient::connect(&t).unwrap_err().to_string();
        assert_eq!(err, "agent protocol version 99 (test), kvmbox expects 1");
    }

    #[test]
    fn timeout_names_the_console_log_and_quotes_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, "booting\nKernel panic - not syncing: test\n").unwrap();
        let t = target(&dir.path().join("missing.sock"), &log, 300);
        let start = Instant::now();
        let err = AgentClient::connect(&t).unwrap_err().to_string();
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(
            err.starts_with("the guest agent did not answer within 0.3s ("),
            "{err}"
        );
        assert!(err.contains(&log.display().to_string()), "{err}");
        assert!(err.contains("Kernel panic - not syncing: test"), "{err}");
    }

    #[test]
    fn a_dead_vmm_stops_the_retries_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let mut t = target(
            &dir.path().join("missing.sock"),
            &dir.path().join("c.log"),
            60_000,
        );
        t.vmm_pid = child.id() as i32;
        let start = Instant::now();
        let err = AgentClient::connect(&t).unwrap_err().to_string();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(
            err.starts_with(&format!("the VMM (pid {}) is gone", t.vmm_pid)),
            "{err}"
        );
        assert!(err.contains("c.log"), "{err}");
    }
}
