//! Real launches through `kvmbox::vm_launch`: a detached `kvmbox-vmm` boots the project's kernel
//! with an agent-less test initramfs (busybox init that prints a marker and powers off, or
//! sleeps until stopped). Boots take 15–60 s on the nested-PVM host; they run one at a time.

mod vm_common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kvmbox::vm_launch::{launch, stop, StopOutcome, VmPlan};
use kvmbox::vmm::bench::{marker_initramfs_holding, vmm_memory, INIT_MARKER};
use kvmbox::vmm::process::TimingsFile;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// One guest at a time: two concurrent boots on 2 shared cores only make both slow.
static ONE_VM: Mutex<()> = Mutex::new(());

fn test_plan(kernel: PathBuf) -> VmPlan {
    VmPlan {
        kernel,
        kernel_from: "test",
        // Not used by launch (the initrd is built by the test).
        agent: PathBuf::from("/nonexistent/kvmbox-agent"),
        vmm: PathBuf::from(env!("CARGO_BIN_EXE_kvmbox-vmm")),
        vcpus: 1,
        vcpus_from: "test",
        memory_mib: 128,
        memory_from: "test",
        agent_timeout: Duration::from_secs(120),
        cpu_profile: None,
        extra_cmdline: vec!["kvmbox.test=1".into()],
        cache_dir: std::env::temp_dir(),
    }
}

fn initrd(dir: &Path, hold_secs: u32) -> PathBuf {
    let p = dir.join("initrd.cpio");
    let fs = marker_initramfs_holding(Path::new("/bin/busybox"), INIT_MARKER, hold_secs)
        .expect("/bin/busybox (Debian busybox-static) is needed");
    std::fs::write(&p, fs.to_bytes()).unwrap();
    p
}

/// Wait for our child `pid` to exit; its exit status.
fn wait_child(pid: i32, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)).unwrap() {
            WaitStatus::Exited(_, code) => return Some(code),
            WaitStatus::Signaled(_, sig, _) => return Some(128 + sig as i32),
            _ if Instant::now() > deadline => return None,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn wait_for_console(path: &Path, marker: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(marker)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn launched_vm_boots_prints_and_powers_off() {
    let Some(kernel) = vm_common::guest_kernel() else {
        return;
    };
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let state = tempfile::tempdir().unwrap();
    let initrd = initrd(state.path(), 0);
    let vm = launch(&test_plan(kernel), &initrd, state.path()).unwrap();
    assert!(vm.pid > 0);
    assert_eq!(vm.vsock_uds, state.path().join("vsock.sock"));
    assert!(
        vm.vsock_uds.exists(),
        "the vsock socket exists once launch returns"
    );
    // Its own session: the VMM is not in our process group.
    let sid = nix::unistd::getsid(Some(Pid::from_raw(vm.pid))).unwrap();
    assert_eq!(sid.as_raw(), vm.pid);
    let timeout = vm_common::boot_timeout(120);
    let status = wait_child(vm.pid, timeout);
    let console = std::fs::read_to_string(&vm.serial_log).unwrap_or_default();
    let vmm_log = std::fs::read_to_string(&vm.vmm_log).unwrap_or_default();
    if status.is_none() {
        let _ = stop(vm.pid, Duration::from_secs(5));
    }
    assert_eq!(
        status,
        Some(0),
        "VMM exit status; vmm.log:\n{vmm_log}\nconsole:\n{console}"
    );
    assert!(console.contains(INIT_MARKER), "console:\n{console}");
    assert!(vmm_log.contains("cpu profile"), "{vmm_log}");
    let vm_json = std::fs::read_to_string(state.path().join("vm.json")).unwrap();
    assert!(vm_json.contains("rdinit=/init kvmbox.test=1"), "{vm_json}");
    let timings: TimingsFile =
        serde_json::from_slice(&std::fs::read(&vm.timings).unwrap()).unwrap();
    assert_eq!(timings.exit_status, Some(0));
    assert!(timings.marks.first_kvm_run_ms.is_some(), "{timings:?}");
    assert!(timings.marks.userspace_ms.is_some(), "{timings:?}");
    eprintln!("timings: {timings:?}");
    // The VMM removed its socket on exit.
    assert!(!vm.vsock_uds.exists());
}

#[test]
fn stop_ends_a_running_vm() {
    let Some(kernel) = vm_common::guest_kernel() else {
        return;
    };
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let state = tempfile::tempdir().unwrap();
    let initrd = initrd(state.path(), 600);
    let plan = test_plan(kernel);
    let vm = launch(&plan, &initrd, state.path()).unwrap();
    let booted = wait_for_console(&vm.serial_log, INIT_MARKER, vm_common::boot_timeout(120));
    let vmm_log = std::fs::read_to_string(&vm.vmm_log).unwrap_or_default();
    if booted {
        let mem = vmm_memory(vm.pid, plan.memory_mib).unwrap();
        eprintln!("kvmbox-vmm (debug build) memory while the guest idles: {mem:?}");
        assert!(mem.guest_rss_kib > 0, "{mem:?}");
    }
    let outcome = stop(vm.pid, Duration::from_secs(30)).unwrap();
    assert!(booted, "no marker; vmm.log:\n{vmm_log}");
    assert_eq!(outcome, StopOutcome::Terminated);
    assert!(!vm.vsock_uds.exists());
    let vmm_log = std::fs::read_to_string(&vm.vmm_log).unwrap_or_default();
    assert!(vmm_log.contains("stopped by signal 15"), "{vmm_log}");
}

#[test]
fn launch_errors_quote_the_vmm_log() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let initrd = initrd(state.path(), 0);
    // A kernel file that exists but is empty: the VMM starts, rejects it and exits.
    let bad_kernel = state.path().join("vmlinux");
    std::fs::write(&bad_kernel, b"").unwrap();
    let err = launch(&test_plan(bad_kernel.clone()), &initrd, state.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("exited before the VM started"), "{err}");
    assert!(err.contains("vmlinux"), "{err}");
    assert!(err.contains("vmm.log"), "{err}");
    assert!(!state.path().join("vsock.sock").exists());
    // A missing kernel is reported before anything is started.
    let missing = state.path().join("missing-vmlinux");
    let err = launch(&test_plan(missing), &initrd, state.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing-vmlinux"), "{err}");
    // A missing VMM binary.
    let mut plan = test_plan(bad_kernel);
    plan.vmm = state.path().join("no-kvmbox-vmm");
    let err = launch(&plan, &initrd, state.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-kvmbox-vmm"), "{err}");
}

#[test]
fn missing_agent_is_reported_with_how_to_build_it() {
    let state = tempfile::tempdir().unwrap();
    let plan = test_plan(PathBuf::from("/nonexistent/vmlinux"));
    let err = kvmbox::vm_launch::agent_initrd(&plan, state.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kvmbox-agent") && err.contains("make build"),
        "{err}"
    );
    assert!(!state.path().join("initrd.cpio").exists());
}
