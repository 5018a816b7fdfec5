//! Fuzz virtio-console: the input is the receive and transmit queues' descriptor tables and
//! avail rings, some host input, and the guest memory behind them. The device must never
//! panic or loop; a healthy transmit queue is drained (checked when no guest buffer overlapped
//! its avail index: descriptors may point anywhere, including at the rings).
#![no_main]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use kvmbox::vmm::devices::virtio::console::{Console, RX_QUEUE, TX_QUEUE};
use kvmbox::vmm::devices::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest output collected in memory.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let mem = memory();
    load_queue(&mem, RX_QUEUE, &mut data);
    load_queue(&mem, TX_QUEUE, &mut data);
    let host_len = usize::from(take(&mut data, 1)[0]) * 4;
    let host_input = take(&mut data, host_len);
    load_buffers(&mem, data);

    let (avail_before, _) = indices(&mem, TX_QUEUE);
    let sink = Sink::default();
    let mut dev = Console::new(Box::new(sink.clone()), None).unwrap();
    dev.process_queue(TX_QUEUE);
    dev.push_input(&host_input[..host_len / 2]);
    let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    dev.activate(ActivateContext {
        memory: mem.clone(),
        queues: vec![queue(RX_QUEUE), queue(TX_QUEUE)],
        interrupt: irq,
        acked_features: 0,
    })
    .unwrap();
    dev.process_queue(TX_QUEUE);
    dev.push_input(&host_input[host_len / 2..]);
    dev.process_queue(RX_QUEUE);
    dev.process_queue(TX_QUEUE);
    dev.process_queue(7);

    let (avail, used) = indices(&mem, TX_QUEUE);
    if !dev.needs_reset() && avail == avail_before {
        assert_eq!(used, avail, "transmit chains left unanswered");
    }
});
