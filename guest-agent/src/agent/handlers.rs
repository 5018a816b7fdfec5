//! Request handlers: one method per `Request`, each answering `Ok(body)` or one error line
//! naming the container / exec id (sent back as `Response::Error`).
//!
//! "Last container gone" (PID-1 mode): the VM powers off right after answering the
//! `DeleteContainer` that removed the last container, or a `Shutdown`. An exited container is
//! kept (Stopped, its exit status stored) so that the host can still call WaitProcess,
//! ContainerState and DeleteContainer after the exit.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{Process, Spec};

use super::containers::{self, Container, ProcessRecord};
use super::guest_env;
use super::relay::Relay;
use super::server::{exited, Outcome, Server};
use super::stats;
use super::stdio::{self, ConsoleSocket};
use super::streams::{describe, ProcessStreams};
use crate::agent_log;
use crate::container::{self, CreateRequest, ExecRequest, OciState, Status};
use crate::protocol::{validate_id, ProcessRef, Request, Response, ResponseBody, StdioSpec};

type Answer = Result<ResponseBody, String>;

impl Server {
    /// Handle one request from control connection `conn`; None = the connection is parked.
    pub(super) fn handle(&mut self, conn: u64, req: Request) -> Option<Response> {
        let answer = match req {
            Request::CreateContainer { id, spec, stdio } => self.create(&id, *spec, stdio),
            Request::StartContainer { id } => self.start(&id),
            Request::ExecProcess {
                id,
                exec_id,
                process,
                stdio,
            } => self.exec(&id, &exec_id, &process, stdio),
            Request::SignalProcess {
                process,
                signal,
                all,
            } => self.signal(&process, signal, all),
            Request::WaitProcess { process } => match self.wait(conn, &process) {
                Ok(Some(resp)) => return Some(resp),
                Ok(None) => return None,
                Err(e) => Err(e),
            },
            Request::ResizeTty {
                process,
                rows,
                cols,
            } => self.resize(&process, rows, cols),
            Request::CloseStdin { process } => self.close_stdin(&process),
            Request::ContainerState { id } => self.container(&id).map(|c| ResponseBody::State {
                status: c.status(),
                pid: if c.init.exit.is_some() { 0 } else { c.init.pid },
            }),
            Request::Stats { id } => self
                .container(&id)
                .and_then(|c| {
                    stats::read_stats(&c.cgroup_path)
                        .map_err(|e| format!("stats of container {id}: {e}"))
                })
                .map(ResponseBody::Stats),
            Request::ListProcesses { id } => self.container(&id).and_then(|c| {
                container::cgroup_pids(&c.cgroup_path)
                    .map(|pids| ResponseBody::Processes { pids })
                    .map_err(|e| format!("processes of container {id}: {e}"))
            }),
            Request::UpdateContainer { id, resources } => self.container(&id).and_then(|c| {
                container::update_cgroup(&c.cgroup_path, &resources)
                    .map(|()| ResponseBody::Ok)
                    .map_err(|e| format!("update of container {id}: {e}"))
            }),
            Request::DeleteContainer { id, force } => self.delete(&id, force),
            req @ (Request::Pause { .. } | Request::Resume { .. }) => self.freeze(&req),
            Request::Shutdown => {
                self.shutdown_all();
                self.stop = Some(if self.cfg.pid1 {
                    Outcome::PowerOff
                } else {
                    Outcome::Exit
                });
                Ok(ResponseBody::Ok)
            }
        };
        Some(match answer {
            Ok(body) => Response::Ok(body),
            Err(message) => {
                agent_log!("request failed: {message}");
                Response::Error { message }
            }
        })
    }

    /// The exit of `p` now, or None after parking `conn` until it exits.
    fn wait(&mut self, conn: u64, p: &ProcessRef) -> Result<Option<Response>, String> {
        let what = describe(p);
        let rec = self
            .containers
            .get_mut(&p.container_id)
            .ok_or_else(|| format!("container {} does not exist", p.container_id))?
            .process_mut(p.exec_id.as_deref())
            .ok_or_else(|| format!("{what} does not exist"))?;
        if let Some(info) = rec.exit {
            return Ok(Some(exited(info)));
        }
        rec.waiters.push(conn);
        self.park(conn);
        Ok(None)
    }

    pub(super) fn container(&self, id: &str) -> Result<&Container, String> {
        self.containers
            .get(id)
            .ok_or_else(|| format!("container {id} does not exist"))
    }

    fn lookup(&self, p: &ProcessRef) -> Result<&ProcessRecord, String> {
        self.container(&p.container_id)?
            .process(p.exec_id.as_deref())
            .ok_or_else(|| format!("{} does not exist", describe(p)))
    }

    fn create(&mut self, id: &str, mut spec: Spec, stdio: StdioSpec) -> Answer {
        validate_id("container id", id)?;
        if let Some(process) = spec.process_mut() {
            guest_env::forward(process);
        }
        if self.containers.contains_key(id) {
            return Err(format!("container {id} already exists"));
        }
        let pref = ProcessRef {
            container_id: id.to_string(),
            exec_id: None,
        };
        let streams = self.streams.take(&pref, &stdio)?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        if terminal != stdio.terminal {
            return Err(format!(
                "container {id}: process.terminal is {terminal} but stdio.terminal is {}",
                stdio.terminal
            ));
        }
        let root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .ok_or_else(|| format!("container {id}: root.path is missing"))?;
        let default_bundle = Path::new("/containers").join(id);
        let rootfs = if root.is_absolute() {
            root
        } else {
            default_bundle.join(root)
        };
        if !rootfs.is_dir() {
            return Err(format!(
                "container {id}: rootfs {} is not a directory",
                rootfs.display()
            ));
        }
        let bundle = rootfs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or(default_bundle);
        let cgroup_path = containers::cgroup_path(&spec, id, &self.cfg.cgroup_parent)?;
        // Below `containers/`: never the shared directory's mount point (`<run dir>/shared`),
        // whatever the id.
        let run_dir = self.cfg.run_dir.join("containers").join(id);
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| format!("container {id}: create {}: {e}", run_dir.display()))?;
        let result = self.create_in(id, &spec, &streams, &bundle, rootfs, &run_dir, &cgroup_path);
        let (pid, fifo, master) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err(e);
            }
        };
        let mut init = ProcessRecord::new(pid);
        self.attach_stdio(&mut init, streams, master);
        self.pids.insert(pid, pref);
        self.containers.insert(
            id.to_string(),
            Container {
                spec,
                cgroup_path,
                run_dir,
                exec_fifo: fifo,
                started: false,
                init,
                execs: Default::default(),
            },
        );
        agent_log!("created container {id} (pid {pid})");
        Ok(ResponseBody::Pid { pid })
    }

    #[allow(clippy::too_many_arguments)]
    fn create_in(
        &mut self,
        id: &str,
        spec: &Spec,
        streams: &ProcessStreams,
        bundle: &Path,
        rootfs: PathBuf,
        run_dir: &Path,
        cgroup_path: &str,
    ) -> Result<(i32, PathBuf, Option<std::os::fd::OwnedFd>), String> {
        let fifo = run_dir.join("exec.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
            .map_err(|e| format!("container {id}: create exec fifo {}: {e}", fifo.display()))?;
        let console = self.console_socket(id, streams)?;
        let state = OciState {
            oci_version: spec.version().clone(),
            id: id.to_string(),
            status: Status::Creating,
            pid: 0,
            bundle: bundle.to_path_buf(),
            annotations: spec.annotations().clone().unwrap_or_default(),
            created: None,
        };
        let req = CreateRequest {
            id,
            bundle,
            spec,
            rootfs,
            exec_fifo: Some(&fifo),
            console_socket: console.as_ref().map(|c| c.path()),
            no_pivot: false,
            preserve_fds: 0,
            cgroup_path: cgroup_path.to_string(),
        };
        let parked = self.park_streams();
        let created = stdio::with_stdio(stdio_fds(streams), self.null.as_fd(), || {
            container::create(&req, &state)
        });
        self.unpark_streams(parked);
        let created = created
            .map_err(|e| format!("container {id}: set up stdio: {e}"))?
            .map_err(|e| format!("create container {id}: {e}"))?;
        let master = match console {
            Some(c) => match c.receive_master() {
                Ok(m) => Some(m),
                Err(e) => {
                    let _ = kill(Pid::from_raw(created.pid), Signal::SIGKILL);
                    let _ = waitpid(Pid::from_raw(created.pid), None);
                    let _ = container::destroy_cgroup(cgroup_path);
                    return Err(format!("container {id}: receive the pty master: {e}"));
                }
            },
            None => None,
        };
        Ok((created.pid, fifo, master))
    }

    /// Park the other processes' pending streams around a container init's clone (see
    /// `streams`): the init waits for `start` before exec, and must not hold them meanwhile.
    fn park_streams(&mut self) -> Option<super::streams::Parked> {
        match self.streams.park() {
            Ok(p) => Some(p),
            Err(e) => {
                agent_log!("park pending streams: {e}");
                None
            }
        }
    }

    fn unpark_streams(&mut self, parked: Option<super::streams::Parked>) {
        if let Some(p) = parked {
            if let Err(e) = self.streams.unpark(p) {
                agent_log!("unpark pending streams: {e}");
            }
        }
    }

    /// With a TTY stream, a console socket for the pty master.
    fn console_socket(
        &mut self,
        id: &str,
        streams: &ProcessStreams,
    ) -> Result<Option<ConsoleSocket>, String> {
        if streams.tty.is_none() {
            return Ok(None);
        }
        let n = self.new_id();
        let path = self.cfg.run_dir.join(format!("console-{n}.sock"));
        ConsoleSocket::bind(&path)
            .map(Some)
            .map_err(|e| format!("container {id}: console socket {}: {e}", path.display()))
    }

    /// Keep what the agent still needs of a started process's streams: a copy of stdin (for
    /// CloseStdin) and the TTY relay. The stdout/stderr streams now belong to the process.
    fn attach_stdio(
        &mut self,
        rec: &mut ProcessRecord,
        streams: ProcessStreams,
        master: Option<std::os::fd::OwnedFd>,
    ) {
        rec.stdin = streams.stdin;
        if let (Some(master), Some(tty)) = (master, streams.tty) {
            match Relay::new(master, tty) {
                Ok(r) => {
                    let rid = self.new_id();
                    self.relays.insert(rid, r);
                    rec.relay = Some(rid);
                }
                Err(e) => agent_log!("tty relay: {e}"),
            }
        }
    }

    fn start(&mut self, id: &str) -> Answer {
        let c = self
            .containers
            .get_mut(id)
            .ok_or_else(|| format!("container {id} does not exist"))?;
        match c.status() {
            Status::Created => {}
            Status::Running => return Err(format!("container {id} is already running")),
            _ => return Err(format!("container {id} is stopped; it cannot be started")),
        }
        container::release(&c.exec_fifo, c.init.pid)
            .map_err(|e| format!("start container {id}: {e}"))?;
        c.started = true;
        let _ = std::fs::remove_file(&c.exec_fifo);
        Ok(ResponseBody::Ok)
    }

    fn exec(&mut self, id: &str, exec_id: &str, process: &Process, stdio: StdioSpec) -> Answer {
        validate_id("exec id", exec_id)?;
        let mut process = process.clone();
        guest_env::forward(&mut process);
        let process = &process;
        let c = self.container(id)?;
        if c.init.exit.is_some() {
            return Err(format!("container {id} is stopped; cannot exec {exec_id}"));
        }
        if c.execs.contains_key(exec_id) {
            return Err(format!("exec {exec_id} of container {id} already exists"));
        }
        let terminal = process.terminal().unwrap_or(false);
        if terminal != stdio.terminal {
            return Err(format!(
                "exec {exec_id} of container {id}: process.terminal is {terminal} but stdio.terminal is {}",
                stdio.terminal
            ));
        }
        let pref = ProcessRef {
            container_id: id.to_string(),
            exec_id: Some(exec_id.to_string()),
        };
        let streams = self.streams.take(&pref, &stdio)?;
        let console = self.console_socket(id, &streams)?;
        let c = self.container(id)?;
        let req = ExecRequest {
            container_pid: c.init.pid,
            spec: &c.spec,
            process,
            console_socket: console.as_ref().map(|c| c.path()),
            cgroup_path: c.cgroup_path.clone(),
            preserve_fds: 0,
        };
        let pid = stdio::with_stdio(stdio_fds(&streams), self.null.as_fd(), || {
            container::exec(&req)
        })
        .map_err(|e| format!("exec {exec_id} of container {id}: set up stdio: {e}"))?
        .map_err(|e| format!("exec {exec_id} in container {id}: {e}"))?;
        let master = match console.map(|c| c.receive_master()) {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = waitpid(Pid::from_raw(pid), None);
                return Err(format!(
                    "exec {exec_id} of container {id}: receive the pty master: {e}"
                ));
            }
            None => None,
        };
        let mut rec = ProcessRecord::new(pid);
        self.attach_stdio(&mut rec, streams, master);
        self.pids.insert(pid, pref);
        if let Some(c) = self.containers.get_mut(id) {
            c.execs.insert(exec_id.to_string(), rec);
        }
        Ok(ResponseBody::Pid { pid })
    }

    fn signal(&mut self, p: &ProcessRef, signal: i32, all: bool) -> Answer {
        let sig = Signal::try_from(signal)
            .map_err(|_| format!("{}: invalid signal number {signal}", describe(p)))?;
        if all {
            let c = self.container(&p.container_id)?;
            let mut pids = container::cgroup_pids(&c.cgroup_path).unwrap_or_default();
            if c.init.exit.is_none() && !pids.contains(&c.init.pid) {
                pids.push(c.init.pid);
            }
            if pids.is_empty() {
                return Err(format!("container {} is not running", p.container_id));
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), sig);
            }
            return Ok(ResponseBody::Ok);
        }
        let rec = self.lookup(p)?;
        if rec.exit.is_some() {
            return Err(format!("{} has exited", describe(p)));
        }
        kill(Pid::from_raw(rec.pid), sig).map_err(|e| format!("signal {}: {e}", describe(p)))?;
        Ok(ResponseBody::Ok)
    }

    fn relay_of(&mut self, p: &ProcessRef) -> Result<&mut Relay, String> {
        let rid = self
            .lookup(p)?
            .relay
            .ok_or_else(|| format!("{} has no terminal", describe(p)))?;
        self.relays
            .get_mut(&rid)
            .ok_or_else(|| format!("the terminal of {} is closed", describe(p)))
    }

    fn resize(&mut self, p: &ProcessRef, rows: u16, cols: u16) -> Answer {
        let what = describe(p);
        self.relay_of(p)?
            .resize(rows, cols)
            .map_err(|e| format!("resize the terminal of {what}: {e}"))?;
        Ok(ResponseBody::Ok)
    }

    fn close_stdin(&mut self, p: &ProcessRef) -> Answer {
        let what = describe(p);
        let rec = self.lookup(p)?;
        if rec.relay.is_some() {
            self.relay_of(p)?.send_eof();
            if let Ok(r) = self.relay_of(p) {
                r.pump();
            }
            return Ok(ResponseBody::Ok);
        }
        let c = self
            .containers
            .get_mut(&p.container_id)
            .ok_or_else(|| format!("container {} does not exist", p.container_id))?;
        let rec = c
            .process_mut(p.exec_id.as_deref())
            .ok_or_else(|| format!("{what} does not exist"))?;
        if let Some(fd) = rec.stdin.take() {
            // SHUT_RD: the process's reads of this socket return end-of-file.
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                nix::sys::socket::Shutdown::Read,
            );
        }
        Ok(ResponseBody::Ok)
    }

    /// SIGKILL everything in container `id` and reap its processes (answering their waiters).
    fn kill_and_reap(&mut self, id: &str) {
        let Some(c) = self.containers.get_mut(id) else {
            return;
        };
        for pid in container::cgroup_pids(&c.cgroup_path).unwrap_or_default() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let live: Vec<i32> = c
            .processes_mut()
            .filter(|p| p.exit.is_none())
            .map(|p| p.pid)
            .collect();
        for pid in live {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            match waitpid(Pid::from_raw(pid), None) {
                Ok(WaitStatus::Exited(_, code)) => self.on_exit(pid, Some(code), None),
                Ok(WaitStatus::Signaled(_, sig, _)) => self.on_exit(pid, None, Some(sig as i32)),
                _ => self.on_exit(pid, None, Some(libc::SIGKILL)),
            }
        }
    }

    fn delete(&mut self, id: &str, force: bool) -> Answer {
        let c = self.container(id)?;
        if c.status() == Status::Running && !force {
            return Err(format!(
                "container {id} is running: stop it first or delete it with force"
            ));
        }
        self.remove(id);
        if self.containers.is_empty() && self.cfg.pid1 {
            agent_log!("the last container is gone: powering off");
            self.stop = Some(Outcome::PowerOff);
        }
        Ok(ResponseBody::Ok)
    }

    /// Kill, reap and forget container `id`: cgroup, run dir, relays.
    fn remove(&mut self, id: &str) {
        self.kill_and_reap(id);
        let Some(mut c) = self.containers.remove(id) else {
            return;
        };
        if let Err(e) = container::destroy_cgroup(&c.cgroup_path) {
            agent_log!("delete container {id}: {e}");
        }
        let _ = std::fs::remove_dir_all(&c.run_dir);
        for p in c.processes_mut() {
            if let Some(mut r) = p.relay.and_then(|r| self.relays.remove(&r)) {
                r.finish();
            }
        }
        self.pids.retain(|_, p| p.container_id != id);
        agent_log!("deleted container {id}");
    }

    /// Remove every container (Shutdown, or SIGTERM in test mode).
    pub(super) fn shutdown_all(&mut self) {
        let ids: Vec<String> = self.containers.keys().cloned().collect();
        for id in ids {
            self.remove(&id);
        }
    }
}

fn stdio_fds(s: &ProcessStreams) -> [Option<std::os::fd::BorrowedFd<'_>>; 3] {
    [
        s.stdin.as_ref().map(|f| f.as_fd()),
        s.stdout.as_ref().map(|f| f.as_fd()),
        s.stderr.as_ref().map(|f| f.as_fd()),
    ]
}
