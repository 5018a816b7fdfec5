//! The benchmark's OCI bundle: a busybox rootfs whose process is `/bin/true`.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::error::BenchError;

/// Directories created in the rootfs so that every runtime finds its mount points.
const ROOTFS_DIRS: &[&str] = &["bin", "proc", "sys", "dev", "tmp", "etc"];

/// Find the busybox binary (`/bin/busybox` or the first `busybox` in PATH).
pub fn find_busybox() -> Result<PathBuf, BenchError> {
    let fixed = Path::new("/bin/busybox");
    if fixed.is_file() {
        return Ok(fixed.to_path_buf());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("busybox"))
        .find(|p| p.is_file())
        .ok_or(BenchError::Missing("busybox"))
}

/// The spec every runtime runs: the default spec (as `runc spec` writes it) with `/bin/true` as
/// the process, minus the `/sys/fs/cgroup` mount (not part of what kvmbox mounts yet).
pub fn bench_spec() -> Spec {
    let mut spec = Spec::default();
    if let Some(mut process) = spec.process().clone() {
        process.set_args(Some(vec!["/bin/true".into()]));
        process.set_terminal(Some(false));
        spec.set_process(Some(process));
    }
    spec.set_hostname(Some("bench".into()));
    if let Some(mounts) = spec.mounts().clone() {
        let kept = mounts
            .into_iter()
            .filter(|m| m.destination() != Path::new("/sys/fs/cgroup"))
            .collect();
        spec.set_mounts(Some(kept));
    }
    spec
}

/// Write a busybox bundle (rootfs/bin/busybox, rootfs/bin/true, config.json) into `dir`.
pub fn write_bundle(dir: &Path, busybox: &Path) -> Result<(), BenchError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BenchError::Io { what, path, source }
    };
    let rootfs = dir.join("rootfs");
    for sub in ROOTFS_DIRS {
        let d = rootfs.join(sub);
        std::fs::create_dir_all(&d).map_err(io("create", &d))?;
    }
    let bin = rootfs.join("bin/busybox");
    std::fs::copy(busybox, &bin).map_err(io("copy busybox to", &bin))?;
    for applet in ["true", "sh"] {
        let link = rootfs.join("bin").join(applet);
        std::os::unix::fs::symlink("busybox", &link).map_err(io("symlink", &link))?;
    }
    let config = dir.join("config.json");
    let json = serde_json::to_vec_pretty(&bench_spec())?;
    std::fs::write(&config, json).map_err(io("write", &config))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_runs_true_without_a_terminal_or_cgroup_mount() {
        let spec = bench_spec();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(
            process.args().as_ref().unwrap(),
            &vec!["/bin/true".to_string()]
        );
        assert_eq!(process.terminal(), Some(false));
        let mounts = spec.mounts().as_ref().unwrap();
        assert!(mounts.iter().any(|m| m.destination() == Path::new("/proc")));
        assert!(!mounts
            .iter()
            .any(|m| m.destination() == Path::new("/sys/fs/cgroup")));
    }

    #[test]
    fn bundle_has_rootfs_and_parsable_config() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-busybox");
        std::fs::write(&fake, b"#!/bin/sh\n").unwrap();
        let bundle = dir.path().join("bundle");
        write_bundle(&bundle, &fake).unwrap();
        assert!(bundle.join("rootfs/bin/busybox").is_file());
        assert_eq!(
            std::fs::read_link(bundle.join("rootfs/bin/true")).unwrap(),
            Path::new("busybox")
        );
        assert!(bundle.join("rootfs/proc").is_dir());
        let spec = Spec::load(bundle.join("config.json")).unwrap();
        assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("rootfs"));
    }
}
