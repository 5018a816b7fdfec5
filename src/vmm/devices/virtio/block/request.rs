//! One virtio-blk request: parse the header, check it against the disk, move the data, write
//! the status byte last.
//!
//! Framing: the 16-byte header is the start of the device-readable part of the chain, the status
//! byte is the last byte of the device-writable part; the data is what lies between (readable
//! for OUT, writable for IN and GET_ID). Descriptor boundaries do not matter.

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::disk::{Disk, SECTOR_SIZE};
use crate::vmm::devices::virtio::desc_chain::Buffer;

/// `struct virtio_blk_outhdr`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct RequestHeader {
    /// VIRTIO_BLK_T_*.
    pub request_type: u32,
    /// Reserved (ioprio in legacy drivers).
    pub reserved: u32,
    /// First sector (512 bytes) of the transfer.
    pub sector: u64,
}

// SAFETY: plain old data of integers, no padding (4 + 4 + 8 bytes).
unsafe impl ByteValued for RequestHeader {}

/// Size of [`RequestHeader`].
pub const HEADER_LEN: u64 = std::mem::size_of::<RequestHeader>() as u64;

/// What a request did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Served; the status byte says OK.
    Ok,
    /// Refused with VIRTIO_BLK_S_IOERR, for this reason.
    IoError(String),
    /// Refused with VIRTIO_BLK_S_UNSUPP (unknown request type).
    Unsupported(u32),
    /// The chain has no device-writable byte for the status: nothing was written.
    NoStatus,
}

/// The `(address, length)` pieces of bytes `[skip, skip + limit)` of the readable or writable
/// part of `buffers`.
pub fn segments(
    buffers: &[Buffer],
    writable: bool,
    skip: u64,
    limit: u64,
) -> Vec<(GuestAddress, u32)> {
    let mut out = Vec::new();
    let mut skip = skip;
    let mut left = limit;
    for b in buffers.iter().filter(|b| b.writable == writable) {
        if left == 0 {
            break;
        }
        let len = u64::from(b.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let take = (len - skip).min(left);
        // `skip < len <= u32::MAX` and the buffer was checked to lie in guest memory.
        out.push((GuestAddress(b.addr.0 + skip), take as u32));
        left -= take;
        skip = 0;
    }
    out
}

fn read_header(mem: &GuestMemoryMmap, buffers: &[Buffer]) -> Option<RequestHeader> {
    let mut header = RequestHeader::default();
    let bytes = header.as_mut_slice();
    let mut filled = 0usize;
    for (addr, len) in segments(buffers, false, 0, HEADER_LEN) {
        let end = filled + len as usize;
        mem.read_slice(&mut bytes[filled..end], addr).ok()?;
        filled = end;
    }
    (filled as u64 == HEADER_LEN).then_some(RequestHeader {
        request_type: u32::from_le(header.request_type),
        reserved: u32::from_le(header.reserved),
        sector: u64::from_le(header.sector),
    })
}

/// Serve one request made of the validated `buffers`; returns the outcome and the number of
/// bytes written into the chain (the used length).
pub fn execute(mem: &GuestMemoryMmap, buffers: &[Buffer], disk: &mut Disk) -> (Outcome, u32) {
    let Some(status_buf) = buffers.last().filter(|b| b.writable && b.len > 0) else {
        return (Outcome::NoStatus, 0);
    };
    let status_addr = GuestAddress(status_buf.addr.0 + u64::from(status_buf.len) - 1);
    let readable: u64 = buffers
        .iter()
        .filter(|b| !b.writable)
        .map(|b| u64::from(b.len))
        .sum();
    let writable: u64 = buffers
        .iter()
        .filter(|b| b.writable)
        .map(|b| u64::from(b.len))
        .sum();
    // Everything writable but the status byte.
    let in_len = writable - 1;

    let (outcome, written) = match read_header(mem, buffers) {
        None => (Outcome::IoError("header shorter than 16 bytes".into()), 0),
        Some(h) => serve(mem, buffers, disk, &h, readable - HEADER_LEN, in_len),
    };
    let status = match outcome {
        Outcome::Ok => VIRTIO_BLK_S_OK,
        Outcome::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
        _ => VIRTIO_BLK_S_IOERR,
    } as u8;
    // The status byte goes last, after all data.
    if mem.write_obj(status, status_addr).is_err() {
        return (Outcome::NoStatus, 0);
    }
    // `written <= in_len < u32::MAX` because a chain's total length fits in u32.
    (outcome, written.saturating_add(1))
}

fn serve(
    mem: &GuestMemoryMmap,
    buffers: &[Buffer],
    disk: &mut Disk,
    h: &RequestHeader,
    out_len: u64,
    in_len: u64,
) -> (Outcome, u32) {
    let ioerr = |why: String| (Outcome::IoError(why), 0);
    match h.request_type {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID if out_len != 0 => {
            ioerr(format!("{out_len} device-readable bytes after the header"))
        }
        VIRTIO_BLK_T_OUT if in_len != 0 => ioerr(format!(
            "{in_len} device-writable bytes before the status byte"
        )),
        VIRTIO_BLK_T_IN => {
            let Some(offset) = checked_transfer(disk, h.sector, in_len) else {
                return ioerr(format!(
                    "read of {in_len} bytes at sector {} refused",
                    h.sector
                ));
            };
            let segs = segments(buffers, true, 0, in_len);
            match disk.read_to_guest(mem, offset, &segs) {
                Ok(()) => (Outcome::Ok, in_len as u32),
                Err(e) => ioerr(format!("read at sector {}: {e}", h.sector)),
            }
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only() {
                return ioerr("write to a read-only disk".into());
            }
            let Some(offset) = checked_transfer(disk, h.sector, out_len) else {
                return ioerr(format!(
                    "write of {out_len} bytes at sector {} refused",
                    h.sector
                ));
            };
            let segs = segments(buffers, false, HEADER_LEN, out_len);
            match disk.write_from_guest(mem, offset, &segs) {
                Ok(()) => (Outcome::Ok, 0),
                Err(e) => ioerr(format!("write at sector {}: {e}", h.sector)),
            }
        }
        VIRTIO_BLK_T_FLUSH => match disk.flush() {
            Ok(()) => (Outcome::Ok, 0),
            Err(e) => ioerr(e.to_string()),
        },
        VIRTIO_BLK_T_GET_ID => {
            let n = in_len.min(disk.id().len() as u64) as usize;
            let mut done = 0usize;
            for (addr, len) in segments(buffers, true, 0, n as u64) {
                let end = done + len as usize;
                if mem.write_slice(&disk.id()[done..end], addr).is_err() {
                    return ioerr("GET_ID buffer not writable".into());
                }
                done = end;
            }
            (Outcome::Ok, n as u32)
        }
        other => (Outcome::Unsupported(other), 0),
    }
}

/// The byte offset of a `len`-byte transfer at `sector`, if `len` is a whole number of
/// sectors and the range lies inside the disk.
fn checked_transfer(disk: &Disk, sector: u64, len: u64) -> Option<u64> {
    if len % SECTOR_SIZE != 0 {
        return None;
    }
    disk.byte_range(sector, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(addr: u64, len: u32, writable: bool) -> Buffer {
        Buffer {
            addr: GuestAddress(addr),
            len,
            writable,
        }
    }

    #[test]
    fn segments_skip_and_limit_across_buffers() {
        let bufs = [
            b(0x1000, 10, false),
            b(0x2000, 10, false),
            b(0x3000, 4, true),
        ];
        assert_eq!(
            segments(&bufs, false, 4, 12),
            vec![(GuestAddress(0x1004), 6), (GuestAddress(0x2000), 6)]
        );
        assert_eq!(
            segments(&bufs, false, 10, 100),
            vec![(GuestAddress(0x2000), 10)]
        );
        assert_eq!(segments(&bufs, true, 0, 3), vec![(GuestAddress(0x3000), 3)]);
        assert!(segments(&bufs, true, 0, 0).is_empty());
        assert!(segments(&bufs, false, 20, 5).is_empty());
    }
}
