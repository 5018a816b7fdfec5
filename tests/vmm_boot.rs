//! One real boot: the project's guest kernel + a busybox initramfs built by `initramfs.rs`.
//! The init prints a marker, writes 123 to the boot-timer port and powers off.

mod vm_common;

use std::path::Path;
use std::process::Command;

use kvmbox::vmm::bench::{marker_initramfs, time_boot, INIT_MARKER};

#[test]
fn boots_the_project_kernel_to_userspace_and_powers_off() {
    let Some(kernel) = vm_common::guest_kernel() else {
        return;
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
    let timeout = vm_common::boot_timeout(90);
    let run = time_boot(cmd, INIT_MARKER, timeout).unwrap();
    assert!(
        run.to_marker.is_some(),
        "the init line never appeared within {timeout:?} (kernel {}); stderr:\n{}",
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
