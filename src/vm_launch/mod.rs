//! Plan, build and launch a container's microVM (issue 5, see docs/vmm.md "The VMM process"):
//! [`plan`] sizes the VM and finds the kernel, agent and VMM; [`build_initrd`] packs the agent
//! and the container rootfs; [`launch`] starts a detached `kvmbox-vmm`; [`stop`] ends it.

pub mod agent;
pub mod config_file;
pub mod error;
pub mod initrd;
pub mod kernel;
pub mod launch;
pub mod plan;

pub use crate::vmm::config::CpuProfile;
pub use error::VmLaunchError;
pub use initrd::{build_initrd, guest_rootfs_path};
pub use launch::{is_alive, launch, stop, StopOutcome, VmFiles, VmProcess};
pub use plan::{plan, VmOptions, VmPlan};
