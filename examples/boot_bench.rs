//! Boot benchmark: kvmbox vs QEMU microvm on the same kernel and initramfs.
//!
//! `cargo build --release && cargo run --release --example boot_bench -- --kernel K [--runs 5]
//!  [--memory 128] [--busybox /bin/busybox] [--qemu qemu-system-x86_64] [--kvmbox target/release/kvmbox]`

use std::path::PathBuf;
use std::time::Duration;

use kvmbox::vmm::bench::{self, BenchOptions, INIT_MARKER};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut kernel = None;
    let mut runs = 5usize;
    let mut memory = 128u32;
    let mut busybox = PathBuf::from("/bin/busybox");
    let mut qemu = PathBuf::from("qemu-system-x86_64");
    let mut kvmbox = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("kvmbox")))
        .unwrap_or_else(|| PathBuf::from("target/release/kvmbox"));
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(val())),
            "--runs" => runs = val().parse().expect("--runs N"),
            "--memory" => memory = val().parse().expect("--memory MiB"),
            "--busybox" => busybox = PathBuf::from(val()),
            "--qemu" => qemu = PathBuf::from(val()),
            "--kvmbox" => kvmbox = PathBuf::from(val()),
            other => panic!("unknown argument {other}"),
        }
    }
    let kernel = kernel.expect("--kernel K is required");
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = dir.path().join("initramfs.cpio");
    let fs = bench::marker_initramfs(&busybox, INIT_MARKER).expect("build initramfs");
    std::fs::write(&initrd, fs.to_bytes()).expect("write initramfs");
    eprintln!(
        "boot_bench: {runs} runs each, kernel {}, kvmbox {}, initramfs {} bytes",
        kernel.display(),
        kvmbox.display(),
        std::fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0)
    );
    let opts = BenchOptions {
        kvmbox,
        qemu,
        kernel,
        initrd,
        runs,
        memory_mib: memory,
        timeout: Duration::from_secs(120),
    };
    let report = bench::run(&opts).expect("benchmark");
    print!("{}", report.summary());
}
