//! A one-line description of the host the benchmark ran on.

use std::path::Path;

/// CPU, kernel and cgroup facts of the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostInfo {
    /// CPU model name from /proc/cpuinfo.
    pub cpu_model: String,
    /// CPUs available to this process.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// Cgroup layout (v1, v1 hybrid, v2).
    pub cgroup: String,
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
        }
    }

    /// `host: <cpu> (<n> CPUs), Linux <release>, cgroup <layout>`.
    pub fn line(&self) -> String {
        format!(
            "host: {} ({} CPUs), Linux {}, cgroup {}",
            self.cpu_model, self.cpus, self.kernel, self.cgroup
        )
    }
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
mod tests {
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

    #[test]
    fn line_names_every_fact() {
        let h = HostInfo {
            cpu_model: "CPU X".into(),
            cpus: 2,
            kernel: "6.1.0".into(),
            cgroup: "v1".into(),
        };
        assert_eq!(h.line(), "host: CPU X (2 CPUs), Linux 6.1.0, cgroup v1");
    }
}
