//! Which parts of a runtime-spec `linux.resources` `update` applies to a container's cgroup:
//! memory (limit, reservation, swap, swappiness, OOM killer), CPU (shares, quota, period,
//! cpuset cpus and mems) and pids. The rest (devices, block I/O, hugepages, network, RDMA,
//! unified, kernel memory, realtime CPU) is not changed by `update`.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

/// Where the cgroup filesystems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// True if `res` sets at least one limit `update` writes (zero values mean "unchanged", as in
/// runc's `update`).
pub fn has_updatable_limit(res: &LinuxResources) -> bool {
    let memory = res.memory().as_ref().is_some_and(|m| {
        m.limit().is_some_and(|v| v != 0)
            || m.reservation().is_some_and(|v| v != 0)
            || m.swap().is_some_and(|v| v != 0)
            || m.swappiness().is_some_and(|v| v <= 100)
            || m.disable_oom_killer() == Some(true)
    });
    let cpu = res.cpu().as_ref().is_some_and(|c| {
        c.shares().is_some_and(|v| v != 0)
            || c.quota().is_some_and(|v| v != 0)
            || c.period().is_some_and(|v| v != 0)
            || c.cpus().as_deref().is_some_and(|s| !s.is_empty())
            || c.mems().as_deref().is_some_and(|s| !s.is_empty())
    });
    memory || cpu || res.pids().is_some()
}

/// The runtime-spec names of the fields set in `res` that `update` does not apply.
pub fn ignored_fields(res: &LinuxResources) -> Vec<&'static str> {
    let mut out = Vec::new();
    if res.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        out.push("devices");
    }
    if res.block_io().is_some() {
        out.push("blockIO");
    }
    if res
        .hugepage_limits()
        .as_ref()
        .is_some_and(|h| !h.is_empty())
    {
        out.push("hugepageLimits");
    }
    if res.network().is_some() {
        out.push("network");
    }
    if res.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
        out.push("rdma");
    }
    if res.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        out.push("unified");
    }
    if let Some(m) = res.memory() {
        #[allow(deprecated)] // read only to say it is ignored
        if m.kernel().is_some_and(|v| v != 0) {
            out.push("memory.kernel");
        }
        if m.kernel_tcp().is_some_and(|v| v != 0) {
            out.push("memory.kernelTCP");
        }
    }
    if let Some(c) = res.cpu() {
        if c.realtime_runtime().is_some_and(|v| v != 0) {
            out.push("cpu.realtimeRuntime");
        }
        if c.realtime_period().is_some_and(|v| v != 0) {
            out.push("cpu.realtimePeriod");
        }
    }
    out
}

/// On a cgroup v1 host under `cgroup_root`: the controllers `res` needs (`cpu` for shares,
/// quota and period, `cpuset` for cpus and mems) in whose hierarchy the container's cgroup
/// `cgroup_path` has no directory. On v1 the container setup creates those only when the spec
/// asked for such limits at create time, so `update` cannot set them afterwards. Empty on a
/// cgroup v2 host.
pub fn missing_v1_controllers(
    cgroup_root: &Path,
    cgroup_path: &str,
    res: &LinuxResources,
) -> Vec<&'static str> {
    if cgroup_root.join("cgroup.controllers").exists() {
        return Vec::new();
    }
    let Some(cpu) = res.cpu() else {
        return Vec::new();
    };
    let mut wanted = Vec::new();
    if cpu.shares().is_some_and(|v| v != 0)
        || cpu.quota().is_some_and(|v| v != 0)
        || cpu.period().is_some_and(|v| v != 0)
    {
        wanted.push("cpu");
    }
    if cpu.cpus().as_deref().is_some_and(|s| !s.is_empty())
        || cpu.mems().as_deref().is_some_and(|s| !s.is_empty())
    {
        wanted.push("cpuset");
    }
    let rel = cgroup_path.trim_start_matches('/');
    wanted
        .into_iter()
        .filter(|c| {
            let hierarchy = cgroup_root.join(c);
            hierarchy.is_dir() && !hierarchy.join(rel).is_dir()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn limits_that_update_writes_are_recognised() {
        assert!(!has_updatable_limit(&res("{}")));
        assert!(!has_updatable_limit(&res(
            r#"{"memory": {"limit": 0}, "cpu": {"cpus": ""}}"#
        )));
        assert!(has_updatable_limit(&res(r#"{"memory": {"limit": -1}}"#)));
        assert!(has_updatable_limit(&res(r#"{"cpu": {"quota": 5000}}"#)));
        assert!(has_updatable_limit(&res(r#"{"cpu": {"mems": "0"}}"#)));
        assert!(has_updatable_limit(&res(r#"{"pids": {"limit": 0}}"#)));
    }

    #[test]
    fn fields_update_ignores_are_named() {
        let r = res(
            r#"{"memory": {"limit": 1, "kernel": 5}, "blockIO": {"weight": 10},
                "hugepageLimits": [], "unified": {"io.weight": "10"}, "pids": {"limit": 3}}"#,
        );
        assert_eq!(
            ignored_fields(&r),
            vec!["blockIO", "unified", "memory.kernel"]
        );
        assert!(ignored_fields(&res(r#"{"pids": {"limit": 3}}"#)).is_empty());
    }

    #[test]
    fn missing_v1_cpu_and_cpuset_cgroups_are_found() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for dir in [
            "memory/kvmbox/c1",
            "pids/kvmbox/c1",
            "cpu/kvmbox",
            "cpuset/kvmbox/c1",
        ] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        let both = res(r#"{"cpu": {"quota": 5000, "cpus": "0"}, "memory": {"limit": 9}}"#);
        assert_eq!(missing_v1_controllers(r, "/kvmbox/c1", &both), vec!["cpu"]);
        assert_eq!(
            missing_v1_controllers(r, "/kvmbox/c2", &both),
            vec!["cpu", "cpuset"]
        );
        let memory_only = res(r#"{"memory": {"limit": 9}, "cpu": {"quota": 0}}"#);
        assert!(missing_v1_controllers(r, "/kvmbox/c2", &memory_only).is_empty());
        // cgroup v2: one hierarchy, nothing is missing.
        std::fs::write(r.join("cgroup.controllers"), "cpu memory pids").unwrap();
        assert!(missing_v1_controllers(r, "/kvmbox/c2", &both).is_empty());
    }
}
