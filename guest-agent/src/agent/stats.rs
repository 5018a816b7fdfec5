//! Resource usage of a container's cgroup, read from the cgroup v2 interface files under
//! `/sys/fs/cgroup/<cgroup path>` (memory.current/max, memory.events, cpu.stat,
//! pids.current/max). On a cgroup v1 host (the `--listen-unix` test mode) stats are an error.

use std::path::{Path, PathBuf};

use crate::protocol::Stats;

/// Mount point of the unified hierarchy.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// True when /sys/fs/cgroup is a cgroup2 mount.
pub fn is_v2() -> bool {
    matches!(nix::sys::statfs::statfs(CGROUP_ROOT),
        Ok(st) if st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// The v2 directory of `cgroup_path` ("/kvmbox/id").
fn dir(cgroup_path: &str) -> PathBuf {
    Path::new(CGROUP_ROOT).join(cgroup_path.trim_start_matches('/'))
}

fn read(dir: &Path, file: &str) -> Result<String, String> {
    std::fs::read_to_string(dir.join(file))
        .map_err(|e| format!("read {}: {e}", dir.join(file).display()))
}

/// Parse a single number; "max" is None.
fn limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file ("key value" lines).
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Read the stats of `cgroup_path`.
pub fn read_stats(cgroup_path: &str) -> Result<Stats, String> {
    if !is_v2() {
        return Err(format!(
            "stats need cgroup v2; {CGROUP_ROOT} is not a cgroup2 mount"
        ));
    }
    let d = dir(cgroup_path);
    if !d.is_dir() {
        return Err(format!("cgroup {} does not exist", d.display()));
    }
    let opt = |file: &str| read(&d, file).unwrap_or_default();
    let cpu = opt("cpu.stat");
    let events = opt("memory.events");
    Ok(Stats {
        memory_current: limit(&read(&d, "memory.current")?).unwrap_or(0),
        memory_limit: limit(&opt("memory.max")),
        oom_kills: keyed(&events, "oom_kill"),
        cpu_usage_usec: keyed(&cpu, "usage_usec"),
        cpu_user_usec: keyed(&cpu, "user_usec"),
        cpu_system_usec: keyed(&cpu, "system_usec"),
        pids_current: limit(&opt("pids.current")).unwrap_or(0),
        pids_limit: limit(&opt("pids.max")),
        agent_rss_kib: std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|t| vm_rss_kib(&t)),
    })
}

/// VmRSS (KiB) of a /proc/<pid>/status text.
fn vm_rss_kib(status: &str) -> Option<u64> {
    let v = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    v.trim().trim_end_matches("kB").trim().parse().ok()
}

/// memory.events oom_kill of `cgroup_path` (0 when unreadable, e.g. on cgroup v1).
pub fn oom_kills(cgroup_path: &str) -> u64 {
    std::fs::read_to_string(dir(cgroup_path).join("memory.events"))
        .map(|t| keyed(&t, "oom_kill"))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_and_limits_parse() {
        let events = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n";
        assert_eq!(keyed(events, "oom_kill"), 1);
        assert_eq!(keyed(events, "oom"), 1);
        assert_eq!(keyed("usage_usec 120\nuser_usec 100\n", "user_usec"), 100);
        assert_eq!(keyed("", "x"), 0);
        assert_eq!(limit("max\n"), None);
        assert_eq!(limit("1048576\n"), Some(1048576));
    }

    #[test]
    fn own_rss_is_read_from_proc_status() {
        assert_eq!(
            vm_rss_kib("Name:\tx\nVmRSS:\t    2048 kB\nVmData: 1 kB\n"),
            Some(2048)
        );
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(vm_rss_kib(&own).unwrap() > 0);
    }
}
