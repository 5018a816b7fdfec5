//! The runtimes under test and how one container's life (create, start, exit, delete) is driven
//! through each one's OCI command line and timed phase by phase.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::error::BenchError;
use super::memory::{self, MemorySample};
use super::process;

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
    /// kvmbox itself (this executable) with `--isolation <isolation>`, state under `root`.
    pub fn kvmbox(root: &Path, isolation: &str) -> Result<Runtime, BenchError> {
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
                isolation.into(),
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

    /// The same runtime with `--agent-timeout SECS` (kvmbox `--isolation vm`: how long a
    /// command waits for the guest agent, which boots slowly where guest kernel code is
    /// emulated). A second call replaces the first (the flag may be given only once).
    pub fn with_agent_timeout(mut self, timeout: Duration) -> Runtime {
        if let Some(i) = self.global_args.iter().position(|a| a == "--agent-timeout") {
            let end = (i + 2).min(self.global_args.len());
            self.global_args.drain(i..end);
        }
        self.global_args.extend([
            "--agent-timeout".into(),
            timeout.as_secs().max(1).to_string(),
        ]);
        self
    }

    /// A command of this runtime: global args, then `args`; no stdin/stdout, stderr into
    /// `stderr` (a file, never a pipe: the container process inherits it from `create`).
    fn command(&self, args: &[&OsStr], stderr: &Path) -> Result<Command, BenchError> {
        let err = File::create(stderr).map_err(|source| BenchError::Io {
            what: "create",
            path: stderr.to_path_buf(),
            source,
        })?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.global_args)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        prepare(&mut cmd, self.launch);
        Ok(cmd)
    }

    /// Run `<runtime> <args>` to completion within `timeout`; its wall time.
    fn timed(
        &self,
        command: &'static str,
        args: &[&OsStr],
        id: &str,
        work: &Path,
        timeout: Duration,
    ) -> Result<Duration, BenchError> {
        self.timed_env(command, args, &[], id, work, timeout)
            .map(|(_, elapsed)| elapsed)
    }

    /// [`Runtime::timed`] with extra environment variables; the CLOCK_MONOTONIC time (ns) of
    /// the spawn and the wall time.
    fn timed_env(
        &self,
        command: &'static str,
        args: &[&OsStr],
        env: &[(&str, &OsStr)],
        id: &str,
        work: &Path,
        timeout: Duration,
    ) -> Result<(u64, Duration), BenchError> {
        let stderr = work.join(format!("{id}.{command}.stderr"));
        let mut cmd = self.command(args, &stderr)?;
        cmd.envs(env.iter().copied());
        let spawn_err = |source| BenchError::Spawn {
            runtime: self.name.clone(),
            source,
        };
        let start_ns = crate::vmm::bench::monotonic_ns();
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let status = process::wait_child(&mut child, timeout).map_err(spawn_err)?;
        let elapsed = start.elapsed();
        let failed = |status: String| BenchError::RunFailed {
            runtime: self.name.clone(),
            command,
            id: id.into(),
            status,
            stderr: last_line(&stderr),
        };
        match status {
            Some(s) if s.success() => Ok((start_ns, elapsed)),
            Some(s) => Err(failed(s.to_string())),
            None => Err(failed(format!("timed out after {} s", timeout.as_secs()))),
        }
    }

    /// `run` container `id` from `bundle` once, within `timeout`, with `env` set; the
    /// CLOCK_MONOTONIC time (ns) of the spawn and the wall time to the runtime's exit. A
    /// failure leaves nothing behind (`delete --force`).
    pub fn run_once(
        &self,
        bundle: &Path,
        id: &str,
        work: &Path,
        env: &[(&str, &OsStr)],
        timeout: Duration,
    ) -> Result<(u64, Duration), BenchError> {
        let args = [
            OsStr::new("run"),
            OsStr::new("--bundle"),
            bundle.as_os_str(),
            OsStr::new(id),
        ];
        self.timed_env("run", &args, env, id, work, timeout)
            .inspect_err(|_| self.force_delete(id, work))
    }

    /// `create` container `id` from `bundle` within `timeout`, writing its pid to `pid_file`;
    /// the wall time. On failure nothing is cleaned up (see [`Runtime::force_delete`]).
    pub fn create(
        &self,
        bundle: &Path,
        id: &str,
        work: &Path,
        pid_file: &Path,
        timeout: Duration,
    ) -> Result<Duration, BenchError> {
        let create_args = [
            OsStr::new("create"),
            OsStr::new("--bundle"),
            bundle.as_os_str(),
            OsStr::new("--pid-file"),
            pid_file.as_os_str(),
            OsStr::new(id),
        ];
        self.timed("create", &create_args, id, work, timeout)
    }

    /// The pid a `create` wrote into `pid_file`.
    pub fn created_pid(&self, id: &str, pid_file: &Path) -> Result<u32, BenchError> {
        std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .ok_or_else(|| BenchError::RunFailed {
                runtime: self.name.clone(),
                command: "create",
                id: id.into(),
                status: "success".into(),
                stderr: format!("no pid in {}", pid_file.display()),
            })
    }

    /// Drive container `id` through create, start, exit and delete, timing each phase; between
    /// create and start, sample the memory of the container's process (`--pid-file`). `overhead`
    /// is subtracted from every command (see [`Launch::PrivateMountNs`]). A failure leaves
    /// nothing behind (`delete --force`).
    pub fn lifecycle_once(
        &self,
        bundle: &Path,
        id: &str,
        work: &Path,
        overhead: Duration,
        timeout: Duration,
    ) -> Result<Lifecycle, BenchError> {
        self.lifecycle_inner(bundle, id, work, overhead, timeout)
            .inspect_err(|_| self.force_delete(id, work))
    }

    fn lifecycle_inner(
        &self,
        bundle: &Path,
        id: &str,
        work: &Path,
        overhead: Duration,
        timeout: Duration,
    ) -> Result<Lifecycle, BenchError> {
        let pid_file = work.join(format!("{id}.pid"));
        let id_os = OsStr::new(id);
        let create = self.create(bundle, id, work, &pid_file, timeout)?;
        let pid = self.created_pid(id, &pid_file)?;
        let io = |what: &'static str| {
            let path = PathBuf::from(format!("/proc/{pid}"));
            move |source| BenchError::Io { what, path, source }
        };
        let pidfd = process::pidfd_open(pid).map_err(io("pidfd_open"))?;
        let memory = memory::sample(pid, None).ok();
        let start = self.timed("start", &[OsStr::new("start"), id_os], id, work, timeout)?;
        let started = Instant::now();
        if !process::wait_pidfd(&pidfd, timeout).map_err(io("wait for the exit of"))? {
            return Err(BenchError::RunFailed {
                runtime: self.name.clone(),
                command: "start",
                id: id.into(),
                status: "running".into(),
                stderr: format!("the container process did not exit within {timeout:?}"),
            });
        }
        let exit = started.elapsed();
        let delete = self.timed("delete", &[OsStr::new("delete"), id_os], id, work, timeout)?;
        Ok(Lifecycle {
            create: create.saturating_sub(overhead),
            start: start.saturating_sub(overhead),
            exit,
            delete: delete.saturating_sub(overhead),
            memory,
        })
    }

    /// Best-effort `delete --force id` (after a failure, or to end a measured instance).
    pub fn force_delete(&self, id: &str, work: &Path) {
        let args = [OsStr::new("delete"), OsStr::new("--force"), OsStr::new(id)];
        let stderr = work.join(format!("{id}.force-delete.stderr"));
        if let Ok(mut cmd) = self.command(&args, &stderr) {
            if let Ok(mut child) = cmd.spawn() {
                let _ = process::wait_child(&mut child, Duration::from_secs(60));
            }
        }
    }
}

/// Wall times of one container's life through a runtime's OCI commands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lifecycle {
    /// `create` (bundle → container process waiting for start).
    pub create: Duration,
    /// `start` (until the command returns).
    pub start: Duration,
    /// From `start` returning to the container process's exit (seen through a pidfd).
    pub exit: Duration,
    /// `delete` of the stopped container.
    pub delete: Duration,
    /// The container process between create and start (the runtime's init waiting for start).
    pub memory: Option<MemorySample>,
}

impl Lifecycle {
    /// Phase names, in order, as reported.
    pub const PHASES: [&'static str; 4] = ["create", "start", "exit", "delete"];

    /// The phases' durations in [`Lifecycle::PHASES`] order.
    pub fn phases(&self) -> [Duration; 4] {
        [self.create, self.start, self.exit, self.delete]
    }
}

/// The last non-empty line of a file (the one-line error of a runtime).
fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_timeout_is_given_once_and_last_wins() {
        let rt = Runtime::kvmbox(Path::new("/tmp/root"), "vm")
            .unwrap()
            .with_agent_timeout(Duration::from_secs(600))
            .with_agent_timeout(Duration::from_millis(1500));
        assert_eq!(
            rt.global_args,
            [
                "--root",
                "/tmp/root",
                "--isolation",
                "vm",
                "--agent-timeout",
                "1"
            ]
        );
    }

    #[test]
    fn last_line_skips_trailing_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("err");
        std::fs::write(&f, "first\nkvmbox: error: boom \n\n").unwrap();
        assert_eq!(last_line(&f), "kvmbox: error: boom");
    }
}
