//! Plan, build and launch a container's microVM (issue 5, see docs/vmm.md "The VMM process"):
//! [`plan`] sizes the VM and finds the kernel, agent and VMM; [`agent_initrd`] is the cached
//! agent initramfs; [`launch`] starts a detached `kvmbox-vmm` sharing `<state>/shared` over
//! virtio-fs ([`shared`]: container rootfs bind mounts); [`stop`] ends it.

pub mod agent;
pub mod config_file;
pub mod error;
pub mod initrd;
pub mod kernel;
pub mod launch;
pub mod plan;
pub mod shared;

pub use crate::vmm::config::CpuProfile;
pub use error::VmLaunchError;
pub use initrd::agent_initrd;
pub use launch::{is_alive, launch, stop, StopOutcome, VmFiles, VmProcess};
pub use plan::{plan, VmOptions, VmPlan};
pub use shared::guest_rootfs_path;
