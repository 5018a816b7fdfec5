//! Container cgroup operations for Stats, Pause/Resume and Update, on the cgroup of the
//! container's init (cgroup v1 or v2, whatever the host has), through cgroups-rs and the
//! containerd-shim crate's conversions into containerd's metrics types.

use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::Cgroup;
use containerd_shim::cgroup::{collect_metrics, collect_metrics_v2, get_cgroup, update_resources};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::util::convert_to_any;
use oci_spec::runtime::LinuxResources;

use super::error::{Result, ShimError};

fn cgroup_of(pid: i32) -> Result<Cgroup> {
    Ok(get_cgroup(pid as u32)?)
}

/// containerd's metrics (`io.containerd.cgroups.v1.Metrics` or `io.containerd.cgroups.v2.Metrics`)
/// of the cgroup `pid` is in, packed in an Any.
pub fn stats(pid: i32) -> Result<Any> {
    let cgroup = cgroup_of(pid)?;
    let any = if cgroup.v2() {
        convert_to_any(Box::new(collect_metrics_v2(&cgroup)?))?
    } else {
        let mut metrics = collect_metrics(&cgroup)?;
        // The crate's v1 collector parses only cgroup v2's cpu.stat keys: take CPU usage
        // from cpuacct.
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
        convert_to_any(Box::new(metrics))?
    };
    Ok(any)
}

/// Freeze (`true`) or thaw the cgroup `pid` is in.
pub fn set_frozen(pid: i32, frozen: bool) -> Result<()> {
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

/// Apply containerd's Update resources (an Any holding runtime-spec LinuxResources as JSON).
pub fn update(pid: i32, resources: &Any) -> Result<()> {
    let parsed: LinuxResources = serde_json::from_slice(&resources.value).map_err(|e| {
        ShimError::InvalidArgument(format!(
            "update resources ({}): not runtime-spec LinuxResources JSON: {e}",
            resources.type_url
        ))
    })?;
    let cgroup = cgroup_of(pid)?;
    update_resources(&cgroup, &parsed)?;
    Ok(())
}
