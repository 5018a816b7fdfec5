//! Shared by the real-guest tests (`tests/vmm_*.rs`): where the guest kernel is, and how long a
//! boot may take on this host, a busybox initramfs, and running `kvmbox vm boot` to completion.
#![allow(dead_code)] // each test crate uses its own subset

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kvmbox::vmm::initramfs::Initramfs;

/// An initramfs with /bin/busybox (+ `bin/sh`), /dev/console, empty /dev /proc /sys and `script`
/// as /init. Callers add their own files.
pub fn busybox_initramfs(script: &str) -> Initramfs {
    Initramfs::busybox(Path::new("/bin/busybox"), script)
        .expect("/bin/busybox (Debian busybox-static) is needed")
}

/// Compile `tests/fixtures/<fixture>` (C) into a static, stripped guest binary at `out`.
pub fn compile_static_fixture(fixture: &str, opt: &str, out: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let status = Command::new("gcc")
        .args(["-static", opt, "-s", "-o"])
        .arg(out)
        .arg(&src)
        .status()
        .expect("gcc is needed to build the guest test programs");
    assert!(status.success(), "gcc failed on {}", src.display());
}

/// Build and run a VM from `config` on its own thread; the thread answers the VM's exit.
pub fn spawn_vm(
    config: kvmbox::vmm::config::VmConfig,
) -> std::thread::JoinHandle<Result<kvmbox::vmm::exit::VmExit, String>> {
    std::thread::spawn(move || {
        let timer = kvmbox::vmm::timings::BootTimer::new(Instant::now());
        let machine = kvmbox::vmm::builder::VmBuilder::new(config, timer)
            .build()
            .map_err(|e| e.to_string())?;
        machine.run().map(|r| r.exit).map_err(|e| e.to_string())
    })
}

/// What a finished (or timed-out) `kvmbox vm boot` left.
pub struct BootRun {
    /// Exit status; None when it was killed after the timeout.
    pub status: Option<ExitStatus>,
    /// The guest's serial console (the command's stdout).
    pub out: String,
    /// The VMM's stderr.
    pub stderr: String,
}

/// Run `cmd` (a `kvmbox vm boot ...`), its stdout into `stdout_path`, kill it after `timeout`,
/// and print the guest output for the test log.
pub fn run_boot(cmd: &mut Command, stdout_path: &Path, timeout: Duration) -> BootRun {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(stdout_path).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let out = std::fs::read_to_string(stdout_path).unwrap_or_default();
    eprintln!(
        "boot took {:.1} s; guest output:\n{out}\nstderr:\n{stderr}",
        start.elapsed().as_secs_f64()
    );
    BootRun {
        status,
        out,
        stderr,
    }
}

/// The guest kernel: `$KVMBOX_KERNEL`, else `kernel-config/build.sh --print-path`. `None` (after
/// saying so) when none is built and `KVMBOX_SKIP_VM_TESTS=1`; otherwise a missing kernel fails
/// the test with how to build one.
pub fn guest_kernel() -> Option<PathBuf> {
    match find_kernel() {
        Ok(k) => Some(k),
        Err(msg) if std::env::var("KVMBOX_SKIP_VM_TESTS").as_deref() == Ok("1") => {
            eprintln!("skipped (KVMBOX_SKIP_VM_TESTS=1): {msg}");
            None
        }
        Err(msg) => panic!("{msg}"),
    }
}

fn find_kernel() -> Result<PathBuf, String> {
    if let Ok(k) = std::env::var("KVMBOX_KERNEL") {
        let p = PathBuf::from(k);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("KVMBOX_KERNEL={} is not a file", p.display()))
        };
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-config/build.sh");
    match Command::new(&script).arg("--print-path").output() {
        Ok(o) if o.status.success() => {
            let out = String::from_utf8_lossy(&o.stdout);
            let p = PathBuf::from(out.trim().lines().last().unwrap_or(""));
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!("{} printed no kernel path", script.display()))
            }
        }
        _ => Err(format!(
            "no guest kernel built: run `{}` (builds and caches vmlinux, ~10 min) or set \
             KVMBOX_KERNEL=/path/to/vmlinux; set KVMBOX_SKIP_VM_TESTS=1 to skip VM boot tests",
            script.display()
        )),
    }
}

/// How long one boot may take: `KVMBOX_VM_TEST_TIMEOUT` seconds, else `default_secs` (a boot
/// takes ~20 s on an idle nested-PVM host, where guest kernel code is emulated).
pub fn boot_timeout(default_secs: u64) -> Duration {
    let secs = std::env::var("KVMBOX_VM_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_secs);
    Duration::from_secs(secs)
}

/// A persistent tap interface created with `ip tuntap add` (up, with `host_cidr` as its
/// address), deleted again when dropped — also when the test panics.
pub struct Tap {
    /// Interface name.
    pub name: String,
}

impl Tap {
    /// Create tap `name` with the host address `host_cidr` (e.g. `10.254.7.1/24`). Needs root.
    pub fn create(name: &str, host_cidr: &str) -> Tap {
        ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        let tap = Tap {
            name: name.to_string(),
        };
        ip(&["addr", "add", host_cidr, "dev", name]);
        ip(&["link", "set", name, "up"]);
        tap
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether interface `name` exists on the host.
pub fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2's ip is needed for the network tests");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// MD5 of `data` as busybox `md5sum` prints it, computed by the host's md5sum (via a file in
/// `dir`).
pub fn md5_hex(data: &[u8], dir: &Path) -> String {
    let p = dir.join("md5-input");
    std::fs::write(&p, data).unwrap();
    let out = Command::new("md5sum").arg(&p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
