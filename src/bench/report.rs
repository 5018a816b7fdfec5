//! The benchmark's results and their text and markdown renderings (JSON is the serde form).

use std::time::Duration;

use super::host::HostInfo;
use super::memory::MemorySample;
use super::stats::{median_ratio, Spread, Summary};
use super::table::{markdown_table, mib, ms, text_table};

/// Which isolation model a mode belongs to (the chart draws each on its own time scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeKind {
    /// Shares the host kernel (namespaces and cgroups).
    Container,
    /// Runs a guest kernel behind KVM.
    Vm,
}

/// Whether a mode produced numbers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum Outcome {
    /// Every run completed.
    Measured,
    /// The mode cannot run here (not installed, not built yet, no kernel): why.
    Unavailable(String),
    /// A run failed: the error.
    Failed(String),
}

/// One phase of a mode, over its runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PhaseResult {
    /// Phase name (e.g. "create", "guest kernel boot").
    pub name: String,
    /// min / median / max.
    pub summary: Summary,
    /// Every sample in milliseconds, in run order.
    pub samples_ms: Vec<f64>,
}

/// Memory of one instance of a mode, over its runs (KiB).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemoryResult {
    /// Which process was sampled, and when.
    pub what: String,
    /// RSS excluding guest RAM.
    pub rss_kib: Spread,
    /// PSS excluding guest RAM.
    pub pss_kib: Spread,
    /// Resident guest RAM (VMs only).
    pub guest_touched_kib: Option<Spread>,
    /// The guest agent's own RSS, part of guest RAM touched (kvmbox vm only).
    pub agent_rss_kib: Option<Spread>,
}

impl MemoryResult {
    /// Summarise `samples` (`None` when there are none).
    pub fn of(what: &str, samples: &[MemorySample]) -> Option<MemoryResult> {
        let col = |f: fn(&MemorySample) -> Option<u64>| {
            let v: Vec<f64> = samples.iter().filter_map(f).map(|k| k as f64).collect();
            Spread::of(&v)
        };
        Some(MemoryResult {
            what: what.into(),
            rss_kib: col(|s| Some(s.rss_kib))?,
            pss_kib: col(|s| Some(s.pss_kib))?,
            guest_touched_kib: col(|s| s.guest_rss_kib),
            agent_rss_kib: col(|s| s.agent_rss_kib),
        })
    }
}

/// Results of one mode (a kvmbox isolation model, a peer runtime, a VMM).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModeResult {
    /// Display name ("kvmbox namespace", "runc", "QEMU microvm boot", ...).
    pub name: String,
    /// Isolation model.
    pub kind: ModeKind,
    /// Version of the runtime or VMM.
    pub version: String,
    /// What one run is.
    pub workload: String,
    /// Measured, unavailable or failed.
    pub outcome: Outcome,
    /// Phases in order (empty unless measured).
    pub phases: Vec<PhaseResult>,
    /// Sum of the phases per run.
    pub total: Option<Summary>,
    /// Memory per instance.
    pub memory: Option<MemoryResult>,
}

impl ModeResult {
    /// A mode without numbers.
    pub fn without_numbers(
        name: &str,
        kind: ModeKind,
        version: &str,
        workload: &str,
        outcome: Outcome,
    ) -> ModeResult {
        ModeResult {
            name: name.into(),
            kind,
            version: version.into(),
            workload: workload.into(),
            outcome,
            phases: Vec::new(),
            total: None,
            memory: None,
        }
    }

    /// A measured mode from per-run phase durations (each run lists the same phases in the
    /// same order) and per-run memory samples.
    pub fn measured(
        name: &str,
        kind: ModeKind,
        version: &str,
        workload: &str,
        runs: &[Vec<(&str, Duration)>],
        memory: Option<MemoryResult>,
    ) -> ModeResult {
        let mut phases: Vec<PhaseResult> = Vec::new();
        if let Some(first) = runs.first() {
            for (i, (phase, _)) in first.iter().enumerate() {
                let samples: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|(_, d)| d.as_secs_f64() * 1e3)
                    .collect();
                if let Some(summary) = Summary::of_ms(&samples) {
                    phases.push(PhaseResult {
                        name: phase.to_string(),
                        summary,
                        samples_ms: samples,
                    });
                }
            }
        }
        let totals: Vec<Duration> = runs.iter().map(|r| r.iter().map(|p| p.1).sum()).collect();
        ModeResult {
            name: name.into(),
            kind,
            version: version.into(),
            workload: workload.into(),
            outcome: Outcome::Measured,
            phases,
            total: Summary::of(&totals),
            memory,
        }
    }
}

/// The density run: K VMs started at once.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DensityResult {
    /// Outcome (unavailable when there is no kernel, failed when a VM did not get ready).
    pub outcome: Outcome,
    /// What was started K times, what "ready" means and how long it was allowed.
    pub what: String,
    /// VMs started.
    pub vms: usize,
    /// VMs that got ready.
    pub ready: usize,
    /// First spawn → the last VM ready (ms), when every VM got ready.
    pub all_ready_ms: Option<f64>,
    /// Host memory per VM: PSS outside guest RAM plus guest RAM touched (KiB).
    pub host_kib_per_vm: Option<Spread>,
    /// One cell per VM.
    pub per_vm: Vec<DensityVm>,
}

/// One VM of the density run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DensityVm {
    /// First spawn → this VM ready (ms); None when it did not get ready.
    pub ready_ms: Option<f64>,
    /// "ready", or why not ("timed out after 600 s", "failed (...): ...").
    pub status: String,
    /// Its memory once ready.
    pub memory: Option<MemorySample>,
}

impl DensityResult {
    /// A density run that could not take place.
    pub fn unavailable(why: String) -> DensityResult {
        DensityResult {
            outcome: Outcome::Unavailable(why),
            what: String::new(),
            vms: 0,
            ready: 0,
            all_ready_ms: None,
            host_kib_per_vm: None,
            per_vm: Vec::new(),
        }
    }
}

/// A ratio of medians, with the target it should stay under (if any).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Ratio {
    /// `a/b`.
    pub name: String,
    /// The ratio of median totals.
    pub value: f64,
    /// The ratio `a` aims to stay under.
    pub target: Option<f64>,
}

/// Everything a benchmark run measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// The host.
    pub host: HostInfo,
    /// When the run started (UTC, RFC 3339).
    pub started_utc: String,
    /// kvmbox's version and build profile.
    pub kvmbox: String,
    /// Runs per container mode.
    pub runs: usize,
    /// Runs per VM mode.
    pub vm_runs: usize,
    /// One entry per mode, in the order measured.
    pub modes: Vec<ModeResult>,
    /// The density run, if asked for.
    pub density: Option<DensityResult>,
    /// Ratios of median totals.
    pub ratios: Vec<Ratio>,
    /// How things were measured.
    pub notes: Vec<String>,
}

/// Target ratio of kvmbox namespace's median to `peer`'s (issue 2: faster than crun, under half
/// of runc).
pub fn target_for(peer: &str) -> Option<f64> {
    match peer {
        "crun" => Some(1.0),
        "runc" => Some(0.5),
        _ => None,
    }
}

/// Mode names the ratios refer to.
pub mod names {
    /// kvmbox `--isolation namespace`.
    pub const NAMESPACE: &str = "kvmbox namespace";
    /// kvmbox `--isolation vm`.
    pub const VM: &str = "kvmbox vm";
    /// `kvmbox vm boot` of the marker initramfs.
    pub const VMM_BOOT: &str = "kvmbox VMM boot";
    /// QEMU microvm booting the same.
    pub const QEMU_BOOT: &str = "QEMU microvm boot";
}

impl Report {
    /// Ratios of median totals: kvmbox namespace / runc and / crun (with targets), kvmbox VMM
    /// boot / QEMU, and kvmbox vm / kvmbox namespace (the price of the VM).
    pub fn compute_ratios(modes: &[ModeResult]) -> Vec<Ratio> {
        let total = |name: &str| {
            modes
                .iter()
                .find(|m| m.name == name && m.outcome == Outcome::Measured)
                .and_then(|m| m.total)
        };
        let pairs = [
            (names::NAMESPACE, "runc"),
            (names::NAMESPACE, "crun"),
            (names::VMM_BOOT, names::QEMU_BOOT),
            (names::VM, names::NAMESPACE),
        ];
        pairs
            .iter()
            .filter_map(|(a, b)| {
                let value = median_ratio(&total(a)?, &total(b)?)?;
                Some(Ratio {
                    name: format!("{a} / {b}"),
                    value,
                    target: (*a == names::NAMESPACE).then(|| target_for(b)).flatten(),
                })
            })
            .collect()
    }

    /// The header lines: host, KVM, build and time.
    pub fn header(&self) -> Vec<String> {
        vec![
            self.host.line(),
            self.host.kvm_line(),
            format!("kvmbox {}, started {}", self.kvmbox, self.started_utc),
        ]
    }

    /// One line on the density run: `density: K kvmbox VMs at once: ...`.
    pub fn density_summary(&self) -> Option<String> {
        let d = self.density.as_ref()?;
        if d.vms == 0 {
            return None;
        }
        let all = d.all_ready_ms.map_or("not all got ready".into(), |v| {
            format!("all ready after {:.1} s", v / 1e3)
        });
        let per_vm = d
            .host_kib_per_vm
            .map_or("-".into(), |h| format!("{} MiB", mib(h.median)));
        Some(format!(
            "density: {} kvmbox VMs at once: {} ready, {all}; host memory per VM (PSS + guest \
             RAM touched, median) {per_vm}",
            d.vms, d.ready
        ))
    }

    /// Rows of the phase table: mode, phase, min, median, max (ms); unavailable and failed
    /// modes get one row saying why (inline, or with `inline_reasons` false only the word, the
    /// reason going below the table: see [`Report::reasons`]).
    fn phase_rows(&self, inline_reasons: bool) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for m in &self.modes {
            match &m.outcome {
                Outcome::Measured => {
                    for (i, p) in m.phases.iter().enumerate() {
                        let s = p.summary;
                        let mode = if i == 0 { m.name.as_str() } else { "" };
                        rows.push(vec![
                            mode.to_string(),
                            p.name.clone(),
                            ms(s.min_ms),
                            ms(s.median_ms),
                            ms(s.max_ms),
                        ]);
                    }
                    if let Some(s) = m.total {
                        rows.push(vec![
                            if m.phases.is_empty() { &m.name } else { "" }.to_string(),
                            format!("total ({} runs)", s.runs),
                            ms(s.min_ms),
                            ms(s.median_ms),
                            ms(s.max_ms),
                        ]);
                    }
                }
                Outcome::Unavailable(why) | Outcome::Failed(why) => {
                    let what = outcome_word(&m.outcome);
                    let cell = if inline_reasons {
                        format!("{what}: {why}")
                    } else {
                        format!("{what} (below)")
                    };
                    rows.push(vec![
                        m.name.clone(),
                        cell,
                        "-".into(),
                        "-".into(),
                        "-".into(),
                    ]);
                }
            }
        }
        rows
    }

    /// `<mode> unavailable: <why>` for every mode without numbers.
    fn reasons(&self) -> Vec<String> {
        self.modes
            .iter()
            .filter_map(|m| match &m.outcome {
                Outcome::Measured => None,
                Outcome::Unavailable(why) | Outcome::Failed(why) => {
                    Some(format!("{} {}: {why}", m.name, outcome_word(&m.outcome)))
                }
            })
            .collect()
    }

    /// Rows of the memory table: mode, what, RSS, PSS, guest touched, agent RSS, host total
    /// (MiB medians).
    fn memory_rows(&self) -> Vec<Vec<String>> {
        self.modes
            .iter()
            .filter_map(|m| {
                let mem = m.memory.as_ref()?;
                let guest = mem.guest_touched_kib.map(|g| g.median);
                Some(vec![
                    m.name.clone(),
                    mem.what.clone(),
                    mib(mem.rss_kib.median),
                    mib(mem.pss_kib.median),
                    guest.map_or("-".into(), mib),
                    mem.agent_rss_kib.map_or("-".into(), |a| mib(a.median)),
                    mib(mem.pss_kib.median + guest.unwrap_or(0.0)),
                ])
            })
            .collect()
    }

    /// The density lines.
    fn density_lines(&self) -> Vec<String> {
        let Some(d) = &self.density else {
            return Vec::new();
        };
        let mut lines = Vec::new();
        if let Outcome::Unavailable(why) = &d.outcome {
            lines.push(format!("unavailable: {why}"));
            return lines;
        }
        let when = |v: Option<f64>| v.map_or("-".into(), |v| format!("{} ms", ms(v)));
        lines.push(format!(
            "{} kvmbox VMs started at once: {} ready; first spawn → last ready {}",
            d.vms,
            d.ready,
            when(d.all_ready_ms)
        ));
        if let Some(h) = d.host_kib_per_vm {
            let sampled: Vec<&MemorySample> =
                d.per_vm.iter().filter_map(|v| v.memory.as_ref()).collect();
            lines.push(format!(
                "host memory per VM (PSS outside guest RAM + guest RAM touched, once ready): \
                 median {} MiB (min {}, max {}); {} MiB for all {}",
                mib(h.median),
                mib(h.min),
                mib(h.max),
                mib(sampled.iter().map(|s| s.host_kib() as f64).sum()),
                sampled.len()
            ));
        }
        for (i, v) in d.per_vm.iter().enumerate() {
            lines.push(format!("VM {i}: {}, {}", when(v.ready_ms), v.status));
        }
        if let Outcome::Failed(why) = &d.outcome {
            lines.push(format!("failed: {why}"));
        }
        if !d.what.is_empty() {
            lines.push(format!("workload: {}", d.what));
        }
        lines
    }

    /// Human-readable report.
    pub fn text(&self) -> String {
        let mut out = self.header().join("\n") + "\n\n";
        out += "start-up phases (ms)\n";
        out += &text_table(&PHASE_HEADERS, 2, &self.phase_rows(false));
        for r in self.reasons() {
            out += &format!("{r}\n");
        }
        let mem = self.memory_rows();
        if !mem.is_empty() {
            out += "\nmemory per instance (MiB, medians)\n";
            out += &text_table(&MEMORY_HEADERS, 2, &mem);
        }
        let density = self.density_lines();
        if !density.is_empty() {
            out += "\ndensity\n";
            for l in density {
                out += &format!("{l}\n");
            }
        }
        out += "\n";
        for r in &self.ratios {
            out += &format!("{}\n", ratio_line(r));
        }
        for m in &self.modes {
            out += &format!("workload {}: {}\n", m.name, m.workload);
        }
        for n in &self.notes {
            out += &format!("note: {n}\n");
        }
        out
    }

    /// Markdown report (bench.md).
    pub fn markdown(&self) -> String {
        let mut out = String::from("# kvmbox bench\n\n");
        for l in self.header() {
            out += &format!("- {l}\n");
        }
        out += "\n## Start-up phases (ms)\n\n";
        out += &markdown_table(&PHASE_HEADERS, 2, &self.phase_rows(true));
        let mem = self.memory_rows();
        if !mem.is_empty() {
            out += "\n## Memory per instance (MiB, medians)\n\n";
            out += &markdown_table(&MEMORY_HEADERS, 2, &mem);
        }
        let density = self.density_lines();
        if !density.is_empty() {
            out += "\n## Density\n\n";
            for l in density {
                out += &format!("- {l}\n");
            }
        }
        if !self.ratios.is_empty() {
            out += "\n## Ratios of median totals\n\n";
            for r in &self.ratios {
                out += &format!("- {}\n", ratio_line(r));
            }
        }
        out += "\n## How it was measured\n\n";
        for m in &self.modes {
            out += &format!("- {} ({}): {}\n", m.name, m.version, m.workload);
        }
        for n in &self.notes {
            out += &format!("- {n}\n");
        }
        out
    }
}

/// "unavailable" or "failed".
fn outcome_word(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Failed(_) => "failed",
        _ => "unavailable",
    }
}

const PHASE_HEADERS: [&str; 5] = ["mode", "phase", "min", "median", "max"];
const MEMORY_HEADERS: [&str; 7] = [
    "mode",
    "process sampled",
    "RSS excl. guest RAM",
    "PSS excl. guest RAM",
    "guest RAM touched",
    "agent RSS (in guest)",
    "host total (PSS + guest)",
];

/// `median kvmbox namespace / crun: 0.52 (target < 1.00: met)`.
pub fn ratio_line(r: &Ratio) -> String {
    match r.target {
        Some(target) => {
            let verdict = if r.value < target { "met" } else { "not met" };
            format!(
                "median {}: {:.2} (target < {target:.2}: {verdict})",
                r.name, r.value
            )
        }
        None => format!("median {}: {:.2}", r.name, r.value),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bench::host::tests::test_host;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn lifecycle(name: &str, scale: u64) -> ModeResult {
        let runs: Vec<Vec<(&str, Duration)>> = (1..=3)
            .map(|r| {
                vec![
                    ("create", d(2 * scale * r)),
                    ("start", d(scale * r)),
                    ("exit", d(scale)),
                    ("delete", d(scale)),
                ]
            })
            .collect();
        let mem = MemorySample {
            rss_kib: 2048 * scale,
            pss_kib: 1024 * scale,
            guest_rss_kib: None,
            agent_rss_kib: None,
        };
        ModeResult::measured(
            name,
            ModeKind::Container,
            "1.0",
            "create/start/exit/delete of /bin/true",
            &runs,
            MemoryResult::of("container init after create", &[mem]),
        )
    }

    /// A fixed report (test data, not measurements) used by the report and chart tests.
    pub fn test_report() -> Report {
        let boot = |name: &str, first: &'static str, setup: u64| {
            let runs: Vec<Vec<(&str, Duration)>> = (0..3)
                .map(|r| {
                    let mut v = vec![(first, d(setup + r))];
                    if first == crate::bench::vm::VMM_SETUP {
                        v.push((crate::bench::vm::KERNEL_BOOT, d(20_000 + r)));
                    }
                    v.push((crate::bench::vm::INIT_PROCESS, d(700)));
                    v.push((crate::bench::vm::POWER_OFF, d(900)));
                    v
                })
                .collect();
            let mem = MemorySample {
                rss_kib: 4096,
                pss_kib: 3072,
                guest_rss_kib: Some(20480),
                agent_rss_kib: None,
            };
            ModeResult::measured(
                name,
                ModeKind::Vm,
                "1.0",
                "boot",
                &runs,
                MemoryResult::of("VMM at the init line", &[mem]),
            )
        };
        let modes = vec![
            lifecycle(names::NAMESPACE, 2),
            lifecycle("runc", 10),
            lifecycle("crun", 4),
            ModeResult::without_numbers(
                names::VM,
                ModeKind::Vm,
                "0.1.0",
                "run /bin/true in a VM",
                Outcome::Unavailable("kvmbox: error: vm isolation is not built yet".into()),
            ),
            boot(names::VMM_BOOT, crate::bench::vm::VMM_SETUP, 30),
            boot(names::QEMU_BOOT, crate::bench::vm::SETUP_AND_KERNEL, 25_000),
        ];
        Report {
            host: test_host(),
            started_utc: "2026-12-02T02:00:00Z".into(),
            kvmbox: "0.1.0 (debug build)".into(),
            runs: 3,
            vm_runs: 3,
            ratios: Report::compute_ratios(&modes),
            modes,
            density: Some(DensityResult::of(
                "2 × create".into(),
                (0..2)
                    .map(|i| DensityVm {
                        ready_ms: Some(29_000.0 + 1000.0 * i as f64),
                        status: "ready".into(),
                        memory: Some(MemorySample {
                            rss_kib: 4096,
                            pss_kib: 2048,
                            guest_rss_kib: Some(20480),
                            agent_rss_kib: Some(3072),
                        }),
                    })
                    .collect(),
            )),
            notes: vec!["crun in a private mount namespace".into()],
        }
    }

    #[test]
    fn phases_and_totals_are_summarised_per_mode() {
        let m = lifecycle("x", 1);
        let names: Vec<&str> = m.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, Lifecycle::PHASES);
        assert_eq!(m.phases[0].summary.median_ms, 4.0);
        assert_eq!(m.phases[0].samples_ms, [2.0, 4.0, 6.0]);
        // totals per run: 2+1+1+1=5, 4+2+1+1=8, 6+3+1+1=11
        let t = m.total.unwrap();
        assert_eq!((t.min_ms, t.median_ms, t.max_ms), (5.0, 8.0, 11.0));
        assert_eq!(m.memory.unwrap().rss_kib.median, 2048.0);
    }

    use crate::bench::runtimes::Lifecycle;

    #[test]
    fn ratios_divide_median_totals() {
        let r = test_report();
        let names: Vec<&str> = r.ratios.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kvmbox namespace / runc",
                "kvmbox namespace / crun",
                "kvmbox VMM boot / QEMU microvm boot"
            ]
        );
        assert!((r.ratios[0].value - 0.2).abs() < 1e-9);
        assert_eq!(r.ratios[0].target, Some(0.5));
        assert!((r.ratios[1].value - 0.5).abs() < 1e-9);
        assert_eq!(r.ratios[2].target, None);
    }

    #[test]
    fn no_ratio_without_both_sides() {
        let mut modes = test_report().modes;
        modes[1].outcome = Outcome::Failed("boom".into());
        let r = Report::compute_ratios(&modes);
        assert!(r.iter().all(|r| !r.name.ends_with("runc")));
    }

    #[test]
    fn text_report_states_the_host_and_every_mode() {
        let t = test_report().text();
        assert!(t.starts_with("host: CPU X (2 CPUs, 24000 MiB), Linux 6.1.0, cgroup v1\n"));
        assert!(t.contains("guest kernel code is EMULATED"), "{t}");
        let row = |start: &str| {
            t.lines()
                .find(|l| l.starts_with(start))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        assert_eq!(
            row("kvmbox namespace"),
            "kvmbox namespace create 4.0 8.0 12.0"
        );
        assert_eq!(row("kvmbox vm "), "kvmbox vm unavailable (below) - - -");
        assert!(
            t.contains("\nkvmbox vm unavailable: kvmbox: error: vm isolation is not built yet\n")
        );
        assert!(t.contains("median kvmbox namespace / runc: 0.20 (target < 0.50: met)\n"));
        assert!(
            t.contains("median kvmbox VMM boot / QEMU microvm boot: 0.81\n"),
            "{t}"
        );
        assert!(
            t.contains("2 kvmbox VMs started at once: 2 ready; first spawn → last ready 30000 ms"),
            "{t}"
        );
        assert!(t.contains("VM 0: 29000 ms, ready\n"), "{t}");
        assert!(t.contains("note: crun in a private mount namespace\n"));
    }

    #[test]
    fn markdown_has_phase_memory_and_density_sections() {
        let md = test_report().markdown();
        assert!(
            md.contains("| kvmbox namespace | create | 4.0 | 8.0 | 12.0 |"),
            "{md}"
        );
        assert!(
            md.contains("|  | total (3 runs) | 10.0 | 16.0 | 22.0 |"),
            "{md}"
        );
        // VM memory: RSS 4, PSS 3, guest 20, host total 23 MiB.
        assert!(
            md.contains(
                "| kvmbox VMM boot | VMM at the init line | 4.00 | 3.00 | 20.00 | - | 23.00 |"
            ),
            "{md}"
        );
        assert!(md.contains("## Density"), "{md}");
        assert!(md.contains("median 22.00 MiB"), "{md}");
    }

    #[test]
    fn failed_mode_is_shown_with_its_error() {
        let mut r = test_report();
        r.modes[2] = ModeResult::without_numbers(
            "crun",
            ModeKind::Container,
            "1.8",
            "x",
            Outcome::Failed("exit status 1".into()),
        );
        let md = r.markdown();
        assert!(
            md.contains("| crun | failed: exit status 1 | - | - | - |"),
            "{md}"
        );
    }

    #[test]
    fn ratio_verdict() {
        let r = Ratio {
            name: "kvmbox namespace / crun".into(),
            value: 1.2,
            target: Some(1.0),
        };
        assert_eq!(
            ratio_line(&r),
            "median kvmbox namespace / crun: 1.20 (target < 1.00: not met)"
        );
    }

    #[test]
    fn json_report_has_every_section() {
        let v = serde_json::to_value(test_report()).unwrap();
        assert_eq!(v["modes"][0]["name"], "kvmbox namespace");
        assert_eq!(v["modes"][0]["outcome"]["state"], "measured");
        assert_eq!(v["modes"][3]["outcome"]["state"], "unavailable");
        assert_eq!(v["modes"][0]["phases"][1]["summary"]["median_ms"], 4.0);
        assert_eq!(
            v["modes"][4]["memory"]["guest_touched_kib"]["median"],
            20480.0
        );
        assert_eq!(v["density"]["vms"], 2);
        assert_eq!(v["density"]["per_vm"][1]["memory"]["agent_rss_kib"], 3072);
        assert_eq!(v["host"]["guest_kernel_emulated"], true);
        assert_eq!(v["ratios"][1]["name"], "kvmbox namespace / crun");
    }
}
