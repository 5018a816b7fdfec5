//! One real boot about the guest's vector-register state (the cause of the intermittent pipeline
//! SIGSEGV, docs/vmm.md "Guest SIGSEGV in pipelines"). tests/fixtures/fpu_check.c (compiled with
//! `gcc -static -O2` here) reports whether glibc picks AVX code in the guest, then ping-pongs two
//! processes over pipes and compares XMM, and YMM/ZMM/k registers when XCR0 enables them; then
//! the init runs the shell pipeline that used to segfault, `printf | dd`, several times.
//! Asserted: XMM never leaks; on the host profile nothing leaks; on the emulated profile glibc
//! selects no AVX code (the mitigation); every pipeline succeeds.

mod vm_common;

use std::path::Path;
use std::time::{Duration, Instant};

use kvmbox::vmm::config::{CpuProfile, SerialOutput, VmConfig, KVM_PVM_SYSFS};
use kvmbox::vmm::exit::VmExit;
use kvmbox::vmm::initramfs::Initramfs;

/// Round trips per register class; every one is two context switches in the guest.
const ROUND_TRIPS: u32 = 100;
/// `printf | dd` pipelines after the checker.
const PIPELINES: u32 = 10;

/// Compile the checker statically.
fn build_checker(out: &Path) {
    vm_common::compile_static_fixture("fpu_check.c", "-O2", out);
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
    let mut fs = vm_common::busybox_initramfs(&script);
    fs.host_file("bin/fpu_check", checker).unwrap();
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
    let deadline = start + vm_common::boot_timeout(300);
    let vm = vm_common::spawn_vm(config);
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
                "glibc:",
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
    assert!(
        log.contains("fpu-check: cpuid"),
        "the checker did not run; serial:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "sse: {ROUND_TRIPS} round trips, 0 corrupted in the parent, 0 in the child"
        )),
        "XMM registers leaked between processes; serial:\n{log}"
    );
    let avx_usable = log.contains("-> ymm usable");
    match profile {
        // The kernel saves and restores the full XSAVE state: nothing may leak.
        CpuProfile::Host => assert!(
            log.contains("FPU-CHECK PASS"),
            "vector registers leaked between processes; serial:\n{log}"
        ),
        // Known limitation (docs/vmm.md): the emulated-CPU kernel context-switches only the
        // FXSAVE state, so YMM/ZMM state of natively running user code is shared between guest
        // processes; the ymm/zmm lines above show it. The mitigation is that glibc, in every
        // process that inherits init's environment, selects no AVX code.
        CpuProfile::Emulated if avx_usable => assert!(
            log.contains("glibc: no AVX code in memmove, memset, strlen, memchr, strcmp"),
            "glibc in the guest uses AVX code (GLIBC_TUNABLES from the kernel command line \
             missing or not effective); serial:\n{log}"
        ),
        CpuProfile::Emulated => {}
    }
    assert!(
        log.contains(&format!("PIPELINES {PIPELINES}/{PIPELINES} ok")),
        "a pipeline failed; serial:\n{log}"
    );
    eprintln!("fpu boot: whole run {:.1} s", start.elapsed().as_secs_f64());
}
