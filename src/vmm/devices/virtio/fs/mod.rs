//! virtio-fs (device id 26): a host directory shared with the guest through an in-process FUSE
//! server (fuse-backend-rs 0.14: `api::server::Server` over `passthrough::PassthroughFs`).
//!
//! # Guest view
//! Two queues: hiprio (0: FORGET, BATCH_FORGET, INTERRUPT) and one request queue (1). No
//! notification queue, no DAX window. Config space: `tag` (36 bytes, NUL padded) and
//! `num_request_queues` = 1. The guest mounts it with `mount -t virtiofs <tag> <dir>`.
//!
//! # Threading
//! Requests are served synchronously on the VMM's event-loop thread, like virtio-blk's I/O:
//! every passthrough call is a plain syscall on a local directory (`openat`, `pread`, `getdents`
//! ... bounded by the 1 MiB request size), so a request costs about what a virtio-blk request
//! costs, and one thread keeps the device free of locking. The price: a request that blocks on
//! the host (a share on a hung network file system, a huge directory) stalls the other devices'
//! queues until it returns. Moving `serve` to a worker thread is the upgrade path if shares on
//! slow file systems matter. The passthrough switches the *thread's* effective uid/gid to the
//! guest caller's for creating calls (raw `setresuid`, thread-scoped), so only this thread
//! ever changes credentials, and only for the duration of a request.
//!
//! # Threat model (the guest is hostile)
//! - *Descriptor chains and FUSE framing*: see [`request`] — every chain is checked before the
//!   server reads it; a malformed request gets an error reply or length 0, never a panic.
//!   Queue-level errors (avail index far ahead, head index beyond the queue) stop the device
//!   until the driver resets it (`DEVICE_NEEDS_RESET`), as for the other devices.
//! - *Escaping the directory*: the guest names files only as (parent inode, name). The
//!   passthrough keeps each inode as an `O_PATH` fd and resolves a name with `openat(parent,
//!   name, O_PATH | O_NOFOLLOW)`: names containing `/` are refused, symlinks are never followed
//!   on the host (the guest kernel reads the link with READLINK and resolves it in its own
//!   namespace, i.e. inside the mount), `..` of the root resolves to the root itself (`..` of
//!   any other directory is that directory's parent, inside the tree). Data opens go through
//!   `/proc/self/fd/N` of the inode's own fd and only for regular files and directories (a
//!   symlink, socket or device node cannot be opened for I/O). Inodes are fds, not file
//!   handles: the guest never passes a handle to `open_by_handle_at`. Not covered: a host
//!   process that moves a directory out of the share while the guest holds it (the guest keeps
//!   reaching it through its fd) and mounts the host makes inside the share.
//! - *What the guest can leave behind*: files are created with the guest caller's uid/gid
//!   (the VMM runs as root), so setuid files and symlinks pointing anywhere can appear in the
//!   directory; device nodes are refused ([`shared_dir`]). Host software must treat the
//!   directory as untrusted content, as with any container rootfs.
//! - *Resource use*: every inode the guest looks up holds an fd until the guest forgets it, and
//!   every open file another one; the VMM's `RLIMIT_NOFILE` bounds them (the guest then gets
//!   `EMFILE`). Request bodies are bounded by the bytes the guest supplied (at most ~1 MiB).
//! - *Umask*: the passthrough needs umask 0 (guest modes apply exactly) and would set it
//!   process-wide; [`umask`] confines it to the serving thread, for the duration of a batch.

pub mod bridge;
pub mod request;
pub mod shared_dir;
pub mod umask;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use fuse_virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use self::bridge::{Memory17, Queue17};
use self::request::{FsServer, Outcome};
use self::shared_dir::SharedDirFs;
use super::{ActivateContext, VirtioDevice, VirtioInterrupt};
use crate::vmm::config::FsCache;

/// virtio device id of a file system device.
pub const VIRTIO_ID_FS: u32 = 26;
/// Size of each queue (a 1 MiB request needs ~260 descriptors; no indirect descriptors).
pub const QUEUE_SIZE: u16 = 1024;
/// Index of the high-priority queue.
pub const HIPRIO_QUEUE: usize = 0;
/// Index of the (only) request queue.
pub const REQUEST_QUEUE: usize = 1;
/// Length of the tag in the config space.
pub const TAG_LEN: usize = 36;
/// Config space: tag + num_request_queues (u32).
const CONFIG_LEN: usize = TAG_LEN + 4;

/// Why a virtio-fs device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty or longer than 36 bytes.
    #[error("virtio-fs tag {0:?}: must be 1..=36 bytes without NUL")]
    BadTag(String),
    /// The shared path is not a directory.
    #[error("virtio-fs share {}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// The passthrough could not open the directory.
    #[error("virtio-fs share {}: {source}", path.display())]
    Open {
        /// The shared directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// The state of an activated device.
struct Active {
    /// Keeps the 0.18 mappings alive for `alias`.
    _memory: GuestMemoryMmap,
    alias: Memory17,
    queues: Vec<Queue17>,
    interrupt: Arc<VirtioInterrupt>,
}

/// Request counters (for logs and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Requests handed to the FUSE server.
    pub served: u64,
    /// Chains refused before the server saw them (length 0).
    pub bad_chains: u64,
    /// Requests answered with an error by the device itself (bad header, server error).
    pub refused: u64,
}

/// A virtio-fs device sharing one host directory.
pub struct Fs {
    tag: String,
    path: PathBuf,
    fs: Arc<SharedDirFs>,
    server: FsServer,
    queue_sizes: [u16; 2],
    config: [u8; CONFIG_LEN],
    active: Option<Active>,
    broken: bool,
    stats: FsStats,
}

impl Fs {
    /// Share `path` (a directory) under `tag` with the default caching ([`FsCache::Auto`]);
    /// `read_only` refuses every change with EROFS.
    pub fn new(tag: &str, path: &Path, read_only: bool) -> Result<Self, FsError> {
        Self::with_cache(tag, path, read_only, FsCache::Auto)
    }

    /// [`Fs::new`] with the guest's caching chosen by `cache`.
    pub fn with_cache(
        tag: &str,
        path: &Path,
        read_only: bool,
        cache: FsCache,
    ) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
            return Err(FsError::BadTag(tag.to_string()));
        }
        if !path.is_dir() {
            return Err(FsError::NotADirectory(path.to_path_buf()));
        }
        let fs = SharedDirFs::new(path, read_only, cache).map_err(|source| FsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = [0u8; CONFIG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Fs {
            tag: tag.to_string(),
            path: path.to_path_buf(),
            server: Server::new(fs.clone()),
            fs,
            queue_sizes: [QUEUE_SIZE, QUEUE_SIZE],
            config,
            active: None,
            broken: false,
            stats: FsStats::default(),
        })
    }

    /// The mount tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Request counters.
    pub fn stats(&self) -> FsStats {
        self.stats
    }

    /// Serve every available chain of queue `index`; a queue-level error marks the device
    /// broken.
    fn drain(&mut self, index: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = active.queues.get_mut(index) else {
            return;
        };
        let mem = &active.alias;
        let _umask = umask::ZeroUmask::set();
        let mut served = 0usize;
        let error = loop {
            let chain = match queue.iter(mem) {
                Ok(mut it) => match it.next() {
                    Some(c) => c,
                    None => break None,
                },
                Err(e) => break Some(format!("available ring: {e:?}")),
            };
            let head = chain.head_index();
            let (outcome, used) = request::serve(&self.server, mem, chain);
            match &outcome {
                Outcome::Served => self.stats.served += 1,
                Outcome::BadChain(why) => {
                    self.stats.bad_chains += 1;
                    tracing::debug!(tag = %self.tag, "virtio-fs: bad chain: {why}");
                }
                Outcome::Refused(errno, why) => {
                    self.stats.refused += 1;
                    tracing::debug!(tag = %self.tag, errno, "virtio-fs: request refused: {why}");
                }
            }
            if let Err(e) = queue.add_used(mem, head, used) {
                break Some(format!("used ring: {e:?}"));
            }
            served += 1;
        };
        if served > 0 && queue.needs_notification(mem).unwrap_or(true) {
            if let Err(e) = active.interrupt.signal_used_queue() {
                tracing::warn!("virtio-fs: cannot raise the queue interrupt: {e}");
            }
        }
        if let Some(e) = error {
            tracing::warn!(tag = %self.tag, path = %self.path.display(), "virtio-fs stopped: {e}");
            self.broken = true;
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::block::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), String> {
        if ctx.queues.len() != 2 {
            return Err(format!(
                "virtio-fs needs 2 queues, got {}",
                ctx.queues.len()
            ));
        }
        let alias = bridge::alias_memory(&ctx.memory).map_err(|e| e.to_string())?;
        let queues = ctx
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| bridge::mirror_queue(q, &alias, i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        self.active = Some(Active {
            _memory: ctx.memory,
            alias,
            queues,
            interrupt: ctx.interrupt,
        });
        self.broken = false;
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        if self.broken || (index != HIPRIO_QUEUE && index != REQUEST_QUEUE) {
            return;
        }
        self.drain(index);
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
        // Close every inode and file the guest had open; the next INIT imports the root again.
        umask::restoring(|| fuse_backend_rs::api::filesystem::FileSystem::destroy(&*self.fs));
    }

    fn needs_reset(&self) -> bool {
        self.broken
    }
}

#[cfg(test)]
mod tests;
