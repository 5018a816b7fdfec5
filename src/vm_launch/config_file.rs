//! The kvmbox config file (TOML): the default isolation and defaults for every microVM. Path:
//! `KVMBOX_CONFIG`, else `/etc/kvmbox/config.toml` (optional; a missing default file is fine, a
//! missing `KVMBOX_CONFIG` file is an error). Unknown keys are errors naming the file and the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::VmLaunchError;
use crate::runtime::Isolation;
use crate::vmm::config::CpuProfile;

/// The default config file location.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/kvmbox/config.toml";

/// Environment variable overriding [`DEFAULT_CONFIG_PATH`].
pub const CONFIG_ENV: &str = "KVMBOX_CONFIG";

/// The settings of the config file; every key is optional.
///
/// ```toml
/// isolation = "vm"                     # or "namespace": for new containers
/// kernel = "/var/lib/kvmbox/vmlinux"   # relative paths are relative to the file's directory
/// agent = "/usr/libexec/kvmbox/kvmbox-agent"
/// vmm = "/usr/libexec/kvmbox/kvmbox-vmm"
/// vcpus = 1
/// memory_mib = 128
/// memory_overhead_mib = 64
/// agent_timeout_secs = 120
/// cpu_profile = "emulated"             # or "host"; default: detected
/// ```
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Isolation of new containers (after `--isolation`, `KVMBOX_ISOLATION` and, in the shim,
    /// the `io.kvmbox.isolation` annotation).
    pub isolation: Option<Isolation>,
    /// Guest kernel (after `--kernel` and the spec's `vm.kernel.path`).
    pub kernel: Option<PathBuf>,
    /// The guest agent binary (after `KVMBOX_AGENT`).
    pub agent: Option<PathBuf>,
    /// The `kvmbox-vmm` binary (after `KVMBOX_VMM`).
    pub vmm: Option<PathBuf>,
    /// Default vCPU count (1..=32).
    pub vcpus: Option<u8>,
    /// Default guest memory in MiB (32..=65536).
    pub memory_mib: Option<u32>,
    /// Added to the container's memory limit to size guest RAM (default 64).
    pub memory_overhead_mib: Option<u32>,
    /// How long the host waits for the agent to answer (default 120 s).
    pub agent_timeout_secs: Option<u64>,
    /// Guest CPU profile; default: detected per host.
    pub cpu_profile: Option<CpuProfile>,
}

impl ConfigFile {
    /// Parse `text` read from `path` (used in error messages and to resolve relative paths).
    pub fn parse(path: &Path, text: &str) -> Result<Self, VmLaunchError> {
        let err = |reason: String| VmLaunchError::ConfigFile {
            path: path.to_path_buf(),
            reason,
        };
        let mut cfg: ConfigFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let msg = e.message().trim().to_string();
            err(match line {
                Some(l) => format!("line {l}: {msg}"),
                None => msg,
            })
        })?;
        if let Some(v) = cfg.vcpus {
            if !(1..=32).contains(&v) {
                return Err(err(format!("vcpus = {v}: must be 1..=32")));
            }
        }
        if let Some(m) = cfg.memory_mib {
            if !(32..=65536).contains(&m) {
                return Err(err(format!("memory_mib = {m}: must be 32..=65536")));
            }
        }
        if let Some(o) = cfg.memory_overhead_mib {
            if o > 65536 {
                return Err(err(format!("memory_overhead_mib = {o}: at most 65536")));
            }
        }
        if cfg.agent_timeout_secs == Some(0) {
            return Err(err("agent_timeout_secs = 0: must be at least 1".into()));
        }
        let base = path.parent().unwrap_or(Path::new("/"));
        for p in [&mut cfg.kernel, &mut cfg.agent, &mut cfg.vmm]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// Load `path`; a missing file gives the empty config unless `required`.
    pub fn load(path: &Path, required: bool) -> Result<Self, VmLaunchError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(ConfigFile::default())
            }
            Err(e) => Err(VmLaunchError::ConfigFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        }
    }
}

/// The isolation for new containers set by the config file (`KVMBOX_CONFIG`, else the default
/// path), if any.
pub fn configured_isolation() -> Result<Option<Isolation>, VmLaunchError> {
    let named = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty());
    let required = named.is_some();
    let path = named.map_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH), PathBuf::from);
    Ok(ConfigFile::load(&path, required)?.isolation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key_and_resolves_relative_paths() {
        let text = r#"
isolation = "namespace"
kernel = "vmlinux"
agent = "/opt/agent"
vcpus = 2
memory_mib = 256
memory_overhead_mib = 32
agent_timeout_secs = 30
cpu_profile = "emulated"
"#;
        let c = ConfigFile::parse(Path::new("/etc/kvmbox/config.toml"), text).unwrap();
        assert_eq!(c.kernel, Some(PathBuf::from("/etc/kvmbox/vmlinux")));
        assert_eq!(c.agent, Some(PathBuf::from("/opt/agent")));
        assert_eq!(c.vcpus, Some(2));
        assert_eq!(c.memory_mib, Some(256));
        assert_eq!(c.memory_overhead_mib, Some(32));
        assert_eq!(c.agent_timeout_secs, Some(30));
        assert_eq!(c.cpu_profile, Some(CpuProfile::Emulated));
        assert_eq!(c.isolation, Some(Isolation::Namespace));
    }

    #[test]
    fn unknown_key_names_file_key_and_line() {
        let err = ConfigFile::parse(Path::new("/x/c.toml"), "vcpus = 1\nmemroy_mib = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/x/c.toml"), "{err}");
        assert!(err.contains("memroy_mib"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        for text in [
            "vcpus = 0",
            "vcpus = 33",
            "memory_mib = 8",
            "agent_timeout_secs = 0",
            "cpu_profile = \"fast\"",
            "vcpus = \"two\"",
        ] {
            let err = ConfigFile::parse(Path::new("/c.toml"), text).unwrap_err();
            assert!(
                err.to_string().starts_with("config file /c.toml: "),
                "{err}"
            );
        }
    }

    #[test]
    fn missing_file_is_optional_unless_required() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("none.toml");
        assert_eq!(ConfigFile::load(&p, false).unwrap(), ConfigFile::default());
        let err = ConfigFile::load(&p, true).unwrap_err().to_string();
        assert!(err.contains("none.toml"), "{err}");
        std::fs::write(&p, "memory_mib = 64\n").unwrap();
        assert_eq!(ConfigFile::load(&p, true).unwrap().memory_mib, Some(64));
    }
}
