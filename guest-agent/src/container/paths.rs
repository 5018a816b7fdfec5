//! maskedPaths (hidden behind /dev/null or an empty read-only tmpfs) and readonlyPaths (bind
//! mounted onto themselves, read-only). Run after pivot_root, paths are container paths.

use std::path::Path;

use nix::mount::{mount, MsFlags};

use super::error::{ContainerError, Result};
use super::rootfs::remount_bind;

const NONE: Option<&str> = None;

/// Mask every path of `paths` that exists.
pub(crate) fn mask<S: AsRef<str>>(paths: &[S]) -> Result<()> {
    for p in paths {
        let p = Path::new(p.as_ref());
        let Ok(meta) = p.symlink_metadata() else {
            continue;
        };
        let res = if meta.is_dir() {
            mount(Some("tmpfs"), p, Some("tmpfs"), MsFlags::MS_RDONLY, NONE)
        } else {
            mount(Some("/dev/null"), p, NONE, MsFlags::MS_BIND, NONE)
        };
        match res {
            Ok(()) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(ContainerError::sys(format!("mask {}", p.display()))(e)),
        }
    }
    Ok(())
}

/// Make every path of `paths` that exists read-only.
pub(crate) fn readonly<S: AsRef<str>>(paths: &[S], userns: bool) -> Result<()> {
    for p in paths {
        let p = Path::new(p.as_ref());
        match mount(Some(p), p, NONE, MsFlags::MS_BIND | MsFlags::MS_REC, NONE) {
            Ok(()) => {}
            Err(nix::Error::ENOENT) => continue,
            Err(e) => {
                return Err(ContainerError::sys(format!(
                    "bind mount {} read-only",
                    p.display()
                ))(e))
            }
        }
        remount_bind(
            p,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            userns,
        )?;
    }
    Ok(())
}
