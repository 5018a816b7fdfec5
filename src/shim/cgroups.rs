//! Container cgroup operations for Stats and Pause/Resume (and Update's input), on the cgroup of the
//! container's init (cgroup v1 or v2, whatever the host has), through cgroups-rs and the
//! containerd-shim crate's conversions into containerd's metrics types.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::hierarchies::is_cgroup2_unified_mode;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::Cgroup;
use containerd_shim::cgroup::{collect_metrics, collect_metrics_v2, get_cgroup};
use containerd_shim::protos::cgroups::metrics::Metrics;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::util::convert_to_any;
use oci_spec::runtime::LinuxResources;

use super::error::{Result, ShimError};

/// Where cgroup v1 hierarchies are mounted.
const V1_ROOT: &str = "/sys/fs/cgroup";
/// How long a v1 freeze may take to settle.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);

fn cgroup_of(pid: i32) -> Result<Cgroup> {
    Ok(get_cgroup(pid as u32)?)
}

/// Whether `pid` has a cgroup of its own (not the root) in the v1 hierarchy holding `controller`:
/// kvmbox joins some v1 controllers (cpu, cpuacct, freezer...) only when a container needs them.
fn in_own_v1_cgroup(pid: i32, controller: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrls.split(',').any(|c| c == controller).then_some(path)
        })
        .any(|path| path != "/")
}

/// containerd's metrics (`io.containerd.cgroups.v1.Metrics` or `io.containerd.cgroups.v2.Metrics`)
/// of the cgroup `pid` is in, packed in an Any. On v1, CPU figures are reported only when the
/// container has its own cpuacct cgroup (never the host's totals).
pub fn stats(pid: i32) -> Result<Any> {
    let cgroup = cgroup_of(pid)?;
    let any = if cgroup.v2() {
        convert_to_any(Box::new(collect_metrics_v2(&cgroup)?))?
    } else {
        let mut metrics = collect_metrics(&cgroup)?;
        add_v1_memory_details(&cgroup, &mut metrics);
        metrics.cpu.clear();
        // The crate's v1 collector parses only cgroup v2's cpu.stat keys: take CPU usage
        // from cpuacct.
        if in_own_v1_cgroup(pid, "cpuacct") {
            if let Some(acct) = cgroup.controller_of::<CpuAcctController>() {
                let acct = acct.cpuacct();
                let usage = metrics
                    .cpu
                    .mut_or_insert_default()
                    .usage
                    .mut_or_insert_default();
                usage.total = acct.usage;
                usage.kernel = acct.usage_sys;
                usage.user = acct.usage_user;
                usage.per_cpu = acct
                    .usage_percpu
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect();
            }
        }
        convert_to_any(Box::new(metrics))?
    };
    Ok(any)
}

/// The crate's v1 collector fills only the memory usage: add the limit (CRI reports
/// `available_bytes` as limit minus working set, so a missing limit of 0 wraps around to ~2^64)
/// and the RSS and page-fault counters CRI reports.
fn add_v1_memory_details(cgroup: &Cgroup, metrics: &mut Metrics) {
    let (Some(memory), Some(ctrl)) = (
        metrics.memory.as_mut(),
        cgroup.controller_of::<MemController>(),
    ) else {
        return;
    };
    let stat = ctrl.memory_stat();
    memory.usage.mut_or_insert_default().limit = u64::try_from(stat.limit_in_bytes).unwrap_or(0);
    memory.usage.mut_or_insert_default().max = stat.max_usage_in_bytes;
    memory.rss = stat.stat.rss;
    memory.total_rss = stat.stat.total_rss;
    memory.cache = stat.stat.cache;
    memory.total_cache = stat.stat.total_cache;
    memory.pg_fault = stat.stat.pgfault;
    memory.total_pg_fault = stat.stat.total_pgfault;
    memory.pg_maj_fault = stat.stat.pgmajfault;
    memory.total_pg_maj_fault = stat.stat.total_pgmajfault;
}

/// Freeze (`true`) or thaw the container whose init is `pid`, whose cgroup path is
/// `cgroup_path` and whose processes are `pids`. On cgroup v1 the container joins a freezer
/// cgroup at `cgroup_path` first if it has none (kvmbox's delete removes it).
pub fn set_frozen(pid: i32, cgroup_path: &str, pids: &[i32], frozen: bool) -> Result<()> {
    if !is_cgroup2_unified_mode() {
        return set_frozen_v1(cgroup_path, pids, frozen);
    }
    let cgroup = cgroup_of(pid)?;
    let freezer: &FreezerController = cgroup.controller_of().ok_or_else(|| {
        ShimError::FailedPrecondition(format!("process {pid}: no freezer cgroup"))
    })?;
    let done = if frozen {
        freezer.freeze()
    } else {
        freezer.thaw()
    };
    done.map_err(|e| ShimError::FailedPrecondition(format!("freezer of process {pid}: {e}")))
}

fn set_frozen_v1(cgroup_path: &str, pids: &[i32], frozen: bool) -> Result<()> {
    let relative = cgroup_path.trim_start_matches('/');
    if relative.is_empty() {
        return Err(ShimError::FailedPrecondition(
            "refusing to freeze the root cgroup".into(),
        ));
    }
    let dir: PathBuf = Path::new(V1_ROOT).join("freezer").join(relative);
    let write = |file: &str, value: &str| {
        let path = dir.join(file);
        std::fs::write(&path, value).map_err(|e| ShimError::io("write", path, e))
    };
    if frozen {
        std::fs::create_dir_all(&dir).map_err(|e| ShimError::io("create cgroup", &dir, e))?;
        for pid in pids {
            // A process that exited meanwhile is fine.
            match write("cgroup.procs", &pid.to_string()) {
                Err(ShimError::Io { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {
                }
                other => other?,
            }
        }
    } else if !dir.exists() {
        return Ok(());
    }
    let want = if frozen { "FROZEN" } else { "THAWED" };
    write("freezer.state", want)?;
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    loop {
        let state = std::fs::read_to_string(dir.join("freezer.state")).unwrap_or_default();
        if state.trim() == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ShimError::FailedPrecondition(format!(
                "{}: still {} after {FREEZE_TIMEOUT:?}",
                dir.display(),
                state.trim()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// containerd's Update resources: runtime-spec LinuxResources as JSON in an Any.
pub fn parse_resources(resources: &Any) -> Result<LinuxResources> {
    serde_json::from_slice(&resources.value).map_err(|e| {
        ShimError::InvalidArgument(format!(
            "update resources ({}): not runtime-spec LinuxResources JSON: {e}",
            resources.type_url
        ))
    })
}
