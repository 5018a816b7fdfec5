//! Resolution of `linux.cgroupsPath` into the cgroup path the container setup uses.

use std::path::{Component, Path};

use oci_spec::runtime::Spec;

use super::error::{Result, RuntimeError};

/// Parent cgroup of containers whose spec names no cgroupsPath.
pub const DEFAULT_PARENT: &str = "/kvmbox";

/// The cgroup path (absolute within each hierarchy) for container `id`: `linux.cgroupsPath`
/// when set (a relative path is taken from the hierarchy root), else `/kvmbox/<id>`.
/// systemd-style `slice:prefix:name` paths are not supported by cgroupfs and fall back to the
/// default.
pub fn resolve_cgroup_path(spec: &Spec, id: &str, config: &Path) -> Result<String> {
    let default = format!("{DEFAULT_PARENT}/{id}");
    let Some(path) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
    else {
        return Ok(default);
    };
    let text = path.to_string_lossy();
    if text.is_empty() {
        return Ok(default);
    }
    if text.contains(':') {
        tracing::warn!(
            "linux.cgroupsPath {text:?} looks like a systemd path; kvmbox manages cgroupfs, using {default}"
        );
        return Ok(default);
    }
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(RuntimeError::Bundle {
                    path: config.to_path_buf(),
                    msg: format!("linux.cgroupsPath {text:?} must not contain '..'"),
                })
            }
        }
    }
    if parts.is_empty() {
        return Err(RuntimeError::Bundle {
            path: config.to_path_buf(),
            msg: format!("linux.cgroupsPath {text:?} names the root cgroup"),
        });
    }
    Ok(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxBuilder;

    fn spec_with(path: Option<&str>) -> Spec {
        let mut spec = Spec::default();
        let mut linux = LinuxBuilder::default().build().unwrap();
        linux.set_cgroups_path(path.map(Into::into));
        spec.set_linux(Some(linux));
        spec
    }

    fn resolve(path: Option<&str>) -> Result<String> {
        resolve_cgroup_path(&spec_with(path), "c1", Path::new("/b/config.json"))
    }

    #[test]
    fn default_and_explicit_paths() {
        assert_eq!(resolve(None).unwrap(), "/kvmbox/c1");
        assert_eq!(resolve(Some("")).unwrap(), "/kvmbox/c1");
        assert_eq!(resolve(Some("/default/c1")).unwrap(), "/default/c1");
        assert_eq!(resolve(Some("mine/c1/")).unwrap(), "/mine/c1");
        assert_eq!(
            resolve(Some("system.slice:docker:c1")).unwrap(),
            "/kvmbox/c1"
        );
    }

    #[test]
    fn rejects_escapes_and_the_root() {
        let err = resolve(Some("/a/../../b")).unwrap_err().to_string();
        assert!(
            err.contains("linux.cgroupsPath") && err.contains("'..'"),
            "{err}"
        );
        assert!(resolve(Some("/")).is_err());
    }
}
