//! What the containerd suites (containerd_e2e, cri_e2e) share: the tools they need, where the
//! built shim is, process lookups, and the clean-up of a private containerd's leftovers.

#![allow(dead_code)] // each suite uses a different subset

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Panic unless running as root with `containerd` and `ctr` on PATH (`suite` names the test).
pub fn require_tools(suite: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{suite} needs root (it runs containerd and real containers)"
    );
    for tool in ["containerd", "ctr"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()));
        assert!(
            found,
            "`{tool}` not found in PATH: install Debian's containerd package (apt-get install -y containerd)"
        );
    }
}

/// The directory holding the built shim and kvmbox (put first on containerd's PATH).
pub fn shim_dir() -> PathBuf {
    let shim = Path::new(env!("CARGO_BIN_EXE_containerd-shim-kvmbox-v2"));
    let kvmbox = Path::new(env!("CARGO_BIN_EXE_kvmbox"));
    assert_eq!(
        shim.parent(),
        kvmbox.parent(),
        "shim and kvmbox side by side"
    );
    shim.parent().unwrap().to_path_buf()
}

/// True once `pid` is gone or a zombie, waiting at most `patience` (PID 1 here reaps orphans
/// only every ~2 s).
pub fn gone(pid: i32, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    while !gone_now(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// True if `pid` is gone or a zombie right now.
pub fn gone_now(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            state.starts_with('Z') || state.starts_with('X')
        }
    }
}

/// Live processes whose command line mentions `needle`.
pub fn pids_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmdline) = fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) && !gone_now(pid) {
                out.push(pid);
            }
        }
    }
    out
}

fn with_comm(pids: Vec<i32>, prefix: &str) -> Vec<i32> {
    pids.into_iter()
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .collect()
}

/// The VMM processes (kvmbox-vmm) whose command line mentions `needle`.
pub fn vmms_mentioning(needle: &str) -> Vec<i32> {
    with_comm(pids_mentioning(needle), "kvmbox-vmm")
}

/// containerd-shim processes whose command line carries `-id <id>`.
pub fn shims_for(id: &str) -> Vec<i32> {
    with_comm(pids_mentioning(&format!("-id\0{id}\0")), "containerd-shim")
}

/// What a private containerd may leave behind, for [`clean_up`].
pub struct Leftovers<'a> {
    /// kvmbox state roots whose containers are force-deleted.
    pub kvmbox_roots: &'a [PathBuf],
    /// containerd's gRPC socket: shims naming it are killed, their sockets removed.
    pub socket: &'a Path,
    /// Directories to unmount everything under, then remove.
    pub dirs: &'a [&'a Path],
    /// A parent cgroup to remove from every hierarchy (once empty).
    pub cgroup_parent: &'a str,
}

/// Stop `containerd` (if still owned) and remove everything it and its shims left.
pub fn clean_up(containerd: Option<Child>, left: &Leftovers<'_>) {
    // Containers left by a failed test: kvmbox kills and removes them.
    for root in left.kvmbox_roots {
        for e in fs::read_dir(root).into_iter().flatten().flatten() {
            let _ = Command::new(env!("CARGO_BIN_EXE_kvmbox"))
                .arg("--root")
                .arg(root)
                .args(["delete", "--force"])
                .arg(e.file_name())
                .output();
        }
    }
    if let Some(mut child) = containerd {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
    }
    // Shims of this containerd (their -address names our socket), and their sockets.
    for pid in pids_mentioning(&left.socket.display().to_string()) {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if let Some(socket) = args
            .windows(2)
            .find(|w| w[0] == b"-socket")
            .and_then(|w| std::str::from_utf8(w[1]).ok())
        {
            let _ = fs::remove_file(socket.trim_start_matches("unix://"));
        }
    }
    let dirs: Vec<String> = left.dirs.iter().map(|d| d.display().to_string()).collect();
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
        .filter(|m| {
            dirs.iter()
                .any(|d| m == d || m.starts_with(&format!("{d}/")))
        })
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    if let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            let _ = fs::remove_dir(h.path().join(left.cgroup_parent.trim_start_matches('/')));
        }
    }
    for d in left.dirs {
        let _ = fs::remove_dir_all(d);
    }
}

/// The part of a private containerd's config.toml (version 2) both suites share: everything
/// under `dir`, the snapshotters and tracing that do not apply here disabled, and the CRI
/// plugin too unless `cri`.
pub fn base_config(dir: &Path, cri: bool) -> String {
    let t = dir.display();
    let cri_plugin = if cri {
        ""
    } else {
        "\"io.containerd.grpc.v1.cri\", "
    };
    format!(
        r#"version = 2
root = "{t}/root"
state = "{t}/state"
disabled_plugins = [{cri_plugin}"io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{t}/containerd.sock"
[ttrpc]
  address = "{t}/containerd.sock.ttrpc"
[debug]
  address = "{t}/debug.sock"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{t}/opt"
"#
    )
}
