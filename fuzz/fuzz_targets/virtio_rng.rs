//! Fuzz virtio-rng: the input is the request queue's descriptor table and avail ring plus the
//! guest memory behind them. The device must never panic or loop; a healthy device answers
//! every available request (checked when the guest's buffers did not overlap the avail index:
//! descriptors may point anywhere, including at the rings).
#![no_main]

mod common;

use std::sync::Arc;

use common::*;
use kvmbox::vmm::devices::virtio::rng::Rng;
use kvmbox::vmm::devices::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let mem = memory();
    load_queue(&mem, 0, &mut data);
    load_buffers(&mem, data);
    let (avail_before, _) = indices(&mem, 0);
    let mut dev = Rng::new();
    // Before activation: ignored.
    dev.process_queue(0);
    let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    dev.activate(ActivateContext {
        memory: mem.clone(),
        queues: vec![queue(0)],
        interrupt: irq,
        acked_features: 0,
    })
    .unwrap();
    dev.process_queue(0);
    dev.process_queue(0);
    let (avail, used) = indices(&mem, 0);
    if !dev.needs_reset() && avail == avail_before {
        assert_eq!(used, avail, "requests left unanswered");
    }
});
