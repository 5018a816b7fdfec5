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

/// Held while a file is open for writing and while forking, so that no forked test child
/// inherits a write fd of another test's busybox copy (which would make its exec fail with
/// ETXTBSY).
static FORK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
        {
            let _g = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        }
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
    let pid = {
        let _g = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        unsafe { libc::fork() }
    };
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
        let released = container::release(&fifo, created.pid);
        let _ = fs::remove_file(&fifo);
        if released.is_err() {
            unsafe { libc::kill(created.pid, libc::SIGKILL) };
        }
        let st = wait_desc(created.pid);
        container::destroy_cgroup(&b.cgroup_path()).map_err(|e| e.to_string())?;
        released.map_err(|e| e.to_string())?;
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

fn set_process(b: &mut Bundle, f: impl FnOnce(&mut oci_spec::runtime::Process)) {
    let mut p = b.spec.process().clone().unwrap();
    f(&mut p);
    b.spec.set_process(Some(p));
}

fn set_linux(b: &mut Bundle, f: impl FnOnce(&mut oci_spec::runtime::Linux)) {
    let mut l = b.spec.linux().clone().unwrap();
    f(&mut l);
    b.spec.set_linux(Some(l));
}

#[test]
fn env_user_groups_and_capabilities() {
    if !is_root() {
        return;
    }
    let mut b = Bundle::new(
        "user",
        &["sh", "-c", "echo $FOO; id -u; id -g; id -G; grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status; pwd; env | wc -l"],
    );
    fs::create_dir_all(b.rootfs().join("work")).unwrap();
    set_process(&mut b, |p| {
        p.set_env(Some(vec!["PATH=/bin".into(), "FOO=bar".into()]));
        let mut u = p.user().clone();
        u.set_uid(1000);
        u.set_gid(1001);
        u.set_additional_gids(Some(vec![10, 20]));
        // Ambient capabilities need the inheritable set too (runc's default spec has none).
        let mut c = p.capabilities().clone().unwrap();
        c.set_inheritable(c.ambient().clone());
        p.set_capabilities(Some(c));
        p.set_user(u);
        p.set_cwd("/work".into());
    });
    let (res, out) = run(&b);
    assert_eq!(res, Ok("exit 0".to_string()), "output: {out}");
    // CAP_AUDIT_WRITE (29), CAP_KILL (5), CAP_NET_BIND_SERVICE (10) = 0x20000420.
    let caps = "0000000020000420";
    assert_eq!(
        out,
        format!(
            "bar\n1000\n1001\n1001 10 20\nCapInh:\t{caps}\nCapPrm:\t{caps}\nCapEff:\t{caps}\nCapBnd:\t{caps}\nCapAmb:\t{caps}\n/work\n4\n"
        )
    );
}

#[test]
fn root_user_keeps_only_the_bounding_set_and_rootfs_is_read_only() {
    if !is_root() {
        return;
    }
    let b = Bundle::new(
        "ro",
        &["sh", "-c", "grep CapEff /proc/self/status; touch /x 2>/dev/null && echo rootfs-writable; touch /dev/shm/x && echo shm-ok; (echo 1 > /proc/sys/vm/overcommit_memory) 2>/dev/null || echo procsys-ro; wc -c < /proc/timer_list; ls /sys/firmware | wc -l; ls /dev; grep -c . /proc/self/mounts >/dev/null && echo mounts-ok"],
    );
    let (res, out) = run(&b);
    assert_eq!(res, Ok("exit 0".to_string()), "output: {out}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("CapEff:\t0000000020000420"));
    assert_eq!(lines.next(), Some("shm-ok"));
    assert_eq!(lines.next(), Some("procsys-ro"));
    assert_eq!(lines.next(), Some("0"), "/proc/timer_list masked");
    assert_eq!(lines.next(), Some("0"), "/sys/firmware masked");
    let rest: Vec<&str> = lines.collect();
    for dev in [
        "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
        "tty", "urandom", "zero", "fd",
    ] {
        assert!(rest.contains(&dev), "/dev/{dev} missing: {out}");
    }
    assert!(rest.contains(&"mounts-ok"));
}

#[test]
fn memory_pids_and_cpu_limits_are_applied() {
    if !is_root() {
        return;
    }
    let mut b = Bundle::new(
        "limits",
        &["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.shares /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpuset/cpuset.cpus 2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.weight /sys/fs/cgroup/cpu.max /sys/fs/cgroup/cpuset.cpus"],
    );
    let res: oci_spec::runtime::LinuxResources = serde_json::from_str(
        r#"{"memory": {"limit": 67108864, "reservation": 33554432}, "pids": {"limit": 42},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"}}"#,
    )
    .unwrap();
    set_linux(&mut b, |l| {
        l.set_resources(Some(res));
    });
    let (r, out) = run(&b);
    assert_eq!(r, Ok("exit 0".to_string()), "output: {out}");
    let v1 = "67108864\n42\n512\n50000\n0\n";
    let v2 = "67108864\n42\n20\n50000 100000\n0\n";
    assert!(out == v1 || out == v2, "unexpected limits: {out:?}");
    assert!(!cgroup_exists(&b.cgroup_path()));
}

#[test]
fn memory_limit_oom_kills_the_process() {
    if !is_root() {
        return;
    }
    let mut b = Bundle::new("oom", &["tail", "/dev/zero"]);
    let res: oci_spec::runtime::LinuxResources =
        serde_json::from_str(r#"{"memory": {"limit": 16777216, "swap": 16777216}}"#).unwrap();
    set_linux(&mut b, |l| {
        l.set_resources(Some(res));
    });
    let (r, out) = run(&b);
    assert_eq!(r, Ok("signal 9".to_string()), "output: {out}");
}

fn expect_create_error(b: &Bundle, needle: &str) {
    let fifo = b.dir.path().join("exec.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (res, out) = isolated(|| {
        let req = b.request(Some(&fifo));
        match container::create(&req, &b.state()) {
            Ok(c) => Err(format!("create succeeded unexpectedly (pid {})", c.pid)),
            Err(e) => {
                // No child may be left: waitpid must report ECHILD.
                let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
                Ok(format!("{e}|{r}"))
            }
        }
    });
    let msg = res.unwrap_or_else(|e| panic!("{e}; output: {out}"));
    let (err, wait) = msg.split_once('|').unwrap();
    assert!(err.contains(needle), "error {err:?} lacks {needle:?}");
    assert_eq!(wait, "-1", "a child process was left behind");
    assert!(!cgroup_exists(&b.cgroup_path()), "cgroup left behind");
}

#[test]
fn bad_cwd_missing_binary_and_bad_mount_are_clear_errors_without_leftovers() {
    if !is_root() {
        return;
    }
    let mut b = Bundle::new("badcwd", &["true"]);
    set_process(&mut b, |p| {
        p.set_cwd("/nonexistent".into());
    });
    expect_create_error(&b, "cwd /nonexistent: ENOENT");

    let b = Bundle::new("nobin", &["no-such-binary"]);
    expect_create_error(
        &b,
        "exec no-such-binary: executable file not found in $PATH",
    );

    let mut b = Bundle::new("badmount", &["true"]);
    let mut mounts = b.spec.mounts().clone().unwrap();
    mounts.push(
        serde_json::from_str(r#"{"destination": "/data", "type": "nosuchfs", "source": "x"}"#)
            .unwrap(),
    );
    b.spec.set_mounts(Some(mounts));
    expect_create_error(&b, "mount nosuchfs on /data: ENODEV");

    let mut b = Bundle::new("escape", &["true"]);
    let mut mounts = b.spec.mounts().clone().unwrap();
    mounts.push(
        serde_json::from_str(
            r#"{"destination": "/../../etc/x", "type": "tmpfs", "source": "tmpfs"}"#,
        )
        .unwrap(),
    );
    b.spec.set_mounts(Some(mounts));
    expect_create_error(&b, "escapes the container rootfs");
}

#[test]
fn exec_into_a_running_container() {
    if !is_root() {
        return;
    }
    let b = Bundle::new("exec", &["sleep", "30"]);
    let fifo = b.dir.path().join("exec.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (res, out) = isolated(|| {
        let req = b.request(Some(&fifo));
        let created = container::create(&req, &b.state()).map_err(|e| e.to_string())?;
        container::release(&fifo, created.pid).map_err(|e| e.to_string())?;
        let mut p = b.spec.process().clone().unwrap();
        p.set_args(Some(vec![
            "sh".into(),
            "-c".into(),
            "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$; grep -E '^[0-9]+:(pids|memory):' /proc/self/cgroup | cut -d: -f3; exit 7".into(),
        ]));
        p.set_env(Some(vec!["PATH=/bin".into()]));
        let ereq = ExecRequest {
            container_pid: created.pid,
            spec: &b.spec,
            process: &p,
            console_socket: None,
            cgroup_path: b.cgroup_path(),
            preserve_fds: 0,
        };
        let pids_before = container::cgroup_pids(&b.cgroup_path()).map_err(|e| e.to_string())?;
        let epid = container::exec(&ereq).map_err(|e| e.to_string())?;
        let est = wait_desc(epid);
        unsafe { libc::kill(created.pid, libc::SIGKILL) };
        let ist = wait_desc(created.pid);
        container::destroy_cgroup(&b.cgroup_path()).map_err(|e| e.to_string())?;
        Ok(format!(
            "{est} {ist} {:?}",
            pids_before == vec![created.pid]
        ))
    });
    assert_eq!(res, Ok("exit 7 signal 9 true".to_string()), "output: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "runc");
    assert_eq!(lines[1].trim(), "sleep 30");
    assert!(
        lines[2].parse::<i32>().unwrap() > 1,
        "exec'd process is in the container pid ns: {out}"
    );
    assert_eq!(
        &lines[3..],
        &[b.cgroup_path(), b.cgroup_path()],
        "exec'd process in the cgroup"
    );
    assert!(!cgroup_exists(&b.cgroup_path()));
}

fn hook(path: &str, script: &str) -> oci_spec::runtime::Hook {
    serde_json::from_value(serde_json::json!({
        "path": path, "args": ["sh", "-c", script], "env": ["PATH=/bin:/usr/bin"], "timeout": 5
    }))
    .unwrap()
}

#[test]
fn hooks_run_in_order_with_state_and_no_fifo_mode_execs_directly() {
    if !is_root() {
        return;
    }
    let mut b = Bundle::new("hooks", &["sh", "-c", "cat /hooks.log"]);
    let log = b.dir.path().join("hooks.log");
    fs::write(&log, "").unwrap();
    // createRuntime and createContainer see the host paths; startContainer runs in the container.
    let l = log.display().to_string();
    let hooks: oci_spec::runtime::Hooks = serde_json::from_value(serde_json::json!({
        "createRuntime": [hook("/bin/sh", &format!("grep -q '\"status\":\"creating\"' && echo createRuntime >> {l}"))],
        "createContainer": [hook("/bin/sh", &format!("grep -o '\"id\":\"[^\"]*\"' >/dev/null && echo createContainer >> {l}"))],
        "startContainer": [hook("/bin/sh", "echo startContainer >> /hooks.log")],
    }))
    .unwrap();
    b.spec.set_hooks(Some(hooks));
    let mut root = b.spec.root().clone().unwrap();
    root.set_readonly(Some(false));
    b.spec.set_root(Some(root));
    // The container reads the host log through a bind mount.
    let mut mounts = b.spec.mounts().clone().unwrap();
    mounts.push(
        serde_json::from_value(serde_json::json!({
            "destination": "/hooks.log", "type": "bind", "source": l, "options": ["rbind", "rw"]
        }))
        .unwrap(),
    );
    b.spec.set_mounts(Some(mounts));
    let (res, out) = isolated(|| {
        let req = b.request(None);
        let created = container::create(&req, &b.state()).map_err(|e| e.to_string())?;
        let st = wait_desc(created.pid);
        container::destroy_cgroup(&b.cgroup_path()).map_err(|e| e.to_string())?;
        Ok(st)
    });
    assert_eq!(res, Ok("exit 0".to_string()), "output: {out}");
    assert_eq!(out, "createRuntime\ncreateContainer\nstartContainer\n");
}

#[test]
fn failing_create_runtime_hook_is_an_error_naming_the_hook() {
    if !is_root() {
        return;
    }
    let mut b = Bundle::new("badhook", &["true"]);
    let hooks: oci_spec::runtime::Hooks = serde_json::from_value(serde_json::json!({
        "createRuntime": [hook("/bin/sh", "exit 4")],
    }))
    .unwrap();
    b.spec.set_hooks(Some(hooks));
    expect_create_error(&b, "createRuntime hook /bin/sh: failed: exit status: 4");
}

#[test]
fn release_of_a_dead_init_is_an_error_not_a_hang() {
    if !is_root() {
        return;
    }
    let b = Bundle::new("dead", &["true"]);
    let fifo = b.dir.path().join("exec.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (res, out) = isolated(|| {
        let req = b.request(Some(&fifo));
        let created = container::create(&req, &b.state()).map_err(|e| e.to_string())?;
        unsafe { libc::kill(created.pid, libc::SIGKILL) };
        let st = wait_desc(created.pid);
        let r = container::release(&fifo, created.pid);
        container::destroy_cgroup(&b.cgroup_path()).map_err(|e| e.to_string())?;
        Ok(format!(
            "{st}; {}",
            r.map(|_| "released".to_string())
                .unwrap_or_else(|e| e.to_string())
        ))
    });
    let msg = res.unwrap_or_else(|e| panic!("{e}; output {out}"));
    assert!(msg.starts_with("signal 9; container process"), "{msg}");
    assert!(msg.ends_with("is not running"), "{msg}");
}

/// Receive one fd sent with SCM_RIGHTS.
fn recv_fd(sock: &std::os::unix::net::UnixStream) -> (OwnedFd, Vec<u8>) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    let mut fd = None;
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            fd = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
        }
    }
    let n = msg.bytes;
    (fd.expect("no fd received"), buf[..n].to_vec())
}

#[test]
fn terminal_master_is_sent_to_the_console_socket() {
    if !is_root() {
        return;
    }
    let mut b = Bundle::new("tty", &["sh", "-c", "tty; echo hi-from-tty"]);
    set_process(&mut b, |p| {
        p.set_terminal(Some(true));
    });
    let sock_path = b.dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let fifo = b.dir.path().join("exec.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (res, out) = isolated(|| {
        let mut req = b.request(Some(&fifo));
        req.console_socket = Some(&sock_path);
        let created = container::create(&req, &b.state()).map_err(|e| e.to_string())?;
        let (conn, _) = listener.accept().map_err(|e| e.to_string())?;
        let (master, name) = recv_fd(&conn);
        container::release(&fifo, created.pid).map_err(|e| e.to_string())?;
        let st = wait_desc(created.pid);
        let mut text = Vec::new();
        let mut f = fs::File::from(master);
        let _ = f.read_to_end(&mut text); // ends with EIO once the slave is closed
        container::destroy_cgroup(&b.cgroup_path()).map_err(|e| e.to_string())?;
        Ok(format!(
            "{st}|{}|{}",
            String::from_utf8_lossy(&name),
            String::from_utf8_lossy(&text)
        ))
    });
    let msg = res.unwrap_or_else(|e| panic!("{e}; output {out}"));
    assert_eq!(
        msg, "exit 0|/dev/ptmx|/dev/pts/0\r\nhi-from-tty\r\n",
        "output {out}"
    );
}

fn userns_bundle(tag: &str, args: &[&str]) -> Bundle {
    let mut b = Bundle::new(tag, args);
    set_linux(&mut b, |l| {
        let mut ns = l.namespaces().clone().unwrap();
        ns.push(serde_json::from_str(r#"{"type": "user"}"#).unwrap());
        l.set_namespaces(Some(ns));
        l.set_uid_mappings(Some(vec![serde_json::from_str(
            r#"{"containerID": 0, "hostID": 100000, "size": 65536}"#,
        )
        .unwrap()]));
        l.set_gid_mappings(Some(vec![serde_json::from_str(
            r#"{"containerID": 0, "hostID": 100000, "size": 65536}"#,
        )
        .unwrap()]));
    });
    for entry in [
        "",
        "bin",
        "bin/busybox",
        "proc",
        "dev",
        "sys",
        "tmp",
        "etc",
        "root",
        "etc/passwd",
    ] {
        nix::unistd::chown(
            &b.rootfs().join(entry),
            Some(100000.into()),
            Some(100000.into()),
        )
        .unwrap();
    }
    b
}

#[test]
fn exec_into_a_user_namespace_container() {
    if !is_root() {
        return;
    }
    let b = userns_bundle("execuserns", &["sleep", "30"]);
    let fifo = b.dir.path().join("exec.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (res, out) = isolated(|| {
        let req = b.request(Some(&fifo));
        let created = container::create(&req, &b.state()).map_err(|e| e.to_string())?;
        container::release(&fifo, created.pid).map_err(|e| e.to_string())?;
        let mut p = b.spec.process().clone().unwrap();
        p.set_args(Some(vec![
            "sh".into(),
            "-c".into(),
            "id -u; cat /proc/self/uid_map; touch /dev/shm/f; stat -c %u /dev/shm/f".into(),
        ]));
        let ereq = ExecRequest {
            container_pid: created.pid,
            spec: &b.spec,
            process: &p,
            console_socket: None,
            cgroup_path: b.cgroup_path(),
            preserve_fds: 0,
        };
        let epid = container::exec(&ereq).map_err(|e| e.to_string())?;
        let est = wait_desc(epid);
        unsafe { libc::kill(created.pid, libc::SIGKILL) };
        wait_desc(created.pid);
        container::destroy_cgroup(&b.cgroup_path()).map_err(|e| e.to_string())?;
        Ok(est)
    });
    assert_eq!(res, Ok("exit 0".to_string()), "output: {out}");
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(lines, vec!["0", "0 100000 65536", "0"], "output: {out}");
}

#[test]
fn user_namespace_with_id_mappings() {
    if !is_root() {
        return;
    }
    let b = userns_bundle(
        "userns",
        &[
            "sh",
            "-c",
            "id -u; cat /proc/self/uid_map; stat -c %u /bin/busybox; hostname",
        ],
    );
    let (res, out) = run(&b);
    assert_eq!(res, Ok("exit 0".to_string()), "output: {out}");
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        lines,
        vec!["0", "0 100000 65536", "0", "runc"],
        "output: {out}"
    );
}

#[test]
fn no_pivot_sysctl_and_preserved_fds() {
    if !is_root() {
        return;
    }
    let mut b = Bundle::new(
        "nopivot",
        &[
            "sh",
            "-c",
            "cat <&3; cat /proc/sys/net/ipv4/ip_forward; ls /proc/self/fd | tr '\\n' ' '",
        ],
    );
    set_linux(&mut b, |l| {
        l.set_sysctl(Some(
            [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
        ));
    });
    let data = b.dir.path().join("fd3.txt");
    fs::write(&data, "preserved\n").unwrap();
    let fifo = b.dir.path().join("exec.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (res, out) = isolated(|| {
        let f = fs::File::open(&data).map_err(|e| e.to_string())?;
        unsafe { libc::dup2(f.as_raw_fd(), 3) };
        let mut req = b.request(Some(&fifo));
        req.no_pivot = true;
        req.preserve_fds = 1;
        let created = container::create(&req, &b.state()).map_err(|e| e.to_string())?;
        container::release(&fifo, created.pid).map_err(|e| e.to_string())?;
        let st = wait_desc(created.pid);
        container::destroy_cgroup(&b.cgroup_path()).map_err(|e| e.to_string())?;
        Ok(st)
    });
    assert_eq!(res, Ok("exit 0".to_string()), "output: {out}");
    assert_eq!(out, "preserved\n1\n0 1 2 3 4 ");
}

#[test]
fn network_namespace_joined_by_path() {
    if !is_root() {
        return;
    }
    let a = Bundle::new("netns-a", &["sleep", "30"]);
    let mut b = Bundle::new(
        "netns-b",
        &[
            "sh",
            "-c",
            "readlink /proc/self/ns/net; readlink /proc/self/ns/uts",
        ],
    );
    let fifo = a.dir.path().join("exec.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (res, out) = isolated(|| {
        let req = a.request(Some(&fifo));
        let ca = container::create(&req, &a.state()).map_err(|e| e.to_string())?;
        let net_a = fs::read_link(format!("/proc/{}/ns/net", ca.pid)).map_err(|e| e.to_string())?;
        let uts_a = fs::read_link(format!("/proc/{}/ns/uts", ca.pid)).map_err(|e| e.to_string())?;
        let own_net = fs::read_link("/proc/self/ns/net").map_err(|e| e.to_string())?;
        set_linux(&mut b, |l| {
            let ns: Vec<oci_spec::runtime::LinuxNamespace> = l
                .namespaces()
                .clone()
                .unwrap()
                .into_iter()
                .map(|n| {
                    if n.typ() == oci_spec::runtime::LinuxNamespaceType::Network {
                        serde_json::from_value(serde_json::json!({"type": "network", "path": format!("/proc/{}/ns/net", ca.pid)})).unwrap()
                    } else {
                        n
                    }
                })
                .collect();
            l.set_namespaces(Some(ns));
        });
        let rb = b.request(None);
        let cb = container::create(&rb, &b.state()).map_err(|e| e.to_string())?;
        let stb = wait_desc(cb.pid);
        let still_own = fs::read_link("/proc/self/ns/net").map_err(|e| e.to_string())? == own_net;
        unsafe { libc::kill(ca.pid, libc::SIGKILL) };
        wait_desc(ca.pid);
        container::destroy_cgroup(&a.cgroup_path()).map_err(|e| e.to_string())?;
        container::destroy_cgroup(&b.cgroup_path()).map_err(|e| e.to_string())?;
        Ok(format!(
            "{stb}|{}|{}|{still_own}",
            net_a.display(),
            uts_a.display()
        ))
    });
    let msg = res.unwrap_or_else(|e| panic!("{e}; output {out}"));
    let parts: Vec<&str> = msg.split('|').collect();
    assert_eq!(parts[0], "exit 0", "output {out}");
    assert_eq!(
        parts[3], "true",
        "the caller went back to its own network namespace"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], parts[1], "B shares A's network namespace");
    assert_ne!(lines[1], parts[2], "B has its own uts namespace");
}

#[test]
fn cgroup_namespace_is_rooted_at_the_container_cgroup() {
    if !is_root() {
        return;
    }
    let mut b = Bundle::new(
        "cgns",
        &["sh", "-c", "grep -c -v ':/$' /proc/self/cgroup; cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"],
    );
    set_linux(&mut b, |l| {
        let mut ns = l.namespaces().clone().unwrap();
        ns.push(serde_json::from_str(r#"{"type": "cgroup"}"#).unwrap());
        l.set_namespaces(Some(ns));
        l.set_resources(Some(
            serde_json::from_str(r#"{"pids": {"limit": 17}}"#).unwrap(),
        ));
    });
    let (res, out) = run(&b);
    assert_eq!(res, Ok("exit 0".to_string()), "output: {out}");
    assert_eq!(out, "0\n17\n");
}

#[test]
fn device_cgroup_denies_all_but_the_default_devices() {
    if !is_root() || !Path::new("/sys/fs/cgroup/devices").exists() {
        return;
    }
    let b = Bundle::new(
        "devices",
        &["sh", "-c", "head -c 3 /dev/zero | wc -c; echo x > /dev/null && echo null-ok; cat /sys/fs/cgroup/devices/devices.list"],
    );
    let (res, out) = run(&b);
    assert_eq!(res, Ok("exit 0".to_string()), "output: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], &["3", "null-ok"]);
    assert!(!lines.contains(&"a *:* rwm"), "deny-all not applied: {out}");
    assert!(
        lines.contains(&"c 1:3 rwm") && lines.contains(&"c 136:* rwm"),
        "{out}"
    );
}

#[test]
fn seccomp_profile_is_enforced_with_and_without_no_new_privileges() {
    if !is_root() {
        return;
    }
    for nnp in [true, false] {
        let mut b = Bundle::new(
            "seccomp",
            &[
                "sh",
                "-c",
                "mkdir /dev/shm/x; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status",
            ],
        );
        set_process(&mut b, |p| {
            p.set_no_new_privileges(Some(nnp));
        });
        set_linux(&mut b, |l| {
            l.set_seccomp(Some(
                serde_json::from_str(
                    r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}"#,
                )
                .unwrap(),
            ));
        });
        let (res, out) = run(&b);
        assert_eq!(res, Ok("exit 0".to_string()), "output: {out}");
        assert_eq!(
            out,
            format!(
                "mkdir: can't create directory '/dev/shm/x': Function not implemented\nNoNewPrivs:\t{}\nSeccomp:\t2\n",
                nnp as u8
            )
        );
    }
}

#[test]
fn exec_with_a_terminal_and_a_different_user() {
    if !is_root() {
        return;
    }
    let b = Bundle::new("exectty", &["sleep", "30"]);
    let fifo = b.dir.path().join("exec.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let sock_path = b.dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let (res, out) = isolated(|| {
        let req = b.request(Some(&fifo));
        let created = container::create(&req, &b.state()).map_err(|e| e.to_string())?;
        container::release(&fifo, created.pid).map_err(|e| e.to_string())?;
        let mut p = b.spec.process().clone().unwrap();
        p.set_args(Some(vec![
            "sh".into(),
            "-c".into(),
            "tty; id -u; echo $X".into(),
        ]));
        p.set_env(Some(vec!["PATH=/bin".into(), "X=exec-env".into()]));
        p.set_terminal(Some(true));
        let mut u = p.user().clone();
        u.set_uid(123);
        u.set_gid(123);
        p.set_user(u);
        let ereq = ExecRequest {
            container_pid: created.pid,
            spec: &b.spec,
            process: &p,
            console_socket: Some(&sock_path),
            cgroup_path: b.cgroup_path(),
            preserve_fds: 0,
        };
        let epid = container::exec(&ereq).map_err(|e| e.to_string())?;
        let (conn, _) = listener.accept().map_err(|e| e.to_string())?;
        let (master, _) = recv_fd(&conn);
        let est = wait_desc(epid);
        let mut text = Vec::new();
        let _ = fs::File::from(master).read_to_end(&mut text);
        unsafe { libc::kill(created.pid, libc::SIGKILL) };
        wait_desc(created.pid);
        container::destroy_cgroup(&b.cgroup_path()).map_err(|e| e.to_string())?;
        Ok(format!("{est}|{}", String::from_utf8_lossy(&text)))
    });
    let msg = res.unwrap_or_else(|e| panic!("{e}; output {out}"));
    assert_eq!(
        msg, "exit 0|/dev/pts/0\r\n123\r\nexec-env\r\n",
        "output {out}"
    );
}

#[test]
fn rlimits_oom_score_adj_umask_and_domainname() {
    if !is_root() {
        return;
    }
    let mut b = Bundle::new(
        "rlimits",
        &["sh", "-c", "ulimit -n; ulimit -Hn; cat /proc/self/oom_score_adj; umask; cat /proc/sys/kernel/domainname"],
    );
    set_process(&mut b, |p| {
        p.set_rlimits(Some(vec![serde_json::from_str(
            r#"{"type": "RLIMIT_NOFILE", "soft": 1234, "hard": 2345}"#,
        )
        .unwrap()]));
        p.set_oom_score_adj(Some(500));
        let mut u = p.user().clone();
        u.set_umask(Some(0o077));
        p.set_user(u);
    });
    b.spec.set_domainname(Some("example.org".into()));
    let (res, out) = run(&b);
    assert_eq!(res, Ok("exit 0".to_string()), "output: {out}");
    assert_eq!(out, "1234\n2345\n500\n0077\nexample.org\n");
}
