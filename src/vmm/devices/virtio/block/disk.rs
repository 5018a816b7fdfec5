//! The raw-file backend of virtio-blk: a host file (or block device) seen as 512-byte sectors,
//! locked against a second writer, moved to and from guest memory only through vm-memory.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Size of a virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;
/// `log2(SECTOR_SIZE)`.
pub const SECTOR_SHIFT: u32 = 9;
/// Length of the GET_ID answer.
pub const DISK_ID_LEN: usize = 20;

/// Why a disk image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// open(2) failed.
    #[error("disk {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The image is in use by another writer (or, when opening for writing, any user).
    #[error("disk {path}: locked by another process ({source})")]
    Locked {
        /// The image.
        path: PathBuf,
        /// The errno of flock(2).
        source: nix::Error,
    },
    /// The size could not be determined.
    #[error("disk {path}: cannot determine its size: {source}")]
    Size {
        /// The image.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A failed transfer between the disk and guest memory.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Seeking the image failed.
    #[error("seek: {0}")]
    Seek(std::io::Error),
    /// vm-memory refused the guest range or the file I/O failed or was short.
    #[error("guest memory / file I/O: {0}")]
    Memory(vm_memory::GuestMemoryError),
    /// fdatasync failed.
    #[error("flush: {0}")]
    Flush(std::io::Error),
}

/// An open disk image.
#[derive(Debug)]
pub struct Disk {
    file: Flock<File>,
    path: PathBuf,
    read_only: bool,
    capacity_sectors: u64,
    id: [u8; DISK_ID_LEN],
}

impl Disk {
    /// Open `path` (read-only when `read_only`), taking a shared (read-only) or exclusive
    /// (read-write) flock so two VMs never write the same image.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let arg = if read_only {
            FlockArg::LockSharedNonblock
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let mut file = Flock::lock(file, arg).map_err(|(_, source)| DiskError::Locked {
            path: path.to_path_buf(),
            source,
        })?;
        let size_err = |source| DiskError::Size {
            path: path.to_path_buf(),
            source,
        };
        // Works for regular files and block devices alike.
        let size = file.seek(SeekFrom::End(0)).map_err(size_err)?;
        let meta = file.metadata().map_err(size_err)?;
        Ok(Disk {
            file,
            path: path.to_path_buf(),
            read_only,
            capacity_sectors: size >> SECTOR_SHIFT,
            id: disk_id(meta.dev(), meta.ino()),
        })
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the guest may only read.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Capacity in 512-byte sectors (a trailing partial sector is not exposed).
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// The 20-byte GET_ID answer.
    pub fn id(&self) -> &[u8; DISK_ID_LEN] {
        &self.id
    }

    /// Whether `len` bytes starting at `sector` lie inside the disk; returns the byte offset.
    /// Overflow-safe for any guest-supplied values.
    pub fn byte_range(&self, sector: u64, len: u64) -> Option<u64> {
        let sectors = len.div_ceil(SECTOR_SIZE);
        let end = sector.checked_add(sectors)?;
        if end > self.capacity_sectors {
            return None;
        }
        sector.checked_mul(SECTOR_SIZE)
    }

    fn seek(&mut self, offset: u64) -> Result<(), TransferError> {
        self.file
            .seek(SeekFrom::Start(offset))
            .map(|_| ())
            .map_err(TransferError::Seek)
    }

    /// Read the disk at `offset` into the guest `segments`, in order. The caller checked the
    /// range with [`Disk::byte_range`].
    pub fn read_to_guest(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        segments: &[(GuestAddress, u32)],
    ) -> Result<(), TransferError> {
        self.seek(offset)?;
        for &(addr, len) in segments {
            mem.read_exact_volatile_from(addr, &mut *self.file, len as usize)
                .map_err(TransferError::Memory)?;
        }
        Ok(())
    }

    /// Write the guest `segments`, in order, to the disk at `offset`. The caller checked the
    /// range with [`Disk::byte_range`] and that the disk is writable.
    pub fn write_from_guest(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        segments: &[(GuestAddress, u32)],
    ) -> Result<(), TransferError> {
        self.seek(offset)?;
        for &(addr, len) in segments {
            mem.write_all_volatile_to(addr, &mut *self.file, len as usize)
                .map_err(TransferError::Memory)?;
        }
        Ok(())
    }

    /// Make written data durable (fdatasync).
    pub fn flush(&mut self) -> Result<(), TransferError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(TransferError::Flush)
    }
}

/// A stable id for the image: "kvmbox-" and its device and inode numbers in hex, NUL padded.
fn disk_id(dev: u64, ino: u64) -> [u8; DISK_ID_LEN] {
    let text = format!("kvmbox-{dev:x}-{ino:x}");
    let mut id = [0u8; DISK_ID_LEN];
    let n = text.len().min(DISK_ID_LEN);
    id[..n].copy_from_slice(&text.as_bytes()[..n]);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(bytes: usize) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(bytes as u64).unwrap();
        f
    }

    #[test]
    fn capacity_ignores_a_partial_last_sector() {
        let f = image(4 * 512 + 100);
        let d = Disk::open(f.path(), true).unwrap();
        assert_eq!(d.capacity_sectors(), 4);
        assert!(d.read_only());
        assert!(d.id().starts_with(b"kvmbox-"));
    }

    #[test]
    fn byte_range_is_overflow_safe() {
        let f = image(8 * 512);
        let d = Disk::open(f.path(), true).unwrap();
        assert_eq!(d.byte_range(0, 8 * 512), Some(0));
        assert_eq!(d.byte_range(7, 512), Some(7 * 512));
        assert_eq!(d.byte_range(7, 1024), None);
        assert_eq!(d.byte_range(8, 0), Some(8 * 512));
        assert_eq!(d.byte_range(9, 0), None);
        assert_eq!(d.byte_range(u64::MAX, 512), None);
        assert_eq!(d.byte_range(u64::MAX / 512 + 1, 0), None);
        assert_eq!(d.byte_range(0, u64::MAX), None);
    }

    #[test]
    fn a_writer_excludes_other_users() {
        let f = image(512);
        let w = Disk::open(f.path(), false).unwrap();
        assert!(matches!(
            Disk::open(f.path(), true),
            Err(DiskError::Locked { .. })
        ));
        drop(w);
        let r1 = Disk::open(f.path(), true).unwrap();
        let _r2 = Disk::open(f.path(), true).unwrap();
        let err = Disk::open(f.path(), false).unwrap_err();
        assert!(err.to_string().contains("locked"), "{err}");
        drop(r1);
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = Disk::open(Path::new("/nonexistent/disk.img"), false).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");
    }
}
