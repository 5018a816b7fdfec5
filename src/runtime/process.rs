//! Facts about host processes read from /proc: liveness, zombies, start time (to detect PID
//! reuse), and waiting for a process to exit when we are not its parent.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Kernel task flag: the task is in exit(2).
const PF_EXITING: u64 = 0x4;

/// What /proc says about a PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    /// No such process.
    Gone,
    /// Exited but not yet reaped (a zombie), or a single-threaded process already inside
    /// exit(2) (PF_EXITING: e.g. a pid-namespace init waiting for its namespace's last zombies,
    /// which PID 1 on some hosts reaps only every few seconds). Counts as exited.
    Zombie,
    /// Alive, with its start time (clock ticks since boot, `/proc/<pid>/stat` field 22).
    Alive {
        /// Start time in clock ticks since boot.
        start_time: u64,
    },
}

/// Read `/proc/<pid>/stat`.
pub fn proc_state(pid: i32) -> ProcState {
    if pid <= 0 {
        return ProcState::Gone;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => parse_stat(&stat).unwrap_or(ProcState::Gone),
        Err(_) => ProcState::Gone,
    }
}

/// Parse the content of /proc/<pid>/stat (the command name may contain spaces and parens).
fn parse_stat(stat: &str) -> Option<ProcState> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3 (state), fields[6] field 9 (flags), fields[17] field 20
    // (num_threads), fields[19] field 22 (starttime).
    let state = fields.first()?;
    if *state == "Z" || *state == "X" {
        return Some(ProcState::Zombie);
    }
    let flags: u64 = fields.get(6)?.parse().ok()?;
    let threads: u64 = fields.get(17)?.parse().ok()?;
    if flags & PF_EXITING != 0 && threads <= 1 {
        return Some(ProcState::Zombie);
    }
    let start_time = fields.get(19)?.parse().ok()?;
    Some(ProcState::Alive { start_time })
}

/// Start time of a live process, `None` if it is gone or a zombie.
pub fn start_time(pid: i32) -> Option<u64> {
    match proc_state(pid) {
        ProcState::Alive { start_time } => Some(start_time),
        _ => None,
    }
}

/// True if `pid` is alive and is the same process that had `start_time`.
pub fn is_same_live_process(pid: i32, start_time: u64) -> bool {
    matches!(proc_state(pid), ProcState::Alive { start_time: t } if t == start_time)
}

/// Wait until `pid` has exited (gone or zombie), at most `timeout`. Uses a pidfd (no polling of
/// kill(pid, 0): PID 1 may reap orphans late). Returns true if it exited.
pub fn wait_exited(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw >= 0 {
        // SAFETY: the syscall returned a fresh fd that we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        loop {
            if !matches!(proc_state(pid), ProcState::Alive { .. }) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // Wake up at least every 10 ms: an exiting init only becomes pollable once its
            // namespace's zombies are reaped, but counts as exited as soon as it is exiting.
            let ms = left.as_millis().min(10) as i32;
            let mut fds = [PollFd::new(
                std::os::fd::AsFd::as_fd(&pidfd),
                PollFlags::POLLIN,
            )];
            match poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(n) if n > 0 => return true,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
    }
    // No pidfd (gone already, or an old kernel): poll /proc.
    while Instant::now() < deadline {
        if !matches!(proc_state(pid), ProcState::Alive { .. }) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    !matches!(proc_state(pid), ProcState::Alive { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(
            parse_stat(stat),
            Some(ProcState::Alive { start_time: 123456 })
        );
        let zombie = "42 (x) Z 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 99 0 0";
        assert_eq!(parse_stat(zombie), Some(ProcState::Zombie));
        // PF_EXITING (0x4) in field 9: exiting counts as exited when single-threaded...
        let exiting = "42 (x) S 1 42 42 0 -1 4194564 100 0 0 0 0 0 0 0 20 0 1 0 99 0 0";
        assert_eq!(parse_stat(exiting), Some(ProcState::Zombie));
        // ...but not while other threads of the process still run.
        let leader_gone = "42 (x) S 1 42 42 0 -1 4194564 100 0 0 0 0 0 0 0 20 0 3 0 99 0 0";
        assert_eq!(
            parse_stat(leader_gone),
            Some(ProcState::Alive { start_time: 99 })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_stable() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("we are alive");
        assert!(is_same_live_process(me, t));
        assert!(!is_same_live_process(me, t + 1));
        assert_eq!(proc_state(0), ProcState::Gone);
        assert_eq!(proc_state(i32::MAX), ProcState::Gone);
    }

    #[test]
    fn zombie_child_counts_as_exited() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(wait_exited(pid, Duration::from_secs(5)));
        assert!(!matches!(proc_state(pid), ProcState::Alive { .. }));
        child.wait().unwrap();
    }

    #[test]
    fn times_out_on_a_live_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(!wait_exited(child.id() as i32, Duration::from_millis(50)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
