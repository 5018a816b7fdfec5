//! The file system a virtio-fs device serves: fuse-backend-rs's passthrough over one host
//! directory, behind a guard that enforces the share's policy before the passthrough runs.
//!
//! The guard refuses, whatever the share's mode:
//! - device nodes (`mknod` of a character or block device: `EPERM`) — the passthrough would
//!   create them as the VMM's user (root), handing the guest a host device node to leave behind;
//! - ioctls (`ENOTTY`), DAX mappings (`ENOSYS`: no DAX window), `bmap`, `poll`.
//!
//! It also keeps fuse-backend-rs 0.14's passthrough away from a double close: its `read` and
//! `write` wrap the handle's fd in a temporary `File` and, when `fcntl(F_SETFL, <flags from the
//! request>)` fails (an `O_PATH` handle, `O_DIRECT` where unsupported ...), return early and drop
//! that `File` — closing the handle's fd while the handle keeps the number, so a later open
//! reuses it and the guest's handle then reaches an unrelated VMM file (found by the fuzzer).
//! The guard refuses `O_PATH` opens (`EINVAL`; a FUSE client never sends them) and passes each
//! handle's own open flags to `read`/`write`, so the passthrough never calls that `fcntl`.
//!
//! And it clamps the guest-supplied buffer sizes the passthrough allocates up front
//! (`Vec::with_capacity(size)`): `getxattr`/`listxattr` to 64 KiB (Linux's own limit), `readdir`
//! to 1 MiB — a guest asking for 4 GiB must not make the VMM allocate (or abort on) 4 GiB.
//!
//! On a read-only share it also refuses with `EROFS` every request that would change the
//! directory: `setattr`, `create`, `mknod`, `mkdir`, `symlink`, `link`, `unlink`, `rmdir`,
//! `rename`, `write`, `fallocate`, `setxattr`, `removexattr`, `open` for writing or with
//! `O_TRUNC`, and `access` with `W_OK`. Everything else is delegated to the passthrough.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::vmm::config::FsCache;
use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

/// Largest xattr value or name list Linux has (XATTR_SIZE_MAX, XATTR_LIST_MAX).
const XATTR_MAX: u32 = 64 * 1024;
/// Largest directory listing buffer (one FUSE request, 1 MiB).
const READDIR_MAX: u32 = 1 << 20;

/// Inode number type of the passthrough (u64).
type Inode = u64;
/// File handle type of the passthrough (u64).
type Handle = u64;

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

/// A host directory served to the guest: the passthrough plus the share policy.
pub struct SharedDirFs {
    inner: PassthroughFs<()>,
    read_only: bool,
    /// Open flags of each live handle, as the passthrough recorded them.
    handle_flags: Mutex<HashMap<Handle, u32>>,
}

impl SharedDirFs {
    /// Serve `root` (an existing directory). The root inode is opened now, so a bad path fails
    /// when the VM is built rather than when the guest mounts.
    pub fn new(root: &Path, read_only: bool, cache: FsCache) -> io::Result<Arc<Self>> {
        let root_dir = root
            .to_str()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path is not UTF-8"))?
            .to_string();
        let (cache_policy, timeout) = match cache {
            FsCache::Auto => (CachePolicy::Auto, Duration::from_secs(1)),
            // KEEP_CACHE on open: the guest keeps file pages across opens.
            FsCache::Always => (CachePolicy::Always, Duration::from_secs(3600)),
        };
        let cfg = Config {
            root_dir,
            // Import the root at INIT too (a guest remount starts afresh).
            do_import: true,
            xattr: true,
            cache_policy,
            writeback: false,
            // Inodes are kept as O_PATH fds, never as file handles: the guest never names a
            // host file handle (no open_by_handle_at on guest input).
            inode_file_handles: false,
            entry_timeout: timeout,
            attr_timeout: timeout,
            ..Config::default()
        };
        let inner = PassthroughFs::<()>::new(cfg)?;
        // The import sets umask 0 process-wide; requests get it per thread (see `umask`).
        super::umask::restoring(|| inner.import())?;
        Ok(Arc::new(SharedDirFs {
            inner,
            read_only,
            handle_flags: Mutex::new(HashMap::new()),
        }))
    }

    /// Whether writes are refused with `EROFS`.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<Handle, u32>> {
        self.handle_flags.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The flags `handle` was opened with, else `requested` (an unknown handle fails in the
    /// passthrough before its flags matter).
    fn open_flags(&self, handle: Handle, requested: u32) -> u32 {
        self.handles().get(&handle).copied().unwrap_or(requested)
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(erofs())
        } else {
            Ok(())
        }
    }
}

/// Whether open `flags` ask for write access or truncation.
fn opens_for_write(flags: u32) -> bool {
    let flags = flags as i32;
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl FileSystem for SharedDirFs {
    type Inode = Inode;
    type Handle = Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // The passthrough does not ask for big requests; without MAX_PAGES the kernel sends at
        // most 32 pages per request and without BIG_WRITES 4 KiB per write. The server sizes
        // its limits (1 MiB, 256 pages) when these are on.
        let want = self.inner.init(capable)?;
        Ok(want | (capable & (FsOptions::MAX_PAGES | FsOptions::BIG_WRITES)))
    }

    fn destroy(&self) {
        self.handles().clear();
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Inode,
        attr: stat64,
        handle: Option<Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        self.inner.mknod(ctx, inode, name, mode, rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner.mkdir(ctx, parent, name, mode, umask)
    }

    fn unlink(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions, Option<u32>)> {
        if flags as i32 & libc::O_PATH != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if opens_for_write(flags) {
            self.writable()?;
        }
        let opened = self.inner.open(ctx, inode, flags, fuse_flags)?;
        if let Some(handle) = opened.0 {
            self.handles().insert(handle, flags);
        }
        Ok(opened)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Handle>, OpenOptions, Option<u32>)> {
        self.writable()?;
        if args.flags as i32 & libc::O_PATH != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let created = self.inner.create(ctx, parent, name, args)?;
        if let Some(handle) = created.1 {
            self.handles().insert(handle, args.flags);
        }
        Ok(created)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let flags = self.open_flags(handle, flags);
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        let flags = self.open_flags(handle, flags);
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let released =
            self.inner
                .release(ctx, inode, flags, handle, flush, flock_release, lock_owner);
        if released.is_ok() {
            self.handles().remove(&handle);
        }
        released
    }

    fn statfs(&self, ctx: &Context, inode: Inode) -> io::Result<statvfs64> {
        let mut st = self.inner.statfs(ctx, inode)?;
        if self.read_only {
            st.f_flag |= libc::ST_RDONLY;
        }
        Ok(st)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size.min(XATTR_MAX))
    }

    fn listxattr(&self, ctx: &Context, inode: Inode, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size.min(XATTR_MAX))
    }

    fn removexattr(&self, ctx: &Context, inode: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size.min(READDIR_MAX), offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdirplus(ctx, inode, handle, size.min(READDIR_MAX), offset, add_entry)
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: Inode, mask: u32) -> io::Result<()> {
        if mask as i32 & libc::W_OK != 0 {
            self.writable()?;
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_intent_of_open_flags() {
        assert!(!opens_for_write(libc::O_RDONLY as u32));
        assert!(!opens_for_write(
            (libc::O_RDONLY | libc::O_DIRECTORY) as u32
        ));
        assert!(opens_for_write(libc::O_WRONLY as u32));
        assert!(opens_for_write(libc::O_RDWR as u32));
        assert!(opens_for_write((libc::O_RDONLY | libc::O_TRUNC) as u32));
    }

    #[test]
    fn missing_directory_fails_at_creation() {
        let dir = tempfile::tempdir().unwrap();
        assert!(SharedDirFs::new(&dir.path().join("missing"), false, FsCache::Auto).is_err());
        assert!(SharedDirFs::new(dir.path(), true, FsCache::Always)
            .unwrap()
            .read_only());
    }
}
