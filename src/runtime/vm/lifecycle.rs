//! The container lifecycle with `--isolation vm`: one microVM per container, whose guest agent
//! runs the container. The host keeps the VMM pid, its vsock socket and console log in
//! state.json and talks to the agent once per command.

use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_agent::container::{self, Status};
use guest_agent::protocol::{ProcessRef, Request, ResponseBody};
use oci_spec::runtime::{Hook, Hooks, LinuxResources, Process, Spec};

use super::client::{AgentClient, AgentError, AgentTarget};
use super::stdio::{fork_relay, HostEnd, HostPty, ProcessStreams};
use crate::runtime::bundle::{Bundle, CONFIG_FILE};
use crate::runtime::cgroup::resolve_cgroup_path;
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::id::validate_id;
use crate::runtime::lifecycle::{send_signal, stopped_update, write_pid_file, CreateOptions};
use crate::runtime::process::{is_same_live_process, start_time, wait_exited};
use crate::runtime::state::{ContainerDir, ContainerRecord, StateStore, VmRecord};
use crate::runtime::Isolation;
use crate::vm_launch::{self, shared, VmOptions};

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

/// The CRI annotation naming a container's role in its pod (`sandbox` or `container`).
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The CRI annotation naming the pod's sandbox container.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// Which VM a new container runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRole {
    /// It boots its own VM (a pod sandbox, or a container outside any pod).
    OwnVm,
    /// It joins the VM of the given pod sandbox.
    Member(String),
}

/// The pod role from the spec's CRI annotations: `container-type=container` with a sandbox-id
/// joins that sandbox's VM; anything else boots a VM.
pub fn pod_role(spec: &Spec, id: &str) -> Result<PodRole> {
    let Some(ann) = spec.annotations() else {
        return Ok(PodRole::OwnVm);
    };
    if ann.get(CRI_CONTAINER_TYPE).map(String::as_str) != Some("container") {
        return Ok(PodRole::OwnVm);
    }
    match ann.get(CRI_SANDBOX_ID) {
        Some(sid) if sid == id => Err(RuntimeError::Invalid(format!(
            "container {id}: annotation {CRI_SANDBOX_ID} names the container itself"
        ))),
        Some(sid) => Ok(PodRole::Member(sid.clone())),
        None => Err(RuntimeError::Invalid(format!(
            "container {id}: annotation {CRI_CONTAINER_TYPE}=container needs {CRI_SANDBOX_ID}"
        ))),
    }
}

/// Create container `id`: boot its microVM (or, for a pod member, join its sandbox's VM),
/// share its rootfs, run the host hooks, open the init's stdio and create the container in
/// the guest (stopped before exec). On any error the container is removed from the guest, its
/// bind mounts are undone, a VMM it booted is stopped and the state directory removed (the
/// console log is kept in the temporary directory and named in the error).
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
    if let PodRole::Member(sid) = pod_role(&bundle.spec, id)? {
        return create_member(store, settings, id, opts, stdio, &bundle, cgroup_path, &sid);
    }
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
    let result = boot(&dir, &bundle, id, &plan, cgroup_path, &mut vmm)
        .and_then(|record| create_in_guest(&dir, &bundle, id, opts, stdio, record));
    match result {
        Ok(created) => {
            vmm.disarm();
            dir.keep();
            Ok(created)
        }
        Err(err) => {
            vmm.stop();
            let err = keep_console_log(err, &dir, id);
            // The directory's removal unmounts too; this reports a failure to do so.
            if let Err(e) = shared::remove_tree(&shared::shared_dir(dir.path())) {
                tracing::warn!(id, "rollback: {e}");
            }
            Err(err)
        }
    }
}

/// Boot container `id`'s own VM and wait for its agent; returns the record (not yet created).
fn boot(
    dir: &ContainerDir,
    bundle: &Bundle,
    id: &str,
    plan: &vm_launch::VmPlan,
    cgroup_path: String,
    vmm: &mut VmmGuard,
) -> Result<ContainerRecord> {
    let launch_err = |err| RuntimeError::VmLaunch {
        id: id.to_string(),
        err: Box::new(err),
        kept_log: None,
    };
    let initrd = vm_launch::agent_initrd(plan, dir.path()).map_err(launch_err)?;
    super::timing::mark(super::timing::VMM_SPAWN);
    let vm = vm_launch::launch(plan, &initrd, dir.path()).map_err(launch_err)?;
    vmm.pid = vm.pid;
    let vmm_start = start_time(vm.pid).unwrap_or(0);
    let record = new_record(
        dir,
        bundle,
        id,
        cgroup_path,
        (vm.pid, vmm_start),
        VmRecord {
            vsock_uds: vm.vsock_uds.clone(),
            console_log: vm.serial_log.clone(),
            agent_timeout_ms: plan.agent_timeout.as_millis() as u64,
            shared_dir: shared::shared_dir(dir.path()),
            ..VmRecord::default()
        },
    );
    // Written now so that `state` says "creating" and a killed `create` leaves a VMM pid that
    // `delete --force` can find.
    dir.write(&record)?;
    if vmm_start == 0 {
        return Err(agent_err(id)(AgentError::VmmGone {
            pid: vm.pid,
            log: super::console_log::ConsoleLog::read(&vm.serial_log),
        }));
    }
    tracing::debug!(id, pid = vm.pid, "VMM launched; waiting for the agent");
    AgentClient::connect(&target_of(&record)?).map_err(agent_err(id))?;
    super::timing::mark(super::timing::AGENT_READY);
    // A fallback initrd in the state directory is no longer needed (the cached one is kept).
    if initrd.starts_with(dir.path()) {
        let _ = std::fs::remove_file(&initrd);
    }
    Ok(record)
}

fn new_record(
    dir: &ContainerDir,
    bundle: &Bundle,
    id: &str,
    cgroup_path: String,
    (pid, pid_start_time): (i32, u64),
    vm: VmRecord,
) -> ContainerRecord {
    ContainerRecord {
        id: id.to_string(),
        isolation: Isolation::Vm,
        pid,
        pid_start_time,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        cgroup_path,
        annotations: bundle.spec.annotations().clone().unwrap_or_default(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        exec_fifo: dir.exec_fifo(),
        spec: bundle.spec.clone(),
        vm: Some(vm),
    }
}

/// The live, created sandbox `sid` that member `id` joins.
fn sandbox_of(store: &StateStore, id: &str, sid: &str) -> Result<ContainerRecord> {
    let refuse = |why: String| {
        RuntimeError::Invalid(format!(
            "container {id}: cannot join pod sandbox {sid} ({CRI_SANDBOX_ID}): {why}"
        ))
    };
    validate_id(sid).map_err(|_| refuse("not a valid container id".into()))?;
    let sandbox = match store.read(sid) {
        Ok(r) => r,
        Err(RuntimeError::NotFound(_)) => {
            return Err(refuse(format!(
                "it does not exist under {}",
                store.root().display()
            )))
        }
        Err(e) => return Err(e),
    };
    let Some(vm) = &sandbox.vm else {
        return Err(refuse("it is not a --isolation vm container".into()));
    };
    if let Some(outer) = &vm.sandbox {
        return Err(refuse(format!(
            "it is itself a member of pod sandbox {outer}"
        )));
    }
    if !is_same_live_process(sandbox.pid, sandbox.pid_start_time) {
        return Err(refuse(format!(
            "its VM is gone (VMM pid {} is not running)",
            sandbox.pid
        )));
    }
    if !vm.created {
        return Err(refuse("it is still being created".into()));
    }
    if vm.shared_dir.as_os_str().is_empty() {
        return Err(refuse(
            "its VM has no shared directory (created by an older kvmbox)".into(),
        ));
    }
    Ok(sandbox)
}

/// Create pod member `id` in the VM of sandbox `sid`.
#[allow(clippy::too_many_arguments)]
fn create_member(
    store: &StateStore,
    settings: &VmSettings,
    id: &str,
    opts: &CreateOptions<'_>,
    stdio: InitStdio,
    bundle: &Bundle,
    cgroup_path: String,
    sid: &str,
) -> Result<Created> {
    let sandbox = sandbox_of(store, id, sid)?;
    let svm = vm_of(&sandbox)?;
    let mut dir = store.claim(id)?;
    let record = new_record(
        &dir,
        bundle,
        id,
        cgroup_path,
        (sandbox.pid, sandbox.pid_start_time),
        VmRecord {
            vsock_uds: svm.vsock_uds.clone(),
            console_log: svm.console_log.clone(),
            agent_timeout_ms: settings
                .agent_timeout
                .map_or(svm.agent_timeout_ms, |t| t.as_millis() as u64),
            shared_dir: svm.shared_dir.clone(),
            sandbox: Some(sid.to_string()),
            ..VmRecord::default()
        },
    );
    dir.write(&record)?;
    match create_in_guest(&dir, bundle, id, opts, stdio, record) {
        Ok(created) => {
            dir.keep();
            tracing::debug!(id, sandbox = sid, "pod member created in the sandbox's VM");
            Ok(created)
        }
        Err(err) => {
            if let Err(e) = shared::remove_container(&svm.shared_dir, id) {
                tracing::warn!(id, "rollback: {e}");
            }
            Err(err)
        }
    }
}

/// Share the rootfs (and host bind mounts) of `id` with the guest, run the host hooks, open
/// the init's stdio and create the container in the guest. On error after the guest created
/// it, the container is deleted in the guest again; the caller undoes the shares.
fn create_in_guest(
    dir: &ContainerDir,
    bundle: &Bundle,
    id: &str,
    opts: &CreateOptions<'_>,
    stdio: InitStdio,
    mut record: ContainerRecord,
) -> Result<Created> {
    let shared_dir = vm_of(&record)?.shared_dir.clone();
    let target = target_of(&record)?;
    let share_err = |err| RuntimeError::VmLaunch {
        id: id.to_string(),
        err: Box::new(err),
        kept_log: None,
    };
    let readonly = bundle.spec.root().as_ref().and_then(|r| r.readonly()) == Some(true);
    if readonly {
        shared::create_mount_points(&bundle.rootfs, &mount_points(&bundle.spec, &bundle.dir));
    }
    shared::mount_rootfs(&shared_dir, id, &bundle.rootfs, readonly).map_err(share_err)?;
    let mut guest_spec = guest_spec(&bundle.spec, id);
    share_bind_mounts(&mut guest_spec, &bundle.dir, &shared_dir, id).map_err(share_err)?;
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
    let mut client = AgentClient::connect(&target).map_err(agent_err(id))?;
    let streams = ProcessStreams::open(&target, &init_ref(id), terminal).map_err(agent_err(id))?;
    let stdio_spec = streams.spec;
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
    if let Some(sandbox) = vm_of(&record)?.sandbox.clone() {
        if names_host_namespaces(&guest_spec, record.pid) {
            let sandbox_pid = guest_pid_of(&mut client, &sandbox).map_err(agent_err(id))?;
            point_namespaces_at(&mut guest_spec, record.pid, sandbox_pid);
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
    let finish = (|| {
        let mut streams = Some(streams);
        if stdio == InitStdio::Detached || pty.is_some() {
            let end = match pty {
                Some(p) => HostEnd::PtySlave(p.slave),
                None => HostEnd::Stdio,
            };
            let relay = fork_relay(streams.take().expect("opened"), end, &target, &init_ref(id))
                .map_err(|msg| RuntimeError::Invalid(format!("container {id}: {msg}")))?;
            let vm = record.vm.as_mut().expect("vm record");
            vm.relay_pid = relay;
            vm.relay_start_time = start_time(relay).unwrap_or(0);
        }
        record.vm.as_mut().expect("vm record").created = true;
        dir.write(&record)?;
        if let Some(pid_file) = opts.pid_file {
            write_pid_file(pid_file, record.pid)?;
        }
        Ok(streams)
    })();
    let streams = match finish {
        Ok(s) => s,
        Err(err) => {
            if let Err(e) = client.request_ok(&Request::DeleteContainer {
                id: id.to_string(),
                force: true,
            }) {
                tracing::debug!(id, "rollback: DeleteContainer: {e}");
            }
            return Err(err);
        }
    };
    tracing::debug!(
        id,
        vmm = record.pid,
        guest_pid,
        "container created in the microVM"
    );
    Ok(Created { record, streams })
}

/// The mount destinations of `spec` that lie directly in the rootfs (not below another mount's
/// destination), each with whether it is a file (a bind mount of a host file).
fn mount_points(spec: &Spec, bundle_dir: &Path) -> Vec<(PathBuf, bool)> {
    let mounts = spec.mounts().clone().unwrap_or_default();
    let dests: Vec<&Path> = mounts.iter().map(|m| m.destination().as_path()).collect();
    mounts
        .iter()
        .filter(|m| {
            let d = m.destination();
            !dests.iter().any(|o| *o != d.as_path() && d.starts_with(o))
        })
        .map(|m| {
            let file = is_bind(m)
                && m.source()
                    .as_ref()
                    .is_some_and(|s| bundle_dir.join(s).is_file());
            (m.destination().clone(), file)
        })
        .collect()
}

/// Whether an OCI mount is a bind mount (type `bind`, or a `bind`/`rbind` option).
fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

/// Share every host bind-mount source of `spec` under `<shared>/<id>/mounts/<n>` and point the
/// mount at its guest path (relative sources are resolved against the bundle).
fn share_bind_mounts(
    spec: &mut Spec,
    bundle_dir: &Path,
    shared_dir: &Path,
    id: &str,
) -> std::result::Result<(), vm_launch::VmLaunchError> {
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(());
    };
    for (n, m) in mounts.iter_mut().enumerate() {
        if !is_bind(m) {
            continue;
        }
        let Some(source) = m.source().clone() else {
            continue;
        };
        let source = bundle_dir.join(source);
        let readonly = m
            .options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "ro"));
        let guest = shared::mount_host_path(shared_dir, id, n, &source, readonly)?;
        m.set_source(Some(PathBuf::from(guest)));
    }
    spec.set_mounts(Some(mounts));
    Ok(())
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

/// True if a namespace of `spec` is given as `/proc/<host_pid>/ns/<type>`. CRI makes a pod
/// member join the sandbox's namespaces by the sandbox task's pid, which for a VM is the VMM's
/// host pid (`host_pid`): a path that means nothing in the guest.
fn names_host_namespaces(spec: &Spec, host_pid: i32) -> bool {
    let prefix = format!("/proc/{host_pid}/ns/");
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|list| {
            list.iter().any(|n| {
                n.path()
                    .as_ref()
                    .is_some_and(|p| p.to_string_lossy().starts_with(&prefix))
            })
        })
}

/// Rewrite every `/proc/<host_pid>/ns/<type>` namespace path of `spec` to
/// `/proc/<guest_pid>/ns/<type>`: the sandbox init's namespaces in the guest.
fn point_namespaces_at(spec: &mut Spec, host_pid: i32, guest_pid: i32) {
    let prefix = format!("/proc/{host_pid}/ns/");
    let Some(mut linux) = spec.linux().clone() else {
        return;
    };
    let Some(mut namespaces) = linux.namespaces().clone() else {
        return;
    };
    for ns in &mut namespaces {
        let path = ns.path().as_ref().map(|p| p.to_string_lossy().into_owned());
        if let Some(kind) = path.as_deref().and_then(|p| p.strip_prefix(&prefix)) {
            ns.set_path(Some(PathBuf::from(format!("/proc/{guest_pid}/ns/{kind}"))));
        }
    }
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
}

/// The guest pid of container `sandbox`'s init (it must be running or created).
fn guest_pid_of(client: &mut AgentClient, sandbox: &str) -> std::result::Result<i32, AgentError> {
    let request = Request::ContainerState {
        id: sandbox.to_string(),
    };
    match client.request(&request)? {
        ResponseBody::State { pid, .. } if pid > 0 => Ok(pid),
        other => Err(AgentError::Unexpected(format!(
            "sandbox {sandbox} has no running init to join: {other:?}"
        ))),
    }
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

/// The pod members (containers that joined `sandbox`'s VM) under `store`, sorted.
pub fn members_of(store: &StateStore, sandbox: &str) -> Vec<String> {
    store
        .ids()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m != sandbox)
        .filter(|m| {
            store.read(m).is_ok_and(|r| {
                r.vm.as_ref()
                    .is_some_and(|v| v.sandbox.as_deref() == Some(sandbox))
            })
        })
        .collect()
}

/// `delete`: remove the container in the guest; for a container that booted its VM, power
/// the VM off (SIGKILL if it does not stop in time) — refused while pod members still use it
/// unless `force`, which deletes the members first; a pod member never stops the VM. Then stop
/// the stdio relay, undo the bind mounts in the shared directory, run the poststop hooks and
/// remove the state directory.
pub fn delete(dir: ContainerDir, record: &ContainerRecord, force: bool) -> Result<()> {
    let id = &record.id;
    let vm = vm_of(record)?;
    let store = StateStore::new(dir.path().parent().unwrap_or(Path::new("/")));
    if vm.sandbox.is_none() {
        let members = members_of(&store, id);
        if !members.is_empty() && !force {
            return Err(RuntimeError::Invalid(format!(
                "container {id}: its VM still runs pod members {}: delete them first (or use --force)",
                members.join(", ")
            )));
        }
        for member in &members {
            delete_member(&store, member)?;
        }
    }
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
        match vm.sandbox {
            None => shutdown_vm(record),
            Some(_) => delete_in_guest(record),
        }
    }
    if vm.relay_pid > 0 && is_same_live_process(vm.relay_pid, vm.relay_start_time) {
        let _ = send_signal(vm.relay_pid, libc::SIGKILL);
        wait_exited(vm.relay_pid, KILL_TIMEOUT);
    }
    let unshare = match (&vm.sandbox, vm.shared_dir.as_os_str().is_empty()) {
        (_, true) => Ok(()),
        (None, false) => shared::remove_tree(&vm.shared_dir),
        (Some(_), false) => shared::remove_container(&vm.shared_dir, id),
    };
    unshare.map_err(|err| RuntimeError::VmLaunch {
        id: id.clone(),
        err: Box::new(err),
        kept_log: None,
    })?;
    let hooks = hooks_of(&record.spec, |h| h.poststop());
    if !hooks.is_empty() {
        if let Err(e) = container::run_hooks(&hooks, &record.oci_state(Status::Stopped), "poststop")
        {
            tracing::warn!(id, "poststop hook failed: {e}");
        }
    }
    super::timing::vmm_marks(dir.path());
    dir.remove()?;
    tracing::debug!(id, "container deleted");
    super::timing::mark(super::timing::TORN_DOWN);
    Ok(())
}

/// Force-delete pod member `member` (its sandbox is being force-deleted): the same steps as
/// its own `delete --force`, so no relay, bind mount or state directory outlives the VM.
fn delete_member(store: &StateStore, member: &str) -> Result<()> {
    // NotFound: deleted meanwhile by its own `delete`.
    let dir = match store.lock(member) {
        Err(RuntimeError::NotFound(_)) => return Ok(()),
        dir => dir?,
    };
    let record = match dir.read() {
        Err(RuntimeError::NotFound(_)) => return Ok(()),
        record => record?,
    };
    tracing::info!(id = member, "deleting pod member with its sandbox");
    delete(dir, &record, true)
}

/// Delete pod member `record` in the guest (the VM keeps running).
fn delete_in_guest(record: &ContainerRecord) {
    let id = &record.id;
    let Ok(mut target) = target_of(record) else {
        return;
    };
    target.timeout = target.timeout.min(DELETE_AGENT_TIMEOUT);
    match AgentClient::connect(&target) {
        Ok(mut client) => {
            if let Err(e) = client.request_ok(&Request::DeleteContainer {
                id: id.clone(),
                force: true,
            }) {
                tracing::warn!(id, "delete: {e}");
            }
        }
        Err(e) => tracing::warn!(id, "delete: {e}"),
    }
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

/// `update`: the agent writes `resources` to the container's cgroup v2 in the guest. A
/// stopped container (its process exited, or its VMM is gone) is refused.
pub fn update(record: &ContainerRecord, resources: &LinuxResources) -> Result<()> {
    let id = &record.id;
    if status(record)? == Status::Stopped {
        return Err(stopped_update(id));
    }
    let mut client = AgentClient::connect(&target_of(record)?).map_err(|e| match e {
        AgentError::VmmGone { .. } => stopped_update(id),
        e => agent_err(id)(e),
    })?;
    client
        .request_ok(&Request::UpdateContainer {
            id: id.clone(),
            resources: Box::new(resources.clone()),
        })
        .map_err(agent_err(id))?;
    tracing::debug!(id, "container resources updated in the microVM");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_member_namespaces_move_from_the_vmm_pid_to_the_sandbox_guest_pid() {
        let mut spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": [
                {"type": "mount"},
                {"type": "uts", "path": "/proc/4242/ns/uts"},
                {"type": "ipc", "path": "/proc/4242/ns/ipc"},
                {"type": "network", "path": "/var/run/netns/cni-1"},
                {"type": "pid", "path": "/proc/42420/ns/pid"}
            ]}
        }))
        .unwrap();
        assert!(names_host_namespaces(&spec, 4242));
        assert!(!names_host_namespaces(&spec, 424));
        point_namespaces_at(&mut spec, 4242, 7);
        let paths: Vec<Option<String>> = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.path().as_ref().map(|p| p.display().to_string()))
            .collect();
        assert_eq!(
            paths,
            [
                None,
                Some("/proc/7/ns/uts".into()),
                Some("/proc/7/ns/ipc".into()),
                Some("/var/run/netns/cni-1".into()),
                Some("/proc/42420/ns/pid".into()),
            ]
        );
        assert!(!names_host_namespaces(&spec, 4242));
    }

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
        assert_eq!(root.path(), Path::new("/run/kvmbox/shared/c1/rootfs"));
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

    fn spec_with(annotations: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": annotations
        }))
        .unwrap()
    }

    #[test]
    fn pod_role_follows_the_cri_annotations() {
        let none: Spec =
            serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2"})).unwrap();
        assert_eq!(pod_role(&none, "a").unwrap(), PodRole::OwnVm);
        let sandbox = spec_with(serde_json::json!({
            CRI_CONTAINER_TYPE: "sandbox", CRI_SANDBOX_ID: "a"
        }));
        assert_eq!(pod_role(&sandbox, "a").unwrap(), PodRole::OwnVm);
        let member = spec_with(serde_json::json!({
            CRI_CONTAINER_TYPE: "container", CRI_SANDBOX_ID: "pod1"
        }));
        assert_eq!(
            pod_role(&member, "m1").unwrap(),
            PodRole::Member("pod1".into())
        );
        let err = pod_role(&member, "pod1").unwrap_err().to_string();
        assert!(err.contains("itself"), "{err}");
        let orphan = spec_with(serde_json::json!({CRI_CONTAINER_TYPE: "container"}));
        let err = pod_role(&orphan, "m1").unwrap_err().to_string();
        assert!(err.contains(CRI_SANDBOX_ID) && err.contains("m1"), "{err}");
    }

    #[test]
    fn bind_mounts_are_recognised() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [
                {"destination": "/a", "type": "bind", "source": "/x"},
                {"destination": "/b", "source": "/y", "options": ["rbind", "ro"]},
                {"destination": "/proc", "type": "proc", "source": "proc"}
            ]
        }))
        .unwrap();
        let m = spec.mounts().as_ref().unwrap();
        assert!(is_bind(&m[0]) && is_bind(&m[1]) && !is_bind(&m[2]));
    }
}
