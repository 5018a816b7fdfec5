//! Fuzz virtio-net: the input is the receive and transmit queues' descriptor tables and avail
//! rings, up to four frames the "tap" (a datagram socket pair) delivers, and the guest memory
//! behind them. The device must never panic or loop; a healthy device drains the transmit
//! queue (checked when no guest buffer overlapped its avail index), writes only frames of
//! 14..=MAX_FRAME_LEN bytes to the tap, and delivers or drops no more frames than the tap had.
#![no_main]

mod common;

use std::os::fd::OwnedFd;
use std::sync::Arc;

use common::*;
use kvmbox::vmm::devices::virtio::net::{Net, MAX_FRAME_LEN, MIN_FRAME_LEN, RX_QUEUE, TX_QUEUE};
use kvmbox::vmm::devices::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fn pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .unwrap()
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let mem = memory();
    load_queue(&mem, RX_QUEUE, &mut data);
    load_queue(&mem, TX_QUEUE, &mut data);
    let order = take(&mut data, 1)[0];
    // Up to four host frames: a u16 length each (sizes up to 64 KiB + a bit, runts too).
    let mut frames = Vec::new();
    for _ in 0..(order & 3) + 1 {
        let len_bytes = take(&mut data, 2);
        let len =
            usize::from(u16::from_le_bytes([len_bytes[0], len_bytes[1]])) % (MAX_FRAME_LEN + 8);
        let content = take(&mut data, len.min(64));
        let mut f = content.clone();
        f.resize(len, 0xab);
        frames.push(f);
    }
    load_buffers(&mem, data);

    let (tx_avail_before, _) = indices(&mem, TX_QUEUE);
    let (dev_end, host) = pair();
    let mut dev = Net::new(dev_end, [2, 0, 0, 0, 0, 1]).unwrap();
    // Notifications and host frames before DRIVER_OK.
    dev.process_queue(TX_QUEUE);
    dev.process_backend();
    let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let send = |f: &Vec<u8>| {
        let _ = nix::unistd::write(&host, f);
    };
    if order & 4 != 0 {
        frames.iter().for_each(send);
    }
    dev.activate(ActivateContext {
        memory: mem.clone(),
        queues: vec![queue(RX_QUEUE), queue(TX_QUEUE)],
        interrupt: irq,
        acked_features: 1 << 5,
    })
    .unwrap();
    if order & 4 == 0 {
        frames.iter().for_each(send);
    }
    if order & 8 != 0 {
        dev.process_queue(RX_QUEUE);
        dev.process_queue(TX_QUEUE);
    } else {
        dev.process_queue(TX_QUEUE);
        dev.process_backend();
    }
    dev.process_queue(RX_QUEUE);
    dev.process_queue(2);
    if order & 16 != 0 {
        dev.reset();
        dev.process_backend();
        dev.process_queue(TX_QUEUE);
        return;
    }

    // Counted by the device rather than read back from the used ring: receive buffers may
    // legitimately overlap the transmit rings, so the used index in memory can be overwritten
    // by frame bytes (the first crash of this target was exactly that, 0xabab).
    let (avail, _) = indices(&mem, TX_QUEUE);
    let stats = dev.stats().clone();
    let answered = stats.tx_frames + stats.tx_bad_chains + stats.tx_dropped;
    if !dev.needs_reset() && avail == tx_avail_before {
        assert_eq!(answered, u64::from(avail), "transmit chains left unanswered");
    }
    let mut buf = vec![0u8; MAX_FRAME_LEN + 64];
    let mut written = 0u64;
    while let Ok(n) = nix::unistd::read(&host, &mut buf) {
        assert!(
            (MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&n),
            "frame of {n} bytes"
        );
        written += 1;
    }
    assert_eq!(written, stats.tx_frames);
    assert!(stats.tx_frames + stats.tx_bad_chains + stats.tx_dropped <= 4 * u64::from(QSIZE));
    assert!(stats.rx_frames + stats.rx_dropped <= frames.len() as u64);
});
