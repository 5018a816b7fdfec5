//! PID-1 duties in the guest: the root switch, the pseudo filesystems and power-off.
//!
//! **Root switch.** The kernel starts `/init` on the initramfs (the `rootfs` mount), where
//! pivot_root(2) fails with EINVAL, so containers could not pivot. [`switch_root`] mounts a tmpfs
//! at `/newroot`, recursively bind-mounts the initramfs's `/containers` into it when there is one
//! (hand-built test initramfs carry a rootfs there; kvmbox's own holds only the agent), moves the
//! tmpfs onto `/` (MS_MOVE) and chroots into it. The agent's root is then an ordinary mount with
//! a parent, and the container module's normal pivot_root path works (no `no_pivot` mode needed).
//!
//! **Filesystems** ([`mount_filesystems`]): /proc, /sys, /dev (devtmpfs), /dev/pts, /dev/shm,
//! /run, /tmp and cgroup2 at /sys/fs/cgroup with memory, cpu and pids enabled for children.
//!
//! **Shared directory** ([`mount_shared`]): the host's per-VM directory, virtio-fs tag
//! [`SHARE_TAG`], at [`SHARED_DIR`]; container root filesystems live below it
//! (`<SHARED_DIR>/<id>/rootfs`). No mount options: the 6.1 virtiofs client takes none but DAX
//! (the device has no DAX window); caching follows the device's FUSE replies (page cache kept
//! while a file's attributes are unchanged, entry/attribute timeouts from the device).
//!
//! **Power-off** ([`power_off`]): sync, then reboot(RB_POWER_OFF); PID 1 must never exit, so
//! if that fails it sleeps forever.

use std::fs;
use std::path::Path;

use nix::mount::{mount, MsFlags};

use super::error::AgentError;

const NONE: Option<&str> = None;

fn mnt(
    source: &str,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), AgentError> {
    let _ = fs::create_dir_all(target);
    mount(Some(source), target, fstype, flags, data).map_err(|e| AgentError::Setup {
        what: format!("mount {source} on {target}"),
        err: e.into(),
    })
}

/// Move the root from the initramfs to a tmpfs (see the module doc).
pub fn switch_root() -> Result<(), AgentError> {
    let new = "/newroot";
    mnt(
        "tmpfs",
        new,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )?;
    if Path::new("/containers").is_dir() {
        mnt(
            "/containers",
            "/newroot/containers",
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
    }
    let step = |what: &str, r: nix::Result<()>| {
        r.map_err(|e| AgentError::Setup {
            what: what.to_string(),
            err: e.into(),
        })
    };
    step("chdir /newroot", nix::unistd::chdir(new))?;
    step(
        "move /newroot onto /",
        mount(Some("."), "/", NONE, MsFlags::MS_MOVE, NONE),
    )?;
    step("chroot into the new root", nix::unistd::chroot("."))?;
    step("chdir /", nix::unistd::chdir("/"))
}

/// Mount the pseudo filesystems and enable the cgroup v2 controllers.
pub fn mount_filesystems() -> Result<(), AgentError> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("proc", "/proc", Some("proc"), nosuid, None)?;
    mnt("sysfs", "/sys", Some("sysfs"), nosuid, None)?;
    mnt(
        "devtmpfs",
        "/dev",
        Some("devtmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mnt(
        "devpts",
        "/dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    // /dev/ptmx must reach this devpts instance.
    let _ = fs::remove_file("/dev/ptmx");
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    mnt("shm", "/dev/shm", Some("tmpfs"), nosuid, Some("mode=1777"))?;
    mnt(
        "tmpfs",
        "/run",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mnt(
        "tmpfs",
        "/tmp",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mnt("cgroup2", "/sys/fs/cgroup", Some("cgroup2"), nosuid, None)?;
    for ctrl in ["+memory", "+cpu", "+pids"] {
        if let Err(e) = fs::write("/sys/fs/cgroup/cgroup.subtree_control", ctrl) {
            crate::agent_log!("enable cgroup controller {ctrl}: {e}");
        }
    }
    Ok(())
}

/// The virtio-fs tag of the host's shared directory.
pub const SHARE_TAG: &str = "kvmbox";
/// Where the shared directory is mounted in the guest.
pub const SHARED_DIR: &str = "/run/kvmbox/shared";

/// Mount the host's shared directory (virtio-fs tag [`SHARE_TAG`]) at [`SHARED_DIR`]; call after
/// [`mount_filesystems`] (it lives on the /run tmpfs).
pub fn mount_shared() -> Result<(), AgentError> {
    mnt(
        SHARE_TAG,
        SHARED_DIR,
        Some("virtiofs"),
        MsFlags::empty(),
        None,
    )
}

/// Power the VM off (never returns).
pub fn power_off() -> ! {
    nix::unistd::sync();
    // SAFETY: reboot(2) with a valid command; it only returns on failure.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    crate::agent_log!("power off failed: {}", std::io::Error::last_os_error());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
