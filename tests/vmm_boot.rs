//! One real boot: the project's guest kernel + a busybox initramfs built by `initramfs.rs`.
//! The init prints a marker, writes 123 to the boot-timer port and powers off.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kvmbox::vmm::bench::{marker_initramfs, time_boot, INIT_MARKER};

/// The guest kernel: $KVMBOX_KERNEL, else `kernel-config/build.sh --print-path`.
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
    let out = Command::new(&script).arg("--print-path").output();
    match out {
        Ok(o) if o.status.success() => {
            let path = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let p = PathBuf::from(path.lines().last().unwrap_or(""));
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

#[test]
fn boots_the_project_kernel_to_userspace_and_powers_off() {
    let kernel = match find_kernel() {
        Ok(k) => k,
        Err(msg) if std::env::var("KVMBOX_SKIP_VM_TESTS").as_deref() == Ok("1") => {
            eprintln!("skipped (KVMBOX_SKIP_VM_TESTS=1): {msg}");
            return;
        }
        Err(msg) => panic!("{msg}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initramfs.cpio");
    let fs = marker_initramfs(Path::new("/bin/busybox"), INIT_MARKER)
        .expect("/bin/busybox (Debian busybox-static) is needed");
    std::fs::write(&initrd, fs.to_bytes()).unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvmbox"));
    cmd.args(["vm", "boot", "--timings", "--kernel"])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd);
    // 90 s: ~15 s on an idle nested-PVM host; KVMBOX_VM_TEST_TIMEOUT (seconds) for loaded CI.
    let timeout = std::env::var("KVMBOX_VM_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90);
    let run = time_boot(cmd, INIT_MARKER, Duration::from_secs(timeout)).unwrap();
    assert!(
        run.to_marker.is_some(),
        "the init line never appeared within {timeout} s (kernel {}); stderr:\n{}",
        kernel.display(),
        run.stderr
    );
    assert_eq!(run.status, Some(0), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("cpu profile"), "{}", run.stderr);
    // The init wrote 123 to port 0x3f0: the userspace mark has a time.
    let timings = run
        .stderr
        .lines()
        .find(|l| l.contains("timings:"))
        .unwrap_or_default();
    assert!(timings.contains("userspace (port 0x3f0)"), "{}", run.stderr);
    assert!(
        !timings.ends_with("userspace (port 0x3f0) -"),
        "{}",
        run.stderr
    );
    eprintln!("{timings}");
}
