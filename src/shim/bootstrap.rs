//! The shim binary's entry point: the `start` and `delete` actions containerd 1.6 runs, and
//! the long-running ttrpc server. containerd 1.6 reads a bare socket address from `start` and
//! calls the task API as `containerd.task.v2.Task`; the containerd-shim crate's own bootstrap
//! speaks the containerd 2.x variant (a JSON reply, `containerd.task.v3.Task`), so this module
//! drives the crate's parts itself and registers the service under both names.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::shim::DeleteResponse;
use containerd_shim::protos::shim::shim_ttrpc::create_task;
use containerd_shim::protos::ttrpc::{MethodHandler, Server};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Flags};

use super::config::{bundle_annotations, grouping, state_root};
use super::error::{Result, ShimError};
use super::events::EventSender;
use super::kvmbox_cli::Kvmbox;
use super::process::timestamp;
use super::reaper;
use super::service::{unmount, KvmboxTask};

/// The runtime name containerd knows this shim by.
pub const RUNTIME_NAME: &str = "io.containerd.kvmbox.v2";
/// Environment variable carrying containerd's ttrpc address.
const TTRPC_ADDRESS_ENV: &str = "TTRPC_ADDRESS";
/// Task service name of containerd 2.x (what the protos crate generates).
const TASK_V3: &str = "/containerd.task.v3.Task/";
/// Task service name of containerd 1.x.
const TASK_V2: &str = "/containerd.task.v2.Task/";
/// Worker threads of the ttrpc server: Wait calls block one each.
const MAX_WORKERS: usize = 64;

/// How long an exiting shim waits for its queued events to reach containerd.
const EVENTS_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Run the shim with the process's arguments; returns the exit code.
pub fn main() -> i32 {
    let args: Vec<_> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!("{RUNTIME_NAME}: {e}");
            return 1;
        }
    };
    if flags.version {
        println!("{RUNTIME_NAME} (kvmbox {})", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    let result = match flags.action.as_str() {
        "start" => start(&flags),
        "delete" => delete(&flags),
        "" => serve(&flags),
        other => Err(ShimError::InvalidArgument(format!(
            "unknown action {other:?}"
        ))),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{RUNTIME_NAME}: {e}");
            1
        }
    }
}

/// `start`: launch the server for this container's group (or reuse the running one), record
/// its address in the bundle and print it.
fn start(flags: &Flags) -> Result<()> {
    if flags.namespace.is_empty() || flags.id.is_empty() {
        return Err(ShimError::InvalidArgument(
            "start needs -namespace and -id".into(),
        ));
    }
    let bundle = std::env::current_dir().map_err(|e| ShimError::io("getcwd", ".", e))?;
    let annotations = bundle_annotations(&bundle).unwrap_or_default();
    let group = grouping(&flags.id, &annotations);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &group);
    if !(group != flags.id && UnixStream::connect(socket_path(&address)).is_ok()) {
        spawn_server(flags, &address)?;
    }
    std::fs::write(bundle.join("address"), &address)
        .map_err(|e| ShimError::io("write", bundle.join("address"), e))?;
    let mut out = std::io::stdout().lock();
    out.write_all(address.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| ShimError::io("write address to", "stdout", e))
}

/// Run this binary as the server on `address`; returns once it listens (it closes its stdout).
fn spawn_server(flags: &Flags, address: &str) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| ShimError::io("locate", "/proc/self/exe", e))?;
    let mut cmd = Command::new(&exe);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", &flags.address, "-socket", address]);
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| ShimError::io("spawn shim server", &exe, e))?;
    let mut ready = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        let _ = pipe.read_to_string(&mut ready);
    }
    if UnixStream::connect(socket_path(address)).is_ok() {
        return Ok(());
    }
    let status = child
        .wait()
        .map_err(|e| ShimError::io("wait for shim server", &exe, e))?;
    Err(ShimError::FailedPrecondition(format!(
        "shim server exited ({status}) without listening on {address}"
    )))
}

fn socket_path(address: &str) -> &Path {
    Path::new(address.strip_prefix("unix://").unwrap_or(address))
}

/// The server: the Task service on `-socket` until Shutdown.
fn serve(flags: &Flags) -> Result<()> {
    if flags.socket.is_empty() || flags.namespace.is_empty() {
        return Err(ShimError::InvalidArgument(
            "the server needs -namespace and -socket".into(),
        ));
    }
    reaper::start()?;
    if let Err(e) = containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)
    {
        eprintln!("{RUNTIME_NAME}: logging to the bundle's log fifo: {e}");
    }
    let ttrpc_address = std::env::var(TTRPC_ADDRESS_ENV)
        .map_err(|_| ShimError::InvalidArgument(format!("${TTRPC_ADDRESS_ENV} is not set")))?;
    let publisher = RemotePublisher::new(&ttrpc_address)?;
    let events = EventSender::start(publisher, flags.namespace.clone());
    let exit_signal = Arc::new(ExitSignal::default());
    let kvmbox = Kvmbox::locate(state_root(&flags.namespace))?;
    let task = KvmboxTask::new(kvmbox, events.clone(), Arc::clone(&exit_signal))?;

    let path = socket_path(&flags.socket).to_path_buf();
    let listener = bind(&path)?;
    let mut server = Server::new()
        .add_listener(listener.into_raw_fd())
        .map_err(containerd_shim::Error::from)?
        .register_service(task_methods(task))
        .set_thread_count_max(MAX_WORKERS);
    server.start().map_err(containerd_shim::Error::from)?;
    signal_listening();
    containerd_shim::info!("kvmbox shim serving on {}", flags.socket);
    exit_signal.wait();
    server.shutdown();
    // Shutdown comes right after the last Delete: publish its TaskDelete before exiting.
    if !events.flush(EVENTS_FLUSH_TIMEOUT) {
        containerd_shim::warn!("events still unpublished after {EVENTS_FLUSH_TIMEOUT:?}");
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// The Task methods under both the v3 names the crate generates and containerd 1.x's v2 names.
fn task_methods(task: KvmboxTask) -> HashMap<String, Box<dyn MethodHandler + Send + Sync>> {
    let mut methods = create_task(Arc::new(task.clone()));
    for (name, handler) in create_task(Arc::new(task)) {
        if let Some(method) = name.strip_prefix(TASK_V3) {
            methods.insert(format!("{TASK_V2}{method}"), handler);
        }
    }
    methods
}

/// Listen on `path`, replacing a stale socket nobody answers on.
fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ShimError::io("create socket dir", dir, e))?;
    }
    match UnixListener::bind(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Err(ShimError::AlreadyExists(format!(
                    "a shim already serves {}",
                    path.display()
                )));
            }
            std::fs::remove_file(path)
                .map_err(|e| ShimError::io("remove stale socket", path, e))?;
            UnixListener::bind(path).map_err(|e| ShimError::io("listen on", path, e))
        }
        other => other.map_err(|e| ShimError::io("listen on", path, e)),
    }
}

/// Remove the socket of this container's shim if no shim answers on it any more (a shim
/// killed by SIGKILL leaves it behind).
fn remove_stale_socket(flags: &Flags, bundle: &Path) {
    if flags.address.is_empty() {
        return;
    }
    let annotations = bundle_annotations(bundle).unwrap_or_default();
    let group = grouping(&flags.id, &annotations);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &group);
    let path = socket_path(&address);
    if path.exists() && UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

/// Tell `start` the server listens: replace stdout (its pipe) with stderr (/dev/null).
fn signal_listening() {
    // SAFETY: dup2 on the process's own standard descriptors.
    unsafe {
        libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
    }
}

/// SIGKILL the VMM of vm container `id` under `root` if it still runs (its shim is gone, so
/// nobody relays or waits for it any more; a pod's VM goes with its dead shim).
fn kill_orphaned_vmm(root: &Path, id: &str) {
    let Ok(record) = crate::runtime::state::StateStore::new(root).read(id) else {
        return;
    };
    if record.isolation != crate::runtime::Isolation::Vm
        || !crate::runtime::process::is_same_live_process(record.pid, record.pid_start_time)
    {
        return;
    }
    if crate::runtime::lifecycle::send_signal(record.pid, libc::SIGKILL).is_ok() {
        crate::runtime::process::wait_exited(record.pid, std::time::Duration::from_secs(2));
    }
}

/// `delete`: containerd's cleanup after a shim is gone (or after Shutdown): remove the
/// container (killing what is left of it), unmount its rootfs, print a DeleteResponse.
fn delete(flags: &Flags) -> Result<()> {
    if flags.namespace.is_empty() || flags.id.is_empty() {
        return Err(ShimError::InvalidArgument(
            "delete needs -namespace and -id".into(),
        ));
    }
    reaper::start()?;
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(|e| ShimError::io("getcwd", ".", e))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    remove_stale_socket(flags, &bundle);
    // containerd gives this command only a few seconds (its shim cleanup timeout, 5 s by
    // default) and SIGKILLs it then: the rootfs goes first, and a VM whose shim is dead is
    // killed outright instead of being asked to power off.
    unmount(&bundle.join("rootfs"));
    let root = state_root(&flags.namespace);
    kill_orphaned_vmm(&root, &flags.id);
    let kvmbox = Kvmbox::locate(root)?;
    if let Err(e) = kvmbox.delete(&flags.id, true) {
        eprintln!("{RUNTIME_NAME}: {e}");
    }
    let response = DeleteResponse {
        pid: 0,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: Some(timestamp(std::time::SystemTime::now())).into(),
        ..Default::default()
    };
    let bytes = response
        .write_to_bytes()
        .map_err(containerd_shim::Error::from)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .map_err(|e| ShimError::io("write delete response to", "stdout", e))
}
