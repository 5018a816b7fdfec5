//! The container lifecycle with `--isolation vm`: one microVM per container, whose guest agent
//! runs the container. The host keeps the VMM pid, its vsock socket and console log in
//! state.json and talks to the agent once per command.

use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_agent::container::{self, Status};
use guest_agent::protocol::{ProcessRef, Request, ResponseBody};
use oci_spec::runtime::{Hook, Hooks, Process, Spec};

use super::client::{AgentClient, AgentError, AgentTarget};
use super::stdio::{fork_relay, HostEnd, HostPty, ProcessStreams};
use crate::runtime::bundle::{Bundle, CONFIG_FILE};
use crate::runtime::cgroup::resolve_cgroup_path;
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::lifecycle::{send_signal, write_pid_file, CreateOptions};
use crate::runtime::process::{is_same_live_process, start_time, wait_exited};
use crate::runtime::state::{ContainerDir, ContainerRecord, StateStore, VmRecord};
use crate::runtime::Isolation;
use crate::vm_launch::{self, VmOptions};

/// How long `delete` waits for the VMM to power off before it SIGKILLs it.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a SIGKILLed relay to exit.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a VMM gets after SIGTERM before SIGKILL (it only has to stop its vCPUs).
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Upper bound of the agent timeout used by `delete` (the VM is going away anyway).
const DELETE_AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the VM runtime given on the command line.
#[derive(Debug, Clone, Default)]
pub struct VmSettings {
    /// `--kernel`: the guest kernel (overrides the spec, config file, env and build cache).
    pub kernel: Option<PathBuf>,
    /// `--agent-timeout`: how long to wait for the guest agent (overrides the plan's).
    pub agent_timeout: Option<Duration>,
}

/// Who relays the init's stdio after `create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitStdio {
    /// A forked relay process holding the caller's stdio (or the console-socket pty).
    Detached,
    /// The caller relays itself (foreground `run`): the streams are returned.
    Foreground,
}

/// A created VM container.
#[derive(Debug)]
pub struct Created {
    /// The stored record.
    pub record: ContainerRecord,
    /// The init's streams, for [`InitStdio::Foreground`].
    pub streams: Option<ProcessStreams>,
}

/// The agent target of a stored VM container.
pub fn target_of(record: &ContainerRecord) -> Result<AgentTarget> {
    let vm = vm_of(record)?;
    Ok(AgentTarget {
        uds: vm.vsock_uds.clone(),
        vmm_pid: record.pid,
        vmm_start_time: record.pid_start_time,
        console_log: vm.console_log.clone(),
        timeout: Duration::from_millis(vm.agent_timeout_ms),
    })
}

fn vm_of(record: &ContainerRecord) -> Result<&VmRecord> {
    record
        .vm
        .as_ref()
        .ok_or_else(|| RuntimeError::CorruptState {
            id: record.id.clone(),
            path: PathBuf::from(crate::runtime::state::STATE_FILE),
            msg: "isolation is vm but the vm section is missing".into(),
        })
}

/// The process reference of a container's init.
pub fn init_ref(id: &str) -> ProcessRef {
    ProcessRef {
        container_id: id.to_string(),
        exec_id: None,
    }
}

fn agent_err(id: &str) -> impl Fn(AgentError) -> RuntimeError + '_ {
    move |err| RuntimeError::Agent {
        id: id.to_string(),
        err: Box::new(err),
    }
}

/// Create container `id`: boot its microVM, run the host hooks, open the init's stdio and
/// create the container in the guest (stopped before exec). On any error the VMM is stopped
/// and the state directory removed (the console log is kept in the temporary directory and
/// named in the error).
pub fn create(
    store: &StateStore,
    settings: &VmSettings,
    id: &str,
    opts: &CreateOptions<'_>,
    stdio: InitStdio,
) -> Result<Created> {
    let bundle = Bundle::load(opts.bundle)?;
    let process = bundle
        .spec
        .process()
        .as_ref()
        .expect("validated by Bundle::load");
    let terminal = process.terminal().unwrap_or(false);
    if terminal && opts.console_socket.is_none() && stdio == InitStdio::Detached {
        return Err(RuntimeError::Invalid(format!(
            "container {id}: process.terminal is true but no --console-socket was given"
        )));
    }
    if opts.preserve_fds > 0 {
        return Err(RuntimeError::Invalid(format!(
            "container {id}: --preserve-fds is not supported with --isolation vm (host fds cannot enter the guest)"
        )));
    }
    let cgroup_path = resolve_cgroup_path(&bundle.spec, id, &bundle.dir.join(CONFIG_FILE))?;
    let vm_opts = VmOptions {
        kernel: settings.kernel.clone(),
        ..VmOptions::default()
    };
    let launch_err = |err| RuntimeError::VmLaunch {
        id: id.to_string(),
        err: Box::new(err),
        kept_log: None,
    };
    let mut plan = vm_launch::plan(&bundle.spec, &vm_opts).map_err(launch_err)?;
    if let Some(t) = settings.agent_timeout {
        plan.agent_timeout = t;
    }
    let mut dir = store.claim(id)?;
    let mut vmm = VmmGuard::default();
    let result = boot_and_create(&dir, &bundle, id, opts, stdio, &plan, cgroup_path, &mut vmm);
    match result {
        Ok(created) => {
            vmm.disarm();
            dir.keep();
            Ok(created)
        }
        Err(err) => {
            vmm.stop();
            Err(keep_console_log(err, &dir, id))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn boot_and_create(
    dir: &ContainerDir,
    bundle: &Bundle,
    id: &str,
    opts: &CreateOptions<'_>,
    stdio: InitStdio,
    plan: &vm_launch::VmPlan,
    cgroup_path: String,
    vmm: &mut VmmGuard,
) -> Result<Created> {
    let launch_err = |err| RuntimeError::VmLaunch {
        id: id.to_string(),
        err: Box::new(err),
        kept_log: None,
    };
    let initrd =
        vm_launch::build_initrd(plan, id, &bundle.rootfs, dir.path()).map_err(launch_err)?;
    super::timing::mark(super::timing::VMM_SPAWN);
    let vm = vm_launch::launch(plan, &initrd, dir.path()).map_err(launch_err)?;
    vmm.pid = vm.pid;
    let vmm_start = start_time(vm.pid).unwrap_or(0);
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let mut record = ContainerRecord {
        id: id.to_string(),
        isolation: Isolation::Vm,
        pid: vm.pid,
        pid_start_time: vmm_start,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        cgroup_path,
        annotations: bundle.spec.annotations().clone().unwrap_or_default(),
        created,
        exec_fifo: dir.exec_fifo(),
        spec: bundle.spec.clone(),
        vm: Some(VmRecord {
            vsock_uds: vm.vsock_uds.clone(),
            console_log: vm.serial_log.clone(),
            agent_timeout_ms: plan.agent_timeout.as_millis() as u64,
            created: false,
            relay_pid: 0,
            relay_start_time: 0,
        }),
    };
    // Written now so that `state` says "creating" and a killed `create` leaves a VMM pid that
    // `delete --force` can find.
    dir.write(&record)?;
    if vmm_start == 0 {
        return Err(agent_err(id)(AgentError::VmmGone {
            pid: vm.pid,
            log: super::console_log::ConsoleLog::read(&vm.serial_log),
        }));
    }
    let target = target_of(&record)?;
    tracing::debug!(id, pid = vm.pid, "VMM launched; waiting for the agent");
    let mut client = AgentClient::connect(&target).map_err(agent_err(id))?;
    super::timing::mark(super::timing::AGENT_READY);
    // The guest runs from its initramfs now: the file is no longer needed.
    let _ = std::fs::remove_file(&initrd);
    let hooks = |pick: fn(&Hooks) -> &Option<Vec<Hook>>| hooks_of(&bundle.spec, pick);
    let state = record.oci_state(Status::Creating);
    for (kind, list) in [
        ("createRuntime", hooks(|h| h.create_runtime())),
        ("prestart", hooks(|h| h.prestart())),
    ] {
        if !list.is_empty() {
            container::run_hooks(&list, &state, kind)
                .map_err(|e| RuntimeError::container(id, e))?;
        }
    }
    let process = bundle.spec.process().as_ref().expect("validated");
    let terminal = process.terminal().unwrap_or(false);
    let pty = match (terminal, opts.console_socket) {
        (true, Some(sock)) => Some(
            HostPty::open_and_send(sock)
                .map_err(|msg| RuntimeError::Invalid(format!("container {id}: {msg}")))?,
        ),
        _ => None,
    };
    let streams = ProcessStreams::open(&target, &init_ref(id), terminal).map_err(agent_err(id))?;
    let stdio_spec = streams.spec;
    let mut guest_spec = guest_spec(&bundle.spec, id);
    if terminal && pty.is_none() {
        if let (Some(p), Some((rows, cols))) = (
            guest_spec.process().clone(),
            super::stdio::window_size(libc::STDIN_FILENO),
        ) {
            let mut p = p;
            p.set_console_size(Some(
                oci_spec::runtime::BoxBuilder::default()
                    .height(u64::from(rows))
                    .width(u64::from(cols))
                    .build()
                    .expect("box with both fields"),
            ));
            guest_spec.set_process(Some(p));
        }
    }
    let body = client
        .request(&Request::CreateContainer {
            id: id.to_string(),
            spec: Box::new(guest_spec),
            stdio: stdio_spec,
        })
        .map_err(agent_err(id))?;
    super::timing::mark(super::timing::CONTAINER_CREATED);
    let guest_pid = match body {
        ResponseBody::Pid { pid } => pid,
        other => {
            return Err(agent_err(id)(AgentError::Unexpected(format!("{other:?}"))));
        }
    };
    drop(client);
    let mut streams = Some(streams);
    if stdio == InitStdio::Detached || pty.is_some() {
        let end = match pty {
            Some(p) => HostEnd::PtySlave(p.slave),
            None => HostEnd::Stdio,
        };
        let relay = fork_relay(streams.take().expect("opened"), end, &target, &init_ref(id))
            .map_err(|msg| RuntimeError::Invalid(format!("container {id}: {msg}")))?;
        let vm = record.vm.as_mut().expect("set above");
        vm.relay_pid = relay;
        vm.relay_start_time = start_time(relay).unwrap_or(0);
    }
    record.vm.as_mut().expect("set above").created = true;
    dir.write(&record)?;
    if let Some(pid_file) = opts.pid_file {
        write_pid_file(pid_file, record.pid)?;
    }
    tracing::debug!(
        id,
        vmm = record.pid,
        guest_pid,
        "container created in the microVM"
    );
    Ok(Created { record, streams })
}

/// The spec the agent gets: the rootfs at its guest path, and only the hooks that run in the
/// guest (createContainer, startContainer); the others run on the host.
fn guest_spec(spec: &Spec, id: &str) -> Spec {
    let mut guest = spec.clone();
    let mut root = guest.root().clone().unwrap_or_default();
    root.set_path(PathBuf::from(vm_launch::guest_rootfs_path(id)));
    guest.set_root(Some(root));
    if let Some(hooks) = spec.hooks() {
        let mut h = Hooks::default();
        h.set_create_container(hooks.create_container().clone());
        h.set_start_container(hooks.start_container().clone());
        guest.set_hooks(Some(h));
    }
    guest
}

fn hooks_of(spec: &Spec, pick: fn(&Hooks) -> &Option<Vec<Hook>>) -> Vec<Hook> {
    spec.hooks()
        .as_ref()
        .and_then(|h| pick(h).clone())
        .unwrap_or_default()
}

/// On a failed create, copy the console log out of the state directory (which is removed) and
/// point the error at the copy.
fn keep_console_log(err: RuntimeError, dir: &ContainerDir, id: &str) -> RuntimeError {
    let log = dir.path().join("console.log");
    let has_output = std::fs::metadata(&log).is_ok_and(|m| m.len() > 0);
    if !has_output {
        return err;
    }
    let kept = std::env::temp_dir().join(format!("kvmbox-{id}.console.log"));
    if std::fs::copy(&log, &kept).is_err() {
        return err;
    }
    match err {
        RuntimeError::Agent { id, err } => RuntimeError::Agent {
            id,
            err: Box::new(err.with_log_path(&kept)),
        },
        RuntimeError::VmLaunch { id, err, .. } => RuntimeError::VmLaunch {
            id,
            err,
            kept_log: Some(kept),
        },
        other => other,
    }
}

/// Stops a launched VMM when a create fails.
#[derive(Debug, Default)]
struct VmmGuard {
    pid: i32,
}

impl VmmGuard {
    fn disarm(&mut self) {
        self.pid = 0;
    }

    fn stop(&mut self) {
        if self.pid > 0 {
            // SIGTERM, SIGKILL after a moment; it is our child, so this also reaps it.
            if let Err(e) = vm_launch::stop(self.pid, STOP_GRACE) {
                tracing::warn!("rollback: {e}");
            }
            self.pid = 0;
        }
    }
}

/// The status of a VM container: stopped once its VMM is gone, creating until `create`
/// finished, else what the agent says.
pub fn status(record: &ContainerRecord) -> Result<Status> {
    let vm = vm_of(record)?;
    if !is_same_live_process(record.pid, record.pid_start_time) {
        return Ok(Status::Stopped);
    }
    if !vm.created {
        return Ok(Status::Creating);
    }
    let target = target_of(record)?;
    let id = &record.id;
    let mut client = match AgentClient::connect(&target) {
        Ok(c) => c,
        Err(AgentError::VmmGone { .. }) => return Ok(Status::Stopped),
        Err(e) => return Err(agent_err(id)(e)),
    };
    match client.request(&Request::ContainerState { id: id.clone() }) {
        Ok(ResponseBody::State { status, .. }) => Ok(status),
        Ok(other) => Err(agent_err(id)(AgentError::Unexpected(format!("{other:?}")))),
        Err(AgentError::VmmGone { .. }) => Ok(Status::Stopped),
        Err(e) => Err(agent_err(id)(e)),
    }
}

/// `start`: let the init exec its process, then run the poststart hooks on the host.
pub fn start(record: &ContainerRecord) -> Result<()> {
    let id = &record.id;
    match status(record)? {
        Status::Created => {}
        Status::Stopped => {
            return Err(RuntimeError::WrongStatus {
                id: id.clone(),
                status: "stopped".into(),
                msg: "cannot start a container that has stopped",
            })
        }
        s => {
            return Err(RuntimeError::WrongStatus {
                id: id.clone(),
                status: format!("{s:?}").to_lowercase(),
                msg: "cannot start a container that is not in created state",
            })
        }
    }
    let mut client = AgentClient::connect(&target_of(record)?).map_err(agent_err(id))?;
    client
        .request_ok(&Request::StartContainer { id: id.clone() })
        .map_err(agent_err(id))?;
    super::timing::mark(super::timing::CONTAINER_STARTED);
    let hooks = hooks_of(&record.spec, |h| h.poststart());
    if !hooks.is_empty() {
        if let Err(e) =
            container::run_hooks(&hooks, &record.oci_state(Status::Running), "poststart")
        {
            tracing::warn!(id, "poststart hook failed: {e}");
        }
    }
    tracing::debug!(id, "container started in the microVM");
    Ok(())
}

/// `kill`: signal the init (or with `all` every process of the container) in the guest.
pub fn kill(record: &ContainerRecord, signal: i32, all: bool) -> Result<()> {
    let id = &record.id;
    if !is_same_live_process(record.pid, record.pid_start_time) {
        return Err(RuntimeError::NotRunning(id.clone()));
    }
    let mut client = AgentClient::connect(&target_of(record)?).map_err(|e| match e {
        AgentError::VmmGone { .. } => RuntimeError::NotRunning(id.clone()),
        e => agent_err(id)(e),
    })?;
    let result = client.request_ok(&Request::SignalProcess {
        process: init_ref(id),
        signal,
        all,
    });
    match result {
        Ok(()) => Ok(()),
        // The process already exited: say so the way namespace mode does.
        Err(AgentError::Refused(_)) if matches!(status(record), Ok(Status::Stopped)) => {
            Err(RuntimeError::NotRunning(id.clone()))
        }
        Err(e) => Err(agent_err(id)(e)),
    }
}

/// `delete`: remove the container in the guest, power the VM off (SIGKILL if it does not stop
/// in time), stop the stdio relay, run the poststop hooks and remove the state directory.
pub fn delete(dir: ContainerDir, record: &ContainerRecord, force: bool) -> Result<()> {
    let id = &record.id;
    let vmm_alive = is_same_live_process(record.pid, record.pid_start_time);
    if vmm_alive {
        let status = match status(record) {
            Ok(s) => Some(s),
            Err(e) if force => {
                tracing::warn!(id, "{e}");
                None
            }
            Err(e) => return Err(e),
        };
        if matches!(status, Some(Status::Running | Status::Creating)) && !force {
            return Err(RuntimeError::StillRunning(id.clone()));
        }
        shutdown_vm(record);
    }
    if let Some(vm) = &record.vm {
        if vm.relay_pid > 0 && is_same_live_process(vm.relay_pid, vm.relay_start_time) {
            let _ = send_signal(vm.relay_pid, libc::SIGKILL);
            wait_exited(vm.relay_pid, KILL_TIMEOUT);
        }
    }
    let hooks = hooks_of(&record.spec, |h| h.poststop());
    if !hooks.is_empty() {
        if let Err(e) = container::run_hooks(&hooks, &record.oci_state(Status::Stopped), "poststop")
        {
            tracing::warn!(id, "poststop hook failed: {e}");
        }
    }
    super::timing::vmm_marks(dir.path());
    dir.remove()?;
    super::timing::mark(super::timing::TORN_DOWN);
    tracing::debug!(id, "container and microVM deleted");
    Ok(())
}

/// Ask the agent to delete the container and power off; SIGKILL the VMM if that fails or
/// takes too long.
fn shutdown_vm(record: &ContainerRecord) {
    let id = &record.id;
    let polite = target_of(record).ok().and_then(|mut target| {
        target.timeout = target.timeout.min(DELETE_AGENT_TIMEOUT);
        let mut client = AgentClient::connect(&target)
            .inspect_err(|e| tracing::warn!(id, "delete: {e}"))
            .ok()?;
        if let Err(e) = client.request_ok(&Request::DeleteContainer {
            id: id.clone(),
            force: true,
        }) {
            tracing::debug!(id, "DeleteContainer: {e}");
        }
        // The agent may power off before it answers.
        let _ = client.request_ok(&Request::Shutdown);
        Some(())
    });
    if polite.is_some() && wait_exited(record.pid, SHUTDOWN_TIMEOUT) {
        // Reap it when we are its parent (foreground run); harmless otherwise.
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(record.pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        return;
    }
    if let Err(e) = vm_launch::stop(record.pid, STOP_GRACE) {
        tracing::warn!(id, "{e}");
    }
}

/// A process started by `exec`, with its streams still in our hands.
#[derive(Debug)]
pub struct Execed {
    /// The agent of the container's VM.
    pub target: AgentTarget,
    /// The process.
    pub process: ProcessRef,
    /// Its pid in the guest.
    pub guest_pid: i32,
    /// Its streams (None once handed to a forked relay).
    pub streams: Option<ProcessStreams>,
    /// The control connection that started it (reusable for WaitProcess).
    pub client: AgentClient,
}

/// `exec`: start `process` in the container. With `console_socket` (a TTY) or `detach`, a
/// forked relay takes the streams; otherwise they are returned for a foreground relay.
pub fn exec(
    record: &ContainerRecord,
    process: &Process,
    console_socket: Option<&Path>,
    detach: bool,
) -> Result<Execed> {
    let id = &record.id;
    if !is_same_live_process(record.pid, record.pid_start_time) {
        return Err(RuntimeError::NotRunning(id.clone()));
    }
    let target = target_of(record)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let process_ref = ProcessRef {
        container_id: id.clone(),
        exec_id: Some(format!("exec-{}-{nanos}", std::process::id())),
    };
    let terminal = process.terminal().unwrap_or(false);
    if terminal && console_socket.is_none() && detach {
        return Err(RuntimeError::Invalid(format!(
            "container {id}: a terminal was requested but no console socket was given"
        )));
    }
    let mut client = AgentClient::connect(&target).map_err(agent_err(id))?;
    let pty = match (terminal, console_socket) {
        (true, Some(sock)) => Some(
            HostPty::open_and_send(sock)
                .map_err(|msg| RuntimeError::Invalid(format!("container {id}: {msg}")))?,
        ),
        _ => None,
    };
    let streams = ProcessStreams::open(&target, &process_ref, terminal).map_err(agent_err(id))?;
    tracing::debug!(id, "exec: streams open");
    let body = client
        .request(&Request::ExecProcess {
            id: id.clone(),
            exec_id: process_ref.exec_id.clone().expect("set above"),
            process: Box::new(process.clone()),
            stdio: streams.spec,
        })
        .map_err(agent_err(id))?;
    let guest_pid = match body {
        ResponseBody::Pid { pid } => pid,
        other => return Err(agent_err(id)(AgentError::Unexpected(format!("{other:?}")))),
    };
    let mut streams = Some(streams);
    if detach || pty.is_some() {
        let end = match pty {
            Some(p) => HostEnd::PtySlave(p.slave),
            None => HostEnd::Stdio,
        };
        fork_relay(streams.take().expect("opened"), end, &target, &process_ref)
            .map_err(|msg| RuntimeError::Invalid(format!("container {id}: {msg}")))?;
    }
    tracing::debug!(id, guest_pid, "exec'd a process in the microVM");
    Ok(Execed {
        target,
        process: process_ref,
        guest_pid,
        streams,
        client,
    })
}

/// `ps`: guest pids of the container's processes.
pub fn ps(record: &ContainerRecord) -> Result<Vec<i32>> {
    let id = &record.id;
    if !is_same_live_process(record.pid, record.pid_start_time) {
        return Err(RuntimeError::NotRunning(id.clone()));
    }
    let mut client = AgentClient::connect(&target_of(record)?).map_err(agent_err(id))?;
    match client
        .request(&Request::ListProcesses { id: id.clone() })
        .map_err(agent_err(id))?
    {
        ResponseBody::Processes { mut pids } => {
            pids.sort_unstable();
            Ok(pids)
        }
        other => Err(agent_err(id)(AgentError::Unexpected(format!("{other:?}")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_spec_moves_the_rootfs_and_keeps_only_guest_hooks() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "hooks": {
                "prestart": [{"path": "/bin/true"}],
                "createRuntime": [{"path": "/bin/true"}],
                "createContainer": [{"path": "/bin/cc"}],
                "startContainer": [{"path": "/bin/sc"}],
                "poststart": [{"path": "/bin/true"}],
                "poststop": [{"path": "/bin/true"}]
            }
        }))
        .unwrap();
        let g = guest_spec(&spec, "c1");
        let root = g.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("/containers/c1/rootfs"));
        assert_eq!(root.readonly(), Some(true));
        let h = g.hooks().as_ref().unwrap();
        assert!(h.prestart().is_none() && h.create_runtime().is_none());
        assert!(h.poststart().is_none() && h.poststop().is_none());
        assert_eq!(
            h.create_container().as_ref().unwrap()[0].path(),
            Path::new("/bin/cc")
        );
        assert_eq!(
            h.start_container().as_ref().unwrap()[0].path(),
            Path::new("/bin/sc")
        );
    }
}
