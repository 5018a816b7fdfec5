//! VM boot phases, observed from outside the VMM: kvmbox's own VMM (`kvmbox vm boot`) and QEMU
//! microvm boot the same kernel and the same marker initramfs (`vmm::bench::marker_initramfs`:
//! its /init prints a line, runs one `dd` that writes the boot-timer byte, and powers off).
//!
//! Both VMMs write the guest's serial console to stdout, so the same observer times both:
//! spawn → init's first line → dd's "records out" line → stdout closed (the VMM exited). kvmbox
//! also reports the CLOCK_MONOTONIC time of its first KVM_RUN (`--timings`); with PVH direct boot
//! there is no firmware, so the first KVM_RUN is the guest kernel's entry. The VMM's memory is
//! sampled from /proc/<pid>/smaps when the init line appears.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::memory::{self, MemorySample};
use super::process;
use super::report::{DensityResult, DensityVm};
use crate::vmm::bench::{bench_cmdline, monotonic_ns, INIT_MARKER};

/// The console line `dd` prints when the init's one process is done.
pub const INIT_PROCESS_DONE: &str = "records out";

/// Phase: spawn → first KVM_RUN (= guest kernel entry with PVH direct boot).
pub const VMM_SETUP: &str = "VMM setup";
/// Phase: first KVM_RUN → the init's first console line.
pub const KERNEL_BOOT: &str = "guest kernel boot";
/// Phase: spawn → the init's first console line, where the VMM setup cannot be told apart.
pub const SETUP_AND_KERNEL: &str = "VMM setup + guest kernel boot";
/// Phase: the init's first line → its one process (`dd`) done.
pub const INIT_PROCESS: &str = "init: one process (dd)";
/// Phase: `dd` done → power-off → the VMM exited.
pub const POWER_OFF: &str = "power-off + VMM exit";

/// Which VMM boots the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Vmm {
    /// `kvmbox vm boot --timings`.
    Kvmbox,
    /// `qemu-system-x86_64 -M microvm`.
    Qemu,
}

/// What both VMMs boot, and with what.
#[derive(Debug, Clone)]
pub struct BootSetup {
    /// The kvmbox executable.
    pub kvmbox: PathBuf,
    /// The QEMU executable.
    pub qemu: PathBuf,
    /// Guest kernel (vmlinux).
    pub kernel: PathBuf,
    /// The marker initramfs.
    pub initrd: PathBuf,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Longest one boot may take.
    pub timeout: Duration,
}

impl BootSetup {
    /// Guest RAM in bytes (to find its mapping in smaps).
    pub fn guest_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }

    /// The command that boots the guest with `vmm`.
    pub fn command(&self, vmm: Vmm) -> Command {
        let mut cmd;
        match vmm {
            Vmm::Kvmbox => {
                cmd = Command::new(&self.kvmbox);
                cmd.args(["vm", "boot", "--timings", "--kernel"])
                    .arg(&self.kernel)
                    .arg("--initrd")
                    .arg(&self.initrd)
                    .args(["--memory", &self.memory_mib.to_string()]);
            }
            Vmm::Qemu => {
                cmd = Command::new(&self.qemu);
                cmd.args(["-M", "microvm,acpi=off", "-enable-kvm", "-cpu"])
                    // Plain `-cpu host` aborts under nested PVM (QEMU 7.2 cannot set
                    // MSR_IA32_ARCH_CAPABILITIES there); see docs/vmm.md.
                    .arg("host,-arch-capabilities")
                    .args(["-m", &self.memory_mib.to_string(), "-smp", "1"])
                    .args(["-nodefaults", "-no-user-config", "-nographic"])
                    .args(["-serial", "stdio", "-no-reboot"])
                    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
                    .arg("-kernel")
                    .arg(&self.kernel)
                    .arg("-initrd")
                    .arg(&self.initrd)
                    .arg("-append")
                    .arg(bench_cmdline());
            }
        }
        cmd
    }
}

/// One boot's phases (in order) and the VMM's memory at the init line.
#[derive(Debug, Clone, PartialEq)]
pub struct BootRun {
    /// Phase name and duration, in order; they add up to spawn → VMM exit.
    pub phases: Vec<(&'static str, Duration)>,
    /// The VMM's memory when the init line appeared.
    pub memory: Option<MemorySample>,
}

/// What an observer saw of one VMM process.
#[derive(Debug, Default)]
struct Seen {
    init_line: Option<Duration>,
    init_done: Option<Duration>,
    stdout_closed: Option<Duration>,
    memory: Option<MemorySample>,
}

/// A running VMM whose console is being watched.
pub struct Observed {
    child: Child,
    start: Instant,
    start_monotonic_ns: u64,
    stdout: JoinHandle<Seen>,
    stderr: JoinHandle<String>,
}

/// What became of an observed VMM.
#[derive(Debug)]
pub struct Observation {
    init_line: Option<Duration>,
    init_done: Option<Duration>,
    exited: Option<Duration>,
    status: Option<ExitStatus>,
    memory: Option<MemorySample>,
    first_kvm_run: Option<Duration>,
    stderr: String,
}

impl Observed {
    /// Spawn `cmd` and watch its stdout for the init's lines, sampling its memory (guest RAM of
    /// `guest_bytes` counted apart) when the init line appears.
    pub fn spawn(mut cmd: Command, guest_bytes: u64) -> std::io::Result<Observed> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start_monotonic_ns = monotonic_ns();
        let start = Instant::now();
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let out = child.stdout.take().expect("stdout is piped");
        let mut err = child.stderr.take().expect("stderr is piped");
        let stdout =
            std::thread::spawn(move || watch_console(BufReader::new(out), start, pid, guest_bytes));
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Ok(Observed {
            child,
            start,
            start_monotonic_ns,
            stdout,
            stderr,
        })
    }

    /// Wait until the VMM exits (killing it at `deadline`) and collect what was seen.
    pub fn finish(mut self, deadline: Instant) -> std::io::Result<Observation> {
        let left = deadline.saturating_duration_since(Instant::now());
        let status = process::wait_child(&mut self.child, left)?;
        let waited = self.start.elapsed();
        let seen = self.stdout.join().unwrap_or_default();
        let stderr = self.stderr.join().unwrap_or_default();
        let first_kvm_run = field(&stderr, "first_kvm_run_monotonic_ns=")
            .map(|ns| Duration::from_nanos(ns.saturating_sub(self.start_monotonic_ns)));
        Ok(Observation {
            init_line: seen.init_line,
            init_done: seen.init_done,
            exited: status.map(|_| seen.stdout_closed.unwrap_or(waited).min(waited)),
            status,
            memory: seen.memory,
            first_kvm_run,
            stderr,
        })
    }
}

/// Read console lines until EOF, noting when the init's lines appear.
fn watch_console(mut out: impl BufRead, start: Instant, pid: u32, guest_bytes: u64) -> Seen {
    let mut seen = Seen::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        match out.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        if seen.init_line.is_none() && text.contains(INIT_MARKER) {
            seen.init_line = Some(start.elapsed());
            seen.memory = memory::sample(pid, Some(guest_bytes)).ok();
        } else if seen.init_done.is_none() && text.contains(INIT_PROCESS_DONE) {
            seen.init_done = Some(start.elapsed());
        }
    }
    seen.stdout_closed = Some(start.elapsed());
    seen
}

/// The number after `key` in `text`.
fn field(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl Observation {
    /// The last non-empty stderr line (the VMM's error, if any).
    fn error_line(&self) -> String {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output on stderr")
            .trim()
            .to_string()
    }

    /// Turn the observation into phases; an error line when the boot did not complete.
    pub fn into_run(self, vmm: Vmm) -> Result<BootRun, String> {
        let ok_status = match vmm {
            Vmm::Kvmbox => |c: i32| c == 0,
            // QEMU's isa-debug-exit reports (v << 1) | 1 for a write of v to port 0xf4.
            Vmm::Qemu => |c: i32| c == 0 || c == 1,
        };
        let (Some(init), Some(done), Some(exit), Some(status)) =
            (self.init_line, self.init_done, self.exited, self.status)
        else {
            let what = match (self.init_line, self.init_done, self.status) {
                (None, _, None) => "timed out before the init line (killed)",
                (_, _, None) => "timed out after the init line (killed)",
                (None, _, _) => "no init line on the console",
                (_, None, _) => "the init's process did not finish",
                _ => "incomplete",
            };
            if self.status.is_none() {
                // The VMM's last stderr line is no error of its own here.
                return Err(what.to_string());
            }
            return Err(format!("{what}: {}", self.error_line()));
        };
        if !status.code().is_some_and(ok_status) {
            return Err(format!("exited with {status}: {}", self.error_line()));
        }
        let mut phases = Vec::with_capacity(4);
        match (vmm, self.first_kvm_run) {
            (Vmm::Kvmbox, Some(kvm_run)) if kvm_run <= init => {
                phases.push((VMM_SETUP, kvm_run));
                phases.push((KERNEL_BOOT, init - kvm_run));
            }
            (Vmm::Kvmbox, _) => {
                return Err("no first_kvm_run_monotonic_ns in `vm boot --timings` output".into())
            }
            (Vmm::Qemu, _) => phases.push((SETUP_AND_KERNEL, init)),
        }
        phases.push((INIT_PROCESS, done.saturating_sub(init)));
        phases.push((POWER_OFF, exit.saturating_sub(done)));
        Ok(BootRun {
            phases,
            memory: self.memory,
        })
    }
}

/// Boot once with `vmm`.
pub fn boot_once(setup: &BootSetup, vmm: Vmm) -> Result<BootRun, String> {
    let observed = Observed::spawn(setup.command(vmm), setup.guest_bytes())
        .map_err(|e| format!("cannot start {:?}: {e}", setup.command(vmm).get_program()))?;
    observed
        .finish(Instant::now() + setup.timeout)
        .map_err(|e| format!("waiting for the VMM: {e}"))?
        .into_run(vmm)
}

/// `k` kvmbox VMs (`vm boot` of the marker initramfs) started at once, waited for until
/// `timeout`: ready = the init's first console line; memory sampled then.
pub fn density(setup: &BootSetup, k: usize, timeout: Duration) -> DensityResult {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut per_vm = Vec::with_capacity(k);
    let running: Vec<Result<Observed, String>> = (0..k)
        .map(|_| {
            Observed::spawn(setup.command(Vmm::Kvmbox), setup.guest_bytes())
                .map_err(|e| format!("cannot start: {e}"))
        })
        .collect();
    for o in running {
        let cell = |status: String| DensityVm {
            ready_ms: None,
            status,
            memory: None,
        };
        let o = match o {
            Ok(o) => o,
            Err(e) => {
                per_vm.push(cell(e));
                continue;
            }
        };
        let off = o.start.duration_since(start);
        per_vm.push(match o.finish(deadline) {
            Ok(obs) => {
                let init = obs.init_line;
                match obs.into_run(Vmm::Kvmbox) {
                    Ok(run) => DensityVm {
                        ready_ms: init.map(|d| (off + d).as_secs_f64() * 1e3),
                        status: "ready".into(),
                        memory: run.memory,
                    },
                    Err(e) if e.starts_with("timed out") => {
                        cell(format!("{e} after {} s", timeout.as_secs()))
                    }
                    Err(e) => cell(e),
                }
            }
            Err(e) => cell(format!("waiting for the VMM: {e}")),
        });
    }
    DensityResult::of(
        format!(
            "{k} × `kvmbox vm boot` of the marker initramfs at once; ready = the init's first \
             console line; {} s allowed",
            timeout.as_secs()
        ),
        per_vm,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(first_kvm_run: Option<u64>, status: i32) -> Observation {
        use std::os::unix::process::ExitStatusExt;
        Observation {
            init_line: Some(Duration::from_millis(1000)),
            init_done: Some(Duration::from_millis(1700)),
            exited: Some(Duration::from_millis(2000)),
            status: Some(ExitStatus::from_raw(status << 8)),
            memory: None,
            first_kvm_run: first_kvm_run.map(Duration::from_millis),
            stderr: "kvmbox: error: x\n".into(),
        }
    }

    #[test]
    fn kvmbox_phases_split_at_the_first_kvm_run() {
        let run = obs(Some(30), 0).into_run(Vmm::Kvmbox).unwrap();
        let names: Vec<_> = run.phases.iter().map(|p| p.0).collect();
        assert_eq!(names, [VMM_SETUP, KERNEL_BOOT, INIT_PROCESS, POWER_OFF]);
        let ms: Vec<u128> = run.phases.iter().map(|p| p.1.as_millis()).collect();
        assert_eq!(ms, [30, 970, 700, 300]);
    }

    #[test]
    fn qemu_phases_cannot_split_setup_from_kernel() {
        let run = obs(None, 1).into_run(Vmm::Qemu).unwrap();
        assert_eq!(
            run.phases[0],
            (SETUP_AND_KERNEL, Duration::from_millis(1000))
        );
        assert_eq!(run.phases.len(), 3);
    }

    #[test]
    fn failures_name_the_reason_and_the_vmm_error() {
        assert_eq!(
            obs(Some(30), 1).into_run(Vmm::Kvmbox).unwrap_err(),
            "exited with exit status: 1: kvmbox: error: x"
        );
        let mut o = obs(Some(30), 0);
        o.init_line = None;
        assert!(o
            .into_run(Vmm::Kvmbox)
            .unwrap_err()
            .starts_with("no init line"));
        assert!(obs(None, 0)
            .into_run(Vmm::Kvmbox)
            .unwrap_err()
            .contains("first_kvm_run"));
        let mut o = obs(Some(30), 0);
        (o.init_line, o.status) = (None, None);
        assert_eq!(
            o.into_run(Vmm::Kvmbox).unwrap_err(),
            "timed out before the init line (killed)"
        );
    }

    #[test]
    fn console_watcher_times_the_init_lines() {
        let console = format!("[ 1.0] x\r\n{INIT_MARKER}\r\n1+0 records in\r\n1+0 records out\r\n");
        let seen = watch_console(
            console.as_bytes(),
            Instant::now(),
            std::process::id(),
            1 << 40,
        );
        assert!(seen.init_line.is_some() && seen.init_done.is_some());
        assert!(seen.init_line <= seen.init_done && seen.init_done <= seen.stdout_closed);
        assert_eq!(seen.memory.unwrap().guest_rss_kib, Some(0));
    }

    #[test]
    fn observed_shell_stands_in_for_a_vmm() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "echo {INIT_MARKER}; echo '1+0 records out'; \
             echo first_kvm_run_monotonic_ns=0 >&2; exit 0"
        ));
        let o = Observed::spawn(cmd, 1 << 20).unwrap();
        let obs = o.finish(Instant::now() + Duration::from_secs(10)).unwrap();
        assert!(obs.first_kvm_run.is_some());
        // CLOCK_MONOTONIC 0 lies before the spawn: not a plausible first KVM_RUN.
        let run = obs.into_run(Vmm::Qemu).unwrap();
        assert_eq!(run.phases.len(), 3);
    }

    #[test]
    fn commands_boot_the_same_kernel_and_initrd() {
        let setup = BootSetup {
            kvmbox: "/k".into(),
            qemu: "/q".into(),
            kernel: "/vmlinux".into(),
            initrd: "/initrd".into(),
            memory_mib: 128,
            timeout: Duration::from_secs(1),
        };
        for vmm in [Vmm::Kvmbox, Vmm::Qemu] {
            let args: Vec<String> = setup
                .command(vmm)
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            assert!(args.iter().any(|a| a == "/vmlinux"), "{args:?}");
            assert!(args.iter().any(|a| a == "/initrd"), "{args:?}");
            assert!(args.iter().any(|a| a == "128"), "{args:?}");
        }
        assert_eq!(setup.guest_bytes(), 128 << 20);
    }
}
