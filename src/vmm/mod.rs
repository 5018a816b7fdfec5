//! The virtual machine monitor: a KVM microVM assembled from a `VmConfig`.
//!
//! Layout (see docs/vmm.md): [`vm`] holds the KVM VM and guest memory, [`vcpu`] the KVM_RUN
//! threads, [`boot`] the x86_64 boot path, [`devices`] the bus and devices, [`builder`]
//! assembles a [`builder::Machine`], [`event_loop`] runs it.

pub mod bench;
pub mod boot;
pub mod builder;
pub mod config;
pub mod devices;
pub mod error;
pub mod event_loop;
pub mod exit;
pub mod initramfs;
pub mod layout;
pub mod process;
pub mod timings;
pub mod unix_path;
pub mod vcpu;
pub mod vm;

use std::path::Path;
use std::time::Instant;

use crate::cli::VmBootArgs;
use config::{
    ConsoleConfig, CpuProfile, DiskConfig, FsConfig, NetConfig, SerialOutput, VmConfig,
    VsockConfig, KVM_PVM_SYSFS,
};
use exit::VmExit;

impl From<crate::cli::CpuProfile> for CpuProfile {
    fn from(p: crate::cli::CpuProfile) -> Self {
        match p {
            crate::cli::CpuProfile::Host => CpuProfile::Host,
            crate::cli::CpuProfile::Emulated => CpuProfile::Emulated,
        }
    }
}

/// `kvmbox vm boot`: boot a kernel, print its serial console, return the guest's exit status.
pub fn boot_command(args: &VmBootArgs) -> anyhow::Result<i32> {
    let start = Instant::now();
    let choice = CpuProfile::choose(args.cpu_profile.map(Into::into), Path::new(KVM_PVM_SYSFS));
    eprintln!(
        "kvmbox: cpu profile {}: {}",
        choice.profile.name(),
        choice.reason
    );
    let serial = match &args.serial_log {
        Some(p) => SerialOutput::File(p.clone()),
        None => SerialOutput::Stdout,
    };
    let disks = args
        .disks
        .iter()
        .map(|d| DiskConfig::parse(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let shared_dirs = args
        .shares
        .iter()
        .map(|s| FsConfig::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let net = args
        .net
        .iter()
        .map(|n| NetConfig::parse(n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let vsock = args
        .vsock
        .as_deref()
        .map(VsockConfig::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let config = VmConfig {
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        extra_cmdline: args.cmdline.clone(),
        vcpus: args.vcpus,
        memory_mib: args.memory,
        // With a virtio console, stdin goes there instead.
        serial_input: !args.virtio_console,
        console: args.virtio_console.then(|| ConsoleConfig {
            output: serial.clone(),
            input: true,
        }),
        serial,
        cpu_profile: choice.profile,
        vsock,
        disks,
        rng: args.rng,
        shared_dirs,
        net,
    };
    let serial_where = match &args.serial_log {
        Some(p) => p.display().to_string(),
        None => "stdout".to_string(),
    };
    let timer = timings::BootTimer::new(start);
    let machine = builder::VmBuilder::new(config, timer.clone()).build()?;
    let report = machine.run()?;
    if args.timings {
        eprintln!("kvmbox: timings: {}", timer.report());
        if let Some(ns) = timer.first_kvm_run_monotonic_ns() {
            eprintln!("kvmbox: timings-raw: first_kvm_run_monotonic_ns={ns}");
        }
        if let Some(kib) = report.vmm_rss_kib {
            eprintln!("kvmbox: VMM RSS excluding guest memory: {kib} KiB");
        }
    }
    match report.exit {
        VmExit::PowerOff(status) => Ok(status),
        VmExit::Reset(why) => {
            eprintln!("kvmbox: guest reset ({why}); VM stopped");
            Ok(exit::RESET_EXIT_STATUS)
        }
        VmExit::Error(msg) => anyhow::bail!("VM stopped: {msg}; serial console: {serial_where}"),
        other @ (VmExit::Halted(_) | VmExit::Stopped) => Ok(other.status()),
    }
}
