//! `kvmbox-agent`: the guest agent, PID 1 of every kvmbox microVM.
//!
//! As PID 1 ([`Mode::Pid1`]) it switches the root from the initramfs to a tmpfs, mounts the
//! pseudo filesystems and the host's shared directory (virtio-fs, container rootfs) (`pid1`), listens on vsock ports [`CONTROL_PORT`] and [`STDIO_PORT`]
//! (`listen`), and serves the host's requests in one single-threaded poll loop (`server`,
//! `handlers`) — single-threaded because the container module clones the caller. Containers are
//! set up with [`crate::container`], the same code as `--isolation namespace`. Stdio streams are
//! handed to the processes as their fd 0/1/2 (`stdio`); a TTY is relayed through a pty master
//! (`relay`). Every child is reaped; the VM powers off on `Shutdown` or once the last container
//! was deleted (see `handlers`). Errors are logged to the serial console and never end the
//! agent; a fatal setup error is printed and the VM powered off.
//!
//! [`Mode::Unix`] (`--listen-unix PATH`) is the test transport: the same server on one Unix
//! socket whose connections begin with the hybrid-vsock handshake `CONNECT <port>\n` →
//! `OK <port>\n`. It does no mounts and no power-off, and runs containers on the host (cgroup v1
//! there: `Stats` answers an error).
//!
//! Stream fds never leak into other containers' processes: every agent fd is close-on-exec,
//! a process gets only its own streams as 0/1/2, and while a container init is cloned (it
//! waits for `start` before exec) the streams pending for other processes are parked outside
//! the fd table (`streams`), so a stdout EOF reaches the host as soon as its process is done.
//! The agent's own copies are closed (or, for TTY streams, shut down) once it no longer needs
//! them.
//!
//! [`CONTROL_PORT`]: crate::protocol::CONTROL_PORT
//! [`STDIO_PORT`]: crate::protocol::STDIO_PORT

mod containers;
mod error;
mod frames;
mod freeze;
mod guest_env;
mod handlers;
mod listen;
pub mod log;
pub mod pid1;
mod relay;
mod server;
mod sock;
mod stats;
mod stdio;
mod streams;

use std::os::fd::IntoRawFd;
use std::path::PathBuf;

pub use error::AgentError;
pub use server::Outcome;

use crate::protocol::{CONTROL_PORT, STDIO_PORT};

/// Default directory of exec FIFOs and console sockets.
pub const DEFAULT_RUN_DIR: &str = "/run/kvmbox";
/// Default parent cgroup of containers.
pub const DEFAULT_CGROUP_PARENT: &str = "/kvmbox";

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of the guest: mounts, vsock, power-off.
    Pid1,
    /// Test transport on a Unix socket.
    Unix(PathBuf),
}

/// Agent options (from the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Where to listen.
    pub mode: Mode,
    /// Directory of exec FIFOs and console sockets.
    pub run_dir: PathBuf,
    /// Parent cgroup of containers without a cgroupsPath.
    pub cgroup_parent: String,
}

impl Options {
    /// Parse `[--listen-unix PATH] [--run-dir DIR] [--cgroup-parent PATH]`. Without
    /// `--listen-unix` the agent must be PID 1.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, AgentError> {
        let mut unix = None;
        let mut run_dir = PathBuf::from(DEFAULT_RUN_DIR);
        let mut cgroup_parent = DEFAULT_CGROUP_PARENT.to_string();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .ok_or_else(|| AgentError::Usage(format!("{name} needs a value")))
            };
            match a.as_str() {
                "--listen-unix" => unix = Some(PathBuf::from(value("--listen-unix")?)),
                "--run-dir" => run_dir = PathBuf::from(value("--run-dir")?),
                "--cgroup-parent" => cgroup_parent = value("--cgroup-parent")?,
                // The kernel may pass its unknown command-line words to init.
                other if std::process::id() == 1 => {
                    crate::agent_log!("ignoring argument {other:?}");
                }
                other => {
                    return Err(AgentError::Usage(format!(
                        "unknown argument {other:?} (kvmbox-agent [--listen-unix PATH] \
                         [--run-dir DIR] [--cgroup-parent PATH])"
                    )))
                }
            }
        }
        let mode =
            match unix {
                Some(p) => Mode::Unix(p),
                None if std::process::id() == 1 => Mode::Pid1,
                None => return Err(AgentError::Usage(
                    "not PID 1: the agent runs as the guest's init, or with --listen-unix PATH \
                     (test transport)"
                        .into(),
                )),
            };
        Ok(Options {
            mode,
            run_dir,
            cgroup_parent,
        })
    }
}

/// Run the agent until it stops; returns how (the caller powers off or exits).
pub fn run(opts: &Options) -> Result<Outcome, AgentError> {
    let listeners = match &opts.mode {
        Mode::Pid1 => {
            stdio::ensure_stdio_open();
            crate::agent_log!("starting as PID 1");
            pid1::switch_root()?;
            pid1::mount_filesystems()?;
            // Before Hello is answered: the host sends container rootfs paths below it. A VM
            // without the device (hand-built test VMs) still serves initramfs rootfs.
            if let Err(e) = pid1::mount_shared() {
                crate::agent_log!("no shared directory: {e}");
            }
            // The serial console; without it (no console= device) logs go nowhere.
            match std::fs::OpenOptions::new().write(true).open("/dev/console") {
                Ok(console) => {
                    stdio::redirect_stdio(std::os::fd::AsFd::as_fd(&console));
                    log::set_fd(console.into_raw_fd());
                }
                Err(e) => crate::agent_log!("open /dev/console: {e}"),
            }
            vec![
                listen::Listener::vsock(CONTROL_PORT).map_err(AgentError::setup(format!(
                    "listen on vsock port {CONTROL_PORT}"
                )))?,
                listen::Listener::vsock(STDIO_PORT).map_err(AgentError::setup(format!(
                    "listen on vsock port {STDIO_PORT}"
                )))?,
            ]
        }
        Mode::Unix(path) => {
            // Our own log fd: 0/1/2 are swapped while processes are cloned.
            // SAFETY: F_DUPFD_CLOEXEC of stderr.
            let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
            if fd >= 0 {
                log::set_fd(fd);
            }
            // Orphans of container processes are reparented to us, not the host's init.
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
            vec![listen::Listener::unix(path)
                .map_err(AgentError::setup(format!("listen on {}", path.display())))?]
        }
    };
    let pid1 = opts.mode == Mode::Pid1;
    let cfg = server::Config {
        listeners,
        run_dir: opts.run_dir.clone(),
        cgroup_parent: opts.cgroup_parent.clone(),
        pid1,
    };
    let server = server::Server::new(cfg).map_err(AgentError::setup("start the server"))?;
    crate::agent_log!(
        "listening on {}",
        match &opts.mode {
            Mode::Pid1 => format!("vsock ports {CONTROL_PORT} and {STDIO_PORT}"),
            Mode::Unix(p) => p.display().to_string(),
        }
    );
    let outcome = server.run();
    if let Mode::Unix(path) = &opts.mode {
        let _ = std::fs::remove_file(path);
    }
    Ok(outcome)
}
