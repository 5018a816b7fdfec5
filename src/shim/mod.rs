//! The containerd runtime v2 shim (`containerd-shim-kvmbox-v2`, runtime
//! `io.containerd.kvmbox.v2`): the containerd Task service mapped onto kvmbox containers.
//!
//! Containers are driven through the `kvmbox` binary (see [`kvmbox_cli`]); the shim is their
//! subreaper ([`reaper`]) and reports their exits to containerd as events ([`events`]).

pub mod bootstrap;
pub mod cgroups;
pub mod config;
pub mod error;
pub mod events;
pub mod kvmbox_cli;
pub mod options;
pub mod process;
pub mod reaper;
pub mod service;
pub mod stdio;
pub mod vm;

pub use bootstrap::{main, RUNTIME_NAME};
pub use error::{Result, ShimError};
