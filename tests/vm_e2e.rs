//! End-to-end tests of `kvmbox --isolation vm`: real microVMs booting the project's guest
//! kernel with kvmbox-agent as PID 1 (root, /dev/kvm).
//!
//! A boot takes 15–60 s on this nested host, so the tests are few, each boots at most one VM
//! and checks several things in it, and they run one at a time (a lock shared by every test
//! of this binary and a file lock against other `cargo test` processes). They skip, saying so,
//! when `KVMBOX_SKIP_VM_TESTS=1` and no kernel or agent is built.

mod common;
mod vm_common;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{read_pty, receive_fd, Bundle, Harness, Outcome};
use serde_json::{json, Value};

/// How much longer than the agent timeout (a boot) one kvmbox command may take.
const COMMAND_MARGIN: Duration = Duration::from_secs(120);

/// One VM test at a time within this binary.
static SERIAL: Mutex<()> = Mutex::new(());

/// A test's world: the harness (temp dir, bundles), the kernel, its own `--root`, and the
/// locks serialising VM tests.
struct Vm {
    h: Harness,
    kernel: PathBuf,
    agent: PathBuf,
    root: PathBuf,
    timeout: Duration,
    _file_lock: fs::File,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Vm {
    /// None (after saying why) when the VM tests cannot run here and may be skipped.
    fn new() -> Option<Vm> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let kernel = vm_common::guest_kernel()?;
        let agent = match find_agent() {
            Ok(a) => a,
            Err(msg) if std::env::var("KVMBOX_SKIP_VM_TESTS").as_deref() == Ok("1") => {
                eprintln!("skipped (KVMBOX_SKIP_VM_TESTS=1): {msg}");
                return None;
            }
            Err(msg) => panic!("{msg}"),
        };
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("kvmbox-vm-e2e.lock"))
            .expect("open the VM test lock file");
        // SAFETY: flock on an fd we own.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let h = Harness::new();
        // Deep enough that `<root>/<id>/vsock.sock` outgrows sun_path (107 bytes) for a CRI
        // id of 64 characters, as under containerd's state roots: the VM's sockets must work.
        let root = h.dir().join("vm-state").join("d".repeat(32));
        Some(Vm {
            h,
            kernel,
            agent,
            root,
            timeout: vm_common::boot_timeout(400),
            _file_lock: lock,
            _serial: serial,
        })
    }

    /// A busybox bundle running `sh -c script`, with a small memory limit (the VM is sized
    /// from it).
    fn bundle(&self, script: &str) -> Bundle {
        let b = self.h.bundle(&["sh", "-c", script]);
        b.edit(|c| {
            c["linux"]["resources"]["memory"] = json!({"limit": 64 << 20});
        });
        b
    }

    /// `kvmbox --isolation vm --root R <args>` with `stdin` as input.
    fn kvmbox(&self, args: &[&str], stdin: Option<&str>) -> Outcome {
        self.kvmbox_with(&[], args, stdin)
    }

    fn kvmbox_with(&self, globals: &[&str], args: &[&str], stdin: Option<&str>) -> Outcome {
        let mut full: Vec<String> = vec![
            "--root".into(),
            self.root.display().to_string(),
            "--isolation".into(),
            "vm".into(),
        ];
        full.extend(globals.iter().map(|s| s.to_string()));
        full.extend(args.iter().map(|s| s.to_string()));
        run_with_input(
            &full,
            self.h.dir(),
            stdin,
            self.timeout + COMMAND_MARGIN,
            &[
                ("KVMBOX_KERNEL", self.kernel.as_os_str()),
                ("KVMBOX_AGENT", self.agent.as_os_str()),
                ("KVMBOX_AGENT_TIMEOUT", self.agent_timeout().as_ref()),
            ],
        )
    }

    /// The agent timeout for the kvmbox commands: as long as a boot may take here.
    fn agent_timeout(&self) -> std::ffi::OsString {
        self.timeout.as_secs().to_string().into()
    }

    fn state(&self, id: &str) -> Value {
        let out = self.kvmbox(&["state", id], None);
        out.ok();
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("state {id}: {e}\n{out}"))
    }

    /// Poll `state` until `status` (panics after 180 s: the guest is slow under load here).
    fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let st = self.state(id);
            if st["status"] == status {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never became {status}: {st}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Nothing of container `id` is left: no state dir, no host mount under the state root,
    /// no VMM or relay process.
    fn assert_no_leftovers(&self, id: &str) {
        let dir = self.root.join(id);
        assert!(!dir.exists(), "state dir {} left behind", dir.display());
        // Its own state dir, or its directory in a pod sandbox's shared dir.
        let mounts: Vec<String> = mounts_under(&self.root)
            .into_iter()
            .filter(|p| Path::new(p).components().any(|c| c.as_os_str() == id))
            .collect();
        assert!(mounts.is_empty(), "host mounts of {id} left: {mounts:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = processes_mentioning(&dir.display().to_string(), id);
            if procs.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "processes of {id} left: {procs:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The static agent: `KVMBOX_AGENT` or cargo's target dir (not the dynamically linked debug
/// build next to kvmbox, which cannot run in the guest).
fn find_agent() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("KVMBOX_AGENT") {
        return Ok(PathBuf::from(p));
    }
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_kvmbox"));
    let dir = exe.parent().expect("exe dir");
    let p = dir.join("../x86_64-unknown-linux-gnu/release/kvmbox-agent");
    if p.is_file() {
        return Ok(p);
    }
    Err("no static kvmbox-agent built: run `RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build -p guest-agent --release --bin kvmbox-agent --target x86_64-unknown-linux-gnu` (make test does) or set KVMBOX_AGENT".into())
}

/// Run kvmbox with `args` and `env` (an empty value removes the variable), feeding `stdin`
/// (closed stdin if None); stdout/stderr go to files (a relay may outlive the command holding
/// them). Fails the test after `timeout`.
fn run_with_input(
    args: &[String],
    cwd: &Path,
    stdin: Option<&str>,
    timeout: Duration,
    env: &[(&str, &std::ffi::OsStr)],
) -> Outcome {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let exe = env!("CARGO_BIN_EXE_kvmbox");
    let command = format!("kvmbox {}", args.join(" "));
    let out_path = cwd.join(format!(".vm-out-{n}"));
    let err_path = cwd.join(format!(".vm-err-{n}"));
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap());
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_string();
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = fs::read_to_string(&err_path).unwrap_or_default();
            panic!("{command} timed out after {timeout:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| {
        let mut s = String::new();
        let _ = fs::File::open(p).and_then(|mut f| f.read_to_string(&mut s));
        let _ = fs::remove_file(p);
        s
    };
    eprintln!(
        "[{:>6.1}s] {command} → {:?}",
        start.elapsed().as_secs_f32(),
        status.code()
    );
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    if let Some(line) = stderr.lines().find(|l| l.starts_with("kvmbox: error:")) {
        eprintln!("    {line}");
    }
    Outcome {
        command,
        code: status.code(),
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

/// Mount points in /proc/self/mountinfo at or below `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&dir))
        .map(String::from)
        .collect()
}

/// Live (non-zombie) processes whose command line mentions `a` or `b`, except ourselves.
fn processes_mentioning(a: &str, b: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me || common::is_zombie_or_gone(pid) {
            continue;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(a) || cmdline.contains(b) {
            out.push((pid, cmdline));
        }
    }
    out
}

/// `run`: output and exit status, stdin piped through, stdout and stderr kept apart.
#[test]
fn run_relays_stdio_and_exit_status() {
    let Some(vm) = Vm::new() else { return };
    let b = vm.bundle(
        "read line; echo \"hello $line from $(uname -r)\"; echo to-stderr >&2; \
         echo written-in-the-guest > /from-guest; exit 7",
    );
    // The rootfs reaches the guest over virtio-fs: a write shows up in the host's bundle.
    b.edit(|c| c["root"]["readonly"] = json!(false));
    // As long as a CRI container id: the vsock socket's path exceeds sun_path.
    let id = format!("{:-<64}", vm.h.id("vmrun"));
    let socket = vm.root.join(&id).join("vsock.sock");
    assert!(socket.as_os_str().len() > kvmbox::vmm::unix_path::SUN_PATH_MAX);
    let started = Instant::now();
    let out = vm.kvmbox(
        &["run", "--bundle", b.dir.to_str().unwrap(), &id],
        Some("world\n"),
    );
    eprintln!("run end to end: {:.1}s", started.elapsed().as_secs_f32());
    out.code(7);
    assert!(out.stdout.starts_with("hello world from "), "{out}");
    assert!(out.stderr.contains("to-stderr"), "{out}");
    assert!(!out.stdout.contains("to-stderr"), "{out}");
    assert_eq!(
        fs::read_to_string(b.rootfs.join("from-guest")).unwrap(),
        "written-in-the-guest\n"
    );
    vm.assert_no_leftovers(&id);
}

/// create/start/state/exec/ps/update/kill/delete of one VM container, with checks of exit
/// codes, a signal exit, stdin, the cgroup v2 memory limit in the guest, an OOM kill (137) and
/// the limits `update` sets in the guest.
#[test]
fn lifecycle_exec_and_memory_limit() {
    let Some(vm) = Vm::new() else { return };
    let b = vm.bundle("echo started; exec sleep 1000");
    let host_dir = vm.h.dir().join("host-dir");
    fs::create_dir_all(&host_dir).unwrap();
    fs::write(host_dir.join("note"), "from the host\n").unwrap();
    b.edit(|c| {
        c["linux"]["resources"]["memory"] = json!({"limit": 16 << 20});
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(
            json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                           "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        );
        mounts.push(json!({"destination": "/host", "type": "bind",
                           "source": host_dir.to_str().unwrap(), "options": ["rbind", "ro"]}));
    });
    let id = vm.h.id("vmlife");
    let bundle = b.dir.to_str().unwrap();
    let pid_file = vm.h.dir().join("vmm.pid");
    vm.kvmbox(
        &[
            "create",
            "--bundle",
            bundle,
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
        ],
        None,
    )
    .ok();
    let st = vm.state(&id);
    assert_eq!(st["status"], "created", "{st}");
    let vmm_pid = st["pid"].as_i64().unwrap();
    assert!(vmm_pid > 0);
    assert_eq!(fs::read_to_string(&pid_file).unwrap(), vmm_pid.to_string());
    let cmdline = fs::read_to_string(format!("/proc/{vmm_pid}/cmdline")).unwrap();
    assert!(
        cmdline.contains("kvmbox-vmm"),
        "state.pid is not the VMM: {cmdline:?}"
    );
    vm.kvmbox(&["start", &id], None).ok();
    vm.wait_status(&id, "running");

    let exec = |args: &[&str], stdin: Option<&str>| {
        let mut full = vec!["exec", id.as_str(), "--"];
        full.extend_from_slice(args);
        vm.kvmbox(&full, stdin)
    };
    let out = exec(&["echo", "hi from exec"], None);
    out.ok();
    assert_eq!(out.stdout, "hi from exec\n", "{out}");
    exec(&["sh", "-c", "exit 7"], None).code(7);
    // root.readonly is honoured over virtio-fs; a host bind mount is shared, read-only.
    let out = exec(&["sh", "-c", "echo x > /new-file"], None);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(!b.rootfs.join("new-file").exists());
    let out = exec(&["sh", "-c", "cat /host/note; echo x > /host/new"], None);
    assert_eq!(out.stdout, "from the host\n", "{out}");
    assert_ne!(out.code, Some(0), "{out}");
    assert!(!host_dir.join("new").exists());
    exec(&["sh", "-c", "kill -TERM $$"], None).code(128 + 15);
    let out = exec(&["cat"], Some("piped through\n"));
    out.ok();
    assert_eq!(out.stdout, "piped through\n", "{out}");
    let out = exec(&["cat", "/sys/fs/cgroup/memory.max"], None);
    out.ok();
    assert_eq!(out.stdout.trim(), (16u64 << 20).to_string(), "{out}");
    let ps = vm.kvmbox(&["ps", "--format", "json", &id], None);
    ps.ok();
    let pids: Vec<i32> = serde_json::from_str(&ps.stdout).unwrap();
    assert!(!pids.is_empty(), "{ps}");
    // dd's 64 MiB buffer cannot fit under the 16 MiB limit: the guest OOM-kills it.
    let out = exec(
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        None,
    );
    out.code(137);
    assert!(out.stderr.to_lowercase().contains("oom"), "{out}");
    // `update` rewrites the limits of the container's cgroup in the guest.
    vm.kvmbox(
        &["update", "--memory", "24m", "--pids-limit", "30", &id],
        None,
    )
    .ok();
    let out = exec(
        &[
            "cat",
            "/sys/fs/cgroup/memory.max",
            "/sys/fs/cgroup/pids.max",
        ],
        None,
    );
    out.ok();
    assert_eq!(out.stdout, format!("{}\n30\n", 24u64 << 20), "{out}");

    vm.kvmbox(&["delete", &id], None)
        .error_line(&["running", "--force"]);
    vm.kvmbox(&["kill", &id, "KILL"], None).ok();
    vm.wait_status(&id, "stopped");
    vm.kvmbox(&["update", "--pids-limit", "5", &id], None)
        .error_line(&[&id, "stopped"]);
    vm.kvmbox(&["delete", &id], None).ok();
    vm.assert_no_leftovers(&id);
    assert!(common::is_zombie_or_gone(vmm_pid as i32));
}

/// The VMM killed with SIGKILL: `state` says stopped, `kill` says not running, `delete
/// --force` cleans up.
#[test]
fn sigkilled_vmm_is_stopped_and_force_deletable() {
    let Some(vm) = Vm::new() else { return };
    let b = vm.bundle("sleep 1000");
    let id = vm.h.id("vmkill");
    vm.kvmbox(
        &["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id],
        None,
    )
    .ok();
    let st = vm.wait_status(&id, "running");
    let vmm_pid = st["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = vm.wait_status(&id, "stopped");
    assert_eq!(st["pid"], 0, "{st}");
    vm.kvmbox(&["kill", &id, "TERM"], None)
        .error_line(&["not running", &id]);
    vm.kvmbox(&["delete", "--force", &id], None).ok();
    vm.assert_no_leftovers(&id);
}

/// Failures before or during boot: each is one error line naming what to look at, and leaves
/// nothing behind.
#[test]
fn boot_failures_are_explained_and_leave_nothing() {
    let Some(vm) = Vm::new() else { return };
    let b = vm.bundle("true");
    let bundle = b.dir.to_str().unwrap();

    // A --kernel that does not exist is named.
    let id = vm.h.id("vmbadkernel");
    vm.kvmbox(
        &[
            "run",
            "--kernel",
            "/nonexistent/vmlinux",
            "--bundle",
            bundle,
            &id,
        ],
        None,
    )
    .error_line(&["/nonexistent/vmlinux", "--kernel"]);
    vm.assert_no_leftovers(&id);

    // No kernel anywhere (no flag, no KVMBOX_KERNEL, an empty build cache): the error says how
    // to build one.
    let id = vm.h.id("vmnokernel");
    let empty_cache = vm.h.dir().join("empty-cache");
    fs::create_dir_all(&empty_cache).unwrap();
    let args: Vec<String> = [
        "--root",
        vm.root.to_str().unwrap(),
        "--isolation",
        "vm",
        "run",
        "--bundle",
        bundle,
        &id,
    ]
    .map(String::from)
    .to_vec();
    run_with_input(
        &args,
        vm.h.dir(),
        None,
        vm.timeout,
        &[
            ("KVMBOX_KERNEL", "".as_ref()),
            ("KVMBOX_CACHE", empty_cache.as_os_str()),
            ("KVMBOX_AGENT", vm.agent.as_os_str()),
        ],
    )
    .error_line(&["no guest kernel", "build.sh", "KVMBOX_KERNEL"]);
    vm.assert_no_leftovers(&id);

    // No /dev/kvm: a private mount namespace whose /dev is a tmpfs holding only /dev/null.
    let id = vm.h.id("vmnokvm");
    let script = "mount -t tmpfs tmpfs /dev && mknod -m 666 /dev/null c 1 3 && exec \"$@\"";
    let mut args = vec![
        "-m".to_string(),
        "sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        env!("CARGO_BIN_EXE_kvmbox").into(),
        "--root".into(),
        vm.root.display().to_string(),
        "--isolation".into(),
        "vm".into(),
    ];
    args.extend(["run", "--bundle", bundle, &id].map(String::from));
    let out = Command::new("unshare")
        .args(&args)
        .env("KVMBOX_KERNEL", &vm.kernel)
        .env("KVMBOX_AGENT", &vm.agent)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = Outcome {
        command: format!("unshare {}", args.join(" ")),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    out.error_line(&["/dev/kvm not found", &id]);
    vm.assert_no_leftovers(&id);

    // The agent does not answer in time (1 s is far less than a boot): the error names the
    // console log.
    let id = vm.h.id("vmtimeout");
    let out = vm.kvmbox_with(
        &["--agent-timeout", "1"],
        &["run", "--bundle", bundle, &id],
        None,
    );
    out.error_line(&["did not answer within 1", "console.log"]);
    vm.assert_no_leftovers(&id);

    // The guest panics: an "agent" that cannot run (its interpreter does not exist) leaves
    // the kernel without an init.
    let id = vm.h.id("vmpanic");
    let bad_agent = vm.h.dir().join("bad-agent");
    fs::write(&bad_agent, "#!/nonexistent/interpreter\n").unwrap();
    fs::set_permissions(
        &bad_agent,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let args: Vec<String> = [
        "--root",
        vm.root.to_str().unwrap(),
        "--isolation",
        "vm",
        "run",
        "--bundle",
        bundle,
        &id,
    ]
    .map(String::from)
    .to_vec();
    let out = run_with_input(
        &args,
        vm.h.dir(),
        None,
        vm.timeout + COMMAND_MARGIN,
        &[
            ("KVMBOX_KERNEL", vm.kernel.as_os_str()),
            ("KVMBOX_AGENT", bad_agent.as_os_str()),
            ("KVMBOX_AGENT_TIMEOUT", vm.agent_timeout().as_ref()),
        ],
    );
    out.error_line(&["vmm", "console.log", "kernel panic"]);
    vm.assert_no_leftovers(&id);
    // The log of the failed boot was kept (the state dir is gone) where the error says.
    let kept = std::env::temp_dir().join(format!("kvmbox-{id}.console.log"));
    assert!(out.stderr.contains(&kept.display().to_string()), "{out}");
    let log = fs::read_to_string(&kept).expect("the kept console log");
    assert!(log.contains("Kernel panic"), "{log}");
    fs::remove_file(&kept).unwrap();
}

/// A pod in one VM (CRI annotations): the sandbox boots it; members join it (same VMM pid,
/// `vm.sandbox` in state.json) with their own output and exit codes — through `run`, through
/// `--console-socket` (the pty master received as runc users do) and through `run -t` on a
/// pty. Deleting members keeps the VM serving the sandbox; the sandbox cannot be deleted while
/// a member exists, but `delete --force` of it deletes the members too and leaves no mount,
/// process or state.
#[test]
fn pod_members_share_the_sandbox_vm() {
    let Some(vm) = Vm::new() else { return };
    let sid = vm.h.id("vmpod");
    let pod = |b: &Bundle, kind: &str| {
        b.edit(|c| {
            c["annotations"] = json!({
                "io.kubernetes.cri.container-type": kind,
                "io.kubernetes.cri.sandbox-id": sid,
            });
        });
    };
    let sandbox = vm.bundle("exec sleep 1000");
    pod(&sandbox, "sandbox");
    vm.kvmbox(
        &["run", "-d", "--bundle", sandbox.dir.to_str().unwrap(), &sid],
        None,
    )
    .ok();
    let vmm_pid = vm.wait_status(&sid, "running")["pid"].as_i64().unwrap();

    // A member in the sandbox's VM: its output and exit code; `run` deletes it at the end.
    let m1 = vm.bundle("echo member says hi from $(hostname); exit 3");
    pod(&m1, "container");
    let id1 = vm.h.id("vmpodrun");
    let started = Instant::now();
    let out = vm.kvmbox(&["run", "--bundle", m1.dir.to_str().unwrap(), &id1], None);
    eprintln!(
        "member run (no boot): {:.1}s",
        started.elapsed().as_secs_f32()
    );
    out.code(3);
    assert!(out.stdout.starts_with("member says hi"), "{out}");
    vm.assert_no_leftovers(&id1);
    assert_eq!(vm.state(&sid)["status"], "running");

    // A member with a terminal through --console-socket: write a command, read its output.
    let m2 = vm.bundle("true");
    pod(&m2, "container");
    m2.edit(|c| {
        c["process"]["args"] = json!(["sh"]);
        c["process"]["terminal"] = json!(true);
    });
    let id2 = vm.h.id("vmpodtty");
    let socket = vm.h.dir().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let receiver = std::thread::spawn(move || receive_fd(&listener));
    vm.kvmbox(
        &[
            "create",
            "--console-socket",
            socket.to_str().unwrap(),
            "--bundle",
            m2.dir.to_str().unwrap(),
            &id2,
        ],
        None,
    )
    .ok();
    let mut master = fs::File::from(receiver.join().expect("console socket thread"));
    let st = vm.state(&id2);
    assert_eq!(
        st["pid"], vmm_pid,
        "a member's pid is the sandbox's VMM: {st}"
    );
    let record: Value =
        serde_json::from_str(&fs::read_to_string(vm.root.join(&id2).join("state.json")).unwrap())
            .unwrap();
    assert_eq!(record["vm"]["sandbox"], sid.as_str(), "{record}");
    // The sandbox cannot go while a member uses its VM.
    vm.kvmbox(&["delete", &sid], None)
        .error_line(&[&sid, &id2, "pod members"]);
    vm.kvmbox(&["start", &id2], None).ok();
    master.write_all(b"echo tty-$((6*7)); tty\n").unwrap();
    let text = read_pty(
        &mut master,
        &["tty-42", "/dev/pts/"],
        Duration::from_secs(120),
    );
    assert!(
        text.contains("tty-42") && text.contains("/dev/pts/"),
        "{text:?}"
    );
    master.write_all(b"exit 5\n").unwrap();
    vm.wait_status(&id2, "stopped");
    drop(master);
    vm.kvmbox(&["delete", &id2], None).ok();
    vm.assert_no_leftovers(&id2);

    // `run -t` with a pty as the CLI's stdio.
    let m3 = vm.bundle("tty; echo run-t-ok; exit 4");
    pod(&m3, "container");
    m3.edit(|c| c["process"]["terminal"] = json!(true));
    let id3 = vm.h.id("vmpodrunt");
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = fs::File::from(pty.slave);
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmbox"))
        .args(["--root", vm.root.to_str().unwrap(), "--isolation", "vm"])
        .args(["run", "--bundle", m3.dir.to_str().unwrap(), &id3])
        .current_dir(vm.h.dir())
        .env("KVMBOX_KERNEL", &vm.kernel)
        .env("KVMBOX_AGENT", &vm.agent)
        .env("KVMBOX_AGENT_TIMEOUT", vm.agent_timeout())
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut master = fs::File::from(pty.master);
    let text = read_pty(&mut master, &["run-t-ok"], Duration::from_secs(120));
    let status = child.wait().unwrap();
    assert!(
        text.contains("/dev/pts/") && text.contains("run-t-ok"),
        "{text:?}"
    );
    assert_eq!(status.code(), Some(4), "{text:?}");
    vm.assert_no_leftovers(&id3);

    // The VM still serves the sandbox. `delete --force` of the sandbox while a member is
    // still created takes the member with it: nothing of either is left.
    let out = vm.kvmbox(&["exec", &sid, "--", "echo", "still serving"], None);
    out.ok();
    assert_eq!(out.stdout, "still serving\n", "{out}");
    let m4 = vm.bundle("echo never started");
    pod(&m4, "container");
    let id4 = vm.h.id("vmpodleft");
    vm.kvmbox(
        &["create", "--bundle", m4.dir.to_str().unwrap(), &id4],
        None,
    )
    .ok();
    assert_eq!(vm.state(&id4)["status"], "created");
    vm.kvmbox(&["delete", "--force", &sid], None).ok();
    vm.assert_no_leftovers(&id4);
    vm.assert_no_leftovers(&sid);
    assert_eq!(mounts_under(&vm.root), Vec::<String>::new());
    assert!(common::is_zombie_or_gone(vmm_pid as i32));
}
