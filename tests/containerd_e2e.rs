//! containerd end-to-end tests for `containerd-shim-kvmbox-v2`: a private containerd (Debian's
//! containerd 1.6 package, `apt-get install containerd`) started from a temp dir with the built
//! shim and kvmbox on its PATH, a locally built busybox image imported with `ctr image import`,
//! and `ctr` driving containers in namespace mode and (one boot per VM test, they are slow
//! here) in vm mode. Needs root; the vm tests need /dev/kvm, the static agent (`make agent`)
//! and the guest kernel (build cache or KVMBOX_KERNEL).

#[path = "common/containerd.rs"]
mod containerd;
#[path = "common/image.rs"]
mod image;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use containerd::{gone, gone_now, require_tools, shim_dir, shims_for, vmms_mentioning};
use image::{build_busybox_image, IMAGE_NAME};

const RUNTIME: &str = "io.containerd.kvmbox.v2";
const NAMESPACE_MODE: &str = "io.kvmbox.isolation=namespace";
const CTR_TIMEOUT: Duration = Duration::from_secs(60);
/// A `ctr` call that may boot a microVM (30–90 s here, far more on a loaded machine).
const VM_CTR_TIMEOUT: Duration = Duration::from_secs(900);
const VM_MODE: &str = "io.kvmbox.isolation=vm";
const CGROUP_CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "cpuset", "cpuacct", "freezer"];

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// What one `ctr` invocation did.
#[derive(Debug)]
struct Outcome {
    command: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{} failed: {self:#?}", self.command);
        self
    }
}

/// A private containerd in a temp dir; stopped and everything it left removed on drop.
struct Containerd {
    dir: PathBuf,
    namespace: String,
    child: std::sync::Mutex<Option<Child>>,
    /// Longest wait for one `ctr` call.
    timeout: Duration,
}

impl Containerd {
    fn start() -> Containerd {
        require_tools("containerd_e2e");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/kvmbox-ctrd-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut me = Containerd {
            namespace: format!("kvmbox-e2e-{}-{n}", std::process::id()),
            dir,
            child: Default::default(),
            timeout: CTR_TIMEOUT,
        };
        let config = containerd::base_config(&me.dir, false);
        fs::write(me.dir.join("config.toml"), config).unwrap();
        let path = format!(
            "{}:{}",
            shim_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = fs::File::create(me.dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(me.dir.join("config.toml"))
            .env("PATH", path)
            .env("KVMBOX_SHIM_ROOT", me.dir.join("kvmbox"))
            // Boots are slow on a loaded machine: let vm-mode creates wait for the agent.
            .env("KVMBOX_AGENT_TIMEOUT", "600")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        *me.child.get_mut().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while me.ctr(&["version"]).code != Some(0) {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up; log:\n{}",
                me.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let tar = build_busybox_image(&me.dir);
        me.ctr(&["image", "import", tar.to_str().unwrap()]).ok();
        me
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Run `ctr` against this containerd, with a timeout.
    fn ctr(&self, args: &[&str]) -> Outcome {
        self.ctr_input(args, None)
    }

    /// Run `ctr` with `input` (if any) on its stdin, which it forwards to the process.
    fn ctr_input(&self, args: &[&str], input: Option<&[u8]>) -> Outcome {
        let sock = self.dir.join("containerd.sock");
        let mut cmd = Command::new("ctr");
        cmd.arg("-a")
            .arg(&sock)
            .args(["-n", &self.namespace])
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let command = format!("ctr {}", args.join(" "));
        let mut child = cmd.spawn().expect("run ctr");
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            use std::io::Write;
            stdin.write_all(input).expect("write ctr stdin");
        }
        let pid = child.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(self.timeout) {
            Ok(out) => out.expect("wait for ctr"),
            Err(_) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                panic!("{command} timed out; containerd log:\n{}", self.log());
            }
        };
        Outcome {
            command,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `ctr run` with the kvmbox runtime in namespace mode.
    fn run(&self, flags: &[&str], id: &str, command: &[&str]) -> Outcome {
        self.run_in(NAMESPACE_MODE, flags, id, command)
    }

    /// `ctr run` with the kvmbox runtime and the isolation annotation `mode`.
    fn run_in(&self, mode: &str, flags: &[&str], id: &str, command: &[&str]) -> Outcome {
        let fifo = self.dir.join("fifo");
        let mut args = vec!["run", "--runtime", RUNTIME, "--annotation", mode];
        args.extend_from_slice(&["--fifo-dir", fifo.to_str().unwrap()]);
        args.extend_from_slice(flags);
        args.extend_from_slice(&[IMAGE_NAME, id]);
        args.extend_from_slice(command);
        self.ctr(&args)
    }

    /// The task's (pid, status) from `ctr task ls`, if listed.
    fn task(&self, id: &str) -> Option<(i32, String)> {
        let out = self.ctr(&["task", "ls"]);
        out.ok();
        out.stdout.lines().skip(1).find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.first() == Some(&id)).then(|| (cols[1].parse().unwrap_or(0), cols[2].to_string()))
        })
    }

    /// How long state changes may take: longer when a microVM has to stop.
    fn patience(&self) -> Duration {
        if self.timeout > CTR_TIMEOUT {
            Duration::from_secs(120)
        } else {
            Duration::from_secs(20)
        }
    }

    /// Wait until `ctr task ls` shows `id` with `status` (or without it for `None`).
    fn wait_task(&self, id: &str, status: Option<&str>) {
        let deadline = Instant::now() + self.patience();
        loop {
            let now = self.task(id);
            if now.as_ref().map(|(_, s)| s.as_str()) == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id}: want {status:?}, have {now:?}; containerd log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Nothing of container `id` is left (within 10 s: containerd cleans up after a dead
    /// shim asynchronously): no cgroup, no kvmbox state, no rootfs mount, no live process.
    fn assert_no_leftovers(&self, id: &str, pid: i32) {
        let deadline = Instant::now() + self.patience();
        loop {
            let left = self.leftovers(id);
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "leftovers of {id}: {left:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(pid > 0);
        assert!(
            gone(pid, Duration::from_secs(10)),
            "process {pid} of {id} is still alive"
        );
    }

    fn leftovers(&self, id: &str) -> Vec<String> {
        let mut left = Vec::new();
        for c in CGROUP_CONTROLLERS {
            let dir = Path::new("/sys/fs/cgroup")
                .join(c)
                .join(&self.namespace)
                .join(id);
            if dir.exists() {
                left.push(format!("cgroup {}", dir.display()));
            }
        }
        let state = self.dir.join("kvmbox").join(&self.namespace).join(id);
        if state.exists() {
            left.push(format!("kvmbox state {}", state.display()));
        }
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        for line in mounts
            .lines()
            .filter(|l| l.contains(&format!("/{id}/rootfs")))
        {
            left.push(format!("rootfs mount: {line}"));
        }
        left
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.clean_up();
    }
}

/// Cleans up a containerd shared with other threads (which keep it alive) when the test
/// panics: a failed vm test must not leave containerd, a shim and a running VM behind.
struct CleanUpOnPanic(std::sync::Arc<Containerd>);

impl Drop for CleanUpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.clean_up();
        }
    }
}

impl Containerd {
    /// Stop everything this containerd started and remove its directory (idempotent).
    fn clean_up(&self) {
        let roots = [self.dir.join("kvmbox").join(&self.namespace)];
        let left = containerd::Leftovers {
            kvmbox_roots: &roots,
            socket: &self.dir.join("containerd.sock"),
            dirs: &[&self.dir],
            // The namespace's parent cgroup in every hierarchy (removable once empty).
            cgroup_parent: &self.namespace,
        };
        containerd::clean_up(self.child.lock().unwrap().take(), &left);
    }
}

fn id(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Containerd {
    /// Run `ctr <args>` on a pty of ours sized `rows`x`cols` (ctr forwards the size with
    /// ResizePty): its exit code and everything it wrote to the terminal.
    fn ctr_on_pty(&self, args: &[&str], rows: u16, cols: u16) -> (Option<i32>, String) {
        use std::io::Read;
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let slave = fs::File::from(pty.slave);
        let mut cmd = Command::new("ctr");
        cmd.arg("-a")
            .arg(self.dir.join("containerd.sock"))
            .args(["-n", &self.namespace])
            .args(args)
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        let mut child = cmd.spawn().expect("run ctr");
        drop(cmd); // our copies of the slave: EIO on the master once ctr is gone
        let mut master = fs::File::from(pty.master);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.extend_from_slice(&buf[..n]);
            }
            let _ = tx.send(String::from_utf8_lossy(&text).into_owned());
        });
        let text = rx
            .recv_timeout(self.timeout)
            .unwrap_or_else(|_| panic!("ctr {args:?} on a pty timed out; log:\n{}", self.log()));
        (child.wait().unwrap().code(), text)
    }

    /// `ctr <args> sh -c SCRIPT` on a 33x91 pty: the process has a pty of that size (ctr
    /// forwards it with ResizePty) and its exit code (4) comes back.
    fn check_terminal(&self, args: &[&str]) {
        let script = "sleep 1; tty; stty size < /dev/tty; exit 4";
        let mut args = args.to_vec();
        args.extend_from_slice(&["sh", "-c", script]);
        let (code, text) = self.ctr_on_pty(&args, 33, 91);
        assert_eq!(code, Some(4), "{text}");
        assert!(text.contains("/dev/pts/"), "no pty: {text}\n{}", self.log());
        assert!(
            text.contains("33 91"),
            "size not forwarded: {text}\n{}",
            self.log()
        );
    }

    /// Send the shim of task `id` an Update with runtime-spec LinuxResources `resources`, as
    /// containerd does for `UpdateContainerResources` (ctr 1.6 has no update command).
    fn update_through_the_shim(&self, id: &str, resources: &str) -> Result<(), String> {
        use containerd_shim::protos::shim::shim::UpdateTaskRequest;
        use containerd_shim::protos::shim::shim_ttrpc::TaskClient;
        let bundle = self
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.namespace)
            .join(id);
        let address = fs::read_to_string(bundle.join("address")).expect("shim address");
        let client = containerd_shim::protos::ttrpc::Client::connect(address.trim())
            .map_err(|e| format!("connect {address}: {e}"))?;
        let mut req = UpdateTaskRequest::new();
        req.id = id.to_string();
        let mut any = containerd_shim::protos::protobuf::well_known_types::any::Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
        any.value = resources.as_bytes().to_vec();
        req.resources = Some(any).into();
        let ctx =
            containerd_shim::protos::ttrpc::context::with_timeout(self.timeout.as_nanos() as i64);
        TaskClient::new(client)
            .update(ctx, &req)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Start `ctr events`, writing to `<dir>/events.txt`.
    fn watch_events(&self) -> Child {
        let out = fs::File::create(self.dir.join("events.txt")).unwrap();
        let child = Command::new("ctr")
            .arg("-a")
            .arg(self.dir.join("containerd.sock"))
            .args(["-n", &self.namespace, "events"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("run ctr events");
        std::thread::sleep(Duration::from_millis(300));
        child
    }

    /// The /tasks/* topics `ctr events` saw for container `id`, in order, once it saw `want`
    /// of them (or after 10 s: events reach `ctr events` asynchronously).
    fn task_topics(&self, mut watcher: Child, id: &str, want: usize) -> Vec<String> {
        let needle = format!("\"container_id\":\"{id}\"");
        let read = || {
            let text = fs::read_to_string(self.dir.join("events.txt")).unwrap_or_default();
            text.lines()
                .filter(|l| l.contains(&needle))
                .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
                .map(String::from)
                .collect::<Vec<_>>()
        };
        // Generous: with the VM tests booting guests on both cores, `ctr events` can lag.
        let deadline = Instant::now() + Duration::from_secs(60);
        while read().len() < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Anything beyond `want` would show up in this grace period.
        std::thread::sleep(Duration::from_millis(200));
        let _ = watcher.kill();
        let _ = watcher.wait();
        read()
    }
}

#[test]
fn run_rm_captures_output_and_propagates_exit_codes() {
    let ctrd = Containerd::start();
    let watcher = ctrd.watch_events();
    let c = id("echo");
    let out = ctrd.run(&["--rm"], &c, &["echo", "hello"]);
    out.ok();
    assert_eq!(out.stdout, "hello\n", "{out:#?}");
    let want = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ];
    assert_eq!(ctrd.task_topics(watcher, &c, want.len()), want);

    let out = ctrd.run(
        &["--rm"],
        &id("exit7"),
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"],
    );
    assert_eq!(out.code, Some(7), "{out:#?}");
    assert_eq!(out.stdout, "to-stdout\n", "{out:#?}");
    assert!(out.stderr.contains("to-stderr"), "{out:#?}");

    let listed = ctrd.ctr(&["container", "ls", "-q"]);
    assert_eq!(
        listed.ok().stdout.trim(),
        "",
        "--rm left containers: {listed:#?}"
    );
}

/// `ctr task exec` in container `c`: an exec's output and exit code (3) come back, and piped
/// stdin reaches an exec, whose EOF on ctr's stdin closes it (CloseIO).
fn check_execs(ctrd: &Containerd, c: &str, tag: &str) {
    let script = format!("echo {tag}; exit 3");
    let out = ctrd.ctr(&["task", "exec", "--exec-id", "e1", c, "sh", "-c", &script]);
    assert_eq!(
        (out.code, out.stdout.clone()),
        (Some(3), format!("{tag}\n")),
        "{out:#?}"
    );
    let data = format!("piped-{tag}\n");
    let args = [
        "task",
        "exec",
        "--exec-id",
        "e2",
        c,
        "sh",
        "-c",
        "cat; echo end",
    ];
    let out = ctrd.ctr_input(&args, Some(data.as_bytes()));
    assert_eq!(out.ok().stdout, format!("{data}end\n"), "{out:#?}");
}

#[test]
fn exec_ps_metrics_pause_kill_and_delete() {
    let ctrd = Containerd::start();
    let watcher = ctrd.watch_events();
    let c = id("long");
    // A CPU share makes kvmbox give the container its own cpu,cpuacct cgroup (metrics below).
    ctrd.run(&["-d", "--cpu-shares", "512"], &c, &["sleep", "1000"])
        .ok();
    let (pid, status) = ctrd.task(&c).expect("task listed");
    assert_eq!(status, "RUNNING");

    check_execs(&ctrd, &c, "in-exec");

    let ps = ctrd.ctr(&["task", "ps", &c]);
    ps.ok();
    assert!(
        ps.stdout
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&pid.to_string())),
        "init {pid} not in ps: {ps:#?}"
    );

    let metrics = ctrd.ctr(&["task", "metrics", &c]);
    metrics.ok();
    assert!(metrics.stdout.contains("pids.current"), "{metrics:#?}");
    assert!(
        metrics.stdout.contains("memory.usage_in_bytes"),
        "{metrics:#?}"
    );
    let cpu: u64 = metrics
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("cpuacct.usage "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(cpu > 0, "no CPU usage: {metrics:#?}");

    ctrd.ctr(&["task", "pause", &c]).ok();
    assert_eq!(ctrd.task(&c).unwrap().1, "PAUSED");
    ctrd.ctr(&["task", "resume", &c]).ok();
    assert_eq!(ctrd.task(&c).unwrap().1, "RUNNING");

    // --all signals every process in the container's cgroup (an exec'd sleep included).
    ctrd.ctr(&["task", "exec", "-d", "--exec-id", "bg", &c, "sleep", "1000"])
        .ok();
    ctrd.ctr(&["task", "kill", "--all", "--signal", "SIGKILL", &c])
        .ok();
    ctrd.wait_task(&c, Some("STOPPED"));
    ctrd.ctr(&["task", "rm", &c]).ok();
    ctrd.ctr(&["container", "rm", &c]).ok();
    ctrd.wait_task(&c, None);
    ctrd.assert_no_leftovers(&c, pid);
    let exec = ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"];
    let mut want = vec!["/tasks/create", "/tasks/start"];
    want.extend(exec);
    want.extend(exec);
    want.extend(["/tasks/paused", "/tasks/resumed"]);
    want.extend(["/tasks/exec-added", "/tasks/exec-started"]);
    want.extend(["/tasks/exit", "/tasks/exit", "/tasks/delete"]);
    assert_eq!(ctrd.task_topics(watcher, &c, want.len()), want);
}

/// SIGKILL the one shim serving container `c`.
fn sigkill_the_shim_of(c: &str) {
    let shims = shims_for(c);
    assert_eq!(shims.len(), 1, "one shim for {c}: {shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[test]
fn containerd_recovers_when_the_shim_is_killed() {
    let ctrd = Containerd::start();
    let c = id("orphan");
    ctrd.run(&["-d"], &c, &["sleep", "1000"]).ok();
    let (pid, _) = ctrd.task(&c).expect("task listed");
    sigkill_the_shim_of(&c);
    // containerd notices the dead shim, runs `shim delete` and drops the task.
    ctrd.wait_task(&c, None);
    ctrd.ctr(&["container", "rm", &c]).ok();
    ctrd.assert_no_leftovers(&c, pid);
}

/// One microVM boot: a foreground `ctr run --rm` in vm mode whose output and exit code come
/// back through the shim, with exec (output, stdin, exit code), ps (guest pids), metrics
/// (cgroup v2 in the guest), pause/resume, kill of an exec and events in order, all in the
/// same VM; then nothing is left (VMM, state, rootfs mount).
#[test]
fn vm_run_rm_with_exec_ps_metrics_pause_and_kill_in_one_vm() {
    let mut ctrd = Containerd::start();
    ctrd.timeout = VM_CTR_TIMEOUT;
    let ctrd = std::sync::Arc::new(ctrd);
    let _clean_up = CleanUpOnPanic(std::sync::Arc::clone(&ctrd));
    let watcher = ctrd.watch_events();
    let c = id("vm");
    let script = "echo hello-from-vm; uname -r; echo to-stderr >&2; \
                  while [ ! -e /tmp/stop ]; do sleep 0.2; done; exit 7";
    let run = {
        let (ctrd, c) = (std::sync::Arc::clone(&ctrd), c.clone());
        std::thread::spawn(move || ctrd.run_in(VM_MODE, &["--rm"], &c, &["sh", "-c", script]))
    };
    // The task shows up once the VM booted and the container runs.
    let deadline = Instant::now() + VM_CTR_TIMEOUT;
    let vmm_pid = loop {
        if let Some((pid, status)) = ctrd.task(&c) {
            if status == "RUNNING" {
                break pid;
            }
        }
        assert!(
            !run.is_finished() && Instant::now() < deadline,
            "vm task never ran; containerd log:\n{}",
            ctrd.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let comm = fs::read_to_string(format!("/proc/{vmm_pid}/comm")).unwrap_or_default();
    assert!(
        comm.starts_with("kvmbox-vmm"),
        "task pid {vmm_pid} is {comm:?}, not the VMM"
    );

    check_execs(&ctrd, &c, "in-vm-exec");

    // Guest pids: the init is pid 1 of the container's pid namespace or a guest pid, never
    // the VMM's host pid.
    let ps = ctrd.ctr(&["task", "ps", &c]);
    let pids: Vec<i32> = ps
        .ok()
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(!pids.is_empty() && !pids.contains(&vmm_pid), "{ps:#?}");

    let metrics = ctrd.ctr(&["task", "metrics", &c]);
    metrics.ok();
    assert!(metrics.stdout.contains("pids.current"), "{metrics:#?}");
    assert!(metrics.stdout.contains("memory.usage"), "{metrics:#?}");

    // Update goes to the agent, which writes the container's cgroup v2 in the guest; the
    // metrics (read back by the agent) show the new limits.
    ctrd.update_through_the_shim(&c, r#"{"pids":{"limit":42},"memory":{"limit":50331648}}"#)
        .expect("update in the guest");
    let metrics = ctrd.ctr(&["task", "metrics", "--format", "json", &c]);
    let json: serde_json::Value = serde_json::from_str(&metrics.ok().stdout).expect("json");
    let data = &json;
    assert_eq!(data["pids"]["limit"], 42, "{metrics:#?}");
    assert_eq!(data["memory"]["usage_limit"], 50331648u64, "{metrics:#?}");

    // `ctr task exec -t`: a pty in the guest, sized by ResizePty (→ the agent's ResizeTty).
    ctrd.check_terminal(&["task", "exec", "-t", "--exec-id", "tty", &c]);

    ctrd.ctr(&["task", "pause", &c]).ok();
    assert_eq!(ctrd.task(&c).unwrap().1, "PAUSED");
    ctrd.ctr(&["task", "resume", &c]).ok();
    assert_eq!(ctrd.task(&c).unwrap().1, "RUNNING");

    // An exec killed through the agent reports 128+9.
    let sleeper = {
        let (ctrd, c) = (std::sync::Arc::clone(&ctrd), c.clone());
        std::thread::spawn(move || {
            ctrd.ctr(&["task", "exec", "--exec-id", "bg", &c, "sleep", "1000"])
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while ctrd
        .ctr(&["task", "kill", "--exec-id", "bg", "--signal", "SIGKILL", &c])
        .code
        != Some(0)
    {
        assert!(Instant::now() < deadline, "could not kill exec bg");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = sleeper.join().unwrap();
    assert_eq!(out.code, Some(137), "{out:#?}");

    // The init's exit code and output come back to the foreground `ctr run`.
    ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "stop",
        &c,
        "touch",
        "/tmp/stop",
    ])
    .ok();
    let out = run.join().unwrap();
    assert_eq!(
        out.code,
        Some(7),
        "{out:#?}\ncontainerd log:\n{}",
        ctrd.log()
    );
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("hello-from-vm"), "{out:#?}");
    assert!(
        lines.next().is_some_and(|k| k.contains("kvmbox")),
        "guest kernel: {out:#?}"
    );
    assert!(out.stderr.contains("to-stderr"), "{out:#?}");

    ctrd.wait_task(&c, None);
    let listed = ctrd.ctr(&["container", "ls", "-q"]);
    assert_eq!(
        listed.ok().stdout.trim(),
        "",
        "--rm left containers: {listed:#?}"
    );
    ctrd.assert_no_leftovers(&c, vmm_pid);
    let exec = ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"];
    let mut want = vec!["/tasks/create", "/tasks/start"];
    want.extend(exec);
    want.extend(exec);
    want.extend(exec); // the terminal exec
    want.extend(["/tasks/paused", "/tasks/resumed"]);
    want.extend(exec);
    want.extend(exec);
    want.extend(["/tasks/exit", "/tasks/delete"]);
    assert_eq!(ctrd.task_topics(watcher, &c, want.len()), want);
}

/// A vm container whose shim is SIGKILLed: containerd runs `shim delete`, which stops the VM
/// and removes everything. The container is configured by runtime options only (no
/// annotation): its config file chooses vm and sizes the guest.
#[test]
fn vm_shim_killed_stops_the_vm() {
    let mut ctrd = Containerd::start();
    ctrd.timeout = VM_CTR_TIMEOUT;
    let c = id("vm-orphan");
    let config = ctrd.dir.join("kvmbox-vm.toml");
    fs::write(&config, "isolation = \"vm\"\nmemory_mib = 144\n").unwrap();
    let fifo = ctrd.dir.join("fifo");
    ctrd.ctr(&[
        "run",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        config.to_str().unwrap(),
        "--fifo-dir",
        fifo.to_str().unwrap(),
        "-d",
        IMAGE_NAME,
        &c,
        "sleep",
        "1000",
    ])
    .ok();
    let (vmm_pid, _) = ctrd.task(&c).expect("task listed");
    let vm_json = ctrd
        .dir
        .join("kvmbox")
        .join(&ctrd.namespace)
        .join(&c)
        .join("vm.json");
    let vm_json = fs::read_to_string(&vm_json).expect("vm.json");
    assert!(
        vm_json.contains("\"memory_mib\": 144") || vm_json.contains("\"memory_mib\":144"),
        "guest memory not from the runtime options' config file: {vm_json}"
    );
    assert_eq!(vmms_mentioning(&c), vec![vmm_pid], "one VMM for {c}");
    sigkill_the_shim_of(&c);
    ctrd.wait_task(&c, None);
    ctrd.ctr(&["container", "rm", &c]).ok();
    ctrd.assert_no_leftovers(&c, vmm_pid);
}

#[test]
fn terminal_gets_a_pty_sized_by_resize_pty() {
    let ctrd = Containerd::start();
    let c = id("tty");
    let fifo = ctrd.dir.join("fifo");
    // ctr runs on a 91x33 pty of ours and forwards that size with ResizePty.
    let args = [
        "run",
        "--rm",
        "-t",
        "--runtime",
        RUNTIME,
        "--annotation",
        NAMESPACE_MODE,
        "--fifo-dir",
        fifo.to_str().unwrap(),
        IMAGE_NAME,
        &c,
    ];
    ctrd.check_terminal(&args);
    let listed = ctrd.ctr(&["container", "ls", "-q"]);
    assert_eq!(
        listed.ok().stdout.trim(),
        "",
        "--rm left containers: {listed:#?}"
    );
}

/// The runtime options containerd passes for a non-runc runtime (`runtimeoptions.v1.Options`,
/// here from `ctr run --runtime-config-path`) name a kvmbox config file whose `isolation`
/// applies; a bad file is refused naming it, leaving nothing. Update reaches the container's
/// host cgroup.
#[test]
fn runtime_options_config_chooses_isolation_and_update_applies() {
    let ctrd = Containerd::start();
    let fifo = ctrd.dir.join("fifo");
    let config = ctrd.dir.join("kvmbox-namespace.toml");
    fs::write(&config, "isolation = \"namespace\"\n").unwrap();
    let run = |config: &Path, flags: &[&str], c: &str, command: &[&str]| {
        let mut args = vec!["run", "--runtime", RUNTIME, "--runtime-config-path"];
        args.push(config.to_str().unwrap());
        args.extend_from_slice(&["--fifo-dir", fifo.to_str().unwrap()]);
        args.extend_from_slice(flags);
        args.extend_from_slice(&[IMAGE_NAME, c]);
        args.extend_from_slice(command);
        ctrd.ctr(&args)
    };
    // No annotation: the config file says namespace, so the host kernel answers (a VM would
    // print the guest kernel's release, and take far longer than CTR_TIMEOUT here).
    let host_release = nix::sys::utsname::uname().unwrap();
    let host_release = host_release.release().to_string_lossy().into_owned();
    let out = run(&config, &["--rm"], &id("opts"), &["uname", "-r"]);
    assert_eq!(out.ok().stdout.trim(), host_release, "{out:#?}");

    // Update through the shim writes the container's host cgroup.
    let c = id("upd");
    run(&config, &["-d"], &c, &["sleep", "1000"]).ok();
    let (pid, _) = ctrd.task(&c).expect("task listed");
    let pids_max = Path::new("/sys/fs/cgroup/pids")
        .join(&ctrd.namespace)
        .join(&c)
        .join("pids.max");
    ctrd.update_through_the_shim(&c, r#"{"pids":{"limit":42},"memory":{"limit":67108864}}"#)
        .expect("update");
    assert_eq!(fs::read_to_string(&pids_max).unwrap().trim(), "42");
    let mem = Path::new("/sys/fs/cgroup/memory")
        .join(&ctrd.namespace)
        .join(&c)
        .join("memory.limit_in_bytes");
    assert_eq!(fs::read_to_string(mem).unwrap().trim(), "67108864");
    let err = ctrd
        .update_through_the_shim(&c, "not json")
        .expect_err("bad resources");
    assert!(err.contains("LinuxResources"), "{err}");
    ctrd.ctr(&["task", "kill", "--signal", "SIGKILL", &c]).ok();
    ctrd.wait_task(&c, Some("STOPPED"));
    ctrd.ctr(&["task", "delete", &c]).ok();
    ctrd.ctr(&["container", "rm", &c]).ok();
    ctrd.assert_no_leftovers(&c, pid);

    // A config file that does not parse, and one that does not exist: refused, naming it.
    let bad = ctrd.dir.join("kvmbox-bad.toml");
    fs::write(&bad, "isolation = \"kvm\"\n").unwrap();
    let missing = ctrd.dir.join("kvmbox-missing.toml");
    for (config, needle) in [(&bad, "kvmbox-bad.toml"), (&missing, "kvmbox-missing.toml")] {
        let c = id("badopts");
        let out = run(config, &["--rm"], &c, &["true"]);
        assert_ne!(out.code, Some(0), "{out:#?}");
        assert!(out.stderr.contains(needle), "{out:#?}");
        ctrd.ctr(&["container", "rm", &c]);
        assert!(ctrd.leftovers(&c).is_empty(), "{:?}", ctrd.leftovers(&c));
    }
}

#[test]
fn containers_of_one_pod_share_one_shim() {
    let ctrd = Containerd::start();
    let pod = format!("io.kubernetes.cri.sandbox-id={}", id("pod"));
    let (a, b) = (id("pod-a"), id("pod-b"));
    for c in [&a, &b] {
        ctrd.run(&["-d", "--annotation", &pod], c, &["sleep", "1000"])
            .ok();
    }
    let shims = shims_for(&a);
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    assert!(
        shims_for(&b).is_empty(),
        "the second container got its own shim"
    );
    let (pid_a, _) = ctrd.task(&a).expect("a listed");
    let (pid_b, _) = ctrd.task(&b).expect("b listed");

    ctrd.ctr(&["task", "kill", "--signal", "SIGKILL", &a]).ok();
    ctrd.wait_task(&a, Some("STOPPED"));
    ctrd.ctr(&["task", "rm", &a]).ok();
    ctrd.ctr(&["container", "rm", &a]).ok();
    ctrd.assert_no_leftovers(&a, pid_a);
    // The shim serves the other container on.
    let out = ctrd.ctr(&["task", "exec", "--exec-id", "e1", &b, "echo", "still here"]);
    assert_eq!(out.ok().stdout, "still here\n");

    ctrd.ctr(&["task", "kill", "--signal", "SIGKILL", &b]).ok();
    ctrd.wait_task(&b, Some("STOPPED"));
    ctrd.ctr(&["task", "rm", &b]).ok();
    ctrd.ctr(&["container", "rm", &b]).ok();
    ctrd.assert_no_leftovers(&b, pid_b);
    assert!(
        gone(shims[0], Duration::from_secs(10)),
        "the pod's shim outlived its last container"
    );
}

/// Two containers of one pod (the CRI annotations: a sandbox and a member naming it) share
/// one shim and one microVM (the same VMM pid); the member is exec'd into, killed and removed
/// while the VM runs on; deleting the sandbox stops the VM.
#[test]
fn vm_pod_containers_share_one_shim_and_one_vm() {
    let mut ctrd = Containerd::start();
    ctrd.timeout = VM_CTR_TIMEOUT;
    let sandbox = id("vm-pod");
    let member = id("vm-pod-app");
    let sid = format!("io.kubernetes.cri.sandbox-id={sandbox}");
    let role = |r: &str| format!("io.kubernetes.cri.container-type={r}");
    let (as_sandbox, as_member) = (role("sandbox"), role("container"));
    ctrd.run_in(
        VM_MODE,
        &["-d", "--annotation", &sid, "--annotation", &as_sandbox],
        &sandbox,
        &["sleep", "1000"],
    )
    .ok();
    ctrd.run_in(
        VM_MODE,
        &["-d", "--annotation", &sid, "--annotation", &as_member],
        &member,
        &["sleep", "1000"],
    )
    .ok();
    let (vmm, _) = ctrd.task(&sandbox).expect("sandbox listed");
    let (member_pid, status) = ctrd.task(&member).expect("member listed");
    assert_eq!(status, "RUNNING");
    assert_eq!(member_pid, vmm, "the member runs in the sandbox's VM");
    assert_eq!(
        vmms_mentioning(&member),
        Vec::<i32>::new(),
        "the member booted a VM"
    );
    let shims = shims_for(&sandbox);
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    assert!(shims_for(&member).is_empty(), "the member got its own shim");

    let out = ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &member,
        "sh",
        "-c",
        "echo in-member; exit 5",
    ]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(5), "in-member\n"),
        "{out:#?}"
    );

    ctrd.ctr(&["task", "kill", "--signal", "SIGKILL", &member])
        .ok();
    ctrd.wait_task(&member, Some("STOPPED"));
    ctrd.ctr(&["task", "rm", &member]).ok();
    ctrd.ctr(&["container", "rm", &member]).ok();
    assert!(!gone_now(vmm), "removing the member stopped the pod's VM");
    assert_eq!(ctrd.task(&sandbox).map(|t| t.1).as_deref(), Some("RUNNING"));

    ctrd.ctr(&["task", "kill", "--signal", "SIGKILL", &sandbox])
        .ok();
    ctrd.wait_task(&sandbox, Some("STOPPED"));
    ctrd.ctr(&["task", "rm", &sandbox]).ok();
    ctrd.ctr(&["container", "rm", &sandbox]).ok();
    ctrd.assert_no_leftovers(&member, vmm);
    ctrd.assert_no_leftovers(&sandbox, vmm);
    assert!(
        gone(shims[0], Duration::from_secs(10)),
        "the pod's shim outlived its last container"
    );
}

/// min / median / max of `samples` in milliseconds.
fn summary(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = samples.len();
    let median = if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    };
    (samples[0], median, samples[n - 1])
}

/// Benchmark, not a timed test: `ctr run --rm IMAGE ID /bin/true` with the kvmbox shim in
/// namespace and vm mode and with containerd's runc shim, side by side. Run it with
/// `make bench-containerd` (release build); `KVMBOX_BENCH_RUNS` sets the runs of the container
/// runtimes, `KVMBOX_BENCH_VM_RUNS` those of vm mode (each boots a microVM; 0 skips it).
#[test]
#[ignore = "benchmark: make bench-containerd"]
fn bench_ctr_run_true() {
    let env_runs = |var: &str, default: usize| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let runs = env_runs("KVMBOX_BENCH_RUNS", 20);
    let vm_runs = env_runs("KVMBOX_BENCH_VM_RUNS", 3);
    let mut ctrd = Containerd::start();
    ctrd.timeout = VM_CTR_TIMEOUT;
    let fifo = ctrd.dir.join("fifo");
    let fifo = fifo.to_str().unwrap();
    let runtimes: [(&str, Vec<&str>, usize); 3] = [
        (
            "kvmbox shim (namespace)",
            vec!["--runtime", RUNTIME, "--annotation", NAMESPACE_MODE],
            runs,
        ),
        (
            "kvmbox shim (vm)",
            vec!["--runtime", RUNTIME, "--annotation", VM_MODE],
            vm_runs,
        ),
        (
            "runc shim",
            vec!["--runtime", "io.containerd.runc.v2"],
            runs,
        ),
    ];
    let mut rows = Vec::new();
    for (name, flags, n) in &runtimes {
        if *n == 0 {
            continue;
        }
        let mut samples = Vec::new();
        // The first run warms caches (for vm mode: the agent initramfs).
        for i in 0..=*n {
            let c = id("bench");
            let mut args = vec!["run", "--rm", "--fifo-dir", fifo];
            args.extend(flags);
            args.extend([IMAGE_NAME, c.as_str(), "/bin/true"]);
            let started = Instant::now();
            ctrd.ctr(&args).ok();
            if i > 0 {
                samples.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        rows.push((*name, *n, summary(&mut samples)));
    }
    println!("\n`ctr run --rm IMAGE ID /bin/true` (ms):");
    println!("| runtime | runs | min | median | max |\n|---|---|---|---|---|");
    for (name, n, (min, median, max)) in &rows {
        println!("| {name} | {n} | {min:.1} | {median:.1} | {max:.1} |");
    }
    let median = |name: &str| rows.iter().find(|r| r.0 == name).map(|r| r.2 .1);
    let runc = median("runc shim").expect("runc row");
    for name in ["kvmbox shim (namespace)", "kvmbox shim (vm)"] {
        if let Some(m) = median(name) {
            println!("median ratio {name} / runc shim: {:.2}", m / runc);
        }
    }
}
