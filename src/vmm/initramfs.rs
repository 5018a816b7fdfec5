//! A cpio "newc" archive writer for initramfs images, built from in-memory entries or host
//! files without any external tool.

use std::io::{self, Write};
use std::path::Path;

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// One archive member. Paths are relative to the archive root ("bin/busybox", no leading '/').
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory with permission bits `mode`.
    Dir {
        /// Path.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Path.
        path: String,
        /// Link target.
        target: String,
    },
    /// A character device node.
    CharDev {
        /// Path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Device major.
        major: u32,
        /// Device minor.
        minor: u32,
    },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. }
            | Entry::File { path, .. }
            | Entry::Symlink { path, .. }
            | Entry::CharDev { path, .. } => path,
        }
    }
}

/// An initramfs under construction.
#[derive(Debug, Default, Clone)]
pub struct Initramfs {
    entries: Vec<Entry>,
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add an entry.
    pub fn add(&mut self, entry: Entry) -> &mut Self {
        self.entries.push(entry);
        self
    }

    /// Add a directory (mode 0755).
    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.add(Entry::Dir {
            path: path.trim_start_matches('/').to_string(),
            mode: 0o755,
        })
    }

    /// Add a regular file from bytes.
    pub fn file(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) -> &mut Self {
        self.add(Entry::File {
            path: path.trim_start_matches('/').to_string(),
            mode,
            data: data.into(),
        })
    }

    /// Add a regular file copied from the host (keeps its permission bits).
    pub fn host_file(&mut self, path: &str, host: &Path) -> io::Result<&mut Self> {
        use std::os::unix::fs::PermissionsExt;
        let data = std::fs::read(host)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", host.display())))?;
        let mode = std::fs::metadata(host)?.permissions().mode() & 0o7777;
        Ok(self.file(path, mode, data))
    }

    /// Add a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.add(Entry::Symlink {
            path: path.trim_start_matches('/').to_string(),
            target: target.to_string(),
        })
    }

    /// The entries so far.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Write the archive (entries, then the trailer) to `out`.
    pub fn write_to<W: Write>(&self, mut out: W) -> io::Result<()> {
        let mut written = 0u64;
        for (i, e) in self.entries.iter().enumerate() {
            let ino = i as u32 + 1;
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match e {
                Entry::Dir { mode, .. } => (S_IFDIR | (mode & 0o7777), &[], (0, 0)),
                Entry::File { mode, data, .. } => (S_IFREG | (mode & 0o7777), data, (0, 0)),
                Entry::Symlink { target, .. } => (S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
                Entry::CharDev {
                    mode, major, minor, ..
                } => (S_IFCHR | (mode & 0o7777), &[], (*major, *minor)),
            };
            let nlink = if matches!(e, Entry::Dir { .. }) { 2 } else { 1 };
            written += write_record(&mut out, ino, mode, nlink, rdev, e.path(), data)?;
        }
        written += write_record(&mut out, 0, 0, 1, (0, 0), "TRAILER!!!", &[])?;
        // Pad the archive to a 512-byte block like cpio(1) does.
        let pad = (512 - written % 512) % 512;
        out.write_all(&vec![0u8; pad as usize])?;
        out.flush()
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }
}

fn pad4(n: u64) -> usize {
    ((4 - n % 4) % 4) as usize
}

fn write_record<W: Write>(
    out: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> io::Result<u64> {
    if name.is_empty() || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid cpio member name {name:?}"),
        ));
    }
    let filesize = u32::try_from(data.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name}: file larger than 4 GiB"),
        )
    })?;
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{filesize:08x}\
         {maj:08x}{min:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        maj = 0,
        min = 0,
        rmaj = rdev.0,
        rmin = rdev.1,
        namesize = name.len() + 1,
        check = 0,
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let head_len = header.len() as u64 + name.len() as u64 + 1;
    let p1 = pad4(head_len);
    out.write_all(&[0u8; 3][..p1])?;
    out.write_all(data)?;
    let p2 = pad4(data.len() as u64);
    out.write_all(&[0u8; 3][..p2])?;
    Ok(head_len + p1 as u64 + data.len() as u64 + p2 as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal newc reader for the tests: (name, mode, data, rdevmajor, rdevminor).
    fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>, u32, u32)> {
        let mut out = Vec::new();
        let total = b.len();
        loop {
            assert_eq!(&b[..6], b"070701", "bad magic at {}", total - b.len());
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, rmaj, rmin, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name = std::str::from_utf8(&b[110..110 + namesize as usize - 1])
                .unwrap()
                .to_string();
            assert_eq!(b[110 + namesize as usize - 1], 0);
            let data_start = 110 + namesize as usize + pad4(110 + namesize as u64);
            assert_eq!(data_start % 4, 0);
            let data = b[data_start..data_start + size as usize].to_vec();
            let next = data_start + size as usize + pad4(size as u64);
            if name == "TRAILER!!!" {
                assert!(b[next..].iter().all(|x| *x == 0));
                return out;
            }
            out.push((name, mode, data, rmaj, rmin));
            b = &b[next..];
        }
    }

    #[test]
    fn round_trips_all_entry_kinds() {
        let mut fs = Initramfs::new();
        fs.dir("/bin")
            .file("init", 0o755, b"#!/bin/sh\necho hi\n".to_vec())
            .file("empty", 0o644, Vec::new())
            .symlink("bin/sh", "busybox")
            .add(Entry::CharDev {
                path: "dev/console".into(),
                mode: 0o600,
                major: 5,
                minor: 1,
            });
        let bytes = fs.to_bytes();
        assert_eq!(bytes.len() % 512, 0);
        let parsed = parse(&bytes);
        assert_eq!(parsed.len(), 5);
        assert_eq!(parsed[0].0, "bin");
        assert_eq!(parsed[0].1, S_IFDIR | 0o755);
        assert_eq!(parsed[1].0, "init");
        assert_eq!(parsed[1].1, S_IFREG | 0o755);
        assert_eq!(parsed[1].2, b"#!/bin/sh\necho hi\n");
        assert_eq!(parsed[2].2, b"");
        assert_eq!(
            (parsed[3].1, parsed[3].2.as_slice()),
            (S_IFLNK | 0o777, &b"busybox"[..])
        );
        assert_eq!(
            (parsed[4].1, parsed[4].3, parsed[4].4),
            (S_IFCHR | 0o600, 5, 1)
        );
    }

    #[test]
    fn every_name_length_keeps_alignment() {
        let mut fs = Initramfs::new();
        for n in 1..9 {
            fs.file(&"x".repeat(n), 0o644, vec![7u8; n]);
        }
        let parsed = parse(&fs.to_bytes());
        assert_eq!(parsed.len(), 8);
        for (i, p) in parsed.iter().enumerate() {
            assert_eq!(p.2, vec![7u8; i + 1]);
        }
    }

    #[test]
    fn host_file_keeps_mode_and_rejects_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"data").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o750)).unwrap();
        let mut fs = Initramfs::new();
        fs.host_file("f", &p).unwrap();
        assert_eq!(
            fs.entries()[0],
            Entry::File {
                path: "f".into(),
                mode: 0o750,
                data: b"data".to_vec()
            }
        );
        assert!(fs.host_file("g", &dir.path().join("missing")).is_err());
    }

    #[test]
    fn empty_name_is_rejected() {
        let mut fs = Initramfs::new();
        fs.file("", 0o644, Vec::new());
        assert!(fs.write_to(Vec::new()).is_err());
    }
}
