//! One real boot: the project's guest kernel + a busybox initramfs built by `initramfs.rs`.
//! The init prints a marker, writes 123 to the boot-timer port through the shell pipeline
//! `printf '\173' | dd of=/dev/port ...` and powers off. (That pipeline used to die of SIGSEGV
//! intermittently on the nested-PVM host: user AVX state leaked between guest processes; see
//! docs/vmm.md, "Guest SIGSEGV in pipelines", and tests/vmm_fpu.rs.)

mod vm_common;

use std::process::Command;

use kvmbox::vmm::bench::{time_boot, INIT_MARKER};
use kvmbox::vmm::initramfs::{Entry, Initramfs};

/// /bin/busybox, /dev/console, /dev/port and an /init that prints `INIT_MARKER`, writes the
/// boot-timer byte with a pipeline and powers off with status 0; when either side of the pipeline
/// fails (`pipefail`; a SIGSEGV is status 139) init says so and exits: kernel panic, VM reset,
/// status 2.
fn pipeline_initramfs() -> Initramfs {
    let script = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         echo {INIT_MARKER}\n\
         set -o pipefail\n\
         printf '\\173' | /bin/busybox dd of=/dev/port bs=1 seek=1008 conv=notrunc\n\
         st=$?\n\
         [ $st -eq 0 ] && /bin/busybox poweroff -f\n\
         echo \"boot-timer pipeline failed: status $st\"\n\
         exit 1\n"
    );
    let mut fs = vm_common::busybox_initramfs(&script);
    // Also in the image, so the boot-timer write does not depend on the devtmpfs mount.
    fs.add(Entry::CharDev {
        path: "dev/port".into(),
        mode: 0o600,
        major: 1,
        minor: 4,
    });
    fs
}

#[test]
fn boots_the_project_kernel_to_userspace_and_powers_off() {
    let Some(kernel) = vm_common::guest_kernel() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initramfs.cpio");
    std::fs::write(&initrd, pipeline_initramfs().to_bytes()).unwrap();

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
