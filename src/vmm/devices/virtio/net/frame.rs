//! One frame between a descriptor chain and the host: the virtio-net header, gather (transmit)
//! and scatter (receive) over validated buffers.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::vmm::devices::virtio::desc_chain::{total_len, Buffer, ChainError};

/// `struct virtio_net_hdr_v1` (VIRTIO_F_VERSION_1: always with `num_buffers`).
pub const NET_HDR_LEN: usize = 12;
/// Shortest Ethernet frame the device passes on (destination, source, ethertype).
pub const MIN_FRAME_LEN: usize = 14;
/// Longest frame either way: 64 KiB of payload plus an Ethernet and a VLAN header.
pub const MAX_FRAME_LEN: usize = 65536 + 14 + 4;

/// Why a chain could not carry a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The descriptor chain itself is malformed (see [`ChainError`]).
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A transmit chain with a device-writable buffer, or a receive chain with a readable one.
    #[error("descriptor {0} has the wrong direction")]
    WrongDirection(usize),
    /// A transmit chain shorter than the header plus an Ethernet header.
    #[error("transmit chain of {0} bytes is shorter than a header and an Ethernet header")]
    TooShort(u64),
    /// A transmit chain longer than the header plus [`MAX_FRAME_LEN`].
    #[error("transmit chain of {0} bytes is longer than the largest frame")]
    TooLong(u64),
    /// A receive chain too small for the header and the frame (the frame is dropped).
    #[error("receive chain of {room} bytes cannot hold a {frame}-byte frame and its header")]
    NoRoom {
        /// Bytes the chain offers.
        room: u64,
        /// Frame length.
        frame: usize,
    },
    /// Guest memory could not be read or written.
    #[error("guest memory: {0}")]
    Memory(String),
}

/// Copy the frame a transmit chain carries (everything after the header) into `out`, which
/// must hold [`MAX_FRAME_LEN`] bytes; returns its length. The header's content is ignored: no
/// offloads are offered, so there is nothing in it the device would act on.
pub fn gather_tx(
    mem: &GuestMemoryMmap,
    buffers: &[Buffer],
    out: &mut [u8],
) -> Result<usize, FrameError> {
    if let Some(i) = buffers.iter().position(|b| b.writable) {
        return Err(FrameError::WrongDirection(i));
    }
    let total = total_len(buffers, false);
    if total < (NET_HDR_LEN + MIN_FRAME_LEN) as u64 {
        return Err(FrameError::TooShort(total));
    }
    if total > (NET_HDR_LEN + MAX_FRAME_LEN) as u64 || out.len() < MAX_FRAME_LEN {
        return Err(FrameError::TooLong(total));
    }
    // Bytes of the chain still to skip (the header), then the frame's write position.
    let mut skip = NET_HDR_LEN as u64;
    let mut at = 0usize;
    for b in buffers {
        let len = u64::from(b.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        // skip < len <= u32::MAX, and the frame fits `out` (checked against the total above).
        let n = (len - skip) as usize;
        let addr = GuestAddress(b.addr.0 + skip);
        mem.read_slice(&mut out[at..at + n], addr)
            .map_err(|e| FrameError::Memory(e.to_string()))?;
        at += n;
        skip = 0;
    }
    Ok(at)
}

/// Write a zeroed header (`num_buffers` = 1) and `frame` into the device-writable `buffers`;
/// returns the bytes written (the used length).
pub fn scatter_rx(
    mem: &GuestMemoryMmap,
    buffers: &[Buffer],
    frame: &[u8],
) -> Result<u32, FrameError> {
    if let Some(i) = buffers.iter().position(|b| !b.writable) {
        return Err(FrameError::WrongDirection(i));
    }
    let room = total_len(buffers, true);
    let need = NET_HDR_LEN + frame.len();
    if room < need as u64 {
        return Err(FrameError::NoRoom {
            room,
            frame: frame.len(),
        });
    }
    let mut header = [0u8; NET_HDR_LEN];
    header[10..12].copy_from_slice(&1u16.to_le_bytes());
    let mut parts = [&header[..], frame];
    let mut part = 0;
    for b in buffers {
        let mut off = 0u64;
        while off < u64::from(b.len) && part < parts.len() {
            let src = parts[part];
            let n = src.len().min((u64::from(b.len) - off) as usize);
            mem.write_slice(&src[..n], GuestAddress(b.addr.0 + off))
                .map_err(|e| FrameError::Memory(e.to_string()))?;
            off += n as u64;
            parts[part] = &src[n..];
            if parts[part].is_empty() {
                part += 1;
            }
        }
        if part == parts.len() {
            break;
        }
    }
    // need <= room <= u32::MAX (a validated chain's total fits in u32).
    Ok(need as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::virtio::desc_chain::test_util::memory;

    fn buf(addr: u64, len: u32, writable: bool) -> Buffer {
        Buffer {
            addr: GuestAddress(addr),
            len,
            writable,
        }
    }

    #[test]
    fn gather_skips_a_header_split_across_buffers() {
        let mem = memory();
        mem.write_slice(&[0xaa; 8], GuestAddress(0x1000)).unwrap();
        let frame: Vec<u8> = (0..20).collect();
        mem.write_slice(&[0xbb; 4], GuestAddress(0x2000)).unwrap();
        mem.write_slice(&frame[..6], GuestAddress(0x2004)).unwrap();
        mem.write_slice(&frame[6..], GuestAddress(0x3000)).unwrap();
        let mut out = vec![0u8; MAX_FRAME_LEN];
        let bufs = [
            buf(0x1000, 8, false),
            buf(0x2000, 10, false),
            buf(0x3000, 14, false),
        ];
        let n = gather_tx(&mem, &bufs, &mut out).unwrap();
        assert_eq!(&out[..n], &frame[..]);
    }

    #[test]
    fn gather_checks_direction_and_size() {
        let mem = memory();
        let mut out = vec![0u8; MAX_FRAME_LEN];
        assert_eq!(
            gather_tx(&mem, &[buf(0x1000, 100, true)], &mut out),
            Err(FrameError::WrongDirection(0))
        );
        assert_eq!(
            gather_tx(&mem, &[buf(0x1000, 25, false)], &mut out),
            Err(FrameError::TooShort(25))
        );
        let big = (NET_HDR_LEN + MAX_FRAME_LEN + 1) as u32;
        assert!(matches!(
            gather_tx(&mem, &[buf(0x1000, big, false)], &mut out),
            Err(FrameError::TooLong(_))
        ));
    }

    #[test]
    fn scatter_writes_header_then_frame_over_buffers() {
        let mem = memory();
        let frame: Vec<u8> = (1..=30).collect();
        let bufs = [
            buf(0x1000, 5, true),
            buf(0x2000, 20, true),
            buf(0x3000, 100, true),
        ];
        assert_eq!(scatter_rx(&mem, &bufs, &frame).unwrap(), 42);
        let mut got = [0u8; 42];
        mem.read_slice(&mut got[..5], GuestAddress(0x1000)).unwrap();
        mem.read_slice(&mut got[5..25], GuestAddress(0x2000))
            .unwrap();
        mem.read_slice(&mut got[25..], GuestAddress(0x3000))
            .unwrap();
        assert_eq!(&got[..10], &[0; 10]);
        assert_eq!(&got[10..12], &[1, 0]);
        assert_eq!(&got[12..], &frame[..]);
        let mut after = [0xffu8; 4];
        mem.read_slice(&mut after, GuestAddress(0x3000 + 17))
            .unwrap();
        assert_eq!(after, [0; 4]);
    }

    #[test]
    fn scatter_refuses_small_or_readable_chains() {
        let mem = memory();
        let frame = [7u8; 100];
        assert_eq!(
            scatter_rx(&mem, &[buf(0x1000, 111, true)], &frame),
            Err(FrameError::NoRoom {
                room: 111,
                frame: 100
            })
        );
        assert_eq!(
            scatter_rx(
                &mem,
                &[buf(0x1000, 200, true), buf(0x2000, 1, false)],
                &frame
            ),
            Err(FrameError::WrongDirection(1))
        );
        let mut untouched = [1u8; 16];
        mem.read_slice(&mut untouched, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(untouched, [0; 16]);
    }
}
