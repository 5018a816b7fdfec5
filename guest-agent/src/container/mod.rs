//! Container setup shared by `--isolation namespace` (host) and the in-VM agent.
//!
//! The caller (a single-threaded process) calls [`create`] to clone the container's init process
//! into its new namespaces and cgroup; the init does the whole OCI setup, then blocks on the exec
//! FIFO until `start` opens it, then execs the user process. [`exec`] starts another process in
//! the namespaces and cgroup of a running container.
//!
//! Modules: `spawn` (parent side of create: clone, sync protocol, id maps, runtime hooks),
//! `init` (the init's setup sequence), `exec`, `release` (exec FIFO), `sync` (parent/child
//! messages), `namespaces`, `cgroups` (own small cgroupfs manager, v1 and v2), `rootfs`
//! (propagation, mounts, pivot_root), `mount_options`, `secure_path` (resolution inside the
//! rootfs), `devices`, `paths` (masked/readonly), `sysctl`, `process` (rlimits, user,
//! capabilities, cwd, execve), `console` (pty + SCM_RIGHTS), `hooks`, `seccomp`.
//!
//! Not implemented (ignored): apparmorProfile, selinuxLabel, mountLabel, process.ioPriority,
//! process.scheduler, execCPUAffinity, linux.personality, intelRdt, memoryPolicy, netDevices,
//! timeOffsets, id-mapped mounts, and device rules on cgroup v2 (they need eBPF).

mod cgroups;
mod console;
mod devices;
pub mod error;
mod exec;
mod hooks;
mod init;
mod mount_options;
mod namespaces;
mod paths;
mod process;
mod release;
mod rootfs;
mod seccomp;
mod secure_path;
mod spawn;
pub mod state;
mod sync;
mod sysctl;

pub use error::ContainerError;
pub use state::{OciState, Status};

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Process, Spec};

/// Everything needed to create a container's init process.
#[derive(Debug, Clone)]
pub struct CreateRequest<'a> {
    /// Container id (already validated by the caller).
    pub id: &'a str,
    /// Absolute path of the bundle directory.
    pub bundle: &'a Path,
    /// The parsed and validated OCI spec.
    pub spec: &'a Spec,
    /// Absolute path of the rootfs (spec.root.path resolved against the bundle).
    pub rootfs: PathBuf,
    /// Path of the exec FIFO (created by the caller). The init opens it for writing after all
    /// setup, which blocks until `start` opens it for reading, then runs startContainer hooks and
    /// execs. `None`: exec right after setup (no start step).
    pub exec_fifo: Option<&'a Path>,
    /// Unix socket that receives the pty master over SCM_RIGHTS when `process.terminal` is true.
    pub console_socket: Option<&'a Path>,
    /// Use MS_MOVE + chroot instead of pivot_root.
    pub no_pivot: bool,
    /// Extra fds (3..3+n) that the container process inherits.
    pub preserve_fds: u32,
    /// Cgroup path to use (absolute within the hierarchy, e.g. `/kvmbox/<id>`); the caller
    /// resolves `linux.cgroupsPath` (or its default) into this.
    pub cgroup_path: String,
}

/// A created container: its init process is alive and blocked on the exec FIFO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Host (caller's pid namespace) PID of the container's init process.
    pub pid: i32,
}

/// A process to start inside a running container (`exec`).
#[derive(Debug, Clone)]
pub struct ExecRequest<'a> {
    /// PID (in the caller's namespace) of the container's init; its `/proc/<pid>/ns/*` are joined.
    pub container_pid: i32,
    /// The container's spec (for namespaces, cgroup, defaults such as capabilities).
    pub spec: &'a Spec,
    /// The process to run (args, env, cwd, user, capabilities, terminal, rlimits, ...).
    pub process: &'a Process,
    /// Unix socket that receives the pty master when `process.terminal` is true.
    pub console_socket: Option<&'a Path>,
    /// The container's cgroup path (as passed to [`create`]).
    pub cgroup_path: String,
    /// Extra fds (3..3+n) that the process inherits.
    pub preserve_fds: u32,
}

/// Clone the container init into its namespaces and cgroup and run the OCI setup.
///
/// Runs createRuntime/prestart hooks (in the caller's namespaces) and createContainer hooks (in
/// the container's) with `state` (status "creating", pid filled in) on their stdin. Returns once
/// the init is blocked on the exec FIFO (or has exec'd when `exec_fifo` is None). On any error the
/// init is killed and reaped and the cgroup removed: nothing is left behind.
///
/// **The caller must be single-threaded**: the init is a fork-like clone of the caller, and the
/// caller temporarily joins namespaces given by path around the clone.
/// When `process.terminal` is true but no console socket is given, stdio is inherited.
pub fn create(req: &CreateRequest<'_>, state: &OciState) -> Result<Created, ContainerError> {
    spawn::create(req, state)
}

/// Start a process inside a running container; returns its PID (a child of the caller).
///
/// Returns once the process has exec'd (or with the precise setup/exec error). **The caller must
/// be single-threaded** (see [`create`]).
pub fn exec(req: &ExecRequest<'_>) -> Result<i32, ContainerError> {
    exec::exec(req)
}

/// Open the exec FIFO for reading and release the init (the `start` step). Errors if the init is
/// gone. Never blocks forever: it waits on the FIFO and on a pidfd of the init together.
pub fn release(exec_fifo: &Path, init_pid: i32) -> Result<(), ContainerError> {
    release::release(exec_fifo, init_pid)
}

/// Remove the container's cgroup (killing anything left in it first).
pub fn destroy_cgroup(cgroup_path: &str) -> Result<(), ContainerError> {
    cgroups::Cgroup::open(cgroup_path)?.destroy()
}

/// Write `resources` (memory, pids, cpu and cpuset limits; only the fields set) to the existing
/// cgroup at `cgroup_path`, as `runc update` does.
pub fn update_cgroup(
    cgroup_path: &str,
    resources: &oci_spec::runtime::LinuxResources,
) -> Result<(), ContainerError> {
    let cgroup = cgroups::Cgroup::open(cgroup_path)?;
    cgroup.require_exists()?;
    cgroup.apply(resources)
}

/// PIDs (in the caller's pid namespace) of every process in the container's cgroup (empty if
/// the cgroup does not exist).
pub fn cgroup_pids(cgroup_path: &str) -> Result<Vec<i32>, ContainerError> {
    cgroups::Cgroup::open(cgroup_path)?.procs()
}

/// Run a list of hooks (poststart, poststop, ...) in the caller's namespaces, each with `state`
/// as JSON on stdin, honouring each hook's timeout.
pub fn run_hooks(
    hooks: &[oci_spec::runtime::Hook],
    state: &OciState,
    kind: &str,
) -> Result<(), ContainerError> {
    if hooks.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_vec(state)
        .map_err(|e| ContainerError::InvalidSpec(format!("serialize state: {e}")))?;
    hooks::run_all(hooks, &json, kind)
}
