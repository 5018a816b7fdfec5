//! Device nodes in the container's /dev: the default set, `linux.devices`, and the standard
//! /dev symlinks.

use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::error::{ContainerError, Result};
use super::rootfs::create_dest;
use super::secure_path::resolve_in_root;

/// A device node to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceNode {
    /// Path inside the container ("/dev/null").
    pub path: String,
    /// File type (S_IFCHR, S_IFBLK, S_IFIFO).
    pub kind: SFlag,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// The devices every container gets (as runc): null, zero, full, random, urandom, tty.
pub(crate) fn default_devices() -> Vec<DeviceNode> {
    [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ]
    .into_iter()
    .map(|(name, major, minor)| DeviceNode {
        path: format!("/dev/{name}"),
        kind: SFlag::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

/// Convert a `linux.devices` entry.
pub(crate) fn from_spec(d: &LinuxDevice) -> Result<DeviceNode> {
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(ContainerError::InvalidSpec(format!(
                "linux.devices {}: type 'a' is not a device node",
                d.path().display()
            )))
        }
    };
    if d.major() < 0 || d.minor() < 0 {
        return Err(ContainerError::InvalidSpec(format!(
            "linux.devices {}: negative major/minor",
            d.path().display()
        )));
    }
    Ok(DeviceNode {
        path: d.path().to_string_lossy().into_owned(),
        kind,
        major: d.major() as u64,
        minor: d.minor() as u64,
        mode: d.file_mode().unwrap_or(0o666) & 0o7777,
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

/// Create `dev` under `rootfs`: mknod, or (in a user namespace, where mknod is not allowed) a bind
/// mount of the host's node at the same path.
pub(crate) fn create(rootfs: &Path, dev: &DeviceNode, userns: bool) -> Result<()> {
    let dest = resolve_in_root(rootfs, Path::new(&dev.path))?;
    if userns {
        create_dest(&dest, true)?;
        return mount(
            Some(Path::new(&dev.path)),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(ContainerError::sys(format!(
            "bind mount device {}",
            dev.path
        )));
    }
    if let Some(parent) = dest.parent() {
        create_dest(parent, false)?;
    }
    let mode = Mode::from_bits_truncate(dev.mode);
    let rdev = makedev(dev.major, dev.minor);
    match mknod(&dest, dev.kind, mode, rdev) {
        Ok(()) => {}
        Err(nix::Error::EEXIST) => {
            let _ = std::fs::remove_file(&dest);
            mknod(&dest, dev.kind, mode, rdev)
                .map_err(ContainerError::sys(format!("mknod {}", dev.path)))?;
        }
        Err(e) => return Err(ContainerError::sys(format!("mknod {}", dev.path))(e)),
    }
    if dev.uid != 0 || dev.gid != 0 {
        nix::unistd::chown(&dest, Some(dev.uid.into()), Some(dev.gid.into()))
            .map_err(ContainerError::sys(format!("chown {}", dev.path)))?;
    }
    Ok(())
}

/// /dev/fd, stdin, stdout, stderr → /proc/self/fd/..., and /dev/ptmx → pts/ptmx when a devpts
/// is mounted at /dev/pts.
pub(crate) fn create_symlinks(rootfs: &Path, devpts: bool) -> Result<()> {
    let dev = resolve_in_root(rootfs, Path::new("/dev"))?;
    let links = [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    for (target, name) in links {
        match std::os::unix::fs::symlink(target, dev.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ContainerError::io("create symlink", dev.join(name))(e)),
        }
    }
    if devpts {
        let ptmx = dev.join("ptmx");
        let _ = std::fs::remove_file(&ptmx);
        std::os::unix::fs::symlink("pts/ptmx", &ptmx)
            .map_err(ContainerError::io("create symlink", &ptmx))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceBuilder;

    #[test]
    fn defaults_are_the_runc_set() {
        let d = default_devices();
        assert_eq!(d.len(), 6);
        assert_eq!(d[0].path, "/dev/null");
        assert_eq!((d[0].major, d[0].minor), (1, 3));
        assert_eq!(d[5].path, "/dev/tty");
    }

    #[test]
    fn spec_devices_convert() {
        let d = LinuxDeviceBuilder::default()
            .path("/dev/fuse")
            .typ(LinuxDeviceType::C)
            .major(10)
            .minor(229)
            .file_mode(0o620u32)
            .uid(1u32)
            .build()
            .unwrap();
        let n = from_spec(&d).unwrap();
        assert_eq!(n.kind, SFlag::S_IFCHR);
        assert_eq!(
            (n.major, n.minor, n.mode, n.uid, n.gid),
            (10, 229, 0o620, 1, 0)
        );
        let a = LinuxDeviceBuilder::default()
            .path("/dev/x")
            .typ(LinuxDeviceType::A)
            .build()
            .unwrap();
        assert!(from_spec(&a).is_err());
    }
}
