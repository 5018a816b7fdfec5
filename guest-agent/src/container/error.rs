//! Errors of container setup.

use std::path::PathBuf;

/// What went wrong while creating or running a container process.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The spec asks for something invalid or unsupported.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// An I/O operation on a path failed.
    #[error("{what} {path}: {source}", path = .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup operation failed.
    #[error("cgroup {path}: {msg}")]
    Cgroup {
        /// The cgroup path.
        path: String,
        /// What failed.
        msg: String,
    },
    /// A hook failed or timed out.
    #[error("{kind} hook {path}: {msg}")]
    Hook {
        /// Hook kind (createRuntime, poststart...).
        kind: String,
        /// Hook binary.
        path: PathBuf,
        /// What failed.
        msg: String,
    },
    /// The container's init reported an error during setup.
    #[error("container init: {0}")]
    Init(String),
    /// The container process is gone.
    #[error("container process {0} is not running")]
    NotRunning(i32),
}

impl ContainerError {
    /// A closure mapping a nix error to [`ContainerError::Sys`] with a description.
    pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> ContainerError {
        let what = what.into();
        move |source| ContainerError::Sys { what, source }
    }

    /// A closure mapping an I/O error on `path` to [`ContainerError::Io`].
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ContainerError {
        let path = path.into();
        move |source| ContainerError::Io { what, path, source }
    }
}

/// Result alias for container setup.
pub type Result<T, E = ContainerError> = std::result::Result<T, E>;
