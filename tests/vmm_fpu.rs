//! One real boot that checks the guest keeps each process's vector registers across context
//! switches (the cause of the intermittent pipeline SIGSEGV, docs/vmm.md "Guest SIGSEGV in
//! pipelines"): tests/fixtures/fpu_check.c (compiled with `gcc -static -O2` here) ping-pongs two
//! processes over pipes and compares XMM, and YMM/ZMM/k registers when XCR0 enables them; then
//! the init runs the shell pipeline that used to segfault, `printf | dd`, several times.

mod vm_common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kvmbox::vmm::builder::VmBuilder;
use kvmbox::vmm::config::{CpuProfile, SerialOutput, VmConfig, KVM_PVM_SYSFS};
use kvmbox::vmm::exit::VmExit;
use kvmbox::vmm::initramfs::{Entry, Initramfs};
use kvmbox::vmm::timings::BootTimer;

/// Round trips per register class; every one is two context switches in the guest.
const ROUND_TRIPS: u32 = 200;
/// `printf | dd` pipelines after the checker.
const PIPELINES: u32 = 10;

/// Compile the checker statically.
fn build_checker(out: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fpu_check.c");
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-s", "-o"])
        .arg(out)
        .arg(&src)
        .status()
        .expect("gcc is needed to build the guest checker");
    assert!(status.success(), "gcc failed on {}", src.display());
}

fn initramfs(checker: &Path) -> Initramfs {
    // `pipefail`: a SIGSEGV in printf's subshell counts too (status 139).
    let script = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         /bin/fpu_check {ROUND_TRIPS}\n\
         set -o pipefail\n\
         i=0; ok=0\n\
         while [ $i -lt {PIPELINES} ]; do\n\
         \x20 i=$((i+1))\n\
         \x20 printf '\\173' | /bin/busybox dd of=/dev/null bs=1 2>/dev/null\n\
         \x20 st=$?\n\
         \x20 if [ $st -eq 0 ]; then ok=$((ok+1)); else echo \"pipeline $i: status $st\"; fi\n\
         done\n\
         echo \"PIPELINES $ok/{PIPELINES} ok\"\n\
         /bin/busybox poweroff -f\n"
    );
    let mut fs = Initramfs::new();
    fs.dir("bin").dir("dev").dir("proc").dir("sys");
    fs.add(Entry::CharDev {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    fs.host_file("bin/busybox", Path::new("/bin/busybox"))
        .expect("/bin/busybox (Debian busybox-static) is needed");
    fs.host_file("bin/fpu_check", checker).unwrap();
    fs.symlink("bin/sh", "busybox");
    fs.file("init", 0o755, script);
    fs
}

#[test]
fn guest_processes_keep_their_vector_registers_and_pipelines_do_not_crash() {
    let Some(kernel) = vm_common::guest_kernel() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let checker = dir.path().join("fpu_check");
    build_checker(&checker);
    let initrd = dir.path().join("initramfs.cpio");
    std::fs::write(&initrd, initramfs(&checker).to_bytes()).unwrap();
    let serial_log = dir.path().join("serial.log");

    let mut config = VmConfig::new(&kernel);
    config.initrd = Some(initrd);
    config.serial = SerialOutput::File(serial_log.clone());
    let profile = CpuProfile::choose(None, Path::new(KVM_PVM_SYSFS)).profile;
    config.cpu_profile = profile;
    let start = Instant::now();
    let deadline = start + vm_common::boot_timeout(180);
    let vm = std::thread::spawn(move || {
        let machine = VmBuilder::new(config, BootTimer::new(Instant::now()))
            .build()
            .map_err(|e| e.to_string())?;
        machine.run().map(|r| r.exit).map_err(|e| e.to_string())
    });
    let serial = || std::fs::read_to_string(&serial_log).unwrap_or_default();
    while !vm.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the guest did not power off within {:?}; serial:\n{}",
            deadline - start,
            serial()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let exit = vm.join().unwrap();
    let log = serial();
    assert!(
        matches!(exit, Ok(VmExit::PowerOff(_))),
        "{exit:?}; serial:\n{log}"
    );

    let report: Vec<&str> = log
        .lines()
        .filter(|l| {
            [
                "fpu-check:",
                "sse:",
                "ymm:",
                "zmm:",
                "FPU-CHECK",
                "PIPELINES",
                "pipeline ",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .collect();
    eprintln!("{}", report.join("\n"));
    let xcr0_line = report
        .iter()
        .find(|l| l.starts_with("fpu-check:"))
        .unwrap_or_else(|| panic!("the checker did not run; serial:\n{log}"));
    assert!(
        log.contains(&format!(
            "sse: {ROUND_TRIPS} round trips, 0 corrupted in the parent, 0 in the child"
        )),
        "XMM registers leaked between processes; serial:\n{log}"
    );
    assert!(
        log.contains("FPU-CHECK PASS"),
        "vector registers leaked between processes; serial:\n{log}"
    );
    if profile == CpuProfile::Emulated {
        // The emulated-CPU kernel context-switches only FXSAVE state, so it must not let user
        // space enable YMM/ZMM state (kernel patch 0013 limits XCR0 to x87|SSE).
        assert!(
            xcr0_line.contains("ymm off, zmm off"),
            "user space may use AVX state the kernel does not save: {xcr0_line}"
        );
    }
    assert!(
        log.contains(&format!("PIPELINES {PIPELINES}/{PIPELINES} ok")),
        "a pipeline failed; serial:\n{log}"
    );
    eprintln!("fpu boot: whole run {:.1} s", start.elapsed().as_secs_f64());
}
