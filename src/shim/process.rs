//! One process the shim tracks (a container's init or an exec'd process): its lifecycle
//! status, exit, stdio, and the exit events it owes containerd.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use containerd_shim::protos::events::task::{TaskExecStarted, TaskExit, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::types::task::Status;

use super::events::EventSender;
use super::stdio::{ProcessIo, StdioPaths};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code (128+N when killed by signal N).
    pub status: u32,
    /// When the shim reaped it.
    pub at: SystemTime,
}

/// The mutable part of a [`Process`].
#[derive(Debug)]
pub struct ProcessState {
    /// PID on the host (0 before it exists).
    pub pid: i32,
    /// Lifecycle status.
    pub status: Status,
    /// Set once reaped.
    pub exit: Option<Exit>,
    /// The shim's side of the stdio.
    pub io: ProcessIo,
    /// Whether TaskStart/TaskExecStarted went out (TaskExit must not precede it).
    started_event_sent: bool,
}

/// A container init (`exec_id` empty) or an exec'd process.
#[derive(Debug)]
pub struct Process {
    /// Container id.
    pub container_id: String,
    /// Exec id ("" for the init).
    pub exec_id: String,
    /// Stdio as containerd gave it.
    pub stdio: StdioPaths,
    state: Mutex<ProcessState>,
    exited: Condvar,
}

impl Process {
    /// A process not yet running.
    pub fn new(container_id: &str, exec_id: &str, stdio: StdioPaths) -> Self {
        Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            state: Mutex::new(ProcessState {
                pid: 0,
                status: Status::CREATED,
                exit: None,
                io: ProcessIo::default(),
                started_event_sent: false,
            }),
            exited: Condvar::new(),
        }
    }

    /// The id containerd knows this process by in events (exec id, or the container id).
    pub fn event_id(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }

    /// Lock the state.
    pub fn lock(&self) -> MutexGuard<'_, ProcessState> {
        self.state.lock().unwrap()
    }

    /// Record the exit reported by the reaper; TaskExit goes out now if the start event did.
    pub fn set_exited(&self, status: i32, events: &EventSender) {
        let mut s = self.lock();
        if s.exit.is_some() {
            return;
        }
        s.exit = Some(Exit {
            status: status as u32,
            at: SystemTime::now(),
        });
        s.status = Status::STOPPED;
        if s.started_event_sent {
            events.send(self.exit_event(&s));
        }
        self.exited.notify_all();
    }

    /// Mark the process running and send its start event, then any exit that came first.
    pub fn set_started(&self, events: &EventSender) {
        let mut s = self.lock();
        if s.exit.is_none() {
            s.status = Status::RUNNING;
        }
        if self.exec_id.is_empty() {
            events.send(TaskStart {
                container_id: self.container_id.clone(),
                pid: s.pid as u32,
                ..Default::default()
            });
        } else {
            events.send(TaskExecStarted {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
                pid: s.pid as u32,
                ..Default::default()
            });
        }
        s.started_event_sent = true;
        if s.exit.is_some() {
            events.send(self.exit_event(&s));
        }
    }

    /// Block until the process has exited.
    pub fn wait(&self) -> Exit {
        let mut s = self.lock();
        loop {
            if let Some(exit) = s.exit {
                return exit;
            }
            s = self.exited.wait(s).unwrap();
        }
    }

    fn exit_event(&self, s: &ProcessState) -> TaskExit {
        let exit = s.exit.expect("exit_event after exit");
        TaskExit {
            container_id: self.container_id.clone(),
            id: self.event_id().to_string(),
            pid: s.pid as u32,
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        }
    }
}

/// A protobuf timestamp.
pub fn timestamp(at: SystemTime) -> Timestamp {
    let d = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn exit_before_start_is_held_and_wait_returns_the_code() {
        let p = Arc::new(Process::new("c1", "", StdioPaths::default()));
        let events = EventSender::discard();
        p.set_exited(7, &events);
        assert_eq!(p.lock().status, Status::STOPPED);
        assert!(!p.lock().started_event_sent);
        p.set_started(&events);
        assert_eq!(
            p.lock().status,
            Status::STOPPED,
            "start after exit stays stopped"
        );
        assert_eq!(p.wait().status, 7);
        assert_eq!(p.event_id(), "c1");
    }

    #[test]
    fn wait_blocks_until_the_reaper_reports() {
        let p = Arc::new(Process::new("c1", "e1", StdioPaths::default()));
        let events = EventSender::discard();
        p.set_started(&events);
        assert_eq!(p.lock().status, Status::RUNNING);
        let waiter = {
            let p = Arc::clone(&p);
            std::thread::spawn(move || p.wait().status)
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        p.set_exited(137, &events);
        assert_eq!(waiter.join().unwrap(), 137);
        assert_eq!(p.event_id(), "e1");
    }
}
