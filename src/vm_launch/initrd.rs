//! The initrd of a container's microVM: the agent archive (the static agent as `/init` plus
//! the directories it needs), cached by content hash, followed by the container rootfs packed
//! under `containers/<id>/rootfs/`; the kernel unpacks both archives in order.
//!
//! Rootfs packing: directories, regular files (streamed, never loaded whole), symlinks (kept
//! verbatim; they resolve inside the container root in the guest), hard links (one data copy;
//! the kernel relinks members sharing an inode number), character/block devices and FIFOs
//! (preserved with their device numbers); sockets are skipped. Modes, uid/gid and mtimes are
//! kept. Symlinks are never followed, and directories on other filesystems (mounts inside the
//! rootfs) are packed empty, so nothing outside the rootfs is read.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::VmLaunchError;
use super::plan::VmPlan;
use crate::vmm::initramfs::{CpioHeader, CpioWriter};

/// Where containers' root filesystems live in the guest.
pub const GUEST_CONTAINERS_DIR: &str = "/containers";

/// Directories the agent archive creates at the guest root.
pub const AGENT_DIRS: [&str; 6] = ["dev", "proc", "sys", "run", "tmp", "containers"];

/// Bumped whenever the agent archive layout changes (part of the cache key).
const AGENT_LAYOUT_VERSION: &str = "kvmbox agent initramfs v1";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// The guest path of container `id`'s rootfs: `/containers/<id>/rootfs`.
pub fn guest_rootfs_path(id: &str) -> String {
    format!("{GUEST_CONTAINERS_DIR}/{id}/rootfs")
}

/// The id must be usable as one path component (the protocol's id rule).
fn check_id(id: &str) -> Result<(), VmLaunchError> {
    guest_agent::protocol::validate_id("container id", id).map_err(VmLaunchError::Initrd)
}

/// The agent archive: `/init` = the agent (0755), /dev/console, and [`AGENT_DIRS`].
pub fn agent_archive(agent: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut w = CpioWriter::new(Vec::with_capacity(agent.len() + 4096));
    let mut ino = 0;
    let mut next = |mode: u32, nlink: u32| {
        ino += 1;
        CpioHeader {
            ino,
            mode,
            nlink,
            ..CpioHeader::default()
        }
    };
    for d in AGENT_DIRS {
        w.entry(d.as_bytes(), &next(S_IFDIR | 0o755, 2), &[])?;
    }
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    let mut console = next(S_IFCHR | 0o600, 1);
    console.rdev = (5, 1);
    w.entry(b"dev/console", &console, &[])?;
    w.entry(b"init", &next(S_IFREG | 0o755, 1), agent)?;
    w.finish()
}

/// The agent archive's cache file name: the SHA-256 of the layout version and the agent.
pub fn agent_archive_key(agent: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(AGENT_LAYOUT_VERSION.as_bytes());
    h.update([0]);
    h.update(agent);
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The agent archive from `${cache}/initramfs/<hash>.cpio`, created (tmp + rename) when
/// missing. Returns the cached file, or the bytes when the cache is not writable.
fn cached_agent_archive(agent: &Path, cache_dir: &Path) -> Result<AgentArchive, VmLaunchError> {
    let bytes = std::fs::read(agent).map_err(|e| {
        VmLaunchError::AgentMissing(format!(
            "guest agent {}: {e}; {}",
            agent.display(),
            super::agent::AGENT_BUILD_HINT
        ))
    })?;
    let path = cache_dir
        .join("initramfs")
        .join(format!("{}.cpio", agent_archive_key(&bytes)));
    if path.is_file() {
        return Ok(AgentArchive::Cached(path));
    }
    let archive = agent_archive(&bytes).map_err(|e| VmLaunchError::io("guest agent", agent, e))?;
    match write_atomic(&path, &archive) {
        Ok(()) => Ok(AgentArchive::Cached(path)),
        Err(e) => {
            tracing::debug!("agent initramfs cache {}: {e}", path.display());
            Ok(AgentArchive::Bytes(archive))
        }
    }
}

enum AgentArchive {
    Cached(PathBuf),
    Bytes(Vec<u8>),
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    // Readable by every kvmbox user of the shared cache (tempfile creates 0600).
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn header_for(meta: &std::fs::Metadata, ino: u32, mode_type: u32) -> CpioHeader {
    CpioHeader {
        ino,
        mode: mode_type | (meta.mode() & 0o7777),
        uid: meta.uid(),
        gid: meta.gid(),
        nlink: if mode_type == S_IFDIR { 2 } else { 1 },
        mtime: meta.mtime().clamp(0, i64::from(u32::MAX)) as u32,
        rdev: (0, 0),
    }
}

/// Packs one rootfs as a newc archive.
struct RootfsPacker<'a, W: Write> {
    w: CpioWriter<W>,
    root: &'a Path,
    root_dev: u64,
    next_ino: u32,
    /// (dev, inode) of multiply-linked files → their archive inode.
    links: HashMap<(u64, u64), u32>,
    /// Members skipped (sockets), for the log.
    skipped: Vec<PathBuf>,
}

impl<W: Write> RootfsPacker<'_, W> {
    fn ino(&mut self) -> u32 {
        self.next_ino += 1;
        self.next_ino
    }

    fn io_err(&self, path: &Path, e: std::io::Error) -> VmLaunchError {
        VmLaunchError::io("rootfs", self.root.join(path), e)
    }

    /// Add `rel` (relative to the rootfs) as `name`; recurse into directories.
    fn add(&mut self, rel: &Path, name: &[u8]) -> Result<(), VmLaunchError> {
        let host = self.root.join(rel);
        let meta = std::fs::symlink_metadata(&host).map_err(|e| self.io_err(rel, e))?;
        let ft = meta.file_type();
        let werr = |s: &Self, e| s.io_err(rel, e);
        if ft.is_dir() {
            let h = header_for(&meta, self.ino(), S_IFDIR);
            self.w.entry(name, &h, &[]).map_err(|e| werr(self, e))?;
            if meta.dev() != self.root_dev {
                return Ok(());
            }
            let mut children: Vec<_> = std::fs::read_dir(&host)
                .map_err(|e| self.io_err(rel, e))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(|e| self.io_err(rel, e))?;
            children.sort();
            for child in children {
                let mut child_name = name.to_vec();
                child_name.push(b'/');
                child_name.extend_from_slice(child.as_bytes());
                self.add(&rel.join(&child), &child_name)?;
            }
        } else if ft.is_file() {
            let mut h = header_for(&meta, 0, S_IFREG);
            let mut size = meta.len();
            if meta.nlink() > 1 {
                h.nlink = u32::try_from(meta.nlink()).unwrap_or(u32::MAX);
                match self.links.get(&(meta.dev(), meta.ino())) {
                    // Later links carry no data: the kernel links them to the first one.
                    Some(&ino) => {
                        h.ino = ino;
                        size = 0;
                    }
                    None => {
                        h.ino = self.ino();
                        self.links.insert((meta.dev(), meta.ino()), h.ino);
                    }
                }
            } else {
                h.ino = self.ino();
            }
            if size == 0 {
                self.w.entry(name, &h, &[]).map_err(|e| werr(self, e))?;
            } else {
                let f = File::open(&host).map_err(|e| self.io_err(rel, e))?;
                self.w
                    .entry_from_reader(name, &h, size, f)
                    .map_err(|e| werr(self, e))?;
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&host).map_err(|e| self.io_err(rel, e))?;
            let mut h = header_for(&meta, self.ino(), S_IFLNK);
            h.mode = S_IFLNK | 0o777;
            self.w
                .entry(name, &h, target.as_os_str().as_bytes())
                .map_err(|e| werr(self, e))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let mut h = header_for(&meta, self.ino(), meta.mode() & 0o170000);
            let rdev = meta.rdev();
            h.rdev = (libc::major(rdev), libc::minor(rdev));
            self.w.entry(name, &h, &[]).map_err(|e| werr(self, e))?;
        } else {
            self.skipped.push(rel.to_path_buf());
        }
        Ok(())
    }
}

/// Write container `id`'s `rootfs` as a newc archive under `containers/<id>/rootfs/` to `out`.
pub fn write_rootfs_archive<W: Write>(out: W, id: &str, rootfs: &Path) -> Result<W, VmLaunchError> {
    check_id(id)?;
    let root = rootfs
        .canonicalize()
        .map_err(|e| VmLaunchError::io("container rootfs", rootfs, e))?;
    let root_meta =
        std::fs::metadata(&root).map_err(|e| VmLaunchError::io("container rootfs", &root, e))?;
    if !root_meta.is_dir() {
        return Err(VmLaunchError::Initrd(format!(
            "container rootfs {}: not a directory",
            root.display()
        )));
    }
    let mut p = RootfsPacker {
        w: CpioWriter::new(out),
        root: &root,
        root_dev: root_meta.dev(),
        next_ino: 0,
        links: HashMap::new(),
        skipped: Vec::new(),
    };
    let io = |e| VmLaunchError::io("initrd", &root, e);
    for dir in ["containers".to_string(), format!("containers/{id}")] {
        let h = CpioHeader {
            ino: p.ino(),
            mode: S_IFDIR | 0o755,
            nlink: 2,
            ..CpioHeader::default()
        };
        p.w.entry(dir.as_bytes(), &h, &[]).map_err(io)?;
    }
    let top = guest_rootfs_path(id);
    p.add(Path::new(""), top.trim_start_matches('/').as_bytes())?;
    if !p.skipped.is_empty() {
        tracing::debug!(
            "initrd: skipped sockets in {}: {:?}",
            root.display(),
            p.skipped
        );
    }
    p.w.finish().map_err(io)
}

/// Build `<state_dir>/initrd.cpio`: the (cached) agent archive, then container `id`'s rootfs.
/// Written to a temporary file and renamed, so a failure leaves no initrd behind.
pub fn build_initrd(
    plan: &VmPlan,
    id: &str,
    rootfs: &Path,
    state_dir: &Path,
) -> Result<PathBuf, VmLaunchError> {
    check_id(id)?;
    let agent = cached_agent_archive(&plan.agent, &plan.cache_dir)?;
    let out_path = state_dir.join("initrd.cpio");
    let tmp = tempfile::NamedTempFile::new_in(state_dir)
        .map_err(|e| VmLaunchError::io("initrd", state_dir, e))?;
    let io = |e| VmLaunchError::io("initrd", &out_path, e);
    let mut out = BufWriter::with_capacity(256 * 1024, tmp);
    match &agent {
        AgentArchive::Cached(p) => {
            let mut f = File::open(p).map_err(|e| VmLaunchError::io("agent initramfs", p, e))?;
            std::io::copy(&mut f, &mut out).map_err(io)?;
        }
        AgentArchive::Bytes(b) => out.write_all(b).map_err(io)?,
    }
    let out = write_rootfs_archive(out, id, rootfs)?;
    let tmp = out.into_inner().map_err(|e| io(e.into_error()))?;
    tmp.persist(&out_path).map_err(|e| io(e.error))?;
    Ok(out_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::initramfs::{parse_newc, CpioMember};
    use std::os::unix::fs::PermissionsExt;

    fn find<'a>(members: &'a [CpioMember], name: &str) -> &'a CpioMember {
        members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} not in {:?}", names(members)))
    }

    fn names(members: &[CpioMember]) -> Vec<&str> {
        members.iter().map(|m| m.name.as_str()).collect()
    }

    fn test_plan(dir: &Path) -> VmPlan {
        let agent = dir.join("kvmbox-agent");
        std::fs::write(&agent, b"\x7fELF agent").unwrap();
        VmPlan {
            kernel: dir.join("vmlinux"),
            kernel_from: "test",
            agent,
            vmm: dir.join("kvmbox-vmm"),
            vcpus: 1,
            vcpus_from: "test",
            memory_mib: 128,
            memory_from: "test",
            agent_timeout: std::time::Duration::from_secs(1),
            cpu_profile: None,
            extra_cmdline: Vec::new(),
            cache_dir: dir.join("cache"),
        }
    }

    fn sample_rootfs(dir: &Path) -> PathBuf {
        let r = dir.join("rootfs");
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::create_dir_all(r.join("etc/empty")).unwrap();
        std::fs::write(r.join("bin/busybox"), vec![7u8; 100_000]).unwrap();
        std::fs::set_permissions(
            r.join("bin/busybox"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::os::unix::fs::symlink("busybox", r.join("bin/sh")).unwrap();
        std::os::unix::fs::symlink("/etc/../../../etc/shadow", r.join("escape")).unwrap();
        std::fs::hard_link(r.join("bin/busybox"), r.join("bin/ls")).unwrap();
        std::fs::write(r.join("etc/hostname"), b"box\n").unwrap();
        std::os::unix::fs::chown(r.join("etc/hostname"), Some(1234), Some(5678)).unwrap();
        nix::unistd::mkfifo(
            &r.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(r.join("sock")).unwrap();
        r
    }

    #[test]
    fn guest_path() {
        assert_eq!(guest_rootfs_path("abc"), "/containers/abc/rootfs");
    }

    #[test]
    fn initrd_is_agent_archive_then_rootfs() {
        let d = tempfile::tempdir().unwrap();
        let plan = test_plan(d.path());
        let rootfs = sample_rootfs(d.path());
        let state = d.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let out = build_initrd(&plan, "c1", &rootfs, &state).unwrap();
        assert_eq!(out, state.join("initrd.cpio"));
        let bytes = std::fs::read(&out).unwrap();
        let m = parse_newc(&bytes).unwrap();
        let n = names(&m);
        let trailer = n.iter().position(|x| *x == "TRAILER!!!").unwrap();
        // Archive 1: the agent.
        for d in AGENT_DIRS {
            assert!(n[..trailer].contains(&d), "{n:?}");
        }
        let init = find(&m, "init");
        assert_eq!(init.header.mode, S_IFREG | 0o755);
        assert_eq!(init.data, b"\x7fELF agent");
        assert_eq!(find(&m, "dev/console").header.rdev, (5, 1));
        // Archive 2: the rootfs, parents first.
        let rest = &n[trailer + 1..];
        assert_eq!(
            &rest[..3],
            ["containers", "containers/c1", "containers/c1/rootfs"]
        );
        let bb = find(&m, "containers/c1/rootfs/bin/busybox");
        assert_eq!(bb.header.mode, S_IFREG | 0o4755);
        let ls = find(&m, "containers/c1/rootfs/bin/ls");
        // Hard links: one inode number, the data once (the first in walk order).
        assert_eq!(bb.header.ino, ls.header.ino);
        assert_eq!(bb.header.nlink, 2);
        assert_eq!(bb.data.len() + ls.data.len(), 100_000);
        assert_eq!(bb.data.len(), 100_000);
        let sh = find(&m, "containers/c1/rootfs/bin/sh");
        assert_eq!(
            (sh.header.mode, sh.data.as_slice()),
            (S_IFLNK | 0o777, &b"busybox"[..])
        );
        assert_eq!(
            find(&m, "containers/c1/rootfs/escape").data,
            b"/etc/../../../etc/shadow"
        );
        let host = find(&m, "containers/c1/rootfs/etc/hostname");
        assert_eq!((host.header.uid, host.header.gid), (1234, 5678));
        assert_eq!(host.data, b"box\n");
        assert!(host.header.mtime > 0);
        assert_eq!(
            find(&m, "containers/c1/rootfs/fifo").header.mode & 0o170000,
            0o010000
        );
        assert!(find(&m, "containers/c1/rootfs/etc/empty").header.mode & S_IFDIR != 0);
        assert!(!n.contains(&"containers/c1/rootfs/sock"), "{n:?}");
        // Every member lies under the container's directory (no escaping names).
        for name in rest.iter().filter(|x| **x != "TRAILER!!!") {
            assert!(name.starts_with("containers"), "{name}");
            assert!(
                !name.split('/').any(|c| c == ".." || c.is_empty()),
                "{name}"
            );
        }
        // The agent archive is cached by content and reused.
        let cached: Vec<_> = std::fs::read_dir(plan.cache_dir.join("initramfs"))
            .unwrap()
            .collect();
        assert_eq!(cached.len(), 1);
        let mode = cached[0].as_ref().unwrap().metadata().unwrap().mode();
        assert_eq!(mode & 0o777, 0o644);
        build_initrd(&plan, "c2", &rootfs, &state).unwrap();
        assert_eq!(
            std::fs::read_dir(plan.cache_dir.join("initramfs"))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn device_nodes_keep_their_numbers() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("rootfs");
        std::fs::create_dir_all(r.join("dev")).unwrap();
        nix::sys::stat::mknod(
            &r.join("dev/null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        std::fs::set_permissions(r.join("dev/null"), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        let bytes = write_rootfs_archive(Vec::new(), "x", &r).unwrap();
        let m = parse_newc(&bytes).unwrap();
        let null = find(&m, "containers/x/rootfs/dev/null");
        assert_eq!(null.header.mode, S_IFCHR | 0o666);
        assert_eq!(null.header.rdev, (1, 3));
    }

    #[test]
    fn bad_inputs_leave_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let plan = test_plan(d.path());
        let state = d.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let rootfs = sample_rootfs(d.path());
        for id in ["", "..", "a/b"] {
            let err = build_initrd(&plan, id, &rootfs, &state).unwrap_err();
            assert!(err.to_string().contains("container id"), "{err}");
        }
        let err = build_initrd(&plan, "c", &d.path().join("nope"), &state).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let mut no_agent = plan.clone();
        no_agent.agent = d.path().join("missing-agent");
        let err = build_initrd(&no_agent, "c", &rootfs, &state).unwrap_err();
        assert!(err.to_string().contains("missing-agent"), "{err}");
        assert!(err.to_string().contains("make build"), "{err}");
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
    }

    #[test]
    fn agent_archive_key_depends_on_content() {
        assert_eq!(agent_archive_key(b"a"), agent_archive_key(b"a"));
        assert_ne!(agent_archive_key(b"a"), agent_archive_key(b"b"));
        assert_eq!(agent_archive_key(b"a").len(), 32);
    }
}
