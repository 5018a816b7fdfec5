//! Opt-in phase marks of `--isolation vm` for `kvmbox bench`: when `KVMBOX_TIMINGS` names a
//! file, every [`mark`] appends one line `<CLOCK_MONOTONIC ns> <label>` to it (and
//! [`vmm_marks`] adds the VMM's own marks from its `timings.json`). Without the variable the
//! calls do nothing. CLOCK_MONOTONIC is the same clock in every process of the host, so the
//! bench compares these marks with the moment it spawned `kvmbox`.

use std::io::Write;
use std::path::Path;

use crate::vmm::bench::monotonic_ns;
use crate::vmm::process::TimingsFile;

/// The environment variable naming the marks file.
pub const ENV: &str = "KVMBOX_TIMINGS";

/// The VMM process is about to be spawned.
pub const VMM_SPAWN: &str = "vmm spawn";
/// The VMM process started its main function (from its timings.json).
pub const VMM_START: &str = "vmm start";
/// The VMM's first KVM_RUN: the guest kernel's entry with PVH direct boot (timings.json).
pub const FIRST_KVM_RUN: &str = "first kvm_run";
/// The guest's first byte on its serial console (timings.json).
pub const FIRST_CONSOLE: &str = "first console output";
/// The agent answered Hello.
pub const AGENT_READY: &str = "agent ready";
/// The agent answered CreateContainer (the init waits for start).
pub const CONTAINER_CREATED: &str = "container created";
/// The agent answered StartContainer (the container process runs).
pub const CONTAINER_STARTED: &str = "container started";
/// The agent answered WaitProcess (the process exited).
pub const EXIT_OBSERVED: &str = "exit observed";
/// `delete` finished: the VM is powered off and the state directory removed.
pub const TORN_DOWN: &str = "vm torn down";

/// Append `label` at the current CLOCK_MONOTONIC time to `$KVMBOX_TIMINGS`, if set. Best
/// effort: a mark that cannot be written is logged at debug level and dropped.
pub fn mark(label: &str) {
    if let Some(path) = std::env::var_os(ENV) {
        append(Path::new(&path), label, monotonic_ns());
    }
}

/// Append one mark line to `path`.
fn append(path: &Path, label: &str, ns: u64) {
    let res = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{ns} {label}\n").as_bytes()));
    if let Err(e) = res {
        tracing::debug!("{ENV} {}: {e}", path.display());
    }
}

/// Append the VMM's marks ([`VMM_START`], [`FIRST_KVM_RUN`], [`FIRST_CONSOLE`]) from the
/// `timings.json` in `state_dir` (written by the VMM when it exits), if `$KVMBOX_TIMINGS` is
/// set. Missing marks are left out.
pub fn vmm_marks(state_dir: &Path) {
    if let Some(path) = std::env::var_os(ENV) {
        append_vmm_marks(Path::new(&path), state_dir);
    }
}

fn append_vmm_marks(path: &Path, state_dir: &Path) {
    let Ok(bytes) = std::fs::read(state_dir.join("timings.json")) else {
        return;
    };
    let Ok(t) = serde_json::from_slice::<TimingsFile>(&bytes) else {
        return;
    };
    for (label, ns) in vmm_mark_times(&t) {
        append(path, label, ns);
    }
}

/// The CLOCK_MONOTONIC times of the VMM's marks in `t`.
fn vmm_mark_times(t: &TimingsFile) -> Vec<(&'static str, u64)> {
    let start = t.vmm_start_monotonic_ns;
    let after_start = |ms: Option<f64>| ms.map(|ms| start + (ms * 1e6) as u64);
    [
        (VMM_START, Some(start)),
        (FIRST_KVM_RUN, t.first_kvm_run_monotonic_ns),
        (FIRST_CONSOLE, after_start(t.marks.first_serial_ms)),
    ]
    .into_iter()
    .filter_map(|(label, ns)| Some((label, ns?)))
    .collect()
}

/// Parse a marks file: `(ns, label)` per well-formed line, in file order.
pub fn parse(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .filter_map(|l| {
            let (ns, label) = l.split_once(' ')?;
            Some((ns.parse().ok()?, label.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::timings::BootMarks;

    #[test]
    fn marks_file_lines_parse_and_junk_is_skipped() {
        let m = parse("10 vmm spawn\nx agent ready\n20 agent ready\n\n30\n");
        assert_eq!(
            m,
            [
                (10, "vmm spawn".to_string()),
                (20, "agent ready".to_string())
            ]
        );
    }

    #[test]
    fn vmm_marks_are_placed_on_the_monotonic_clock() {
        let t = TimingsFile {
            vmm_start_monotonic_ns: 1_000_000_000,
            first_kvm_run_monotonic_ns: Some(1_030_000_000),
            marks: BootMarks {
                first_serial_ms: Some(500.0),
                ..BootMarks::default()
            },
            ..TimingsFile::default()
        };
        assert_eq!(
            vmm_mark_times(&t),
            [
                (VMM_START, 1_000_000_000),
                (FIRST_KVM_RUN, 1_030_000_000),
                (FIRST_CONSOLE, 1_500_000_000)
            ]
        );
        let bare = TimingsFile {
            vmm_start_monotonic_ns: 5,
            ..TimingsFile::default()
        };
        assert_eq!(vmm_mark_times(&bare), [(VMM_START, 5)]);
    }

    #[test]
    fn marks_and_vmm_marks_are_appended() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("marks");
        append(&file, AGENT_READY, 41);
        append(&file, TORN_DOWN, 42);
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        // No timings.json yet: nothing is added.
        append_vmm_marks(&file, &state);
        let t = TimingsFile {
            vmm_start_monotonic_ns: 7,
            ..TimingsFile::default()
        };
        std::fs::write(state.join("timings.json"), serde_json::to_vec(&t).unwrap()).unwrap();
        append_vmm_marks(&file, &state);
        let marks = parse(&std::fs::read_to_string(&file).unwrap());
        assert_eq!(
            marks,
            [
                (41, AGENT_READY.to_string()),
                (42, TORN_DOWN.to_string()),
                (7, VMM_START.to_string())
            ]
        );
    }
}
