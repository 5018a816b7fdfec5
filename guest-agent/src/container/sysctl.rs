//! linux.sysctl: write each key under /proc/sys (in the container's namespaces).

use std::collections::HashMap;
use std::path::PathBuf;

use super::error::{ContainerError, Result};

/// The /proc/sys file of a sysctl key ("net.ipv4.ip_forward" → /proc/sys/net/ipv4/ip_forward).
pub(crate) fn key_path(key: &str) -> Result<PathBuf> {
    if key.is_empty() || key.split(['.', '/']).any(|c| c.is_empty() || c == "..") {
        return Err(ContainerError::InvalidSpec(format!(
            "linux.sysctl: invalid key {key:?}"
        )));
    }
    Ok(PathBuf::from("/proc/sys").join(key.replace('.', "/")))
}

/// Apply all sysctls.
pub(crate) fn apply(sysctl: &HashMap<String, String>) -> Result<()> {
    for (key, value) in sysctl {
        let path = key_path(key)?;
        std::fs::write(&path, value).map_err(ContainerError::io("write sysctl", path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_sys_and_escapes_fail() {
        assert_eq!(
            key_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            key_path("kernel/shmmax").unwrap(),
            PathBuf::from("/proc/sys/kernel/shmmax")
        );
        assert!(key_path("net..x").is_err());
        assert!(key_path("../../etc/passwd").is_err());
        assert!(key_path("").is_err());
    }
}
