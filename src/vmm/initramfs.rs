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

    /// The smallest busybox userland: /bin, /dev (with /dev/console), /proc and /sys,
    /// `busybox` (copied from the host) as /bin/busybox and /bin/sh, and `init` as /init.
    /// Callers add their own files.
    pub fn busybox(busybox: &Path, init: &str) -> io::Result<Self> {
        let mut fs = Self::new();
        fs.dir("bin").dir("dev").dir("proc").dir("sys");
        fs.add(Entry::CharDev {
            path: "dev/console".into(),
            mode: 0o600,
            major: 5,
            minor: 1,
        });
        fs.host_file("bin/busybox", busybox)?;
        fs.symlink("bin/sh", "busybox");
        fs.file("init", 0o755, init.to_string());
        Ok(fs)
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
    pub fn write_to<W: Write>(&self, out: W) -> io::Result<()> {
        let mut w = CpioWriter::new(out);
        for (i, e) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match e {
                Entry::Dir { mode, .. } => (S_IFDIR | (mode & 0o7777), &[], (0, 0)),
                Entry::File { mode, data, .. } => (S_IFREG | (mode & 0o7777), data, (0, 0)),
                Entry::Symlink { target, .. } => (S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
                Entry::CharDev {
                    mode, major, minor, ..
                } => (S_IFCHR | (mode & 0o7777), &[], (*major, *minor)),
            };
            let header = CpioHeader {
                ino: i as u32 + 1,
                mode,
                nlink: if matches!(e, Entry::Dir { .. }) { 2 } else { 1 },
                rdev,
                ..CpioHeader::default()
            };
            w.entry(e.path().as_bytes(), &header, data)?;
        }
        w.finish()?.flush()
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

/// The metadata of one newc member (the name and size are given separately).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpioHeader {
    /// Inode number; members sharing one (with `nlink` >= 2) are hard links.
    pub ino: u32,
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: u32,
    /// Device number (major, minor) of a device node.
    pub rdev: (u32, u32),
}

/// A streaming cpio newc writer: members go straight to `out` (file data can be copied from a
/// reader), then [`CpioWriter::finish`] adds the trailer and pads to 512 bytes.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// Start an archive on `out`.
    pub fn new(out: W) -> Self {
        CpioWriter { out, written: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn header(&mut self, name: &[u8], h: &CpioHeader, filesize: u64) -> io::Result<()> {
        if name.is_empty() || name.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "invalid cpio member name {:?}",
                    String::from_utf8_lossy(name)
                ),
            ));
        }
        let filesize = u32::try_from(filesize).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: file of 4 GiB or more (cpio newc limit)",
                    String::from_utf8_lossy(name)
                ),
            )
        })?;
        let header = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{filesize:08x}\
             {maj:08x}{min:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
            ino = h.ino,
            mode = h.mode,
            uid = h.uid,
            gid = h.gid,
            nlink = h.nlink,
            mtime = h.mtime,
            maj = 0,
            min = 0,
            rmaj = h.rdev.0,
            rmin = h.rdev.1,
            namesize = name.len() + 1,
            check = 0,
        );
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name)?;
        self.out.write_all(&[0])?;
        let head_len = header.len() as u64 + name.len() as u64 + 1;
        let p = pad4(head_len);
        self.out.write_all(&[0u8; 3][..p])?;
        self.written += head_len + p as u64;
        Ok(())
    }

    fn data_pad(&mut self, len: u64) -> io::Result<()> {
        let p = pad4(len);
        self.out.write_all(&[0u8; 3][..p])?;
        self.written += len + p as u64;
        Ok(())
    }

    /// Add a member whose data is `data` (empty for directories and device nodes, the target
    /// for symlinks).
    pub fn entry(&mut self, name: &[u8], h: &CpioHeader, data: &[u8]) -> io::Result<()> {
        self.header(name, h, data.len() as u64)?;
        self.out.write_all(data)?;
        self.data_pad(data.len() as u64)
    }

    /// Add a member whose `size` bytes of data are copied from `data`; fails if `data` ends
    /// early (e.g. the file shrank while being packed).
    pub fn entry_from_reader(
        &mut self,
        name: &[u8],
        h: &CpioHeader,
        size: u64,
        data: impl io::Read,
    ) -> io::Result<()> {
        self.header(name, h, size)?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: {copied} bytes read, {size} expected (file changed while packing)",
                    String::from_utf8_lossy(name)
                ),
            ));
        }
        self.data_pad(size)
    }

    /// Write the trailer, pad to a 512-byte block like cpio(1) does; returns `out`.
    pub fn finish(mut self) -> io::Result<W> {
        let trailer = CpioHeader {
            nlink: 1,
            ..CpioHeader::default()
        };
        self.entry(b"TRAILER!!!", &trailer, &[])?;
        let pad = (512 - self.written % 512) % 512;
        self.out.write_all(&vec![0u8; pad as usize])?;
        Ok(self.out)
    }
}

/// One member read back by [`parse_newc`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioMember {
    /// Member name.
    pub name: String,
    /// Metadata.
    pub header: CpioHeader,
    /// File data (symlink target for symlinks).
    pub data: Vec<u8>,
}

/// Read back one or more concatenated newc archives (as the kernel unpacks an initramfs):
/// every member in order, the `TRAILER!!!` members included. For tests and diagnostics.
pub fn parse_newc(mut b: &[u8]) -> io::Result<Vec<CpioMember>> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut out = Vec::new();
    loop {
        // Zero padding between archives (the kernel skips it too).
        while b.len() >= 4 && b[..4] == [0, 0, 0, 0] {
            b = &b[4..];
        }
        if b.iter().all(|x| *x == 0) {
            return Ok(out);
        }
        if b.len() < 110 || &b[..6] != b"070701" {
            return Err(bad(format!("no newc magic after member {}", out.len())));
        }
        let field = |i: usize| -> io::Result<u32> {
            let s = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i])
                .map_err(|_| bad("non-ASCII header".into()))?;
            u32::from_str_radix(s, 16).map_err(|_| bad(format!("bad header field {s:?}")))
        };
        let header = CpioHeader {
            ino: field(0)?,
            mode: field(1)?,
            uid: field(2)?,
            gid: field(3)?,
            nlink: field(4)?,
            mtime: field(5)?,
            rdev: (field(9)?, field(10)?),
        };
        let size = field(6)? as usize;
        let namesize = field(11)? as usize;
        let name_end = 110 + namesize;
        if namesize == 0 || b.len() < name_end || b[name_end - 1] != 0 {
            return Err(bad(format!("bad name after member {}", out.len())));
        }
        let name = String::from_utf8_lossy(&b[110..name_end - 1]).into_owned();
        let data_start = name_end + pad4(name_end as u64);
        let data_end = data_start + size;
        if b.len() < data_end {
            return Err(bad(format!("{name}: truncated data")));
        }
        out.push(CpioMember {
            name,
            header,
            data: b[data_start..data_end].to_vec(),
        });
        b = &b[(data_end + pad4(size as u64)).min(b.len())..];
    }
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

    #[test]
    fn streaming_writer_and_parser_handle_concatenated_archives() {
        let mut bytes = Initramfs::new().dir("a").to_bytes();
        let mut w = CpioWriter::new(Vec::new());
        let h = CpioHeader {
            ino: 9,
            mode: S_IFREG | 0o640,
            uid: 1000,
            gid: 100,
            nlink: 2,
            mtime: 1_700_000_000,
            rdev: (0, 0),
        };
        w.entry_from_reader(b"a/f", &h, 5, &b"hello world"[..])
            .unwrap();
        assert!(w
            .entry_from_reader(b"a/g", &h, 50, &b"short"[..])
            .unwrap_err()
            .to_string()
            .contains("changed while packing"));
        bytes.extend(CpioWriter::new(Vec::new()).finish().unwrap());
        let mut w = CpioWriter::new(Vec::new());
        w.entry_from_reader(b"a/f", &h, 5, &b"hello"[..]).unwrap();
        bytes.extend(w.finish().unwrap());
        let members = parse_newc(&bytes).unwrap();
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["a", "TRAILER!!!", "TRAILER!!!", "a/f", "TRAILER!!!"]
        );
        assert_eq!(members[3].header, h);
        assert_eq!(members[3].data, b"hello");
        assert!(parse_newc(b"garbage-that-is-not-cpio").is_err());
    }
}
