//! Helpers shared by the end-to-end suites: busybox bundles in temp dirs, running the built
//! `kvmbox` binary with a per-test `--root`, unique container ids, and the no-leftovers check.
//!
//! The suites run as root. `KVMBOX_E2E_RUNTIME=/usr/sbin/runc cargo test --test namespace_e2e`
//! runs the same suite against another runc-compatible runtime (to check the tests themselves).

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long one runtime invocation may take before the test fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Cgroup v1 controllers that kvmbox manages, whose `kvmbox/<id>` dirs must not outlive a container.
pub const CGROUP_CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "cpuset", "cpuacct", "freezer"];

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A number unique within this test process.
fn next() -> usize {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// The runtime under test: the built kvmbox in namespace mode, or `KVMBOX_E2E_RUNTIME`.
fn runtime() -> (PathBuf, Vec<String>) {
    match std::env::var_os("KVMBOX_E2E_RUNTIME") {
        Some(path) => (PathBuf::from(path), Vec::new()),
        None => (
            PathBuf::from(env!("CARGO_BIN_EXE_kvmbox")),
            vec!["--isolation".into(), "namespace".into()],
        ),
    }
}

/// True when the suite runs against kvmbox (not a peer via `KVMBOX_E2E_RUNTIME`).
pub fn testing_kvmbox() -> bool {
    std::env::var_os("KVMBOX_E2E_RUNTIME").is_none()
}

/// Every busybox applet name (from `busybox --list`), computed once.
fn applets() -> &'static Vec<String> {
    static APPLETS: OnceLock<Vec<String>> = OnceLock::new();
    APPLETS.get_or_init(|| {
        let out = Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .expect("run /bin/busybox --list (apt-get install busybox-static)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "busybox")
            .map(String::from)
            .collect()
    })
}

/// The result of one runtime invocation.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The command line (for messages).
    pub command: String,
    /// Exit code (None when killed by a signal).
    pub code: Option<i32>,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl Outcome {
    /// Assert exit code 0 and return self.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{} failed:\n{self}", self.command);
        self
    }

    /// Assert the exit code.
    #[track_caller]
    pub fn code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "{}:\n{self}", self.command);
        self
    }

    /// Assert a failure the way the issue asks: exit code 1 and exactly one non-empty line on
    /// stderr containing every needle (case-insensitive).
    #[track_caller]
    pub fn error_line(&self, needles: &[&str]) -> &Self {
        assert_eq!(
            self.code,
            Some(1),
            "{}: want exit code 1:\n{self}",
            self.command
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{}: want a one-line error:\n{self}",
            self.command
        );
        let line = lines[0].to_lowercase();
        for n in needles {
            assert!(
                line.contains(&n.to_lowercase()),
                "{}: error line should mention {n:?}:\n{self}",
                self.command
            );
        }
        self
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A busybox OCI bundle: `rootfs/bin/busybox` plus applet symlinks and a `config.json`.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Bundle directory (holds config.json).
    pub dir: PathBuf,
    /// The rootfs directory.
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Path of config.json.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// The current config.json as JSON.
    pub fn config(&self) -> Value {
        let text = fs::read_to_string(self.config_path()).expect("read config.json");
        serde_json::from_str(&text).expect("parse config.json")
    }

    /// Rewrite config.json through `f`.
    pub fn edit(&self, f: impl FnOnce(&mut Value)) -> &Self {
        let mut v = self.config();
        f(&mut v);
        fs::write(
            self.config_path(),
            serde_json::to_vec_pretty(&v).expect("serialise config"),
        )
        .expect("write config.json");
        self
    }

    /// Set `process.args`.
    pub fn args(&self, args: &[&str]) -> &Self {
        self.edit(|c| c["process"]["args"] = json!(args))
    }

    /// Set `process.args` to `sh -c <script>`.
    pub fn sh(&self, script: &str) -> &Self {
        self.args(&["sh", "-c", script])
    }
}

/// The default spec (as `runc spec` writes it) minus the `/sys/fs/cgroup` mount, with
/// `terminal: false` so the process writes to the runtime's stdio, running `args`.
pub fn default_config(args: &[&str]) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "kvmbox-e2e",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// One test's private world: a temp dir holding the runtime's `--root` and the bundles.
pub struct Harness {
    tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Harness {
    /// A fresh harness (panics unless running as root).
    pub fn new() -> Harness {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the end-to-end tests create real containers and must run as root"
        );
        let tmp = tempfile::Builder::new()
            .prefix("kvmbox-e2e-")
            .tempdir()
            .expect("create temp dir");
        let root = tmp.path().join("state");
        Harness { tmp, root }
    }

    /// The temp dir of this test.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The runtime's `--root`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A container id unique across the whole test run: `<prefix>-<pid>-<n>`.
    pub fn id(&self, prefix: &str) -> String {
        format!("{prefix}-{}-{}", std::process::id(), next())
    }

    /// A busybox bundle with the default config running `args`.
    pub fn bundle(&self, args: &[&str]) -> Bundle {
        let dir = self.dir().join(format!("bundle-{}", next()));
        let rootfs = dir.join("rootfs");
        for sub in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            fs::create_dir_all(rootfs.join(sub)).expect("create rootfs dirs");
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("copy /bin/busybox (apt-get install busybox-static)");
        for applet in applets() {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("applet symlink");
        }
        fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n",
        )
        .expect("write passwd");
        fs::write(rootfs.join("etc/group"), "root:x:0:\nuser:x:1000:\n").expect("write group");
        let bundle = Bundle { dir, rootfs };
        fs::write(
            bundle.config_path(),
            serde_json::to_vec_pretty(&default_config(args)).expect("serialise config"),
        )
        .expect("write config.json");
        bundle
    }

    /// Run the runtime with `--root <this root>` (and `--isolation namespace`) and `args`.
    pub fn run(&self, args: &[&str]) -> Outcome {
        self.run_with_globals(&[], args)
    }

    /// Like [`Harness::run`] with extra global flags before the command (e.g. `--log F`).
    pub fn run_with_globals(&self, globals: &[&str], args: &[&str]) -> Outcome {
        let (exe, mut pre) = runtime();
        pre.splice(
            0..0,
            ["--root".to_string(), self.root.display().to_string()],
        );
        pre.extend(globals.iter().map(|s| s.to_string()));
        pre.extend(args.iter().map(|s| s.to_string()));
        run_command(&exe, &pre, self.dir())
    }

    /// `state <id>` parsed as JSON (panics if the command fails).
    #[track_caller]
    pub fn state(&self, id: &str) -> Value {
        let out = self.run(&["state", id]);
        out.ok();
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("state {id}: stdout is not JSON ({e}):\n{out}"))
    }

    /// Poll `state <id>` until its status is `status` (panics after 10 s).
    #[track_caller]
    pub fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = self.state(id);
            if st["status"] == status {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} never reached status {status}: {st}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Assert that nothing of container `id` (whose bundle is `bundle`) is left: no state dir, no
    /// cgroup, no mount mentioning the bundle, no live process in its cgroup or rootfs.
    #[track_caller]
    pub fn assert_no_leftovers(&self, id: &str, bundle: &Bundle) {
        // An invalid id such as ".." or "a/b" is no path component of its own: for those the
        // callers check that --root stays empty instead.
        let plain = !matches!(id, "" | "." | "..") && !id.contains('/');
        if plain {
            let state_dir = self.root.join(id);
            assert!(
                !state_dir.exists(),
                "state dir {} left behind",
                state_dir.display()
            );
            for dir in cgroup_dirs(id) {
                assert!(!dir.exists(), "cgroup {} left behind", dir.display());
            }
        }
        let bundle_str = bundle.dir.display().to_string();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
        let leaked: Vec<&str> = mountinfo
            .lines()
            .filter(|l| l.contains(&bundle_str))
            .collect();
        assert!(leaked.is_empty(), "mounts left behind: {leaked:#?}");
        // A process killed by `delete` may need a moment to finish exiting; zombies count as gone.
        let deadline = Instant::now() + Duration::from_millis(1000);
        loop {
            let procs = processes_of(id, &bundle.rootfs);
            if procs.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "processes of container {id} left behind: {procs:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

/// Cgroup directories kvmbox would create for `id` (v1 controllers and the v2 unified path).
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let mut dirs: Vec<PathBuf> = CGROUP_CONTROLLERS
        .iter()
        .map(|c| base.join(c).join("kvmbox").join(id))
        .collect();
    dirs.push(base.join("kvmbox").join(id));
    dirs
}

/// Live (non-zombie) processes whose cgroup path ends in `kvmbox/<id>` or whose root or cwd
/// is inside `rootfs`, as `(pid, reason)`.
pub fn processes_of(id: &str, rootfs: &Path) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let cgroup_suffix = format!("/kvmbox/{id}");
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me || is_zombie_or_gone(pid) {
            continue;
        }
        let proc_dir = entry.path();
        if let Ok(cg) = fs::read_to_string(proc_dir.join("cgroup")) {
            if cg
                .lines()
                .any(|l| l.ends_with(&cgroup_suffix) || l.contains(&format!("{cgroup_suffix}/")))
            {
                found.push((pid, format!("in cgroup {cgroup_suffix}")));
                continue;
            }
        }
        for link in ["root", "cwd"] {
            if let Ok(target) = fs::read_link(proc_dir.join(link)) {
                if target.starts_with(rootfs) {
                    found.push((pid, format!("{link} = {}", target.display())));
                    break;
                }
            }
        }
    }
    found
}

/// True if `pid` is a zombie (state 'Z'/'X') or no longer exists.
pub fn is_zombie_or_gone(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state is the first field after the command name, which is in parentheses.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("");
    matches!(state, "Z" | "X")
}

/// Run `exe args…` in `cwd` with stdin closed and stdout/stderr sent to files (a container that
/// outlives the command may keep its inherited stdio open), failing the test after
/// [`COMMAND_TIMEOUT`].
pub fn run_command(exe: &Path, args: &[String], cwd: &Path) -> Outcome {
    let n = next();
    let out_path = cwd.join(format!(".out-{n}"));
    let err_path = cwd.join(format!(".err-{n}"));
    let command = format!("{} {}", exe.display(), args.join(" "));
    let out_file = fs::File::create(&out_path).expect("create stdout file");
    let err_file = fs::File::create(&err_path).expect("create stderr file");
    let mut child = Command::new(exe)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(out_file)
        .stderr(err_file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command}: {e}"));
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(COMMAND_TIMEOUT) {
        Ok(status) => status.expect("wait for runtime"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let stderr = fs::read_to_string(&err_path).unwrap_or_default();
            panic!("{command} timed out after {COMMAND_TIMEOUT:?}; stderr:\n{stderr}");
        }
    };
    let read = |p: &Path| {
        let mut s = String::new();
        let _ = fs::File::open(p).and_then(|mut f| f.read_to_string(&mut s));
        let _ = fs::remove_file(p);
        s
    };
    Outcome {
        command,
        code: status.code(),
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

/// Capability names → the bit mask the kernel shows in /proc/<pid>/status (`CapEff:` etc.).
pub fn cap_mask(names: &[&str]) -> u64 {
    names
        .iter()
        .map(|n| {
            let cap: caps::Capability = n.parse().unwrap_or_else(|_| panic!("capability {n}"));
            1u64 << cap.index()
        })
        .fold(0, |a, b| a | b)
}

/// The `Cap*:` lines of /proc/<pid>/status text as name → mask.
pub fn parse_cap_lines(status: &str) -> std::collections::BTreeMap<String, u64> {
    status
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let k = k.trim();
            k.starts_with("Cap")
                .then(|| {
                    u64::from_str_radix(v.trim(), 16)
                        .ok()
                        .map(|m| (k.to_string(), m))
                })
                .flatten()
        })
        .collect()
}

/// Ids of every container listed in `list --format json` output.
pub fn listed_ids(list_json: &str) -> BTreeSet<String> {
    let v: Value = serde_json::from_str(list_json).expect("list --format json is JSON");
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Accept one connection on `listener` and receive the fd it sends with SCM_RIGHTS (what a
/// `--console-socket` user such as containerd does).
pub fn receive_fd(listener: &std::os::unix::net::UnixListener) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let (conn, _) = listener.accept().expect("accept console socket connection");
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .expect("recvmsg on console socket");
    for cmsg in msg.cmsgs().expect("control messages") {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            let fd = *fds.first().expect("one fd");
            // SAFETY: SCM_RIGHTS just installed `fd` in this process; nothing else owns it.
            return unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        }
    }
    panic!("no SCM_RIGHTS fd received on the console socket");
}

/// Read a pty master until every `want` appeared, the other side closed (EIO) or `limit`
/// passed.
pub fn read_pty(file: &mut fs::File, want: &[&str], limit: Duration) -> String {
    let mut text = String::new();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !want.iter().all(|w| text.contains(w)) {
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&*file),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)).unwrap_or(0) == 0 {
            continue;
        }
        let mut buf = [0u8; 1024];
        match file.read(&mut buf) {
            Ok(0) | Err(_) => break, // EIO once the other side is closed
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    text
}
