//! virtio-rng (device id 4): entropy from the host's getrandom(2).
//!
//! One request queue; each chain must consist of device-writable buffers only, which are filled
//! with random bytes up to [`MAX_BYTES_PER_REQUEST`] per chain. A chain with a readable buffer or
//! any other defect is returned with length 0; a queue-level error stops the device until reset.

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::desc_chain::{collect_chain, drain_queue, Buffer, SingleQueue};
use super::{ActivateContext, VirtioDevice};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 64;
/// At most this many random bytes per request (a guest cannot make the VMM spend long on one).
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;
/// Longest chain accepted.
pub const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// A buffer the device would have to read from.
    #[error("device-readable descriptor {0} in an entropy request")]
    ReadableBuffer(usize),
    /// getrandom(2) failed.
    #[error("getrandom: {0}")]
    GetRandom(std::io::Error),
    /// The guest buffer could not be written.
    #[error("guest memory: {0}")]
    Memory(vm_memory::GuestMemoryError),
}

/// Fill `buf` from the kernel's CSPRNG.
pub fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Fill the writable `buffers` with up to `limit` random bytes; returns how many were written.
pub fn fill_request(
    mem: &GuestMemoryMmap,
    buffers: &[Buffer],
    limit: u32,
) -> Result<u32, RngError> {
    if let Some(i) = buffers.iter().position(|b| !b.writable) {
        return Err(RngError::ReadableBuffer(i));
    }
    let mut chunk = [0u8; 4096];
    let mut written: u32 = 0;
    for b in buffers {
        let mut off: u32 = 0;
        while off < b.len && written < limit {
            let n = (b.len - off).min(limit - written).min(chunk.len() as u32);
            let bytes = &mut chunk[..n as usize];
            getrandom(bytes).map_err(RngError::GetRandom)?;
            mem.write_slice(bytes, GuestAddress(b.addr.0 + u64::from(off)))
                .map_err(RngError::Memory)?;
            off += n;
            written += n;
        }
    }
    Ok(written)
}

/// A virtio-rng device.
pub struct Rng {
    queue_sizes: [u16; 1],
    active: Option<SingleQueue>,
    broken: bool,
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl Rng {
    /// A new entropy device.
    pub fn new() -> Self {
        Rng {
            queue_sizes: [QUEUE_SIZE],
            active: None,
            broken: false,
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), String> {
        self.active = Some(SingleQueue::activate(ctx, "virtio-rng")?);
        self.broken = false;
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        if index != 0 || self.broken {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let memory = &active.memory;
        let result = drain_queue(&mut active.queue, memory, &active.interrupt, |chain| {
            let served = collect_chain(chain, MAX_DESCRIPTORS)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    fill_request(memory, &b, MAX_BYTES_PER_REQUEST).map_err(|e| e.to_string())
                });
            served.unwrap_or_else(|e| {
                tracing::debug!("virtio-rng request failed: {e}");
                0
            })
        });
        if let Err(e) = result {
            tracing::warn!("virtio-rng stopped: {e}");
            self.broken = true;
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
    }

    fn needs_reset(&self) -> bool {
        self.broken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::virtio::desc_chain::test_util::*;
    use crate::vmm::devices::virtio::VirtioInterrupt;
    use std::sync::Arc;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn active<'m>(
        mem: &'m GuestMemoryMmap,
    ) -> (
        Rng,
        MockSplitQueue<'m, GuestMemoryMmap>,
        Arc<VirtioInterrupt>,
    ) {
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let mut dev = Rng::new();
        dev.activate(ActivateContext {
            memory: mem.clone(),
            queues: vec![vq.create_queue().unwrap()],
            interrupt: irq.clone(),
            acked_features: 0,
        })
        .unwrap();
        (dev, vq, irq)
    }

    fn bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    #[test]
    fn identity() {
        let dev = Rng::new();
        assert_eq!(dev.device_type(), 4);
        assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE]);
        let mut c = [1u8; 4];
        dev.read_config(0, &mut c);
        assert_eq!(c, [0; 4]);
    }

    #[test]
    fn fills_every_writable_buffer() {
        let mem = memory();
        let (mut dev, vq, irq) = active(&mem);
        add_chain(&vq, &[wr(0x8000, 64), wr(0x9000, 100)], 0);
        dev.process_queue(0);
        assert_eq!(used_idx(&vq), 1);
        assert_eq!(used_elem(&vq, 0), (0, 164));
        // 64 zero bytes from a CSPRNG: probability 2^-512.
        assert!(bytes(&mem, 0x8000, 64).iter().any(|&b| b != 0));
        assert!(bytes(&mem, 0x9000, 100).iter().any(|&b| b != 0));
        // Bytes after the buffer are untouched.
        assert_eq!(bytes(&mem, 0x9000 + 100, 16), vec![0; 16]);
        assert!(irq.irqfd().read().unwrap() >= 1);
    }

    #[test]
    fn requests_are_bounded() {
        let mem = memory();
        let (mut dev, vq, _) = active(&mem);
        add_chain(&vq, &[wr(0x10000, 3 * MAX_BYTES_PER_REQUEST)], 0);
        dev.process_queue(0);
        assert_eq!(used_elem(&vq, 0), (0, MAX_BYTES_PER_REQUEST));
        let end = 0x10000 + u64::from(MAX_BYTES_PER_REQUEST);
        assert_eq!(bytes(&mem, end, 256), vec![0; 256]);
    }

    #[test]
    fn hostile_chains_fail_only_their_request() {
        let mem = memory();
        let (mut dev, vq, _) = active(&mem);
        // Readable buffer (wrong direction).
        add_chain(&vq, &[rd(0x8000, 64)], 0);
        // Outside memory.
        add_chain(&vq, &[wr(MEM_SIZE - 8, 64)], 1);
        add_chain(&vq, &[wr(u64::MAX - 8, 64)], 2);
        // Loop.
        vq.add_desc_chains(
            &[
                raw(0x8000, 8, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 4),
                raw(0x9000, 8, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 3),
            ],
            3,
        )
        .unwrap();
        // Length overflow.
        vq.add_desc_chains(
            &[
                raw(0x8000, u32::MAX, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 6),
                raw(0x9000, 8, VRING_DESC_F_WRITE, 0),
            ],
            5,
        )
        .unwrap();
        // A good one last.
        add_chain(&vq, &[wr(0xa000, 32)], 7);
        dev.process_queue(0);
        assert_eq!(used_idx(&vq), 6);
        for i in 0..5 {
            assert_eq!(used_elem(&vq, i).1, 0, "request {i}");
        }
        assert_eq!(bytes(&mem, 0x8000, 64), vec![0; 64]);
        assert_eq!(used_elem(&vq, 5), (7, 32));
        assert!(!dev.needs_reset());
    }

    #[test]
    fn corrupt_ring_marks_the_device_broken() {
        let mem = memory();
        let (mut dev, vq, _) = active(&mem);
        vq.avail().idx().store(QUEUE_SIZE + 1);
        dev.process_queue(0);
        assert!(dev.needs_reset());
        dev.reset();
        assert!(!dev.needs_reset());
    }

    #[test]
    fn not_activated_ignores_notifications() {
        let mut dev = Rng::new();
        dev.process_queue(0);
        dev.process_queue(5);
        assert!(!dev.needs_reset());
    }
}
