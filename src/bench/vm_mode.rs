//! kvmbox `--isolation vm`, measured: the phases of one `kvmbox run` from the marks the runtime
//! appends to `$KVMBOX_TIMINGS` ([`crate::runtime::vm::timing`]), the memory of one created
//! instance (the VMM's smaps and the guest agent's own RSS from its Stats answer), and K
//! instances created at once (density).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_agent::protocol::{Request, ResponseBody};

use super::error::BenchError;
use super::memory::{self, MemorySample};
use super::report::{DensityResult, DensityVm, Outcome};
use super::runtimes::Runtime;
use super::stats::Spread;
use super::vm::VMM_SETUP;
use crate::runtime::state::StateStore;
use crate::runtime::vm::lifecycle::target_of;
use crate::runtime::vm::{timing, AgentClient};

/// Phase: `kvmbox run` spawned → the VMM spawned (bundle, VM plan, agent initramfs).
pub const HOST_PREP: &str = "host: bundle, plan, initramfs";
/// Phase: the guest kernel's entry (first KVM_RUN) → its first console output.
pub const KERNEL_ENTRY: &str = "kernel entry → first console output";
/// Phase: first console output → the agent answered Hello.
pub const AGENT_READY: &str = "kernel boot + agent start → Hello";
/// Phase: → the agent answered CreateContainer.
pub const CONTAINER_CREATE: &str = "CreateContainer";
/// Phase: → the agent answered StartContainer.
pub const CONTAINER_START: &str = "StartContainer";
/// Phase: → the agent answered WaitProcess.
pub const EXIT: &str = "process run → exit observed";
/// Phase: → `delete` done (output drained, container deleted, VM powered off, state removed).
pub const TEARDOWN: &str = "teardown: delete, power-off";

/// The phases of one `kvmbox run`, each ending at a mark (from the spawn of `kvmbox run`).
const PHASE_ENDS: [(&str, &str); 8] = [
    (HOST_PREP, timing::VMM_SPAWN),
    (VMM_SETUP, timing::FIRST_KVM_RUN),
    (KERNEL_ENTRY, timing::FIRST_CONSOLE),
    (AGENT_READY, timing::AGENT_READY),
    (CONTAINER_CREATE, timing::CONTAINER_CREATED),
    (CONTAINER_START, timing::CONTAINER_STARTED),
    (EXIT, timing::EXIT_OBSERVED),
    (TEARDOWN, timing::TORN_DOWN),
];

/// How the phases are defined (for the report's notes).
pub fn note() -> String {
    format!(
        "kvmbox vm phases, from CLOCK_MONOTONIC marks that `kvmbox run` appends to \
         $KVMBOX_TIMINGS (src/runtime/vm/timing.rs) and the VMM's own timings.json, measured \
         from the spawn of `kvmbox run`: {HOST_PREP} → VMM spawned; {VMM_SETUP} → first \
         KVM_RUN (the guest kernel's entry with PVH direct boot); {KERNEL_ENTRY}; {AGENT_READY} \
         (the agent is PID 1 of the guest); {CONTAINER_CREATE}, {CONTAINER_START} and {EXIT} \
         end when the agent answered those requests (WaitProcess for the exit); {TEARDOWN} \
         ends when `delete` removed the state (it includes draining the output). Memory: one \
         extra instance made with `kvmbox create` (the probe), sampled while its container \
         waits for start: the VMM's smaps (guest RAM counted apart) and the agent's VmRSS \
         from its Stats answer (inside guest RAM touched)"
    )
}

/// The phases of one run from its marks: `spawn_ns` is when `kvmbox run` was spawned.
pub fn phases_from_marks(
    spawn_ns: u64,
    marks: &[(u64, String)],
) -> Result<Vec<(&'static str, Duration)>, String> {
    let at = |label: &str| {
        marks
            .iter()
            .find(|(_, l)| l == label)
            .map(|(ns, _)| *ns)
            .ok_or_else(|| format!("no \"{label}\" mark in ${}", timing::ENV))
    };
    let mut prev = spawn_ns;
    let mut out = Vec::with_capacity(PHASE_ENDS.len());
    for (phase, end) in PHASE_ENDS {
        let ns = at(end)?;
        out.push((phase, Duration::from_nanos(ns.saturating_sub(prev))));
        prev = prev.max(ns);
    }
    Ok(out)
}

/// One timed `kvmbox run` of container `id` with the marks going to `<work>/<id>.marks`.
pub fn run_once(
    runtime: &Runtime,
    bundle: &Path,
    id: &str,
    work: &Path,
    timeout: Duration,
) -> Result<Vec<(&'static str, Duration)>, BenchError> {
    let marks_file = work.join(format!("{id}.marks"));
    let env = [(timing::ENV, marks_file.as_os_str())];
    let (spawn_ns, _) = runtime.run_once(bundle, id, work, &env, timeout)?;
    let text = std::fs::read_to_string(&marks_file).map_err(|source| BenchError::Io {
        what: "read",
        path: marks_file.clone(),
        source,
    })?;
    phases_from_marks(spawn_ns, &timing::parse(&text)).map_err(|msg| BenchError::RunFailed {
        runtime: runtime.name.clone(),
        command: "run",
        id: id.into(),
        status: "success".into(),
        stderr: msg,
    })
}

/// Memory of created instance `id` (VMM `pid`) under state root `root`: the VMM's smaps with
/// guest RAM (its size from the instance's vm.json) counted apart, plus the agent's own RSS.
/// The error of the Stats request, if it failed, comes second.
pub fn sample_instance(
    root: &Path,
    id: &str,
    pid: u32,
) -> Result<(MemorySample, Option<String>), String> {
    let store = StateStore::new(root);
    let vm_json = store.dir(id).join("vm.json");
    let config = crate::vmm::process::read_config(&vm_json)?;
    let guest_bytes = u64::from(config.vm.memory_mib) << 20;
    let mut sample =
        memory::sample(pid, Some(guest_bytes)).map_err(|e| format!("/proc/{pid}/smaps: {e}"))?;
    match agent_rss_kib(&store, id) {
        Ok(rss) => {
            sample.agent_rss_kib = rss;
            Ok((sample, None))
        }
        Err(e) => Ok((sample, Some(e))),
    }
}

/// The agent's RSS from its Stats answer about container `id` (None from an older agent).
fn agent_rss_kib(store: &StateStore, id: &str) -> Result<Option<u64>, String> {
    let record = store.read(id).map_err(|e| e.to_string())?;
    let target = target_of(&record).map_err(|e| e.to_string())?;
    let mut client = AgentClient::connect(&target).map_err(|e| e.to_string())?;
    match client.request(&Request::Stats { id: id.into() }) {
        Ok(ResponseBody::Stats(s)) => Ok(s.agent_rss_kib),
        Ok(other) => Err(format!("Stats: unexpected answer {other:?}")),
        Err(e) => Err(format!("Stats: {e}")),
    }
}

/// A created instance: `create` it, sample it, `delete --force` it. Its memory, and the Stats
/// error if only that failed.
pub fn memory_probe(
    runtime: &Runtime,
    root: &Path,
    bundle: &Path,
    id: &str,
    work: &Path,
    timeout: Duration,
) -> Result<(MemorySample, Option<String>), BenchError> {
    let pid_file = work.join(format!("{id}.pid"));
    let result = runtime
        .create(bundle, id, work, &pid_file, timeout)
        .and_then(|_| runtime.created_pid(id, &pid_file))
        .and_then(|pid| {
            sample_instance(root, id, pid).map_err(|msg| BenchError::RunFailed {
                runtime: runtime.name.clone(),
                command: "create",
                id: id.into(),
                status: "success".into(),
                stderr: format!("sampling its memory: {msg}"),
            })
        });
    runtime.force_delete(id, work);
    result
}

/// How long a density run of `k` instances may take on `cpus` CPUs: `per_vm` times k/cpus
/// (the boots share the CPUs), at least `per_vm`.
pub fn density_timeout(per_vm: Duration, k: usize, cpus: usize) -> Duration {
    per_vm.mul_f64((k as f64 / cpus.max(1) as f64).max(1.0))
}

/// `k` instances created at once (`kvmbox create`, each in its own thread): time from the
/// first spawn to each `create` returning, then each one's memory; all are deleted at the end.
/// A VM that does not get ready is a cell saying why (e.g. "timed out after 600 s").
pub fn density(
    runtime: &Runtime,
    root: &Path,
    bundle: &Path,
    work: &Path,
    k: usize,
    timeout: Duration,
) -> DensityResult {
    let pid = std::process::id();
    let ids: Vec<String> = (0..k).map(|i| format!("bench-{pid}-density-{i}")).collect();
    let start = Instant::now();
    let results: Vec<Result<(Duration, u32), BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                s.spawn(move || {
                    let pid_file = work.join(format!("{id}.pid"));
                    runtime.create(bundle, id, work, &pid_file, timeout)?;
                    let ready = start.elapsed();
                    Ok((ready, runtime.created_pid(id, &pid_file)?))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BenchError::Spawn {
                        runtime: runtime.name.clone(),
                        source: std::io::Error::other("a density thread panicked"),
                    })
                })
            })
            .collect()
    });
    let mut per_vm = Vec::with_capacity(k);
    for (id, result) in ids.iter().zip(results) {
        per_vm.push(match result {
            Ok((ready, vmm_pid)) => match sample_instance(root, id, vmm_pid) {
                Ok((memory, stats_err)) => DensityVm {
                    ready_ms: Some(ready.as_secs_f64() * 1e3),
                    status: stats_err.map_or("ready".into(), |e| format!("ready ({e})")),
                    memory: Some(memory),
                },
                Err(e) => DensityVm {
                    ready_ms: Some(ready.as_secs_f64() * 1e3),
                    status: format!("ready; memory not sampled: {e}"),
                    memory: None,
                },
            },
            Err(e) => DensityVm {
                ready_ms: None,
                status: cell(&e),
                memory: None,
            },
        });
    }
    for id in &ids {
        runtime.force_delete(id, work);
    }
    DensityResult::of(
        format!(
            "{k} × `kvmbox --isolation vm create` of the bench bundle at once; ready = `create` \
             returned (VM booted, agent answered, container created); {} s allowed",
            timeout.as_secs()
        ),
        per_vm,
    )
}

/// The one-cell reason a VM did not get ready.
fn cell(e: &BenchError) -> String {
    match e {
        BenchError::RunFailed { status, .. } if status.starts_with("timed out") => status.clone(),
        BenchError::RunFailed { status, stderr, .. } => format!("failed ({status}): {stderr}"),
        other => format!("failed: {other}"),
    }
}

impl DensityResult {
    /// Summarise per-VM cells: measured when every VM got ready, else failed with a count.
    pub fn of(what: String, per_vm: Vec<DensityVm>) -> DensityResult {
        let vms = per_vm.len();
        let ready: Vec<f64> = per_vm.iter().filter_map(|v| v.ready_ms).collect();
        let host: Vec<f64> = per_vm
            .iter()
            .filter_map(|v| v.memory.as_ref())
            .map(|m| m.host_kib() as f64)
            .collect();
        DensityResult {
            outcome: if ready.len() == vms {
                Outcome::Measured
            } else {
                Outcome::Failed(format!(
                    "{} of {vms} VMs did not get ready",
                    vms - ready.len()
                ))
            },
            what,
            vms,
            ready: ready.len(),
            all_ready_ms: (ready.len() == vms && vms > 0)
                .then(|| ready.iter().copied().fold(0.0, f64::max)),
            host_kib_per_vm: Spread::of(&host),
            per_vm,
        }
    }
}

/// The state root of the vm-mode runs under `work`.
pub fn state_root(work: &Path) -> PathBuf {
    work.join("state-kvmbox-vm")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(list: &[(u64, &str)]) -> Vec<(u64, String)> {
        list.iter().map(|(ns, l)| (*ns, l.to_string())).collect()
    }

    const MS: u64 = 1_000_000;

    fn full() -> Vec<(u64, String)> {
        marks(&[
            (110 * MS, timing::VMM_SPAWN),
            (130 * MS, timing::AGENT_READY),
            (140 * MS, timing::CONTAINER_CREATED),
            (150 * MS, timing::CONTAINER_STARTED),
            (170 * MS, timing::EXIT_OBSERVED),
            (200 * MS, timing::TORN_DOWN),
            (111 * MS, timing::VMM_START),
            (115 * MS, timing::FIRST_KVM_RUN),
            (120 * MS, timing::FIRST_CONSOLE),
        ])
    }

    #[test]
    fn phases_run_from_mark_to_mark_in_order() {
        let p = phases_from_marks(100 * MS, &full()).unwrap();
        let names: Vec<&str> = p.iter().map(|x| x.0).collect();
        assert_eq!(
            names,
            [
                HOST_PREP,
                VMM_SETUP,
                KERNEL_ENTRY,
                AGENT_READY,
                CONTAINER_CREATE,
                CONTAINER_START,
                EXIT,
                TEARDOWN
            ]
        );
        let ms: Vec<u128> = p.iter().map(|x| x.1.as_millis()).collect();
        assert_eq!(ms, [10, 5, 5, 10, 10, 10, 20, 30]);
        let total: Duration = p.iter().map(|x| x.1).sum();
        assert_eq!(total, Duration::from_millis(100));
    }

    #[test]
    fn a_missing_mark_is_named() {
        let m: Vec<_> = full()
            .into_iter()
            .filter(|(_, l)| l != timing::FIRST_KVM_RUN)
            .collect();
        assert_eq!(
            phases_from_marks(100 * MS, &m).unwrap_err(),
            "no \"first kvm_run\" mark in $KVMBOX_TIMINGS"
        );
    }

    #[test]
    fn density_timeout_scales_with_vms_per_cpu() {
        let t = Duration::from_secs(600);
        assert_eq!(density_timeout(t, 1, 2), t);
        assert_eq!(density_timeout(t, 2, 2), t);
        assert_eq!(density_timeout(t, 4, 2), Duration::from_secs(1200));
        assert_eq!(density_timeout(t, 3, 0), Duration::from_secs(1800));
    }

    #[test]
    fn density_cells_say_why_a_vm_was_not_ready() {
        let timed_out = BenchError::RunFailed {
            runtime: "kvmbox".into(),
            command: "create",
            id: "x".into(),
            status: "timed out after 600 s".into(),
            stderr: String::new(),
        };
        assert_eq!(cell(&timed_out), "timed out after 600 s");
        let mem = MemorySample {
            rss_kib: 2048,
            pss_kib: 1024,
            guest_rss_kib: Some(10240),
            agent_rss_kib: Some(3000),
        };
        let d = DensityResult::of(
            "x".into(),
            vec![
                DensityVm {
                    ready_ms: Some(50_000.0),
                    status: "ready".into(),
                    memory: Some(mem),
                },
                DensityVm {
                    ready_ms: None,
                    status: cell(&timed_out),
                    memory: None,
                },
            ],
        );
        assert_eq!(d.ready, 1);
        assert_eq!(d.all_ready_ms, None);
        assert_eq!(
            d.outcome,
            Outcome::Failed("1 of 2 VMs did not get ready".into())
        );
        assert_eq!(d.host_kib_per_vm.unwrap().median, 11264.0);
    }
}
