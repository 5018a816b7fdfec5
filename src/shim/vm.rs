//! The agent side of vm-mode containers: a container's exit is not a host process exit, so
//! each process is waited for through the guest agent (`WaitProcess`) on a thread of its own;
//! signals, pause/resume and stats go to the agent too.

use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::util::convert_to_any;
use guest_agent::protocol::{ProcessRef, Request, ResponseBody, Stats};

use super::error::{Result, ShimError};
use super::events::EventSender;
use super::process::Process;
use crate::runtime::vm::{AgentClient, AgentError, AgentTarget};

/// How long an exit waits for the process's output to be copied out (the stdio relay's exit,
/// or the end of its streams); a background process may hold the streams open.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// Exit status reported when the VM went away under a running process.
const VM_GONE_STATUS: i32 = 128 + libc::SIGKILL;

/// What a wait thread needs.
pub struct Waiter {
    /// The agent of the process's VM.
    pub target: AgentTarget,
    /// The process.
    pub process: ProcessRef,
    /// A connection to reuse for WaitProcess (else one is opened).
    pub client: Option<AgentClient>,
    /// Disconnects once the process's stdio relay process exited (vm init).
    pub relay: Option<Receiver<()>>,
}

/// Start the thread waiting for `process` in the guest: WaitProcess, then its output (relay
/// exit and copied streams, bounded by [`OUTPUT_DRAIN`]), then the exit is recorded and
/// TaskExit goes out.
pub fn spawn_waiter(process: Arc<Process>, events: EventSender, waiter: Waiter) -> Result<()> {
    let name = format!("wait-{}", process.event_id());
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            let mut waiter = waiter;
            let status = wait_in_guest(&mut waiter);
            let deadline = std::time::Instant::now() + OUTPUT_DRAIN;
            let left = || deadline.saturating_duration_since(std::time::Instant::now());
            if let Some(relay) = &waiter.relay {
                let _ = relay.recv_timeout(left());
            }
            let output = process.lock().io.take_output_waiter();
            if let Some(done) = output {
                let _ = done.recv_timeout(left());
            }
            containerd_shim::debug!("{} exited in the guest with {status}", process.event_id());
            process.set_exited(status, &events);
        })
        .map_err(|e| ShimError::FailedPrecondition(format!("spawn wait thread: {e}")))?;
    Ok(())
}

/// The exit status of the process, from the agent; the VM going away counts as SIGKILL.
fn wait_in_guest(w: &mut Waiter) -> i32 {
    let request = Request::WaitProcess {
        process: w.process.clone(),
    };
    let client = match w.client.take() {
        Some(c) => Ok(c),
        None => AgentClient::connect(&w.target),
    };
    match client.and_then(|mut c| c.request(&request)) {
        Ok(ResponseBody::Exited { status, .. }) => status,
        Ok(other) => {
            containerd_shim::warn!("WaitProcess {:?}: unexpected answer {other:?}", w.process);
            VM_GONE_STATUS
        }
        Err(e) => {
            containerd_shim::warn!("WaitProcess {:?}: {e}", w.process);
            VM_GONE_STATUS
        }
    }
}

fn agent_error(what: &str, e: AgentError) -> ShimError {
    match e {
        AgentError::VmmGone { .. } => ShimError::NotFound(format!("{what}: the VM is gone")),
        e => ShimError::FailedPrecondition(format!("{what}: {e}")),
    }
}

/// Send `signal` to a guest process (with `all`, to every process of its container).
pub fn signal(target: &AgentTarget, process: &ProcessRef, signal: i32, all: bool) -> Result<()> {
    let what = format!("kill {}", describe(process));
    let request = Request::SignalProcess {
        process: process.clone(),
        signal,
        all,
    };
    AgentClient::connect(target)
        .and_then(|mut c| c.request_ok(&request))
        .map_err(|e| match e {
            AgentError::Refused(msg) => {
                ShimError::NotFound(format!("{what}: process already finished ({msg})"))
            }
            e => agent_error(&what, e),
        })
}

/// Freeze (`paused`) or thaw container `id` in the guest (cgroup.freeze).
pub fn set_paused(target: &AgentTarget, id: &str, paused: bool) -> Result<()> {
    let (what, request) = if paused {
        ("pause", Request::Pause { id: id.to_string() })
    } else {
        ("resume", Request::Resume { id: id.to_string() })
    };
    AgentClient::connect(target)
        .and_then(|mut c| c.request_ok(&request))
        .map_err(|e| agent_error(&format!("{what} {id}"), e))
}

/// containerd's `io.containerd.cgroups.v2.Metrics` of container `id`, from the agent's
/// cgroup v2 Stats.
pub fn stats(target: &AgentTarget, id: &str) -> Result<Any> {
    let what = format!("stats {id}");
    let body = AgentClient::connect(target)
        .and_then(|mut c| c.request(&Request::Stats { id: id.to_string() }))
        .map_err(|e| agent_error(&what, e))?;
    match body {
        ResponseBody::Stats(stats) => Ok(convert_to_any(Box::new(metrics(&stats)))?),
        other => Err(ShimError::FailedPrecondition(format!(
            "{what}: unexpected answer {other:?}"
        ))),
    }
}

/// The agent's Stats as containerd's cgroup v2 metrics ("max" limits are reported as 0,
/// as containerd does for an unlimited cgroup).
pub fn metrics(stats: &Stats) -> Metrics {
    let mut m = Metrics::new();
    m.pids = Some(PidsStat {
        current: stats.pids_current,
        limit: stats.pids_limit.unwrap_or(0),
        ..Default::default()
    })
    .into();
    m.cpu = Some(CPUStat {
        usage_usec: stats.cpu_usage_usec,
        user_usec: stats.cpu_user_usec,
        system_usec: stats.cpu_system_usec,
        ..Default::default()
    })
    .into();
    m.memory = Some(MemoryStat {
        usage: stats.memory_current,
        usage_limit: stats.memory_limit.unwrap_or(0),
        ..Default::default()
    })
    .into();
    m.memory_events = Some(MemoryEvents {
        oom_kill: stats.oom_kills,
        ..Default::default()
    })
    .into();
    m
}

fn describe(p: &ProcessRef) -> String {
    match &p.exec_id {
        Some(exec) => format!("exec {exec} in container {}", p.container_id),
        None => format!("container {}", p.container_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_stats_become_cgroup_v2_metrics() {
        let stats = Stats {
            memory_current: 4096,
            memory_limit: Some(16 << 20),
            oom_kills: 2,
            cpu_usage_usec: 30,
            cpu_user_usec: 20,
            cpu_system_usec: 10,
            pids_current: 3,
            pids_limit: None,
            agent_rss_kib: Some(2048),
        };
        let m = metrics(&stats);
        assert_eq!((m.memory.usage, m.memory.usage_limit), (4096, 16 << 20));
        assert_eq!(m.memory_events.oom_kill, 2);
        assert_eq!(
            (m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec),
            (30, 20, 10)
        );
        assert_eq!((m.pids.current, m.pids.limit), (3, 0));
        let any = convert_to_any(Box::new(m)).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
    }
}
