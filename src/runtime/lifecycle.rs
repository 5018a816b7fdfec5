//! The container lifecycle (`create`, `start`, `state`, `kill`, `delete`, `exec`, `ps`, `list`,
//! `update`)
//! on top of the state store and the shared container setup. Used by the CLI and the shim.
//!
//! [`Runtime::create`] and [`Runtime::exec`] clone the container process from the calling
//! process, which therefore becomes its parent (and can `waitpid` it). The container setup
//! requires the caller to be single-threaded at that moment: the CLI is; a multi-threaded
//! caller (the shim) must fork a single-threaded helper first.

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_agent::container::{self, CreateRequest, ExecRequest, OciState, Status};
use nix::errno::Errno;
use nix::unistd::Pid;
use oci_spec::runtime::{Hook, Hooks, LinuxResources, Process};
use serde::Serialize;

use super::bundle::Bundle;
use super::cgroup::resolve_cgroup_path;
use super::error::{Result, RuntimeError};
use super::id::validate_id;
use super::process::{start_time, wait_exited};
use super::resources::{has_updatable_limit, ignored_fields, missing_v1_controllers, CGROUP_ROOT};
use super::state::{ContainerRecord, StateStore};
use super::vm::lifecycle as vm;
use super::vm::{InitStdio, VmSettings};
use super::Isolation;

/// How long `delete --force` waits for a SIGKILLed container to exit.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// The runtime: a state root and the isolation model used for new containers.
#[derive(Debug, Clone)]
pub struct Runtime {
    store: StateStore,
    isolation: Isolation,
    vm: VmSettings,
}

/// Options of [`Runtime::create`].
#[derive(Debug, Clone)]
pub struct CreateOptions<'a> {
    /// Bundle directory (holding config.json).
    pub bundle: &'a Path,
    /// Write the init PID here (atomically).
    pub pid_file: Option<&'a Path>,
    /// Socket receiving the pty master when process.terminal is true.
    pub console_socket: Option<&'a Path>,
    /// Use MS_MOVE + chroot instead of pivot_root.
    pub no_pivot: bool,
    /// Extra fds (3..3+n) passed to the container process.
    pub preserve_fds: u32,
}

/// Options of [`Runtime::exec`].
#[derive(Debug, Clone)]
pub struct ExecOptions<'a> {
    /// The process to run.
    pub process: &'a Process,
    /// Socket receiving the pty master when process.terminal is true.
    pub console_socket: Option<&'a Path>,
    /// Write the new process's PID here (atomically).
    pub pid_file: Option<&'a Path>,
    /// Extra fds (3..3+n) passed to the process.
    pub preserve_fds: u32,
}

/// A container as seen by `state` and `list`.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    /// What the store holds.
    pub record: ContainerRecord,
    /// The status computed now.
    pub status: Status,
    /// Owner of the state directory.
    pub owner: String,
}

/// The state JSON printed by `kvmbox state` (runc's shape).
#[derive(Debug, Clone, Serialize)]
pub struct StateOutput {
    /// OCI version of the container's spec.
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Init PID (0 when stopped).
    pub pid: i32,
    /// Lifecycle status.
    pub status: Status,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Root filesystem.
    pub rootfs: PathBuf,
    /// RFC 3339 creation time.
    pub created: String,
    /// Owner of the container.
    pub owner: String,
    /// Isolation model.
    pub isolation: Isolation,
    /// Annotations from the spec.
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

impl<'a> CreateOptions<'a> {
    /// Options for a bundle, everything else off.
    pub fn new(bundle: &'a Path) -> Self {
        CreateOptions {
            bundle,
            pid_file: None,
            console_socket: None,
            no_pivot: false,
            preserve_fds: 0,
        }
    }
}

impl ContainerInfo {
    /// The `state` JSON.
    pub fn state_output(&self) -> StateOutput {
        let r = &self.record;
        StateOutput {
            oci_version: r.spec.version().clone(),
            id: r.id.clone(),
            pid: if self.status == Status::Stopped {
                0
            } else {
                r.pid
            },
            status: self.status,
            bundle: r.bundle.clone(),
            rootfs: r.rootfs.clone(),
            created: r.created.clone(),
            owner: self.owner.clone(),
            isolation: r.isolation,
            annotations: r.annotations.clone(),
        }
    }
}

impl Runtime {
    /// A runtime keeping state under `root` and creating containers with `isolation`.
    pub fn new(root: impl Into<PathBuf>, isolation: Isolation) -> Self {
        Runtime {
            store: StateStore::new(root),
            isolation,
            vm: VmSettings::default(),
        }
    }

    /// The same runtime with command-line settings for `--isolation vm` (kernel, agent timeout).
    pub fn with_vm_settings(mut self, vm: VmSettings) -> Self {
        self.vm = vm;
        self
    }

    /// Create a `--isolation vm` container whose init's stdio the caller relays (foreground
    /// `run`): like [`Runtime::create`], but the streams are returned instead of being handed
    /// to a forked relay process.
    pub fn create_vm_foreground(&self, id: &str, opts: &CreateOptions<'_>) -> Result<vm::Created> {
        validate_id(id)?;
        vm::create(&self.store, &self.vm, id, opts, InitStdio::Foreground)
    }

    /// The isolation model new containers get.
    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// The state store.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Create container `id` from a bundle: its init is set up and waits for [`Runtime::start`].
    /// On any error nothing is left behind (directory, cgroup, process, pid file).
    pub fn create(&self, id: &str, opts: &CreateOptions<'_>) -> Result<ContainerRecord> {
        validate_id(id)?;
        if self.isolation == Isolation::Vm {
            return vm::create(&self.store, &self.vm, id, opts, InitStdio::Detached)
                .map(|c| c.record);
        }
        let bundle = Bundle::load(opts.bundle)?;
        let config = bundle.dir.join(super::bundle::CONFIG_FILE);
        let process = bundle
            .spec
            .process()
            .as_ref()
            .expect("validated by Bundle::load");
        if process.terminal().unwrap_or(false) && opts.console_socket.is_none() {
            return Err(RuntimeError::Invalid(format!(
                "container {id}: process.terminal is true but no --console-socket was given"
            )));
        }
        let cgroup_path = resolve_cgroup_path(&bundle.spec, id, &config)?;
        let annotations = bundle.spec.annotations().clone().unwrap_or_default();

        let mut dir = self.store.claim(id)?;
        let exec_fifo = dir.exec_fifo();
        make_fifo(&exec_fifo)?;
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let creating = OciState {
            oci_version: bundle.spec.version().clone(),
            id: id.to_string(),
            status: Status::Creating,
            pid: 0,
            bundle: bundle.dir.clone(),
            annotations: annotations.clone(),
            created: Some(created.clone()),
        };
        let request = CreateRequest {
            id,
            bundle: &bundle.dir,
            spec: &bundle.spec,
            rootfs: bundle.rootfs.clone(),
            exec_fifo: Some(&exec_fifo),
            console_socket: opts.console_socket,
            no_pivot: opts.no_pivot,
            preserve_fds: opts.preserve_fds,
            cgroup_path: cgroup_path.clone(),
        };
        tracing::debug!(id, bundle = %bundle.dir.display(), cgroup = %cgroup_path, "creating container");
        let init =
            container::create(&request, &creating).map_err(|e| RuntimeError::container(id, e))?;
        // From here on, a failure must kill the init and remove its cgroup.
        let mut guard = InitGuard {
            pid: init.pid,
            cgroup_path: cgroup_path.clone(),
            armed: true,
        };
        let pid_start_time =
            start_time(init.pid).ok_or_else(|| RuntimeError::NotRunning(id.to_string()))?;
        let record = ContainerRecord {
            id: id.to_string(),
            isolation: Isolation::Namespace,
            pid: init.pid,
            pid_start_time,
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            cgroup_path,
            annotations,
            created,
            exec_fifo,
            spec: bundle.spec.clone(),
            vm: None,
        };
        dir.write(&record)?;
        if let Some(pid_file) = opts.pid_file {
            write_pid_file(pid_file, init.pid)?;
        }
        guard.armed = false;
        dir.keep();
        tracing::debug!(id, pid = init.pid, "container created");
        Ok(record)
    }

    /// Release a created container's init so it execs the user process, then run the
    /// poststart hooks.
    pub fn start(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let dir = self.store.lock(id)?;
        let record = dir.read()?;
        if record.isolation == Isolation::Vm {
            return vm::start(&record);
        }
        match record.status() {
            Status::Created => {}
            Status::Stopped => {
                return Err(RuntimeError::WrongStatus {
                    id: id.to_string(),
                    status: "stopped".into(),
                    msg: "cannot start a container that has stopped",
                })
            }
            status => {
                return Err(RuntimeError::WrongStatus {
                    id: id.to_string(),
                    status: status_name(status).into(),
                    msg: "cannot start a container that is not in created state",
                })
            }
        }
        container::release(&record.exec_fifo, record.pid)
            .map_err(|e| RuntimeError::container(id, e))?;
        if let Err(e) = std::fs::remove_file(&record.exec_fifo) {
            if e.kind() != ErrorKind::NotFound {
                return Err(RuntimeError::io("remove exec fifo", &record.exec_fifo, e));
            }
        }
        let hooks = hooks_of(&record, |h| h.poststart());
        if !hooks.is_empty() {
            let state = record.oci_state(Status::Running);
            if let Err(e) = container::run_hooks(&hooks, &state, "poststart") {
                tracing::warn!(id, "poststart hook failed: {e}");
            }
        }
        tracing::debug!(id, pid = record.pid, "container started");
        Ok(())
    }

    /// The container's record and current status.
    pub fn state(&self, id: &str) -> Result<ContainerInfo> {
        validate_id(id)?;
        let record = self.store.read(id)?;
        let status = match record.isolation {
            Isolation::Namespace => record.status(),
            Isolation::Vm => vm::status(&record)?,
        };
        Ok(ContainerInfo {
            owner: self.store.owner(id),
            record,
            status,
        })
    }

    /// Send signal `signal` (a number, see [`super::signal::parse_signal`]) to the init, or with
    /// `all` to every process in the container's cgroup.
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        validate_id(id)?;
        let dir = self.store.lock(id)?;
        let record = dir.read()?;
        if record.isolation == Isolation::Vm {
            return vm::kill(&record, signal, all);
        }
        if record.status() == Status::Stopped {
            return Err(RuntimeError::NotRunning(id.to_string()));
        }
        if all {
            let pids = container::cgroup_pids(&record.cgroup_path)
                .map_err(|e| RuntimeError::container(id, e))?;
            for pid in pids {
                match send_signal(pid, signal) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(err) => {
                        return Err(RuntimeError::Sys {
                            id: id.to_string(),
                            what: "kill",
                            err,
                        })
                    }
                }
            }
            return Ok(());
        }
        send_signal(record.pid, signal).map_err(|source| match source {
            Errno::ESRCH => RuntimeError::NotRunning(id.to_string()),
            err => RuntimeError::Sys {
                id: id.to_string(),
                what: "kill",
                err,
            },
        })
    }

    /// Delete a container: a created or (with `force`) running one is killed first; then its
    /// cgroup is removed, the poststop hooks run and its state directory is removed.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        validate_id(id)?;
        let dir = self.store.lock(id)?;
        if !dir.has_state() {
            // A create that died before writing its state (it held this lock until it died):
            // only the directory is left. Remove it, as runc does.
            dir.remove()?;
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        let record = dir.read()?;
        if record.isolation == Isolation::Vm {
            return vm::delete(dir, &record, force);
        }
        match record.status() {
            Status::Stopped => {}
            Status::Running | Status::Creating if !force => {
                return Err(RuntimeError::StillRunning(id.to_string()))
            }
            _ => kill_and_wait(&record)?,
        }
        container::destroy_cgroup(&record.cgroup_path)
            .map_err(|e| RuntimeError::container(id, e))?;
        let hooks = hooks_of(&record, |h| h.poststop());
        if !hooks.is_empty() {
            if let Err(e) =
                container::run_hooks(&hooks, &record.oci_state(Status::Stopped), "poststop")
            {
                tracing::warn!(id, "poststop hook failed: {e}");
            }
        }
        dir.remove()?;
        tracing::debug!(id, "container deleted");
        Ok(())
    }

    /// Start `opts.process` inside a created or running container; returns its PID (a child
    /// of the calling process).
    pub fn exec(&self, id: &str, opts: &ExecOptions<'_>) -> Result<i32> {
        validate_id(id)?;
        let dir = self.store.lock(id)?;
        let record = dir.read()?;
        if opts.process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(RuntimeError::Invalid(format!(
                "container {id}: exec needs a command"
            )));
        }
        if opts.process.terminal().unwrap_or(false) && opts.console_socket.is_none() {
            return Err(RuntimeError::Invalid(format!(
                "container {id}: a terminal was requested but no console socket was given"
            )));
        }
        if record.isolation == Isolation::Vm {
            if opts.preserve_fds > 0 {
                return Err(RuntimeError::Invalid(format!(
                    "container {id}: --preserve-fds is not supported with --isolation vm"
                )));
            }
            // Detached: a forked relay holds our stdio; the pid is the guest's.
            let execed = vm::exec(&record, opts.process, opts.console_socket, true)?;
            if let Some(pid_file) = opts.pid_file {
                write_pid_file(pid_file, execed.guest_pid)?;
            }
            return Ok(execed.guest_pid);
        }
        if record.status() == Status::Stopped {
            return Err(RuntimeError::NotRunning(id.to_string()));
        }
        let request = ExecRequest {
            container_pid: record.pid,
            spec: &record.spec,
            process: opts.process,
            console_socket: opts.console_socket,
            cgroup_path: record.cgroup_path.clone(),
            preserve_fds: opts.preserve_fds,
        };
        let pid = container::exec(&request).map_err(|e| RuntimeError::container(id, e))?;
        if let Some(pid_file) = opts.pid_file {
            if let Err(e) = write_pid_file(pid_file, pid) {
                let _ = send_signal(pid, libc::SIGKILL);
                let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
                return Err(e);
            }
        }
        tracing::debug!(id, pid, "exec'd a process");
        Ok(pid)
    }

    /// PIDs of the processes in the container.
    pub fn ps(&self, id: &str) -> Result<Vec<i32>> {
        validate_id(id)?;
        let record = self.store.read(id)?;
        if record.isolation == Isolation::Vm {
            return vm::ps(&record);
        }
        if record.status() == Status::Stopped {
            return Err(RuntimeError::NotRunning(id.to_string()));
        }
        let mut pids = container::cgroup_pids(&record.cgroup_path)
            .map_err(|e| RuntimeError::container(id, e))?;
        pids.sort_unstable();
        Ok(pids)
    }

    /// Change the resource limits of a created or running container, as `runc update`: the
    /// memory, CPU, cpuset and pids fields set in `resources` are written to its cgroup (in
    /// the guest with `--isolation vm`); other fields are ignored with a warning.
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        validate_id(id)?;
        let dir = self.store.lock(id)?;
        let record = dir.read()?;
        if !has_updatable_limit(resources) {
            return Err(RuntimeError::Invalid(format!(
                "container {id}: update: the resources set no memory, cpu, cpuset or pids limit"
            )));
        }
        let ignored = ignored_fields(resources);
        if !ignored.is_empty() {
            tracing::warn!(
                id,
                "update ignores linux.resources fields: {}",
                ignored.join(", ")
            );
        }
        if record.isolation == Isolation::Vm {
            return vm::update(&record, resources);
        }
        if record.status() == Status::Stopped {
            return Err(stopped_update(id));
        }
        let missing =
            missing_v1_controllers(Path::new(CGROUP_ROOT), &record.cgroup_path, resources);
        if !missing.is_empty() {
            return Err(RuntimeError::Invalid(format!(
                "container {id}: update: its cgroup has no {} controller directory (on cgroup v1 \
                 kvmbox creates it only when config.json sets such limits at create)",
                missing.join(" or ")
            )));
        }
        container::update_cgroup(&record.cgroup_path, resources)
            .map_err(|e| RuntimeError::container(id, e))?;
        tracing::debug!(id, cgroup = %record.cgroup_path, "container resources updated");
        Ok(())
    }

    /// Every container under the root (unreadable entries are skipped with a warning).
    pub fn list(&self) -> Result<Vec<ContainerInfo>> {
        let mut out = Vec::new();
        for id in self.store.ids()? {
            match self.state(&id) {
                Ok(info) => out.push(info),
                Err(RuntimeError::NotFound(_)) => {}
                Err(e) => tracing::warn!("skipping {id}: {e}"),
            }
        }
        Ok(out)
    }
}

/// The error of `update` on a stopped container (runc refuses it too).
pub(crate) fn stopped_update(id: &str) -> RuntimeError {
    RuntimeError::WrongStatus {
        id: id.to_string(),
        status: "stopped".into(),
        msg: "cannot update a stopped container",
    }
}

/// Kills the init and removes the cgroup of a create that failed after the init was cloned.
struct InitGuard {
    pid: i32,
    cgroup_path: String,
    armed: bool,
}

impl Drop for InitGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let _ = send_signal(self.pid, libc::SIGKILL);
        // The init is our child: reap it (ECHILD if it is not, then just wait for its exit).
        if nix::sys::wait::waitpid(Pid::from_raw(self.pid), None).is_err() {
            wait_exited(self.pid, KILL_TIMEOUT);
        }
        if let Err(e) = container::destroy_cgroup(&self.cgroup_path) {
            tracing::warn!("rollback: {e}");
        }
    }
}

/// SIGKILL the init and everything in the cgroup, then wait until the init has exited.
fn kill_and_wait(record: &ContainerRecord) -> Result<()> {
    if record.status() != Status::Stopped {
        let _ = send_signal(record.pid, libc::SIGKILL);
    }
    if let Ok(pids) = container::cgroup_pids(&record.cgroup_path) {
        for pid in pids {
            let _ = send_signal(pid, libc::SIGKILL);
        }
    }
    if record.status() != Status::Stopped && !wait_exited(record.pid, KILL_TIMEOUT) {
        return Err(RuntimeError::Invalid(format!(
            "container {}: init {} did not exit after SIGKILL",
            record.id, record.pid
        )));
    }
    Ok(())
}

/// kill(2) with a raw signal number (real-time signals included).
pub fn send_signal(pid: i32, signal: i32) -> std::result::Result<(), Errno> {
    if pid <= 0 {
        return Err(Errno::ESRCH);
    }
    // SAFETY: kill has no memory-safety preconditions.
    Errno::result(unsafe { libc::kill(pid, signal) }).map(drop)
}

fn hooks_of(record: &ContainerRecord, pick: impl Fn(&Hooks) -> &Option<Vec<Hook>>) -> Vec<Hook> {
    record
        .spec
        .hooks()
        .as_ref()
        .and_then(|h| pick(h).clone())
        .unwrap_or_default()
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Creating => "creating",
        Status::Created => "created",
        Status::Running => "running",
        Status::Stopped => "stopped",
    }
}

/// Make the exec FIFO (mode 0622 like runc, so a non-root container user can open it).
fn make_fifo(path: &Path) -> Result<()> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o622))
        .map_err(|e| RuntimeError::io("create exec fifo", path, e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o622))
        .map_err(|e| RuntimeError::io("chmod exec fifo", path, e))
}

/// Write `pid` to `path` atomically (temporary file in the same directory, then rename).
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(pid.to_string().as_bytes())?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        RuntimeError::io("write pid file", path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_is_written_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("pid");
        write_pid_file(&path, 1234).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1234");
        write_pid_file(&path, 5).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "5");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
        let err = write_pid_file(Path::new("/nonexistent/dir/pid"), 1).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("write pid file /nonexistent/dir/pid:"));
    }

    #[test]
    fn vm_create_with_a_bad_bundle_touches_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let rt = Runtime::new(&root, Isolation::Vm);
        let opts = CreateOptions::new(Path::new("/nonexistent"));
        let err = rt.create("c", &opts).unwrap_err().to_string();
        assert!(err.starts_with("bundle /nonexistent"), "{err}");
        assert!(!root.exists());
    }

    #[test]
    fn create_errors_leave_no_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let rt = Runtime::new(&root, Isolation::Namespace);
        let opts = CreateOptions::new(Path::new("/nonexistent"));
        assert!(rt.create("c", &opts).is_err());
        assert!(rt
            .create("../x", &opts)
            .unwrap_err()
            .to_string()
            .contains("invalid container id"));
        assert!(rt.store().ids().unwrap().is_empty());
    }

    fn pids_limit(n: i64) -> LinuxResources {
        serde_json::from_value(serde_json::json!({"pids": {"limit": n}})).unwrap()
    }

    #[test]
    fn unknown_ids_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::new(tmp.path(), Isolation::Namespace);
        for err in [
            rt.start("nope").unwrap_err(),
            rt.kill("nope", 15, false).unwrap_err(),
            rt.delete("nope", true).unwrap_err(),
            rt.state("nope").unwrap_err(),
            rt.ps("nope").unwrap_err(),
            rt.update("nope", &pids_limit(5)).unwrap_err(),
        ] {
            assert_eq!(err.to_string(), "container nope does not exist");
        }
        assert!(rt.list().unwrap().is_empty());
    }

    #[test]
    fn delete_removes_an_unfinished_create() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::new(tmp.path(), Isolation::Namespace);
        rt.store().claim("half").unwrap().keep();
        assert!(rt.store().dir("half").is_dir());
        let err = rt.delete("half", false).unwrap_err().to_string();
        assert_eq!(err, "container half does not exist");
        assert!(!rt.store().dir("half").exists());
    }

    #[test]
    fn stopped_container_cannot_be_killed_or_started() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::new(tmp.path(), Isolation::Namespace);
        let mut dir = rt.store().claim("s").unwrap();
        dir.keep();
        let record = ContainerRecord {
            id: "s".into(),
            isolation: Isolation::Namespace,
            pid: i32::MAX,
            pid_start_time: 1,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            cgroup_path: "/kvmbox/s".into(),
            annotations: HashMap::new(),
            created: "2026-12-01T00:00:00Z".into(),
            exec_fifo: dir.exec_fifo(),
            spec: Default::default(),
            vm: None,
        };
        dir.write(&record).unwrap();
        drop(dir);
        assert_eq!(
            rt.kill("s", 9, false).unwrap_err().to_string(),
            "container s is not running"
        );
        assert_eq!(
            rt.start("s").unwrap_err().to_string(),
            "container s is stopped: cannot start a container that has stopped"
        );
        assert_eq!(
            rt.update("s", &pids_limit(5)).unwrap_err().to_string(),
            "container s is stopped: cannot update a stopped container"
        );
        assert_eq!(
            rt.update("s", &LinuxResources::default())
                .unwrap_err()
                .to_string(),
            "container s: update: the resources set no memory, cpu, cpuset or pids limit"
        );
        let info = rt.state("s").unwrap();
        assert_eq!(info.status, Status::Stopped);
        let json = serde_json::to_value(info.state_output()).unwrap();
        assert_eq!(json["pid"], 0);
        assert_eq!(json["status"], "stopped");
        assert_eq!(json["id"], "s");
        assert_eq!(rt.list().unwrap().len(), 1);
    }

    #[test]
    fn vm_container_with_a_dead_vmm_is_stopped_and_deletable() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = Runtime::new(tmp.path(), Isolation::Namespace);
        let mut dir = rt.store().claim("v").unwrap();
        dir.keep();
        let mut vmm = std::process::Command::new("true").spawn().unwrap();
        let pid = vmm.id() as i32;
        let pid_start_time = start_time(pid).unwrap_or(1);
        vmm.wait().unwrap();
        let record = ContainerRecord {
            id: "v".into(),
            isolation: Isolation::Vm,
            pid,
            pid_start_time,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            cgroup_path: "/kvmbox/v".into(),
            annotations: HashMap::new(),
            created: "2026-12-01T00:00:00Z".into(),
            exec_fifo: dir.exec_fifo(),
            spec: Default::default(),
            vm: Some(crate::runtime::state::VmRecord {
                vsock_uds: dir.path().join("vsock.sock"),
                console_log: dir.path().join("console.log"),
                agent_timeout_ms: 1000,
                created: true,
                relay_pid: 0,
                relay_start_time: 0,
                ..Default::default()
            }),
        };
        dir.write(&record).unwrap();
        drop(dir);
        let info = rt.state("v").unwrap();
        assert_eq!(info.status, Status::Stopped);
        assert_eq!(info.state_output().pid, 0);
        assert_eq!(
            rt.kill("v", 9, false).unwrap_err().to_string(),
            "container v is not running"
        );
        assert_eq!(
            rt.ps("v").unwrap_err().to_string(),
            "container v is not running"
        );
        assert_eq!(
            rt.update("v", &pids_limit(5)).unwrap_err().to_string(),
            "container v is stopped: cannot update a stopped container"
        );
        rt.delete("v", false).unwrap();
        assert!(!rt.store().dir("v").exists());
    }
}
