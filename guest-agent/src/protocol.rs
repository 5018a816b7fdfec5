//! The host ↔ guest-agent protocol, defined once for both sides.
//!
//! Transport: vsock stream connections from the host to the agent (the host side reaches them
//! through the VMM's hybrid Unix-socket backend, `CONNECT <port>\n`). Every message is one
//! *frame*: a 4-byte big-endian length followed by that many bytes of JSON. A frame larger than
//! [`MAX_FRAME`] is rejected by both sides before any allocation.
//!
//! Connections:
//! - **Control** ([`CONTROL_PORT`]): the host sends [`Hello`] and gets [`HelloReply`] (version
//!   check), then any number of [`Request`] frames, each answered by one [`Response`] frame, in
//!   order. `WaitProcess` answers only when the process exits, so the host waits on its own
//!   control connection.
//! - **Stdio** ([`STDIO_PORT`]): the host sends one [`StreamHello`] naming the process and the
//!   stream, the agent answers with one [`Response`] (`Ok` or `Error`), then the connection is
//!   raw bytes. The host opens a process's streams *before* the request that starts it
//!   (`CreateContainer` / `ExecProcess`), whose [`StdioSpec`] says which streams to expect.
//!   Without a TTY each of stdin/stdout/stderr is its own stream (stdin EOF = the host shuts
//!   down its write side); with a TTY there is one [`StreamKind::Tty`] stream carrying both
//!   directions.

use std::io::{self, Read, Write};

use oci_spec::runtime::{LinuxResources, Process, Spec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::container::Status;

/// Protocol version; the agent refuses a `Hello` with another one.
pub const PROTOCOL_VERSION: u32 = 1;
/// vsock port of the control connection.
pub const CONTROL_PORT: u32 = 1024;
/// vsock port of stdio stream connections.
pub const STDIO_PORT: u32 = 1025;
/// Largest accepted frame (an OCI spec with big env/mount lists fits comfortably).
pub const MAX_FRAME: usize = 4 << 20;
/// Largest accepted container id / exec id (bytes).
pub const MAX_ID_LEN: usize = 1024;

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The peer sent a frame over [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The connection closed (cleanly, between frames).
    #[error("connection closed by peer")]
    Closed,
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The frame is not valid JSON for the expected message.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The agent speaks another protocol version.
    #[error("agent protocol version {agent}, host expects {host}")]
    Version {
        /// The agent's version.
        agent: u32,
        /// Ours.
        host: u32,
    },
}

/// Write one frame holding `msg` as JSON.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), ProtocolError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(ProtocolError::TooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Read one frame and decode it. EOF before the first length byte is [`ProtocolError::Closed`].
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, ProtocolError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(ProtocolError::Closed),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

/// First frame on a control connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The host's [`PROTOCOL_VERSION`].
    pub version: u32,
}

/// The agent's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The agent's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The agent's crate version, for logs.
    pub agent_version: String,
}

/// Which process a stream or request is about: a container's init (`exec_id` None) or one of
/// its exec'd processes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessRef {
    /// Container id.
    pub container_id: String,
    /// Exec id (chosen by the host, unique per container); None = the init process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
}

/// One stdio stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// Host → process.
    Stdin,
    /// Process → host.
    Stdout,
    /// Process → host.
    Stderr,
    /// Both directions of the process's terminal (pty master in the guest).
    Tty,
}

/// First (and only) frame the host sends on a stdio connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHello {
    /// The process the stream belongs to.
    pub process: ProcessRef,
    /// Which stream this connection is.
    pub kind: StreamKind,
}

/// Which stdio streams a new process uses (each one already opened with a [`StreamHello`]).
/// A stream that is `false` is connected to /dev/null in the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdioSpec {
    /// A TTY: one [`StreamKind::Tty`] stream; the other flags are ignored.
    pub terminal: bool,
    /// A stdin stream is open.
    pub stdin: bool,
    /// A stdout stream is open.
    pub stdout: bool,
    /// A stderr stream is open.
    pub stderr: bool,
}

/// A request on the control connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Create a container, stopped before exec of its process (like `runc create`).
    CreateContainer {
        /// Container id.
        id: String,
        /// The OCI spec; `root.path` is the rootfs path *inside the guest*.
        spec: Box<Spec>,
        /// The init's stdio.
        stdio: StdioSpec,
    },
    /// Let the init exec its process (like `runc start`).
    StartContainer {
        /// Container id.
        id: String,
    },
    /// Start another process in a running container.
    ExecProcess {
        /// Container id.
        id: String,
        /// Exec id (unique in the container).
        exec_id: String,
        /// The process (args, env, cwd, user, terminal, capabilities...).
        process: Box<Process>,
        /// Its stdio.
        stdio: StdioSpec,
    },
    /// Send a signal to a process (or, with `all`, to every process of the container).
    SignalProcess {
        /// Target.
        process: ProcessRef,
        /// Signal number.
        signal: i32,
        /// Signal every process in the container's cgroup.
        all: bool,
    },
    /// Block until the process exits; answered with [`ResponseBody::Exited`].
    WaitProcess {
        /// Target.
        process: ProcessRef,
    },
    /// Set the window size of the process's TTY.
    ResizeTty {
        /// Target.
        process: ProcessRef,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Close the process's stdin (the agent shuts down its end).
    CloseStdin {
        /// Target.
        process: ProcessRef,
    },
    /// The container's status and init pid (guest pid namespace).
    ContainerState {
        /// Container id.
        id: String,
    },
    /// Resource usage of the container's cgroup (v2).
    Stats {
        /// Container id.
        id: String,
    },
    /// PIDs (guest) of every process in the container.
    ListProcesses {
        /// Container id.
        id: String,
    },
    /// Remove a stopped container (with `force`, kill it first): cgroup, rootfs mounts, state.
    DeleteContainer {
        /// Container id.
        id: String,
        /// Kill a running container first.
        force: bool,
    },
    /// Kill every container and power the VM off.
    Shutdown,
    /// Freeze every process of the container (cgroup v2 `cgroup.freeze` = 1).
    Pause {
        /// Container id.
        id: String,
    },
    /// Thaw a paused container (`cgroup.freeze` = 0).
    Resume {
        /// Container id.
        id: String,
    },
    /// Change the resource limits of a running container (its cgroup v2), like `runc update`.
    /// Only the fields present are written.
    UpdateContainer {
        /// Container id.
        id: String,
        /// The new limits (runtime-spec `linux.resources`).
        resources: Box<LinuxResources>,
    },
}

/// Cgroup v2 usage of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// memory.current (bytes).
    pub memory_current: u64,
    /// memory.max (bytes; None = "max").
    pub memory_limit: Option<u64>,
    /// memory.events oom_kill count.
    pub oom_kills: u64,
    /// cpu.stat usage_usec.
    pub cpu_usage_usec: u64,
    /// cpu.stat user_usec.
    pub cpu_user_usec: u64,
    /// cpu.stat system_usec.
    pub cpu_system_usec: u64,
    /// pids.current.
    pub pids_current: u64,
    /// pids.max (None = "max").
    pub pids_limit: Option<u64>,
    /// The agent's own resident set (VmRSS of its /proc/self/status, KiB); absent from agents
    /// that predate it.
    #[serde(default)]
    pub agent_rss_kib: Option<u64>,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseBody {
    /// Done, nothing to report.
    Ok,
    /// `CreateContainer` / `ExecProcess`: the new process's pid in the guest.
    Pid {
        /// Guest pid.
        pid: i32,
    },
    /// `WaitProcess`: how the process ended.
    Exited {
        /// Shell-style status: the exit code, or 128 + signal number.
        status: i32,
        /// The killing signal, if it died of one.
        signal: Option<i32>,
        /// The container's cgroup recorded an OOM kill.
        oom_killed: bool,
    },
    /// `ContainerState`.
    State {
        /// OCI status.
        status: Status,
        /// Init pid in the guest (0 once stopped).
        pid: i32,
    },
    /// `Stats`.
    Stats(Stats),
    /// `ListProcesses`: guest pids.
    Processes {
        /// Guest pids.
        pids: Vec<i32>,
    },
}

/// The agent's answer to one request (or to a [`StreamHello`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Success.
    Ok(ResponseBody),
    /// Failure, one line naming what is wrong (container id, field, path).
    Error {
        /// The message.
        message: String,
    },
}

/// Check a container or exec id received from the host: non-empty, bounded, no path separators.
pub fn validate_id(kind: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("{kind} must be 1..={MAX_ID_LEN} bytes"));
    }
    if id == "." || id == ".." || id.contains('/') || id.contains('\0') {
        return Err(format!("{kind} {id:?} contains '/', NUL or is a dot path"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        let req = Request::SignalProcess {
            process: ProcessRef {
                container_id: "c1".into(),
                exec_id: Some("e1".into()),
            },
            signal: 9,
            all: false,
        };
        write_frame(&mut buf, &req).unwrap();
        write_frame(&mut buf, &Response::Ok(ResponseBody::Pid { pid: 7 })).unwrap();
        let mut r = buf.as_slice();
        let back: Request = read_frame(&mut r).unwrap();
        assert!(matches!(back, Request::SignalProcess { signal: 9, .. }));
        let resp: Response = read_frame(&mut r).unwrap();
        assert_eq!(resp, Response::Ok(ResponseBody::Pid { pid: 7 }));
        assert!(matches!(
            read_frame::<_, Response>(&mut r),
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn oversized_frame_is_rejected_before_allocation() {
        let mut buf = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(b"{}");
        let err = read_frame::<_, Hello>(&mut buf.as_slice()).unwrap_err();
        assert!(matches!(err, ProtocolError::TooLarge(n) if n == MAX_FRAME + 1));
    }

    #[test]
    fn truncated_frame_is_an_error_not_closed() {
        let buf = [0u8, 0];
        let err = read_frame::<_, Hello>(&mut buf.as_slice()).unwrap_err();
        assert!(matches!(err, ProtocolError::Io(_)));
    }

    #[test]
    fn malformed_json_is_reported() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&3u32.to_be_bytes());
        buf.extend_from_slice(b"{x}");
        let err = read_frame::<_, Request>(&mut buf.as_slice()).unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed(_)));
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("container id", "abc").is_ok());
        assert!(validate_id("container id", "").is_err());
        assert!(validate_id("container id", "../x").is_err());
        assert!(validate_id("exec id", &"a".repeat(MAX_ID_LEN + 1)).is_err());
    }
}
