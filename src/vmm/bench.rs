//! Boot benchmark: time from spawning the VMM to the guest's init line, kvmbox vs QEMU microvm,
//! on the same kernel and initramfs, plus kvmbox's exec → first KVM_RUN and its RSS without
//! guest memory. Run with `cargo run --release --example boot_bench -- --kernel K`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::config::{CpuProfile, VmConfig, KVM_PVM_SYSFS};
use super::initramfs::{Entry, Initramfs};
use super::timings::USERSPACE_MARK;

/// The line the benchmark/test init prints.
pub const INIT_MARKER: &str = "KVMBOX-INIT-REACHED";

/// An initramfs with /bin/busybox (copied from `busybox`, must be static), /dev/console and an
/// /init script that prints `marker`, writes 123 to the boot-timer port 0x3f0 through
/// /dev/port, and powers off.
pub fn marker_initramfs(busybox: &Path, marker: &str) -> std::io::Result<Initramfs> {
    marker_initramfs_holding(busybox, marker, 0)
}

/// Like [`marker_initramfs`], but the init sleeps `hold_secs` before powering off (a guest
/// that keeps running, e.g. to measure the VMM's memory or to test stopping it).
pub fn marker_initramfs_holding(
    busybox: &Path,
    marker: &str,
    hold_secs: u32,
) -> std::io::Result<Initramfs> {
    let hold = if hold_secs > 0 {
        format!("/bin/busybox sleep {hold_secs}\n")
    } else {
        String::new()
    };
    let script = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         echo {marker}\n\
         /bin/busybox dd if=/boot-mark of=/dev/port bs=1 seek=1008 conv=notrunc\n\
         {hold}\
         /bin/busybox poweroff -f\n"
    );
    let mut fs = Initramfs::busybox(busybox, &script)?;
    // Also in the image, so the boot-timer write does not depend on the devtmpfs mount.
    fs.add(Entry::CharDev {
        path: "dev/port".into(),
        mode: 0o600,
        major: 1,
        minor: 4,
    });
    // The byte 123 for the boot timer, read by one dd process (no pipeline: see docs/vmm.md,
    // a guest process in a pipeline was seen to segfault intermittently on this host).
    fs.file("boot-mark", 0o644, vec![USERSPACE_MARK]);
    Ok(fs)
}

/// How one boot went.
#[derive(Debug, Clone)]
pub struct BootRun {
    /// Spawn → marker line on stdout.
    pub to_marker: Option<Duration>,
    /// Process exit status.
    pub status: Option<i32>,
    /// stderr of the run.
    pub stderr: String,
}

/// Spawn `cmd`, time until a stdout line contains `marker`, wait for exit (killing it after
/// `timeout`).
pub fn time_boot(mut cmd: Command, marker: &str, timeout: Duration) -> std::io::Result<BootRun> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let marker_owned = marker.to_string();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(&marker_owned) {
                let _ = tx.send(start.elapsed());
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = start + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = reader.join();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(BootRun {
        to_marker: rx.try_recv().ok(),
        status,
        stderr,
    })
}

/// Benchmark inputs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The kvmbox binary.
    pub kvmbox: PathBuf,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Initramfs whose init prints [`INIT_MARKER`] and powers off.
    pub initrd: PathBuf,
    /// Runs per VMM.
    pub runs: usize,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Per-boot timeout.
    pub timeout: Duration,
}

/// Benchmark results (all in milliseconds).
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    /// kvmbox spawn → init line, per run.
    pub kvmbox_ms: Vec<f64>,
    /// QEMU spawn → init line, per run.
    pub qemu_ms: Vec<f64>,
    /// kvmbox exec → first KVM_RUN, per run.
    pub exec_to_kvm_run_ms: Vec<f64>,
    /// kvmbox RSS without guest memory, KiB, per run.
    pub rss_kib: Vec<u64>,
    /// Runs that failed (no marker or bad exit), with a reason.
    pub failures: Vec<String>,
}

/// Median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 0 {
        (s[m - 1] + s[m]) / 2.0
    } else {
        s[m]
    }
}

/// Current CLOCK_MONOTONIC in nanoseconds (comparable across processes).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the provided timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The command line both VMMs get (kvmbox adds it itself; QEMU gets it via -append).
pub fn bench_cmdline() -> String {
    let mut cfg = VmConfig::new("");
    cfg.cpu_profile = CpuProfile::choose(None, Path::new(KVM_PVM_SYSFS)).profile;
    cfg.base_cmdline()
}

fn parse_field<T: std::str::FromStr>(stderr: &str, key: &str) -> Option<T> {
    let at = stderr.find(key)? + key.len();
    let rest = &stderr[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Alternate kvmbox and QEMU boots `opts.runs` times each.
pub fn run(opts: &BenchOptions) -> std::io::Result<BenchReport> {
    let mut report = BenchReport::default();
    for i in 0..opts.runs {
        let mut kvmbox = Command::new(&opts.kvmbox);
        kvmbox
            .args(["vm", "boot", "--timings", "--kernel"])
            .arg(&opts.kernel)
            .arg("--initrd")
            .arg(&opts.initrd)
            .args(["--memory", &opts.memory_mib.to_string()]);
        let t0 = monotonic_ns();
        let run = time_boot(kvmbox, INIT_MARKER, opts.timeout)?;
        match (run.to_marker, run.status) {
            (Some(d), Some(0)) => {
                report.kvmbox_ms.push(d.as_secs_f64() * 1e3);
                if let Some(ns) = parse_field::<u64>(&run.stderr, "first_kvm_run_monotonic_ns=") {
                    report
                        .exec_to_kvm_run_ms
                        .push(ns.saturating_sub(t0) as f64 / 1e6);
                }
                if let Some(kib) = parse_field::<u64>(&run.stderr, "excluding guest memory: ") {
                    report.rss_kib.push(kib);
                }
            }
            (m, s) => report.failures.push(format!(
                "kvmbox run {i}: marker {m:?}, status {s:?}: {}",
                run.stderr.trim()
            )),
        }

        let mut qemu = Command::new(&opts.qemu);
        qemu.args([
            "-M",
            "microvm,acpi=off",
            "-enable-kvm",
            "-cpu",
            // Plain `-cpu host` aborts on nested PVM: QEMU 7.2 fails to set
            // MSR_IA32_ARCH_CAPABILITIES (0x10a) there.
            "host,-arch-capabilities",
            "-m",
            &opts.memory_mib.to_string(),
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            "-no-reboot",
            "-kernel",
        ])
        .arg(&opts.kernel)
        .arg("-initrd")
        .arg(&opts.initrd)
        .arg("-append")
        .arg(bench_cmdline());
        let run = time_boot(qemu, INIT_MARKER, opts.timeout)?;
        match run.to_marker {
            Some(d) => report.qemu_ms.push(d.as_secs_f64() * 1e3),
            None => report.failures.push(format!(
                "qemu run {i}: no marker, status {:?}: {}",
                run.status,
                run.stderr.trim()
            )),
        }
    }
    Ok(report)
}

impl BenchReport {
    /// A human-readable summary.
    pub fn summary(&self) -> String {
        let k = median(&self.kvmbox_ms);
        let q = median(&self.qemu_ms);
        let rss: Vec<f64> = self.rss_kib.iter().map(|v| *v as f64).collect();
        let mut s = format!(
            "boot to init line (median): kvmbox {k:.0} ms ({} ok runs), QEMU microvm {q:.0} ms ({} ok runs), ratio kvmbox/QEMU {:.3}\n\
             kvmbox runs ms: {:?}\nQEMU runs ms: {:?}\n\
             kvmbox exec -> first KVM_RUN (median): {:.1} ms; runs: {:?}\n\
             kvmbox RSS excluding guest memory (median): {:.0} KiB ({:.2} MiB); runs: {:?}\n",
            self.kvmbox_ms.len(),
            self.qemu_ms.len(),
            k / q,
            self.kvmbox_ms.iter().map(|v| v.round()).collect::<Vec<_>>(),
            self.qemu_ms.iter().map(|v| v.round()).collect::<Vec<_>>(),
            median(&self.exec_to_kvm_run_ms),
            self.exec_to_kvm_run_ms.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>(),
            median(&rss),
            median(&rss) / 1024.0,
            self.rss_kib,
        );
        for f in &self.failures {
            s.push_str(&format!("failure: {f}\n"));
        }
        s
    }
}

/// Memory of a running VMM process, from /proc/<pid>/smaps (KiB).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmmMemory {
    /// Resident memory excluding the guest RAM mappings.
    pub rss_kib: u64,
    /// Proportional set size excluding the guest RAM mappings.
    pub pss_kib: u64,
    /// Resident guest RAM (what the guest touched).
    pub guest_rss_kib: u64,
}

/// Sum `Rss:`/`Pss:` of an smaps text, putting mappings whose size is one of `guest_sizes_kib`
/// (the guest RAM regions: anonymous, exactly the region size) aside.
pub fn vmm_memory_from_smaps(smaps: &str, guest_sizes_kib: &[u64]) -> VmmMemory {
    let mut m = VmmMemory::default();
    let mut anonymous = false;
    let mut guest = false;
    let kib = |rest: &str| {
        rest.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // "start-end perms offset dev inode [path]": anonymous when there is no path.
            anonymous = words.nth(4).is_none();
            guest = false;
            continue;
        }
        if let Some(rest) = line.strip_prefix("Size:") {
            guest = anonymous && guest_sizes_kib.contains(&kib(rest));
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            if guest {
                m.guest_rss_kib += kib(rest);
            } else {
                m.rss_kib += kib(rest);
            }
        } else if let Some(rest) = line.strip_prefix("Pss:") {
            if !guest {
                m.pss_kib += kib(rest);
            }
        }
    }
    m
}

/// [`VmmMemory`] of process `pid` running a guest with `memory_mib` of RAM.
pub fn vmm_memory(pid: i32, memory_mib: u32) -> std::io::Result<VmmMemory> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let sizes: Vec<u64> = super::layout::ram_ranges(u64::from(memory_mib) << 20)
        .iter()
        .map(|(_, size)| size >> 10)
        .collect();
    Ok(vmm_memory_from_smaps(&smaps, &sizes))
}

/// One `kvmbox-vmm` memory measurement.
#[derive(Debug, Clone)]
pub struct VmmMemoryRun {
    /// Memory once the guest reached userspace (and idles in `sleep`).
    pub memory: VmmMemory,
    /// Spawn → marker line in the serial log.
    pub to_marker: Duration,
    /// The VMM's exit status after SIGTERM.
    pub status: Option<i32>,
}

/// Boot `initrd` (an init that prints [`INIT_MARKER`] and then sleeps, see
/// [`marker_initramfs_holding`]) in a `kvmbox-vmm` process with a serial log file and a vsock
/// device (as `vm_launch` configures it), measure its memory once the marker appeared, then
/// stop it with SIGTERM.
pub fn measure_vmm_memory(
    vmm: &Path,
    kernel: &Path,
    initrd: &Path,
    memory_mib: u32,
    timeout: Duration,
) -> std::io::Result<VmmMemoryRun> {
    let dir = tempfile::tempdir()?;
    let console = dir.path().join("console.log");
    let mut vm = VmConfig::new(kernel);
    vm.initrd = Some(initrd.to_path_buf());
    vm.memory_mib = memory_mib;
    vm.serial = super::config::SerialOutput::File(console.clone());
    vm.cpu_profile = CpuProfile::choose(None, Path::new(KVM_PVM_SYSFS)).profile;
    // Like a container VM (vm_launch): with the vsock device.
    vm.vsock = Some(super::config::VsockConfig {
        guest_cid: 3,
        uds_path: dir.path().join("vsock.sock"),
    });
    let config = super::process::VmmProcessConfig {
        vm,
        timings_file: None,
    };
    let json = dir.path().join("vm.json");
    std::fs::write(
        &json,
        serde_json::to_vec(&config).map_err(std::io::Error::other)?,
    )?;
    let start = Instant::now();
    let mut child = Command::new(vmm)
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id() as i32;
    let to_marker = loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains(INIT_MARKER) {
            break start.elapsed();
        }
        if child.try_wait()?.is_some() || start.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            return Err(std::io::Error::other(format!(
                "no {INIT_MARKER} within {timeout:?}: {}; console: {}",
                String::from_utf8_lossy(&out.stderr).trim(),
                text.trim()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Let the boot's transient work (initramfs unpacking) settle.
    std::thread::sleep(Duration::from_secs(1));
    let memory = vmm_memory(pid, memory_mib)?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait()?.code();
    Ok(VmmMemoryRun {
        memory,
        to_marker,
        status,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn smaps_split_guest_and_vmm_memory() {
        let smaps = "55d0-55e0 r-xp 00000000 08:01 123 /usr/bin/kvmbox-vmm\n\
                     Size:                 64 kB\nRss:                  40 kB\nPss:                  30 kB\n\
                     7f00-8f00 rw-p 00000000 00:00 0\n\
                     Size:             131072 kB\nRss:               9000 kB\nPss:               9000 kB\n\
                     9f00-9f10 rw-p 00000000 00:00 0\n\
                     Size:                 16 kB\nRss:                  12 kB\nPss:                  12 kB\n";
        let m = vmm_memory_from_smaps(smaps, &[131072]);
        assert_eq!(
            m,
            VmmMemory {
                rss_kib: 52,
                pss_kib: 42,
                guest_rss_kib: 9000
            }
        );
    }

    use super::*;

    #[test]
    fn median_handles_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn fields_are_parsed_from_timings() {
        let e = "kvmbox: timings-raw: first_kvm_run_monotonic_ns=12345 x\nkvmbox: VMM RSS excluding guest memory: 2100 KiB\n";
        assert_eq!(
            parse_field::<u64>(e, "first_kvm_run_monotonic_ns="),
            Some(12345)
        );
        assert_eq!(
            parse_field::<u64>(e, "excluding guest memory: "),
            Some(2100)
        );
    }

    #[test]
    fn time_boot_sees_marker_and_status() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo a; echo KVMBOX-INIT-REACHED; exit 3"]);
        let r = time_boot(c, INIT_MARKER, Duration::from_secs(10)).unwrap();
        assert!(r.to_marker.is_some());
        assert_eq!(r.status, Some(3));
    }

    #[test]
    fn initramfs_has_init_console_and_busybox() {
        let dir = tempfile::tempdir().unwrap();
        let bb = dir.path().join("busybox");
        std::fs::write(&bb, b"\x7fELF fake").unwrap();
        let fs = marker_initramfs(&bb, "MARK").unwrap();
        let names: Vec<String> = fs
            .entries()
            .iter()
            .map(|e| format!("{e:?}").split('"').nth(1).unwrap_or("").to_string())
            .collect();
        for want in ["init", "dev/console", "bin/busybox"] {
            assert!(names.iter().any(|n| n == want), "{names:?}");
        }
    }
}
