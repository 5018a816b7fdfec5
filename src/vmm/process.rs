//! One microVM as its own process: `kvmbox-vmm <vm.json>` (see docs/vmm.md, "The VMM process").
//!
//! The JSON file is a [`VmmProcessConfig`]. The process builds and runs the VM exactly like
//! `kvmbox vm boot`, stops it on SIGTERM/SIGINT/SIGHUP, writes the boot timings to
//! `timings_file` (once userspace is reached and again at exit) and exits with the guest's
//! power-off status. Errors (KVM, kernel file, KVM internal error, guest reset/panic) go to
//! stderr as one line starting with `kvmbox-vmm:`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::{SigSet, Signal};
use serde::{Deserialize, Serialize};

use super::bench::monotonic_ns;
use super::builder::VmBuilder;
use super::config::{SerialOutput, VmConfig};
use super::exit::{VmExit, ERROR_EXIT_STATUS, RESET_EXIT_STATUS};
use super::timings::{BootMarks, BootTimer};

/// The `vm.json` a `kvmbox-vmm` process runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmProcessConfig {
    /// The VM.
    pub vm: VmConfig,
    /// Where to write the boot timings ([`TimingsFile`] as JSON), if anywhere.
    #[serde(default)]
    pub timings_file: Option<PathBuf>,
}

/// The boot timings a `kvmbox-vmm` process writes (for `kvmbox bench`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimingsFile {
    /// CLOCK_MONOTONIC (ns) when the VMM process started its main function.
    pub vmm_start_monotonic_ns: u64,
    /// CLOCK_MONOTONIC (ns) of the first KVM_RUN (comparable with the launcher's clock).
    pub first_kvm_run_monotonic_ns: Option<u64>,
    /// The boot marks, in ms since VMM start.
    #[serde(flatten)]
    pub marks: BootMarks,
    /// The VMM's exit status (absent while the VM runs).
    pub exit_status: Option<i32>,
    /// The VMM's RSS excluding guest memory (KiB), sampled when the VM stopped.
    pub vmm_rss_kib: Option<u64>,
}

/// Exit status when the VMM itself fails (bad config, KVM, kernel file, KVM error).
pub const VMM_FAILURE_STATUS: i32 = ERROR_EXIT_STATUS;

/// Signals that stop the VM.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// Read and parse a `vm.json`.
pub fn read_config(path: &Path) -> Result<VmmProcessConfig, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn serial_where(cfg: &VmConfig) -> String {
    match &cfg.serial {
        SerialOutput::File(p) => p.display().to_string(),
        SerialOutput::Stdout => "stdout".into(),
        SerialOutput::Sink => "discarded".into(),
    }
}

fn write_timings(path: &Path, t: &TimingsFile) {
    let tmp = path.with_extension("json.tmp");
    let res = serde_json::to_vec_pretty(t)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        eprintln!("kvmbox-vmm: timings file {}: {e}", path.display());
    }
}

fn timings(start_ns: u64, timer: &BootTimer) -> TimingsFile {
    TimingsFile {
        vmm_start_monotonic_ns: start_ns,
        first_kvm_run_monotonic_ns: timer.first_kvm_run_monotonic_ns(),
        marks: timer.marks(),
        exit_status: None,
        vmm_rss_kib: None,
    }
}

/// Run the VM described by the `vm.json` at `config_path`; returns the process exit status.
pub fn run(config_path: &Path) -> i32 {
    let start = Instant::now();
    let start_ns = monotonic_ns();
    let config = match read_config(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvmbox-vmm: {e}");
            return VMM_FAILURE_STATUS;
        }
    };
    // Blocked before any thread exists, so every thread inherits the mask and only the
    // signal thread below receives them (with sigwait).
    let mut stop_signals = SigSet::empty();
    for s in STOP_SIGNALS {
        stop_signals.add(s);
    }
    if let Err(e) = stop_signals.thread_block() {
        eprintln!("kvmbox-vmm: block stop signals: {e}");
        return VMM_FAILURE_STATUS;
    }
    let serial = serial_where(&config.vm);
    eprintln!(
        "kvmbox-vmm: pid {}, {} vCPU(s), {} MiB, cpu profile {}, serial console {serial}",
        std::process::id(),
        config.vm.vcpus,
        config.vm.memory_mib,
        config.vm.cpu_profile.name()
    );
    let timer = BootTimer::new(start);
    if let Some(path) = config.timings_file.clone() {
        timer.on_userspace(move |t| write_timings(&path, &timings(start_ns, t)));
    }
    let machine = match VmBuilder::new(config.vm.clone(), timer.clone()).build() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("kvmbox-vmm: {e}");
            return VMM_FAILURE_STATUS;
        }
    };
    let stop = machine.exit_signal();
    let got_signal = Arc::new(AtomicI32::new(0));
    let got = got_signal.clone();
    let waiter = std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            if let Ok(sig) = stop_signals.wait() {
                got.store(sig as i32, Ordering::SeqCst);
                stop.set(VmExit::Stopped);
            }
        });
    if let Err(e) = waiter {
        eprintln!("kvmbox-vmm: spawn the signal thread: {e}");
        return VMM_FAILURE_STATUS;
    }
    let report = match machine.run() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kvmbox-vmm: {e}");
            return VMM_FAILURE_STATUS;
        }
    };
    let status = match &report.exit {
        VmExit::PowerOff(s) => *s,
        VmExit::Reset(why) => {
            eprintln!(
                "kvmbox-vmm: guest reset ({why}): the guest kernel panicked or rebooted; \
                 serial console: {serial}"
            );
            RESET_EXIT_STATUS
        }
        VmExit::Error(msg) => {
            eprintln!("kvmbox-vmm: VM stopped: {msg}; serial console: {serial}");
            ERROR_EXIT_STATUS
        }
        VmExit::Stopped => match got_signal.load(Ordering::SeqCst) {
            0 => 0,
            sig => {
                eprintln!("kvmbox-vmm: VM stopped by signal {sig}");
                128 + sig
            }
        },
        VmExit::Halted(_) => 0,
    };
    if let Some(path) = &config.timings_file {
        let mut t = timings(start_ns, &timer);
        t.exit_status = Some(status);
        t.vmm_rss_kib = report.vmm_rss_kib;
        write_timings(path, &t);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::config::{CpuProfile, VsockConfig};

    #[test]
    fn config_round_trips_through_json() {
        let mut vm = VmConfig::new("/k/vmlinux");
        vm.initrd = Some("/s/initrd.cpio".into());
        vm.serial = SerialOutput::File("/s/console.log".into());
        vm.cpu_profile = CpuProfile::Emulated;
        vm.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: "/s/vsock.sock".into(),
        });
        let cfg = VmmProcessConfig {
            vm,
            timings_file: Some("/s/timings.json".into()),
        };
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains(r#""cpu_profile":"emulated""#), "{json}");
        let back: VmmProcessConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back.vm.serial, cfg.vm.serial);
        assert_eq!(back.vm.vsock, cfg.vm.vsock);
        assert_eq!(back.vm.initrd, cfg.vm.initrd);
        assert_eq!(back.timings_file, cfg.timings_file);
    }

    #[test]
    fn minimal_json_uses_defaults_and_unknown_keys_fail() {
        let json = r#"{"vm": {"kernel": "/k", "vcpus": 1, "memory_mib": 64,
                       "serial": "sink", "cpu_profile": "host"}}"#;
        let cfg: VmmProcessConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.vm.serial, SerialOutput::Sink);
        assert!(cfg.vm.vsock.is_none() && cfg.timings_file.is_none());
        let bad = json.replace(r#""vcpus""#, r#""vcpu": 1, "vcpus""#);
        let err = serde_json::from_str::<VmmProcessConfig>(&bad).unwrap_err();
        assert!(err.to_string().contains("vcpu"), "{err}");
    }

    #[test]
    fn unreadable_config_fails_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vm.json");
        assert!(read_config(&p).unwrap_err().contains("vm.json"));
        std::fs::write(&p, "{").unwrap();
        assert!(run(&p) == VMM_FAILURE_STATUS);
    }
}
