//! The OCI features document printed by `kvmbox features`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

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

/// Mount options the container setup turns into mount flags (guest-agent `mount_options.rs`).
const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
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

/// The features document, fields in the order of the OCI spec (and runc's output).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FeaturesDoc {
    oci_version_min: &'static str,
    oci_version_max: &'static str,
    hooks: &'static [&'static str],
    mount_options: &'static [&'static str],
    linux: LinuxDoc,
    annotations: BTreeMap<&'static str, &'static str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LinuxDoc {
    namespaces: &'static [&'static str],
    capabilities: Vec<String>,
    cgroup: CgroupDoc,
    seccomp: SeccompDoc,
    apparmor: Enabled,
    selinux: Enabled,
    intel_rdt: Enabled,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CgroupDoc {
    v1: bool,
    v2: bool,
    systemd: bool,
    systemd_user: bool,
    rdma: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SeccompDoc {
    enabled: bool,
    actions: &'static [&'static str],
    operators: &'static [&'static str],
    archs: Vec<&'static str>,
    known_flags: &'static [&'static str],
    supported_flags: &'static [&'static str],
}

/// Seccomp actions the setup compiles (everything but SCMP_ACT_NOTIFY).
const SECCOMP_ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
];

/// Seccomp argument comparisons the setup compiles.
const SECCOMP_OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];

/// The native seccomp architecture (filters check only this one).
fn native_seccomp_arch() -> Vec<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => vec!["SCMP_ARCH_X86_64"],
        "aarch64" => vec!["SCMP_ARCH_AARCH64"],
        _ => vec![],
    }
}

#[derive(Debug, Serialize)]
struct Enabled {
    enabled: bool,
}

/// The features document. AppArmor, SELinux and Intel RDT are reported disabled: kvmbox does
/// not apply them.
fn features_doc() -> FeaturesDoc {
    FeaturesDoc {
        oci_version_min: "1.0.0",
        oci_version_max: SPEC_VERSION,
        hooks: HOOKS,
        mount_options: MOUNT_OPTIONS,
        linux: LinuxDoc {
            namespaces: NAMESPACES,
            capabilities: capabilities(),
            cgroup: CgroupDoc {
                v1: true,
                v2: true,
                systemd: false,
                systemd_user: false,
                rdma: false,
            },
            seccomp: SeccompDoc {
                enabled: true,
                actions: SECCOMP_ACTIONS,
                operators: SECCOMP_OPERATORS,
                archs: native_seccomp_arch(),
                known_flags: &[],
                supported_flags: &[],
            },
            apparmor: Enabled { enabled: false },
            selinux: Enabled { enabled: false },
            intel_rdt: Enabled { enabled: false },
        },
        annotations: BTreeMap::from([
            ("io.kvmbox.isolation", "vm,namespace"),
            ("io.kvmbox.version", env!("CARGO_PKG_VERSION")),
            (
                "org.opencontainers.runtime-spec.features.version",
                SPEC_VERSION,
            ),
        ]),
    }
}

/// The features JSON (OCI runtime-spec `features.md`) as a value (keys sorted).
pub fn features() -> Value {
    serde_json::to_value(features_doc()).expect("features serialize")
}

/// The features JSON as pretty text, fields in the spec's order.
pub fn features_json() -> String {
    serde_json::to_string_pretty(&features_doc()).expect("features serialize")
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
        let seccomp = linux.seccomp().as_ref().unwrap();
        assert_eq!(seccomp.enabled(), &Some(true));
        let actions = seccomp.actions().as_ref().unwrap();
        assert!(actions.contains(&oci_spec::runtime::LinuxSeccompAction::ScmpActErrno));
        assert!(!actions.contains(&oci_spec::runtime::LinuxSeccompAction::ScmpActNotify));
        assert_eq!(v["linux"]["apparmor"]["enabled"], false);
        assert_eq!(v["annotations"]["io.kvmbox.isolation"], "vm,namespace");
        let text = features_json();
        assert!(text.starts_with("{\n  \"ociVersionMin\": \"1.0.0\",\n  \"ociVersionMax\""));
    }
}
