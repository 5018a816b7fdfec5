//! kvmbox: an OCI container runtime that runs each container inside its own KVM microVM
//! (`--isolation vm`) or as a plain Linux container (`--isolation namespace`).

pub mod bench;
pub mod cli;
pub mod commands;
pub mod logging;
pub mod runtime;
pub mod shim;
pub mod vm_launch;
pub mod vmm;
