//! A description of the host the benchmark ran on, so that no figure is read out of context.

use std::path::Path;

/// CPU, kernel, cgroup, KVM and load facts of the host.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HostInfo {
    /// CPU model name from /proc/cpuinfo.
    pub cpu_model: String,
    /// CPUs available to this process.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// Cgroup layout (v1, v1 hybrid, v2).
    pub cgroup: String,
    /// The KVM module providing /dev/kvm (kvm_intel, kvm_amd, kvm_pvm) or why there is none.
    pub kvm: String,
    /// True when guest kernel code is emulated instruction by instruction (nested PVM:
    /// /sys/module/kvm_pvm exists), which makes VM boots ~100-1000x slower than on hardware
    /// virtualization.
    pub guest_kernel_emulated: bool,
    /// Total memory in MiB (/proc/meminfo).
    pub memory_mib: u64,
    /// /proc/loadavg's 1, 5 and 15 minute load averages when the benchmark started.
    pub load_average: String,
}

impl HostInfo {
    /// Probe the running host.
    pub fn probe() -> HostInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        HostInfo {
            cpu_model: cpu_model(&cpuinfo),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            cgroup: cgroup_layout(Path::new("/sys/fs/cgroup")),
            kvm: kvm_module(Path::new("/sys/module"), Path::new("/dev/kvm").exists()),
            guest_kernel_emulated: Path::new("/sys/module/kvm_pvm").exists(),
            memory_mib: std::fs::read_to_string("/proc/meminfo")
                .map(|m| mem_total_kib(&m) / 1024)
                .unwrap_or(0),
            load_average: std::fs::read_to_string("/proc/loadavg")
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|_| "unknown".into()),
        }
    }

    /// `host: <cpu> (<n> CPUs, <m> MiB), Linux <release>, cgroup <layout>`.
    pub fn line(&self) -> String {
        format!(
            "host: {} ({} CPUs, {} MiB), Linux {}, cgroup {}",
            self.cpu_model, self.cpus, self.memory_mib, self.kernel, self.cgroup
        )
    }

    /// `KVM: <module>; guest kernel code emulated|runs natively; load average at start: ...`.
    pub fn kvm_line(&self) -> String {
        let guest = if self.guest_kernel_emulated {
            "guest kernel code is EMULATED (nested PVM): VM boot times are ~100-1000x those of a \
             host with hardware virtualization"
        } else {
            "guest kernel code runs natively (hardware virtualization)"
        };
        format!(
            "KVM: {}; {guest}; load average at start: {}",
            self.kvm, self.load_average
        )
    }
}

/// Which KVM module serves /dev/kvm, given the `/sys/module` directory.
pub fn kvm_module(sys_module: &Path, dev_kvm: bool) -> String {
    if !dev_kvm {
        return "none (/dev/kvm missing)".into();
    }
    for (module, what) in [
        ("kvm_pvm", "kvm_pvm (nested PVM)"),
        ("kvm_intel", "kvm_intel (VT-x)"),
        ("kvm_amd", "kvm_amd (AMD-V)"),
    ] {
        if sys_module.join(module).exists() {
            return what.into();
        }
    }
    "kvm (vendor module unknown)".into()
}

/// `MemTotal` of a /proc/meminfo text, in KiB.
fn mem_total_kib(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The first `model name` of /proc/cpuinfo text.
fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Describe the cgroup layout mounted at `root`.
pub fn cgroup_layout(root: &Path) -> String {
    if root.join("cgroup.controllers").exists() {
        "v2".into()
    } else if root.join("unified/cgroup.controllers").exists() {
        format!("v1 (hybrid: cgroup2 at {})", root.join("unified").display())
    } else {
        "v1".into()
    }
}

/// True when `root` is a hybrid layout whose cgroup2 part lists controllers (crun 1.8 refuses it).
pub fn hybrid_with_controllers(root: &Path) -> bool {
    !root.join("cgroup.controllers").exists()
        && std::fs::read_to_string(root.join("unified/cgroup.controllers"))
            .is_ok_and(|s| !s.trim().is_empty())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n\
                    processor\t: 1\nmodel name\t: other\n";
        assert_eq!(cpu_model(text), "AMD EPYC 7B13");
        assert_eq!(cpu_model(""), "unknown CPU");
    }

    #[test]
    fn cgroup_layouts_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_layout(dir.path()), "v1");
        std::fs::create_dir(dir.path().join("unified")).unwrap();
        std::fs::write(dir.path().join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        assert!(cgroup_layout(dir.path()).starts_with("v1 (hybrid"));
        assert!(hybrid_with_controllers(dir.path()));
        std::fs::write(dir.path().join("unified/cgroup.controllers"), "").unwrap();
        assert!(!hybrid_with_controllers(dir.path()));
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        assert_eq!(cgroup_layout(dir.path()), "v2");
    }

    /// A fixed host for tests elsewhere in the bench.
    pub fn test_host() -> HostInfo {
        HostInfo {
            cpu_model: "CPU X".into(),
            cpus: 2,
            kernel: "6.1.0".into(),
            cgroup: "v1".into(),
            kvm: "kvm_pvm (nested PVM)".into(),
            guest_kernel_emulated: true,
            memory_mib: 24000,
            load_average: "1.00 2.00 3.00".into(),
        }
    }

    #[test]
    fn line_names_every_fact() {
        let h = test_host();
        assert_eq!(
            h.line(),
            "host: CPU X (2 CPUs, 24000 MiB), Linux 6.1.0, cgroup v1"
        );
        let k = h.kvm_line();
        assert!(k.starts_with("KVM: kvm_pvm (nested PVM); guest kernel code is EMULATED"));
        assert!(k.ends_with("load average at start: 1.00 2.00 3.00"), "{k}");
        let native = HostInfo {
            guest_kernel_emulated: false,
            ..h
        };
        assert!(native.kvm_line().contains("runs natively"));
    }

    #[test]
    fn kvm_module_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(kvm_module(dir.path(), false), "none (/dev/kvm missing)");
        assert_eq!(kvm_module(dir.path(), true), "kvm (vendor module unknown)");
        std::fs::create_dir(dir.path().join("kvm_amd")).unwrap();
        assert_eq!(kvm_module(dir.path(), true), "kvm_amd (AMD-V)");
        std::fs::create_dir(dir.path().join("kvm_pvm")).unwrap();
        assert_eq!(kvm_module(dir.path(), true), "kvm_pvm (nested PVM)");
    }

    #[test]
    fn mem_total_is_read() {
        assert_eq!(
            mem_total_kib("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            24576000
        );
        assert_eq!(mem_total_kib(""), 0);
    }
}
