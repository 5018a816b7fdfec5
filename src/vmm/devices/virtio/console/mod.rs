//! virtio-console (device id 3), a single port (no multiport): the guest's `hvc0`.
//!
//! transmitq (queue 1): guest output, copied to a host sink (stdout or a file) — at most
//! [`MAX_TX_BYTES_PER_CHAIN`] per chain. receiveq (queue 0): host input (e.g. the VMM's stdin),
//! read by a small thread into a bounded buffer ([`MAX_PENDING_INPUT`]) and copied into the
//! guest's receive buffers as they become available. A chain with a buffer of the wrong
//! direction or any other defect is returned with length 0; a queue-level error stops the device
//! until the driver resets it. No feature bits are offered (no console size, no multiport, no
//! emergency write).

mod input;

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::desc_chain::{collect_chain, complete, drain_queue, notify, pop_chain, Buffer};
use super::{ActivateContext, VirtioDevice, VirtioInterrupt};
use input::InputThread;

/// Queue index of receiveq0 (host → guest).
pub const RX_QUEUE: usize = 0;
/// Queue index of transmitq0 (guest → host).
pub const TX_QUEUE: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 64;
/// Guest output copied per transmit chain at most; the rest of a longer chain is dropped.
pub const MAX_TX_BYTES_PER_CHAIN: u32 = 64 * 1024;
/// Host input buffered while the guest has no receive buffers; reading pauses when full.
pub const MAX_PENDING_INPUT: usize = 64 * 1024;
/// Longest chain accepted.
pub const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;

/// A queue with what is needed to serve it.
struct ActiveQueue {
    memory: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// The receive side, shared with the input thread.
#[derive(Default)]
pub(crate) struct Receiver {
    pending: VecDeque<u8>,
    queue: Option<ActiveQueue>,
    broken: bool,
}

impl Receiver {
    /// Room left in the pending-input buffer.
    pub(crate) fn room(&self) -> usize {
        MAX_PENDING_INPUT.saturating_sub(self.pending.len())
    }

    /// Queue host input (the caller keeps within [`Receiver::room`]) and deliver what fits.
    pub(crate) fn push_input(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.room());
        self.pending.extend(&bytes[..n]);
        self.deliver();
    }

    /// Copy pending input into the guest's receive buffers.
    fn deliver(&mut self) {
        if self.broken || self.pending.is_empty() {
            return;
        }
        let Some(q) = self.queue.as_mut() else {
            return;
        };
        let mut served = 0;
        while !self.pending.is_empty() {
            let chain = match pop_chain(&mut q.queue, &q.memory) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("virtio-console receiveq stopped: {e}");
                    self.broken = true;
                    break;
                }
            };
            let head = chain.head_index();
            let len = match collect_chain(chain, MAX_DESCRIPTORS) {
                Ok(buffers) => write_input(&q.memory, &buffers, &mut self.pending),
                Err(e) => {
                    tracing::debug!("virtio-console receive chain: {e}");
                    0
                }
            };
            if let Err(e) = complete(&mut q.queue, &q.memory, head, len) {
                tracing::warn!("virtio-console receiveq stopped: {e}");
                self.broken = true;
                break;
            }
            served += 1;
        }
        if served > 0 {
            notify(&mut q.queue, &q.memory, &q.interrupt);
        }
    }
}

/// Move bytes from `pending` into the device-writable `buffers`; 0 if any buffer is readable.
fn write_input(mem: &GuestMemoryMmap, buffers: &[Buffer], pending: &mut VecDeque<u8>) -> u32 {
    if buffers.iter().any(|b| !b.writable) {
        tracing::debug!("virtio-console: device-readable buffer on the receiveq");
        return 0;
    }
    let mut written: u32 = 0;
    for b in buffers {
        if pending.is_empty() {
            break;
        }
        let n = (b.len as usize).min(pending.len());
        let chunk: Vec<u8> = pending.iter().take(n).copied().collect();
        if let Err(e) = mem.write_slice(&chunk, b.addr) {
            tracing::debug!("virtio-console receive buffer: {e}");
            break;
        }
        pending.drain(..n);
        // n <= b.len, and a chain's total fits in u32.
        written += n as u32;
    }
    written
}

/// Copy the device-readable `buffers` (at most `limit` bytes) to `out`. Returns the number of
/// bytes written, or `None` when the chain has a device-writable buffer.
pub fn write_output(
    mem: &GuestMemoryMmap,
    buffers: &[Buffer],
    limit: u32,
    out: &mut dyn Write,
) -> Option<u32> {
    if buffers.iter().any(|b| b.writable) {
        return None;
    }
    let mut chunk = [0u8; 4096];
    let mut copied: u32 = 0;
    for b in buffers {
        let mut off: u32 = 0;
        while off < b.len && copied < limit {
            let n = (b.len - off).min(limit - copied).min(chunk.len() as u32);
            let bytes = &mut chunk[..n as usize];
            if mem
                .read_slice(bytes, GuestAddress(b.addr.0 + u64::from(off)))
                .is_err()
            {
                return Some(copied);
            }
            if let Err(e) = out.write_all(bytes) {
                tracing::debug!("virtio-console output: {e}");
                return Some(copied);
            }
            off += n;
            copied += n;
        }
    }
    let _ = out.flush();
    Some(copied)
}

/// A single-port virtio console.
pub struct Console {
    queue_sizes: [u16; 2],
    out: Box<dyn Write + Send>,
    tx: Option<ActiveQueue>,
    tx_broken: bool,
    rx: Arc<Mutex<Receiver>>,
    input: Option<InputThread>,
}

impl Console {
    /// A console writing guest output to `out` and, if given, feeding `input` (e.g. a dup of
    /// stdin) to the guest. Input is read by a thread from now until the console is dropped.
    pub fn new(out: Box<dyn Write + Send>, input: Option<OwnedFd>) -> std::io::Result<Self> {
        let rx = Arc::new(Mutex::new(Receiver::default()));
        let input = match input {
            Some(fd) => Some(InputThread::spawn(fd, rx.clone())?),
            None => None,
        };
        Ok(Console {
            queue_sizes: [QUEUE_SIZE, QUEUE_SIZE],
            out,
            tx: None,
            tx_broken: false,
            rx,
            input,
        })
    }

    fn receiver(&self) -> MutexGuard<'_, Receiver> {
        lock(&self.rx)
    }

    /// Queue `bytes` for the guest as if they came from the input (up to the buffer's room).
    pub fn push_input(&self, bytes: &[u8]) {
        self.receiver().push_input(bytes);
    }

    /// Whether an input thread is running.
    pub fn has_input(&self) -> bool {
        self.input.is_some()
    }
}

pub(crate) fn lock(rx: &Mutex<Receiver>) -> MutexGuard<'_, Receiver> {
    rx.lock().unwrap_or_else(|e| e.into_inner())
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports, emerg_wr: unused without the matching features.
        data.fill(0);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), String> {
        let mut queues = ctx.queues.into_iter();
        let (Some(rxq), Some(txq)) = (queues.next(), queues.next()) else {
            return Err("virtio-console needs two queues".into());
        };
        self.tx = Some(ActiveQueue {
            memory: ctx.memory.clone(),
            queue: txq,
            interrupt: ctx.interrupt.clone(),
        });
        self.tx_broken = false;
        let mut rx = self.receiver();
        rx.broken = false;
        rx.queue = Some(ActiveQueue {
            memory: ctx.memory,
            queue: rxq,
            interrupt: ctx.interrupt,
        });
        rx.deliver();
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        match index {
            RX_QUEUE => self.receiver().deliver(),
            TX_QUEUE if !self.tx_broken => {
                let Some(q) = self.tx.as_mut() else {
                    return;
                };
                let out = &mut self.out;
                let memory = &q.memory;
                let result = drain_queue(&mut q.queue, memory, &q.interrupt, |chain| {
                    match collect_chain(chain, MAX_DESCRIPTORS) {
                        Ok(buffers) => {
                            if write_output(memory, &buffers, MAX_TX_BYTES_PER_CHAIN, out).is_none()
                            {
                                tracing::debug!("virtio-console: writable buffer on the transmitq");
                            }
                        }
                        Err(e) => tracing::debug!("virtio-console transmit chain: {e}"),
                    }
                    // The device writes nothing into transmit buffers.
                    0
                });
                if let Err(e) = result {
                    tracing::warn!("virtio-console transmitq stopped: {e}");
                    self.tx_broken = true;
                }
            }
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.tx = None;
        self.tx_broken = false;
        let mut rx = self.receiver();
        rx.queue = None;
        rx.broken = false;
    }

    fn needs_reset(&self) -> bool {
        self.tx_broken || self.receiver().broken
    }
}

#[cfg(test)]
mod tests;
