//! The state store under `--root`: one directory per container holding `state.json` (written
//! atomically: tmp file + rename), a `lock` file and the exec FIFO.
//!
//! Mutating commands hold the container's lock for their whole critical section. The lock is a
//! POSIX record lock (`fcntl(F_SETLKW)`) plus an in-process mutex: unlike `flock(2)`, a record
//! lock is owned by the process and is *not* inherited by the container init that `create`
//! clones from us (an inherited flock would be held by the init until it execs, deadlocking
//! `start`). Readers (`state`, `list`, `ps`) need no lock: `rename(2)` makes every read see a
//! complete file.

use std::collections::{HashMap, HashSet};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use guest_agent::container::{OciState, Status};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use super::error::{Result, RuntimeError};
use super::process::{proc_state, ProcState};
use super::Isolation;

/// File name of the persisted state inside a container directory.
pub const STATE_FILE: &str = "state.json";
/// File name of the lock file inside a container directory.
pub const LOCK_FILE: &str = "lock";
/// File name of the exec FIFO inside a container directory.
pub const EXEC_FIFO: &str = "exec.fifo";

/// Everything kvmbox remembers about a container between commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Container id.
    pub id: String,
    /// Isolation model it was created with.
    pub isolation: Isolation,
    /// Host PID of the container's init process.
    pub pid: i32,
    /// Start time of `pid` (`/proc/<pid>/stat` field 22), to detect PID reuse.
    pub pid_start_time: u64,
    /// Absolute bundle directory.
    pub bundle: PathBuf,
    /// Absolute rootfs path.
    pub rootfs: PathBuf,
    /// Cgroup path (within each hierarchy) of the container.
    pub cgroup_path: String,
    /// Annotations from the spec.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// RFC 3339 creation time.
    pub created: String,
    /// Path of the exec FIFO (exists until `start`).
    pub exec_fifo: PathBuf,
    /// The container's spec, as loaded at create time.
    pub spec: Spec,
    /// The microVM of a `--isolation vm` container (None in namespace mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmRecord>,
}

/// What kvmbox remembers about the microVM of a `--isolation vm` container. The record's
/// `pid`/`pid_start_time` are the VMM process's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    /// The VMM's hybrid-vsock Unix socket (`<state>/vsock.sock`).
    pub vsock_uds: PathBuf,
    /// The guest serial console log (`<state>/console.log`).
    pub console_log: PathBuf,
    /// How long a command waits for the agent to answer.
    #[serde(default = "default_agent_timeout_ms")]
    pub agent_timeout_ms: u64,
    /// The container finished creating in the guest (false while `create` still runs).
    #[serde(default)]
    pub created: bool,
    /// The host process relaying the init's stdio (0 = none), with its start time.
    #[serde(default)]
    pub relay_pid: i32,
    /// Start time of `relay_pid` (against PID reuse).
    #[serde(default)]
    pub relay_start_time: u64,
    /// The host directory the VM shares with its guest (`<state of the VM's booter>/shared`);
    /// this container's rootfs is bind-mounted at `<shared_dir>/<id>/rootfs`. Empty in records
    /// written before virtio-fs rootfs.
    #[serde(default)]
    pub shared_dir: PathBuf,
    /// The pod sandbox whose VM this container joined (None: it booted its own VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

fn default_agent_timeout_ms() -> u64 {
    30_000
}

impl ContainerRecord {
    /// Lifecycle status, computed from the live system: the init gone, a zombie or a reused
    /// PID means stopped; an exec FIFO still present means created; otherwise running.
    pub fn status(&self) -> Status {
        match proc_state(self.pid) {
            ProcState::Alive { start_time } if start_time == self.pid_start_time => {
                if self.exec_fifo.exists() {
                    Status::Created
                } else {
                    Status::Running
                }
            }
            _ => Status::Stopped,
        }
    }

    /// The OCI state (what hooks receive on stdin) with the given status.
    pub fn oci_state(&self, status: Status) -> OciState {
        OciState {
            oci_version: self.spec.version().clone(),
            id: self.id.clone(),
            status,
            pid: if status == Status::Stopped {
                0
            } else {
                self.pid
            },
            bundle: self.bundle.clone(),
            annotations: self.annotations.clone(),
            created: Some(self.created.clone()),
        }
    }
}

/// The directory tree under `--root`.
#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
}

impl StateStore {
    /// A store rooted at `root` (created on demand).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateStore { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of container `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Create the root directory (mode 0700) if missing.
    fn ensure_root(&self) -> Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| RuntimeError::io("create state root", &self.root, e))
    }

    /// Claim `id`: create its directory (the duplicate-id check) and lock it. The directory is
    /// removed again when the returned handle is dropped unless [`ContainerDir::keep`] is called.
    pub fn claim(&self, id: &str) -> Result<ContainerDir> {
        self.ensure_root()?;
        let dir = self.dir(id);
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists(id.to_string()))
            }
            Err(e) => return Err(RuntimeError::io("create container directory", &dir, e)),
        }
        let mut handle = ContainerDir {
            id: id.to_string(),
            dir: dir.clone(),
            lock: None,
            remove_on_drop: true,
        };
        handle.lock = Some(
            StateLock::acquire(&dir.join(LOCK_FILE))
                .map_err(|e| RuntimeError::io("lock", dir.join(LOCK_FILE), e))?,
        );
        Ok(handle)
    }

    /// Lock an existing container's directory; fails with "does not exist" if there is no
    /// directory or no state file (a create that has not finished, or was rolled back).
    pub fn lock(&self, id: &str) -> Result<ContainerDir> {
        let dir = self.dir(id);
        let lock_path = dir.join(LOCK_FILE);
        let lock = match StateLock::acquire(&lock_path) {
            Ok(lock) => lock,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(RuntimeError::NotFound(id.to_string()))
            }
            Err(e) => return Err(RuntimeError::io("lock", lock_path, e)),
        };
        let handle = ContainerDir {
            id: id.to_string(),
            dir,
            lock: Some(lock),
            remove_on_drop: false,
        };
        Ok(handle)
    }

    /// Read the record of `id` without locking.
    pub fn read(&self, id: &str) -> Result<ContainerRecord> {
        read_record(id, &self.dir(id))
    }

    /// Ids of every container directory under the root (sorted).
    pub fn ids(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RuntimeError::io("read state root", &self.root, e)),
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| super::id::validate_id(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// User name (or uid) owning the container's directory.
    pub fn owner(&self, id: &str) -> String {
        match std::fs::metadata(self.dir(id)) {
            Ok(meta) => {
                let uid = nix::unistd::Uid::from_raw(meta.uid());
                match nix::unistd::User::from_uid(uid) {
                    Ok(Some(user)) => user.name,
                    _ => uid.to_string(),
                }
            }
            Err(_) => String::new(),
        }
    }
}

fn read_record(id: &str, dir: &Path) -> Result<ContainerRecord> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(RuntimeError::NotFound(id.to_string()))
        }
        Err(e) => return Err(RuntimeError::io("read state", path, e)),
    };
    serde_json::from_slice(&text).map_err(|e| RuntimeError::CorruptState {
        id: id.to_string(),
        path,
        msg: e.to_string(),
    })
}

/// A locked container directory. Dropping it releases the lock (and, for a claim that was
/// never kept, removes the directory).
#[derive(Debug)]
pub struct ContainerDir {
    id: String,
    dir: PathBuf,
    lock: Option<StateLock>,
    remove_on_drop: bool,
}

impl ContainerDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Path of the exec FIFO.
    pub fn exec_fifo(&self) -> PathBuf {
        self.dir.join(EXEC_FIFO)
    }

    /// True if a state file exists (the container finished creating).
    pub fn has_state(&self) -> bool {
        self.dir.join(STATE_FILE).exists()
    }

    /// Read the record.
    pub fn read(&self) -> Result<ContainerRecord> {
        read_record(&self.id, &self.dir)
    }

    /// Replace the record atomically (write a temporary file, then rename over state.json).
    pub fn write(&self, record: &ContainerRecord) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self
            .dir
            .join(format!(".{STATE_FILE}.{}", std::process::id()));
        let json = serde_json::to_vec(record).map_err(|e| RuntimeError::CorruptState {
            id: self.id.clone(),
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&json)?;
            std::fs::rename(&tmp, &path)
        })();
        result.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            RuntimeError::io("write state", &path, e)
        })
    }

    /// Keep the directory when this handle is dropped (a create succeeded).
    pub fn keep(&mut self) {
        self.remove_on_drop = false;
    }

    /// Remove the directory and everything in it, then release the lock.
    pub fn remove(mut self) -> Result<()> {
        self.remove_on_drop = false;
        match remove_dir_unmounted(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::io("remove container directory", &self.dir, e)),
        }
    }
}

impl Drop for ContainerDir {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = remove_dir_unmounted(&self.dir);
        }
        self.lock.take();
    }
}

/// Remove `dir` recursively after lazily unmounting anything mounted below it (a VM's shared
/// directory holds bind mounts of container root filesystems: removing through them would
/// delete the containers' files). Nothing is removed while a mount is left.
fn remove_dir_unmounted(dir: &Path) -> std::io::Result<()> {
    crate::vm_launch::shared::detach_mounts_under(dir).map_err(std::io::Error::other)?;
    std::fs::remove_dir_all(dir)
}

/// Paths locked by this process (record locks do not exclude threads of one process).
static HELD: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
static RELEASED: Condvar = Condvar::new();

/// An exclusive lock on a container's lock file, across processes and threads.
#[derive(Debug)]
struct StateLock {
    path: PathBuf,
    _file: File,
}

impl StateLock {
    fn acquire(path: &Path) -> std::io::Result<StateLock> {
        {
            let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
            while held.get_or_insert_with(HashSet::new).contains(path) {
                held = RELEASED.wait(held).unwrap_or_else(|e| e.into_inner());
            }
            held.get_or_insert_with(HashSet::new)
                .insert(path.to_path_buf());
        }
        let release_in_process = || {
            let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(set) = held.as_mut() {
                set.remove(path);
            }
            RELEASED.notify_all();
        };
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
        {
            Ok(file) => file,
            Err(e) => {
                release_in_process();
                return Err(e);
            }
        };
        // SAFETY: an all-zero flock is a valid value; we fill in the fields we need.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        loop {
            match nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETLKW(&fl)) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    release_in_process();
                    return Err(e.into());
                }
            }
        }
        Ok(StateLock {
            path: path.to_path_buf(),
            _file: file,
        })
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        // Closing the file (after this) drops the record lock.
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = held.as_mut() {
            set.remove(&self.path);
        }
        RELEASED.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn record(id: &str, pid: i32, start: u64, fifo: PathBuf) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            isolation: Isolation::Namespace,
            pid,
            pid_start_time: start,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            cgroup_path: format!("/kvmbox/{id}"),
            annotations: HashMap::from([("k".into(), "v".into())]),
            created: "2026-12-01T00:00:00Z".into(),
            exec_fifo: fifo,
            spec: Spec::default(),
            vm: None,
        }
    }

    #[test]
    fn claim_creates_private_root_and_detects_duplicates() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path().join("state"));
        let mut c = store.claim("a").unwrap();
        let mode = std::fs::metadata(store.root()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        c.keep();
        drop(c);
        assert_eq!(
            store.claim("a").unwrap_err().to_string(),
            "container a already exists"
        );
        assert!(store.dir("a").is_dir());
    }

    #[test]
    fn dropped_claim_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path());
        let c = store.claim("gone").unwrap();
        assert!(c.path().is_dir());
        drop(c);
        assert!(!store.dir("gone").exists());
        assert!(store.ids().unwrap().is_empty());
    }

    #[test]
    fn write_is_atomic_and_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path());
        let mut c = store.claim("x").unwrap();
        c.keep();
        let rec = record("x", 1, 2, c.exec_fifo());
        c.write(&rec).unwrap();
        c.write(&rec).unwrap();
        let names: Vec<_> = std::fs::read_dir(c.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with('.')),
            "tmp left: {names:?}"
        );
        let back = store.read("x").unwrap();
        assert_eq!(back.pid, 1);
        assert_eq!(back.annotations["k"], "v");
        assert_eq!(back.isolation, Isolation::Namespace);
        assert_eq!(store.ids().unwrap(), vec!["x".to_string()]);
    }

    #[test]
    fn unknown_and_unfinished_containers_do_not_exist() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path());
        assert_eq!(
            store.lock("nope").unwrap_err().to_string(),
            "container nope does not exist"
        );
        assert!(store.read("nope").is_err());
        let mut c = store.claim("half").unwrap();
        c.keep();
        assert_eq!(
            store.read("half").unwrap_err().to_string(),
            "container half does not exist"
        );
    }

    #[test]
    fn corrupt_state_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path());
        let mut c = store.claim("bad").unwrap();
        c.keep();
        std::fs::write(c.path().join(STATE_FILE), "{").unwrap();
        let err = store.read("bad").unwrap_err().to_string();
        assert!(err.starts_with("container bad: corrupt state "), "{err}");
    }

    #[test]
    fn lock_excludes_other_threads() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path());
        let mut c = store.claim("l").unwrap();
        c.keep();
        let inside = Arc::new(AtomicBool::new(true));
        let (store2, inside2) = (store.clone(), inside.clone());
        let waiter = std::thread::spawn(move || {
            let _l = store2.lock("l").unwrap();
            // The first holder must have left its critical section.
            assert!(!inside2.load(Ordering::SeqCst));
        });
        std::thread::sleep(Duration::from_millis(50));
        inside.store(false, Ordering::SeqCst);
        drop(c);
        waiter.join().unwrap();
    }

    #[test]
    fn lock_excludes_other_processes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path());
        let mut c = store.claim("p").unwrap();
        c.keep();
        let lock_path = c.path().join(LOCK_FILE);
        // A separate process asks for the same record lock, non-blocking: it must fail.
        let script = format!(
            "import fcntl,sys\nf=open('{}','r+')\ntry:\n fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB)\n sys.exit(0)\nexcept OSError:\n sys.exit(3)",
            lock_path.display()
        );
        let status = std::process::Command::new("python3")
            .args(["-c", &script])
            .status();
        let Ok(status) = status else { return }; // no python3: nothing to check against
        assert_eq!(status.code(), Some(3));
        drop(c);
        let status = std::process::Command::new("python3")
            .args(["-c", &script])
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(0));
    }

    #[test]
    fn concurrent_writers_never_tear_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path());
        let mut c = store.claim("w").unwrap();
        c.keep();
        c.write(&record("w", 1, 1, c.exec_fifo())).unwrap();
        drop(c);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let c = store.lock("w").unwrap();
                        let mut rec = c.read().unwrap();
                        rec.pid += 1;
                        rec.annotations.insert(format!("t{t}"), format!("{i}"));
                        c.write(&rec).unwrap();
                        // Unlocked readers always see a whole file.
                        store.read("w").unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.read("w").unwrap().pid, 101);
    }

    #[test]
    fn status_is_computed_from_the_process_and_fifo() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("exec.fifo");
        let me = std::process::id() as i32;
        let start = super::super::process::start_time(me).unwrap();
        let rec = record("s", me, start, fifo.clone());
        assert_eq!(rec.status(), Status::Running);
        std::fs::write(&fifo, "").unwrap();
        assert_eq!(rec.status(), Status::Created);
        let reused = record("s", me, start + 1, fifo.clone());
        assert_eq!(reused.status(), Status::Stopped);
        let gone = record("s", i32::MAX, start, fifo.clone());
        assert_eq!(gone.status(), Status::Stopped);
        assert_eq!(gone.oci_state(Status::Stopped).pid, 0);

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let t = super::super::process::start_time(pid).unwrap_or(0);
        assert!(super::super::process::wait_exited(
            pid,
            Duration::from_secs(5)
        ));
        assert_eq!(record("z", pid, t, fifo).status(), Status::Stopped);
        child.wait().unwrap();
    }
}
