//! Typed errors of planning, building and launching a container's microVM.

use std::path::PathBuf;

/// Everything that can go wrong in [`crate::vm_launch`]. Each message is one line naming the
/// file, annotation, setting or log to look at.
#[derive(Debug, thiserror::Error)]
pub enum VmLaunchError {
    /// `/dev/kvm` is missing or not accessible.
    #[error("{0}")]
    Kvm(String),
    /// No guest kernel was found (the message says how to build one).
    #[error("{0}")]
    KernelMissing(String),
    /// The guest agent binary was not found (the message says how to build it).
    #[error("{0}")]
    AgentMissing(String),
    /// The `kvmbox-vmm` binary was not found.
    #[error("{0}")]
    VmmMissing(String),
    /// An OCI annotation has an invalid value.
    #[error("annotation {key}={value:?}: {reason}")]
    Annotation {
        /// The annotation key.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The spec asks for something kvmbox does not support, or has invalid values.
    #[error("config.json: {0}")]
    Spec(String),
    /// The kvmbox config file is invalid.
    #[error("config file {path}: {reason}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An environment variable has an invalid value.
    #[error("environment {var}={value:?}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The agent initrd cannot be built.
    #[error("initrd: {0}")]
    Initrd(String),
    /// A container cannot be placed in the shared directory (bad id).
    #[error("shared directory: {0}")]
    Share(String),
    /// A file operation failed.
    #[error("{what} {path}: {err}")]
    Io {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        err: std::io::Error,
    },
    /// The VMM process could not be started or died while starting.
    #[error("{0}")]
    Launch(String),
}

impl VmLaunchError {
    /// Shorthand for a failed file operation.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        VmLaunchError::Io {
            what,
            path: path.into(),
            err,
        }
    }
}
