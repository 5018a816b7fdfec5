//! Boot benchmark: kvmbox vs QEMU microvm on the same kernel and initramfs.
//!
//! `cargo build --release && cargo run --release --example boot_bench -- --kernel K [--runs 5]
//!  [--memory 128] [--busybox /bin/busybox] [--qemu qemu-system-x86_64] [--kvmbox target/release/kvmbox]`
//!
//! `--vmm-memory [--vmm target/release/kvmbox-vmm]` instead measures the `kvmbox-vmm` process
//! (RSS and PSS excluding guest RAM, from /proc/<pid>/smaps) while a guest idles, `--runs` times.

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
    let release_dir = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target/release"));
    let mut kvmbox = release_dir.join("kvmbox");
    let mut vmm = release_dir.join("kvmbox-vmm");
    let mut vmm_memory = false;
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(val())),
            "--runs" => runs = val().parse().expect("--runs N"),
            "--memory" => memory = val().parse().expect("--memory MiB"),
            "--busybox" => busybox = PathBuf::from(val()),
            "--qemu" => qemu = PathBuf::from(val()),
            "--kvmbox" => kvmbox = PathBuf::from(val()),
            "--vmm" => vmm = PathBuf::from(val()),
            "--vmm-memory" => vmm_memory = true,
            other => panic!("unknown argument {other}"),
        }
    }
    let kernel = kernel.expect("--kernel K is required");
    let dir = tempfile::tempdir().expect("tempdir");
    if vmm_memory {
        measure_vmm_memory(&vmm, &kernel, &busybox, memory, runs, dir.path());
        return;
    }
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

/// `--vmm-memory`: RSS/PSS of `kvmbox-vmm` excluding guest RAM while a guest idles.
fn measure_vmm_memory(
    vmm: &std::path::Path,
    kernel: &std::path::Path,
    busybox: &std::path::Path,
    memory: u32,
    runs: usize,
    dir: &std::path::Path,
) {
    let initrd = dir.join("holding.cpio");
    let fs = bench::marker_initramfs_holding(busybox, INIT_MARKER, 600).expect("initramfs");
    std::fs::write(&initrd, fs.to_bytes()).expect("write initramfs");
    let mut rss = Vec::new();
    let mut pss = Vec::new();
    for i in 0..runs {
        match bench::measure_vmm_memory(vmm, kernel, &initrd, memory, Duration::from_secs(300)) {
            Ok(r) => {
                println!(
                    "run {i}: boot to marker {:.1} s; kvmbox-vmm RSS excluding guest RAM {} KiB, \
                     PSS {} KiB, guest RAM resident {} KiB; exit status after SIGTERM {:?}",
                    r.to_marker.as_secs_f64(),
                    r.memory.rss_kib,
                    r.memory.pss_kib,
                    r.memory.guest_rss_kib,
                    r.status
                );
                rss.push(r.memory.rss_kib as f64);
                pss.push(r.memory.pss_kib as f64);
            }
            Err(e) => println!("run {i}: failed: {e}"),
        }
    }
    println!(
        "kvmbox-vmm {} ({} MiB guest): median RSS excluding guest RAM {:.0} KiB ({:.2} MiB), \
         median PSS {:.0} KiB ({:.2} MiB), {} ok runs",
        vmm.display(),
        memory,
        bench::median(&rss),
        bench::median(&rss) / 1024.0,
        bench::median(&pss),
        bench::median(&pss) / 1024.0,
        rss.len()
    );
}
