//! Which namespaces to create (clone flags) and which to join (setns), and the setns helpers.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sched::{setns, CloneFlags};
use nix::sys::stat::Mode;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use super::error::{ContainerError, Result};

/// The clone flag of a namespace type.
pub(crate) fn clone_flag(typ: LinuxNamespaceType) -> CloneFlags {
    match typ {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The `/proc/<pid>/ns/<name>` file name of a namespace type.
pub(crate) fn proc_name(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// How the init gets its namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamespacePlan {
    /// Flags passed to clone() (new namespaces created with the init).
    pub clone_flags: CloneFlags,
    /// Namespaces joined by the *parent* around clone() (and restored after): always the pid
    /// namespace; also the others unless a user namespace is joined by path.
    pub parent_joins: Vec<(LinuxNamespaceType, PathBuf)>,
    /// Namespaces joined by the child right after clone() (in this order; user last).
    pub child_joins: Vec<(LinuxNamespaceType, PathBuf)>,
    /// Flags the child unshares after its joins, once it is in its cgroup: a new cgroup
    /// namespace, and every new namespace when a user namespace is joined by path.
    pub child_unshare: CloneFlags,
    /// A new user namespace is created (the parent writes uid/gid maps).
    pub new_user: bool,
    /// The container has its own mount namespace (new or joined).
    pub has_mount: bool,
    /// A new network namespace is created.
    pub new_net: bool,
    /// The container has its own cgroup namespace (new or joined).
    pub cgroupns: bool,
}

/// Compute the plan from `linux.namespaces`.
pub(crate) fn plan(namespaces: &[LinuxNamespace]) -> Result<NamespacePlan> {
    let mut seen = CloneFlags::empty();
    for ns in namespaces {
        let flag = clone_flag(ns.typ());
        if seen.contains(flag) {
            return Err(ContainerError::InvalidSpec(format!(
                "linux.namespaces: {} listed twice",
                proc_name(ns.typ())
            )));
        }
        seen |= flag;
        if ns.typ() == LinuxNamespaceType::Time && ns.path().is_none() {
            return Err(ContainerError::InvalidSpec(
                "linux.namespaces: a new time namespace is not supported".into(),
            ));
        }
    }
    let user_joined = namespaces
        .iter()
        .any(|ns| ns.typ() == LinuxNamespaceType::User && ns.path().is_some());
    let mut p = NamespacePlan {
        clone_flags: CloneFlags::empty(),
        parent_joins: Vec::new(),
        child_joins: Vec::new(),
        child_unshare: CloneFlags::empty(),
        new_user: false,
        has_mount: false,
        new_net: false,
        cgroupns: false,
    };
    for ns in namespaces {
        let typ = ns.typ();
        let flag = clone_flag(typ);
        match ns.path() {
            Some(path) => {
                if typ == LinuxNamespaceType::Pid || !user_joined {
                    p.parent_joins.push((typ, path.clone()));
                } else {
                    p.child_joins.push((typ, path.clone()));
                }
            }
            None => {
                // A new cgroup namespace is unshared by the child once it is in its cgroup, so
                // that the namespace root is the container's cgroup.
                if typ == LinuxNamespaceType::Cgroup {
                    p.child_unshare |= flag;
                } else if typ == LinuxNamespaceType::Pid || !user_joined {
                    p.clone_flags |= flag;
                } else {
                    p.child_unshare |= flag;
                }
            }
        }
        match typ {
            LinuxNamespaceType::Mount => p.has_mount = true,
            LinuxNamespaceType::User => p.new_user = ns.path().is_none(),
            LinuxNamespaceType::Network => p.new_net = ns.path().is_none(),
            LinuxNamespaceType::Cgroup => p.cgroupns = true,
            _ => {}
        }
    }
    // Join the user namespace last: the other joins need the caller's privileges.
    p.child_joins
        .sort_by_key(|(t, _)| *t == LinuxNamespaceType::User);
    Ok(p)
}

/// Open a namespace file (close-on-exec).
pub(crate) fn open_ns(path: &Path) -> Result<OwnedFd> {
    open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(ContainerError::sys(
        format!("open namespace {}", path.display()),
    ))
}

/// Join the namespace at `path`.
pub(crate) fn join(typ: LinuxNamespaceType, path: &Path) -> Result<()> {
    let fd = open_ns(path)?;
    setns(fd.as_fd(), clone_flag(typ)).map_err(ContainerError::sys(format!(
        "join {} namespace {}",
        proc_name(typ),
        path.display()
    )))
}

/// The caller's own namespaces, saved while it temporarily joins others around clone().
pub(crate) struct SavedNamespaces {
    saved: Vec<(LinuxNamespaceType, OwnedFd)>,
    cwd: Option<OwnedFd>,
}

impl SavedNamespaces {
    /// Join `joins` (saving the caller's namespaces first). The pid namespace only affects
    /// children (pid_for_children).
    pub(crate) fn enter(joins: &[(LinuxNamespaceType, PathBuf)]) -> Result<Self> {
        let mut me = SavedNamespaces {
            saved: Vec::new(),
            cwd: None,
        };
        for (typ, path) in joins {
            let own = format!("/proc/self/ns/{}", proc_name(*typ));
            let own_fd = open_ns(Path::new(&own))?;
            if *typ == LinuxNamespaceType::Mount && me.cwd.is_none() {
                me.cwd = Some(
                    open(
                        ".",
                        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(ContainerError::sys("open current directory"))?,
                );
            }
            let target = open_ns(path)?;
            if let Err(e) = setns(target.as_fd(), clone_flag(*typ)) {
                me.restore();
                return Err(ContainerError::sys(format!(
                    "join {} namespace {}",
                    proc_name(*typ),
                    path.display()
                ))(e));
            }
            me.saved.push((*typ, own_fd));
        }
        Ok(me)
    }

    /// Go back to the caller's own namespaces (best effort: they were ours a moment ago).
    pub(crate) fn restore(&mut self) {
        for (typ, fd) in self.saved.drain(..).rev() {
            if let Err(e) = setns(fd.as_fd(), clone_flag(typ)) {
                tracing::error!("restoring own {} namespace: {e}", proc_name(typ));
            }
        }
        if let Some(cwd) = self.cwd.take() {
            let _ = nix::unistd::fchdir(cwd.as_fd());
        }
    }
}

impl Drop for SavedNamespaces {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Identity (device, inode) of a namespace file.
pub(crate) fn ns_identity(path: &Path) -> Option<(u64, u64)> {
    let m = File::open(path).and_then(|f| f.metadata()).ok()?;
    Some((m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxNamespaceBuilder;

    fn ns(typ: LinuxNamespaceType, path: Option<&str>) -> LinuxNamespace {
        let b = LinuxNamespaceBuilder::default().typ(typ);
        match path {
            Some(p) => b.path(p).build().unwrap(),
            None => b.build().unwrap(),
        }
    }

    #[test]
    fn new_namespaces_become_clone_flags() {
        let p = plan(&[
            ns(LinuxNamespaceType::Pid, None),
            ns(LinuxNamespaceType::Mount, None),
            ns(LinuxNamespaceType::Network, Some("/run/netns/x")),
            ns(LinuxNamespaceType::Uts, None),
            ns(LinuxNamespaceType::Cgroup, None),
        ])
        .unwrap();
        assert_eq!(
            p.clone_flags,
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS
        );
        assert_eq!(
            p.child_unshare,
            CloneFlags::CLONE_NEWCGROUP,
            "cgroupns after placement"
        );
        assert!(p.cgroupns);
        assert_eq!(
            p.parent_joins,
            vec![(LinuxNamespaceType::Network, PathBuf::from("/run/netns/x"))]
        );
        assert!(p.child_joins.is_empty());
        assert!(p.has_mount && !p.new_user && !p.new_net);
    }

    #[test]
    fn joined_user_namespace_moves_work_into_the_child() {
        let p = plan(&[
            ns(LinuxNamespaceType::User, Some("/proc/9/ns/user")),
            ns(LinuxNamespaceType::Pid, None),
            ns(LinuxNamespaceType::Mount, None),
            ns(LinuxNamespaceType::Ipc, Some("/proc/9/ns/ipc")),
        ])
        .unwrap();
        assert_eq!(p.clone_flags, CloneFlags::CLONE_NEWPID);
        assert_eq!(p.child_unshare, CloneFlags::CLONE_NEWNS);
        assert_eq!(
            p.child_joins[1].0,
            LinuxNamespaceType::User,
            "user joined last"
        );
        assert_eq!(p.child_joins[0].0, LinuxNamespaceType::Ipc);
    }

    #[test]
    fn duplicates_and_new_time_namespace_are_refused() {
        assert!(plan(&[
            ns(LinuxNamespaceType::Pid, None),
            ns(LinuxNamespaceType::Pid, None)
        ])
        .is_err());
        assert!(plan(&[ns(LinuxNamespaceType::Time, None)]).is_err());
    }

    #[test]
    fn clone_flags_match_the_kernel_constants() {
        assert_eq!(
            clone_flag(LinuxNamespaceType::Network).bits(),
            libc::CLONE_NEWNET
        );
        assert_eq!(
            clone_flag(LinuxNamespaceType::Cgroup).bits(),
            libc::CLONE_NEWCGROUP
        );
        assert_eq!(proc_name(LinuxNamespaceType::Mount), "mnt");
    }
}
