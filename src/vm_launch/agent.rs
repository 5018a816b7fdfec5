//! Lookup of the helper binaries a VM needs: the guest agent (`kvmbox-agent`, static, becomes
//! the guest's `/init`) and the VMM process (`kvmbox-vmm`).
//!
//! Agent order: `KVMBOX_AGENT`, the config file's `agent`, `kvmbox-agent` next to the current
//! executable, then `<exe dir>/../x86_64-unknown-linux-gnu/release/kvmbox-agent` (cargo's
//! target/ layout); a dynamically linked candidate (e.g. from a plain `cargo build`) is
//! skipped, and a dynamically linked explicit one is an error. VMM order: `KVMBOX_VMM`, the spec's `vm.hypervisor.path`, the config
//! file's `vmm`, then `kvmbox-vmm` next to the current executable. For test binaries in
//! `target/<profile>/deps/`, the parent directory counts as "next to the executable" too.

use std::path::{Path, PathBuf};

use super::error::VmLaunchError;

/// Environment variable naming the agent binary.
pub const AGENT_ENV: &str = "KVMBOX_AGENT";
/// Environment variable naming the VMM binary.
pub const VMM_ENV: &str = "KVMBOX_VMM";
/// The agent's file name.
pub const AGENT_NAME: &str = "kvmbox-agent";
/// The VMM's file name.
pub const VMM_NAME: &str = "kvmbox-vmm";
/// How to build the agent (for error messages).
pub const AGENT_BUILD_HINT: &str = "build it with `make build` (or RUSTFLAGS=\"-C \
    target-feature=+crt-static\" cargo build -p guest-agent --release --bin kvmbox-agent \
    --target x86_64-unknown-linux-gnu) or set KVMBOX_AGENT";

/// The directories "next to" `exe`: its own, and its parent when it is cargo's `deps/`.
fn exe_dirs(exe: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = exe.parent() {
        dirs.push(dir.to_path_buf());
        if dir.file_name().is_some_and(|n| n == "deps") {
            if let Some(up) = dir.parent() {
                dirs.push(up.to_path_buf());
            }
        }
    }
    dirs
}

/// Whether `path` is an ELF64 executable with a program interpreter (dynamically linked): such
/// an agent cannot run as the guest's /init, which has no libc.
pub fn is_dynamic_elf(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    const PT_INTERP: u32 = 3;
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut eh = [0u8; 64];
    if f.read_exact(&mut eh).is_err() || &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return false;
    }
    let phoff = u64::from_le_bytes(eh[32..40].try_into().unwrap_or_default());
    let phentsize = u16::from_le_bytes([eh[54], eh[55]]) as usize;
    let phnum = u16::from_le_bytes([eh[56], eh[57]]) as usize;
    if phentsize < 4 || phnum > 256 || f.seek(SeekFrom::Start(phoff)).is_err() {
        return false;
    }
    let mut ph = vec![0u8; phentsize * phnum];
    if f.read_exact(&mut ph).is_err() {
        return false;
    }
    ph.chunks(phentsize)
        .any(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]) == PT_INTERP)
}

/// An explicitly named binary must exist.
fn explicit(path: &Path, what: &str, from: &str) -> Result<PathBuf, String> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(format!(
            "{what} {} (from {from}): not a file",
            path.display()
        ))
    }
}

/// Find the guest agent binary.
pub fn find_agent(
    env: Option<&Path>,
    configured: Option<&Path>,
    current_exe: Option<&Path>,
) -> Result<PathBuf, VmLaunchError> {
    let missing = |msg: String| VmLaunchError::AgentMissing(format!("{msg}; {AGENT_BUILD_HINT}"));
    let static_only = |p: PathBuf| {
        if is_dynamic_elf(&p) {
            Err(missing(format!(
                "guest agent {} is dynamically linked (the guest has no libc)",
                p.display()
            )))
        } else {
            Ok(p)
        }
    };
    if let Some(p) = env {
        return explicit(p, "guest agent", AGENT_ENV)
            .map_err(missing)
            .and_then(static_only);
    }
    if let Some(p) = configured {
        return explicit(p, "guest agent", "config file agent")
            .map_err(missing)
            .and_then(static_only);
    }
    let mut candidates = Vec::new();
    for dir in current_exe.map(exe_dirs).unwrap_or_default() {
        candidates.push(dir.join(AGENT_NAME));
        if let Some(up) = dir.parent() {
            candidates.push(up.join("x86_64-unknown-linux-gnu/release").join(AGENT_NAME));
        }
    }
    // A dynamically linked kvmbox-agent (from a plain `cargo build`) is skipped.
    if let Some(found) = candidates
        .iter()
        .find(|p| p.is_file() && !is_dynamic_elf(p))
    {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(missing(format!(
        "static guest agent {AGENT_NAME} not found ({AGENT_ENV} unset; looked in: {})",
        if looked.is_empty() {
            "nothing, the current executable is unknown".to_string()
        } else {
            looked.join(", ")
        }
    )))
}

/// Find the `kvmbox-vmm` binary.
pub fn find_vmm(
    env: Option<&Path>,
    spec_hypervisor: Option<&Path>,
    configured: Option<&Path>,
    current_exe: Option<&Path>,
) -> Result<PathBuf, VmLaunchError> {
    let missing = |msg: String| {
        VmLaunchError::VmmMissing(format!(
            "{msg}; build it with `make build` (cargo build --release --bin kvmbox-vmm) or set \
             {VMM_ENV}"
        ))
    };
    if let Some(p) = env {
        return explicit(p, "VMM", VMM_ENV).map_err(missing);
    }
    if let Some(p) = spec_hypervisor {
        return explicit(p, "VMM", "spec vm.hypervisor.path").map_err(missing);
    }
    if let Some(p) = configured {
        return explicit(p, "VMM", "config file vmm").map_err(missing);
    }
    let candidates: Vec<PathBuf> = current_exe
        .map(exe_dirs)
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join(VMM_NAME))
        .collect();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(missing(format!(
        "{VMM_NAME} not found ({VMM_ENV} unset; looked in: {})",
        looked.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) -> PathBuf {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
        p.to_path_buf()
    }

    #[test]
    fn agent_order_env_config_next_to_exe_then_cargo_target() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("target");
        let exe = t.join("release/kvmbox");
        let env = touch(&d.path().join("env-agent"));
        let conf = touch(&d.path().join("conf-agent"));
        assert_eq!(
            find_agent(Some(&env), Some(&conf), Some(&exe)).unwrap(),
            env
        );
        assert_eq!(find_agent(None, Some(&conf), Some(&exe)).unwrap(), conf);
        let err = find_agent(None, None, Some(&exe)).unwrap_err().to_string();
        assert!(
            err.contains("make build") && err.contains(AGENT_ENV),
            "{err}"
        );
        let cargo = touch(&t.join("x86_64-unknown-linux-gnu/release/kvmbox-agent"));
        assert_eq!(find_agent(None, None, Some(&exe)).unwrap(), cargo);
        let next = touch(&t.join("release/kvmbox-agent"));
        assert_eq!(find_agent(None, None, Some(&exe)).unwrap(), next);
        // A test binary in deps/ finds it one level up.
        let test_exe = t.join("release/deps/vm_launch-1234");
        assert_eq!(find_agent(None, None, Some(&test_exe)).unwrap(), next);
    }

    #[test]
    fn dynamic_agents_are_refused() {
        // This test binary itself is dynamically linked (PT_INTERP).
        let exe = std::env::current_exe().unwrap();
        assert!(is_dynamic_elf(&exe));
        if Path::new("/bin/busybox").exists() {
            assert!(!is_dynamic_elf(Path::new("/bin/busybox")), "busybox-static");
        }
        let err = find_agent(Some(&exe), None, None).unwrap_err().to_string();
        assert!(err.contains("dynamically linked"), "{err}");
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("release/kvmbox");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::copy(&exe, d.path().join("release/kvmbox-agent")).unwrap();
        let err = find_agent(None, None, Some(&bin)).unwrap_err().to_string();
        assert!(err.contains("static guest agent"), "{err}");
        let static_agent = touch(
            &d.path()
                .join("x86_64-unknown-linux-gnu/release/kvmbox-agent"),
        );
        assert_eq!(find_agent(None, None, Some(&bin)).unwrap(), static_agent);
    }

    #[test]
    fn explicit_missing_agent_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let err = find_agent(Some(&d.path().join("nope")), None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope") && err.contains(AGENT_ENV), "{err}");
    }

    #[test]
    fn vmm_order() {
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("bin/kvmbox");
        let env = touch(&d.path().join("e"));
        let hyp = touch(&d.path().join("h"));
        let conf = touch(&d.path().join("c"));
        assert_eq!(
            find_vmm(Some(&env), Some(&hyp), Some(&conf), Some(&exe)).unwrap(),
            env
        );
        assert_eq!(
            find_vmm(None, Some(&hyp), Some(&conf), Some(&exe)).unwrap(),
            hyp
        );
        assert_eq!(find_vmm(None, None, Some(&conf), Some(&exe)).unwrap(), conf);
        let err = find_vmm(None, None, None, Some(&exe))
            .unwrap_err()
            .to_string();
        assert!(err.contains(VMM_ENV) && err.contains("kvmbox-vmm"), "{err}");
        let next = touch(&d.path().join("bin/kvmbox-vmm"));
        assert_eq!(find_vmm(None, None, None, Some(&exe)).unwrap(), next);
    }
}
