//! `kvmbox bench`: container startup (`run` of `/bin/true`), side by side with runc and crun.
//!
//! One busybox bundle is shared by every runtime. After one untimed warm-up run each, the
//! runtimes take turns: round r starts with runtime r mod n, so slow phases of a noisy host hit
//! all of them alike.

pub mod bundle;
pub mod error;
pub mod host;
pub mod report;
pub mod runtimes;
pub mod stats;

use std::path::Path;
use std::time::Duration;

pub use error::BenchError;

use crate::cli::{BenchArgs, BenchFormat, Cli, Isolation};
use host::HostInfo;
use report::{Report, RuntimeResult};
use runtimes::{Launch, Runtime};
use stats::Summary;

/// Run the benchmark described by `args`.
pub fn run(cli: &Cli, args: &BenchArgs) -> anyhow::Result<()> {
    if cli.isolation == Isolation::Vm {
        return Err(BenchError::VmNotBuilt.into());
    }
    let report = measure(args)?;
    match args.format {
        BenchFormat::Text => print!("{}", report.text()),
        BenchFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    if let Some(dir) = &args.output {
        write_markdown(dir, &report)?;
    }
    Ok(())
}

/// Write `results.md` into `dir` (created if needed).
fn write_markdown(dir: &Path, report: &Report) -> Result<(), BenchError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BenchError::Io { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let file = dir.join("results.md");
    std::fs::write(&file, report.markdown()).map_err(io("write", &file))
}

/// One runtime's samples while the benchmark runs.
struct Contender {
    runtime: Runtime,
    samples: Vec<Duration>,
    error: Option<String>,
}

/// Build the bundle, run every runtime `args.runs` times and summarise.
pub fn measure(args: &BenchArgs) -> Result<Report, BenchError> {
    if args.runs == 0 {
        return Err(BenchError::NoRuns);
    }
    let busybox = bundle::find_busybox()?;
    let tmp = tempfile::Builder::new()
        .prefix("kvmbox-bench-")
        .tempdir()
        .map_err(|source| BenchError::Io {
            what: "create temp dir in",
            path: std::env::temp_dir(),
            source,
        })?;
    let bundle_dir = tmp.path().join("bundle");
    bundle::write_bundle(&bundle_dir, &busybox)?;

    let mut notes = vec![
        "each sample: wall time from spawning `<runtime> run` to its exit (create, start, wait, \
         delete); the runtimes' own state dirs live in a temp dir"
            .to_string(),
        "spec: runc 1.1's default spec (`runc spec`) running /bin/true without a terminal"
            .to_string(),
    ];
    let mut contenders = vec![Contender {
        runtime: Runtime::kvmbox(&tmp.path().join("state-kvmbox"))?,
        samples: Vec::new(),
        error: None,
    }];
    if !args.no_peers {
        let runc_root = tmp.path().join("state-runc");
        if let Some(runc) = Runtime::peer("runc", &runc_root, Launch::Direct) {
            contenders.push(Contender {
                runtime: runc,
                samples: Vec::new(),
                error: None,
            });
        } else {
            notes.push("runc: not installed, skipped".into());
        }
        let hybrid = host::hybrid_with_controllers(Path::new("/sys/fs/cgroup"));
        let launch = if hybrid {
            Launch::PrivateMountNs
        } else {
            Launch::Direct
        };
        let crun_root = tmp.path().join("state-crun");
        if let Some(crun) = Runtime::peer("crun", &crun_root, launch) {
            contenders.push(Contender {
                runtime: crun,
                samples: Vec::new(),
                error: None,
            });
        } else {
            notes.push("crun: not installed, skipped".into());
        }
    }

    let crun_wrapped = contenders
        .iter()
        .any(|c| c.runtime.launch == Launch::PrivateMountNs);
    let wrapper_overhead = if crun_wrapped {
        let overhead = mount_ns_overhead(args.runs.max(10))?;
        notes.push(format!(
            "crun: this host's hybrid cgroup layout makes crun 1.8 refuse to run, so crun runs in \
             a private mount namespace: the forked child calls unshare(CLONE_NEWNS), makes / \
             private and bind-mounts /dev/null over {} before exec'ing crun. That setup costs \
             {:.2} ms (median of spawning /bin/true with it minus without it); it is subtracted \
             from every crun sample",
            runtimes::HYBRID_CONTROLLERS,
            overhead.as_secs_f64() * 1000.0
        ));
        overhead
    } else {
        Duration::ZERO
    };

    // Warm-up: one untimed run each (page cache, first-use costs); a peer that fails drops out.
    for (i, c) in contenders.iter_mut().enumerate() {
        let id = format!("bench-{}-{}-warmup", std::process::id(), c.runtime.name);
        match c.runtime.run_once(&bundle_dir, &id) {
            Ok(_) => {}
            Err(e) if i == 0 => return Err(e),
            Err(e) => c.error = Some(e.to_string()),
        }
    }

    let n = contenders.len();
    for round in 0..args.runs {
        for k in 0..n {
            let c = &mut contenders[(round + k) % n];
            if c.error.is_some() {
                continue;
            }
            let id = format!("bench-{}-{}-{round}", std::process::id(), c.runtime.name);
            match c.runtime.run_once(&bundle_dir, &id) {
                Ok(mut t) => {
                    if c.runtime.launch == Launch::PrivateMountNs {
                        t = t.saturating_sub(wrapper_overhead);
                    }
                    c.samples.push(t)
                }
                Err(e) if c.runtime.name == "kvmbox" => return Err(e),
                Err(e) => c.error = Some(e.to_string()),
            }
        }
    }

    let results: Vec<RuntimeResult> = contenders
        .into_iter()
        .map(|c| RuntimeResult {
            runtime: c.runtime.name,
            version: c.runtime.version,
            summary: if c.error.is_some() {
                None
            } else {
                Summary::of(&c.samples)
            },
            samples_ms: c.samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect(),
            error: c.error,
        })
        .collect();
    Ok(Report {
        host: HostInfo::probe(),
        workload: format!(
            "`run` of /bin/true in a busybox bundle, {} runs per runtime, runtimes alternating \
             each round",
            args.runs
        ),
        runs: args.runs,
        ratios: Report::compute_ratios(&results),
        results,
        notes,
    })
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
