//! The runtime library: bundles, the state store and the container lifecycle, shared by the CLI
//! and the containerd shim.

pub mod bundle;
pub mod cgroup;
pub mod console;
pub mod error;
pub mod features;
pub mod id;
pub mod lifecycle;
pub mod process;
pub mod resources;
pub mod signal;
pub mod spec;
pub mod state;
pub mod vm;

pub use crate::cli::Isolation;
pub use bundle::Bundle;
pub use error::RuntimeError;
pub use guest_agent::container::Status;
pub use lifecycle::{ContainerInfo, CreateOptions, ExecOptions, Runtime, StateOutput};
pub use signal::parse_signal;
pub use state::ContainerRecord;
