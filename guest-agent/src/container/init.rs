//! The container's init process (the child side of `create`): namespaces joined by the child,
//! hostname, rootfs, devices, createContainer hooks, pivot_root, sysctl, masked/readonly paths,
//! the process attributes, the exec FIFO, startContainer hooks and execve.

use std::convert::Infallible;
use std::io::Write;
use std::os::fd::RawFd;
use std::path::Path;

use oci_spec::runtime::{Hook, LinuxNamespaceType, LinuxSeccomp, Process};

use super::error::{ContainerError, Result};
use super::namespaces::{self, NamespacePlan};
use super::rootfs::{self, RootfsContext};
use super::seccomp::SeccompFilters;
use super::sync::{Channel, MSG_ERROR, MSG_GO, MSG_READY};
use super::{console, devices, hooks, paths, process, sysctl, CreateRequest};

/// Everything the init needs (borrowed from the parent's stack: the child is a copy of it).
pub(crate) struct InitContext<'a> {
    pub req: &'a CreateRequest<'a>,
    pub plan: &'a NamespacePlan,
    pub sync: Channel,
    pub fifo_fd: Option<RawFd>,
    pub console_fd: Option<RawFd>,
}

/// Run the init; never returns (execve or `_exit`).
pub(crate) fn run(ctx: InitContext<'_>) -> ! {
    let mut after_ready = false;
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        setup(&ctx, &mut after_ready)
    }));
    let msg = match res {
        Ok(Err(e)) => e.to_string(),
        Err(_) => "container init panicked".to_string(),
    };
    report_failure(&ctx.sync, &msg, after_ready);
    // SAFETY: terminate the child without running the parent's destructors or atexit handlers.
    unsafe { libc::_exit(1) }
}

/// Send the error to the parent; after READY the parent may be gone, so also print it.
pub(crate) fn report_failure(sync: &Channel, msg: &str, after_ready: bool) {
    let _ = sync.send(MSG_ERROR, msg.as_bytes());
    if after_ready {
        let _ = writeln!(std::io::stderr(), "kvmbox: container init: {msg}");
    }
}

/// Wait for the parent's GO; returns its payload (the state JSON for hooks, maybe empty).
pub(crate) fn wait_go(sync: &Channel) -> Result<Vec<u8>> {
    match sync.recv()? {
        Some((MSG_GO, payload)) => Ok(payload),
        Some((tag, _)) => Err(ContainerError::Init(format!(
            "unexpected sync message {:?}",
            tag as char
        ))),
        None => Err(ContainerError::Init(
            "the runtime went away during setup".into(),
        )),
    }
}

fn hooks_of<'a>(
    req: &'a CreateRequest<'_>,
    pick: fn(&oci_spec::runtime::Hooks) -> &Option<Vec<Hook>>,
) -> &'a [Hook] {
    req.spec
        .hooks()
        .as_ref()
        .and_then(|h| pick(h).as_deref())
        .unwrap_or(&[])
}

fn setup(ctx: &InitContext<'_>, after_ready: &mut bool) -> Result<Infallible> {
    let req = ctx.req;
    let spec = req.spec;
    let linux = spec.linux().as_ref().expect("checked by the parent");
    let proc_: &Process = spec.process().as_ref().expect("checked by the parent");
    let state_json = wait_go(&ctx.sync)?;

    for (typ, path) in &ctx.plan.child_joins {
        namespaces::join(*typ, path)?;
    }
    if !ctx.plan.child_unshare.is_empty() {
        nix::sched::unshare(ctx.plan.child_unshare)
            .map_err(ContainerError::sys("unshare namespaces"))?;
    }
    if ctx.plan.new_user || !ctx.plan.child_joins.is_empty() {
        become_root_in_user_ns()?;
    }
    nix::unistd::setsid().map_err(ContainerError::sys("setsid"))?;

    let has_uts = linux
        .namespaces()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::Uts);
    if has_uts {
        if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
            nix::unistd::sethostname(h)
                .map_err(ContainerError::sys(format!("set hostname {h:?}")))?;
        }
        if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
            // SAFETY: valid pointer and length.
            if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } < 0 {
                return Err(ContainerError::sys(format!("set domainname {d:?}"))(
                    nix::Error::last(),
                ));
            }
        }
    }

    // Root filesystem.
    let userns = linux
        .namespaces()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User);
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    rootfs::prepare_root(&req.rootfs, linux.rootfs_propagation().as_deref())?;
    let rctx = RootfsContext {
        cgroupns: ctx.plan.cgroupns,
        rootfs: &req.rootfs,
        bundle: req.bundle,
        userns,
        new_net: ctx.plan.new_net,
    };
    let mounts = spec.mounts().as_deref().unwrap_or(&[]);
    rootfs::mount_all(&rctx, mounts)?;
    let dev_is_bind = mounts.iter().any(|m| {
        m.destination() == Path::new("/dev")
            && (m.typ().as_deref() == Some("bind")
                || m.options()
                    .as_deref()
                    .unwrap_or(&[])
                    .iter()
                    .any(|o| o == "bind" || o == "rbind"))
    });
    if !dev_is_bind {
        for d in devices::default_devices() {
            devices::create(&req.rootfs, &d, userns)?;
        }
    }
    for d in linux.devices().as_deref().unwrap_or(&[]) {
        devices::create(&req.rootfs, &devices::from_spec(d)?, userns)?;
    }
    let devpts = mounts
        .iter()
        .any(|m| m.destination() == Path::new("/dev/pts") && m.typ().as_deref() == Some("devpts"));
    if !dev_is_bind {
        devices::create_symlinks(&req.rootfs, devpts)?;
    }
    hooks::run_all(
        hooks_of(req, |h| h.create_container()),
        &state_json,
        "createContainer",
    )?;

    if req.no_pivot {
        rootfs::move_root(&req.rootfs)?;
    } else {
        rootfs::pivot_root(&req.rootfs)?;
    }
    if let Some(s) = linux.sysctl() {
        sysctl::apply(s)?;
    }
    paths::readonly(linux.readonly_paths().as_deref().unwrap_or(&[]), userns)?;
    paths::mask(linux.masked_paths().as_deref().unwrap_or(&[]))?;
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        rootfs::readonly_root(userns)?;
    }

    let prepared = apply_process(proc_, linux.seccomp().as_ref(), ctx.console_fd, true)?;

    ctx.sync.send(MSG_READY, &[])?;
    *after_ready = true;
    if let Some(fd) = ctx.fifo_fd {
        let path = format!("/proc/self/fd/{fd}");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(ContainerError::io("open exec fifo", path))?;
        f.write_all(b"0")
            .map_err(ContainerError::io("write exec fifo", "exec fifo"))?;
    }
    finish_process(proc_, &prepared)?;
    hooks::run_all(
        hooks_of(req, |h| h.start_container()),
        &state_json,
        "startContainer",
    )?;
    process::prepare_fds(3 + req.preserve_fds)?;
    process::reset_signals();
    Err(prepared.exec())
}

/// In a new (or joined) user namespace the init still has the caller's kernel ids, which are not
/// mapped there: switch to the namespace's root.
fn become_root_in_user_ns() -> Result<()> {
    let in_userns = std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().take(3).collect::<Vec<_>>() != ["0", "0", "4294967295"])
        .unwrap_or(false);
    if !in_userns {
        return Ok(());
    }
    let _ = nix::unistd::setgroups(&[]);
    let root_g = nix::unistd::Gid::from_raw(0);
    let root_u = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(root_g, root_g, root_g)
        .map_err(ContainerError::sys("setresgid 0 in the user namespace"))?;
    nix::unistd::setresuid(root_u, root_u, root_u)
        .map_err(ContainerError::sys("setresuid 0 in the user namespace"))
}

/// A process ready to exec: its execve arguments and seccomp filters.
pub(crate) struct Prepared {
    exec: process::ExecArgs,
    seccomp: Option<SeccompFilters>,
    /// Install seccomp right before execve (no_new_privileges), else before dropping
    /// capabilities (installing without no_new_privs needs CAP_SYS_ADMIN).
    late_seccomp: bool,
}

impl Prepared {
    /// Install late seccomp filters and execve; only returns on failure.
    pub(crate) fn exec(&self) -> ContainerError {
        if self.late_seccomp {
            if let Some(f) = &self.seccomp {
                if let Err(e) = f.install() {
                    return e;
                }
            }
        }
        self.exec.exec()
    }
}

/// Apply `process` to the current process, first phase: compile seccomp, console, rlimits,
/// bounding set, user, umask, cwd (checked with the user's permissions), and prepare its execve.
/// The effective capabilities are then raised again (to the still-full permitted set) so that
/// the init can open the exec FIFO whatever its owner; [`finish_process`] sets the final sets.
/// `console_fd`: the console socket when process.terminal. `bind_console`: bind the pty over
/// /dev/console (init only).
pub(crate) fn apply_process(
    p: &Process,
    seccomp: Option<&LinuxSeccomp>,
    console_fd: Option<RawFd>,
    bind_console: bool,
) -> Result<Prepared> {
    let seccomp = seccomp
        .map(crate::container::seccomp::compile)
        .transpose()?;
    if let Some(sock) = console_fd.filter(|_| p.terminal() == Some(true)) {
        let size = p
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        console::setup(sock, size, p.user().uid(), p.user().gid(), bind_console)?;
    }
    process::apply_rlimits(p)?;
    process::apply_bounding(p)?;
    process::apply_user(p)?;
    process::apply_umask(p);
    process::apply_cwd(p)?;
    let exec = process::ExecArgs::prepare(p)?;
    process::raise_effective()?;
    Ok(Prepared {
        exec,
        seccomp,
        late_seccomp: p.no_new_privileges() == Some(true),
    })
}

/// Second phase: seccomp (unless late), the final capability sets and no_new_privileges.
pub(crate) fn finish_process(p: &Process, prepared: &Prepared) -> Result<()> {
    if !prepared.late_seccomp {
        if let Some(f) = &prepared.seccomp {
            f.install()?;
        }
    }
    process::apply_caps(p)?;
    process::apply_no_new_privileges(p)
}
