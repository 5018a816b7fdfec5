//! One virtio-fs request: check the descriptor chain and the FUSE header, hand the request to
//! fuse-backend-rs's `Server`, and make sure the guest gets an answer.
//!
//! Checks before the server sees a request (each failure → the request is answered with an
//! error header when the chain has room for one, else returned with length 0):
//! - the chain: at most [`MAX_DESCRIPTORS`] descriptors, it really ends (no loop, no `next`
//!   beyond the queue, no unreadable descriptor, no total length above `u32::MAX`), every buffer
//!   inside one guest memory region, no device-readable buffer after a device-writable one;
//! - the FUSE `in_header`: present (40 bytes), and its `len` covers the header and does not
//!   claim more bytes than the guest provided — the server sizes its body buffers from `len`,
//!   so a lying `len` cannot make the VMM allocate what the guest did not send.

use std::mem::size_of;
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use fuse_virtio_queue::DescriptorChain;
use fuse_vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use super::bridge::Memory17;
use super::shared_dir::SharedDirFs;

/// Longest chain accepted: a 1 MiB read or write (256 pages, the server's `max_pages`) plus
/// headers, with room for unaligned buffers.
pub const MAX_DESCRIPTORS: usize = 512;
/// Size of the FUSE in header.
pub const IN_HEADER_LEN: usize = size_of::<InHeader>();
/// Size of the FUSE out header.
pub const OUT_HEADER_LEN: usize = size_of::<OutHeader>();

/// The FUSE server of one share.
pub type FsServer = Server<Arc<SharedDirFs>>;

/// What happened to a request, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered (or the request needs no answer).
    Served,
    /// The chain was refused; nothing was written.
    BadChain(String),
    /// The request was refused with this errno in an error reply (if there was room).
    Refused(i32, String),
}

/// The validated shape of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainShape {
    /// Device-readable bytes (the request).
    pub readable: u64,
    /// Device-writable bytes (room for the reply).
    pub writable: u64,
    /// Guest address of the first device-writable buffer, if any.
    pub first_writable: Option<(GuestAddress, u32)>,
    /// Guest address of the first device-readable buffer, if any.
    pub first_readable: Option<(GuestAddress, u32)>,
}

/// Whether `[addr, addr + len)` lies inside a single guest memory region (fuse-backend-rs maps
/// each buffer as one slice of one region). An empty buffer must still start inside one.
fn in_one_region(mem: &Memory17, addr: GuestAddress, len: u32) -> bool {
    let Some(region) = mem.find_region(addr) else {
        return false;
    };
    let last = addr.checked_add(u64::from(len.max(1)) - 1);
    last.and_then(|a| mem.find_region(a))
        .is_some_and(|r| std::ptr::eq(r, region))
}

/// Walk `chain` and check it (see the module doc).
pub fn check_chain(chain: &DescriptorChain<&Memory17>) -> Result<ChainShape, String> {
    let mem = chain.memory();
    let mut shape = ChainShape {
        readable: 0,
        writable: 0,
        first_writable: None,
        first_readable: None,
    };
    let mut ended = false;
    for (count, desc) in chain.clone().enumerate() {
        if count == MAX_DESCRIPTORS {
            return Err(format!("more than {MAX_DESCRIPTORS} descriptors"));
        }
        let (addr, len) = (desc.addr(), desc.len());
        if !in_one_region(mem, addr, len) {
            return Err(format!(
                "descriptor {count} ({:#x}, {len} bytes) is outside guest memory",
                addr.raw_value()
            ));
        }
        if desc.is_write_only() {
            shape.writable += u64::from(len);
            shape.first_writable.get_or_insert((addr, len));
        } else {
            if shape.first_writable.is_some() {
                return Err(format!(
                    "descriptor {count}: device-readable after device-writable"
                ));
            }
            shape.readable += u64::from(len);
            shape.first_readable.get_or_insert((addr, len));
        }
        ended = !desc.has_next();
    }
    if !ended {
        return Err("malformed chain (loop, bad next index or length overflow)".into());
    }
    Ok(shape)
}

/// Read the FUSE in header from the start of the readable part (it may span buffers).
fn read_in_header(mem: &Memory17, chain: &DescriptorChain<&Memory17>) -> Option<InHeader> {
    let mut reader = Reader::from_descriptor_chain(mem, chain.clone()).ok()?;
    reader.read_obj::<InHeader>().ok()
}

/// Requests the kernel sends without waiting for a reply.
fn needs_no_reply(opcode: u32) -> bool {
    opcode == Opcode::Forget as u32
        || opcode == Opcode::BatchForget as u32
        || opcode == Opcode::Interrupt as u32
}

/// Write an error-only reply for `unique` into the first writable buffer; returns the used
/// length (0 if there is no room).
fn reply_error(mem: &Memory17, shape: &ChainShape, unique: u64, errno: i32) -> u32 {
    let Some((addr, len)) = shape.first_writable else {
        return 0;
    };
    if (len as usize) < OUT_HEADER_LEN {
        return 0;
    }
    let header = OutHeader {
        len: OUT_HEADER_LEN as u32,
        error: -errno,
        unique,
    };
    match mem.write_obj(header, addr) {
        Ok(()) => OUT_HEADER_LEN as u32,
        Err(_) => 0,
    }
}

/// Serve one chain with `server`; returns the outcome and the used length.
pub fn serve(
    server: &FsServer,
    mem: &Memory17,
    chain: DescriptorChain<&Memory17>,
) -> (Outcome, u32) {
    let shape = match check_chain(&chain) {
        Ok(s) => s,
        Err(why) => return (Outcome::BadChain(why), 0),
    };
    let Some(header) = read_in_header(mem, &chain) else {
        return (
            Outcome::BadChain(format!(
                "request of {} bytes has no FUSE header",
                shape.readable
            )),
            0,
        );
    };
    let len = u64::from(header.len);
    if len < IN_HEADER_LEN as u64 || len > shape.readable {
        let why = format!(
            "FUSE header len {} but the request has {} bytes",
            header.len, shape.readable
        );
        let used = if needs_no_reply(header.opcode) {
            0
        } else {
            reply_error(mem, &shape, header.unique, libc::EINVAL)
        };
        return (Outcome::Refused(libc::EINVAL, why), used);
    }
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => return (Outcome::BadChain(e.to_string()), 0),
    };
    let writer = match VirtioFsWriter::new(mem, chain) {
        Ok(w) => Writer::VirtioFs(w),
        Err(e) => return (Outcome::BadChain(e.to_string()), 0),
    };
    match server.handle_message(reader, writer, None, None) {
        // The server's count is what it wrote into the chain; it cannot exceed the writable
        // part, which fits in u32.
        Ok(n) => (Outcome::Served, u32::try_from(n).unwrap_or(0)),
        Err(e) if needs_no_reply(header.opcode) => {
            (Outcome::Refused(libc::EINVAL, e.to_string()), 0)
        }
        Err(e) => {
            let used = reply_error(mem, &shape, header.unique, libc::EIO);
            (Outcome::Refused(libc::EIO, e.to_string()), used)
        }
    }
}
