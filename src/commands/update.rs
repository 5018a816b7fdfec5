//! `update`: build the runtime-spec `linux.resources` from `--resources FILE|-` and the limit
//! flags (which override the JSON's fields), then hand it to [`Runtime::update`].

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};

use crate::cli::UpdateArgs;
use crate::runtime::Runtime;

/// The flags that set a limit, for the "nothing to update" message.
const LIMIT_FLAGS: &str = "--memory, --memory-reservation, --memory-swap, --cpu-period, \
                           --cpu-quota, --cpu-share, --cpuset-cpus, --cpuset-mems, --pids-limit";

/// Run `update` with the process's stdin as the source of `--resources -`.
pub(super) fn update(rt: &Runtime, args: &UpdateArgs) -> Result<()> {
    let resources = resources_of(args, std::io::stdin().lock())?;
    rt.update(&args.id, &resources)?;
    Ok(())
}

/// The resources `args` ask for: the JSON of `--resources` (read from `stdin` for `-`), then
/// each limit flag given.
pub(super) fn resources_of(args: &UpdateArgs, stdin: impl Read) -> Result<LinuxResources> {
    let id = &args.id;
    let mut res = match &args.resources {
        Some(path) => read_resources(path, stdin).with_context(|| format!("container {id}"))?,
        None if !has_limit_flag(args) => bail!(
            "container {id}: update: no resources given: use --resources FILE|- or one of \
             {LIMIT_FLAGS}"
        ),
        None => LinuxResources::default(),
    };
    apply_flags(&mut res, args).with_context(|| format!("container {id}"))?;
    Ok(res)
}

fn has_limit_flag(a: &UpdateArgs) -> bool {
    a.memory.is_some()
        || a.memory_reservation.is_some()
        || a.memory_swap.is_some()
        || a.cpu_period.is_some()
        || a.cpu_quota.is_some()
        || a.cpu_share.is_some()
        || a.cpuset_cpus.is_some()
        || a.cpuset_mems.is_some()
        || a.pids_limit.is_some()
}

/// Parse runtime-spec LinuxResources JSON from `path` (`-`: from `stdin`).
fn read_resources(path: &Path, stdin: impl Read) -> Result<LinuxResources> {
    let (what, text) = if path == Path::new("-") {
        let mut text = String::new();
        let mut stdin = stdin;
        stdin
            .read_to_string(&mut text)
            .context("--resources -: reading stdin")?;
        ("--resources - (stdin)".to_string(), text)
    } else {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--resources {}", path.display()))?;
        (format!("--resources {}", path.display()), text)
    };
    let mut de = serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner();
        if at == "." {
            anyhow!("{what}: {inner}")
        } else {
            anyhow!("{what}: {at}: {inner}")
        }
    })
}

/// Write each limit flag given over the corresponding field of `res`.
fn apply_flags(res: &mut LinuxResources, a: &UpdateArgs) -> Result<()> {
    let bytes = |flag: &str, v: &Option<String>| -> Result<Option<i64>> {
        v.as_deref().map(|v| parse_bytes(flag, v)).transpose()
    };
    let limit = bytes("--memory", &a.memory)?;
    let reservation = bytes("--memory-reservation", &a.memory_reservation)?;
    let swap = bytes("--memory-swap", &a.memory_swap)?;
    if limit.is_some() || reservation.is_some() || swap.is_some() {
        let mut mem: LinuxMemory = res.memory().unwrap_or_default();
        if limit.is_some() {
            mem.set_limit(limit);
        }
        if reservation.is_some() {
            mem.set_reservation(reservation);
        }
        if swap.is_some() {
            mem.set_swap(swap);
        }
        res.set_memory(Some(mem));
    }
    if a.cpu_period.is_some()
        || a.cpu_quota.is_some()
        || a.cpu_share.is_some()
        || a.cpuset_cpus.is_some()
        || a.cpuset_mems.is_some()
    {
        let mut cpu: LinuxCpu = res.cpu().clone().unwrap_or_default();
        if a.cpu_period.is_some() {
            cpu.set_period(a.cpu_period);
        }
        if a.cpu_quota.is_some() {
            cpu.set_quota(a.cpu_quota);
        }
        if a.cpu_share.is_some() {
            cpu.set_shares(a.cpu_share);
        }
        if a.cpuset_cpus.is_some() {
            cpu.set_cpus(a.cpuset_cpus.clone());
        }
        if a.cpuset_mems.is_some() {
            cpu.set_mems(a.cpuset_mems.clone());
        }
        res.set_cpu(Some(cpu));
    }
    if let Some(n) = a.pids_limit {
        let mut pids = LinuxPids::default();
        pids.set_limit(n);
        res.set_pids(Some(pids));
    }
    Ok(())
}

/// A memory size as runc and docker take it: plain bytes, or a number (fractions allowed)
/// with a binary unit suffix `b`, `k`, `m`, `g`, `t`, `p` (optionally followed by `i`/`b`:
/// `64m`, `64MiB`, `1.5g`); `-1` means unlimited.
fn parse_bytes(flag: &str, value: &str) -> Result<i64> {
    let bad = || {
        anyhow!(
            "{flag} {value:?}: not a size in bytes (e.g. 33554432, 32m, 1g) or -1 for unlimited"
        )
    };
    let v = value.trim();
    if v == "-1" {
        return Ok(-1);
    }
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    let unit = unit.trim_start_matches(' ').to_ascii_lowercase();
    let (shift, rest) = match unit.chars().next() {
        None => (0, ""),
        Some('b') if unit == "b" => (0, ""),
        Some(c) => {
            let shift = match c {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                'p' => 50,
                _ => return Err(bad()),
            };
            (shift, &unit[1..])
        }
    };
    if !matches!(rest, "" | "i" | "b" | "ib") {
        return Err(bad());
    }
    let bytes = if let Some((whole, frac)) = number.split_once('.') {
        if frac.contains('.') {
            return Err(bad());
        }
        let n: f64 = format!("{whole}.{frac}").parse().map_err(|_| bad())?;
        let b = (n * (1u64 << shift) as f64).floor();
        if b >= i64::MAX as f64 {
            return Err(bad());
        }
        b as i64
    } else {
        let n: i64 = number.parse().map_err(|_| bad())?;
        n.checked_mul(1i64 << shift).ok_or_else(bad)?
    };
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};

    fn args(flags: &[&str]) -> UpdateArgs {
        use clap::Parser;
        let mut argv = vec!["kvmbox", "update"];
        argv.extend_from_slice(flags);
        argv.push("c1");
        match Cli::parse_from(argv).command {
            Command::Update(a) => a,
            other => panic!("parsed {other:?}"),
        }
    }

    fn resources(flags: &[&str], stdin: &str) -> Result<LinuxResources> {
        resources_of(&args(flags), stdin.as_bytes())
    }

    #[test]
    fn sizes_take_units_and_minus_one() {
        for (text, want) in [
            ("33554432", 33554432),
            ("64m", 64 << 20),
            ("64M", 64 << 20),
            ("64MiB", 64 << 20),
            ("64mb", 64 << 20),
            ("512k", 512 << 10),
            ("2g", 2 << 30),
            ("1.5g", 3 << 29),
            ("100b", 100),
            ("0", 0),
            ("-1", -1),
        ] {
            assert_eq!(parse_bytes("--memory", text).unwrap(), want, "{text}");
        }
        for text in [
            "",
            "64q",
            "m",
            "-2",
            "1.2.3m",
            "64mm",
            "64bb",
            "64kii",
            "1e3",
            "99999999999p",
        ] {
            let err = parse_bytes("--memory", text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("--memory {text:?}: not a size")),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn flags_set_the_limits() {
        let r = resources(
            &[
                "--memory",
                "32m",
                "--memory-reservation",
                "16m",
                "--memory-swap",
                "-1",
                "--cpu-period",
                "100000",
                "--cpu-quota",
                "-1",
                "--cpu-share",
                "512",
                "--cpuset-cpus",
                "0-1",
                "--cpuset-mems",
                "0",
                "--pids-limit",
                "20",
            ],
            "",
        )
        .unwrap();
        let m = r.memory().as_ref().unwrap();
        assert_eq!(
            (m.limit(), m.reservation(), m.swap()),
            (Some(32 << 20), Some(16 << 20), Some(-1))
        );
        let c = r.cpu().as_ref().unwrap();
        assert_eq!(
            (c.period(), c.quota(), c.shares()),
            (Some(100_000), Some(-1), Some(512))
        );
        assert_eq!(c.cpus().as_deref(), Some("0-1"));
        assert_eq!(c.mems().as_deref(), Some("0"));
        assert_eq!(r.pids().unwrap().limit(), 20);
        let r = resources(&["--pids-limit", "-1"], "").unwrap();
        assert_eq!(r.pids().unwrap().limit(), -1);
        assert!(r.memory().is_none() && r.cpu().is_none());
    }

    #[test]
    fn resources_json_comes_from_stdin_and_flags_override_it() {
        let json = r#"{"memory": {"limit": 1048576, "reservation": 524288},
                       "cpu": {"shares": 256, "cpus": "0"}, "pids": {"limit": 5}}"#;
        let r = resources(&["--resources", "-"], json).unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(1 << 20));
        assert_eq!(r.pids().unwrap().limit(), 5);
        let r = resources(
            &[
                "-r",
                "-",
                "--memory",
                "64m",
                "--pids-limit",
                "9",
                "--cpu-quota",
                "5000",
            ],
            json,
        )
        .unwrap();
        let m = r.memory().as_ref().unwrap();
        // Overridden fields change; the others keep the JSON's values.
        assert_eq!(
            (m.limit(), m.reservation()),
            (Some(64 << 20), Some(524_288))
        );
        let c = r.cpu().as_ref().unwrap();
        assert_eq!((c.shares(), c.quota()), (Some(256), Some(5000)));
        assert_eq!(c.cpus().as_deref(), Some("0"));
        assert_eq!(r.pids().unwrap().limit(), 9);
    }

    #[test]
    fn resources_json_comes_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("res.json");
        std::fs::write(&path, r#"{"pids": {"limit": 42}}"#).unwrap();
        let r = resources(&["--resources", path.to_str().unwrap()], "ignored").unwrap();
        assert_eq!(r.pids().unwrap().limit(), 42);
        let missing = dir.path().join("none.json");
        let err = format!(
            "{:#}",
            resources(&["--resources", missing.to_str().unwrap()], "").unwrap_err()
        );
        assert!(
            err.starts_with(&format!("container c1: --resources {}", missing.display())),
            "{err}"
        );
    }

    #[test]
    fn bad_input_is_one_clear_error() {
        let err = format!("{:#}", resources(&[], "").unwrap_err());
        assert!(
            err.starts_with("container c1: update: no resources given") && err.contains("--memory"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            resources(&["-r", "-"], r#"{"memory": {"limit": "lots"}}"#).unwrap_err()
        );
        assert!(
            err.starts_with("container c1: --resources - (stdin): memory.limit: invalid type"),
            "{err}"
        );
        let err = format!("{:#}", resources(&["-r", "-"], "{nope").unwrap_err());
        assert!(
            err.starts_with("container c1: --resources - (stdin): "),
            "{err}"
        );
        let err = format!("{:#}", resources(&["--memory", "12x"], "").unwrap_err());
        assert_eq!(
            err,
            "container c1: --memory \"12x\": not a size in bytes (e.g. 33554432, 32m, 1g) or -1 \
             for unlimited"
        );
    }
}
