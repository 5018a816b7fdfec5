//! Typed errors of the VMM.

use std::path::PathBuf;

/// Everything that can go wrong while building or running a microVM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `/dev/kvm` could not be opened or a KVM ioctl failed.
    #[error("KVM: {what}: {err}")]
    Kvm {
        /// The operation that failed.
        what: &'static str,
        /// The errno KVM returned.
        err: kvm_ioctls::Error,
    },
    /// The host KVM lacks a capability the VMM needs.
    #[error("KVM lacks the capability {0}")]
    MissingCapability(&'static str),
    /// The configuration is unusable.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// Guest memory could not be allocated or accessed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// A file given by the user could not be read.
    #[error("{what} {path}: {err}")]
    File {
        /// What the file is for ("kernel", "initrd", "serial log").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        err: std::io::Error,
    },
    /// The kernel image is not something the VMM can boot.
    #[error("kernel {path}: {reason}")]
    Kernel {
        /// The kernel file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// The initrd does not fit into guest memory.
    #[error("initrd {path}: {reason}")]
    Initrd {
        /// The initrd file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// The kernel command line is invalid or too long.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Writing boot structures (start info, boot params, MP table, page tables) failed.
    #[error("boot setup: {0}")]
    Boot(String),
    /// A device could not be created or registered.
    #[error("device {device}: {reason}")]
    Device {
        /// The device.
        device: String,
        /// What failed.
        reason: String,
    },
    /// An eventfd, signal, epoll or thread operation failed.
    #[error("{what}: {err}")]
    Sys {
        /// The operation that failed.
        what: &'static str,
        /// The OS error.
        err: std::io::Error,
    },
}

impl VmmError {
    /// Shorthand for a failed KVM ioctl.
    pub fn kvm(what: &'static str, source: kvm_ioctls::Error) -> Self {
        VmmError::Kvm { what, err: source }
    }

    /// Shorthand for a failed OS call.
    pub fn sys(what: &'static str, source: std::io::Error) -> Self {
        VmmError::Sys { what, err: source }
    }
}

/// Shorthand for an unreadable file.
pub fn file_err(what: &'static str, path: &std::path::Path, err: std::io::Error) -> VmmError {
    VmmError::File {
        what,
        path: path.to_path_buf(),
        err,
    }
}

/// Result type of the VMM.
pub type Result<T> = std::result::Result<T, VmmError>;
