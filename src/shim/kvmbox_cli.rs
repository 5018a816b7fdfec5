//! Drives containers through the `kvmbox` binary, as containerd-shim-runc-v2 drives runc: the
//! runtime library clones container processes from its caller, which must be single-threaded,
//! and the shim is not. Each invocation is reaped by the shim's reaper thread; its exit code
//! comes back through the exit monitor.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use containerd_shim::monitor::{monitor_subscribe, wait_pid, Topic};

use super::error::{Result, ShimError};
use crate::runtime::Isolation;
use crate::vm_launch::config_file::CONFIG_ENV;

/// Environment variable naming the `kvmbox` binary explicitly.
pub const KVMBOX_BINARY_ENV: &str = "KVMBOX_BINARY";

/// Standard streams for a `kvmbox` invocation whose container process inherits them; `None`
/// is /dev/null.
#[derive(Debug, Default)]
pub struct ChildStdio {
    /// Standard input.
    pub stdin: Option<OwnedFd>,
    /// Standard output.
    pub stdout: Option<OwnedFd>,
    /// Standard error.
    pub stderr: Option<OwnedFd>,
}

/// What an invocation printed and how it ended.
struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The `kvmbox` binary and the state root it keeps this shim's containers under.
#[derive(Debug, Clone)]
pub struct Kvmbox {
    binary: PathBuf,
    root: PathBuf,
    /// A kvmbox config file passed as `KVMBOX_CONFIG` (from containerd's runtime options).
    config: Option<PathBuf>,
}

impl Kvmbox {
    /// `kvmbox` from `$KVMBOX_BINARY`, else next to the running shim binary, else from PATH.
    pub fn locate(root: impl Into<PathBuf>) -> Result<Self> {
        let binary = find_binary().ok_or_else(|| {
            ShimError::FailedPrecondition(format!(
                "kvmbox binary not found (looked at ${KVMBOX_BINARY_ENV}, next to the shim, and in PATH)"
            ))
        })?;
        Ok(Kvmbox {
            binary,
            root: root.into(),
            config: None,
        })
    }

    /// The same, running `kvmbox` with `KVMBOX_CONFIG=<config>` when given.
    pub fn with_config(&self, config: Option<&Path>) -> Kvmbox {
        Kvmbox {
            config: config.map(Path::to_path_buf),
            ..self.clone()
        }
    }

    /// The state root (`kvmbox --root`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `kvmbox --isolation <isolation> create`: the container's init inherits `stdio` (in vm
    /// mode a forked stdio relay does, recorded in state.json) and waits for `start`.
    pub fn create(
        &self,
        isolation: Isolation,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        stdio: ChildStdio,
    ) -> Result<()> {
        let mut args: Vec<OsString> = vec!["create".into(), "--bundle".into(), bundle.into()];
        args.extend(["--pid-file".into(), pid_file.into()]);
        if let Some(socket) = console_socket {
            args.extend(["--console-socket".into(), socket.into()]);
        }
        args.push(id.into());
        let flag = match isolation {
            Isolation::Vm => "vm",
            Isolation::Namespace => "namespace",
        };
        let mut all: Vec<OsString> = vec!["--isolation".into(), flag.into()];
        all.extend(args);
        self.run_with_stdio(&format!("create {id}"), all, stdio)
    }

    /// `kvmbox exec --detach -p process.json`: the new process inherits `stdio`.
    pub fn exec(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        stdio: ChildStdio,
    ) -> Result<()> {
        let mut args: Vec<OsString> = vec!["exec".into(), "--detach".into()];
        args.extend(["--process".into(), process_json.into()]);
        args.extend(["--pid-file".into(), pid_file.into()]);
        if let Some(socket) = console_socket {
            args.extend(["--console-socket".into(), socket.into()]);
        }
        args.push(id.into());
        self.run_with_stdio(&format!("exec {id}"), args, stdio)
    }

    /// `kvmbox start`.
    pub fn start(&self, id: &str) -> Result<()> {
        self.run_captured(&format!("start {id}"), vec!["start".into(), id.into()])
            .map(drop)
    }

    /// `kvmbox delete [--force]`.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut args: Vec<OsString> = vec!["delete".into()];
        if force {
            args.push("--force".into());
        }
        args.push(id.into());
        self.run_captured(&format!("delete {id}"), args).map(drop)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        // `--isolation` matters only to create; the other commands follow the container's
        // state.json.
        cmd.arg("--root").arg(&self.root);
        if let Some(config) = &self.config {
            cmd.env(CONFIG_ENV, config);
        }
        cmd
    }

    /// Run with stdout/stderr captured; kvmbox's error line is the error.
    fn run_captured(&self, what: &str, args: Vec<OsString>) -> Result<String> {
        let mut cmd = self.command();
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = run(cmd, what)?;
        if out.code != 0 {
            return Err(ShimError::Kvmbox {
                command: what.to_string(),
                message: error_line(&out.stderr, out.code),
            });
        }
        Ok(out.stdout)
    }

    /// Run with the container's stdio; kvmbox's error comes from its JSON log file.
    fn run_with_stdio(&self, what: &str, args: Vec<OsString>, stdio: ChildStdio) -> Result<()> {
        fs::create_dir_all(&self.root)
            .map_err(|e| ShimError::io("create state root", &self.root, e))?;
        let log = tempfile::Builder::new()
            .prefix(".kvmbox-")
            .suffix(".log")
            .tempfile_in(&self.root)
            .map_err(|e| ShimError::io("create log file in", &self.root, e))?;
        let mut cmd = self.command();
        cmd.arg("--log")
            .arg(log.path())
            .args(["--log-format", "json"])
            .args(args)
            .stdin(stdio_or_null(stdio.stdin))
            .stdout(stdio_or_null(stdio.stdout))
            .stderr(stdio_or_null(stdio.stderr));
        let out = run(cmd, what)?;
        if out.code != 0 {
            let text = fs::read_to_string(log.path()).unwrap_or_default();
            return Err(ShimError::Kvmbox {
                command: what.to_string(),
                message: log_error(&text).unwrap_or_else(|| error_line("", out.code)),
            });
        }
        Ok(())
    }
}

fn stdio_or_null(fd: Option<OwnedFd>) -> Stdio {
    fd.map_or_else(Stdio::null, Stdio::from)
}

/// Spawn `cmd` (consumed, so the shim's copies of the child's stdio close), collect its piped
/// output and its exit code from the reaper.
fn run(mut cmd: Command, what: &str) -> Result<Output> {
    let subscription = monitor_subscribe(Topic::Pid)?;
    let mut child = cmd.spawn().map_err(|e| ShimError::Kvmbox {
        command: what.to_string(),
        message: format!("cannot run {:?}: {e}", cmd.get_program()),
    })?;
    drop(cmd);
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        let _ = pipe.read_to_string(&mut stdout);
    }
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    // Never `child.wait()`: the reaper thread owns waitpid.
    let code = wait_pid(child.id() as i32, subscription);
    Ok(Output {
        code,
        stdout,
        stderr,
    })
}

/// kvmbox's one-line error (`kvmbox: error: ...`) from its stderr.
fn error_line(stderr: &str, code: i32) -> String {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("kvmbox: error: "))
        .map(str::to_string)
        .unwrap_or_else(|| match stderr.trim() {
            "" => format!("exited with status {code}"),
            text => text.to_string(),
        })
}

/// The message of the last error record of a JSON log.
fn log_error(text: &str) -> Option<String> {
    text.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v.get("level")?.as_str()? == "error").then(|| v.get("msg")?.as_str().map(String::from))?
    })
}

fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(KVMBOX_BINARY_ENV) {
        return Some(PathBuf::from(path));
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("kvmbox"))
        .filter(|p| p.is_file())
    {
        return Some(sibling);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("kvmbox"))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_line_prefers_kvmbox_error() {
        assert_eq!(
            error_line("warn\nkvmbox: error: container c1: not found\n", 1),
            "container c1: not found"
        );
        assert_eq!(error_line("", 3), "exited with status 3");
        assert_eq!(error_line("boom\n", 1), "boom");
    }

    #[test]
    fn log_error_takes_the_last_error_record() {
        let log = concat!(
            r#"{"level":"error","msg":"first","time":"t"}"#,
            "\n",
            r#"{"level":"warning","msg":"w","time":"t"}"#,
            "\n",
            r#"{"level":"error","msg":"container c1: bad","time":"t"}"#,
            "\n"
        );
        assert_eq!(log_error(log).as_deref(), Some("container c1: bad"));
        assert_eq!(log_error("not json"), None);
    }
}
