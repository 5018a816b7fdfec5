//! Guest-hostile descriptor chain handling shared by the virtio devices: validate a chain
//! before touching its buffers, pop chains off a queue, return them on the used ring and raise
//! the interrupt.
//!
//! virtio-queue's `DescriptorChain` iterator silently stops on a loop, an index beyond the
//! queue, an unreadable descriptor or a total length above `u32::MAX`. [`collect_chain`] turns
//! each of those into an error by checking that the last descriptor it yielded really ends the
//! chain, and checks every buffer lies inside guest memory.

use std::ops::Deref;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap};

use super::VirtioInterrupt;

/// One buffer of a validated chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (VIRTQ_DESC_F_WRITE).
    pub writable: bool,
}

/// Why a descriptor chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain ended early: a loop, a `next` index beyond the queue, an unreadable descriptor
    /// or a total length above `u32::MAX`.
    #[error("malformed descriptor chain (loop, bad next index, unreadable descriptor or length overflow)")]
    Malformed,
    /// More descriptors than the device accepts.
    #[error("descriptor chain longer than {0} descriptors")]
    TooLong(usize),
    /// A buffer is not entirely inside guest memory.
    #[error("descriptor {index} ({addr:#x}, {len} bytes) is outside guest memory")]
    OutsideMemory {
        /// Position in the chain.
        index: usize,
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A device-readable descriptor follows a device-writable one.
    #[error("descriptor {0}: device-readable after device-writable")]
    ReadableAfterWritable(usize),
}

/// Walk `chain`, check it and return its buffers. At most `max_descriptors` are accepted.
pub fn collect_chain<M>(
    chain: DescriptorChain<M>,
    max_descriptors: usize,
) -> Result<Vec<Buffer>, ChainError>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let mem: &M::Target = chain.memory();
    let mut buffers = Vec::new();
    let mut ended = false;
    let mut seen_writable = false;
    for desc in chain.clone() {
        if buffers.len() == max_descriptors {
            return Err(ChainError::TooLong(max_descriptors));
        }
        let index = buffers.len();
        let (addr, len) = (desc.addr(), desc.len());
        if !mem.check_range(addr, len as usize, vm_memory::Permissions::ReadWrite) {
            return Err(ChainError::OutsideMemory {
                index,
                addr: addr.raw_value(),
                len,
            });
        }
        let writable = desc.is_write_only();
        if seen_writable && !writable {
            return Err(ChainError::ReadableAfterWritable(index));
        }
        seen_writable |= writable;
        ended = !desc.has_next();
        buffers.push(Buffer {
            addr,
            len,
            writable,
        });
    }
    if !ended {
        return Err(ChainError::Malformed);
    }
    Ok(buffers)
}

/// Sum of the lengths of the buffers with the given direction.
pub fn total_len(buffers: &[Buffer], writable: bool) -> u64 {
    buffers
        .iter()
        .filter(|b| b.writable == writable)
        .map(|b| u64::from(b.len))
        .sum()
}

/// A queue-level failure: the device cannot go on and needs a reset.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The available ring index is beyond the queue size or unreadable.
    #[error("available ring: {0}")]
    AvailRing(virtio_queue::Error),
    /// The used ring could not be written (e.g. a head index beyond the queue).
    #[error("used ring: {0}")]
    UsedRing(virtio_queue::Error),
}

/// Pop the next available chain, if any.
pub fn pop_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, QueueError> {
    let mut iter = queue.iter(mem).map_err(QueueError::AvailRing)?;
    Ok(iter.next())
}

/// Put chain `head` on the used ring with `len` bytes written by the device.
pub fn complete(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
) -> Result<(), QueueError> {
    queue.add_used(mem, head, len).map_err(QueueError::UsedRing)
}

/// Raise the used-ring interrupt if the driver wants one.
pub fn notify(queue: &mut Queue, mem: &GuestMemoryMmap, interrupt: &VirtioInterrupt) {
    // If the event index cannot be read, err on the side of interrupting.
    if queue.needs_notification(mem).unwrap_or(true) {
        if let Err(e) = interrupt.signal_used_queue() {
            tracing::warn!("virtio: cannot raise the queue interrupt: {e}");
        }
    }
}

/// Serve every available chain of `queue` with `handle` (which returns the number of bytes it
/// wrote into the chain), put them on the used ring and interrupt once at the end.
pub fn drain_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &VirtioInterrupt,
    mut handle: impl FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> Result<usize, QueueError> {
    let mut served = 0;
    let result = loop {
        let chain = match pop_chain(queue, mem) {
            Ok(Some(c)) => c,
            Ok(None) => break Ok(served),
            Err(e) => break Err(e),
        };
        let head = chain.head_index();
        let len = handle(chain);
        if let Err(e) = complete(queue, mem, head, len) {
            break Err(e);
        }
        served += 1;
    };
    if served > 0 {
        notify(queue, mem, interrupt);
    }
    result
}

/// The state of an activated device that serves a single queue (block, rng).
pub struct SingleQueue {
    /// Guest memory.
    pub memory: GuestMemoryMmap,
    /// The device's only queue.
    pub queue: Queue,
    /// Raised after adding used buffers.
    pub interrupt: std::sync::Arc<VirtioInterrupt>,
}

impl SingleQueue {
    /// Take queue 0 from an activation; `device` names the device in the error.
    pub fn activate(ctx: super::ActivateContext, device: &str) -> Result<Self, String> {
        let queue = ctx
            .queues
            .into_iter()
            .next()
            .ok_or_else(|| format!("{device} needs one queue"))?;
        Ok(SingleQueue {
            memory: ctx.memory,
            queue,
            interrupt: ctx.interrupt,
        })
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers for device tests: a guest memory and a driver-side mock queue.

    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    /// Guest memory size used by device tests (1 MiB at 0).
    pub const MEM_SIZE: u64 = 0x10_0000;

    /// 1 MiB of guest memory at address 0.
    pub fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
    }

    /// A readable descriptor.
    pub fn rd(addr: u64, len: u32) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, 0, 0))
    }

    /// A device-writable descriptor.
    pub fn wr(addr: u64, len: u32) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(
            addr,
            len,
            VRING_DESC_F_WRITE as u16,
            0,
        ))
    }

    /// A raw descriptor with explicit flags and next index (for hostile chains).
    pub fn raw(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
    }

    /// Link `descs` into one chain (NEXT set on all but the last) starting at table index
    /// `offset`, and make it available.
    pub fn add_chain(vq: &MockSplitQueue<GuestMemoryMmap>, descs: &[RawDescriptor], offset: u16) {
        let linked: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let d = SplitDescriptor::from(*d);
                let last = i + 1 == descs.len();
                let flags = if last {
                    d.flags() & !(VRING_DESC_F_NEXT as u16)
                } else {
                    d.flags() | VRING_DESC_F_NEXT as u16
                };
                let next = if last { 0 } else { offset + i as u16 + 1 };
                RawDescriptor::from(SplitDescriptor::new(d.addr().0, d.len(), flags, next))
            })
            .collect();
        vq.add_desc_chains(&linked, offset).unwrap();
    }

    /// Used ring entry `i`: (head id, length).
    pub fn used_elem(vq: &MockSplitQueue<GuestMemoryMmap>, i: u16) -> (u32, u32) {
        let e = vq.used().ring().ref_at(i as usize).unwrap().load();
        (e.id(), e.len())
    }

    /// The used ring index.
    pub fn used_idx(vq: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
        vq.used().idx().load()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const NEXT: u32 = VRING_DESC_F_NEXT;
    const WRITE: u32 = VRING_DESC_F_WRITE;

    fn first_chain(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) -> Vec<Buffer> {
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = pop_chain(&mut q, mem).unwrap().unwrap();
        collect_chain(chain, 16).unwrap()
    }

    fn first_chain_err(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) -> ChainError {
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = pop_chain(&mut q, mem).unwrap().unwrap();
        collect_chain(chain, 16).unwrap_err()
    }

    #[test]
    fn well_formed_chain_is_collected() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        add_chain(&vq, &[rd(0x8000, 16), wr(0x9000, 512), wr(0xa000, 1)], 0);
        let b = first_chain(&mem, &vq);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].addr, GuestAddress(0x8000));
        assert!(!b[0].writable && b[1].writable && b[2].writable);
        assert_eq!(total_len(&b, true), 513);
        assert_eq!(total_len(&b, false), 16);
    }

    #[test]
    fn looped_chain_is_malformed() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(
            &[
                raw(0x8000, 16, NEXT | WRITE, 1),
                raw(0x9000, 16, NEXT | WRITE, 0),
            ],
            0,
        )
        .unwrap();
        assert_eq!(first_chain_err(&mem, &vq), ChainError::Malformed);
        // A self-loop.
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(&[raw(0x8000, 16, NEXT, 0)], 0).unwrap();
        assert_eq!(first_chain_err(&mem, &vq), ChainError::Malformed);
    }

    #[test]
    fn next_index_beyond_queue_is_malformed() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(&[raw(0x8000, 16, NEXT, 200)], 0)
            .unwrap();
        assert_eq!(first_chain_err(&mem, &vq), ChainError::Malformed);
    }

    #[test]
    fn length_overflow_is_malformed() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        // Two descriptors whose lengths add up beyond u32::MAX: the second is never yielded.
        vq.add_desc_chains(
            &[raw(0x8000, u32::MAX, NEXT, 1), raw(0x9000, 16, WRITE, 0)],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = pop_chain(&mut q, &mem).unwrap().unwrap();
        // The first descriptor alone is already outside the 1 MiB memory.
        assert!(matches!(
            collect_chain(chain, 16),
            Err(ChainError::OutsideMemory { index: 0, .. })
        ));
    }

    #[test]
    fn address_outside_memory_is_refused() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        add_chain(&vq, &[rd(0x8000, 16), wr(MEM_SIZE - 4, 8)], 0);
        assert_eq!(
            first_chain_err(&mem, &vq),
            ChainError::OutsideMemory {
                index: 1,
                addr: MEM_SIZE - 4,
                len: 8
            }
        );
        let vq = MockSplitQueue::new(&mem, 16);
        add_chain(&vq, &[rd(u64::MAX - 2, 16)], 0);
        assert!(matches!(
            first_chain_err(&mem, &vq),
            ChainError::OutsideMemory { index: 0, .. }
        ));
    }

    #[test]
    fn readable_after_writable_is_refused() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        add_chain(&vq, &[wr(0x8000, 16), rd(0x9000, 16)], 0);
        assert_eq!(
            first_chain_err(&mem, &vq),
            ChainError::ReadableAfterWritable(1)
        );
    }

    #[test]
    fn too_many_descriptors_are_refused() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs: Vec<_> = (0..5).map(|i| rd(0x8000 + i * 16, 16)).collect();
        add_chain(&vq, &descs, 0);
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = pop_chain(&mut q, &mem).unwrap().unwrap();
        assert_eq!(collect_chain(chain, 4), Err(ChainError::TooLong(4)));
    }

    #[test]
    fn avail_index_far_ahead_is_a_queue_error() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.avail().idx().store(100);
        let mut q: Queue = vq.create_queue().unwrap();
        let irq = VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let r = drain_queue(&mut q, &mem, &irq, |_| 0);
        assert!(matches!(r, Err(QueueError::AvailRing(_))));
    }

    #[test]
    fn head_index_beyond_queue_is_a_queue_error() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.avail().ring().ref_at(0).unwrap().store(40);
        vq.avail().idx().store(1);
        let mut q: Queue = vq.create_queue().unwrap();
        let irq = VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let mut seen = Vec::new();
        let r = drain_queue(&mut q, &mem, &irq, |c| {
            seen.push(collect_chain(c, 16));
            0
        });
        assert_eq!(seen, vec![Err(ChainError::Malformed)]);
        assert!(matches!(r, Err(QueueError::UsedRing(_))));
    }

    #[test]
    fn drain_serves_every_chain_and_interrupts_once() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        add_chain(&vq, &[wr(0x8000, 4)], 0);
        add_chain(&vq, &[wr(0x9000, 4)], 1);
        let mut q: Queue = vq.create_queue().unwrap();
        let irq = VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let n = drain_queue(&mut q, &mem, &irq, |_| 4).unwrap();
        assert_eq!(n, 2);
        assert_eq!(used_idx(&vq), 2);
        assert_eq!(used_elem(&vq, 0), (0, 4));
        assert_eq!(used_elem(&vq, 1), (1, 4));
        assert_eq!(irq.irqfd().read().unwrap(), 1);
        assert_eq!(
            irq.status(),
            crate::vmm::devices::virtio::VIRTIO_MMIO_INT_VRING
        );
    }
}
