//! Root filesystem setup inside the container's mount namespace: propagation, the rootfs bind
//! mount, the spec's mounts (in order), pivot_root / MS_MOVE+chroot and the read-only root.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use oci_spec::runtime::Mount;

use super::cgroups::{self, Layout, CGROUP_ROOT};
use super::error::{ContainerError, Result};
use super::mount_options::{self, MountOptions};
use super::secure_path::resolve_in_root;

const NONE: Option<&str> = None;

/// What the mount code needs to know besides the mount list.
pub(crate) struct RootfsContext<'a> {
    /// Absolute host path of the rootfs.
    pub rootfs: &'a Path,
    /// Bundle directory (relative bind sources are resolved against it).
    pub bundle: &'a Path,
    /// The container runs in a new user namespace (locked mount flags, no mknod, sysfs rules).
    pub userns: bool,
    /// The container has a new network namespace (sysfs can be mounted).
    pub new_net: bool,
    /// The container has its own cgroup namespace (cgroup filesystems can be mounted natively).
    pub cgroupns: bool,
}

fn mount_err(what: &str, dest: &Path) -> impl FnOnce(nix::Error) -> ContainerError {
    ContainerError::sys(format!("{what} {}", dest.display()))
}

/// Make `/` private/slave/shared recursively (linux.rootfsPropagation, default rprivate) and
/// bind the rootfs onto itself so that it is a mount point.
pub(crate) fn prepare_root(rootfs: &Path, propagation: Option<&str>) -> Result<()> {
    let prop = match propagation.filter(|p| !p.is_empty()) {
        Some(p) => mount_options::propagation_flag(p).ok_or_else(|| {
            ContainerError::InvalidSpec(format!("linux.rootfsPropagation: unknown value {p:?}"))
        })?,
        None => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
    };
    // Shared propagation is applied to the rootfs below; the host root stays slave.
    let root_prop = if prop.contains(MsFlags::MS_SHARED) {
        MsFlags::MS_SLAVE | MsFlags::MS_REC
    } else {
        prop
    };
    mount(NONE, "/", NONE, root_prop, NONE)
        .map_err(mount_err("set propagation of", Path::new("/")))?;
    mount(
        Some(rootfs),
        rootfs,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .map_err(mount_err("bind mount rootfs", rootfs))?;
    if prop.contains(MsFlags::MS_SHARED) {
        mount(NONE, rootfs, NONE, prop, NONE).map_err(mount_err("set propagation of", rootfs))?;
    }
    Ok(())
}

/// Perform every spec mount, in order.
pub(crate) fn mount_all(ctx: &RootfsContext<'_>, mounts: &[Mount]) -> Result<()> {
    for m in mounts {
        mount_one(ctx, m)?;
    }
    Ok(())
}

/// Flags of the mount at `path` that an unprivileged (user namespace) remount must keep.
fn locked_flags(path: &Path) -> MsFlags {
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs_flag, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs_flag) {
            out |= ms;
        }
    }
    out
}

/// Remount a bind mount with `flags` (keeping locked flags in a user namespace).
pub(crate) fn remount_bind(dest: &Path, flags: MsFlags, userns: bool) -> Result<()> {
    let mut f = flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    if userns {
        let locked = locked_flags(dest);
        // Read-only may be dropped only if the caller asked for rw explicitly: keep it simple and
        // keep every locked flag, atime flags included.
        f |= locked & !MsFlags::MS_RDONLY;
        if locked.contains(MsFlags::MS_RDONLY) {
            f |= MsFlags::MS_RDONLY;
        }
    }
    mount(NONE, dest, NONE, f, NONE).map_err(mount_err("remount", dest))
}

/// Create `dest` as a directory (or an empty file when `file` is true), parents included.
pub(crate) fn create_dest(dest: &Path, file: bool) -> Result<()> {
    if file {
        if dest.symlink_metadata().is_ok() {
            return Ok(());
        }
        if let Some(parent) = dest.parent() {
            mkdir_all(parent)?;
        }
        match fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dest)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(ContainerError::io("create mount point", dest)(e)),
        }
    } else {
        mkdir_all(dest)
    }
}

fn mkdir_all(dir: &Path) -> Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
    {
        Ok(()) => Ok(()),
        // mkdir on an existing directory of a read-only mount may say EROFS.
        Err(_) if dir.is_dir() => Ok(()),
        Err(e) => Err(ContainerError::io("create mount point", dir)(e)),
    }
}

fn mount_one(ctx: &RootfsContext<'_>, m: &Mount) -> Result<()> {
    let dest = resolve_in_root(ctx.rootfs, m.destination())?;
    let typ = m.typ().as_deref().unwrap_or("");
    let opts = mount_options::parse(m.options().as_deref().unwrap_or(&[]));
    if opts.bind || typ == "bind" {
        return bind_mount(ctx, m, &dest, &opts);
    }
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(ctx, &dest, &opts);
    }
    create_dest(&dest, false)?;
    let source: PathBuf = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    let flags = opts.flags & !MsFlags::MS_REMOUNT;
    let res = mount(Some(&source), &dest, Some(typ), flags, data);
    match res {
        Ok(()) => {}
        // In a user namespace without its own network namespace sysfs cannot be mounted: bind
        // the host's instead (as runc does).
        Err(nix::Error::EPERM) if typ == "sysfs" && ctx.userns && !ctx.new_net => {
            mount(
                Some("/sys"),
                &dest,
                NONE,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                NONE,
            )
            .map_err(mount_err("bind mount /sys on", &dest))?;
            if flags.contains(MsFlags::MS_RDONLY) {
                remount_bind(&dest, flags, ctx.userns)?;
            }
        }
        Err(e) => {
            return Err(ContainerError::sys(format!(
                "mount {} on {}",
                typ,
                m.destination().display()
            ))(e))
        }
    }
    for p in &opts.propagation {
        mount(NONE, &dest, NONE, *p, NONE).map_err(mount_err("set propagation of", &dest))?;
    }
    Ok(())
}

fn bind_mount(ctx: &RootfsContext<'_>, m: &Mount, dest: &Path, opts: &MountOptions) -> Result<()> {
    let Some(src) = m.source() else {
        return Err(ContainerError::InvalidSpec(format!(
            "mount {}: a bind mount needs a source",
            m.destination().display()
        )));
    };
    let src = if src.is_absolute() {
        src.clone()
    } else {
        ctx.bundle.join(src)
    };
    let meta = fs::metadata(&src).map_err(ContainerError::io("bind mount source", &src))?;
    create_dest(dest, !meta.is_dir())?;
    let mut flags = MsFlags::MS_BIND;
    if opts.recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(&src), dest, NONE, flags, NONE).map_err(|e| {
        ContainerError::sys(format!(
            "bind mount {} on {}",
            src.display(),
            m.destination().display()
        ))(e)
    })?;
    let extra = opts.flags & !(MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_REC);
    if !extra.is_empty() {
        remount_bind(dest, extra, ctx.userns)?;
    }
    for p in &opts.propagation {
        mount(NONE, dest, NONE, *p, NONE).map_err(mount_err("set propagation of", dest))?;
    }
    Ok(())
}

/// Mount the container's cgroups at `dest`. v2: cgroup2 in a cgroup namespace, else a bind
/// mount of the init's own cgroup. v1: a tmpfs with one mount per hierarchy: a native cgroup
/// mount in a cgroup namespace (rooted at the container's cgroup), else a bind mount of the
/// init's own cgroup directory.
fn mount_cgroup(ctx: &RootfsContext<'_>, dest: &Path, opts: &MountOptions) -> Result<()> {
    create_dest(dest, false)?;
    let ro = opts.flags.contains(MsFlags::MS_RDONLY);
    let base = opts.flags & !(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT);
    let own =
        cgroups::proc_cgroups("self").map_err(ContainerError::io("read", "/proc/self/cgroup"))?;
    let own_path = |key: &str| own.iter().find(|(c, _)| c == key).map(|(_, p)| p.clone());
    if cgroups::layout() == Layout::V2 {
        if ctx.cgroupns {
            return mount(
                Some("cgroup"),
                dest,
                Some("cgroup2"),
                opts.flags & !MsFlags::MS_REMOUNT,
                NONE,
            )
            .map_err(mount_err("mount cgroup2 on", dest));
        }
        let path = own_path("").unwrap_or_default();
        let src = Path::new(CGROUP_ROOT).join(path.trim_start_matches('/'));
        mount(
            Some(&src),
            dest,
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        )
        .map_err(mount_err("bind mount cgroup on", dest))?;
        if ro || !base.is_empty() {
            remount_bind(dest, opts.flags & !MsFlags::MS_REMOUNT, ctx.userns)?;
        }
        return Ok(());
    }
    mount(Some("tmpfs"), dest, Some("tmpfs"), base, Some("mode=755"))
        .map_err(mount_err("mount tmpfs for cgroups on", dest))?;
    let entries = fs::read_dir(CGROUP_ROOT).map_err(ContainerError::io("read", CGROUP_ROOT))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name_s = name.to_string_lossy();
        let target = dest.join(&name);
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_symlink() {
            if let Ok(link) = fs::read_link(entry.path()) {
                let _ = std::os::unix::fs::symlink(link, &target);
            }
            continue;
        }
        if !ft.is_dir() {
            continue;
        }
        // The hierarchy's key in /proc/self/cgroup and its cgroup mount options.
        let (key, fstype, data) = match name_s.as_ref() {
            "unified" => (String::new(), "cgroup2", None),
            "systemd" => (
                "name=systemd".to_string(),
                "cgroup",
                Some("none,name=systemd".to_string()),
            ),
            n => (n.to_string(), "cgroup", Some(n.to_string())),
        };
        let Some(path) = own_path(&key) else { continue };
        mkdir_all(&target)?;
        let flags = base
            | if ro {
                MsFlags::MS_RDONLY
            } else {
                MsFlags::empty()
            };
        if ctx.cgroupns {
            mount(
                Some("cgroup"),
                &target,
                Some(fstype),
                flags,
                data.as_deref(),
            )
            .map_err(mount_err("mount cgroup hierarchy on", &target))?;
            continue;
        }
        let src = entry.path().join(path.trim_start_matches('/'));
        mount(
            Some(&src),
            &target,
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        )
        .map_err(mount_err("bind mount cgroup hierarchy on", &target))?;
        if !flags.is_empty() {
            remount_bind(&target, flags, ctx.userns)?;
        }
    }
    if ro {
        mount(
            NONE,
            dest,
            NONE,
            base | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            Some("mode=755"),
        )
        .map_err(mount_err("remount read-only", dest))?;
    }
    Ok(())
}

/// Make the rootfs the root: `pivot_root(".", ".")` then detach the old root.
pub(crate) fn pivot_root(rootfs: &Path) -> Result<()> {
    nix::unistd::chdir(rootfs).map_err(mount_err("chdir to", rootfs))?;
    nix::unistd::pivot_root(".", ".").map_err(mount_err("pivot_root to", rootfs))?;
    // Do not let the unmount of the old root propagate anywhere.
    mount(NONE, ".", NONE, MsFlags::MS_SLAVE | MsFlags::MS_REC, NONE)
        .map_err(mount_err("make old root slave", Path::new("/")))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(mount_err("detach old root", Path::new("/")))?;
    nix::unistd::chdir("/").map_err(mount_err("chdir to", Path::new("/")))
}

/// The no-pivot alternative: move the rootfs mount onto `/` and chroot into it.
pub(crate) fn move_root(rootfs: &Path) -> Result<()> {
    nix::unistd::chdir(rootfs).map_err(mount_err("chdir to", rootfs))?;
    mount(Some(rootfs), "/", NONE, MsFlags::MS_MOVE, NONE)
        .map_err(mount_err("move mount", rootfs))?;
    nix::unistd::chroot(".").map_err(mount_err("chroot to", rootfs))?;
    nix::unistd::chdir("/").map_err(mount_err("chdir to", Path::new("/")))
}

/// Remount `/` read-only (root.readonly).
pub(crate) fn readonly_root(userns: bool) -> Result<()> {
    remount_bind(Path::new("/"), MsFlags::MS_RDONLY, userns)
}
