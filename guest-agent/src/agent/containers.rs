//! The agent's records of containers and their processes.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use oci_spec::runtime::Spec;

use crate::container::Status;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, or 128 + signal.
    pub status: i32,
    /// The killing signal.
    pub signal: Option<i32>,
    /// The container's cgroup recorded an OOM kill.
    pub oom_killed: bool,
}

impl ExitInfo {
    /// From a wait status: an exit code or a killing signal.
    pub fn new(code: Option<i32>, signal: Option<i32>, oom_kills: u64) -> ExitInfo {
        match signal {
            Some(sig) => ExitInfo {
                status: 128 + sig,
                signal: Some(sig),
                oom_killed: sig == libc::SIGKILL && oom_kills > 0,
            },
            None => ExitInfo {
                status: code.unwrap_or(0),
                signal: None,
                oom_killed: false,
            },
        }
    }
}

/// One process of a container (the init or an exec).
#[derive(Debug)]
pub struct ProcessRecord {
    /// PID in the agent's pid namespace.
    pub pid: i32,
    /// Set once reaped.
    pub exit: Option<ExitInfo>,
    /// A copy of the stdin stream, for `CloseStdin` (dropped at exit).
    pub stdin: Option<OwnedFd>,
    /// The TTY relay id, with a terminal.
    pub relay: Option<u64>,
    /// Control connections parked in `WaitProcess` on this process.
    pub waiters: Vec<u64>,
}

impl ProcessRecord {
    /// A live process.
    pub fn new(pid: i32) -> ProcessRecord {
        ProcessRecord {
            pid,
            exit: None,
            stdin: None,
            relay: None,
            waiters: Vec::new(),
        }
    }
}

/// One container.
#[derive(Debug)]
pub struct Container {
    /// The spec it was created from.
    pub spec: Spec,
    /// Its cgroup path.
    pub cgroup_path: String,
    /// `<run dir>/<id>`: the exec FIFO lives here.
    pub run_dir: PathBuf,
    /// The exec FIFO (until start).
    pub exec_fifo: PathBuf,
    /// True once `StartContainer` released the init.
    pub started: bool,
    /// The init process.
    pub init: ProcessRecord,
    /// Exec'd processes by exec id.
    pub execs: HashMap<String, ProcessRecord>,
}

impl Container {
    /// OCI status.
    pub fn status(&self) -> Status {
        match (self.init.exit.is_some(), self.started) {
            (true, _) => Status::Stopped,
            (false, true) => Status::Running,
            (false, false) => Status::Created,
        }
    }

    /// The process record for `exec_id` (None = init).
    pub fn process(&self, exec_id: Option<&str>) -> Option<&ProcessRecord> {
        match exec_id {
            None => Some(&self.init),
            Some(e) => self.execs.get(e),
        }
    }

    /// Mutable [`Container::process`].
    pub fn process_mut(&mut self, exec_id: Option<&str>) -> Option<&mut ProcessRecord> {
        match exec_id {
            None => Some(&mut self.init),
            Some(e) => self.execs.get_mut(e),
        }
    }

    /// Every process record.
    pub fn processes_mut(&mut self) -> impl Iterator<Item = &mut ProcessRecord> {
        std::iter::once(&mut self.init).chain(self.execs.values_mut())
    }
}

/// Resolve the cgroup path of container `id`: `linux.cgroupsPath` when it is a plain path, else
/// `<parent>/<id>`.
pub fn cgroup_path(spec: &Spec, id: &str, parent: &str) -> Result<String, String> {
    let default = format!("{}/{id}", parent.trim_end_matches('/'));
    let Some(p) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
    else {
        return Ok(default);
    };
    let text = p.to_string_lossy();
    if text.is_empty() || text.contains(':') {
        return Ok(default);
    }
    let parts: Vec<&str> = text
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!(
            "container {id}: linux.cgroupsPath {text:?} must not contain '..'"
        ));
    }
    if parts.is_empty() {
        return Err(format!(
            "container {id}: linux.cgroupsPath {text:?} names the root cgroup"
        ));
    }
    Ok(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_info_maps_signals_and_oom() {
        assert_eq!(ExitInfo::new(Some(7), None, 0).status, 7);
        let k = ExitInfo::new(None, Some(9), 0);
        assert_eq!((k.status, k.signal, k.oom_killed), (137, Some(9), false));
        assert!(ExitInfo::new(None, Some(9), 1).oom_killed);
        assert!(!ExitInfo::new(None, Some(15), 1).oom_killed);
    }

    #[test]
    fn cgroup_paths_resolve() {
        let mut spec = Spec::default();
        assert_eq!(cgroup_path(&spec, "c", "/kvmbox").unwrap(), "/kvmbox/c");
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_cgroups_path(Some("a/b".into()));
        spec.set_linux(Some(linux.clone()));
        assert_eq!(cgroup_path(&spec, "c", "/kvmbox").unwrap(), "/a/b");
        linux.set_cgroups_path(Some("/a/../b".into()));
        spec.set_linux(Some(linux));
        assert!(cgroup_path(&spec, "c", "/kvmbox").is_err());
    }
}
