//! `exec`: start another process in the namespaces and cgroup of a running container.

use std::convert::Infallible;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use oci_spec::runtime::LinuxNamespaceType;

use super::cgroups::Cgroup;
use super::error::{ContainerError, Result};
use super::init::{apply_process, finish_process, report_failure, wait_go};
use super::namespaces::{self, SavedNamespaces};
use super::spawn::{self, clone_process, relocate, Cleanup};
use super::sync::{self, Channel, MSG_GO, MSG_READY};
use super::{process, ExecRequest};

/// The namespaces of `container_pid` to join: those the spec lists whose inode differs from the
/// caller's own (user namespace last).
fn namespaces_to_join(req: &ExecRequest<'_>) -> Result<Vec<(LinuxNamespaceType, PathBuf)>> {
    let linux = req.spec.linux().as_ref();
    let mut out = Vec::new();
    for ns in linux.and_then(|l| l.namespaces().as_deref()).unwrap_or(&[]) {
        let name = namespaces::proc_name(ns.typ());
        let target = PathBuf::from(format!("/proc/{}/ns/{name}", req.container_pid));
        let theirs = namespaces::ns_identity(&target)
            .ok_or(ContainerError::NotRunning(req.container_pid))?;
        let ours = namespaces::ns_identity(Path::new(&format!("/proc/self/ns/{name}")));
        if ours != Some(theirs) {
            out.push((ns.typ(), target));
        }
    }
    out.sort_by_key(|(t, _)| *t == LinuxNamespaceType::User);
    Ok(out)
}

/// The parent side of [`super::exec`].
pub(crate) fn exec(req: &ExecRequest<'_>) -> Result<i32> {
    let p = req.process;
    if p.args().as_deref().unwrap_or(&[]).is_empty() {
        return Err(ContainerError::InvalidSpec(
            "process.args must not be empty".into(),
        ));
    }
    let joins = namespaces_to_join(req)?;
    let min_fd = 3 + req.preserve_fds as RawFd;
    // Open every namespace now: the child joins them through these fds.
    let mut pid_join = Vec::new();
    let mut child_ns: Vec<(LinuxNamespaceType, OwnedFd)> = Vec::new();
    for (typ, path) in joins {
        if typ == LinuxNamespaceType::Pid {
            pid_join.push((typ, path));
        } else {
            child_ns.push((typ, relocate(namespaces::open_ns(&path)?, min_fd)?));
        }
    }
    let console = match (p.terminal().unwrap_or(false), req.console_socket) {
        (true, Some(path)) => Some(relocate(super::console::connect(path)?, min_fd)?),
        _ => None,
    };
    let (parent_end, child_end) = sync::pair()?;
    let parent_end = Channel::from_owned(relocate(parent_end.into_owned(), min_fd)?);
    let child_end = Channel::from_owned(relocate(child_end.into_owned(), min_fd)?);
    let cgroup = Cgroup::open(&req.cgroup_path)?;

    let pid = {
        let mut saved = SavedNamespaces::enter(&pid_join)?;
        // SAFETY: the caller is single-threaded (documented requirement of `exec`).
        let pid = unsafe { clone_process(CloneFlags::empty())? };
        if pid == 0 {
            std::mem::forget(saved);
            drop(parent_end);
            let mut after_ready = false;
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                child(
                    req,
                    &child_end,
                    &child_ns,
                    console.as_ref().map(|c| c.as_raw_fd()),
                    &mut after_ready,
                )
            }));
            let msg = match res {
                Ok(Err(e)) => e.to_string(),
                Err(_) => "exec process panicked".to_string(),
            };
            report_failure(&child_end, &msg, after_ready);
            // SAFETY: end the child without running the caller's destructors.
            unsafe { libc::_exit(127) }
        }
        saved.restore();
        pid
    };
    // The process is not in the cgroup yet: on error only kill and reap it.
    let mut cleanup = Cleanup {
        pid: Some(pid),
        cgroup: None,
    };
    drop(child_end);
    drop(console);
    drop(child_ns);
    cgroup.add(pid)?;
    parent_end.send(MSG_GO, &[])?;
    if !spawn::wait_ready(&parent_end)? {
        return Err(ContainerError::Init(format!(
            "exec process exited during setup ({})",
            spawn::reap_status(cleanup.pid.take().unwrap_or(pid))
        )));
    }
    spawn::wait_exec(&parent_end)?;
    cleanup.disarm();
    Ok(pid)
}

fn child(
    req: &ExecRequest<'_>,
    sync: &Channel,
    namespaces: &[(LinuxNamespaceType, OwnedFd)],
    console_fd: Option<RawFd>,
    after_ready: &mut bool,
) -> Result<Infallible> {
    wait_go(sync)?;
    for (typ, fd) in namespaces {
        setns(fd.as_fd(), namespaces::clone_flag(*typ)).map_err(ContainerError::sys(format!(
            "join {} namespace of container process {}",
            namespaces::proc_name(*typ),
            req.container_pid
        )))?;
    }
    nix::unistd::setsid().map_err(ContainerError::sys("setsid"))?;
    if let Some(adj) = req.process.oom_score_adj() {
        process::set_oom_score_adj("self", adj)?;
    }
    let seccomp = req.spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    let prepared = apply_process(req.process, seccomp, console_fd, false)?;
    finish_process(req.process, &prepared)?;
    sync.send(MSG_READY, &[])?;
    *after_ready = true;
    process::prepare_fds(3 + req.preserve_fds)?;
    process::reset_signals();
    Err(prepared.exec())
}
