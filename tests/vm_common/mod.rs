//! Shared by the real-guest tests (`tests/vmm_*.rs`): where the guest kernel is, and how long a
//! boot may take on this host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The guest kernel: `$KVMBOX_KERNEL`, else `kernel-config/build.sh --print-path`. `None` (after
/// saying so) when none is built and `KVMBOX_SKIP_VM_TESTS=1`; otherwise a missing kernel fails
/// the test with how to build one.
pub fn guest_kernel() -> Option<PathBuf> {
    match find_kernel() {
        Ok(k) => Some(k),
        Err(msg) if std::env::var("KVMBOX_SKIP_VM_TESTS").as_deref() == Ok("1") => {
            eprintln!("skipped (KVMBOX_SKIP_VM_TESTS=1): {msg}");
            None
        }
        Err(msg) => panic!("{msg}"),
    }
}

fn find_kernel() -> Result<PathBuf, String> {
    if let Ok(k) = std::env::var("KVMBOX_KERNEL") {
        let p = PathBuf::from(k);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("KVMBOX_KERNEL={} is not a file", p.display()))
        };
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-config/build.sh");
    match Command::new(&script).arg("--print-path").output() {
        Ok(o) if o.status.success() => {
            let out = String::from_utf8_lossy(&o.stdout);
            let p = PathBuf::from(out.trim().lines().last().unwrap_or(""));
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!("{} printed no kernel path", script.display()))
            }
        }
        _ => Err(format!(
            "no guest kernel built: run `{}` (builds and caches vmlinux, ~10 min) or set \
             KVMBOX_KERNEL=/path/to/vmlinux; set KVMBOX_SKIP_VM_TESTS=1 to skip VM boot tests",
            script.display()
        )),
    }
}

/// How long one boot may take: `KVMBOX_VM_TEST_TIMEOUT` seconds, else `default_secs` (a boot
/// takes ~20 s on an idle nested-PVM host, where guest kernel code is emulated).
pub fn boot_timeout(default_secs: u64) -> Duration {
    let secs = std::env::var("KVMBOX_VM_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_secs);
    Duration::from_secs(secs)
}
