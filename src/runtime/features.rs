//! The OCI features document printed by `kvmbox features`.

use serde_json::{json, Value};

use super::spec::SPEC_VERSION;

/// Hooks the runtime runs.
const HOOKS: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// Mount options understood by the container setup.
const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "iversion",
    "lazytime",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "noiversion",
    "nolazytime",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "nosymfollow",
    "private",
    "rbind",
    "relatime",
    "remount",
    "ro",
    "rprivate",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "symfollow",
    "sync",
    "unbindable",
];

/// Namespaces the container setup can create or join.
const NAMESPACES: &[&str] = &["cgroup", "ipc", "mount", "network", "pid", "user", "uts"];

/// Every capability name known to this build.
fn capabilities() -> Vec<String> {
    caps::all()
        .into_iter()
        .map(|c| c.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The features JSON (OCI runtime-spec `features.md`).
pub fn features() -> Value {
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": SPEC_VERSION,
        "hooks": HOOKS,
        "mountOptions": MOUNT_OPTIONS,
        "linux": {
            "namespaces": NAMESPACES,
            "capabilities": capabilities(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {"enabled": false},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
        },
        "annotations": {
            "io.kvmbox.isolation": "vm,namespace",
            "io.kvmbox.version": env!("CARGO_PKG_VERSION"),
            "org.opencontainers.runtime-spec.features.version": SPEC_VERSION,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_parse_as_oci_features() {
        let v = features();
        let parsed: oci_spec::runtime::Features = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(parsed.oci_version_min(), "1.0.0");
        assert_eq!(parsed.hooks().as_ref().unwrap().len(), 6);
        let linux = parsed.linux().as_ref().unwrap();
        assert_eq!(linux.namespaces().as_ref().unwrap().len(), 7);
        let cgroup = linux.cgroup().as_ref().unwrap();
        assert_eq!(cgroup.v1(), &Some(true));
        assert_eq!(cgroup.v2(), &Some(true));
        assert_eq!(cgroup.systemd(), &Some(false));
        let caps = linux.capabilities().as_ref().unwrap();
        assert!(caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        assert!(caps.iter().all(|c| c.starts_with("CAP_")));
        assert_eq!(v["linux"]["seccomp"]["enabled"], false);
        assert_eq!(v["annotations"]["io.kvmbox.isolation"], "vm,namespace");
    }
}
