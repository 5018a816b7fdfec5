//! One real boot of the guest agent: an initramfs with the static `kvmbox-agent` as `/init` and a
//! busybox rootfs at `/containers/<id>/rootfs`, booted with a vsock device; the test talks to
//! the agent through the VMM's hybrid vsock socket (`CONNECT 1024` / `CONNECT 1025`), runs
//! `echo hello` in a container (stdout stream, exit 0, cgroup v2 stats), a second container that
//! exceeds its memory limit (137, oom_killed), deletes both and checks that the VM powered off
//! after the last one.
//!
//! Needs the static agent: `KVMBOX_AGENT`, else `target/x86_64-unknown-linux-gnu/release/
//! kvmbox-agent`, built with
//! `RUSTFLAGS="-C target-feature=+crt-static" cargo build -p guest-agent --release --bin
//! kvmbox-agent --target x86_64-unknown-linux-gnu` (skipped like the kernel with
//! `KVMBOX_SKIP_VM_TESTS=1`).

mod vm_common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_agent::protocol::{
    read_frame, write_frame, Hello, HelloReply, ProcessRef, Request, Response, ResponseBody,
    StdioSpec, StreamHello, StreamKind, CONTROL_PORT, PROTOCOL_VERSION, STDIO_PORT,
};
use kvmbox::vmm::config::{CpuProfile, SerialOutput, VmConfig, VsockConfig, KVM_PVM_SYSFS};
use kvmbox::vmm::exit::VmExit;
use kvmbox::vmm::initramfs::{Entry, Initramfs};
use oci_spec::runtime::Spec;

const ID: &str = "c1";

const SPEC: &str = r#"{
 "ociVersion": "1.0.2",
 "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["echo", "hello"],
   "env": ["PATH=/bin"], "cwd": "/",
   "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
   "noNewPrivileges": true},
 "root": {"path": "/containers/c1/rootfs", "readonly": true},
 "mounts": [
  {"destination": "/proc", "type": "proc", "source": "proc"},
  {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
 ],
 "linux": {"resources": {"memory": {"limit": 67108864}, "pids": {"limit": 64}},
   "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}
}"#;

/// The static agent, or None (after saying so) when absent and VM tests may be skipped.
fn agent_binary() -> Option<PathBuf> {
    let path = std::env::var_os("KVMBOX_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/x86_64-unknown-linux-gnu/release/kvmbox-agent")
        });
    if path.is_file() {
        return Some(path);
    }
    let msg = format!(
        "no static agent at {}: build it with RUSTFLAGS=\"-C target-feature=+crt-static\" cargo \
         build -p guest-agent --release --bin kvmbox-agent --target x86_64-unknown-linux-gnu \
         (or set KVMBOX_AGENT)",
        path.display()
    );
    if std::env::var("KVMBOX_SKIP_VM_TESTS").as_deref() == Ok("1") {
        eprintln!("skipped (KVMBOX_SKIP_VM_TESTS=1): {msg}");
        return None;
    }
    panic!("{msg}");
}

fn initramfs(agent: &Path) -> Initramfs {
    let mut fs = Initramfs::new();
    fs.dir("dev")
        .dir("containers")
        .dir(&format!("containers/{ID}"));
    fs.add(Entry::CharDev {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    fs.host_file("init", agent).unwrap();
    let root = format!("containers/{ID}/rootfs");
    fs.dir(&root);
    for d in ["bin", "proc", "dev", "sys", "tmp"] {
        fs.dir(&format!("{root}/{d}"));
    }
    fs.host_file(&format!("{root}/bin/busybox"), Path::new("/bin/busybox"))
        .expect("/bin/busybox (Debian busybox-static) is needed");
    for a in ["sh", "echo", "cat", "dd"] {
        fs.symlink(&format!("{root}/bin/{a}"), "busybox");
    }
    fs
}

fn read_line(s: &mut UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b)? == 1 {
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Connect to guest vsock `port` through the VMM; None while nobody listens there.
fn connect(uds: &Path, port: u32) -> Option<UnixStream> {
    let mut s = UnixStream::connect(uds).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(240))).ok()?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).ok()?;
    match read_line(&mut s) {
        Ok(l) if l.starts_with("OK ") => Some(s),
        _ => None,
    }
}

/// One request/response; panics with the serial log on failure.
fn call(c: &mut UnixStream, req: &Request, serial_log: &Path) -> ResponseBody {
    let serial = || std::fs::read_to_string(serial_log).unwrap_or_default();
    write_frame(c, req).unwrap_or_else(|e| panic!("{req:?}: {e}; serial:\n{}", serial()));
    match read_frame(c) {
        Ok(Response::Ok(b)) => b,
        Ok(Response::Error { message }) => panic!("{req:?}: {message}; serial:\n{}", serial()),
        Err(e) => panic!("{req:?}: {e}; serial:\n{}", serial()),
    }
}

#[test]
fn agent_runs_echo_hello_in_a_microvm_and_powers_off() {
    let Some(kernel) = vm_common::guest_kernel() else {
        return;
    };
    let Some(agent) = agent_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initramfs.cpio");
    std::fs::write(&initrd, initramfs(&agent).to_bytes()).unwrap();
    let uds = dir.path().join("v.sock");
    let serial_log = dir.path().join("serial.log");

    let mut config = VmConfig::new(&kernel);
    config.initrd = Some(initrd);
    config.memory_mib = 256;
    config.extra_cmdline = Some("rdinit=/init".into());
    config.serial = SerialOutput::File(serial_log.clone());
    config.cpu_profile = CpuProfile::choose(None, Path::new(KVM_PVM_SYSFS)).profile;
    config.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: uds.clone(),
    });
    let start = Instant::now();
    let deadline = start + vm_common::boot_timeout(600);
    let vm = vm_common::spawn_vm(config);
    let serial = || std::fs::read_to_string(&serial_log).unwrap_or_default();
    let rpc = |c: &mut UnixStream, req: &Request| call(c, req, &serial_log);

    // Retry until the agent listens.
    let mut control = loop {
        if let Some(s) = connect(&uds, CONTROL_PORT) {
            break s;
        }
        assert!(!vm.is_finished(), "the VM stopped; serial:\n{}", serial());
        assert!(
            Instant::now() < deadline,
            "the agent did not answer; serial:\n{}",
            serial()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    write_frame(
        &mut control,
        &Hello {
            version: PROTOCOL_VERSION,
        },
    )
    .unwrap();
    let hello: HelloReply = read_frame(&mut control).unwrap();
    assert_eq!(hello.version, PROTOCOL_VERSION);
    let t_agent = start.elapsed();

    let init = ProcessRef {
        container_id: ID.into(),
        exec_id: None,
    };
    let mut stdout = connect(&uds, STDIO_PORT).expect("stdio port");
    write_frame(
        &mut stdout,
        &StreamHello {
            process: init.clone(),
            kind: StreamKind::Stdout,
        },
    )
    .unwrap();
    let r: Response = read_frame(&mut stdout).unwrap();
    assert_eq!(r, Response::Ok(ResponseBody::Ok), "serial:\n{}", serial());

    let spec: Spec = serde_json::from_str(SPEC).unwrap();
    let created = rpc(
        &mut control,
        &Request::CreateContainer {
            id: ID.into(),
            spec: Box::new(spec),
            stdio: StdioSpec {
                stdout: true,
                ..Default::default()
            },
        },
    );
    assert!(matches!(created, ResponseBody::Pid { .. }), "{created:?}");
    rpc(&mut control, &Request::StartContainer { id: ID.into() });
    let exited = rpc(&mut control, &Request::WaitProcess { process: init });
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(out, "hello\n", "serial:\n{}", serial());
    assert!(
        matches!(exited, ResponseBody::Exited { status: 0, .. }),
        "{exited:?}; serial:\n{}",
        serial()
    );
    let stats = rpc(&mut control, &Request::Stats { id: ID.into() });
    let ResponseBody::Stats(stats) = stats else {
        panic!("{stats:?}")
    };
    assert_eq!(stats.memory_limit, Some(64 << 20), "{stats:?}");
    assert_eq!(stats.pids_limit, Some(64), "{stats:?}");
    let t_run = start.elapsed();
    eprintln!(
        "agent answered after {:.1} s, echo done after {:.1} s",
        t_agent.as_secs_f64(),
        t_run.as_secs_f64()
    );

    // A second container over its memory limit is OOM-killed: 137 and oom_killed.
    let mut oom: Spec = serde_json::from_str(SPEC).unwrap();
    let mut p = oom.process().clone().unwrap();
    p.set_args(Some(
        ["dd", "if=/dev/zero", "of=/dev/null", "bs=16M", "count=1"]
            .map(String::from)
            .to_vec(),
    ));
    oom.set_process(Some(p));
    let mut linux = oom.linux().clone().unwrap();
    let mut res = linux.resources().clone().unwrap();
    let mut mem = res.memory().unwrap();
    mem.set_limit(Some(8 << 20));
    res.set_memory(Some(mem));
    linux.set_resources(Some(res));
    oom.set_linux(Some(linux));
    rpc(
        &mut control,
        &Request::CreateContainer {
            id: "oom".into(),
            spec: Box::new(oom),
            stdio: StdioSpec::default(),
        },
    );
    rpc(&mut control, &Request::StartContainer { id: "oom".into() });
    let oom_exit = rpc(
        &mut control,
        &Request::WaitProcess {
            process: ProcessRef {
                container_id: "oom".into(),
                exec_id: None,
            },
        },
    );
    assert_eq!(
        oom_exit,
        ResponseBody::Exited {
            status: 137,
            signal: Some(9),
            oom_killed: true
        },
        "serial:\n{}",
        serial()
    );
    rpc(
        &mut control,
        &Request::DeleteContainer {
            id: "oom".into(),
            force: false,
        },
    );
    // Not the last container: the VM still serves.
    let state = rpc(&mut control, &Request::ContainerState { id: ID.into() });
    assert!(matches!(state, ResponseBody::State { .. }), "{state:?}");
    eprintln!(
        "OOM container done after {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // Deleting the last container powers the VM off.
    rpc(
        &mut control,
        &Request::DeleteContainer {
            id: ID.into(),
            force: false,
        },
    );
    drop(control);
    while !vm.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the VM did not power off ({:.1} s after the echo); serial:\n{}",
            (start.elapsed() - t_run).as_secs_f64(),
            serial()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let exit = vm.join().unwrap().unwrap();
    assert!(
        matches!(exit, VmExit::PowerOff(_)),
        "{exit:?}; serial:\n{}",
        serial()
    );
    match std::fs::metadata(&uds) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        other => panic!("the vsock socket should be removed: {other:?}"),
    }
    eprintln!("serial log:\n{}", serial());
    eprintln!(
        "agent boot: agent answered after {:.1} s, echo done after {:.1} s, powered off after {:.1} s",
        t_agent.as_secs_f64(),
        t_run.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}
