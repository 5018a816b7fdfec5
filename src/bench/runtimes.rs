//! The runtimes under test and how one `run` of each is started and timed.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::error::BenchError;

/// File that crun 1.8 reads to decide the host is "hybrid" and give up; hidden by a bind mount of
/// /dev/null inside a private mount namespace.
pub const HYBRID_CONTROLLERS: &str = "/sys/fs/cgroup/unified/cgroup.controllers";

/// How a runtime's process is prepared between fork and exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// Plain fork + exec.
    Direct,
    /// fork, then in the child: unshare(CLONE_NEWNS), make / private (recursively), bind-mount
    /// /dev/null over [`HYBRID_CONTROLLERS`], then exec. Only that child and its descendants see it.
    PrivateMountNs,
}

/// One runtime taking part in the benchmark.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Short name (kvmbox, runc, crun).
    pub name: String,
    /// First line of `--version` (or kvmbox's own version).
    pub version: String,
    /// Executable.
    pub exe: PathBuf,
    /// Arguments before the command (`--root DIR`, kvmbox's `--isolation namespace`).
    pub global_args: Vec<String>,
    /// How the process is launched.
    pub launch: Launch,
}

impl Runtime {
    /// kvmbox itself (this executable) in namespace mode, state under `root`.
    pub fn kvmbox(root: &Path) -> Result<Runtime, BenchError> {
        let exe = std::env::current_exe().map_err(|source| BenchError::Io {
            what: "locate",
            path: PathBuf::from("/proc/self/exe"),
            source,
        })?;
        Ok(Runtime {
            name: "kvmbox".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            exe,
            global_args: vec![
                "--root".into(),
                root.display().to_string(),
                "--isolation".into(),
                "namespace".into(),
            ],
            launch: Launch::Direct,
        })
    }

    /// A peer (runc, crun) found in PATH, state under `root`; `None` when not installed.
    pub fn peer(name: &str, root: &Path, launch: Launch) -> Option<Runtime> {
        let exe = which(name)?;
        let out = Command::new(&exe).arg("--version").output().ok()?;
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .trim_start_matches(name)
            .trim()
            .trim_start_matches("version")
            .trim()
            .to_string();
        Some(Runtime {
            name: name.into(),
            version,
            exe,
            global_args: vec!["--root".into(), root.display().to_string()],
            launch,
        })
    }

    /// `run` container `id` from `bundle` once, wait for it, and return the wall time from
    /// spawning the runtime to its exit.
    pub fn run_once(&self, bundle: &Path, id: &str) -> Result<Duration, BenchError> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.global_args)
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        prepare(&mut cmd, self.launch);
        let start = Instant::now();
        let child = cmd.spawn().map_err(|source| BenchError::Spawn {
            runtime: self.name.clone(),
            source,
        })?;
        let out = child
            .wait_with_output()
            .map_err(|source| BenchError::Spawn {
                runtime: self.name.clone(),
                source,
            })?;
        let elapsed = start.elapsed();
        if out.status.success() {
            return Ok(elapsed);
        }
        self.force_delete(id);
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(BenchError::RunFailed {
            runtime: self.name.clone(),
            id: id.into(),
            status: out.status.to_string(),
            stderr: stderr.trim().lines().last().unwrap_or("").to_string(),
        })
    }

    /// Best-effort `delete --force id` after a failed run.
    fn force_delete(&self, id: &str) {
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.global_args)
            .args(["delete", "--force", id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        prepare(&mut cmd, self.launch);
        let _ = cmd.status();
    }
}

/// Time spawning and waiting for `exe` (e.g. /bin/true) launched with `launch`.
pub fn time_spawn(exe: &Path, launch: Launch) -> std::io::Result<Duration> {
    let mut cmd = Command::new(exe);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    prepare(&mut cmd, launch);
    let start = Instant::now();
    let status = cmd.status()?;
    let elapsed = start.elapsed();
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "{} exited with {status}",
            exe.display()
        )));
    }
    Ok(elapsed)
}

/// The first executable called `name` in PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Install the pre-exec step for `launch`. Every launch goes through a pre-exec closure so that
/// all runtimes are started the same way (fork + exec, never posix_spawn).
fn prepare(cmd: &mut Command, launch: Launch) {
    match launch {
        Launch::Direct => {
            // SAFETY: the closure does nothing, which is async-signal-safe.
            unsafe { cmd.pre_exec(|| Ok(())) };
        }
        Launch::PrivateMountNs => {
            let root = CString::from(c"/");
            let devnull = CString::from(c"/dev/null");
            let target = CString::new(HYBRID_CONTROLLERS).expect("no NUL in a constant path");
            // SAFETY: between fork and exec the closure only calls the async-signal-safe
            // syscalls unshare(2) and mount(2) on C strings allocated before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::unshare(libc::CLONE_NEWNS) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let private = libc::MS_REC | libc::MS_PRIVATE;
                    let none = std::ptr::null();
                    if libc::mount(none, root.as_ptr(), none, private, std::ptr::null()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let bind = libc::MS_BIND;
                    if libc::mount(
                        devnull.as_ptr(),
                        target.as_ptr(),
                        none,
                        bind,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                })
            };
        }
    }
}
