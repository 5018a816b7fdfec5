//! Pause/Resume: freeze or thaw every process of a container through its cgroup v2
//! `cgroup.freeze`, waiting until `cgroup.events` reports the new state.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::server::Server;
use crate::protocol::{Request, ResponseBody};

/// Mount point of the unified hierarchy in the guest.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How long a freeze may take to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

impl Server {
    /// Answer `Request::Pause` / `Request::Resume`.
    pub(super) fn freeze(&self, req: &Request) -> Result<ResponseBody, String> {
        let (id, frozen) = match req {
            Request::Pause { id } => (id, true),
            Request::Resume { id } => (id, false),
            other => return Err(format!("not a freeze request: {other:?}")),
        };
        let c = self.container(id)?;
        if c.init.exit.is_some() {
            return Err(format!("container {id} is stopped"));
        }
        set_frozen(&cgroup_dir(&c.cgroup_path), frozen)
            .map_err(|e| format!("container {id}: {e}"))?;
        Ok(ResponseBody::Ok)
    }
}

fn cgroup_dir(cgroup_path: &str) -> PathBuf {
    Path::new(CGROUP_ROOT).join(cgroup_path.trim_start_matches('/'))
}

/// Write `cgroup.freeze` in `dir` and wait for `cgroup.events` to show `frozen 0|1`.
fn set_frozen(dir: &Path, frozen: bool) -> Result<(), String> {
    if dir == Path::new(CGROUP_ROOT) {
        return Err("refusing to freeze the root cgroup".into());
    }
    let file = dir.join("cgroup.freeze");
    std::fs::write(&file, if frozen { "1" } else { "0" })
        .map_err(|e| format!("write {}: {e}", file.display()))?;
    let want = if frozen { "frozen 1" } else { "frozen 0" };
    let events = dir.join("cgroup.events");
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&events)
            .map_err(|e| format!("read {}: {e}", events.display()))?;
        if text.lines().any(|l| l.trim() == want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not reach \"{want}\" within {}s",
                events.display(),
                SETTLE_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_writes_the_file_and_waits_for_the_event() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        set_frozen(dir.path(), true).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cgroup.freeze")).unwrap(),
            "1"
        );
        assert_eq!(
            cgroup_dir("/kvmbox/c1"),
            Path::new("/sys/fs/cgroup/kvmbox/c1")
        );
        assert!(set_frozen(Path::new(CGROUP_ROOT), false).is_err());
    }
}
