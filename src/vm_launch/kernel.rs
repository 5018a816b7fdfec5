//! Guest kernel lookup. Order (issue 5): `--kernel`, the spec's `vm.kernel.path`, the config
//! file's `kernel`, `KVMBOX_KERNEL`, then the kernel-config build cache. An explicitly named
//! kernel that does not exist is an error (no silent fallback to the next source).
//!
//! The build cache: when `kernel-config/build.sh` is found (the source tree this binary was
//! built from, or `<exe>/../../kernel-config/` for `target/<profile>/kvmbox`), its
//! `--print-path` answer is authoritative (its hash covers the config, patches, source and
//! compiler). Without the script (an installed binary), the newest
//! `${KVMBOX_CACHE:-/var/cache/kvmbox}/kernel/*/vmlinux` is used.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::error::VmLaunchError;

/// Environment variable naming the guest kernel.
pub const KERNEL_ENV: &str = "KVMBOX_KERNEL";

/// Where the kernel candidates come from.
#[derive(Debug, Clone, Default)]
pub struct KernelSources {
    /// `--kernel`.
    pub cli: Option<PathBuf>,
    /// The spec's `vm.kernel.path`.
    pub spec: Option<PathBuf>,
    /// The config file's `kernel` (with the file's path, for messages).
    pub config: Option<(PathBuf, PathBuf)>,
    /// `KVMBOX_KERNEL`.
    pub env: Option<PathBuf>,
    /// `${KVMBOX_CACHE:-/var/cache/kvmbox}`.
    pub cache_dir: PathBuf,
    /// `kernel-config/build.sh`, if found.
    pub build_script: Option<PathBuf>,
}

/// A found kernel and where it came from ("--kernel", "spec vm.kernel.path", ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundKernel {
    /// The kernel file.
    pub path: PathBuf,
    /// Which source named it.
    pub from: &'static str,
}

/// The `kernel-config/build.sh` next to the source tree or the executable, if present.
pub fn find_build_script(current_exe: Option<&Path>) -> Option<PathBuf> {
    let mut candidates = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-config/build.sh")];
    if let Some(exe) = current_exe {
        for up in exe.ancestors().skip(1).take(4) {
            candidates.push(up.join("kernel-config/build.sh"));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn explicit(path: &Path, from: &'static str) -> Result<FoundKernel, VmLaunchError> {
    if path.is_file() {
        Ok(FoundKernel {
            path: path.to_path_buf(),
            from,
        })
    } else {
        Err(VmLaunchError::KernelMissing(format!(
            "guest kernel {} (from {from}): not a file",
            path.display()
        )))
    }
}

fn from_build_script(script: &Path) -> Option<PathBuf> {
    let out = Command::new("bash")
        .arg(script)
        .arg("--print-path")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let p = PathBuf::from(text.trim().lines().last()?.trim());
    p.is_file().then_some(p)
}

/// The newest `<cache>/kernel/*/vmlinux`.
fn newest_cached(cache_dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(cache_dir.join("kernel")).ok()?;
    entries
        .filter_map(|e| {
            let p = e.ok()?.path().join("vmlinux");
            let mtime = std::fs::metadata(&p).ok()?.modified().ok()?;
            Some((mtime, p))
        })
        .max()
        .map(|(_, p)| p)
}

/// Find the guest kernel (see the module doc for the order).
pub fn find_kernel(src: &KernelSources) -> Result<FoundKernel, VmLaunchError> {
    if let Some(p) = &src.cli {
        return explicit(p, "--kernel");
    }
    if let Some(p) = &src.spec {
        return explicit(p, "spec vm.kernel.path");
    }
    if let Some((p, _file)) = &src.config {
        return explicit(p, "config file kernel");
    }
    if let Some(p) = &src.env {
        return explicit(p, KERNEL_ENV);
    }
    let cached = match &src.build_script {
        Some(script) => from_build_script(script),
        None => newest_cached(&src.cache_dir),
    };
    if let Some(path) = cached {
        return Ok(FoundKernel {
            path,
            from: "kernel build cache",
        });
    }
    let build = src
        .build_script
        .as_ref()
        .map(|s| s.display().to_string())
        .unwrap_or_else(|| "kernel-config/build.sh".to_string());
    Err(VmLaunchError::KernelMissing(format!(
        "no guest kernel: none given (--kernel, spec vm.kernel.path, config file `kernel`, \
         {KERNEL_ENV}) and none built in {}/kernel; build it with `{build}` (~20 min, cached) \
         or set {KERNEL_ENV}=/path/to/vmlinux",
        src.cache_dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) -> PathBuf {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"k").unwrap();
        p.to_path_buf()
    }

    #[test]
    fn order_is_cli_spec_config_env_cache() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("cache");
        let mut src = KernelSources {
            cli: Some(touch(&d.path().join("cli"))),
            spec: Some(touch(&d.path().join("spec"))),
            config: Some((touch(&d.path().join("conf")), d.path().join("c.toml"))),
            env: Some(touch(&d.path().join("env"))),
            cache_dir: cache.clone(),
            build_script: None,
        };
        let cached = touch(&cache.join("kernel/abc/vmlinux"));
        let name = |s: &KernelSources| {
            let k = find_kernel(s).unwrap();
            (
                k.path.file_name().unwrap().to_str().unwrap().to_string(),
                k.from,
            )
        };
        assert_eq!(name(&src), ("cli".into(), "--kernel"));
        src.cli = None;
        assert_eq!(name(&src), ("spec".into(), "spec vm.kernel.path"));
        src.spec = None;
        assert_eq!(name(&src), ("conf".into(), "config file kernel"));
        src.config = None;
        assert_eq!(name(&src), ("env".into(), KERNEL_ENV));
        src.env = None;
        assert_eq!(name(&src), ("vmlinux".into(), "kernel build cache"));
        assert_eq!(find_kernel(&src).unwrap().path, cached);
    }

    #[test]
    fn explicit_missing_kernel_does_not_fall_through() {
        let d = tempfile::tempdir().unwrap();
        let src = KernelSources {
            spec: Some(d.path().join("missing")),
            env: Some(touch(&d.path().join("env"))),
            cache_dir: d.path().into(),
            ..Default::default()
        };
        let err = find_kernel(&src).unwrap_err().to_string();
        assert!(
            err.contains("missing") && err.contains("vm.kernel.path"),
            "{err}"
        );
    }

    #[test]
    fn newest_cache_entry_wins_and_empty_cache_says_how_to_build() {
        let d = tempfile::tempdir().unwrap();
        let src = KernelSources {
            cache_dir: d.path().into(),
            ..Default::default()
        };
        let err = find_kernel(&src).unwrap_err().to_string();
        assert!(err.contains("kernel-config/build.sh"), "{err}");
        assert!(err.contains(KERNEL_ENV), "{err}");
        let old = touch(&d.path().join("kernel/old/vmlinux"));
        let new = touch(&d.path().join("kernel/new/vmlinux"));
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(past)
            .unwrap();
        assert_eq!(find_kernel(&src).unwrap().path, new);
    }

    #[test]
    fn build_script_answer_is_used() {
        let d = tempfile::tempdir().unwrap();
        let k = touch(&d.path().join("built/vmlinux"));
        let script = d.path().join("build.sh");
        std::fs::write(&script, format!("echo {}\n", k.display())).unwrap();
        let src = KernelSources {
            cache_dir: d.path().join("empty"),
            build_script: Some(script.clone()),
            ..Default::default()
        };
        assert_eq!(find_kernel(&src).unwrap().path, k);
        std::fs::write(&script, "exit 1\n").unwrap();
        let err = find_kernel(&src).unwrap_err().to_string();
        assert!(err.contains(&script.display().to_string()), "{err}");
    }
}
