//! End-to-end tests of `kvmbox --isolation namespace`: real containers on this host (root).
//!
//! Every test has its own `--root`, bundles and container ids, so the tests run in parallel.
//! They follow runc's command-line contract; `KVMBOX_E2E_RUNTIME=/usr/sbin/runc` runs them
//! against runc instead (the kvmbox-specific checks, such as error wording, are skipped then).

mod common;

use std::fs;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use common::{
    cap_mask, listed_ids, parse_cap_lines, read_pty, receive_fd, testing_kvmbox, Bundle, Harness,
};
use serde_json::{json, Value};

/// `create` + `start` a container running `args`; returns its id.
fn started(h: &Harness, bundle: &Bundle, prefix: &str) -> String {
    let id = h.id(prefix);
    h.run(&["create", "--bundle", bundle.dir.to_str().unwrap(), &id])
        .ok();
    h.run(&["start", &id]).ok();
    id
}

/// `kill -9` then `delete` a container, then check that nothing is left.
fn kill_and_delete(h: &Harness, id: &str, bundle: &Bundle) {
    h.run(&["kill", id, "KILL"]).ok();
    h.wait_status(id, "stopped");
    h.run(&["delete", id]).ok();
    h.assert_no_leftovers(id, bundle);
}

/// `run --bundle B <id>`; returns the id and the outcome; checks for leftovers.
fn run(h: &Harness, bundle: &Bundle, prefix: &str) -> common::Outcome {
    let id = h.id(prefix);
    let out = h.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), &id]);
    h.assert_no_leftovers(&id, bundle);
    out
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

#[test]
fn lifecycle_create_state_start_kill_delete() {
    let h = Harness::new();
    let bundle = h.bundle(&["sleep", "300"]);
    let id = h.id("life");
    let pid_file = h.dir().join("pid");
    h.run(&[
        "create",
        "--bundle",
        bundle.dir.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ])
    .ok();

    let st = h.state(&id);
    assert_eq!(st["status"], "created", "{st}");
    assert_eq!(st["id"], id.as_str());
    assert_eq!(st["bundle"], bundle.dir.to_str().unwrap());
    assert!(st["ociVersion"].is_string(), "{st}");
    let pid = st["pid"].as_i64().expect("pid in state");
    assert!(pid > 0, "{st}");
    let written: i64 = fs::read_to_string(&pid_file)
        .expect("pid file written")
        .trim()
        .parse()
        .expect("pid file holds a number");
    assert_eq!(written, pid, "pid file and state disagree");
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "init {pid} is not alive after create"
    );
    if testing_kvmbox() {
        assert!(st["created"].is_string(), "state lacks `created`: {st}");
    }

    h.run(&["start", &id]).ok();
    let st = h.state(&id);
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["pid"].as_i64(), Some(pid));

    h.run(&["kill", &id, "SIGKILL"]).ok();
    h.wait_status(&id, "stopped");

    h.run(&["delete", &id]).ok();
    h.assert_no_leftovers(&id, &bundle);
    let out = h.run(&["state", &id]);
    if testing_kvmbox() {
        out.error_line(&[&id]);
    } else {
        assert_ne!(out.code, Some(0), "{out}");
    }
}

#[test]
fn kill_accepts_signal_numbers_and_short_names() {
    let h = Harness::new();
    let bundle = h.bundle(&["sleep", "300"]);
    let id = started(&h, &bundle, "sig");
    // PID 1 of a pid namespace ignores TERM without a handler: STOP/CONT are delivered.
    let pid = h.state(&id)["pid"].as_i64().unwrap() as i32;
    h.run(&["kill", &id, "STOP"]).ok();
    wait_proc_state(pid, |s| s == "T", "stopped by SIGSTOP");
    h.run(&["kill", &id, "18"]).ok(); // SIGCONT
    wait_proc_state(pid, |s| s != "T", "continued by signal 18");
    assert_eq!(h.state(&id)["status"], "running");
    h.run(&["kill", &id, "9"]).ok();
    h.wait_status(&id, "stopped");
    h.run(&["delete", &id]).ok();
    h.assert_no_leftovers(&id, &bundle);
}

/// Wait (up to 5 s) until the state letter in /proc/<pid>/stat satisfies `ok`.
fn wait_proc_state(pid: i32, ok: impl Fn(&str) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("")
            .to_string();
        if ok(&state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} not {what}: state {state:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn kill_all_signals_every_process_of_the_container() {
    let h = Harness::new();
    let bundle = h.bundle(&[]);
    bundle.sh("sleep 300 & sleep 300 & wait");
    let id = started(&h, &bundle, "killall");
    let deadline = Instant::now() + Duration::from_secs(5);
    let pids: Vec<i32> = loop {
        let out = h.run(&["ps", "--format", "json", &id]);
        out.ok();
        let pids: Vec<i32> = serde_json::from_str(&out.stdout).expect("ps json");
        if pids.len() >= 3 {
            break pids;
        }
        assert!(Instant::now() < deadline, "sleeps never started: {out}");
        std::thread::sleep(Duration::from_millis(20));
    };
    h.run(&["kill", "--all", &id, "KILL"]).ok();
    h.wait_status(&id, "stopped");
    h.run(&["delete", &id]).ok();
    h.assert_no_leftovers(&id, &bundle);
    for pid in pids {
        assert!(common::is_zombie_or_gone(pid), "{pid} survived kill --all");
    }
}

#[test]
fn delete_force_removes_a_running_container() {
    let h = Harness::new();
    let bundle = h.bundle(&["sleep", "300"]);
    let id = started(&h, &bundle, "force");
    let pid = h.state(&id)["pid"].as_i64().unwrap() as i32;
    h.run(&["delete", "--force", &id]).ok();
    h.assert_no_leftovers(&id, &bundle);
    assert!(
        common::is_zombie_or_gone(pid),
        "init {pid} survived delete --force"
    );
}

#[test]
fn delete_of_a_created_container_kills_its_init() {
    let h = Harness::new();
    let bundle = h.bundle(&["true"]);
    let id = h.id("created-del");
    h.run(&["create", "--bundle", bundle.dir.to_str().unwrap(), &id])
        .ok();
    let pid = h.state(&id)["pid"].as_i64().unwrap() as i32;
    // Like runc, a created (never started) container needs no --force.
    h.run(&["delete", &id]).ok();
    h.assert_no_leftovers(&id, &bundle);
    assert!(common::is_zombie_or_gone(pid), "init {pid} survived delete");
}

// ---------------------------------------------------------------------------------------------
// run: exit codes and stdio

#[test]
fn run_exit_code_zero() {
    let h = Harness::new();
    let bundle = h.bundle(&["true"]);
    run(&h, &bundle, "exit0").code(0);
}

/// The config file's `isolation` is the default for new containers when neither
/// `--isolation` nor `$KVMBOX_ISOLATION` is given; a bad file fails `run` naming it, leaving
/// nothing, and commands that create nothing do not read it.
#[test]
fn config_file_isolation_is_the_default_for_new_containers() {
    if !testing_kvmbox() {
        return;
    }
    let h = Harness::new();
    let bundle = h.bundle(&["uname", "-r"]);
    let kvmbox = |config: &std::path::Path, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvmbox"))
            .env("KVMBOX_CONFIG", config)
            .env_remove("KVMBOX_ISOLATION")
            .arg("--root")
            .arg(h.root())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run kvmbox");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let config = h.dir().join("namespace.toml");
    fs::write(&config, "isolation = \"namespace\"\n").unwrap();
    let id = h.id("cfgns");
    let bundle_dir = bundle.dir.to_str().unwrap();
    let (code, stdout, stderr) = kvmbox(&config, &["run", "--bundle", bundle_dir, &id]);
    let host = nix::sys::utsname::uname().unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), host.release().to_string_lossy(), "{stderr}");
    h.assert_no_leftovers(&id, &bundle);

    let bad = h.dir().join("bad-isolation.toml");
    fs::write(&bad, "isolation = \"kvm\"\n").unwrap();
    let id = h.id("cfgbad");
    let (code, _, stderr) = kvmbox(&bad, &["run", "--bundle", bundle_dir, &id]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("bad-isolation.toml") && stderr.contains("line 1"),
        "{stderr}"
    );
    h.assert_no_leftovers(&id, &bundle);
    let (code, _, stderr) = kvmbox(&bad, &["list"]);
    assert_eq!(code, Some(0), "list read the config file: {stderr}");
}

#[test]
fn run_exit_code_seven() {
    let h = Harness::new();
    let bundle = h.bundle(&[]);
    bundle.sh("exit 7");
    run(&h, &bundle, "exit7").code(7);
}

#[test]
fn run_signal_exit_is_128_plus_signal() {
    let h = Harness::new();
    let bundle = h.bundle(&[]);
    // The init of a pid namespace cannot be killed by a signal sent from inside it, so this
    // container shares the host's pid namespace: the shell's own SIGTERM then kills it.
    bundle.sh("kill -TERM $$; sleep 5").edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "pid");
    });
    run(&h, &bundle, "exit-sig").code(143);
}

#[test]
fn run_reports_sigkill_from_outside_as_137() {
    let h = Harness::new();
    let bundle = h.bundle(&["sleep", "300"]);
    let id = h.id("killed");
    let out = std::thread::scope(|s| {
        let waiter = s.spawn(|| h.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), &id]));
        // `state` fails until `run` has created the container.
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.run(&["state", &id]).code != Some(0) || h.state(&id)["status"] != "running" {
            assert!(Instant::now() < deadline, "container {id} never ran");
            std::thread::sleep(Duration::from_millis(20));
        }
        h.run(&["kill", &id, "KILL"]).ok();
        waiter.join().expect("run thread")
    });
    out.code(137);
    h.assert_no_leftovers(&id, &bundle);
}

#[test]
fn run_detach_returns_with_the_container_running() {
    let h = Harness::new();
    let bundle = h.bundle(&["sleep", "300"]);
    let id = h.id("detached");
    h.run(&[
        "run",
        "--detach",
        "--bundle",
        bundle.dir.to_str().unwrap(),
        &id,
    ])
    .ok();
    assert_eq!(h.state(&id)["status"], "running");
    kill_and_delete(&h, &id, &bundle);
}

#[test]
fn run_captures_stdout_and_stderr() {
    let h = Harness::new();
    let bundle = h.bundle(&[]);
    bundle.sh("echo to-stdout; echo to-stderr >&2");
    let out = run(&h, &bundle, "stdio");
    out.ok();
    assert_eq!(out.stdout, "to-stdout\n", "{out}");
    assert!(out.stderr.contains("to-stderr"), "{out}");
    assert!(!out.stdout.contains("to-stderr"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// Resources

#[test]
fn memory_limit_is_enforced_by_oom_kill() {
    let h = Harness::new();
    let limit = 32 * 1024 * 1024;
    let bundle = h.bundle(&[]);
    bundle.edit(|c| {
        c["linux"]["resources"]["memory"] = json!({"limit": limit, "swap": limit});
    });
    // Within the limit: an 8 MiB buffer is fine.
    bundle.sh("dd if=/dev/zero of=/dev/null bs=8M count=1 2>/dev/null && echo small-ok");
    let out = run(&h, &bundle, "mem-ok");
    out.ok();
    assert!(out.stdout.contains("small-ok"), "{out}");
    // Beyond it: dd's 64 MiB buffer gets it OOM-killed (SIGKILL: exit 128 + 9).
    bundle.args(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    run(&h, &bundle, "mem-oom").code(137);
}

#[test]
fn pids_limit_bounds_forks() {
    let h = Harness::new();
    let script = "i=0; while [ $i -lt 16 ]; do sleep 1 & i=$((i+1)); done; wait; echo all-started";
    let bundle = h.bundle(&[]);
    bundle.sh(script);
    bundle.edit(|c| c["linux"]["resources"]["pids"] = json!({"limit": 64}));
    let out = run(&h, &bundle, "pids-ok");
    out.ok();
    assert!(out.stdout.contains("all-started"), "{out}");

    bundle.edit(|c| c["linux"]["resources"]["pids"] = json!({"limit": 8}));
    let out = run(&h, &bundle, "pids-bounded");
    assert_ne!(
        out.code,
        Some(0),
        "16 forks under pids.max=8 succeeded:\n{out}"
    );
    assert!(!out.stdout.contains("all-started"), "{out}");
    assert!(out.stderr.contains("fork"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// update

/// True on a unified (cgroup v2) host; this host is v1 (one hierarchy per controller).
fn cgroup_v2() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The value of a limit file of container cgroup `/kvmbox/<id>`: `v1` in the hierarchy of
/// controller `ctrl` on a v1 host, `v2` in the unified hierarchy.
fn cgroup_value(id: &str, ctrl: &str, v1: &str, v2: &str) -> String {
    let path = if cgroup_v2() {
        format!("/sys/fs/cgroup/kvmbox/{id}/{v2}")
    } else {
        format!("/sys/fs/cgroup/{ctrl}/kvmbox/{id}/{v1}")
    };
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
        .trim()
        .to_string()
}

fn memory_limit(id: &str) -> String {
    cgroup_value(id, "memory", "memory.limit_in_bytes", "memory.max")
}

fn pids_max(id: &str) -> String {
    cgroup_value(id, "pids", "pids.max", "pids.max")
}

/// A started container running `sleep 300` in cgroup `/kvmbox/<id>` (named explicitly, so
/// that a peer runtime puts it at the same place), with `resources` from its config.json.
fn started_in_known_cgroup(h: &Harness, prefix: &str, resources: Value) -> (String, Bundle) {
    let bundle = h.bundle(&["sleep", "300"]);
    let id = h.id(prefix);
    bundle.edit(|c| {
        c["linux"]["cgroupsPath"] = json!(format!("/kvmbox/{id}"));
        for (k, v) in resources.as_object().unwrap() {
            c["linux"]["resources"][k] = v.clone();
        }
    });
    h.run(&["create", "--bundle", bundle.dir.to_str().unwrap(), &id])
        .ok();
    h.run(&["start", &id]).ok();
    (id, bundle)
}

/// Run the runtime under test with `args`, feeding `input` on stdin (the harness closes it).
fn run_with_stdin(h: &Harness, args: &[&str], input: &str) -> common::Outcome {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let (exe, mut pre) = match std::env::var_os("KVMBOX_E2E_RUNTIME") {
        Some(path) => (std::path::PathBuf::from(path), Vec::new()),
        None => (
            std::path::PathBuf::from(env!("CARGO_BIN_EXE_kvmbox")),
            vec!["--isolation".to_string(), "namespace".to_string()],
        ),
    };
    pre.splice(0..0, ["--root".to_string(), h.root().display().to_string()]);
    pre.extend(args.iter().map(|s| s.to_string()));
    let command = format!("{} {}", exe.display(), pre.join(" "));
    // `update` starts no process that could keep the pipes open: plain pipes are enough.
    let mut child = Command::new(&exe)
        .args(&pre)
        .current_dir(h.dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    common::Outcome {
        command,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn update_changes_memory_and_pids_limits_of_a_running_container() {
    let h = Harness::new();
    let (id, bundle) = started_in_known_cgroup(&h, "upd", json!({"pids": {"limit": 100}}));
    assert_eq!(pids_max(&id), "100");

    h.run(&["update", "--memory", "32m", "--pids-limit", "20", &id])
        .ok();
    assert_eq!(memory_limit(&id), (32u64 << 20).to_string());
    assert_eq!(pids_max(&id), "20");

    // runtime-spec LinuxResources JSON on stdin (what containerd's runc shim sends).
    let json = r#"{"memory": {"limit": 50331648}, "pids": {"limit": 40}}"#;
    run_with_stdin(&h, &["update", "--resources", "-", &id], json).ok();
    assert_eq!(memory_limit(&id), "50331648");
    assert_eq!(pids_max(&id), "40");

    // The new pids limit is enforced: the init and sh are 2 of 4, so 5 background sleeps
    // cannot all fork.
    h.run(&["update", "--pids-limit", "4", &id]).ok();
    let out = h.run(&[
        "exec",
        &id,
        "sh",
        "-c",
        "i=0; while [ $i -lt 5 ]; do sleep 5 & i=$((i+1)); done; wait; echo all-forked",
    ]);
    assert_ne!(
        out.code,
        Some(0),
        "5 forks under pids.max=4 succeeded:\n{out}"
    );
    assert!(!out.stdout.contains("all-forked"), "{out}");
    assert!(out.stderr.contains("fork"), "{out}");

    // -1: unlimited again.
    h.run(&["update", "--memory", "-1", "--pids-limit", "-1", &id])
        .ok();
    let mem = memory_limit(&id);
    assert!(
        mem == "max" || mem.parse::<u64>().is_ok_and(|v| v > 1 << 60),
        "memory limit after --memory -1: {mem}"
    );
    assert_eq!(pids_max(&id), "max");

    // A stopped container cannot be updated.
    h.run(&["kill", &id, "KILL"]).ok();
    h.wait_status(&id, "stopped");
    let out = h.run(&["update", "--pids-limit", "5", &id]);
    if testing_kvmbox() {
        out.error_line(&[&id, "stopped"]);
    } else {
        assert_ne!(out.code, Some(0), "{out}");
    }
    h.run(&["delete", &id]).ok();
    h.assert_no_leftovers(&id, &bundle);
}

#[test]
fn update_changes_cpu_limits_set_at_create() {
    let h = Harness::new();
    let cpu = json!({"cpu": {"shares": 512, "quota": 10000, "period": 100000}});
    let (id, bundle) = started_in_known_cgroup(&h, "updcpu", cpu);
    h.run(&[
        "update",
        "--cpu-quota",
        "20000",
        "--cpu-period",
        "50000",
        "--cpu-share",
        "256",
        &id,
    ])
    .ok();
    if cgroup_v2() {
        assert_eq!(cgroup_value(&id, "cpu", "", "cpu.max"), "20000 50000");
    } else {
        assert_eq!(cgroup_value(&id, "cpu", "cpu.cfs_quota_us", ""), "20000");
        assert_eq!(cgroup_value(&id, "cpu", "cpu.cfs_period_us", ""), "50000");
        assert_eq!(cgroup_value(&id, "cpu", "cpu.shares", ""), "256");
    }
    kill_and_delete(&h, &id, &bundle);
}

/// Raising memory and memory+swap together: on cgroup v1 the memory limit may never exceed
/// memory+swap, so the larger memory+swap limit has to be written first.
#[test]
fn update_raises_memory_and_swap_together() {
    let h = Harness::new();
    let mem = json!({"memory": {"limit": 32u64 << 20, "swap": 32u64 << 20}});
    let (id, bundle) = started_in_known_cgroup(&h, "updswap", mem);
    h.run(&["update", "--memory", "64m", "--memory-swap", "96m", &id])
        .ok();
    assert_eq!(memory_limit(&id), (64u64 << 20).to_string());
    let swap = if cgroup_v2() {
        cgroup_value(&id, "memory", "", "memory.swap.max")
    } else {
        cgroup_value(&id, "memory", "memory.memsw.limit_in_bytes", "")
    };
    let want = if cgroup_v2() {
        32u64 << 20
    } else {
        96u64 << 20
    };
    assert_eq!(swap, want.to_string());
    // And back down: memory first, then memory+swap.
    h.run(&["update", "--memory", "16m", "--memory-swap", "16m", &id])
        .ok();
    assert_eq!(memory_limit(&id), (16u64 << 20).to_string());
    kill_and_delete(&h, &id, &bundle);
}

#[test]
fn update_with_bad_input_is_one_clear_error_and_changes_nothing() {
    let h = Harness::new();
    let (id, bundle) = started_in_known_cgroup(&h, "updbad", json!({"pids": {"limit": 50}}));
    let ghost = h.id("ghost");
    let out = h.run(&["update", "--memory", "32m", &ghost]);
    if testing_kvmbox() {
        out.error_line(&[&ghost, "does not exist"]);
    } else {
        assert_ne!(out.code, Some(0), "{out}");
    }
    let out = h.run(&["update", "--memory", "12x", &id]);
    if testing_kvmbox() {
        out.error_line(&[&id, "--memory", "12x"]);
    } else {
        assert_ne!(out.code, Some(0), "{out}");
    }
    let out = run_with_stdin(&h, &["update", "--resources", "-", &id], "{\"pids\": ");
    if testing_kvmbox() {
        out.error_line(&[&id, "stdin"]);
    } else {
        assert_ne!(out.code, Some(0), "{out}");
    }
    if testing_kvmbox() {
        // runc accepts an update without any limit (and changes nothing).
        h.run(&["update", &id])
            .error_line(&[&id, "no resources given"]);
        // On cgroup v1 kvmbox creates the cpu hierarchy's cgroup only for CPU limits at create.
        if !cgroup_v2() {
            h.run(&["update", "--cpu-quota", "5000", &id])
                .error_line(&[&id, "cpu"]);
        }
    }
    assert_eq!(pids_max(&id), "50");
    kill_and_delete(&h, &id, &bundle);
}

// ---------------------------------------------------------------------------------------------
// Process and container settings

#[test]
fn hostname_is_set() {
    let h = Harness::new();
    let bundle = h.bundle(&["hostname"]);
    bundle.edit(|c| c["hostname"] = json!("e2e-host"));
    let out = run(&h, &bundle, "host");
    out.ok();
    assert_eq!(out.stdout.trim(), "e2e-host", "{out}");
}

#[test]
fn readonly_rootfs_refuses_writes() {
    let h = Harness::new();
    let bundle = h.bundle(&[]);
    // /dev/shm is a tmpfs mount, writable; the rootfs itself is not.
    bundle.sh("touch /dev/shm/ok && echo shm-ok && touch /newfile");
    let out = run(&h, &bundle, "ro");
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains("shm-ok"), "{out}");
    assert!(out.stderr.contains("Read-only file system"), "{out}");
    assert!(!bundle.rootfs.join("newfile").exists());

    bundle.edit(|c| c["root"]["readonly"] = json!(false));
    bundle.sh("touch /newfile && echo rw-ok");
    let out = run(&h, &bundle, "rw");
    out.ok();
    assert!(bundle.rootfs.join("newfile").exists(), "{out}");
}

#[test]
fn env_and_cwd_are_applied() {
    let h = Harness::new();
    let bundle = h.bundle(&[]);
    bundle.sh("echo \"$GREETING\"; pwd").edit(|c| {
        c["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!("GREETING=hello from env"));
        c["process"]["cwd"] = json!("/tmp");
    });
    let out = run(&h, &bundle, "env");
    out.ok();
    assert_eq!(out.stdout, "hello from env\n/tmp\n", "{out}");
}

#[test]
fn user_uid_gid_and_additional_gids() {
    let h = Harness::new();
    let bundle = h.bundle(&["id"]);
    bundle.edit(|c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [2000]});
    });
    let out = run(&h, &bundle, "user");
    out.ok();
    assert!(out.stdout.contains("uid=1000"), "{out}");
    assert!(out.stdout.contains("gid=1000"), "{out}");
    assert!(out.stdout.contains("2000"), "{out}");
}

#[test]
fn capabilities_are_dropped_to_the_spec() {
    let h = Harness::new();
    let bundle = h.bundle(&["cat", "/proc/self/status"]);
    let kept = ["CAP_KILL", "CAP_NET_BIND_SERVICE"];
    bundle.edit(|c| {
        c["process"]["capabilities"] = json!({
            "bounding": kept, "effective": kept, "permitted": kept,
            "inheritable": [], "ambient": []
        });
    });
    let out = run(&h, &bundle, "caps");
    out.ok();
    let caps = parse_cap_lines(&out.stdout);
    let want = cap_mask(&kept);
    assert_eq!(want, 0x420);
    assert_eq!(caps.get("CapEff"), Some(&want), "{out}");
    assert_eq!(caps.get("CapPrm"), Some(&want), "{out}");
    assert_eq!(caps.get("CapBnd"), Some(&want), "{out}");
    assert_eq!(caps.get("CapInh"), Some(&0), "{out}");
    assert_eq!(caps.get("CapAmb"), Some(&0), "{out}");
}

#[test]
fn container_process_inherits_only_stdio() {
    let h = Harness::new();
    // `ls` itself holds fd 3 (the directory it reads); anything else leaked from the runtime.
    let bundle = h.bundle(&["ls", "/proc/self/fd"]);
    let out = run(&h, &bundle, "fds");
    out.ok();
    assert_eq!(out.stdout, "0\n1\n2\n3\n", "{out}");
}

#[test]
fn concurrent_creates_of_one_id_yield_one_container() {
    let h = Harness::new();
    let bundle = h.bundle(&["sleep", "300"]);
    let id = h.id("race");
    let outcomes: Vec<common::Outcome> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..6)
            .map(|_| s.spawn(|| h.run(&["create", "--bundle", bundle.dir.to_str().unwrap(), &id])))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let winners = outcomes.iter().filter(|o| o.code == Some(0)).count();
    assert_eq!(winners, 1, "{outcomes:#?}");
    for o in outcomes.iter().filter(|o| o.code != Some(0)) {
        if testing_kvmbox() {
            o.error_line(&[&id]);
        } else {
            assert_ne!(o.code, Some(0), "{o}");
        }
    }
    let st = h.state(&id);
    assert_eq!(st["status"], "created", "{st}");
    let pid = st["pid"].as_i64().unwrap() as i32;
    h.run(&["delete", "--force", &id]).ok();
    h.assert_no_leftovers(&id, &bundle);
    assert!(common::is_zombie_or_gone(pid));
}

// ---------------------------------------------------------------------------------------------
// Hooks

#[test]
fn hooks_get_the_state_on_stdin() {
    let h = Harness::new();
    let bundle = h.bundle(&["sleep", "300"]);
    let out_dir = h.dir().join("hooks");
    fs::create_dir(&out_dir).unwrap();
    let hook = |kind: &str| {
        let file = out_dir.join(format!("{kind}.json"));
        json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", file.display())]})
    };
    bundle.edit(|c| {
        c["hooks"] = json!({
            "createRuntime": [hook("createRuntime")],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")],
        });
    });
    let id = h.id("hooks");
    h.run(&["create", "--bundle", bundle.dir.to_str().unwrap(), &id])
        .ok();
    let pid = h.state(&id)["pid"].as_i64().unwrap();
    h.run(&["start", &id]).ok();
    h.run(&["kill", &id, "KILL"]).ok();
    h.wait_status(&id, "stopped");
    h.run(&["delete", &id]).ok();
    h.assert_no_leftovers(&id, &bundle);

    let read = |kind: &str| -> Value {
        let path = out_dir.join(format!("{kind}.json"));
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{kind} hook: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{kind} stdin {text:?}: {e}"))
    };
    let create_runtime = read("createRuntime");
    assert_eq!(create_runtime["id"], id.as_str(), "{create_runtime}");
    assert_eq!(create_runtime["status"], "creating", "{create_runtime}");
    assert_eq!(
        create_runtime["pid"].as_i64(),
        Some(pid),
        "{create_runtime}"
    );
    assert_eq!(create_runtime["bundle"], bundle.dir.to_str().unwrap());
    let poststart = read("poststart");
    assert_eq!(poststart["id"], id.as_str(), "{poststart}");
    // The process has been executed when poststart runs (runc 1.1 still reports "created").
    let want = if testing_kvmbox() {
        "running"
    } else {
        "created"
    };
    assert_eq!(poststart["status"], want, "{poststart}");
    assert_eq!(poststart["pid"].as_i64(), Some(pid), "{poststart}");
    let poststop = read("poststop");
    assert_eq!(poststop["id"], id.as_str(), "{poststop}");
    assert_eq!(poststop["status"], "stopped", "{poststop}");
}

#[test]
fn failing_create_runtime_hook_fails_create_and_leaves_nothing() {
    let h = Harness::new();
    let bundle = h.bundle(&["sleep", "300"]);
    bundle.edit(|c| {
        c["hooks"] =
            json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]});
    });
    let id = h.id("badhook");
    let out = h.run(&["create", "--bundle", bundle.dir.to_str().unwrap(), &id]);
    assert_ne!(out.code, Some(0), "{out}");
    if testing_kvmbox() {
        out.error_line(&["createRuntime"]);
    }
    h.assert_no_leftovers(&id, &bundle);
}

// ---------------------------------------------------------------------------------------------
// Console socket

#[test]
fn console_socket_receives_the_pty_master() {
    let h = Harness::new();
    let bundle = h.bundle(&[]);
    bundle
        .sh("tty; echo hello-from-tty")
        .edit(|c| c["process"]["terminal"] = json!(true));
    let socket = h.dir().join("console.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let receiver = std::thread::spawn(move || receive_fd(&listener));

    let id = h.id("tty");
    h.run(&[
        "create",
        "--console-socket",
        socket.to_str().unwrap(),
        "--bundle",
        bundle.dir.to_str().unwrap(),
        &id,
    ])
    .ok();
    let master = receiver.join().expect("console socket thread");
    h.run(&["start", &id]).ok();
    let text = read_pty(
        &mut fs::File::from(master),
        &["hello-from-tty"],
        Duration::from_secs(10),
    );
    assert!(text.contains("/dev/pts/"), "tty output: {text:?}");
    assert!(text.contains("hello-from-tty"), "tty output: {text:?}");
    h.wait_status(&id, "stopped");
    h.run(&["delete", &id]).ok();
    h.assert_no_leftovers(&id, &bundle);
}

// ---------------------------------------------------------------------------------------------
// exec, list, ps

#[test]
fn exec_runs_in_the_container_with_output_and_exit_code() {
    let h = Harness::new();
    let bundle = h.bundle(&["sleep", "300"]);
    bundle.edit(|c| c["hostname"] = json!("exec-host"));
    let id = started(&h, &bundle, "exec");
    let out = h.run(&[
        "exec",
        &id,
        "sh",
        "-c",
        "hostname; echo exec-err >&2; exit 3",
    ]);
    out.code(3);
    assert_eq!(out.stdout, "exec-host\n", "{out}");
    assert!(out.stderr.contains("exec-err"), "{out}");

    let process = h.dir().join("process.json");
    let mut p = bundle.config()["process"].clone();
    p["args"] = json!(["sh", "-c", "echo from-process-json $FOO"]);
    p["env"].as_array_mut().unwrap().push(json!("FOO=bar"));
    fs::write(&process, p.to_string()).unwrap();
    let out = h.run(&["exec", "--process", process.to_str().unwrap(), &id]);
    out.ok();
    assert_eq!(out.stdout, "from-process-json bar\n", "{out}");

    kill_and_delete(&h, &id, &bundle);
}

#[test]
fn list_and_ps_show_the_container() {
    let h = Harness::new();
    let bundle = h.bundle(&["sleep", "300"]);
    let id = started(&h, &bundle, "list");
    let pid = h.state(&id)["pid"].as_i64().unwrap();

    let out = h.run(&["list"]);
    out.ok();
    let header = out.stdout.lines().next().unwrap_or("");
    assert!(header.contains("ID") && header.contains("STATUS"), "{out}");
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not in list:\n{out}"));
    assert!(
        row.contains("running") && row.contains(&pid.to_string()),
        "{row}"
    );

    let out = h.run(&["list", "--quiet"]);
    out.ok();
    assert_eq!(out.stdout.trim(), id, "{out}");

    let out = h.run(&["list", "--format", "json"]);
    out.ok();
    assert!(listed_ids(&out.stdout).contains(&id), "{out}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let entry = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id.as_str())
        .unwrap();
    assert_eq!(entry["status"], "running", "{entry}");
    assert_eq!(entry["pid"].as_i64(), Some(pid), "{entry}");

    let out = h.run(&["ps", &id]);
    out.ok();
    assert!(
        out.stdout.lines().next().unwrap_or("").contains("PID"),
        "{out}"
    );
    assert!(out.stdout.contains("sleep"), "{out}");

    let out = h.run(&["ps", "--format", "json", &id]);
    out.ok();
    let pids: Vec<i64> = serde_json::from_str(&out.stdout).expect("ps json is a list of pids");
    assert!(pids.contains(&pid), "{out}");

    kill_and_delete(&h, &id, &bundle);
    let out = h.run(&["list", "--format", "json"]);
    out.ok();
    assert!(!listed_ids(&out.stdout).contains(&id), "{out}");
}

// ---------------------------------------------------------------------------------------------
// spec and features

#[test]
fn spec_writes_a_loadable_default_config() {
    let h = Harness::new();
    let dir = h.dir().join("spec");
    fs::create_dir(&dir).unwrap();
    h.run(&["spec", "--bundle", dir.to_str().unwrap()]).ok();
    let spec = oci_spec::runtime::Spec::load(dir.join("config.json")).expect("spec is valid OCI");
    assert_eq!(
        spec.root().as_ref().unwrap().path().to_str(),
        Some("rootfs")
    );
    assert!(spec.process().as_ref().unwrap().args().is_some());
}

#[test]
fn features_prints_json() {
    let h = Harness::new();
    let out = h.run(&["features"]);
    out.ok();
    let v: Value = serde_json::from_str(&out.stdout).expect("features is JSON");
    assert!(v["ociVersionMin"].is_string(), "{v}");
    assert!(v["ociVersionMax"].is_string(), "{v}");
}

// ---------------------------------------------------------------------------------------------
// Errors: exit code 1, one line naming the problem, nothing left behind

#[test]
fn invalid_ids_are_rejected() {
    let h = Harness::new();
    let bundle = h.bundle(&["true"]);
    let long = "x".repeat(1025);
    for (id, needle) in [
        ("", "container id"),
        ("..", ".."),
        ("a/b", "a/b"),
        (long.as_str(), "container id"),
    ] {
        let out = h.run(&["create", "--bundle", bundle.dir.to_str().unwrap(), id]);
        if testing_kvmbox() {
            out.error_line(&[needle]);
        } else {
            assert_ne!(out.code, Some(0), "{out}");
        }
        h.assert_no_leftovers(id, &bundle);
        let entries: Vec<_> = fs::read_dir(h.root())
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(entries.is_empty(), "id {id:?} left {entries:?} in --root");
    }
}

#[test]
fn missing_bundle_is_an_error() {
    let h = Harness::new();
    let bundle = h.bundle(&["true"]);
    let missing = h.dir().join("no-such-bundle");
    let id = h.id("nobundle");
    let out = h.run(&["create", "--bundle", missing.to_str().unwrap(), &id]);
    out.error_line(&[missing.to_str().unwrap()]);
    h.assert_no_leftovers(&id, &bundle);
}

#[test]
fn missing_config_json_is_an_error() {
    let h = Harness::new();
    let bundle = h.bundle(&["true"]);
    fs::remove_file(bundle.config_path()).unwrap();
    let id = h.id("noconfig");
    let out = h.run(&["create", "--bundle", bundle.dir.to_str().unwrap(), &id]);
    out.error_line(&["config.json"]);
    h.assert_no_leftovers(&id, &bundle);
}

#[test]
fn bad_json_names_file_line_and_column() {
    let h = Harness::new();
    let bundle = h.bundle(&["true"]);
    fs::write(
        bundle.config_path(),
        "{\n  \"ociVersion\": \"1.0.2\",\n  \"process\": {,\n}\n",
    )
    .unwrap();
    let id = h.id("badjson");
    let out = h.run(&["create", "--bundle", bundle.dir.to_str().unwrap(), &id]);
    if testing_kvmbox() {
        out.error_line(&[bundle.config_path().to_str().unwrap(), "line 3", "column"]);
    } else {
        assert_ne!(out.code, Some(0), "{out}");
    }
    h.assert_no_leftovers(&id, &bundle);
}

#[test]
fn unknown_field_value_is_an_error() {
    let h = Harness::new();
    let bundle = h.bundle(&["true"]);
    bundle.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "bogusns"}));
    });
    let id = h.id("badvalue");
    let out = h.run(&["create", "--bundle", bundle.dir.to_str().unwrap(), &id]);
    if testing_kvmbox() {
        out.error_line(&["bogusns", "config.json"]);
    } else {
        assert_ne!(out.code, Some(0), "{out}");
    }
    h.assert_no_leftovers(&id, &bundle);
}

#[test]
fn duplicate_id_is_an_error_and_keeps_the_first_container() {
    let h = Harness::new();
    let bundle = h.bundle(&["sleep", "300"]);
    let other = h.bundle(&["true"]);
    let id = h.id("dup");
    h.run(&["create", "--bundle", bundle.dir.to_str().unwrap(), &id])
        .ok();
    let before = h.state(&id);
    let out = h.run(&["create", "--bundle", other.dir.to_str().unwrap(), &id]);
    if testing_kvmbox() {
        out.error_line(&[&id]);
    } else {
        assert_ne!(out.code, Some(0), "{out}");
    }
    let after = h.state(&id);
    assert_eq!(after["status"], "created", "{after}");
    assert_eq!(after["pid"], before["pid"], "{after}");
    assert_eq!(after["bundle"], bundle.dir.to_str().unwrap(), "{after}");
    h.run(&["delete", "--force", &id]).ok();
    h.assert_no_leftovers(&id, &bundle);
    h.assert_no_leftovers(&id, &other);
}

#[test]
fn unknown_id_is_an_error_for_every_command() {
    let h = Harness::new();
    let bundle = h.bundle(&["true"]);
    let id = h.id("ghost");
    for args in [
        vec!["state", id.as_str()],
        vec!["start", id.as_str()],
        vec!["kill", id.as_str(), "KILL"],
        vec!["delete", id.as_str()],
        vec!["exec", id.as_str(), "true"],
        vec!["ps", id.as_str()],
        vec!["update", "--pids-limit", "5", id.as_str()],
    ] {
        let out = h.run(&args);
        if testing_kvmbox() {
            out.error_line(&[&id]);
        } else {
            assert_ne!(out.code, Some(0), "{out}");
        }
    }
    h.assert_no_leftovers(&id, &bundle);
}

#[test]
fn kill_of_a_stopped_container_is_an_error() {
    let h = Harness::new();
    let bundle = h.bundle(&["true"]);
    let id = started(&h, &bundle, "killstopped");
    h.wait_status(&id, "stopped");
    let out = h.run(&["kill", &id, "KILL"]);
    if testing_kvmbox() {
        out.error_line(&[&id]);
    } else {
        assert_ne!(out.code, Some(0), "{out}");
    }
    assert_eq!(h.state(&id)["status"], "stopped");
    h.run(&["delete", &id]).ok();
    h.assert_no_leftovers(&id, &bundle);
}

#[test]
fn delete_of_a_running_container_needs_force() {
    let h = Harness::new();
    let bundle = h.bundle(&["sleep", "300"]);
    let id = started(&h, &bundle, "delrunning");
    let out = h.run(&["delete", &id]);
    if testing_kvmbox() {
        out.error_line(&[&id]);
    } else {
        assert_ne!(out.code, Some(0), "{out}");
    }
    assert_eq!(h.state(&id)["status"], "running");
    h.run(&["delete", "--force", &id]).ok();
    h.assert_no_leftovers(&id, &bundle);
}

#[test]
fn start_twice_is_an_error() {
    let h = Harness::new();
    let bundle = h.bundle(&["sleep", "300"]);
    let id = started(&h, &bundle, "start2");
    let out = h.run(&["start", &id]);
    if testing_kvmbox() {
        out.error_line(&[&id]);
    } else {
        assert_ne!(out.code, Some(0), "{out}");
    }
    kill_and_delete(&h, &id, &bundle);
}

#[test]
fn failing_process_exec_leaves_nothing() {
    let h = Harness::new();
    let bundle = h.bundle(&["/no/such/binary"]);
    let id = h.id("noexec");
    let out = h.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), &id]);
    assert_ne!(out.code, Some(0), "{out}");
    if testing_kvmbox() {
        out.error_line(&["/no/such/binary"]);
    }
    let _ = h.run(&["delete", "--force", &id]);
    h.assert_no_leftovers(&id, &bundle);
}

// ---------------------------------------------------------------------------------------------
// Logging

#[test]
fn log_format_json_writes_one_object_per_line() {
    let h = Harness::new();
    let bundle = h.bundle(&["true"]);
    let log = h.dir().join("kvmbox.log");
    let missing = h.dir().join("missing-bundle");
    let id = h.id("jsonlog");
    let out = h.run_with_globals(
        &["--log", log.to_str().unwrap(), "--log-format", "json"],
        &["create", "--bundle", missing.to_str().unwrap(), &id],
    );
    assert_eq!(out.code, Some(1), "{out}");
    let text = fs::read_to_string(&log).expect("--log file written");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "empty log file");
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("log line {line:?}: {e}"));
        assert!(v.is_object(), "log line {line:?} is not an object");
    }
    assert!(
        text.contains(missing.to_str().unwrap()),
        "the error is not in the log: {text}"
    );

    // A successful run with --debug also logs only JSON lines.
    let log2 = h.dir().join("debug.log");
    let id2 = h.id("jsonlog-ok");
    h.run_with_globals(
        &[
            "--debug",
            "--log",
            log2.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        &["run", "--bundle", bundle.dir.to_str().unwrap(), &id2],
    )
    .ok();
    let text = fs::read_to_string(&log2).unwrap_or_default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("log line {line:?}: {e}"));
    }
    h.assert_no_leftovers(&id, &bundle);
    h.assert_no_leftovers(&id2, &bundle);
}
