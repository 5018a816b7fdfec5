//! The virtual machine monitor: a KVM microVM assembled from a `VmConfig`.

use crate::cli::VmBootArgs;

/// `kvmbox vm boot`: boot a kernel, print its serial console, return the guest's exit status.
pub fn boot_command(args: &VmBootArgs) -> anyhow::Result<i32> {
    let _ = args;
    anyhow::bail!("vm boot: not implemented yet")
}
