//! Errors of the shim, mapped onto ttrpc status codes containerd understands.

use std::path::PathBuf;

use containerd_shim::protos::ttrpc::{self, Code};

/// Result of shim operations.
pub type Result<T> = std::result::Result<T, ShimError>;

/// Everything that can go wrong while serving containerd.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// No such container or exec process in this shim.
    #[error("{0}: not found")]
    NotFound(String),
    /// The id is already in use in this shim.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The request is malformed or asks for something unsupported in this form.
    #[error("{0}")]
    InvalidArgument(String),
    /// The object is in the wrong state for the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request is valid but not implemented by this shim (yet).
    #[error("{0}")]
    Unimplemented(String),
    /// A `kvmbox` invocation failed.
    #[error("kvmbox {command}: {message}")]
    Kvmbox {
        /// The subcommand and container id.
        command: String,
        /// kvmbox's own error line.
        message: String,
    },
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An error from the containerd-shim crate (mounts, cgroups, events).
    #[error("{0}")]
    Shim(#[from] containerd_shim::Error),
    /// An error of the kvmbox runtime library.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
}

impl ShimError {
    /// An [`ShimError::Io`] for `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ShimError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    fn code(&self) -> Code {
        use crate::runtime::RuntimeError as R;
        match self {
            ShimError::NotFound(_) | ShimError::Runtime(R::NotFound(_)) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            _ => Code::UNKNOWN,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_grpc_codes() {
        let status = |e: ShimError| match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            status(ShimError::NotFound("container c1".into())),
            (Code::NOT_FOUND, "container c1: not found".into())
        );
        assert_eq!(
            status(ShimError::Unimplemented("checkpoint".into())).0,
            Code::UNIMPLEMENTED
        );
        let kvmbox = ShimError::Kvmbox {
            command: "create c1".into(),
            message: "bad spec".into(),
        };
        assert_eq!(
            status(kvmbox),
            (Code::UNKNOWN, "kvmbox create c1: bad spec".into())
        );
    }
}
