//! The containerd Task service (task API v2, as containerd 1.6 calls it) on top of `kvmbox`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use containerd_shim::monitor::{monitor_subscribe, Topic};
use containerd_shim::mount::mount_rootfs;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskIO, TaskPaused, TaskResumed,
};
use containerd_shim::protos::protobuf::well_known_types::empty::Empty;
use containerd_shim::protos::shim::oci::ProcessDetails;
use containerd_shim::protos::shim::shim::*;
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::util::convert_to_any;
use containerd_shim::{ExitSignal, Task, TtrpcContext};

use super::cgroups;
use super::config::{bundle_annotations, choose_isolation, ISOLATION_ENV};
use super::error::{Result, ShimError};
use super::events::EventSender;
use super::kvmbox_cli::Kvmbox;
use super::options::RuntimeOptions;
use super::process::{timestamp, Process};
use super::stdio::{ProcessIo, StdioPaths};
use super::vm;
use crate::runtime::console::ConsoleListener;
use crate::runtime::{Isolation, Runtime, RuntimeError};

/// How long a terminal process may take to send its pty master.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a terminal process's exit waits for its output to be copied out.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// How long an exit of a not-yet-known pid is remembered.
const UNCLAIMED_TTL: Duration = Duration::from_secs(60);

/// One container served by this shim.
struct Container {
    bundle: PathBuf,
    /// Namespace (host processes) or vm (processes in the guest, reached through the agent).
    isolation: Isolation,
    /// Whether the shim mounted `<bundle>/rootfs` (and so unmounts it).
    rootfs_mounted: bool,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Exec>>,
}

/// An exec'd process and its spec (runtime-spec Process JSON).
struct Exec {
    process: Arc<Process>,
    spec: Vec<u8>,
    /// In vm mode, the process as the agent knows it (once started).
    guest: Option<guest_agent::protocol::ProcessRef>,
}

/// Which process owns a pid, and exits reaped before their pid was known.
#[derive(Default)]
struct PidTable {
    owners: HashMap<i32, Arc<Process>>,
    /// Stdio relay processes of vm containers: dropping the sender says the relay exited.
    relays: HashMap<i32, std::sync::mpsc::Sender<()>>,
    unclaimed: HashMap<i32, (i32, Instant)>,
}

struct Inner {
    kvmbox: Kvmbox,
    runtime: Runtime,
    events: EventSender,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    pids: Mutex<PidTable>,
    exit_signal: Arc<ExitSignal>,
}

/// The Task service.
#[derive(Clone)]
pub struct KvmboxTask {
    inner: Arc<Inner>,
}

impl KvmboxTask {
    /// A service keeping kvmbox state under `kvmbox.root()`, publishing through `events`, and
    /// signalling `exit_signal` on Shutdown once no container is left.
    pub fn new(kvmbox: Kvmbox, events: EventSender, exit_signal: Arc<ExitSignal>) -> Result<Self> {
        let runtime = Runtime::new(kvmbox.root(), Isolation::Namespace);
        let inner = Arc::new(Inner {
            kvmbox,
            runtime,
            events,
            containers: Mutex::default(),
            pids: Mutex::default(),
            exit_signal,
        });
        let subscription = monitor_subscribe(Topic::Pid)?;
        let weak = Arc::downgrade(&inner);
        thread::Builder::new()
            .name("exits".into())
            .spawn(move || {
                for event in subscription.rx.iter() {
                    let containerd_shim::monitor::Subject::Pid(pid) = event.subject else {
                        continue;
                    };
                    let Some(inner) = weak.upgrade() else { return };
                    inner.on_exit(pid, event.exit_code);
                }
            })
            .map_err(|e| ShimError::FailedPrecondition(format!("spawn exits thread: {e}")))?;
        Ok(KvmboxTask { inner })
    }
}

impl Inner {
    fn on_exit(&self, pid: i32, code: i32) {
        let mut table = self.pids.lock().unwrap();
        if table.relays.remove(&pid).is_some() {
            containerd_shim::debug!("stdio relay {pid} exited with {code}");
            return;
        }
        if let Some(process) = table.owners.remove(&pid) {
            drop(table);
            containerd_shim::debug!("{} exited with {code}", process.event_id());
            let output = process.lock().io.take_output_waiter();
            match output {
                // A terminal's last output is still in the pty: report the exit once it
                // reached the client (bounded: a background process may hold the pty).
                Some(done) => {
                    let events = self.events.clone();
                    thread::spawn(move || {
                        let _ = done.recv_timeout(OUTPUT_DRAIN);
                        process.set_exited(code, &events);
                    });
                }
                None => process.set_exited(code, &self.events),
            }
            return;
        }
        let now = Instant::now();
        table
            .unclaimed
            .retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_TTL);
        table.unclaimed.insert(pid, (code, now));
    }

    /// Attach `pid` to `process`; an exit reaped before this call is applied now.
    fn register(&self, process: &Arc<Process>, pid: i32) {
        process.lock().pid = pid;
        let mut table = self.pids.lock().unwrap();
        if let Some((code, _)) = table.unclaimed.remove(&pid) {
            drop(table);
            process.set_exited(code, &self.events);
        } else {
            table.owners.insert(pid, Arc::clone(process));
        }
    }

    /// A receiver that disconnects once the relay process `pid` (our child) has exited.
    fn watch_relay(&self, pid: i32) -> std::sync::mpsc::Receiver<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut table = self.pids.lock().unwrap();
        if table.unclaimed.remove(&pid).is_none() {
            table.relays.insert(pid, tx);
        }
        rx
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.containers
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("container {id}")))
    }

    /// The init (`exec_id` empty) or an exec'd process of container `id`.
    fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Container>, Arc<Process>)> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            let init = Arc::clone(&c.init);
            return Ok((c, init));
        }
        let process = c
            .execs
            .lock()
            .unwrap()
            .get(exec_id)
            .map(|e| Arc::clone(&e.process))
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} in container {id}")))?;
        Ok((c, process))
    }

    fn create(&self, req: &CreateTaskRequest) -> Result<u32> {
        let id = req.id.as_str();
        if self.containers.lock().unwrap().contains_key(id) {
            return Err(ShimError::AlreadyExists(format!("container {id}")));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(format!(
                "container {id}: restoring from a checkpoint is not supported by kvmbox"
            )));
        }
        let bundle = PathBuf::from(&req.bundle);
        let annotations = bundle_annotations(&bundle)?;
        let options = RuntimeOptions::from_any(id, req.options.as_ref())?;
        let config = options.config.as_ref();
        let (isolation, source) = choose_isolation(
            id,
            &annotations,
            config.and_then(|(path, c)| Some((path.as_path(), c.isolation?))),
            std::env::var(ISOLATION_ENV).ok().as_deref(),
        )?;
        containerd_shim::info!("container {id}: isolation {isolation:?} ({source})");
        let rootfs = bundle.join("rootfs");
        for m in &req.rootfs {
            std::fs::create_dir_all(&rootfs)
                .map_err(|e| ShimError::io("create rootfs dir", &rootfs, e))?;
            if let Err(e) = mount_rootfs(Some(&m.type_), Some(&m.source), &m.options, &rootfs) {
                unmount(&rootfs);
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id}: mount {} ({}) on {}: {e}",
                    m.source,
                    m.type_,
                    rootfs.display()
                )));
            }
        }
        let rootfs_mounted = !req.rootfs.is_empty();
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let init = Arc::new(Process::new(id, "", stdio.clone()));
        let config_path = config.map(|(path, _)| path.as_path());
        let pid = match self.spawn_init(isolation, config_path, id, &bundle, &init) {
            Ok(pid) => pid,
            Err(e) => {
                if rootfs_mounted {
                    unmount(&rootfs);
                }
                return Err(e);
            }
        };
        let container = Arc::new(Container {
            bundle: bundle.clone(),
            isolation,
            rootfs_mounted,
            init: Arc::clone(&init),
            execs: Mutex::default(),
        });
        self.containers
            .lock()
            .unwrap()
            .insert(id.to_string(), container);
        match isolation {
            Isolation::Namespace => self.register(&init, pid),
            // The pid is the VMM's: the init's exit comes from the agent.
            Isolation::Vm => {
                init.lock().pid = pid;
                if let Err(e) = self.watch_vm_init(id, &init) {
                    let _ = self.kvmbox.delete(id, true);
                    self.containers.lock().unwrap().remove(id);
                    if rootfs_mounted {
                        unmount(&rootfs);
                    }
                    return Err(e);
                }
            }
        }
        self.events.send(TaskCreate {
            container_id: id.to_string(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO {
                stdin: stdio.stdin,
                stdout: stdio.stdout,
                stderr: stdio.stderr,
                terminal: stdio.terminal,
                ..Default::default()
            })
            .into(),
            checkpoint: req.checkpoint.clone(),
            pid: pid as u32,
            ..Default::default()
        });
        Ok(pid as u32)
    }

    /// Wait for the exit of a vm container's init (agent WaitProcess, then its stdio relay's
    /// exit so that all output is out) on a thread of its own.
    fn watch_vm_init(&self, id: &str, init: &Arc<Process>) -> Result<()> {
        let record = self.runtime.store().read(id)?;
        let target = crate::runtime::vm::lifecycle::target_of(&record)?;
        let relay_pid = record.vm.as_ref().map_or(0, |v| v.relay_pid);
        let relay = (relay_pid > 0).then(|| self.watch_relay(relay_pid));
        let process = crate::runtime::vm::lifecycle::init_ref(id);
        vm::spawn_waiter(
            Arc::clone(init),
            self.events.clone(),
            vm::Waiter {
                target,
                process,
                client: None,
                relay,
            },
        )
    }

    /// `kvmbox create` with the init's stdio; returns the init pid (the VMM's in vm mode).
    fn spawn_init(
        &self,
        isolation: Isolation,
        config: Option<&Path>,
        id: &str,
        bundle: &Path,
        init: &Process,
    ) -> Result<i32> {
        let (mut io, child_stdio) = ProcessIo::open(&init.stdio)?;
        let console = if init.stdio.terminal {
            Some(ConsoleListener::bind_private()?)
        } else {
            None
        };
        let pid_file = bundle.join("init.pid");
        self.kvmbox.with_config(config).create(
            isolation,
            id,
            bundle,
            &pid_file,
            console.as_ref().map(|c| c.path()),
            child_stdio,
        )?;
        let attached = console
            .map(|c| {
                let master = c.receive_master(CONSOLE_TIMEOUT)?;
                io.attach_console(master, &init.stdio)
            })
            .transpose()
            .and_then(|_| read_pid(&pid_file));
        match attached {
            Ok(pid) => {
                init.lock().io = io;
                Ok(pid)
            }
            Err(e) => {
                let _ = self.kvmbox.delete(id, true);
                Err(e)
            }
        }
    }

    fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let (c, process) = self.process(id, exec_id)?;
        if process.lock().status != Status::CREATED {
            return Err(ShimError::FailedPrecondition(format!(
                "{} in container {id} is not in created state",
                process.event_id()
            )));
        }
        if exec_id.is_empty() {
            self.kvmbox.start(id)?;
        } else {
            let spec = c
                .execs
                .lock()
                .unwrap()
                .get(exec_id)
                .map(|e| e.spec.clone())
                .unwrap_or_default();
            match c.isolation {
                Isolation::Namespace => {
                    let pid = self.spawn_exec(id, &c.bundle, &process, &spec)?;
                    self.register(&process, pid);
                }
                Isolation::Vm => {
                    let guest = self.spawn_exec_vm(id, &process, &spec)?;
                    if let Some(e) = c.execs.lock().unwrap().get_mut(exec_id) {
                        e.guest = Some(guest);
                    }
                }
            }
        }
        process.set_started(&self.events);
        let pid = process.lock().pid;
        Ok(pid as u32)
    }

    /// Start an exec'd process in the container's microVM from the shim itself (no fork: the
    /// shim relays its streams on threads and waits through the agent); returns the process
    /// as the agent knows it. Its pid is the guest pid.
    fn spawn_exec_vm(
        &self,
        id: &str,
        process: &Arc<Process>,
        spec: &[u8],
    ) -> Result<guest_agent::protocol::ProcessRef> {
        let record = self.runtime.store().read(id)?;
        let oci: oci_spec::runtime::Process = serde_json::from_slice(spec).map_err(|e| {
            ShimError::InvalidArgument(format!(
                "exec {} in container {id}: process spec: {e}",
                process.exec_id
            ))
        })?;
        let execed = crate::runtime::vm::lifecycle::exec(&record, &oci, None, false)?;
        let streams = execed
            .streams
            .unwrap_or_else(crate::runtime::vm::stdio::ProcessStreams::none);
        let io = ProcessIo::open_guest(streams, &process.stdio, &execed.target, &execed.process);
        let io = match io {
            Ok(io) => io,
            Err(e) => {
                let _ = vm::signal(&execed.target, &execed.process, libc::SIGKILL, false);
                return Err(e);
            }
        };
        {
            let mut s = process.lock();
            s.io = io;
            s.pid = execed.guest_pid;
        }
        let guest = execed.process.clone();
        vm::spawn_waiter(
            Arc::clone(process),
            self.events.clone(),
            vm::Waiter {
                target: execed.target,
                process: execed.process,
                client: Some(execed.client),
                relay: None,
            },
        )?;
        Ok(guest)
    }

    /// `kvmbox exec --detach` with the process's stdio; returns its pid.
    fn spawn_exec(&self, id: &str, bundle: &Path, process: &Process, spec: &[u8]) -> Result<i32> {
        let exec_id = &process.exec_id;
        let spec_path = bundle.join(format!("exec-{exec_id}.json"));
        let pid_file = bundle.join(format!("exec-{exec_id}.pid"));
        std::fs::write(&spec_path, spec)
            .map_err(|e| ShimError::io("write exec process", &spec_path, e))?;
        let (mut io, child_stdio) = ProcessIo::open(&process.stdio)?;
        let console = if process.stdio.terminal {
            Some(ConsoleListener::bind_private()?)
        } else {
            None
        };
        let result = self
            .kvmbox
            .exec(
                id,
                &spec_path,
                &pid_file,
                console.as_ref().map(|c| c.path()),
                child_stdio,
            )
            .and_then(|()| read_pid(&pid_file));
        let _ = std::fs::remove_file(&spec_path);
        let _ = std::fs::remove_file(&pid_file);
        let pid = result?;
        if let Some(console) = console {
            let attached = console
                .receive_master(CONSOLE_TIMEOUT)
                .map_err(ShimError::from)
                .and_then(|master| io.attach_console(master, &process.stdio));
            if let Err(e) = attached {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(e);
            }
        }
        process.lock().io = io;
        Ok(pid)
    }

    fn delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse> {
        let (c, process) = self.process(id, exec_id)?;
        let (pid, status, exit) = {
            let s = process.lock();
            (s.pid, s.status, s.exit)
        };
        if status == Status::RUNNING || status == Status::PAUSED {
            return Err(ShimError::FailedPrecondition(format!(
                "{} in container {id} is still running; kill it first",
                process.event_id()
            )));
        }
        if exec_id.is_empty() {
            if !c.execs.lock().unwrap().is_empty() {
                containerd_shim::debug!("deleting {id} with exec records left");
            }
            self.kvmbox.delete(id, true)?;
            if c.rootfs_mounted {
                unmount(&c.bundle.join("rootfs"));
            }
            let _ = std::fs::remove_file(c.bundle.join("init.pid"));
            self.containers.lock().unwrap().remove(id);
        } else {
            c.execs.lock().unwrap().remove(exec_id);
        }
        self.pids.lock().unwrap().owners.remove(&pid);
        let (exit_status, exited_at) = match exit {
            Some(e) => (e.status, timestamp(e.at)),
            None => (0, timestamp(std::time::SystemTime::now())),
        };
        if exec_id.is_empty() {
            self.events.send(TaskDelete {
                container_id: id.to_string(),
                pid: pid as u32,
                exit_status,
                exited_at: Some(exited_at.clone()).into(),
                id: id.to_string(),
                ..Default::default()
            });
        }
        Ok(DeleteResponse {
            pid: pid as u32,
            exit_status,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        })
    }

    fn kill(&self, req: &KillRequest) -> Result<()> {
        let (c, process) = self.process(&req.id, &req.exec_id)?;
        let signal = req.signal as i32;
        if req.exec_id.is_empty() {
            return match self.runtime.kill(&req.id, signal, req.all) {
                Ok(()) => Ok(()),
                Err(RuntimeError::NotRunning(_)) if req.all => Ok(()),
                Err(RuntimeError::NotRunning(_)) => Err(ShimError::NotFound(format!(
                    "container {}: process already finished",
                    req.id
                ))),
                Err(e) => Err(e.into()),
            };
        }
        let s = process.lock();
        if s.exit.is_some() || s.pid == 0 {
            return Err(ShimError::NotFound(format!(
                "exec {} in container {}: process already finished",
                req.exec_id, req.id
            )));
        }
        if c.isolation == Isolation::Vm {
            drop(s);
            let guest = c
                .execs
                .lock()
                .unwrap()
                .get(&req.exec_id)
                .and_then(|e| e.guest.clone())
                .ok_or_else(|| {
                    ShimError::NotFound(format!(
                        "exec {} in container {}: not started",
                        req.exec_id, req.id
                    ))
                })?;
            let record = self.runtime.store().read(&req.id)?;
            let target = crate::runtime::vm::lifecycle::target_of(&record)?;
            return vm::signal(&target, &guest, signal, req.all);
        }
        crate::runtime::lifecycle::send_signal(s.pid, signal)
            .map_err(|e| ShimError::FailedPrecondition(format!("kill exec {}: {e}", req.exec_id)))
    }

    fn exec(&self, req: &ExecProcessRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        if c.init.lock().status != Status::RUNNING {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        let mut execs = c.execs.lock().unwrap();
        if execs.contains_key(&req.exec_id) {
            return Err(ShimError::AlreadyExists(format!(
                "exec {} in container {}",
                req.exec_id, req.id
            )));
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let spec = req
            .spec
            .as_ref()
            .map(|s| s.value.clone())
            .unwrap_or_default();
        execs.insert(
            req.exec_id.clone(),
            Exec {
                process: Arc::new(Process::new(&req.id, &req.exec_id, stdio)),
                spec,
                guest: None,
            },
        );
        self.events.send(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        });
        Ok(())
    }

    fn pids(&self, id: &str) -> Result<PidsResponse> {
        let c = self.container(id)?;
        let execs: HashMap<i32, String> = c
            .execs
            .lock()
            .unwrap()
            .iter()
            .map(|(exec_id, e)| (e.process.lock().pid, exec_id.clone()))
            .collect();
        let mut processes = Vec::new();
        for pid in self.runtime.ps(id)? {
            let mut info = ProcessInfo {
                pid: pid as u32,
                ..Default::default()
            };
            if let Some(exec_id) = execs.get(&pid) {
                let details = ProcessDetails {
                    exec_id: exec_id.clone(),
                    ..Default::default()
                };
                info.info = Some(convert_to_any(Box::new(details))?).into();
            }
            processes.push(info);
        }
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn running_init_pid(&self, id: &str) -> Result<i32> {
        let c = self.container(id)?;
        let s = c.init.lock();
        if s.exit.is_some() || s.pid == 0 {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        Ok(s.pid)
    }

    fn set_paused(&self, id: &str, paused: bool) -> Result<()> {
        let pid = self.running_init_pid(id)?;
        let c = self.container(id)?;
        if c.isolation == Isolation::Vm {
            vm::set_paused(&self.vm_target(id)?, id, paused)?;
        } else {
            let cgroup_path = self.runtime.state(id)?.record.cgroup_path;
            let pids = self.runtime.ps(id)?;
            cgroups::set_frozen(pid, &cgroup_path, &pids, paused)?;
        }
        let mut s = c.init.lock();
        if s.exit.is_none() {
            s.status = if paused {
                Status::PAUSED
            } else {
                Status::RUNNING
            };
        }
        drop(s);
        if paused {
            self.events.send(TaskPaused {
                container_id: id.to_string(),
                ..Default::default()
            });
        } else {
            self.events.send(TaskResumed {
                container_id: id.to_string(),
                ..Default::default()
            });
        }
        Ok(())
    }
}

impl Inner {
    /// The agent of vm container `id`.
    fn vm_target(&self, id: &str) -> Result<crate::runtime::vm::AgentTarget> {
        let record = self.runtime.store().read(id)?;
        Ok(crate::runtime::vm::lifecycle::target_of(&record)?)
    }

    /// containerd's metrics of container `id` (cgroup v1/v2 on the host, v2 in the guest).
    fn stats(
        &self,
        id: &str,
    ) -> Result<containerd_shim::protos::protobuf::well_known_types::any::Any> {
        let pid = self.running_init_pid(id)?;
        if self.container(id)?.isolation == Isolation::Vm {
            return vm::stats(&self.vm_target(id)?, id);
        }
        cgroups::stats(pid)
    }

    /// Update: as `kvmbox update`, the container's cgroup on the host (namespace) or in the
    /// guest (vm, through the agent).
    fn update(&self, req: &UpdateTaskRequest) -> Result<()> {
        self.running_init_pid(&req.id)?;
        let resources = req.resources.as_ref().ok_or_else(|| {
            ShimError::InvalidArgument(format!("update {}: no resources", req.id))
        })?;
        let resources = cgroups::parse_resources(resources)?;
        Ok(self.runtime.update(&req.id, &resources)?)
    }
}

fn read_pid(path: &Path) -> Result<i32> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ShimError::io("read pid file", path, e))?;
    text.trim().parse().map_err(|_| {
        ShimError::FailedPrecondition(format!("{}: not a pid: {text:?}", path.display()))
    })
}

/// Unmount `target` (lazily, with everything below it); not being mounted is fine.
pub fn unmount(target: &Path) {
    match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => containerd_shim::warn!("unmount {}: {e}", target.display()),
    }
}

fn reply<T>(what: &str, result: Result<T>) -> ttrpc::Result<T> {
    result.map_err(|e| {
        containerd_shim::warn!("{what}: {e}");
        e.into()
    })
}

impl Task for KvmboxTask {
    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        reply(
            "state",
            self.inner.process(&req.id, &req.exec_id).map(|(c, p)| {
                let s = p.lock();
                let exit = s.exit;
                StateResponse {
                    id: req.id.clone(),
                    bundle: c.bundle.to_string_lossy().into_owned(),
                    pid: s.pid as u32,
                    status: s.status.into(),
                    stdin: p.stdio.stdin.clone(),
                    stdout: p.stdio.stdout.clone(),
                    stderr: p.stdio.stderr.clone(),
                    terminal: p.stdio.terminal,
                    exit_status: exit.map_or(0, |e| e.status),
                    exited_at: exit.map(|e| timestamp(e.at)).into(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                }
            }),
        )
    }

    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        reply(
            "create",
            self.inner.create(&req).map(|pid| CreateTaskResponse {
                pid,
                ..Default::default()
            }),
        )
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        reply(
            "start",
            self.inner
                .start(&req.id, &req.exec_id)
                .map(|pid| StartResponse {
                    pid,
                    ..Default::default()
                }),
        )
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        reply("delete", self.inner.delete(&req.id, &req.exec_id))
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        reply("pids", self.inner.pids(&req.id))
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        reply("pause", self.inner.set_paused(&req.id, true)).map(|()| Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        reply("resume", self.inner.set_paused(&req.id, false)).map(|()| Empty::new())
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, req: CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        reply(
            "checkpoint",
            Err(ShimError::Unimplemented(format!(
                "container {}: checkpoint is not supported by kvmbox",
                req.id
            ))),
        )
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        reply("kill", self.inner.kill(&req)).map(|()| Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        reply("exec", self.inner.exec(&req)).map(|()| Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        reply(
            "resize_pty",
            self.inner
                .process(&req.id, &req.exec_id)
                .and_then(|(_, p)| p.lock().io.resize(req.width, req.height)),
        )
        .map(|()| Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        reply(
            "close_io",
            self.inner.process(&req.id, &req.exec_id).map(|(_, p)| {
                if req.stdin {
                    p.lock().io.close_stdin();
                }
            }),
        )
        .map(|()| Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        reply("update", self.inner.update(&req)).map(|()| Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let (_, process) = reply("wait", self.inner.process(&req.id, &req.exec_id))?;
        let exit = process.wait();
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        reply(
            "stats",
            self.inner.stats(&req.id).map(|stats| StatsResponse {
                stats: Some(stats).into(),
                ..Default::default()
            }),
        )
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        let task_pid = self
            .inner
            .container(&req.id)
            .map(|c| c.init.lock().pid as u32)
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        if self.inner.containers.lock().unwrap().is_empty() {
            self.inner.exit_signal.signal();
        }
        Ok(Empty::new())
    }
}
