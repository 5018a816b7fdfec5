//! Creating the container's init: the parent side of `create` (cgroup, namespaces, clone, the
//! sync protocol, uid/gid maps, runtime hooks) and the shared clone/cleanup helpers.
//!
//! Protocol over the [`sync`](super::sync) socketpair: after clone the child blocks until the
//! parent has placed it in the cgroup, written its id maps and run the prestart/createRuntime
//! hooks, and sends `GO` (with the state JSON for in-container hooks). The child then does the
//! whole setup and sends `READY` (or `ERROR <message>` and exits). With an exec FIFO the parent
//! returns at `READY`; without one it waits for end-of-stream (the close-on-exec channel closes
//! when execve succeeds) or an `ERROR` from a failed execve.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{Hook, LinuxIdMapping};

use super::cgroups::Cgroup;
use super::error::{ContainerError, Result};
use super::init::{self, InitContext};
use super::namespaces::{self, SavedNamespaces};
use super::sync::{self, Channel, MSG_ERROR, MSG_GO, MSG_READY};
use super::{hooks, process, CreateRequest, Created, OciState, Status};

/// clone(2) without a new stack (fork-like, copy-on-write) with namespace `flags`. Returns 0 in
/// the child, the child's PID in the parent.
///
/// # Safety
/// The caller must be single-threaded; the child must only call async-signal-safe-enough code
/// (no locks held by other threads can exist) and must end with `_exit`/`execve`.
pub(crate) unsafe fn clone_process(flags: CloneFlags) -> Result<i32> {
    // x86_64 and aarch64 argument order: flags, stack, parent_tid, child_tid, tls.
    let rc = libc::syscall(
        libc::SYS_clone,
        (flags.bits() | libc::SIGCHLD) as libc::c_ulong,
        0usize,
        0usize,
        0usize,
        0usize,
    );
    if rc < 0 {
        return Err(ContainerError::sys("clone the container process")(
            nix::Error::last(),
        ));
    }
    Ok(rc as i32)
}

/// Move `fd` to a number ≥ `min` (close-on-exec) so that it stays out of stdio and the preserved
/// fds range.
pub(crate) fn relocate(fd: OwnedFd, min: RawFd) -> Result<OwnedFd> {
    if fd.as_raw_fd() >= min {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd we own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(ContainerError::sys("fcntl F_DUPFD_CLOEXEC")(
            nix::Error::last(),
        ));
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Kills and reaps a half-created process and removes its cgroup unless disarmed.
pub(crate) struct Cleanup<'a> {
    pub pid: Option<i32>,
    pub cgroup: Option<&'a Cgroup>,
}

impl Cleanup<'_> {
    /// Keep everything (success).
    pub(crate) fn disarm(&mut self) {
        self.pid = None;
        self.cgroup = None;
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
        }
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.destroy() {
                tracing::error!("cleanup: {e}");
            }
        }
    }
}

/// Reap `pid` and describe how it ended (for "exited during setup" errors).
pub(crate) fn reap_status(pid: i32) -> String {
    match waitpid(Pid::from_raw(pid), None) {
        Ok(WaitStatus::Exited(_, code)) => format!("exit status {code}"),
        Ok(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("wait: {e}"),
    }
}

/// Wait for the child's READY/ERROR. Returns Ok(true) at READY, Ok(false) at end of stream.
pub(crate) fn wait_ready(chan: &Channel) -> Result<bool> {
    match chan.recv()? {
        Some((MSG_READY, _)) => Ok(true),
        Some((MSG_ERROR, msg)) => Err(ContainerError::Init(
            String::from_utf8_lossy(&msg).into_owned(),
        )),
        Some((tag, _)) => Err(ContainerError::Init(format!(
            "unexpected sync message {:?}",
            tag as char
        ))),
        None => Ok(false),
    }
}

/// After READY without an exec FIFO: wait until execve succeeded (end of stream) or failed.
pub(crate) fn wait_exec(chan: &Channel) -> Result<()> {
    loop {
        match chan.recv()? {
            None => return Ok(()),
            Some((MSG_ERROR, msg)) => {
                return Err(ContainerError::Init(
                    String::from_utf8_lossy(&msg).into_owned(),
                ))
            }
            Some(_) => continue,
        }
    }
}

fn id_map_text(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// Write uid_map/gid_map of `pid` (setgroups=deny first when not root, as the kernel requires).
fn write_id_maps(pid: i32, uid: &[LinuxIdMapping], gid: &[LinuxIdMapping]) -> Result<()> {
    if uid.is_empty() || gid.is_empty() {
        return Err(ContainerError::InvalidSpec(
            "a new user namespace needs linux.uidMappings and linux.gidMappings".into(),
        ));
    }
    let base = format!("/proc/{pid}");
    if !nix::unistd::geteuid().is_root() {
        let p = format!("{base}/setgroups");
        std::fs::write(&p, "deny").map_err(ContainerError::io("write", p))?;
    }
    let p = format!("{base}/uid_map");
    std::fs::write(&p, id_map_text(uid)).map_err(ContainerError::io("write", p))?;
    let p = format!("{base}/gid_map");
    std::fs::write(&p, id_map_text(gid)).map_err(ContainerError::io("write", p))?;
    Ok(())
}

/// Give the exec FIFO to the host ids of the container's root (as runc does) so that the init,
/// root only inside its user namespace, may open it.
fn chown_to_container_root(path: &Path, linux: &oci_spec::runtime::Linux) -> Result<()> {
    let host_of = |maps: Option<&Vec<LinuxIdMapping>>| {
        maps.and_then(|m| {
            m.iter()
                .find(|m| m.container_id() == 0)
                .map(|m| m.host_id())
        })
    };
    let uid = host_of(linux.uid_mappings().as_ref()).map(nix::unistd::Uid::from_raw);
    let gid = host_of(linux.gid_mappings().as_ref()).map(nix::unistd::Gid::from_raw);
    nix::unistd::chown(path, uid, gid).map_err(ContainerError::sys(format!(
        "chown exec fifo {}",
        path.display()
    )))
}

/// Open the exec FIFO with O_PATH (opening it for writing happens in the init, after setup).
fn open_fifo_path(path: &Path) -> Result<OwnedFd> {
    open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).map_err(ContainerError::sys(
        format!("open exec fifo {}", path.display()),
    ))
}

fn hook_list(list: &Option<Vec<Hook>>) -> &[Hook] {
    list.as_deref().unwrap_or(&[])
}

/// The parent side of [`super::create`].
pub(crate) fn create(req: &CreateRequest<'_>, state: &OciState) -> Result<Created> {
    let spec = req.spec;
    let proc_ = spec
        .process()
        .as_ref()
        .ok_or_else(|| ContainerError::InvalidSpec("process is required".into()))?;
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| ContainerError::InvalidSpec("linux is required".into()))?;
    let plan = namespaces::plan(linux.namespaces().as_deref().unwrap_or(&[]))?;
    if !plan.has_mount {
        return Err(ContainerError::InvalidSpec(
            "linux.namespaces must include a mount namespace".into(),
        ));
    }
    if proc_.args().as_deref().unwrap_or(&[]).is_empty() {
        return Err(ContainerError::InvalidSpec(
            "process.args must not be empty".into(),
        ));
    }

    let min_fd = 3 + req.preserve_fds as RawFd;
    let fifo = match req.exec_fifo {
        Some(p) => Some(relocate(open_fifo_path(p)?, min_fd)?),
        None => None,
    };
    let console = match (proc_.terminal().unwrap_or(false), req.console_socket) {
        (true, Some(path)) => Some(relocate(super::console::connect(path)?, min_fd)?),
        _ => None,
    };
    let (parent_end, child_end) = sync::pair()?;
    let parent_end = Channel::from_owned(relocate(parent_end.into_owned(), min_fd)?);
    let child_end = Channel::from_owned(relocate(child_end.into_owned(), min_fd)?);

    let cgroup = Cgroup::open(&req.cgroup_path)?;
    let mut cleanup = Cleanup {
        pid: None,
        cgroup: Some(&cgroup),
    };
    cgroup.create(
        linux.resources().as_ref(),
        linux.devices().as_deref().unwrap_or(&[]),
    )?;

    let hooks = spec.hooks().as_ref();
    let in_container_hooks = hooks.is_some_and(|h| {
        !hook_list(h.create_container()).is_empty() || !hook_list(h.start_container()).is_empty()
    });

    let pid = {
        let mut saved = SavedNamespaces::enter(&plan.parent_joins)?;
        // SAFETY: the caller is single-threaded (documented requirement of `create`).
        let pid = unsafe { clone_process(plan.clone_flags)? };
        if pid == 0 {
            std::mem::forget(saved);
            drop(parent_end);
            let ctx = InitContext {
                req,
                plan: &plan,
                sync: child_end,
                fifo_fd: fifo.as_ref().map(|f| f.as_raw_fd()),
                console_fd: console.as_ref().map(|f| f.as_raw_fd()),
            };
            init::run(ctx);
        }
        saved.restore();
        pid
    };
    cleanup.pid = Some(pid);
    drop(child_end);
    drop(fifo);
    drop(console);

    cgroup.add(pid)?;
    if plan.new_user {
        write_id_maps(
            pid,
            linux.uid_mappings().as_deref().unwrap_or(&[]),
            linux.gid_mappings().as_deref().unwrap_or(&[]),
        )?;
    }
    if plan.new_user {
        if let Some(path) = req.exec_fifo {
            chown_to_container_root(path, linux)?;
        }
    }
    if let Some(adj) = proc_.oom_score_adj() {
        process::set_oom_score_adj(&pid.to_string(), adj)?;
    }
    let mut st = state.clone();
    st.pid = pid;
    st.status = Status::Creating;
    let need_state = in_container_hooks
        || hooks.is_some_and(|h| {
            #[allow(deprecated)]
            let pre = hook_list(h.prestart());
            !pre.is_empty() || !hook_list(h.create_runtime()).is_empty()
        });
    let state_json = if need_state {
        serde_json::to_vec(&st)
            .map_err(|e| ContainerError::Init(format!("serialize state: {e}")))?
    } else {
        Vec::new()
    };
    if let Some(h) = hooks {
        #[allow(deprecated)]
        hooks::run_all(hook_list(h.prestart()), &state_json, "prestart")?;
        hooks::run_all(hook_list(h.create_runtime()), &state_json, "createRuntime")?;
    }
    let go_payload: &[u8] = if in_container_hooks { &state_json } else { &[] };
    parent_end.send(MSG_GO, go_payload)?;

    if !wait_ready(&parent_end)? {
        return Err(ContainerError::Init(format!(
            "container init exited during setup ({})",
            reap_status(cleanup.pid.take().unwrap_or(pid))
        )));
    }
    if req.exec_fifo.is_none() {
        wait_exec(&parent_end)?;
    }
    cleanup.disarm();
    Ok(Created { pid })
}
