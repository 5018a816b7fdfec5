//! Dispatch of parsed CLI commands onto the runtime library. Errors become one line on stderr
//! (and the log) and exit code 1.

mod tty;
mod update;
mod wait;

use std::collections::HashSet;
use std::io::{ErrorKind, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{Capability, Process};

use crate::cli::{
    Cli, Command, CreateArgs, ExecArgs, ListArgs, ListFormat, PsArgs, RunArgs, SpecArgs,
};
use crate::logging::{self, LogTarget};
use crate::runtime::console::ConsoleListener;
use crate::runtime::vm::foreground::Foreground;
use crate::runtime::vm::lifecycle::{exec as vm_exec, init_ref, target_of};
use crate::runtime::vm::VmSettings;
use crate::runtime::{
    bundle, features, parse_signal, spec, Bundle, CreateOptions, ExecOptions, Isolation, Runtime,
    RuntimeError, Status,
};
use crate::vm_launch::config_file::configured_isolation;

use tty::TtyProxy;
use wait::{become_subreaper, wait_forwarding, BlockedSignals};

/// How long to wait for the container to send its pty master on a private console socket.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the last pty output after the process exited.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// Run the parsed command line; returns the process exit code.
pub fn main(cli: Cli) -> i32 {
    let target = logging::init(cli.log.as_deref(), cli.log_format, cli.debug);
    match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            let msg = one_line(&format!("{e:#}"));
            eprintln!("kvmbox: error: {msg}");
            if target == LogTarget::File {
                tracing::error!("{msg}");
            }
            1
        }
    }
}

/// Fold a possibly multi-line message (e.g. a hook's stderr) into one line.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The isolation of containers this command creates: `--isolation` / `$KVMBOX_ISOLATION`,
/// else the config file's, else vm. Only `create` and `run` create; other commands use the
/// isolation each container records, and do not read the config file.
fn isolation_for_new(cli: &Cli) -> Result<Isolation> {
    if let Some(isolation) = cli.isolation {
        return Ok(isolation);
    }
    if !matches!(cli.command, Command::Create(_) | Command::Run(_)) {
        return Ok(Isolation::Vm);
    }
    Ok(configured_isolation()?.unwrap_or(Isolation::Vm))
}

fn dispatch(cli: &Cli) -> Result<i32> {
    let rt = Runtime::new(&cli.root, isolation_for_new(cli)?).with_vm_settings(vm_settings(cli));
    match &cli.command {
        Command::Create(args) => create(&rt, args).map(|_| 0),
        Command::Start(args) => rt.start(&args.id).map(|()| 0).map_err(Into::into),
        Command::State(args) => {
            let info = rt.state(&args.id)?;
            print_stdout(&serde_json::to_string_pretty(&info.state_output())?)?;
            Ok(0)
        }
        Command::Kill(args) => {
            let signal = parse_signal(&args.signal)?;
            rt.kill(&args.id, signal, args.all)?;
            Ok(0)
        }
        Command::Delete(args) => match rt.delete(&args.id, args.force) {
            Ok(()) => Ok(0),
            // Like runc: `delete --force` only makes sure the container is gone.
            Err(RuntimeError::NotFound(_)) if args.force => Ok(0),
            Err(e) => Err(e.into()),
        },
        Command::Run(args) => run(&rt, args),
        Command::Exec(args) => exec(&rt, args),
        Command::Ps(args) => ps(&rt, args).map(|()| 0),
        Command::List(args) => list(&rt, args).map(|()| 0),
        Command::Update(args) => update::update(&rt, args).map(|()| 0),
        Command::Spec(args) => {
            let rootless = matches!(cli.rootless.as_deref(), Some("true" | "1" | ""));
            write_spec(args, rootless).map(|()| 0)
        }
        Command::Features => {
            print_stdout(&features::features_json())?;
            Ok(0)
        }
        Command::Bench(args) => crate::bench::run(cli, args).map(|()| 0),
        Command::Vm(crate::cli::VmCommand::Boot(args)) => crate::vmm::boot_command(args),
    }
}

/// The `--isolation vm` settings of the command line.
fn vm_settings(cli: &Cli) -> VmSettings {
    let kernel = match &cli.command {
        Command::Create(args) => args.kernel.clone(),
        Command::Run(args) => args.create.kernel.clone(),
        _ => None,
    };
    VmSettings {
        kernel,
        agent_timeout: cli.agent_timeout.map(Duration::from_secs),
    }
}

fn create_options<'a>(args: &'a CreateArgs, console: Option<&'a Path>) -> CreateOptions<'a> {
    CreateOptions {
        bundle: &args.bundle,
        pid_file: args.pid_file.as_deref(),
        console_socket: console,
        no_pivot: args.no_pivot,
        preserve_fds: args.preserve_fds,
    }
}

fn create(rt: &Runtime, args: &CreateArgs) -> Result<()> {
    rt.create(
        &args.id,
        &create_options(args, args.console_socket.as_deref()),
    )?;
    Ok(())
}

/// True if the bundle asks for a terminal (false if it cannot be read: create reports that).
fn wants_terminal(rt_isolation: Isolation, bundle: &Path) -> bool {
    rt_isolation == Isolation::Namespace
        && Bundle::load(bundle)
            .ok()
            .and_then(|b| b.spec.process().as_ref().and_then(|p| p.terminal()))
            .unwrap_or(false)
}

fn run(rt: &Runtime, args: &RunArgs) -> Result<i32> {
    if rt.isolation() == Isolation::Vm && !args.detach {
        return run_vm_foreground(rt, args);
    }
    let c = &args.create;
    let private_console = if !args.detach
        && c.console_socket.is_none()
        && wants_terminal(rt.isolation(), &c.bundle)
    {
        Some(ConsoleListener::bind_private()?)
    } else {
        None
    };
    let console = c
        .console_socket
        .as_deref()
        .or(private_console.as_ref().map(|l| l.path()));
    if !args.detach {
        become_subreaper();
    }
    let record = rt.create(&c.id, &create_options(c, console))?;
    if args.detach {
        if let Err(e) = rt.start(&c.id) {
            cleanup(rt, &c.id, record.pid);
            return Err(e.into());
        }
        return Ok(0);
    }
    let signals = BlockedSignals::block();
    let master = match private_console
        .as_ref()
        .map(|l| l.receive_master(CONSOLE_TIMEOUT))
    {
        Some(Err(e)) => {
            cleanup(rt, &c.id, record.pid);
            return Err(e.into());
        }
        Some(Ok(fd)) => Some(fd),
        None => None,
    };
    drop(private_console);
    // Proxy (and size the pty) before the process starts, so it sees the right window size.
    let proxy = master.map(TtyProxy::start);
    if let Err(e) = rt.start(&c.id) {
        drop(proxy);
        cleanup(rt, &c.id, record.pid);
        return Err(e.into());
    }
    let code = wait_forwarding(record.pid, &signals, proxy.as_ref());
    if let Some(proxy) = proxy {
        proxy.finish(OUTPUT_GRACE);
    }
    drop(signals);
    if !args.keep {
        rt.delete(&c.id, true)
            .with_context(|| format!("container {} exited with {code}", c.id))?;
    }
    Ok(code)
}

/// `run` of a microVM container in the foreground: create (the init's streams stay with us),
/// relay our stdio, start, wait for the exit status, delete unless --keep.
fn run_vm_foreground(rt: &Runtime, args: &RunArgs) -> Result<i32> {
    let c = &args.create;
    crate::runtime::vm::foreground::block_forwarded();
    let created =
        rt.create_vm_foreground(&c.id, &create_options(c, c.console_socket.as_deref()))?;
    let record = created.record;
    let outcome = (|| -> Result<i32> {
        if let Some(sig) = crate::runtime::vm::foreground::pending_termination() {
            // Interrupted during the boot: do not start it.
            tracing::warn!(
                "container {}: signal {sig} during create; not starting it",
                c.id
            );
            return Ok(128 + sig);
        }
        let target = target_of(&record)?;
        let Some(streams) = created.streams else {
            // A --console-socket pty: a forked relay holds it; we only wait.
            rt.start(&c.id)?;
            return Ok(wait_vm_process(&target, &c.id)?);
        };
        let fg = Foreground::begin(&c.id, &target, &init_ref(&c.id), streams)?;
        rt.start(&c.id)?;
        Ok(fg.wait()?)
    })();
    match outcome {
        Ok(code) => {
            if !args.keep {
                rt.delete(&c.id, true)
                    .with_context(|| format!("container {} exited with {code}", c.id))?;
            }
            Ok(code)
        }
        Err(e) => {
            if let Err(d) = rt.delete(&c.id, true) {
                tracing::warn!("cleanup of {}: {d}", c.id);
            }
            Err(e)
        }
    }
}

/// Wait for a guest process whose stdio a forked relay holds.
fn wait_vm_process(
    target: &crate::runtime::vm::AgentTarget,
    id: &str,
) -> crate::runtime::error::Result<i32> {
    let none = crate::runtime::vm::stdio::ProcessStreams::none();
    Foreground::begin(id, target, &init_ref(id), none)?.wait()
}

/// Remove a container whose run failed half-way, and reap its init.
fn cleanup(rt: &Runtime, id: &str, pid: i32) {
    if let Err(e) = rt.delete(id, true) {
        tracing::warn!("cleanup of {id}: {e}");
    }
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
}

/// Build the process for `exec` from -p or the command line plus the override flags (like
/// runc: a command line starts from the container's own process settings).
fn exec_process(rt: &Runtime, args: &ExecArgs) -> Result<Process> {
    let mut process = match &args.process {
        Some(path) => bundle::load_process(path)?,
        None => {
            if args.command.is_empty() {
                bail!("exec: no command given (use `kvmbox exec ID -- CMD...` or -p process.json)");
            }
            // The stored spec is enough (no status query: in VM mode that is a guest round trip).
            let record = rt.store().read(&args.id)?;
            let mut p = record.spec.process().clone().unwrap_or_default();
            p.set_args(Some(args.command.clone()));
            p.set_terminal(Some(false));
            p.set_console_size(None);
            p
        }
    };
    apply_exec_flags(&mut process, args)?;
    Ok(process)
}

/// Apply exec's --tty/--cwd/--env/--user/--additional-gids/--cap/--no-new-privs to `process`.
fn apply_exec_flags(process: &mut Process, args: &ExecArgs) -> Result<()> {
    if args.tty {
        process.set_terminal(Some(true));
    }
    if let Some(cwd) = &args.cwd {
        process.set_cwd(cwd.into());
    }
    if !args.env.is_empty() {
        let mut env = process.env().clone().unwrap_or_default();
        for kv in &args.env {
            let key = kv.split('=').next().unwrap_or(kv);
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        process.set_env(Some(env));
    }
    if let Some(user) = &args.user {
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user.as_str(), None),
        };
        let mut u = process.user().clone();
        u.set_uid(
            uid.parse()
                .with_context(|| format!("--user {user:?}: uid must be a number"))?,
        );
        if let Some(g) = gid {
            u.set_gid(
                g.parse()
                    .with_context(|| format!("--user {user:?}: gid must be a number"))?,
            );
        }
        process.set_user(u);
    }
    if !args.additional_gids.is_empty() {
        let mut u = process.user().clone();
        u.set_additional_gids(Some(args.additional_gids.clone()));
        process.set_user(u);
    }
    if !args.cap.is_empty() {
        let mut caps = process.capabilities().clone().unwrap_or_default();
        for name in &args.cap {
            let upper = name.to_ascii_uppercase();
            let full = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            let cap: Capability = serde_json::from_value(serde_json::Value::String(full))
                .map_err(|_| anyhow::anyhow!("--cap {name:?}: unknown capability"))?;
            let add = |set: &Option<HashSet<Capability>>| {
                let mut set = set.clone().unwrap_or_default();
                set.insert(cap);
                Some(set)
            };
            caps.set_bounding(add(caps.bounding()));
            caps.set_effective(add(caps.effective()));
            caps.set_permitted(add(caps.permitted()));
            caps.set_ambient(add(caps.ambient()));
            caps.set_inheritable(add(caps.inheritable()));
        }
        process.set_capabilities(Some(caps));
    }
    if args.no_new_privs {
        process.set_no_new_privileges(Some(true));
    }
    Ok(())
}

fn exec(rt: &Runtime, args: &ExecArgs) -> Result<i32> {
    let mut process = exec_process(rt, args)?;
    if rt.store().read(&args.id)?.isolation == Isolation::Vm && !args.detach {
        return exec_vm_foreground(rt, args, &mut process);
    }
    let terminal = process.terminal().unwrap_or(false);
    let private_console = if terminal && args.console_socket.is_none() && !args.detach {
        if let Some(size) = tty::terminal_size() {
            process.set_console_size(Some(size));
        }
        Some(ConsoleListener::bind_private()?)
    } else {
        None
    };
    let console = args
        .console_socket
        .as_deref()
        .or(private_console.as_ref().map(|l| l.path()));
    if !args.detach {
        become_subreaper();
    }
    let opts = ExecOptions {
        process: &process,
        console_socket: console,
        pid_file: args.pid_file.as_deref(),
        preserve_fds: args.preserve_fds,
    };
    let pid = rt.exec(&args.id, &opts)?;
    if args.detach {
        return Ok(0);
    }
    let signals = BlockedSignals::block();
    let master = match private_console
        .as_ref()
        .map(|l| l.receive_master(CONSOLE_TIMEOUT))
    {
        Some(Err(e)) => {
            let _ = crate::runtime::lifecycle::send_signal(pid, libc::SIGKILL);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            return Err(e.into());
        }
        Some(Ok(fd)) => Some(fd),
        None => None,
    };
    drop(private_console);
    let proxy = master.map(TtyProxy::start);
    let code = wait_forwarding(pid, &signals, proxy.as_ref());
    if let Some(proxy) = proxy {
        proxy.finish(OUTPUT_GRACE);
    }
    Ok(code)
}

/// `exec` into a microVM container in the foreground: relay our stdio (raw mode and window
/// size for a TTY) and exit with the process's status.
fn exec_vm_foreground(rt: &Runtime, args: &ExecArgs, process: &mut Process) -> Result<i32> {
    if args.preserve_fds > 0 {
        bail!(
            "container {}: --preserve-fds is not supported with --isolation vm",
            args.id
        );
    }
    if process.terminal().unwrap_or(false) && args.console_socket.is_none() {
        if let Some(size) = tty::terminal_size() {
            process.set_console_size(Some(size));
        }
    }
    let record = rt.store().read(&args.id)?;
    let execed = vm_exec(&record, process, args.console_socket.as_deref(), false)?;
    if let Some(pid_file) = &args.pid_file {
        crate::runtime::lifecycle::write_pid_file(pid_file, execed.guest_pid)?;
    }
    // Without streams (a --console-socket pty), a forked relay holds the stdio: only wait.
    let streams = execed
        .streams
        .unwrap_or_else(crate::runtime::vm::stdio::ProcessStreams::none);
    let fg = Foreground::begin(&args.id, &execed.target, &execed.process, streams)?;
    Ok(fg.wait_on(Some(execed.client))?)
}

fn ps(rt: &Runtime, args: &PsArgs) -> Result<()> {
    let pids = rt.ps(&args.id)?;
    if args.format == ListFormat::Json {
        print_stdout(&serde_json::to_string(&pids)?)?;
        return Ok(());
    }
    if rt.store().read(&args.id)?.isolation == Isolation::Vm {
        // Guest pids: the host's ps(1) cannot see them.
        let mut lines = vec!["PID".to_string()];
        lines.extend(pids.iter().map(|p| p.to_string()));
        return print_stdout(&lines.join("\n"));
    }
    let ps_args: Vec<String> = if args.ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        args.ps_args.clone()
    };
    let output = std::process::Command::new("ps")
        .args(&ps_args)
        .output()
        .context("running ps")?;
    if !output.status.success() {
        bail!(
            "ps {}: {}",
            ps_args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    print_stdout(&filter_ps(&text, &pids)?.join("\n"))
}

/// Keep the header and the rows of `ps` output whose PID column is one of `pids`.
fn filter_ps<'a>(text: &'a str, pids: &[i32]) -> Result<Vec<&'a str>> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let column = header
        .split_whitespace()
        .position(|c| c == "PID")
        .context("ps output has no PID column")?;
    let wanted: HashSet<i32> = pids.iter().copied().collect();
    let mut out = vec![header];
    out.extend(lines.filter(|line| {
        line.split_whitespace()
            .nth(column)
            .and_then(|p| p.parse().ok())
            .is_some_and(|p| wanted.contains(&p))
    }));
    Ok(out)
}

fn list(rt: &Runtime, args: &ListArgs) -> Result<()> {
    let containers = rt.list()?;
    if args.quiet {
        let ids: Vec<&str> = containers.iter().map(|c| c.record.id.as_str()).collect();
        return if ids.is_empty() {
            Ok(())
        } else {
            print_stdout(&ids.join("\n"))
        };
    }
    if args.format == ListFormat::Json {
        let states: Vec<_> = containers.iter().map(|c| c.state_output()).collect();
        return print_stdout(&serde_json::to_string(&states)?);
    }
    let mut rows = vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from)];
    for c in &containers {
        let s = c.state_output();
        rows.push([
            s.id,
            s.pid.to_string(),
            status_name(s.status).to_string(),
            s.bundle.display().to_string(),
            s.created,
            s.owner,
        ]);
    }
    print_stdout(&table(&rows).join("\n"))
}

/// Print `text` and a newline on stdout; a closed pipe (`| head`) is not an error.
fn print_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out
        .write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

/// Left-aligned columns separated by at least 3 spaces, at least 12 wide (like runc's list).
fn table(rows: &[[String; 6]]) -> Vec<String> {
    let mut widths = [0usize; 6];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    // runc's tabwriter: cells padded by 3, columns at least 12 wide.
                    let width = (widths[i] + 3).max(12);
                    line.push_str(&format!("{cell:<width$}"));
                }
            }
            line
        })
        .collect()
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Creating => "creating",
        Status::Created => "created",
        Status::Running => "running",
        Status::Stopped => "stopped",
    }
}

fn write_spec(args: &SpecArgs, rootless: bool) -> Result<()> {
    let path = args.bundle.join(bundle::CONFIG_FILE);
    let mut value = serde_json::to_value(spec::default_spec(rootless))?;
    // Capability sets are hash sets: sort them for a stable file.
    if let Some(caps) = value
        .pointer_mut("/process/capabilities")
        .and_then(|c| c.as_object_mut())
    {
        for set in caps.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    let json = serde_json::to_string_pretty(&value)?;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            bail!("{} already exists; remove it first", path.display())
        }
        Err(e) => bail!("cannot create {}: {e}", path.display()),
    };
    file.write_all(json.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    fn exec_args(flags: &[&str]) -> ExecArgs {
        use clap::Parser;
        let mut argv = vec!["kvmbox", "exec"];
        argv.extend_from_slice(flags);
        argv.extend_from_slice(&["c1", "--", "sh"]);
        match Cli::parse_from(argv).command {
            Command::Exec(args) => args,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn exec_flags_override_the_process() {
        let mut p = Process::default();
        let args = exec_args(&[
            "-t",
            "--cwd",
            "/tmp",
            "-e",
            "TERM=dumb",
            "-e",
            "NEW=1",
            "-u",
            "1000:1001",
            "-g",
            "7",
            "--cap",
            "sys_admin",
            "--no-new-privs",
        ]);
        assert_eq!(args.command, ["sh"]);
        apply_exec_flags(&mut p, &args).unwrap();
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(p.cwd(), Path::new("/tmp"));
        let env = p.env().clone().unwrap();
        assert!(env.contains(&"TERM=dumb".to_string()));
        assert!(!env.contains(&"TERM=xterm".to_string()));
        assert!(env.contains(&"NEW=1".to_string()));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1001));
        assert_eq!(p.user().additional_gids(), &Some(vec![7]));
        let caps = p.capabilities().clone().unwrap();
        for set in [
            caps.bounding(),
            caps.effective(),
            caps.permitted(),
            caps.ambient(),
        ] {
            assert!(set.as_ref().unwrap().contains(&Capability::SysAdmin));
        }
        assert_eq!(p.no_new_privileges(), Some(true));
    }

    #[test]
    fn exec_flags_reject_bad_values() {
        let mut p = Process::default();
        let err = apply_exec_flags(&mut p, &exec_args(&["-u", "root"])).unwrap_err();
        assert!(err.to_string().contains("uid must be a number"), "{err}");
        let err = apply_exec_flags(&mut p, &exec_args(&["--cap", "CAP_NOPE"])).unwrap_err();
        assert_eq!(err.to_string(), "--cap \"CAP_NOPE\": unknown capability");
    }

    #[test]
    fn errors_are_one_line() {
        assert_eq!(
            one_line("hook failed: out\n  more\n\n"),
            "hook failed: out; more"
        );
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn ps_filter_keeps_header_and_container_rows() {
        let text = "UID   PID  PPID  C STIME TTY TIME CMD\n\
                    root    1     0  0 10:00 ?   0:01 /sbin/init\n\
                    root  100     1  0 10:00 ?   0:00 sh\n\
                    root  101   100  0 10:00 ?   0:00 sleep 10\n";
        let rows = filter_ps(text, &[100, 101]).unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows[0].starts_with("UID"));
        assert!(rows[1].contains(" sh"));
        assert!(filter_ps("no header here\n1 2\n", &[1]).is_err());
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from),
            ["long-id", "1", "running", "/b", "t", "root"].map(String::from),
        ];
        let lines = table(&rows);
        assert!(
            lines[0].starts_with("ID          PID         STATUS"),
            "{lines:?}"
        );
        assert_eq!(lines[0].find("PID"), lines[1].find('1'));
        assert_eq!(lines[0].find("OWNER"), lines[1].find("root"));
    }

    #[test]
    fn spec_refuses_to_overwrite_and_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let args = SpecArgs {
            bundle: dir.path().to_path_buf(),
        };
        write_spec(&args, false).unwrap();
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        let spec: oci_spec::runtime::Spec = serde_json::from_str(&text).unwrap();
        assert_eq!(spec.hostname().as_deref(), Some("kvmbox"));
        let err = write_spec(&args, false).unwrap_err().to_string();
        assert!(
            err.ends_with("config.json already exists; remove it first"),
            "{err}"
        );
    }
}
