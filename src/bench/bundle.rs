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

/// The spec every runtime runs: `runc spec`'s default (oci-spec's default without the cgroup
/// namespace, devices denied) with `/bin/true` as the process and no terminal.
pub fn bench_spec() -> Result<Spec, BenchError> {
    let mut v = serde_json::to_value(Spec::default())?;
    v["process"]["args"] = serde_json::json!(["/bin/true"]);
    v["process"]["terminal"] = serde_json::json!(false);
    v["hostname"] = serde_json::json!("bench");
    if let Some(ns) = v["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "cgroup");
    }
    v["linux"]["resources"]["devices"] = serde_json::json!([{"allow": false, "access": "rwm"}]);
    Ok(serde_json::from_value(v)?)
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
    let json = serde_json::to_vec_pretty(&bench_spec()?)?;
    std::fs::write(&config, json).map_err(io("write", &config))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_is_runc_default_running_true() {
        let spec = bench_spec().unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(
            process.args().as_ref().unwrap(),
            &vec!["/bin/true".to_string()]
        );
        assert_eq!(process.terminal(), Some(false));
        let mounts = spec.mounts().as_ref().unwrap();
        for dest in ["/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup"] {
            assert!(
                mounts.iter().any(|m| m.destination() == Path::new(dest)),
                "{dest}"
            );
        }
        let linux = spec.linux().as_ref().unwrap();
        let ns: Vec<String> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| format!("{:?}", n.typ()))
            .collect();
        assert_eq!(ns, ["Pid", "Network", "Ipc", "Uts", "Mount"]);
        let devices = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        assert_eq!(devices.len(), 1);
        assert!(!devices[0].allow());
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
