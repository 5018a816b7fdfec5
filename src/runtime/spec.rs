//! The default config.json written by `kvmbox spec` (runc's defaults, busybox-friendly).

use oci_spec::runtime::{
    LinuxBuilder, LinuxDeviceCgroupBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, ProcessBuilder, Spec,
};

/// OCI version written into generated specs.
pub const SPEC_VERSION: &str = "1.0.2-dev";

/// A default spec like `runc spec`: args `["sh"]`, a terminal, the standard mounts, pid/network/
/// ipc/uts/mount namespaces, runc's masked and readonly paths and minimal capabilities.
/// With `rootless`, a user namespace maps the caller's uid/gid to root and the network namespace,
/// cgroup mount and device rules are left out.
pub fn default_spec(rootless: bool) -> Spec {
    let mut spec = Spec::default();
    spec.set_version(SPEC_VERSION.to_string());
    spec.set_hostname(Some("kvmbox".to_string()));
    spec.set_annotations(None);

    let base = spec.process().clone().unwrap_or_default();
    let mut process = ProcessBuilder::default()
        .terminal(true)
        .user(base.user().clone())
        .args(vec!["sh".to_string()])
        .env(base.env().clone().unwrap_or_default())
        .cwd("/")
        .no_new_privileges(true)
        .rlimits(base.rlimits().clone().unwrap_or_default())
        .build()
        .expect("static process");
    let mut caps = base.capabilities().clone().unwrap_or_default();
    caps.set_inheritable(None);
    process.set_capabilities(Some(caps));
    spec.set_process(Some(process));

    let mut mounts = oci_spec::runtime::get_default_mounts();
    if rootless {
        mounts.retain(|m| m.typ().as_deref() != Some("cgroup"));
    }
    spec.set_mounts(Some(mounts));

    let mut namespaces: Vec<_> = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|typ| {
        LinuxNamespaceBuilder::default()
            .typ(typ)
            .build()
            .expect("static namespace")
    })
    .collect();
    let mut linux = if rootless {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let mut linux = oci_spec::runtime::Linux::rootless(uid, gid);
        namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .build()
                .expect("static namespace"),
        );
        linux.set_resources(None);
        linux
    } else {
        let deny_all = LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .expect("static device rule");
        LinuxBuilder::default()
            .resources(
                LinuxResourcesBuilder::default()
                    .devices(vec![deny_all])
                    .build()
                    .expect("static resources"),
            )
            .build()
            .expect("static linux")
    };
    let defaults = oci_spec::runtime::Linux::default();
    linux.set_namespaces(Some(namespaces));
    linux.set_masked_paths(defaults.masked_paths().clone());
    linux.set_readonly_paths(defaults.readonly_paths().clone());
    spec.set_linux(Some(linux));
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_round_trips_and_looks_like_runc() {
        let spec = default_spec(false);
        let json = serde_json::to_string_pretty(&spec).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);

        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["ociVersion"], SPEC_VERSION);
        assert_eq!(v["process"]["args"], serde_json::json!(["sh"]));
        assert_eq!(v["process"]["terminal"], true);
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["hostname"], "kvmbox");
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "network", "ipc", "uts", "mount"]);
        let dests: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        assert!(v["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("/proc/kcore")));
        assert!(v["linux"]["readonlyPaths"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("/proc/sys")));
        let mut bounding: Vec<&str> = v["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        bounding.sort_unstable();
        assert_eq!(
            bounding,
            ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        );
        assert_eq!(
            v["linux"]["resources"]["devices"],
            serde_json::json!([{"allow": false, "access": "rwm"}])
        );
    }

    #[test]
    fn rootless_spec_has_a_user_namespace() {
        let v = serde_json::to_value(default_spec(true)).unwrap();
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"user") && !ns.contains(&"network"));
        assert_eq!(v["linux"]["uidMappings"][0]["size"], 1);
    }
}
