//! The real `kvmbox-agent` binary driven over its `--listen-unix` test transport (root only):
//! busybox containers on the host, stdio streams, exit codes, signals, exec, TTY, and bad input.
//! Each test starts its own agent (own run dir and parent cgroup) and shuts it down at the end,
//! so nothing is left behind.

use std::fs;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use guest_agent::protocol::{
    read_frame, write_frame, Hello, HelloReply, ProcessRef, Request, Response, ResponseBody,
    StdioSpec, StreamHello, StreamKind, CONTROL_PORT, MAX_FRAME, PROTOCOL_VERSION, STDIO_PORT,
};
use oci_spec::runtime::{Process, Spec};

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "true", "stty", "hostname", "tty",
];
const TIMEOUT: Duration = Duration::from_secs(10);

static SEQ: AtomicU32 = AtomicU32::new(0);

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() && Path::new("/bin/busybox").exists() {
        return true;
    }
    eprintln!("note: skipping: these tests need root and /bin/busybox");
    false
}

const SPEC: &str = r#"{
 "ociVersion": "1.0.2",
 "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
   "env": ["PATH=/bin", "TERM=xterm"], "cwd": "/",
   "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
   "noNewPrivileges": true},
 "root": {"path": "rootfs", "readonly": true},
 "hostname": "agent-test",
 "mounts": [
  {"destination": "/proc", "type": "proc", "source": "proc"},
  {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=65536k"]},
  {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}
 ],
 "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}
}"#;

/// One agent process serving a temp dir.
struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    sock: PathBuf,
    cgroup_parent: String,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("kvmbox-agent-")
            .tempdir()
            .unwrap();
        let rootfs = dir.path().join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        for d in ["proc", "dev", "tmp"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        // A hard link (same filesystem) cannot be "text busy"; copy otherwise.
        if fs::hard_link("/bin/busybox", rootfs.join("bin/busybox")).is_err() {
            fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        }
        for a in APPLETS {
            symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        let sock = dir.path().join("agent.sock");
        let cgroup_parent = format!(
            "/kvmbox-agent-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let child = Command::new(env!("CARGO_BIN_EXE_kvmbox-agent"))
            .arg("--listen-unix")
            .arg(&sock)
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--cgroup-parent")
            .arg(&cgroup_parent)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + TIMEOUT;
        // The socket file appears at bind(), before listen(): wait until a connect succeeds.
        while UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "the agent did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        Agent {
            child,
            dir,
            sock,
            cgroup_parent,
        }
    }

    /// A spec running `args` with the rootfs of this agent.
    fn spec(&self, args: &[&str]) -> Spec {
        let mut spec: Spec = serde_json::from_str(SPEC).unwrap();
        let mut p = spec.process().clone().unwrap();
        p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        spec.set_process(Some(p));
        let mut root = spec.root().clone().unwrap();
        root.set_path(self.dir.path().join("rootfs"));
        spec.set_root(Some(root));
        spec
    }

    fn connect(&self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(&self.sock).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        assert_eq!(String::from_utf8_lossy(&line), format!("OK {port}"));
        s
    }

    fn control(&self) -> Control {
        let mut s = self.connect(CONTROL_PORT);
        write_frame(
            &mut s,
            &Hello {
                version: PROTOCOL_VERSION,
            },
        )
        .unwrap();
        let reply: HelloReply = read_frame(&mut s).unwrap();
        assert_eq!(reply.version, PROTOCOL_VERSION);
        Control(s)
    }

    fn stream(&self, process: &ProcessRef, kind: StreamKind) -> UnixStream {
        let mut s = self.connect(STDIO_PORT);
        write_frame(
            &mut s,
            &StreamHello {
                process: process.clone(),
                kind,
            },
        )
        .unwrap();
        let r: Response = read_frame(&mut s).unwrap();
        assert_eq!(r, Response::Ok(ResponseBody::Ok));
        s
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(mut s) = UnixStream::connect(&self.sock) {
            let _ = s.set_read_timeout(Some(TIMEOUT));
            let _ = s.write_all(format!("CONNECT {CONTROL_PORT}\n").as_bytes());
            let mut ok = [0u8; 8];
            let _ = s.read(&mut ok);
            let _ = write_frame(
                &mut s,
                &Hello {
                    version: PROTOCOL_VERSION,
                },
            );
            let _ = read_frame::<_, HelloReply>(&mut s);
            let _ = write_frame(&mut s, &Request::Shutdown);
            let _ = read_frame::<_, Response>(&mut s);
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                _ if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        if let Ok(dirs) = fs::read_dir("/sys/fs/cgroup") {
            for d in dirs.flatten() {
                let _ = fs::remove_dir(d.path().join(self.cgroup_parent.trim_start_matches('/')));
            }
        }
    }
}

/// A control connection after Hello.
struct Control(UnixStream);

impl Control {
    fn call(&mut self, req: &Request) -> Response {
        write_frame(&mut self.0, req).unwrap();
        read_frame(&mut self.0).unwrap()
    }

    fn ok(&mut self, req: &Request) -> ResponseBody {
        match self.call(req) {
            Response::Ok(b) => b,
            Response::Error { message } => panic!("{req:?} failed: {message}"),
        }
    }

    fn create(&mut self, id: &str, spec: Spec, stdio: StdioSpec) -> i32 {
        match self.ok(&Request::CreateContainer {
            id: id.into(),
            spec: Box::new(spec),
            stdio,
        }) {
            ResponseBody::Pid { pid } => pid,
            other => panic!("create answered {other:?}"),
        }
    }

    fn start(&mut self, id: &str) {
        assert_eq!(
            self.ok(&Request::StartContainer { id: id.into() }),
            ResponseBody::Ok
        );
    }

    /// (status, signal)
    fn wait(&mut self, process: &ProcessRef) -> (i32, Option<i32>) {
        match self.ok(&Request::WaitProcess {
            process: process.clone(),
        }) {
            ResponseBody::Exited { status, signal, .. } => (status, signal),
            other => panic!("wait answered {other:?}"),
        }
    }

    fn delete(&mut self, id: &str) {
        assert_eq!(
            self.ok(&Request::DeleteContainer {
                id: id.into(),
                force: true
            }),
            ResponseBody::Ok
        );
    }
}

fn init(id: &str) -> ProcessRef {
    ProcessRef {
        container_id: id.into(),
        exec_id: None,
    }
}

fn exec_ref(id: &str, exec_id: &str) -> ProcessRef {
    ProcessRef {
        container_id: id.into(),
        exec_id: Some(exec_id.into()),
    }
}

fn read_all(mut s: UnixStream) -> String {
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn out_only() -> StdioSpec {
    StdioSpec {
        stdout: true,
        ..Default::default()
    }
}

#[test]
fn echo_hello_reaches_the_stdout_stream_and_exits_0() {
    if !is_root() {
        return;
    }
    let a = Agent::start();
    let mut c = a.control();
    let out = a.stream(&init("hello"), StreamKind::Stdout);
    let pid = c.create("hello", a.spec(&["echo", "hello"]), out_only());
    assert!(pid > 0);
    match c.ok(&Request::ContainerState { id: "hello".into() }) {
        ResponseBody::State { status, pid: p } => {
            assert_eq!(format!("{status:?}"), "Created");
            assert_eq!(p, pid);
        }
        other => panic!("{other:?}"),
    }
    c.start("hello");
    assert_eq!(c.wait(&init("hello")), (0, None));
    assert_eq!(read_all(out), "hello\n");
    // After the exit: state says stopped, a second wait answers at once.
    match c.ok(&Request::ContainerState { id: "hello".into() }) {
        ResponseBody::State { status, pid } => {
            assert_eq!((format!("{status:?}"), pid), ("Stopped".to_string(), 0))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.wait(&init("hello")), (0, None));
    c.delete("hello");
    let gone = c.call(&Request::ContainerState { id: "hello".into() });
    assert!(matches!(gone, Response::Error { message } if message.contains("hello")));
}

#[test]
fn exit_code_7_is_reported() {
    if !is_root() {
        return;
    }
    let a = Agent::start();
    let mut c = a.control();
    c.create(
        "seven",
        a.spec(&["sh", "-c", "exit 7"]),
        StdioSpec::default(),
    );
    c.start("seven");
    assert_eq!(c.wait(&init("seven")), (7, None));
    c.delete("seven");
}

#[test]
fn stdin_is_piped_through_cat() {
    if !is_root() {
        return;
    }
    let a = Agent::start();
    let mut c = a.control();
    let mut stdin = a.stream(&init("cat"), StreamKind::Stdin);
    let out = a.stream(&init("cat"), StreamKind::Stdout);
    let stdio = StdioSpec {
        stdin: true,
        stdout: true,
        ..Default::default()
    };
    c.create("cat", a.spec(&["cat"]), stdio);
    c.start("cat");
    stdin.write_all(b"piped through\n").unwrap();
    stdin.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(out), "piped through\n");
    assert_eq!(c.wait(&init("cat")), (0, None));
    c.delete("cat");
}

#[test]
fn close_stdin_ends_cat() {
    if !is_root() {
        return;
    }
    let a = Agent::start();
    let mut c = a.control();
    let _stdin = a.stream(&init("cs"), StreamKind::Stdin);
    let stdio = StdioSpec {
        stdin: true,
        ..Default::default()
    };
    c.create("cs", a.spec(&["cat"]), stdio);
    c.start("cs");
    assert_eq!(
        c.ok(&Request::CloseStdin {
            process: init("cs")
        }),
        ResponseBody::Ok
    );
    assert_eq!(c.wait(&init("cs")), (0, None));
    c.delete("cs");
}

#[test]
fn sigkill_gives_status_137_and_two_waiters_both_hear() {
    if !is_root() {
        return;
    }
    let a = Agent::start();
    let mut c = a.control();
    let pid = c.create("sleeper", a.spec(&["sleep", "30"]), StdioSpec::default());
    c.start("sleeper");
    match c.ok(&Request::ListProcesses {
        id: "sleeper".into(),
    }) {
        ResponseBody::Processes { pids } => assert!(pids.contains(&pid), "{pids:?}"),
        other => panic!("{other:?}"),
    }
    // A second control connection parks in WaitProcess first.
    let mut waiter = a.control();
    write_frame(
        &mut waiter.0,
        &Request::WaitProcess {
            process: init("sleeper"),
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        c.ok(&Request::SignalProcess {
            process: init("sleeper"),
            signal: 9,
            all: false
        }),
        ResponseBody::Ok
    );
    let parked: Response = read_frame(&mut waiter.0).unwrap();
    assert!(
        matches!(
            parked,
            Response::Ok(ResponseBody::Exited {
                status: 137,
                signal: Some(9),
                ..
            })
        ),
        "{parked:?}"
    );
    assert_eq!(c.wait(&init("sleeper")), (137, Some(9)));
    // The waiter's connection still serves requests.
    assert!(matches!(
        waiter.call(&Request::ContainerState {
            id: "sleeper".into()
        }),
        Response::Ok(ResponseBody::State { .. })
    ));
    c.delete("sleeper");
}

#[test]
fn exec_runs_in_a_running_container() {
    if !is_root() {
        return;
    }
    let a = Agent::start();
    let mut c = a.control();
    c.create("ex", a.spec(&["sleep", "30"]), StdioSpec::default());
    c.start("ex");
    let e1 = exec_ref("ex", "e1");
    let out = a.stream(&e1, StreamKind::Stdout);
    let mut process: Process = a.spec(&["true"]).process().clone().unwrap();
    process.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "echo exec-$(hostname)".into(),
    ]));
    let body = c.ok(&Request::ExecProcess {
        id: "ex".into(),
        exec_id: "e1".into(),
        process: Box::new(process),
        stdio: out_only(),
    });
    assert!(matches!(body, ResponseBody::Pid { .. }), "{body:?}");
    assert_eq!(read_all(out), "exec-agent-test\n");
    assert_eq!(c.wait(&e1), (0, None));
    // all=true signals every process of the container's cgroup.
    assert_eq!(
        c.ok(&Request::SignalProcess {
            process: init("ex"),
            signal: 9,
            all: true
        }),
        ResponseBody::Ok
    );
    assert_eq!(c.wait(&init("ex")), (137, Some(9)));
    let m = c.call(&Request::SignalProcess {
        process: init("ex"),
        signal: 9,
        all: false,
    });
    assert!(
        matches!(&m, Response::Error { message } if message.contains("container ex")),
        "{m:?}"
    );
    c.delete("ex");
}

#[test]
fn tty_output_is_relayed() {
    if !is_root() {
        return;
    }
    let a = Agent::start();
    let mut c = a.control();
    let tty = a.stream(&init("tty"), StreamKind::Tty);
    let mut spec = a.spec(&["sh", "-c", "stty size; echo tty-ok"]);
    let mut p = spec.process().clone().unwrap();
    p.set_terminal(Some(true));
    spec.set_process(Some(p));
    let stdio = StdioSpec {
        terminal: true,
        ..Default::default()
    };
    c.create("tty", spec, stdio);
    assert_eq!(
        c.ok(&Request::ResizeTty {
            process: init("tty"),
            rows: 33,
            cols: 77
        }),
        ResponseBody::Ok
    );
    c.start("tty");
    assert_eq!(c.wait(&init("tty")), (0, None));
    let out = read_all(tty);
    assert!(out.contains("33 77") && out.contains("tty-ok"), "{out:?}");
    c.delete("tty");
}

#[test]
fn bad_frames_close_only_their_connection() {
    if !is_root() {
        return;
    }
    let a = Agent::start();
    // Oversized length header.
    let mut s = a.connect(CONTROL_PORT);
    s.write_all(&((MAX_FRAME as u32) + 1).to_be_bytes())
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0, "connection closed");
    // Malformed JSON after a good Hello.
    let mut c = a.control();
    c.0.write_all(&5u32.to_be_bytes()).unwrap();
    c.0.write_all(b"{nope").unwrap();
    assert_eq!(c.0.read(&mut b).unwrap(), 0, "connection closed");
    // A bad handshake line.
    let mut h = UnixStream::connect(&a.sock).unwrap();
    h.set_read_timeout(Some(TIMEOUT)).unwrap();
    h.write_all(b"CONNECT 9\n").unwrap();
    assert_eq!(h.read(&mut b).unwrap(), 0, "connection closed");
    // The agent still serves.
    let mut c = a.control();
    let r = c.call(&Request::ContainerState { id: "nope".into() });
    assert!(
        matches!(&r, Response::Error { message } if message.contains("container nope")),
        "{r:?}"
    );
}

#[test]
fn another_protocol_version_is_refused() {
    if !is_root() {
        return;
    }
    let a = Agent::start();
    let mut s = a.connect(CONTROL_PORT);
    write_frame(&mut s, &Hello { version: 999 }).unwrap();
    let reply: HelloReply = read_frame(&mut s).unwrap();
    assert_eq!(reply.version, PROTOCOL_VERSION);
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0, "connection closed");
}

#[test]
fn bad_requests_get_one_line_errors_and_leave_nothing() {
    if !is_root() {
        return;
    }
    let a = Agent::start();
    let mut c = a.control();
    let err = |r: Response| match r {
        Response::Error { message } => message,
        other => panic!("expected an error, got {other:?}"),
    };
    // A stream announced but never opened.
    let m = err(c.call(&Request::CreateContainer {
        id: "nostream".into(),
        spec: Box::new(a.spec(&["true"])),
        stdio: out_only(),
    }));
    assert!(m.contains("stdout") && m.contains("nostream"), "{m}");
    // A missing rootfs.
    let mut spec = a.spec(&["true"]);
    let mut root = spec.root().clone().unwrap();
    root.set_path("/nonexistent/rootfs".into());
    spec.set_root(Some(root));
    let m = err(c.call(&Request::CreateContainer {
        id: "noroot".into(),
        spec: Box::new(spec),
        stdio: StdioSpec::default(),
    }));
    assert!(
        m.contains("noroot") && m.contains("/nonexistent/rootfs"),
        "{m}"
    );
    // A bad id.
    let m = err(c.call(&Request::StartContainer { id: "../x".into() }));
    assert!(m.contains("../x"), "{m}");
    // Empty args: the container module refuses, nothing stays behind.
    let m = err(c.call(&Request::CreateContainer {
        id: "noargs".into(),
        spec: Box::new(a.spec(&[])),
        stdio: StdioSpec::default(),
    }));
    assert!(m.contains("noargs"), "{m}");
    assert!(!a.dir.path().join("run/noargs").exists());
    // Duplicate ids.
    c.create("dup", a.spec(&["sleep", "30"]), StdioSpec::default());
    let m = err(c.call(&Request::CreateContainer {
        id: "dup".into(),
        spec: Box::new(a.spec(&["true"])),
        stdio: StdioSpec::default(),
    }));
    assert!(m.contains("dup") && m.contains("exists"), "{m}");
    // Stats need cgroup v2; the host has v1 (or answers real numbers on a v2 host).
    match c.call(&Request::Stats { id: "dup".into() }) {
        Response::Error { message } => assert!(message.contains("dup"), "{message}"),
        Response::Ok(ResponseBody::Stats(s)) => assert!(s.pids_current >= 1),
        other => panic!("{other:?}"),
    }
    c.delete("dup");
}

#[test]
fn exec_with_a_tty_gets_a_pty() {
    if !is_root() {
        return;
    }
    let a = Agent::start();
    let mut c = a.control();
    c.create("extty", a.spec(&["sleep", "30"]), StdioSpec::default());
    c.start("extty");
    let e = exec_ref("extty", "t");
    let mut tty = a.stream(&e, StreamKind::Tty);
    let mut process: Process = a.spec(&["true"]).process().clone().unwrap();
    process.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "read line; echo got-$line; tty".into(),
    ]));
    process.set_terminal(Some(true));
    let stdio = StdioSpec {
        terminal: true,
        ..Default::default()
    };
    let body = c.ok(&Request::ExecProcess {
        id: "extty".into(),
        exec_id: "t".into(),
        process: Box::new(process),
        stdio,
    });
    assert!(matches!(body, ResponseBody::Pid { .. }), "{body:?}");
    tty.write_all(b"typed\n").unwrap();
    assert_eq!(c.wait(&e), (0, None));
    let out = read_all(tty);
    assert!(
        out.contains("got-typed") && out.contains("/dev/pts/"),
        "{out:?}"
    );
    c.delete("extty");
}

/// CPU time (user + system, clock ticks) of `pid`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn a_hung_up_tty_stream_does_not_make_the_agent_spin() {
    if !is_root() {
        return;
    }
    let a = Agent::start();
    let mut c = a.control();
    let tty = a.stream(&init("hup"), StreamKind::Tty);
    let mut spec = a.spec(&["sleep", "30"]);
    let mut p = spec.process().clone().unwrap();
    p.set_terminal(Some(true));
    spec.set_process(Some(p));
    let stdio = StdioSpec {
        terminal: true,
        ..Default::default()
    };
    c.create("hup", spec, stdio);
    c.start("hup");
    drop(tty);
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_ticks(a.child.id());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(a.child.id()) - before;
    assert!(used < 20, "the agent used {used} ticks in 1 s while idle");
    c.delete("hup");
}

#[test]
fn sigterm_removes_every_container_and_exits() {
    if !is_root() {
        return;
    }
    let mut a = Agent::start();
    let mut c = a.control();
    let pid = c.create("term", a.spec(&["sleep", "30"]), StdioSpec::default());
    c.start("term");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while a.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the agent did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The container's init is gone (not even a zombie: the agent reaped it) and so is the
    // listening socket.
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!a.sock.exists());
    let cg = a.cgroup_parent.trim_start_matches('/').to_string();
    assert!(!Path::new(&format!("/sys/fs/cgroup/memory/{cg}/term")).exists());
}

/// A limit file of the agent's container `id`: `v1` in the hierarchy of controller `ctrl` on a
/// cgroup v1 host (this one), `v2` in the unified hierarchy elsewhere.
fn cgroup_file(a: &Agent, id: &str, ctrl: &str, v1: &str, v2: &str) -> String {
    let cg = a.cgroup_parent.trim_start_matches('/');
    let path = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        format!("/sys/fs/cgroup/{cg}/{id}/{v2}")
    } else {
        format!("/sys/fs/cgroup/{ctrl}/{cg}/{id}/{v1}")
    };
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
        .trim()
        .to_string()
}

#[test]
fn update_container_writes_new_limits_to_its_cgroup() {
    if !is_root() {
        return;
    }
    let a = Agent::start();
    let mut c = a.control();
    c.create("upd", a.spec(&["sleep", "30"]), StdioSpec::default());
    c.start("upd");
    let pids = |a: &Agent| cgroup_file(a, "upd", "pids", "pids.max", "pids.max");
    let memory = |a: &Agent| cgroup_file(a, "upd", "memory", "memory.limit_in_bytes", "memory.max");
    assert_eq!(pids(&a), "max");
    let resources: oci_spec::runtime::LinuxResources =
        serde_json::from_str(r#"{"memory": {"limit": 33554432}, "pids": {"limit": 20}}"#).unwrap();
    assert_eq!(
        c.ok(&Request::UpdateContainer {
            id: "upd".into(),
            resources: Box::new(resources),
        }),
        ResponseBody::Ok
    );
    assert_eq!(pids(&a), "20");
    assert_eq!(memory(&a), "33554432");
    // Only the fields present are written: a pids-only update keeps the memory limit.
    let resources: oci_spec::runtime::LinuxResources =
        serde_json::from_str(r#"{"pids": {"limit": 7}}"#).unwrap();
    assert_eq!(
        c.ok(&Request::UpdateContainer {
            id: "upd".into(),
            resources: Box::new(resources.clone()),
        }),
        ResponseBody::Ok
    );
    assert_eq!(pids(&a), "7");
    assert_eq!(memory(&a), "33554432");
    // An unknown container: one error line naming it.
    let r = c.call(&Request::UpdateContainer {
        id: "nope".into(),
        resources: Box::new(resources),
    });
    assert!(
        matches!(&r, Response::Error { message } if message.contains("container nope")),
        "{r:?}"
    );
    c.delete("upd");
}
