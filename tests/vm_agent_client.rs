//! The host side of `--isolation vm` (agent client, stdio streams and relays) against the real
//! `kvmbox-agent` in its `--listen-unix` test mode, without a VM: the agent runs busybox
//! containers on this host (root), and its socket speaks the VMM's hybrid vsock handshake.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guest_agent::protocol::{ProcessRef, Request, ResponseBody};
use kvmbox::runtime::vm::client::{AgentClient, AgentError, AgentTarget};
use kvmbox::runtime::vm::stdio::{HostEnd, ProcessStreams, Relay};
use kvmbox::runtime::Status;
use oci_spec::runtime::{Process, Spec};

/// The agent binary next to kvmbox (cargo's target dir), built on demand.
fn agent_binary() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_kvmbox"))
        .parent()
        .unwrap()
        .to_path_buf();
    let agent = dir.join("kvmbox-agent");
    if !agent.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "guest-agent", "--bin", "kvmbox-agent"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p guest-agent failed");
    }
    agent
}

/// One agent serving a temp dir, killed at the end.
struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    sock: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start() -> Option<Agent> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (the agent runs containers on this host)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("kvmbox-vmclient-")
            .tempdir()
            .unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "dev", "tmp"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for a in ["sh", "echo", "cat", "sleep", "true"] {
            symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        let sock = dir.path().join("vsock.sock");
        let log = dir.path().join("console.log");
        let child = Command::new(agent_binary())
            .arg("--listen-unix")
            .arg(&sock)
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--cgroup-parent")
            .arg(format!("/kvmbox-vmclient-{}", std::process::id()))
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start kvmbox-agent --listen-unix");
        Some(Agent {
            child,
            dir,
            sock,
            log,
        })
    }

    fn target(&self) -> AgentTarget {
        let pid = self.child.id() as i32;
        AgentTarget {
            uds: self.sock.clone(),
            vmm_pid: pid,
            vmm_start_time: kvmbox::runtime::process::start_time(pid).unwrap_or(1),
            console_log: self.log.clone(),
            timeout: Duration::from_secs(10),
        }
    }

    fn spec(&self, args: &[&str]) -> Spec {
        let mut spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": args,
                        "env": ["PATH=/bin"], "cwd": "/"},
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}]}
        }))
        .unwrap();
        let mut root = spec.root().clone().unwrap();
        root.set_path(self.dir.path().join("rootfs"));
        spec.set_root(Some(root));
        spec
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(mut c) = AgentClient::connect(&AgentTarget {
            timeout: Duration::from_secs(2),
            ..self.target()
        }) {
            let _ = c.request(&Request::Shutdown);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pipes for a relay: (host end for the relay, our write end of stdin, our read ends).
fn pipes() -> (HostEnd, fs::File, fs::File, fs::File) {
    let (in_r, in_w) = nix::unistd::pipe().unwrap();
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let (err_r, err_w) = nix::unistd::pipe().unwrap();
    (
        HostEnd::Files {
            stdin: in_r.into(),
            stdout: out_w.into(),
            stderr: err_w.into(),
        },
        in_w.into(),
        out_r.into(),
        err_r.into(),
    )
}

fn read_all(mut f: fs::File) -> String {
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

/// Read `f` to its end on a thread; what has arrived so far is readable meanwhile.
fn collect(mut f: fs::File) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (text, reader)
}

/// Wait (at most 60 s) until `text` is `want`.
fn wait_for_text(text: &Mutex<String>, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while *text.lock().unwrap() != want {
        assert!(
            Instant::now() < deadline,
            "want {want:?}, have {:?}",
            text.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait(target: &AgentTarget, process: &ProcessRef) -> ResponseBody {
    AgentClient::connect(target)
        .unwrap()
        .request(&Request::WaitProcess {
            process: process.clone(),
        })
        .unwrap()
}

#[test]
fn init_and_exec_stdio_flow_through_streams_and_relays() {
    let Some(agent) = Agent::start() else { return };
    let target = agent.target();
    let id = format!("vmclient-{}", std::process::id());
    let init = ProcessRef {
        container_id: id.clone(),
        exec_id: None,
    };
    let mut client = AgentClient::connect(&target).unwrap();
    let streams = ProcessStreams::open(&target, &init, false).unwrap();
    let spec = agent.spec(&[
        "sh",
        "-c",
        "read l; echo out:$l; echo err >&2; exec sleep 100",
    ]);
    let body = client
        .request(&Request::CreateContainer {
            id: id.clone(),
            spec: Box::new(spec),
            stdio: streams.spec,
        })
        .unwrap();
    assert!(
        matches!(body, ResponseBody::Pid { pid } if pid > 0),
        "{body:?}"
    );
    let (end, mut stdin, stdout, stderr) = pipes();
    let mut relay = Relay::start(streams, end).unwrap();
    let (stdout, stdout_reader) = collect(stdout);
    let (stderr, stderr_reader) = collect(stderr);
    let state = client
        .request(&Request::ContainerState { id: id.clone() })
        .unwrap();
    assert!(
        matches!(
            state,
            ResponseBody::State {
                status: Status::Created,
                ..
            }
        ),
        "{state:?}"
    );
    client
        .request_ok(&Request::StartContainer { id: id.clone() })
        .unwrap();
    stdin.write_all(b"hello\n").unwrap();
    drop(stdin);

    // exec `cat` with its own streams: stdin EOF ends it.
    let exec = ProcessRef {
        container_id: id.clone(),
        exec_id: Some("e1".into()),
    };
    let exec_streams = ProcessStreams::open(&target, &exec, false).unwrap();
    let mut process = Process::default();
    process.set_args(Some(vec!["cat".into()]));
    process.set_env(Some(vec!["PATH=/bin".into()]));
    let body = client
        .request(&Request::ExecProcess {
            id: id.clone(),
            exec_id: "e1".into(),
            process: Box::new(process),
            stdio: exec_streams.spec,
        })
        .unwrap();
    assert!(matches!(body, ResponseBody::Pid { .. }), "{body:?}");
    let (end, mut e_in, e_out, _e_err) = pipes();
    let mut exec_relay = Relay::start(exec_streams, end).unwrap();
    e_in.write_all(b"through cat\n").unwrap();
    drop(e_in);
    assert_eq!(
        wait(&target, &exec),
        ResponseBody::Exited {
            status: 0,
            signal: None,
            oom_killed: false
        }
    );
    assert!(exec_relay.wait_output(Some(Duration::from_secs(5))));
    assert_eq!(read_all(e_out), "through cat\n");

    // The init has echoed (on a loaded host it may still be starting); kill it: exit status
    // 128+9, output streams end.
    wait_for_text(&stdout, "out:hello\n");
    wait_for_text(&stderr, "err\n");
    client
        .request_ok(&Request::SignalProcess {
            process: init.clone(),
            signal: 9,
            all: false,
        })
        .unwrap();
    assert_eq!(
        wait(&target, &init),
        ResponseBody::Exited {
            status: 137,
            signal: Some(9),
            oom_killed: false
        }
    );
    assert!(relay.wait_output(Some(Duration::from_secs(5))));
    stdout_reader.join().unwrap();
    stderr_reader.join().unwrap();
    assert_eq!(*stdout.lock().unwrap(), "out:hello\n");
    assert_eq!(*stderr.lock().unwrap(), "err\n");
    client
        .request_ok(&Request::DeleteContainer {
            id: id.clone(),
            force: false,
        })
        .unwrap();
}

#[test]
fn a_killed_agent_process_is_reported_with_its_log() {
    let Some(mut agent) = Agent::start() else {
        return;
    };
    let target = agent.target();
    AgentClient::connect(&target).unwrap();
    let mut waiting = AgentClient::connect(&target).unwrap();
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let start = Instant::now();
    let err = AgentClient::connect(&target).unwrap_err();
    assert!(matches!(err, AgentError::VmmGone { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));
    let msg = err.to_string();
    assert!(msg.contains(&agent.log.display().to_string()), "{msg}");
    assert!(
        msg.contains("listening"),
        "the log's last lines are quoted: {msg}"
    );
    // A request on a connection whose VMM died fails the same way.
    let err = waiting.request(&Request::Shutdown).unwrap_err();
    assert!(matches!(err, AgentError::VmmGone { .. }), "{err}");
}
