//! The host directory a microVM shares with its guest over virtio-fs (tag [`SHARE_TAG`]):
//! `<state dir of the container that booted the VM>/shared/`. The guest agent mounts it at
//! [`GUEST_SHARED_DIR`] before it answers Hello.
//!
//! Each container of the VM gets `shared/<cid>/`; its rootfs is bind-mounted (recursively, made
//! private) onto `shared/<cid>/rootfs`, remounted read-only when the spec's root.readonly is set.
//! [`remove_container`] and [`detach_mounts_under`] take every such mount away again (lazy
//! unmount, deepest first) before anything is deleted, so that removing a state directory can
//! never reach into a container's rootfs.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::error::VmLaunchError;

/// The virtio-fs tag of the shared directory.
pub const SHARE_TAG: &str = "kvmbox";
/// Where the agent mounts the shared directory in the guest.
pub const GUEST_SHARED_DIR: &str = "/run/kvmbox/shared";
/// The shared directory's name inside a state directory.
pub const SHARED_DIR_NAME: &str = "shared";

/// The shared directory of a VM booted from `state_dir`.
pub fn shared_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(SHARED_DIR_NAME)
}

/// The guest path of container `id`'s rootfs: `/run/kvmbox/shared/<id>/rootfs`.
pub fn guest_rootfs_path(id: &str) -> String {
    format!("{GUEST_SHARED_DIR}/{id}/rootfs")
}

/// Create `dir` with mode 0700 (an existing directory is fine).
pub fn create_private_dir(dir: &Path) -> Result<(), VmLaunchError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| VmLaunchError::io("shared directory", dir, e))
}

/// Bind-mount `rootfs` onto `<shared>/<id>/rootfs` (read-only when `readonly`) and return the
/// mount point. On error nothing stays mounted and `<shared>/<id>` is removed.
pub fn mount_rootfs(
    shared: &Path,
    id: &str,
    rootfs: &Path,
    readonly: bool,
) -> Result<PathBuf, VmLaunchError> {
    guest_agent::protocol::validate_id("container id", id).map_err(VmLaunchError::Share)?;
    let meta =
        std::fs::metadata(rootfs).map_err(|e| VmLaunchError::io("container rootfs", rootfs, e))?;
    if !meta.is_dir() {
        return Err(VmLaunchError::io(
            "container rootfs",
            rootfs,
            std::io::Error::other("not a directory"),
        ));
    }
    let target = shared.join(id).join("rootfs");
    create_private_dir(&target)?;
    let result = bind(rootfs, &target, readonly);
    if result.is_err() {
        let _ = remove_container(shared, id);
    }
    result.map(|()| target)
}

fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), VmLaunchError> {
    let err = |what: &'static str| {
        move |e: nix::Error| VmLaunchError::io(what, target, std::io::Error::from(e))
    };
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("bind mount of the rootfs"))?;
    // Private: mounts made later under the source (or the target) do not propagate.
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("make the rootfs bind mount private"))?;
    if readonly {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(err("read-only remount of the rootfs"))?;
    }
    Ok(())
}

/// Bind-mount the host path `source` (a file or directory) onto `<shared>/<id>/mounts/<n>`
/// (read-only when `readonly`) and return the guest path of that mount point. The caller
/// removes `<shared>/<id>` on error ([`remove_container`]).
pub fn mount_host_path(
    shared: &Path,
    id: &str,
    n: usize,
    source: &Path,
    readonly: bool,
) -> Result<String, VmLaunchError> {
    guest_agent::protocol::validate_id("container id", id).map_err(VmLaunchError::Share)?;
    let meta =
        std::fs::metadata(source).map_err(|e| VmLaunchError::io("bind mount source", source, e))?;
    let dir = shared.join(id).join("mounts");
    create_private_dir(&dir)?;
    let target = dir.join(n.to_string());
    if meta.is_dir() {
        create_private_dir(&target)?;
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&target)
            .map_err(|e| VmLaunchError::io("bind mount point", &target, e))?;
    }
    bind(source, &target, readonly)?;
    Ok(format!("{GUEST_SHARED_DIR}/{id}/mounts/{n}"))
}

/// Create the missing mount points `dests` (absolute container paths; `true` = a file) in
/// `rootfs` before it is shared read-only, as runc does in a read-only rootfs: the guest
/// could not create them. A walk that meets a symlink or a non-directory stops there (the
/// guest resolves it and reports what fails); nothing outside `rootfs` is touched.
pub fn create_mount_points(rootfs: &Path, dests: &[(PathBuf, bool)]) {
    for (dest, is_file) in dests {
        let parts: Vec<_> = dest
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let mut cur = rootfs.to_path_buf();
        for (i, part) in parts.iter().enumerate() {
            cur.push(part);
            let last = i + 1 == parts.len();
            match std::fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let made = if last && *is_file {
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&cur)
                            .map(drop)
                    } else {
                        std::fs::DirBuilder::new().mode(0o755).create(&cur)
                    };
                    if let Err(e) = made {
                        tracing::debug!("mount point {}: {e}", cur.display());
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
}

/// Unmount everything under `<shared>/<id>` and remove that directory (absent is fine).
pub fn remove_container(shared: &Path, id: &str) -> Result<(), VmLaunchError> {
    guest_agent::protocol::validate_id("container id", id).map_err(VmLaunchError::Share)?;
    remove_tree(&shared.join(id))
}

/// Unmount everything under `dir`, then remove it (absent is fine). Refuses to delete while
/// something is still mounted there.
pub fn remove_tree(dir: &Path) -> Result<(), VmLaunchError> {
    detach_mounts_under(dir)?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(VmLaunchError::io("remove shared directory", dir, e)),
    }
}

/// Lazily unmount (MNT_DETACH) every mount at or below `dir`, deepest first, and check that
/// none is left.
pub fn detach_mounts_under(dir: &Path) -> Result<(), VmLaunchError> {
    let Some(dir) = canonical(dir) else {
        return Ok(());
    };
    for point in mounts_under(&dir)? {
        match umount2(&point, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(VmLaunchError::io(
                    "unmount",
                    &point,
                    std::io::Error::from(e),
                ))
            }
        }
    }
    let left = mounts_under(&dir)?;
    if let Some(first) = left.first() {
        return Err(VmLaunchError::io(
            "unmount",
            first,
            std::io::Error::other("still mounted after a lazy unmount"),
        ));
    }
    Ok(())
}

fn canonical(dir: &Path) -> Option<PathBuf> {
    match dir.canonicalize() {
        Ok(p) => Some(p),
        Err(_) if dir.is_absolute() => Some(dir.to_path_buf()),
        Err(_) => None,
    }
}

/// Mount points at or below `dir` in this process's mount namespace, deepest first.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, VmLaunchError> {
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(|e| VmLaunchError::io("read", info, e))?;
    Ok(mount_points_under(&text, dir))
}

/// The mount points of `mountinfo` text at or below `dir`, deepest first (no duplicates).
pub fn mount_points_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// Undo mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths() {
        assert_eq!(guest_rootfs_path("c1"), "/run/kvmbox/shared/c1/rootfs");
        assert_eq!(shared_dir(Path::new("/s/c1")), Path::new("/s/c1/shared"));
    }

    #[test]
    fn mountinfo_points_under_a_dir_deepest_first() {
        let text = "\
22 1 8:1 / / rw shared:1 - ext4 /dev/sda1 rw
40 22 8:1 /b /run/k/c1/shared/c1/rootfs rw - ext4 /dev/sda1 rw
41 40 0:5 / /run/k/c1/shared/c1/rootfs/proc rw - proc proc rw
42 22 8:1 /b /run/k/c10/shared rw - ext4 /dev/sda1 rw
43 22 8:1 /x /run/k/c1/shared/a\\040b rw - ext4 /dev/sda1 rw
";
        let got = mount_points_under(text, Path::new("/run/k/c1"));
        assert_eq!(
            got,
            vec![
                PathBuf::from("/run/k/c1/shared/c1/rootfs/proc"),
                PathBuf::from("/run/k/c1/shared/c1/rootfs"),
                PathBuf::from("/run/k/c1/shared/a b"),
            ]
        );
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn rootfs_bind_mount_is_removed_without_touching_the_rootfs() {
        if !is_root() {
            eprintln!("skipped: needs root for mount(2)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/keep"), "data").unwrap();
        let shared = d.path().join("state/shared");
        create_private_dir(&shared).unwrap();
        let target = mount_rootfs(&shared, "c1", &rootfs, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("etc/keep")).unwrap(),
            "data"
        );
        let err = std::fs::write(target.join("etc/new"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        assert_eq!(mounts_under(&shared).unwrap(), vec![target.clone()]);
        // Removing the whole state directory unmounts first: the rootfs keeps its files.
        remove_tree(&d.path().join("state")).unwrap();
        assert!(mounts_under(&shared).unwrap().is_empty());
        assert!(!shared.exists());
        assert_eq!(
            std::fs::read_to_string(rootfs.join("etc/keep")).unwrap(),
            "data"
        );
    }

    #[test]
    fn mount_points_are_created_inside_the_rootfs_only() {
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::os::unix::fs::symlink(d.path(), rootfs.join("escape")).unwrap();
        create_mount_points(
            &rootfs,
            &[
                (PathBuf::from("/host/dir"), false),
                (PathBuf::from("/etc/resolv.conf"), true),
                (PathBuf::from("/escape/outside"), false),
            ],
        );
        assert!(rootfs.join("host/dir").is_dir());
        assert!(rootfs.join("etc/resolv.conf").is_file());
        assert!(!d.path().join("outside").exists());
    }

    #[test]
    fn bad_rootfs_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let shared = d.path().join("shared");
        let err = mount_rootfs(&shared, "c1", &d.path().join("nope"), false).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(!shared.join("c1").exists());
        let err = mount_rootfs(&shared, "../x", d.path(), false).unwrap_err();
        assert!(err.to_string().contains("container id"), "{err}");
    }
}
