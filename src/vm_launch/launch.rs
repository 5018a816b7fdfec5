//! `launch`: start a container's microVM as a detached `kvmbox-vmm` process, and `stop` it.
//!
//! Files in the state directory: `vm.json` (the [`VmmProcessConfig`]), `vmm.log` (the VMM's
//! stdout/stderr: its one-line errors), `console.log` (the guest serial console),
//! `vsock.sock` (the hybrid vsock socket, guest CID 3), `timings.json` (boot timings) and
//! `shared/` (mode 0700, served to the guest over virtio-fs with tag [`SHARE_TAG`]).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::error::VmLaunchError;
use super::plan::{check_kvm, VmPlan, KVM_DEVICE};
use super::shared::{create_private_dir, shared_dir, SHARE_TAG};
use crate::vmm::config::{
    CpuProfile, FsConfig, SerialOutput, VmConfig, VsockConfig, KVM_PVM_SYSFS,
};
use crate::vmm::process::VmmProcessConfig;

/// The guest's vsock context id.
pub const GUEST_CID: u64 = 3;
/// Kernel command-line words kvmbox adds for the agent (after the VMM's defaults).
pub const AGENT_CMDLINE: &str = "rdinit=/init";
/// How long `launch` waits for the VMM to create its vsock socket.
pub const VMM_START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running VMM process.
///
/// The VMM is a child of the caller in its own session: a long-lived caller must reap it
/// (`waitpid`) once it exits; a short-lived one (`kvmbox create`) just exits and the VMM is
/// re-parented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmProcess {
    /// The VMM's host PID (the container's `state.pid`).
    pub pid: i32,
    /// The hybrid vsock socket (`CONNECT <port>\n`).
    pub vsock_uds: PathBuf,
    /// The guest serial console log.
    pub serial_log: PathBuf,
    /// The VMM's own stdout/stderr (its errors).
    pub vmm_log: PathBuf,
    /// The boot timings file the VMM writes.
    pub timings: PathBuf,
}

/// The state-directory files of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFiles {
    /// `vm.json`.
    pub config: PathBuf,
    /// `vmm.log`.
    pub vmm_log: PathBuf,
    /// `console.log`.
    pub serial_log: PathBuf,
    /// `vsock.sock`.
    pub vsock_uds: PathBuf,
    /// `timings.json`.
    pub timings: PathBuf,
    /// `shared/`: the directory shared with the guest.
    pub shared: PathBuf,
}

impl VmFiles {
    /// The files under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        VmFiles {
            config: state_dir.join("vm.json"),
            vmm_log: state_dir.join("vmm.log"),
            serial_log: state_dir.join("console.log"),
            vsock_uds: state_dir.join("vsock.sock"),
            timings: state_dir.join("timings.json"),
            shared: shared_dir(state_dir),
        }
    }
}

/// The VMM configuration `launch` writes for `plan` and `initrd`.
pub fn vmm_config(plan: &VmPlan, initrd: &Path, files: &VmFiles) -> VmmProcessConfig {
    let profile = CpuProfile::choose(plan.cpu_profile, Path::new(KVM_PVM_SYSFS)).profile;
    let mut cmdline = vec![AGENT_CMDLINE.to_string()];
    cmdline.extend(plan.extra_cmdline.iter().cloned());
    let mut vm = VmConfig::new(&plan.kernel);
    vm.initrd = Some(initrd.to_path_buf());
    vm.extra_cmdline = Some(cmdline.join(" "));
    vm.vcpus = plan.vcpus;
    vm.memory_mib = plan.memory_mib;
    vm.serial = SerialOutput::File(files.serial_log.clone());
    vm.serial_input = false;
    vm.cpu_profile = profile;
    vm.vsock = Some(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: files.vsock_uds.clone(),
    });
    vm.shared_dirs = vec![FsConfig {
        tag: SHARE_TAG.to_string(),
        path: files.shared.clone(),
        read_only: false,
    }];
    VmmProcessConfig {
        vm,
        timings_file: Some(files.timings.clone()),
    }
}

/// The last lines of `log`, joined with " | " (for one-line errors).
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    tail[tail.len().saturating_sub(lines)..].join(" | ")
}

fn require_file(path: &Path, what: &'static str) -> Result<(), VmLaunchError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(VmLaunchError::io(
            what,
            path,
            std::io::Error::other("not a regular file"),
        )),
        Err(e) => Err(VmLaunchError::io(what, path, e)),
    }
}

/// Start the VM of `plan` with `initrd` as a detached `kvmbox-vmm` process (new session,
/// stdin /dev/null, stdout/stderr to `<state>/vmm.log`), sharing `<state>/shared` (created
/// here), and wait until its vsock socket exists. If the VMM dies first, the error quotes `vmm.log`.
pub fn launch(plan: &VmPlan, initrd: &Path, state_dir: &Path) -> Result<VmProcess, VmLaunchError> {
    check_kvm(Path::new(KVM_DEVICE))?;
    require_file(&plan.kernel, "guest kernel")?;
    require_file(initrd, "initrd")?;
    require_file(&plan.vmm, "VMM binary")?;
    let files = VmFiles::new(state_dir);
    // A socket left by a VMM killed with SIGKILL would make the new VMM fail.
    match std::fs::remove_file(&files.vsock_uds) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(VmLaunchError::io("stale vsock socket", &files.vsock_uds, e))
        }
        _ => {}
    }
    let _ = std::fs::remove_file(&files.timings);
    create_private_dir(&files.shared)?;
    let config = vmm_config(plan, initrd, &files);
    let json = serde_json::to_vec_pretty(&config)
        .map_err(|e| VmLaunchError::io("VM config", &files.config, e.into()))?;
    std::fs::write(&files.config, json)
        .map_err(|e| VmLaunchError::io("VM config", &files.config, e))?;
    let log = File::create(&files.vmm_log)
        .map_err(|e| VmLaunchError::io("VMM log", &files.vmm_log, e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| VmLaunchError::io("VMM log", &files.vmm_log, e))?;
    let mut cmd = Command::new(&plan.vmm);
    cmd.arg(&files.config)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    let child = cmd.spawn().map_err(|e| {
        VmLaunchError::Launch(format!("cannot start the VMM {}: {e}", plan.vmm.display()))
    })?;
    let pid = child.id() as i32;
    // The Child handle is dropped without waiting: the VMM outlives this call.
    drop(child);
    let started = Instant::now();
    loop {
        if files.vsock_uds.exists() {
            break;
        }
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => {
                return Err(VmLaunchError::Launch(format!(
                    "the VMM (pid {pid}) exited before the VM started ({}): {}; see {}",
                    describe(status),
                    log_tail(&files.vmm_log, 3),
                    files.vmm_log.display()
                )))
            }
            // Not waitable (the caller ignores SIGCHLD): look at /proc instead.
            Err(_) if !is_alive(pid) => {
                return Err(VmLaunchError::Launch(format!(
                    "the VMM (pid {pid}) exited before the VM started: {}; see {}",
                    log_tail(&files.vmm_log, 3),
                    files.vmm_log.display()
                )))
            }
            Err(_) => {}
        }
        if started.elapsed() > VMM_START_TIMEOUT {
            let _ = stop(pid, Duration::from_secs(5));
            return Err(VmLaunchError::Launch(format!(
                "the VMM (pid {pid}) did not create {} within {}s: {}; see {}",
                files.vsock_uds.display(),
                VMM_START_TIMEOUT.as_secs(),
                log_tail(&files.vmm_log, 3),
                files.vmm_log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(VmProcess {
        pid,
        vsock_uds: files.vsock_uds,
        serial_log: files.serial_log,
        vmm_log: files.vmm_log,
        timings: files.timings,
    })
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        other => format!("{other:?}"),
    }
}

/// How [`stop`] ended the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// It was not running.
    NotRunning,
    /// It exited after SIGTERM.
    Terminated,
    /// It needed SIGKILL.
    Killed,
}

/// Whether `pid` is gone: reaped here if it is our child; otherwise absent or a zombie.
fn exited(pid: i32) -> bool {
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => false,
        Ok(_) => true,
        // Not our child: look at /proc (a zombie counts as exited; PID 1 reaps it later).
        Err(_) => !is_alive(pid),
    }
}

/// Whether `pid` exists and is not a zombie (for VMMs that are not our children).
pub fn is_alive(pid: i32) -> bool {
    matches!(
        crate::runtime::process::proc_state(pid),
        crate::runtime::process::ProcState::Alive { .. }
    )
}

fn wait_exit(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if exited(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stop the VMM `pid`: SIGTERM (it stops the VM and exits), then SIGKILL after `timeout`.
pub fn stop(pid: i32, timeout: Duration) -> Result<StopOutcome, VmLaunchError> {
    if pid <= 0 {
        return Err(VmLaunchError::Launch(format!("invalid VMM pid {pid}")));
    }
    if exited(pid) {
        return Ok(StopOutcome::NotRunning);
    }
    match kill(Pid::from_raw(pid), Signal::SIGTERM) {
        Err(nix::errno::Errno::ESRCH) => return Ok(StopOutcome::NotRunning),
        Err(e) => {
            return Err(VmLaunchError::Launch(format!(
                "SIGTERM to the VMM (pid {pid}): {e}"
            )))
        }
        Ok(()) => {}
    }
    if wait_exit(pid, timeout) {
        return Ok(StopOutcome::Terminated);
    }
    match kill(Pid::from_raw(pid), Signal::SIGKILL) {
        Err(nix::errno::Errno::ESRCH) | Ok(()) => {}
        Err(e) => {
            return Err(VmLaunchError::Launch(format!(
                "SIGKILL to the VMM (pid {pid}): {e}"
            )))
        }
    }
    if wait_exit(pid, Duration::from_secs(10)) {
        Ok(StopOutcome::Killed)
    } else {
        Err(VmLaunchError::Launch(format!(
            "the VMM (pid {pid}) survived SIGKILL for 10 s"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dir: &Path) -> VmPlan {
        VmPlan {
            kernel: dir.join("vmlinux"),
            kernel_from: "test",
            agent: dir.join("agent"),
            vmm: dir.join("vmm"),
            vcpus: 2,
            vcpus_from: "test",
            memory_mib: 256,
            memory_from: "test",
            agent_timeout: Duration::from_secs(1),
            cpu_profile: Some(CpuProfile::Emulated),
            extra_cmdline: vec!["loglevel=7".into()],
            cache_dir: dir.join("cache"),
        }
    }

    #[test]
    fn vm_json_has_agent_cmdline_vsock_and_logs() {
        let d = tempfile::tempdir().unwrap();
        let files = VmFiles::new(d.path());
        let c = vmm_config(&plan(d.path()), &d.path().join("initrd.cpio"), &files);
        assert_eq!(
            c.vm.extra_cmdline.as_deref(),
            Some("rdinit=/init loglevel=7")
        );
        assert_eq!(c.vm.vsock.as_ref().unwrap().guest_cid, GUEST_CID);
        assert_eq!(c.vm.vsock.as_ref().unwrap().uds_path, files.vsock_uds);
        assert_eq!(c.vm.serial, SerialOutput::File(files.serial_log.clone()));
        assert_eq!((c.vm.vcpus, c.vm.memory_mib), (2, 256));
        assert_eq!(c.vm.cpu_profile, CpuProfile::Emulated);
        assert!(!c.vm.serial_input);
        assert!(c.vm.base_cmdline().contains("rdinit=/init"));
        assert_eq!(c.vm.shared_dirs.len(), 1);
        assert_eq!(c.vm.shared_dirs[0].tag, SHARE_TAG);
        assert_eq!(c.vm.shared_dirs[0].path, d.path().join("shared"));
        assert!(!c.vm.shared_dirs[0].read_only);
    }

    #[test]
    fn log_tail_joins_last_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        std::fs::write(&p, "a\n\nb\nc\n").unwrap();
        assert_eq!(log_tail(&p, 2), "b | c");
        assert_eq!(log_tail(&d.path().join("none"), 2), "");
    }

    #[test]
    fn launch_checks_files_first() {
        let d = tempfile::tempdir().unwrap();
        let p = plan(d.path());
        let err = launch(&p, &d.path().join("initrd"), d.path()).unwrap_err();
        let msg = err.to_string();
        // /dev/kvm may be absent on a CI runner; otherwise the kernel is reported.
        assert!(msg.contains("vmlinux") || msg.contains("/dev/kvm"), "{msg}");
        assert!(!d.path().join("vm.json").exists());
    }

    #[test]
    #[allow(clippy::zombie_processes)] // stop() reaps them (waitpid)
    fn stop_terminates_and_kills() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        assert_eq!(
            stop(pid, Duration::from_secs(5)).unwrap(),
            StopOutcome::Terminated
        );
        assert_eq!(
            stop(pid, Duration::from_secs(1)).unwrap(),
            StopOutcome::NotRunning
        );
        let child = Command::new("sh")
            .args(["-c", "trap '' TERM; while :; do sleep 1; done"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let pid = child.id() as i32;
        assert_eq!(
            stop(pid, Duration::from_millis(300)).unwrap(),
            StopOutcome::Killed
        );
        assert!(!is_alive(pid));
    }
}
