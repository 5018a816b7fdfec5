//! A small cgroupfs manager for the controllers kvmbox uses (memory, pids, cpu, cpuacct, cpuset,
//! freezer, devices), on cgroup v1 (one hierarchy per controller under `/sys/fs/cgroup/<ctrl>`) and on the
//! unified v2 hierarchy (/sys/fs/cgroup). Only the needed hierarchies are touched.

use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, LinuxResources};

use super::error::{ContainerError, Result};

/// Mount point of the cgroup filesystem(s).
pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// v1 controllers kvmbox may place containers in (see [`wanted_v1_controllers`]).
const V1_CONTROLLERS: &[&str] = &[
    "cpuset", "cpu", "cpuacct", "memory", "pids", "freezer", "devices",
];
/// v2 controllers enabled for containers (when the parent offers them).
const V2_CONTROLLERS: &[&str] = &["cpuset", "cpu", "memory", "pids"];

/// Which cgroup layout the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Legacy/hybrid: one hierarchy per controller.
    V1,
    /// Unified hierarchy.
    V2,
}

/// Detect the layout from the filesystem type of /sys/fs/cgroup.
pub(crate) fn layout() -> Layout {
    match nix::sys::statfs::statfs(CGROUP_ROOT) {
        Ok(st) if st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => Layout::V2,
        _ => Layout::V1,
    }
}

/// A container's cgroup: one directory per v1 hierarchy, or one v2 directory.
#[derive(Debug, Clone)]
pub(crate) struct Cgroup {
    /// The cgroup path relative to each hierarchy root (no leading '/').
    rel: PathBuf,
    layout: Layout,
    /// (hierarchy root, controllers in it) pairs; a single (root, []) on v2.
    hierarchies: Vec<(PathBuf, Vec<String>)>,
}

/// Validate and normalise a cgroup path ("/kvmbox/id" → "kvmbox/id").
pub(crate) fn relative_path(path: &str) -> Result<PathBuf> {
    let mut rel = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => rel.push(n),
            _ => {
                return Err(ContainerError::Cgroup {
                    path: path.into(),
                    msg: "path must not contain '..'".into(),
                })
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(ContainerError::Cgroup {
            path: path.into(),
            msg: "empty cgroup path".into(),
        });
    }
    Ok(rel)
}

impl Cgroup {
    /// Describe the cgroup at `path` (nothing is created).
    pub(crate) fn open(path: &str) -> Result<Self> {
        let rel = relative_path(path)?;
        let layout = layout();
        let hierarchies = match layout {
            Layout::V2 => vec![(PathBuf::from(CGROUP_ROOT), Vec::new())],
            Layout::V1 => v1_hierarchies().map_err(|e| ContainerError::Cgroup {
                path: path.into(),
                msg: format!("listing {CGROUP_ROOT}: {e}"),
            })?,
        };
        Ok(Cgroup {
            rel,
            layout,
            hierarchies,
        })
    }

    /// The cgroup's directories (one per hierarchy), with the controllers of each.
    pub(crate) fn dirs(&self) -> impl Iterator<Item = (PathBuf, &[String])> + '_ {
        self.hierarchies
            .iter()
            .map(|(root, ctrls)| (root.join(&self.rel), ctrls.as_slice()))
    }

    fn err(&self, msg: String) -> ContainerError {
        ContainerError::Cgroup {
            path: format!("/{}", self.rel.display()),
            msg,
        }
    }

    /// Create the directories and apply `resources`; on v1 also the device access rules (the
    /// spec's rules, then the default devices and `devices` (linux.devices) allowed, as runc).
    /// Device rules on v2 need an eBPF program and are not applied.
    pub(crate) fn create(
        &self,
        resources: Option<&LinuxResources>,
        devices: &[LinuxDevice],
    ) -> Result<()> {
        let rules = device_rules(resources, devices);
        let wanted = wanted_v1_controllers(resources, !rules.is_empty());
        for (root, ctrls) in &self.hierarchies {
            // v1: only the hierarchies this container needs (a mkdir, a migration and an rmdir
            // each); memory and pids always, for accounting and `cgroup_pids`.
            if self.layout == Layout::V1 && !ctrls.iter().any(|c| wanted.contains(&c.as_str())) {
                continue;
            }
            self.create_dirs(root, ctrls)?;
        }
        if let Some(res) = resources {
            self.apply(res)?;
        }
        if self.layout == Layout::V1 {
            if let Some(dir) = self.dir_of("devices") {
                for (allow, rule) in rules {
                    let file = if allow {
                        "devices.allow"
                    } else {
                        "devices.deny"
                    };
                    self.write(&dir, file, &rule)?;
                }
            }
        }
        Ok(())
    }

    fn create_dirs(&self, root: &Path, ctrls: &[String]) -> Result<()> {
        let is_cpuset = ctrls.iter().any(|c| c == "cpuset");
        let mut dir = root.to_path_buf();
        for comp in self.rel.components() {
            let parent = dir.clone();
            dir.push(comp);
            match fs::create_dir(&dir) {
                Ok(()) => {
                    if self.layout == Layout::V2 {
                        enable_v2_controllers(&parent)
                            .map_err(|e| self.err(format!("enabling controllers: {e}")))?;
                    }
                    if is_cpuset {
                        for file in ["cpuset.cpus", "cpuset.mems"] {
                            let cur = fs::read_to_string(dir.join(file)).unwrap_or_default();
                            if cur.trim().is_empty() {
                                let from =
                                    fs::read_to_string(parent.join(file)).unwrap_or_default();
                                self.write(&dir, file, from.trim())?;
                            }
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(self.err(format!("create {}: {e}", dir.display()))),
            }
        }
        Ok(())
    }

    /// Directory of the hierarchy holding `ctrl` (v2: the unified directory).
    fn dir_of(&self, ctrl: &str) -> Option<PathBuf> {
        match self.layout {
            Layout::V2 => Some(self.hierarchies[0].0.join(&self.rel)),
            Layout::V1 => self
                .hierarchies
                .iter()
                .find(|(_, c)| c.iter().any(|c| c == ctrl))
                .map(|(root, _)| root.join(&self.rel)),
        }
    }

    fn write(&self, dir: &Path, file: &str, value: &str) -> Result<()> {
        fs::write(dir.join(file), value)
            .map_err(|e| self.err(format!("write {value:?} to {file}: {e}")))
    }

    fn write_ctrl(&self, ctrl: &str, file: &str, value: &str) -> Result<()> {
        match self.dir_of(ctrl) {
            Some(dir) => self.write(&dir, file, value),
            None => Err(self.err(format!("controller {ctrl} is not available for {file}"))),
        }
    }

    /// An error naming the cgroup when none of its directories exists.
    pub(crate) fn require_exists(&self) -> Result<()> {
        if self.dirs().any(|(dir, _)| dir.is_dir()) {
            Ok(())
        } else {
            Err(self.err("no such cgroup".into()))
        }
    }

    /// Apply memory, pids, cpu and cpuset limits.
    pub(crate) fn apply(&self, res: &LinuxResources) -> Result<()> {
        let v2 = self.layout == Layout::V2;
        if let Some(cpu) = res.cpu() {
            if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
                self.write_ctrl("cpuset", "cpuset.cpus", cpus)?;
            }
            if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
                self.write_ctrl("cpuset", "cpuset.mems", mems)?;
            }
            if v2 {
                if let Some(shares) = cpu.shares().filter(|s| *s != 0) {
                    self.write_ctrl("cpu", "cpu.weight", &shares_to_weight(shares).to_string())?;
                }
                if cpu.quota().is_some() || cpu.period().is_some() {
                    let quota = match cpu.quota() {
                        Some(q) if q > 0 => q.to_string(),
                        _ => "max".into(),
                    };
                    let period = cpu.period().filter(|p| *p != 0).unwrap_or(100_000);
                    self.write_ctrl("cpu", "cpu.max", &format!("{quota} {period}"))?;
                }
            } else {
                if let Some(shares) = cpu.shares().filter(|s| *s != 0) {
                    self.write_ctrl("cpu", "cpu.shares", &shares.to_string())?;
                }
                if let Some(period) = cpu.period().filter(|p| *p != 0) {
                    self.write_ctrl("cpu", "cpu.cfs_period_us", &period.to_string())?;
                }
                if let Some(quota) = cpu.quota().filter(|q| *q != 0) {
                    self.write_ctrl("cpu", "cpu.cfs_quota_us", &quota.to_string())?;
                }
            }
        }
        if let Some(mem) = res.memory() {
            let limit = mem.limit().filter(|l| *l != 0);
            if v2 {
                if let Some(l) = limit {
                    self.write_ctrl("memory", "memory.max", &v2_limit(l))?;
                }
                if let Some(r) = mem.reservation().filter(|r| *r != 0) {
                    self.write_ctrl("memory", "memory.low", &v2_limit(r))?;
                }
                if let Some(swap) = mem.swap().filter(|s| *s != 0) {
                    let value = match (swap, limit) {
                        (-1, _) | (_, None) | (_, Some(-1)) => v2_limit(swap),
                        (s, Some(l)) => (s - l).max(0).to_string(),
                    };
                    self.write_swap(&value, "memory.swap.max")?;
                }
            } else {
                // memory.limit_in_bytes may never exceed memory.memsw.limit_in_bytes: when the
                // new limit is above the current memory+swap limit, raise that one first.
                let swap = mem.swap().filter(|s| *s != 0);
                let swap_first = swap.is_some()
                    && limit.is_some_and(|l| {
                        l < 0 || self.memsw_limit().is_some_and(|cur| l as u64 > cur)
                    });
                if swap_first {
                    self.write_swap(
                        &swap.unwrap_or_default().to_string(),
                        "memory.memsw.limit_in_bytes",
                    )?;
                }
                if let Some(l) = limit {
                    self.write_ctrl("memory", "memory.limit_in_bytes", &l.to_string())?;
                }
                if let Some(r) = mem.reservation().filter(|r| *r != 0) {
                    self.write_ctrl("memory", "memory.soft_limit_in_bytes", &r.to_string())?;
                }
                if let Some(swap) = swap.filter(|_| !swap_first) {
                    self.write_swap(&swap.to_string(), "memory.memsw.limit_in_bytes")?;
                }
                if let Some(sw) = mem.swappiness().filter(|s| *s <= 100) {
                    self.write_ctrl("memory", "memory.swappiness", &sw.to_string())?;
                }
                if mem.disable_oom_killer() == Some(true) {
                    self.write_ctrl("memory", "memory.oom_control", "1")?;
                }
            }
        }
        if let Some(pids) = res.pids() {
            let value = if pids.limit() > 0 {
                pids.limit().to_string()
            } else {
                "max".into()
            };
            self.write_ctrl("pids", "pids.max", &value)?;
        }
        Ok(())
    }

    /// The current v1 memory+swap limit, if swap accounting is on.
    fn memsw_limit(&self) -> Option<u64> {
        let dir = self.dir_of("memory")?;
        fs::read_to_string(dir.join("memory.memsw.limit_in_bytes"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Swap accounting may be compiled out or disabled: skip (with a log line) if the file is
    /// missing, as runc does.
    fn write_swap(&self, value: &str, file: &str) -> Result<()> {
        let Some(dir) = self.dir_of("memory") else {
            return Ok(());
        };
        if !dir.join(file).exists() {
            tracing::warn!("{file} missing (swap accounting disabled): swap limit ignored");
            return Ok(());
        }
        self.write(&dir, file, value)
    }

    /// Move process `pid` into the cgroup (every hierarchy where it exists).
    pub(crate) fn add(&self, pid: i32) -> Result<()> {
        let pid = pid.to_string();
        for (dir, _) in self.dirs() {
            if self.layout == Layout::V1 && !dir.exists() {
                continue;
            }
            self.write(&dir, "cgroup.procs", &pid)?;
        }
        Ok(())
    }

    /// PIDs in the cgroup.
    pub(crate) fn procs(&self) -> Result<Vec<i32>> {
        let dir = self
            .dir_of("pids")
            .or_else(|| self.dirs().next().map(|d| d.0))
            .ok_or_else(|| self.err("no hierarchy".into()))?;
        let text = match fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(format!("read cgroup.procs: {e}"))),
        };
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Kill everything in the cgroup and remove its directories (retrying briefly while the
    /// killed tasks exit).
    pub(crate) fn destroy(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut killed_v2 = false;
        for (dir, _) in self.dirs() {
            if !dir.exists() {
                continue;
            }
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        if Instant::now() > deadline {
                            return Err(self.err(format!("remove {}: {e}", dir.display())));
                        }
                        if self.layout == Layout::V2 && !killed_v2 {
                            killed_v2 = fs::write(dir.join("cgroup.kill"), "1").is_ok();
                        }
                        if !killed_v2 {
                            kill_all(&dir);
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => return Err(self.err(format!("remove {}: {e}", dir.display()))),
                }
            }
        }
        Ok(())
    }
}

/// The v1 controllers a container needs: memory and pids always; cpu and cpuacct with CPU
/// bandwidth settings; cpuset with cpus/mems; devices with device rules.
pub(crate) fn wanted_v1_controllers(
    resources: Option<&LinuxResources>,
    device_rules: bool,
) -> Vec<&'static str> {
    let mut out = vec!["memory", "pids"];
    if let Some(cpu) = resources.and_then(|r| r.cpu().as_ref()) {
        if cpu.shares().is_some_and(|v| v != 0)
            || cpu.quota().is_some_and(|v| v != 0)
            || cpu.period().is_some_and(|v| v != 0)
        {
            out.extend(["cpu", "cpuacct"]);
        }
        if cpu.cpus().as_deref().is_some_and(|c| !c.is_empty())
            || cpu.mems().as_deref().is_some_and(|c| !c.is_empty())
        {
            out.push("cpuset");
        }
    }
    if device_rules {
        out.push("devices");
    }
    out
}

/// One v1 device rule line ("c 1:3 rwm").
pub(crate) fn device_rule(
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: Option<&str>,
) -> String {
    let t = match typ {
        None | Some(LinuxDeviceType::A) => "a",
        Some(LinuxDeviceType::B) => "b",
        Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => "c",
        Some(LinuxDeviceType::P) => "p",
    };
    let num = |n: Option<i64>| {
        n.filter(|n| *n >= 0)
            .map_or("*".to_string(), |n| n.to_string())
    };
    let access = access.filter(|a| !a.is_empty()).unwrap_or("rwm");
    format!("{t} {}:{} {access}", num(major), num(minor))
}

/// Devices every container may use (null, zero, full, random, urandom, tty, console, ptmx,
/// pts) and mknod of any node, as runc allows by default.
const DEFAULT_ALLOWED: &[(&str, &str)] = &[
    ("c", "*:* m"),
    ("b", "*:* m"),
    ("c", "1:3 rwm"),
    ("c", "1:5 rwm"),
    ("c", "1:7 rwm"),
    ("c", "1:8 rwm"),
    ("c", "1:9 rwm"),
    ("c", "5:0 rwm"),
    ("c", "5:1 rwm"),
    ("c", "5:2 rwm"),
    ("c", "136:* rwm"),
];

/// The ordered (allow, rule) list for the v1 devices controller.
pub(crate) fn device_rules(
    resources: Option<&LinuxResources>,
    devices: &[LinuxDevice],
) -> Vec<(bool, String)> {
    let mut out: Vec<(bool, String)> = resources
        .and_then(|r| r.devices().as_deref())
        .unwrap_or(&[])
        .iter()
        .map(|d| {
            (
                d.allow(),
                device_rule(d.typ(), d.major(), d.minor(), d.access().as_deref()),
            )
        })
        .collect();
    if out.is_empty() {
        return out;
    }
    out.extend(
        DEFAULT_ALLOWED
            .iter()
            .map(|(t, r)| (true, format!("{t} {r}"))),
    );
    out.extend(devices.iter().map(|d| {
        (
            true,
            device_rule(Some(d.typ()), Some(d.major()), Some(d.minor()), None),
        )
    }));
    out
}

fn kill_all(dir: &Path) {
    // A frozen task cannot die: thaw first (v1 freezer; v2 has cgroup.kill).
    let _ = fs::write(dir.join("freezer.state"), "THAWED");
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn v2_limit(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// Convert cgroup v1 cpu.shares [2, 262144] to v2 cpu.weight [1, 10000].
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    if shares <= 2 {
        return 1;
    }
    if shares >= 262_144 {
        return 10_000;
    }
    1 + ((shares - 2) * 9999) / 262_142
}

/// v2: enable our controllers for the children of `parent` (those `parent` offers).
fn enable_v2_controllers(parent: &Path) -> std::io::Result<()> {
    let offered = fs::read_to_string(parent.join("cgroup.controllers"))?;
    let enabled = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    let want: Vec<String> = V2_CONTROLLERS
        .iter()
        .filter(|c| offered.split_whitespace().any(|o| o == **c))
        .filter(|c| !enabled.split_whitespace().any(|o| o == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if want.is_empty() {
        return Ok(());
    }
    fs::write(parent.join("cgroup.subtree_control"), want.join(" "))
}

/// v1: the mounted hierarchies (real directories, not the cpu → cpu,cpuacct symlinks) that hold
/// at least one of our controllers.
fn v1_hierarchies() -> std::io::Result<Vec<(PathBuf, Vec<String>)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(CGROUP_ROOT)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let ctrls: Vec<String> = name.split(',').map(str::to_owned).collect();
        if ctrls.iter().any(|c| V1_CONTROLLERS.contains(&c.as_str())) {
            out.push((entry.path(), ctrls));
        }
    }
    out.sort();
    Ok(out)
}

/// The caller-visible cgroup path of `pid` for each v1 hierarchy / the v2 path ("" key),
/// from /proc/<pid>/cgroup.
pub(crate) fn proc_cgroups(pid: &str) -> std::io::Result<Vec<(String, String)>> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?.to_owned();
            let path = it.next()?.to_owned();
            Some((ctrls, path))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_normalised_and_dotdot_refused() {
        assert_eq!(
            relative_path("/kvmbox/a").unwrap(),
            PathBuf::from("kvmbox/a")
        );
        assert_eq!(
            relative_path("kvmbox/./a").unwrap(),
            PathBuf::from("kvmbox/a")
        );
        assert!(relative_path("/kvmbox/../../etc").is_err());
        assert!(relative_path("/").is_err());
    }

    #[test]
    fn device_rules_follow_the_spec_then_the_defaults() {
        let res: LinuxResources = serde_json::from_str(
            r#"{"devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rw"}]}"#,
        )
        .unwrap();
        let dev: LinuxDevice = serde_json::from_str(
            r#"{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}"#,
        )
        .unwrap();
        let rules = device_rules(Some(&res), &[dev]);
        assert_eq!(rules[0], (false, "a *:* rwm".to_string()));
        assert_eq!(rules[1], (true, "c 10:200 rw".to_string()));
        assert!(rules.contains(&(true, "c 1:3 rwm".to_string())));
        assert_eq!(rules.last().unwrap(), &(true, "c 10:229 rwm".to_string()));
        assert!(device_rules(None, &[]).is_empty());
    }

    #[test]
    fn only_needed_v1_controllers_are_created() {
        assert_eq!(wanted_v1_controllers(None, false), vec!["memory", "pids"]);
        let res: LinuxResources =
            serde_json::from_str(r#"{"cpu": {"shares": 512, "cpus": "0"}}"#).unwrap();
        assert_eq!(
            wanted_v1_controllers(Some(&res), true),
            vec!["memory", "pids", "cpu", "cpuacct", "cpuset", "devices"]
        );
    }

    #[test]
    fn shares_map_onto_weight_range() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn v2_limits_use_max_for_negative() {
        assert_eq!(v2_limit(-1), "max");
        assert_eq!(v2_limit(4096), "4096");
    }
}
