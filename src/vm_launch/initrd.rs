//! The initrd of a container's microVM: only the agent archive (the static agent as `/init`
//! plus the directories it needs), cached by content hash. Container root filesystems reach
//! the guest over virtio-fs (see [`super::shared`]), never through the initrd.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::VmLaunchError;
use super::plan::VmPlan;
use crate::vmm::initramfs::{CpioHeader, CpioWriter};

/// Directories the agent archive creates at the guest root.
pub const AGENT_DIRS: [&str; 5] = ["dev", "proc", "sys", "run", "tmp"];

/// Bumped whenever the agent archive layout changes (part of the cache key).
const AGENT_LAYOUT_VERSION: &str = "kvmbox agent initramfs v2";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

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

/// The initrd for `plan`: the cached agent archive itself, or (when the cache is not writable)
/// `<state_dir>/initrd.cpio`, written to a temporary file and renamed.
pub fn agent_initrd(plan: &VmPlan, state_dir: &Path) -> Result<PathBuf, VmLaunchError> {
    match cached_agent_archive(&plan.agent, &plan.cache_dir)? {
        AgentArchive::Cached(p) => Ok(p),
        AgentArchive::Bytes(b) => {
            let out_path = state_dir.join("initrd.cpio");
            let io = |e| VmLaunchError::io("initrd", &out_path, e);
            let mut tmp = tempfile::NamedTempFile::new_in(state_dir).map_err(io)?;
            tmp.write_all(&b).map_err(io)?;
            tmp.persist(&out_path).map_err(|e| io(e.error))?;
            Ok(out_path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::initramfs::{parse_newc, CpioMember};
    use std::os::unix::fs::MetadataExt;

    fn find<'a>(members: &'a [CpioMember], name: &str) -> &'a CpioMember {
        members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} not in archive"))
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

    #[test]
    fn initrd_is_the_cached_agent_archive() {
        let d = tempfile::tempdir().unwrap();
        let plan = test_plan(d.path());
        let state = d.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let out = agent_initrd(&plan, &state).unwrap();
        assert!(out.starts_with(plan.cache_dir.join("initramfs")), "{out:?}");
        let m = parse_newc(&std::fs::read(&out).unwrap()).unwrap();
        for d in AGENT_DIRS {
            assert!(find(&m, d).header.mode & S_IFDIR != 0);
        }
        let init = find(&m, "init");
        assert_eq!(init.header.mode, S_IFREG | 0o755);
        assert_eq!(init.data, b"\x7fELF agent");
        assert_eq!(find(&m, "dev/console").header.rdev, (5, 1));
        assert_eq!(
            std::fs::metadata(&out).unwrap().mode() & 0o777,
            0o644,
            "readable by every kvmbox user"
        );
        // Reused, and nothing is written to the state directory.
        assert_eq!(agent_initrd(&plan, &state).unwrap(), out);
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
    }

    #[test]
    fn unwritable_cache_falls_back_to_the_state_dir() {
        let d = tempfile::tempdir().unwrap();
        let mut plan = test_plan(d.path());
        let blocker = d.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        plan.cache_dir = blocker.join("cache");
        let state = d.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let out = agent_initrd(&plan, &state).unwrap();
        assert_eq!(out, state.join("initrd.cpio"));
        let m = parse_newc(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(find(&m, "init").data, b"\x7fELF agent");
    }

    #[test]
    fn missing_agent_leaves_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let mut plan = test_plan(d.path());
        plan.agent = d.path().join("missing-agent");
        let state = d.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let err = agent_initrd(&plan, &state).unwrap_err();
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
