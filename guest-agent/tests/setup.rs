//! Root-only end-to-end tests of the container setup: a busybox rootfs, a runc-default spec,
//! `create` (+ exec FIFO) / `release` / waitpid, and checks of what the container saw.
//!
//! `create` requires a single-threaded caller, so every scenario runs in a forked copy of the
//! test process (glibc fork) that does the whole lifecycle and reports back through a pipe.

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use guest_agent::container::{self, CreateRequest, ExecRequest, OciState, Status};
use oci_spec::runtime::Spec;

const APPLETS: &[&str] = &[
    "sh",
    "echo",
    "cat",
    "true",
    "false",
    "hostname",
    "id",
    "sleep",
    "grep",
    "dd",
    "tail",
    "env",
    "pwd",
    "ls",
    "touch",
    "head",
    "wc",
    "mount",
    "domainname",
    "ulimit",
    "stat",
];

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() && Path::new("/bin/busybox").exists() {
        return true;
    }
    eprintln!("note: skipping: these tests need root and /bin/busybox");
    false
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A bundle: tempdir with rootfs/ (busybox) and a spec.
struct Bundle {
    dir: tempfile::TempDir,
    id: String,
    spec: Spec,
}

const RUNC_DEFAULT: &str = r#"{
 "ociVersion": "1.0.2-dev",
 "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
   "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
   "cwd": "/",
   "capabilities": {
     "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
     "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
     "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
     "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]},
   "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
   "noNewPrivileges": true},
 "root": {"path": "rootfs", "readonly": true},
 "hostname": "runc",
 "mounts": [
  {"destination": "/proc", "type": "proc", "source": "proc"},
  {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
  {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
  {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
  {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
  {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
  {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
 ],
 "linux": {
  "resources": {"devices": [{"allow": false, "access": "rwm"}]},
  "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
  "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
  "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
 }
}"#;

impl Bundle {
    fn new(tag: &str, args: &[&str]) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("kvmbox-setup-")
            .tempdir()
            .unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "root"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for a in APPLETS {
            symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let mut spec: Spec = serde_json::from_str(RUNC_DEFAULT).unwrap();
        let mut p = spec.process().clone().unwrap();
        p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        spec.set_process(Some(p));
        let id = format!(
            "setup-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        Bundle { dir, id, spec }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn cgroup_path(&self) -> String {
        format!("/kvmbox-test/{}", self.id)
    }

    fn state(&self) -> OciState {
        OciState {
            oci_version: "1.0.2".into(),
            id: self.id.clone(),
            status: Status::Creating,
            pid: 0,
            bundle: self.dir.path().to_path_buf(),
            annotations: Default::default(),
            created: None,
        }
    }

    fn request<'a>(&'a self, fifo: Option<&'a Path>) -> CreateRequest<'a> {
        CreateRequest {
            id: &self.id,
            bundle: self.dir.path(),
            spec: &self.spec,
            rootfs: self.rootfs(),
            exec_fifo: fifo,
            console_socket: None,
            no_pivot: false,
            preserve_fds: 0,
            cgroup_path: self.cgroup_path(),
        }
    }
}

/// Run `f` in a forked, single-threaded copy of this process with stdout/stderr sent to a file;
/// returns (f's result, captured output).
fn isolated(f: impl FnOnce() -> Result<String, String>) -> (Result<String, String>, String) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        drop(r);
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let o = fs::OpenOptions::new().write(true).open(out.path()).unwrap();
            unsafe {
                libc::dup2(o.as_raw_fd(), 1);
                libc::dup2(o.as_raw_fd(), 2);
            }
            f()
        }));
        let msg = match res {
            Ok(Ok(s)) => format!("O{s}"),
            Ok(Err(e)) => format!("E{e}"),
            Err(_) => "Epanic in the isolated child".to_string(),
        };
        let mut wf = fs::File::from(w);
        let _ = std::io::Write::write_all(&mut wf, msg.as_bytes());
        unsafe { libc::_exit(0) };
    }
    drop(w);
    let mut s = String::new();
    fs::File::from(r).read_to_string(&mut s).unwrap();
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let output = fs::read_to_string(out.path()).unwrap_or_default();
    let res = match s.split_at_checked(1) {
        Some(("O", rest)) => Ok(rest.to_string()),
        Some(("E", rest)) => Err(rest.to_string()),
        _ => Err(format!(
            "isolated child died (status {status}); output: {output}"
        )),
    };
    (res, output)
}

/// Describe a wait status like a shell would: "exit N" or "signal N".
fn wait_desc(pid: i32) -> String {
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) {
        format!("exit {}", libc::WEXITSTATUS(status))
    } else {
        format!("signal {}", libc::WTERMSIG(status))
    }
}

fn cgroup_exists(path: &str) -> bool {
    let rel = path.trim_start_matches('/');
    ["pids", "memory", "cpuset", "freezer"]
        .iter()
        .any(|c| Path::new("/sys/fs/cgroup").join(c).join(rel).exists())
        || (Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
            && Path::new("/sys/fs/cgroup").join(rel).exists())
}

/// create with a FIFO, release, wait; returns the exit description, output in the second value.
fn run(b: &Bundle) -> (Result<String, String>, String) {
    let fifo = b.dir.path().join("exec.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    isolated(|| {
        let req = b.request(Some(&fifo));
        let created = container::create(&req, &b.state()).map_err(|e| e.to_string())?;
        container::release(&fifo, created.pid).map_err(|e| e.to_string())?;
        let _ = fs::remove_file(&fifo);
        let st = wait_desc(created.pid);
        container::destroy_cgroup(&b.cgroup_path()).map_err(|e| e.to_string())?;
        Ok(st)
    })
}

#[test]
fn echo_exit_status_and_hostname() {
    if !is_root() {
        return;
    }
    let b = Bundle::new("echo", &["sh", "-c", "echo hello; hostname; exit 3"]);
    let (res, out) = run(&b);
    assert_eq!(res, Ok("exit 3".to_string()), "output: {out}");
    assert_eq!(out, "hello\nrunc\n");
    assert!(!cgroup_exists(&b.cgroup_path()));
}
