//! `kvmbox bench`: the price of each isolation model, measured on this host.
//!
//! Container modes (kvmbox `--isolation namespace`, runc, crun) drive one busybox bundle through
//! create, start, exit and delete and time each phase; after one untimed warm-up each, they take
//! turns (round r starts with mode r mod n) so that a noisy host hits all alike. VM modes boot
//! the project's guest kernel with a marker initramfs in kvmbox's VMM and in QEMU microvm
//! (alternating), and time the boot phases from outside. kvmbox `--isolation vm` is probed once
//! and measured like the container modes when it works; otherwise it is reported unavailable
//! with its error line. A density run starts K VMs at once. See docs/vm-vs-container.md.

pub mod bundle;
pub mod chart;
pub mod error;
pub mod host;
pub mod memory;
pub mod process;
pub mod progress;
pub mod report;
pub mod runtimes;
pub mod stats;
pub mod table;
pub mod vm;
pub mod vm_mode;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use error::BenchError;

use crate::cli::{BenchArgs, BenchFormat, BenchMode, Cli, Isolation};
use host::HostInfo;
use memory::MemorySample;
use progress::Progress;
use report::{names, DensityResult, MemoryResult, ModeKind, ModeResult, Outcome, Report};
use runtimes::{Launch, Lifecycle, Runtime};
use stats::Summary;
use vm::{BootSetup, Vmm};

/// Longest one container command may take.
const CONTAINER_TIMEOUT: Duration = Duration::from_secs(60);

/// Run the benchmark described by `args`: the report on stdout, progress on stderr, files in
/// `--output`.
pub fn run(cli: &Cli, args: &BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::from_args(cli, args)?;
    let report = measure(&plan)?;
    match args.format {
        BenchFormat::Text => print!("{}", report.text()),
        BenchFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        BenchFormat::Markdown => print!("{}", report.markdown()),
    }
    if let Some(dir) = &args.output {
        write_outputs(dir, &report)?;
    }
    let failed: Vec<String> = report
        .modes
        .iter()
        .filter(|m| m.name.starts_with("kvmbox"))
        .filter_map(|m| match &m.outcome {
            Outcome::Failed(why) => Some(format!("{}: {why}", m.name)),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("bench: {}", failed.join("; "));
    }
    Ok(())
}

/// Write bench.svg, bench.md and bench.json into `dir` (created if needed).
pub fn write_outputs(dir: &Path, report: &Report) -> Result<(), BenchError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BenchError::Io { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let svg = chart::render(report)?;
    let md =
        report.markdown() + "\n![where start-up time goes, and memory per instance](bench.svg)\n";
    let json = serde_json::to_string_pretty(report)? + "\n";
    for (name, text) in [("bench.svg", svg), ("bench.md", md), ("bench.json", json)] {
        let file = dir.join(name);
        std::fs::write(&file, text).map_err(io("write", &file))?;
    }
    Ok(())
}

/// What to measure and how, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Modes in the order they are reported.
    pub modes: Vec<BenchMode>,
    /// Runs per container mode.
    pub runs: usize,
    /// Runs per VM mode.
    pub vm_runs: usize,
    /// VMs of the density run (0: none).
    pub density: usize,
    /// `--kernel` / `$KVMBOX_KERNEL`.
    pub kernel: Option<PathBuf>,
    /// Guest memory in MiB.
    pub guest_memory: u32,
    /// QEMU executable.
    pub qemu: PathBuf,
    /// Longest one VM boot may take.
    pub vm_timeout: Duration,
}

impl Plan {
    /// Resolve `args`: `--modes`, else every mode (or the namespace ones with
    /// `--isolation namespace`); `--no-peers` drops runc, crun and QEMU.
    pub fn from_args(cli: &Cli, args: &BenchArgs) -> Result<Plan, BenchError> {
        use BenchMode::*;
        if args.runs == 0 || args.vm_runs == 0 {
            return Err(BenchError::NoRuns);
        }
        let mut modes = if !args.modes.is_empty() {
            let mut m = Vec::new();
            for mode in &args.modes {
                if !m.contains(mode) {
                    m.push(*mode);
                }
            }
            m
        } else if cli.isolation == Some(Isolation::Namespace) {
            vec![Namespace, Runc, Crun]
        } else {
            vec![Namespace, Runc, Crun, Vm, VmmBoot, QemuBoot]
        };
        if args.no_peers {
            modes.retain(|m| !matches!(m, Runc | Crun | QemuBoot));
        }
        if modes.is_empty() {
            return Err(BenchError::NoModes);
        }
        Ok(Plan {
            density: if modes.contains(&VmmBoot) || modes.contains(&Vm) {
                args.density
            } else {
                0
            },
            modes,
            runs: args.runs,
            vm_runs: args.vm_runs,
            kernel: args.kernel.clone(),
            guest_memory: args.guest_memory,
            qemu: args.qemu.clone(),
            vm_timeout: Duration::from_secs(args.vm_timeout),
        })
    }
}

/// One container mode's state while the benchmark runs.
struct Contender {
    name: String,
    runtime: Runtime,
    overhead: Duration,
    runs: Vec<Vec<(&'static str, Duration)>>,
    memory: Vec<MemorySample>,
    error: Option<String>,
}

impl Contender {
    fn new(name: &str, runtime: Runtime) -> Contender {
        Contender {
            name: name.into(),
            runtime,
            overhead: Duration::ZERO,
            runs: Vec::new(),
            memory: Vec::new(),
            error: None,
        }
    }

    /// One timed life; false (with the error kept) when it failed.
    fn once(&mut self, bundle: &Path, work: &Path, id: &str, timeout: Duration) -> bool {
        match self
            .runtime
            .lifecycle_once(bundle, id, work, self.overhead, timeout)
        {
            Ok(l) => {
                self.runs
                    .push(Lifecycle::PHASES.into_iter().zip(l.phases()).collect());
                self.memory.extend(l.memory);
                true
            }
            Err(e) => {
                self.error = Some(error_line(&e));
                false
            }
        }
    }

    fn result(self, kind: ModeKind, workload: &str) -> ModeResult {
        match self.error {
            Some(e) => ModeResult::without_numbers(
                &self.name,
                kind,
                &self.runtime.version,
                workload,
                Outcome::Failed(e),
            ),
            None => ModeResult::measured(
                &self.name,
                kind,
                &self.runtime.version,
                workload,
                &self.runs,
                MemoryResult::of("container init after create", &self.memory),
            ),
        }
    }
}

/// The one line that says why a runtime failed: its own error line when it printed one.
fn error_line(e: &BenchError) -> String {
    match e {
        BenchError::RunFailed {
            command,
            status,
            stderr,
            ..
        } if !stderr.is_empty() => format!("{command}: {stderr} ({status})"),
        other => other.to_string(),
    }
}

/// Build the bundle and initramfs, measure every planned mode and summarise.
pub fn measure(plan: &Plan) -> Result<Report, BenchError> {
    use BenchMode::*;
    let host = HostInfo::probe();
    let started_utc = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let busybox = bundle::find_busybox()?;
    let tmp = tempfile::Builder::new()
        .prefix("kvmbox-bench-")
        .tempdir()
        .map_err(|source| BenchError::Io {
            what: "create temp dir in",
            path: std::env::temp_dir(),
            source,
        })?;
    let work = tmp.path();
    let bundle_dir = work.join("bundle");
    bundle::write_bundle(&bundle_dir, &busybox)?;
    let mut notes = Vec::new();
    let container_workload = format!(
        "create, start, exit, delete of /bin/true in a busybox bundle (runc 1.1's default spec, \
         no terminal); {} runs after one untimed warm-up, modes alternating each round",
        plan.runs
    );

    // Container modes.
    let mut contenders = Vec::new();
    for mode in &plan.modes {
        match mode {
            Namespace => contenders.push(Contender::new(
                names::NAMESPACE,
                Runtime::kvmbox(&work.join("state-kvmbox"), "namespace")?,
            )),
            Runc | Crun => {
                let name = if *mode == Runc { "runc" } else { "crun" };
                let launch = if *mode == Crun
                    && host::hybrid_with_controllers(Path::new("/sys/fs/cgroup"))
                {
                    Launch::PrivateMountNs
                } else {
                    Launch::Direct
                };
                match Runtime::peer(name, &work.join(format!("state-{name}")), launch) {
                    Some(rt) => contenders.push(Contender::new(name, rt)),
                    None => notes.push(format!("{name}: not installed, skipped")),
                }
            }
            _ => {}
        }
    }
    let boots: Vec<Vmm> = plan
        .modes
        .iter()
        .filter_map(|m| match m {
            VmmBoot => Some(Vmm::Kvmbox),
            QemuBoot => Some(Vmm::Qemu),
            _ => None,
        })
        .collect();
    let probe_vm = plan.modes.contains(&Vm);
    let total_steps = contenders.len() * (plan.runs + 1)
        + usize::from(probe_vm) * (1 + plan.vm_runs)
        + boots.len() * plan.vm_runs
        + usize::from(plan.density > 0);
    let progress = Progress::new(total_steps as u64);

    if contenders
        .iter()
        .any(|c| c.runtime.launch == Launch::PrivateMountNs)
    {
        progress.doing("measuring the mount namespace set-up that crun needs here");
        let overhead = mount_ns_overhead(plan.runs.max(10))?;
        notes.push(format!(
            "crun: this host's hybrid cgroup layout makes crun 1.8 refuse to run, so crun runs in \
             a private mount namespace: the forked child calls unshare(CLONE_NEWNS), makes / \
             private and bind-mounts /dev/null over {} before exec'ing crun. That setup costs \
             {:.2} ms (median of spawning /bin/true with it minus without it); it is subtracted \
             from each crun command (create, start, delete)",
            runtimes::HYBRID_CONTROLLERS,
            overhead.as_secs_f64() * 1000.0
        ));
        for c in contenders
            .iter_mut()
            .filter(|c| c.runtime.launch == Launch::PrivateMountNs)
        {
            c.overhead = overhead;
        }
    }

    let pid = std::process::id();
    for c in contenders.iter_mut() {
        progress.doing(format!("{}: warm-up", c.name));
        let id = format!("bench-{pid}-{}-warmup", c.runtime.name);
        c.once(&bundle_dir, work, &id, CONTAINER_TIMEOUT);
        c.runs.clear();
        c.memory.clear();
        progress.step();
    }
    let n = contenders.len();
    for round in 0..plan.runs {
        for k in 0..n {
            let c = &mut contenders[(round + k) % n];
            if c.error.is_some() {
                progress.step();
                continue;
            }
            progress.doing(format!("{}: run {}/{}", c.name, round + 1, plan.runs));
            let id = format!("bench-{pid}-{}-{round}", c.runtime.name);
            c.once(&bundle_dir, work, &id, CONTAINER_TIMEOUT);
            progress.step();
        }
    }
    let mut modes: Vec<ModeResult> = contenders
        .into_iter()
        .map(|c| c.result(ModeKind::Container, &container_workload))
        .collect();

    // kvmbox --isolation vm: probe once (it also gives the memory); measure when it works.
    let mut vm_runtime = None;
    if probe_vm {
        let (result, runtime) =
            measure_vm_isolation(plan, &bundle_dir, work, &progress, &mut notes)?;
        modes.push(result);
        vm_runtime = runtime;
    }

    // VM boots, and density: K `kvmbox --isolation vm create`s when vm mode works, else K
    // marker boots when vmm-boot is measured.
    let density_timeout = vm_mode::density_timeout(plan.vm_timeout, plan.density, host.cpus);
    let mut density = None;
    if plan.density > 0 {
        if let Some(runtime) = &vm_runtime {
            progress.doing(format!(
                "density: {} kvmbox vm containers at once",
                plan.density
            ));
            let runtime = runtime.clone().with_agent_timeout(density_timeout);
            density = Some(vm_mode::density(
                &runtime,
                &vm_mode::state_root(work),
                &bundle_dir,
                work,
                plan.density,
                density_timeout,
            ));
            progress.step();
        } else if !boots.contains(&Vmm::Kvmbox) {
            density = Some(DensityResult::unavailable(
                "kvmbox vm did not work (see above) and vmm-boot is not measured".into(),
            ));
            progress.step();
        }
    }
    if !boots.is_empty() {
        match boot_setup(plan, &busybox, work) {
            Ok((setup, workload)) => {
                modes.extend(measure_boots(
                    &setup,
                    &boots,
                    plan.vm_runs,
                    &workload,
                    &progress,
                ));
                if plan.density > 0 && density.is_none() {
                    progress.doing(format!("density: {} VMs at once", plan.density));
                    density = Some(vm::density(&setup, plan.density, density_timeout));
                    progress.step();
                }
                notes.push(boot_note());
            }
            Err(why) => {
                for vmm in &boots {
                    let (name, version) = boot_identity(*vmm, &plan.qemu);
                    modes.push(ModeResult::without_numbers(
                        name,
                        ModeKind::Vm,
                        &version,
                        "boot of the guest kernel with a marker initramfs",
                        Outcome::Unavailable(why.clone()),
                    ));
                }
                if plan.density > 0 && density.is_none() {
                    density = Some(DensityResult::unavailable(why));
                    progress.step();
                }
            }
        }
    }
    progress.finish();
    Ok(finish(host, started_utc, plan, modes, density, notes))
}

/// Assemble the report.
fn finish(
    host: HostInfo,
    started_utc: String,
    plan: &Plan,
    modes: Vec<ModeResult>,
    density: Option<DensityResult>,
    mut notes: Vec<String>,
) -> Report {
    if modes.iter().any(|m| m.kind == ModeKind::Container) {
        notes.push(
            "container phases: create, start and delete are the wall times of those runtime \
             commands; exit runs from `start` returning to the container process's exit, seen \
             through a pidfd; total is their sum. Memory: the container's process (--pid-file) \
             sampled between create and start, i.e. the runtime's init waiting for start; \
             /bin/true itself lives too briefly to sample"
                .into(),
        );
    }
    if cfg!(debug_assertions) {
        notes.push(
            "this kvmbox is a debug build: its times and its RSS are larger than a release \
             build's (`make build`)"
                .into(),
        );
    }
    Report {
        kvmbox: format!(
            "{} ({} build)",
            env!("CARGO_PKG_VERSION"),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        ),
        host,
        started_utc,
        runs: plan.runs,
        vm_runs: plan.vm_runs,
        ratios: Report::compute_ratios(&modes),
        modes,
        density,
        notes,
    }
}

/// How the VM boot phases and memory are defined.
fn boot_note() -> String {
    format!(
        "VM boot phases, timed from outside the VMM on its console (stdout): {} = spawn → \
         first KVM_RUN (kvmbox's --timings, CLOCK_MONOTONIC; with PVH direct boot there is no \
         firmware, so this is the guest kernel's entry); {} = first KVM_RUN → the init's first \
         console line; {} = the init's first line → `dd` printing \"records out\" (one guest \
         process: fork, exec, a write to port 0x3f0); {} = → the VMM exited. QEMU reports no \
         first KVM_RUN, so its first phase is {}. Memory: /proc/<pid>/smaps of the VMM at the \
         init line; guest RAM is the anonymous mapping of the guest's size, counted apart \
         (guest RAM touched = its RSS)",
        vm::VMM_SETUP,
        vm::KERNEL_BOOT,
        vm::INIT_PROCESS,
        vm::POWER_OFF,
        vm::SETUP_AND_KERNEL
    )
}

/// Probe kvmbox `--isolation vm` once with a created instance (whose memory it samples); when
/// it works, time the phases of `plan.vm_runs` `kvmbox run`s. The runtime comes back when the
/// probe worked.
fn measure_vm_isolation(
    plan: &Plan,
    bundle_dir: &Path,
    work: &Path,
    progress: &Progress,
    notes: &mut Vec<String>,
) -> Result<(ModeResult, Option<Runtime>), BenchError> {
    let workload = format!(
        "`kvmbox --isolation vm run` of /bin/true in the same bundle (one microVM per \
         container); {} runs after a probe (`create`, memory sample, `delete --force`)",
        plan.vm_runs
    );
    let root = vm_mode::state_root(work);
    let runtime = Runtime::kvmbox(&root, "vm")?.with_agent_timeout(plan.vm_timeout);
    progress.doing("kvmbox vm: probe (create, memory)");
    let id = format!("bench-{}-vm-probe", std::process::id());
    let probe = vm_mode::memory_probe(&runtime, &root, bundle_dir, &id, work, plan.vm_timeout);
    progress.step();
    let sample = match probe {
        Ok((sample, stats_err)) => {
            if let Some(e) = stats_err {
                notes.push(format!("kvmbox vm: the agent's RSS is missing: {e}"));
            }
            sample
        }
        Err(e) => {
            for _ in 0..plan.vm_runs {
                progress.step();
            }
            let result = ModeResult::without_numbers(
                names::VM,
                ModeKind::Vm,
                &runtime.version,
                &workload,
                Outcome::Unavailable(error_line(&e)),
            );
            return Ok((result, None));
        }
    };
    notes.push(vm_mode::note());
    let mut runs = Vec::new();
    let mut failure = None;
    for round in 0..plan.vm_runs {
        if failure.is_some() {
            progress.step();
            continue;
        }
        progress.doing(format!("kvmbox vm: run {}/{}", round + 1, plan.vm_runs));
        let id = format!("bench-{}-vm-{round}", std::process::id());
        match vm_mode::run_once(&runtime, bundle_dir, &id, work, plan.vm_timeout) {
            Ok(phases) => runs.push(phases),
            Err(e) => failure = Some(error_line(&e)),
        }
        progress.step();
    }
    let memory = MemoryResult::of(
        "VMM + agent, container created (probe)",
        std::slice::from_ref(&sample),
    );
    let mut result = ModeResult::measured(
        names::VM,
        ModeKind::Vm,
        &runtime.version,
        &workload,
        &runs,
        memory,
    );
    if let Some(why) = failure {
        notes.push(format!(
            "kvmbox vm: {} of {} runs completed; then: {why}",
            runs.len(),
            plan.vm_runs
        ));
        if runs.is_empty() {
            result.outcome = Outcome::Failed(why);
        }
    }
    Ok((result, Some(runtime)))
}

/// Find the kernel and QEMU and write the marker initramfs; the boot workload's description.
fn boot_setup(plan: &Plan, busybox: &Path, work: &Path) -> Result<(BootSetup, String), String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("/dev/kvm is missing".into());
    }
    let kernel = find_kernel(plan.kernel.as_deref())?;
    let initrd = work.join("marker-initramfs.cpio");
    let image = crate::vmm::bench::marker_initramfs(busybox, crate::vmm::bench::INIT_MARKER)
        .map_err(|e| format!("building the initramfs from {}: {e}", busybox.display()))?;
    std::fs::write(&initrd, image.to_bytes())
        .map_err(|e| format!("writing {}: {e}", initrd.display()))?;
    let size_mb = |p: &Path| std::fs::metadata(p).map_or(0.0, |m| m.len() as f64 / 1e6);
    let kvmbox = std::env::current_exe().map_err(|e| format!("locating kvmbox: {e}"))?;
    let workload = format!(
        "boot {} ({:.1} MB) with a {:.2} MB busybox initramfs whose /init prints a line, runs \
         one dd and powers off; 1 vCPU, {} MiB; {} runs, kvmbox and QEMU alternating",
        kernel.display(),
        size_mb(&kernel),
        size_mb(&initrd),
        plan.guest_memory,
        plan.vm_runs
    );
    Ok((
        BootSetup {
            kvmbox,
            qemu: plan.qemu.clone(),
            kernel,
            initrd,
            memory_mib: plan.guest_memory,
            timeout: plan.vm_timeout,
        },
        workload,
    ))
}

/// The guest kernel: `explicit` (--kernel / $KVMBOX_KERNEL), else what
/// `kernel-config/build.sh --print-path` prints (from this source tree or the current directory).
pub fn find_kernel(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(k) = explicit {
        return if k.is_file() {
            Ok(k.to_path_buf())
        } else {
            Err(format!("--kernel {} is not a file", k.display()))
        };
    }
    let scripts = [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-config/build.sh"),
        PathBuf::from("kernel-config/build.sh"),
    ];
    for script in scripts.iter().filter(|s| s.is_file()) {
        if let Ok(out) = Command::new(script).arg("--print-path").output() {
            let text = String::from_utf8_lossy(&out.stdout);
            let path = PathBuf::from(text.trim().lines().last().unwrap_or(""));
            if out.status.success() && path.is_file() {
                return Ok(path);
            }
        }
    }
    Err(
        "no guest kernel: pass --kernel or KVMBOX_KERNEL, or build one with \
         kernel-config/build.sh"
            .into(),
    )
}

/// Display name and version of a boot mode.
fn boot_identity(vmm: Vmm, qemu: &Path) -> (&'static str, String) {
    match vmm {
        Vmm::Kvmbox => (names::VMM_BOOT, env!("CARGO_PKG_VERSION").into()),
        Vmm::Qemu => {
            let version = Command::new(qemu)
                .arg("--version")
                .output()
                .ok()
                .and_then(|o| {
                    let text = String::from_utf8_lossy(&o.stdout);
                    let line = text.lines().next()?.trim().to_string();
                    Some(
                        line.trim_start_matches("QEMU emulator version ")
                            .to_string(),
                    )
                })
                .unwrap_or_default();
            (names::QEMU_BOOT, version)
        }
    }
}

/// Boot each of `vmms` `runs` times, alternating.
fn measure_boots(
    setup: &BootSetup,
    vmms: &[Vmm],
    runs: usize,
    workload: &str,
    progress: &Progress,
) -> Vec<ModeResult> {
    struct Booter {
        vmm: Vmm,
        name: &'static str,
        version: String,
        runs: Vec<Vec<(&'static str, Duration)>>,
        memory: Vec<MemorySample>,
        outcome: Outcome,
    }
    let mut booters: Vec<Booter> = vmms
        .iter()
        .map(|&vmm| {
            let (name, version) = boot_identity(vmm, &setup.qemu);
            let outcome = match vmm {
                Vmm::Qemu if version.is_empty() => Outcome::Unavailable(format!(
                    "{} not found or not runnable",
                    setup.qemu.display()
                )),
                _ => Outcome::Measured,
            };
            Booter {
                vmm,
                name,
                version,
                runs: Vec::new(),
                memory: Vec::new(),
                outcome,
            }
        })
        .collect();
    for round in 0..runs {
        for b in booters.iter_mut() {
            if b.outcome != Outcome::Measured {
                progress.step();
                continue;
            }
            progress.doing(format!("{}: run {}/{runs}", b.name, round + 1));
            match vm::boot_once(setup, b.vmm) {
                Ok(run) => {
                    b.runs.push(run.phases);
                    b.memory.extend(run.memory);
                }
                Err(e) => b.outcome = Outcome::Failed(e),
            }
            progress.step();
        }
    }
    booters
        .into_iter()
        .map(|b| match b.outcome {
            Outcome::Measured => ModeResult::measured(
                b.name,
                ModeKind::Vm,
                &b.version,
                workload,
                &b.runs,
                MemoryResult::of("VMM at the init line", &b.memory),
            ),
            other => ModeResult::without_numbers(b.name, ModeKind::Vm, &b.version, workload, other),
        })
        .collect()
}

/// Median extra time of spawning /bin/true in a fresh private mount namespace (with the crun
/// bind mount) over spawning it plainly, over `rounds` alternating pairs.
fn mount_ns_overhead(rounds: usize) -> Result<Duration, BenchError> {
    let truth = runtimes::which("true").ok_or(BenchError::Missing("true"))?;
    let mut plain = Vec::with_capacity(rounds);
    let mut wrapped = Vec::with_capacity(rounds);
    let spawn_err = |source| BenchError::Spawn {
        runtime: format!("{} (mount namespace baseline)", truth.display()),
        source,
    };
    for _ in 0..rounds {
        plain.push(runtimes::time_spawn(&truth, Launch::Direct).map_err(spawn_err)?);
        wrapped.push(runtimes::time_spawn(&truth, Launch::PrivateMountNs).map_err(spawn_err)?);
    }
    let (Some(p), Some(w)) = (Summary::of(&plain), Summary::of(&wrapped)) else {
        return Ok(Duration::ZERO);
    };
    Ok(Duration::from_secs_f64(
        ((w.median_ms - p.median_ms) / 1000.0).max(0.0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan(args: &[&str]) -> Result<Plan, BenchError> {
        let cli = Cli::parse_from(args);
        let crate::cli::Command::Bench(b) = &cli.command else {
            panic!("not bench")
        };
        Plan::from_args(&cli, b)
    }

    #[test]
    fn default_plan_measures_every_mode() {
        let p = plan(&["kvmbox", "bench"]).unwrap();
        assert_eq!(p.modes.len(), 6);
        assert_eq!((p.runs, p.vm_runs, p.density), (20, 3, 3));
    }

    #[test]
    fn namespace_isolation_keeps_the_container_modes() {
        let p = plan(&["kvmbox", "--isolation", "namespace", "bench"]).unwrap();
        assert_eq!(
            p.modes,
            [BenchMode::Namespace, BenchMode::Runc, BenchMode::Crun]
        );
        assert_eq!(p.density, 0);
    }

    #[test]
    fn modes_flag_and_no_peers_select() {
        let p = plan(&[
            "kvmbox",
            "bench",
            "--modes",
            "vmm-boot,qemu-boot,vmm-boot",
            "--no-peers",
            "--density",
            "2",
        ])
        .unwrap();
        assert_eq!(p.modes, [BenchMode::VmmBoot]);
        assert_eq!(p.density, 2);
        assert!(matches!(
            plan(&["kvmbox", "bench", "--modes", "runc", "--no-peers"]),
            Err(BenchError::NoModes)
        ));
        assert!(matches!(
            plan(&["kvmbox", "bench", "--runs", "0"]),
            Err(BenchError::NoRuns)
        ));
    }

    #[test]
    fn explicit_kernel_must_exist() {
        let err = find_kernel(Some(Path::new("/nonexistent/vmlinux"))).unwrap_err();
        assert_eq!(err, "--kernel /nonexistent/vmlinux is not a file");
    }

    #[test]
    fn outputs_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        write_outputs(&out, &report::tests::test_report()).unwrap();
        let svg = std::fs::read_to_string(out.join("bench.svg")).unwrap();
        assert!(svg.starts_with("<svg"));
        let md = std::fs::read_to_string(out.join("bench.md")).unwrap();
        assert!(md.contains("(bench.svg)"));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("bench.json")).unwrap())
                .unwrap();
        assert_eq!(json["modes"][0]["name"], "kvmbox namespace");
    }
}
