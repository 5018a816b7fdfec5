//! Errors of the runtime library: one line each, naming the container id, file or field.

use std::path::PathBuf;

use guest_agent::container::ContainerError;

/// Everything that can go wrong in a runtime operation. Each message already includes its
/// cause, so no `source()` chain is exposed (printing the chain would repeat it).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The container id is not acceptable.
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId {
        /// The rejected id.
        id: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The bundle or its config.json is missing or invalid.
    #[error("bundle {path}: {msg}", path = .path.display())]
    Bundle {
        /// The bundle directory or config file involved.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A process.json given to `exec -p` is missing or invalid.
    #[error("process file {path}: {msg}", path = .path.display())]
    ProcessFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The id is already taken under --root.
    #[error("container {0} already exists")]
    AlreadyExists(String),
    /// No container with this id under --root.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// The container's processes are gone (or it never started running).
    #[error("container {0} is not running")]
    NotRunning(String),
    /// `delete` without --force on a running container.
    #[error("container {0} is running, use --force")]
    StillRunning(String),
    /// The operation needs another lifecycle status.
    #[error("container {id} is {status}: {msg}")]
    WrongStatus {
        /// Container id.
        id: String,
        /// Its current status.
        status: String,
        /// What cannot be done.
        msg: &'static str,
    },
    /// A signal name or number that is not recognised.
    #[error("invalid signal {0:?}")]
    InvalidSignal(String),
    /// The container's microVM could not be planned, built or launched.
    #[error("container {id}: {err}{kept}", kept = describe_kept_log(.kept_log))]
    VmLaunch {
        /// Container id.
        id: String,
        /// What failed.
        err: Box<crate::vm_launch::VmLaunchError>,
        /// Where the console log of the failed boot was kept (the state dir is removed).
        kept_log: Option<PathBuf>,
    },
    /// Talking to the container's guest agent failed.
    #[error("container {id}: {err}")]
    Agent {
        /// Container id.
        id: String,
        /// What failed (names the console log).
        err: Box<crate::runtime::vm::client::AgentError>,
    },
    /// An invalid request (e.g. a terminal without a console socket).
    #[error("{0}")]
    Invalid(String),
    /// A file system operation failed.
    #[error("{what} {path}: {err}", path = .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        err: std::io::Error,
    },
    /// The state file of a container is unreadable.
    #[error("container {id}: corrupt state {path}: {msg}", path = .path.display())]
    CorruptState {
        /// Container id.
        id: String,
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A system call on a container process failed.
    #[error("container {id}: {what}: {err}")]
    Sys {
        /// Container id.
        id: String,
        /// What was being done.
        what: &'static str,
        /// The errno.
        err: nix::Error,
    },
    /// The container setup code failed.
    #[error("container {id}: {err}")]
    Container {
        /// Container id.
        id: String,
        /// The underlying error.
        err: ContainerError,
    },
}

impl RuntimeError {
    /// Shorthand for an [`RuntimeError::Io`] error.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            what,
            path: path.into(),
            err: source,
        }
    }

    /// Shorthand for a [`RuntimeError::Container`] error.
    pub fn container(id: &str, source: ContainerError) -> Self {
        RuntimeError::Container {
            id: id.to_string(),
            err: source,
        }
    }
}

fn describe_kept_log(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("; the guest console log was kept as {}", p.display()),
        None => String::new(),
    }
}

/// Result alias of the runtime library.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
