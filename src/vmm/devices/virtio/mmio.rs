//! The virtio-mmio transport (virtio 1.x, register layout version 2).

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateContext, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::vmm::devices::bus::BusDevice;

/// "virt", little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Register layout version 2 (virtio 1.x).
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest ("KVMB").
pub const MMIO_VENDOR_ID: u32 = 0x424d_564b;

/// Register offsets.
pub mod regs {
    /// Magic value.
    pub const MAGIC_VALUE: u64 = 0x000;
    /// Version.
    pub const VERSION: u64 = 0x004;
    /// Device id.
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor id.
    pub const VENDOR_ID: u64 = 0x00c;
    /// Device features (32 bits selected by DEVICE_FEATURES_SEL).
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Device features word select.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// Driver features.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Driver features word select.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Queue select.
    pub const QUEUE_SEL: u64 = 0x030;
    /// Maximum size of the selected queue.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Size of the selected queue.
    pub const QUEUE_NUM: u64 = 0x038;
    /// Selected queue ready.
    pub const QUEUE_READY: u64 = 0x044;
    /// Queue notify.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Interrupt status.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Interrupt acknowledge.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status.
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low 32 bits.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high 32 bits.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Available ring address, low.
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    /// Available ring address, high.
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    /// Used ring address, low.
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    /// Used ring address, high.
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    /// Configuration generation.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of device configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation done.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up.
    pub const FAILED: u32 = 128;
}

/// A virtio device on the MMIO transport.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    memory: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    /// Wrap `device`; `irqfd` is the eventfd registered with KVM for its GSI.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
        irqfd: EventFd,
    ) -> std::io::Result<Self> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| {
                Queue::new(max).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e:?}"))
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let queue_events = (0..queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(MmioTransport {
            device,
            memory,
            interrupt: Arc::new(VirtioInterrupt::new(irqfd)),
            queues,
            queue_events,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// One eventfd per queue, to register as ioeventfds on QueueNotify (datamatch = index).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// The current device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device was activated (DRIVER_OK accepted).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The virtio device id.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.driver_features
    }

    /// A notification for queue `index` arrived (from its ioeventfd or a QueueNotify write).
    pub fn queue_notified(&mut self, index: usize) {
        if self.activated && index < self.queues.len() {
            self.device.process_queue(index);
            self.check_needs_reset();
        }
    }

    /// Reflect a device that stopped serving in DEVICE_NEEDS_RESET and tell the driver.
    fn check_needs_reset(&mut self) {
        if self.status & status::DEVICE_NEEDS_RESET == 0 && self.device.needs_reset() {
            self.status |= status::DEVICE_NEEDS_RESET;
            let _ = self.interrupt.signal_config_change();
        }
    }

    /// The device backend's pollable fd, if it has one (see [`VirtioDevice::backend_fd`]).
    pub fn backend_fd(&self) -> Option<std::os::unix::io::RawFd> {
        self.device.backend_fd()
    }

    /// The backend fd became readable: let the device serve it.
    pub fn backend_ready(&mut self) {
        self.device.process_backend();
    }

    fn all_features(&self) -> u64 {
        self.device.device_features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK, on a queue that
    /// is not yet ready.
    fn queue_config_allowed(&self) -> bool {
        self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            == status::FEATURES_OK
    }

    fn update_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if !self.queue_config_allowed() {
            tracing::debug!(
                status = self.status,
                "virtio-mmio: queue write in wrong state"
            );
            return;
        }
        if let Some(q) = self.selected_queue() {
            if !q.ready() {
                f(q);
            }
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.ack(u32::MAX);
    }

    fn write_status(&mut self, value: u32) {
        use status::*;
        if value == 0 {
            self.reset();
            return;
        }
        if value & FAILED != 0 {
            self.status |= FAILED;
            return;
        }
        // Bits may only be added, in the order the spec's initialization sequence sets them.
        if value & self.status != self.status {
            tracing::debug!(
                old = self.status,
                new = value,
                "virtio-mmio: status bits cleared"
            );
            return;
        }
        let added = value & !self.status;
        let allowed = match self.status & !DEVICE_NEEDS_RESET {
            0 => ACKNOWLEDGE,
            s if s == ACKNOWLEDGE => DRIVER,
            s if s == ACKNOWLEDGE | DRIVER => FEATURES_OK,
            s if s == ACKNOWLEDGE | DRIVER | FEATURES_OK => DRIVER_OK,
            _ => 0,
        };
        if added != allowed {
            tracing::debug!(
                old = self.status,
                new = value,
                "virtio-mmio: invalid status transition"
            );
            return;
        }
        match added {
            FEATURES_OK => {
                let offered = self.all_features();
                if self.driver_features & !offered != 0
                    || self.driver_features & VIRTIO_F_VERSION_1 == 0
                {
                    // Leave FEATURES_OK clear: the driver reads it back and gives up.
                    return;
                }
            }
            DRIVER_OK => {
                if let Err(e) = self.activate() {
                    tracing::warn!(
                        device = self.device.device_type(),
                        "virtio activation failed: {e}"
                    );
                    self.status |= DEVICE_NEEDS_RESET;
                    let _ = self.interrupt.signal_config_change();
                    return;
                }
            }
            _ => {}
        }
        self.status |= added;
    }

    fn activate(&mut self) -> Result<(), String> {
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                return Err(format!("queue {i} not ready"));
            }
            if !q.is_valid(&self.memory) {
                return Err(format!("queue {i} has invalid addresses or size"));
            }
        }
        let queues = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()).map_err(|e| format!("queue state: {e:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        let ctx = ActivateContext {
            memory: self.memory.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        };
        self.device.activate(ctx)?;
        self.activated = true;
        Ok(())
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            regs::MAGIC_VALUE => MMIO_MAGIC,
            regs::VERSION => MMIO_VERSION,
            regs::DEVICE_ID => self.device.device_type(),
            regs::VENDOR_ID => MMIO_VENDOR_ID,
            regs::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.all_features() as u32,
                1 => (self.all_features() >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            regs::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            regs::INTERRUPT_STATUS => self.interrupt.status(),
            regs::STATUS => {
                if self.activated {
                    self.check_needs_reset();
                }
                self.status
            }
            regs::CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::debug!(offset, "virtio-mmio: read of unknown register");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        let driver_may_set_features =
            self.status & (status::DRIVER | status::FEATURES_OK) == status::DRIVER;
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            regs::DRIVER_FEATURES if driver_may_set_features => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            regs::QUEUE_SEL => self.queue_sel = v,
            regs::QUEUE_NUM => self.update_queue(|q| q.set_size(v as u16)),
            regs::QUEUE_READY => {
                if self.queue_config_allowed() {
                    if let Some(q) = self.selected_queue() {
                        q.set_ready(v == 1);
                    }
                }
            }
            regs::QUEUE_NOTIFY => self.queue_notified(v as usize),
            regs::INTERRUPT_ACK => self.interrupt.ack(v),
            regs::STATUS => self.write_status(v),
            regs::QUEUE_DESC_LOW => self.update_queue(|q| q.set_desc_table_address(Some(v), None)),
            regs::QUEUE_DESC_HIGH => self.update_queue(|q| q.set_desc_table_address(None, Some(v))),
            regs::QUEUE_AVAIL_LOW => self.update_queue(|q| q.set_avail_ring_address(Some(v), None)),
            regs::QUEUE_AVAIL_HIGH => {
                self.update_queue(|q| q.set_avail_ring_address(None, Some(v)))
            }
            regs::QUEUE_USED_LOW => self.update_queue(|q| q.set_used_ring_address(Some(v), None)),
            regs::QUEUE_USED_HIGH => self.update_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => tracing::debug!(offset, v, "virtio-mmio: ignored register write"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= regs::CONFIG {
            self.device.read_config(offset - regs::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= regs::CONFIG {
            if self.status & status::FAILED == 0 {
                self.device.write_config(offset - regs::CONFIG, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            tracing::debug!(
                offset,
                len = data.len(),
                "virtio-mmio: non-32-bit register write"
            );
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_register(offset, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vm_memory::GuestAddress;

    #[derive(Default)]
    struct Calls {
        activated: Option<(usize, u64)>,
        notified: Vec<usize>,
        resets: usize,
        config: Vec<u8>,
    }

    struct MockDevice {
        calls: Arc<Mutex<Calls>>,
        fail_activate: bool,
    }

    const MOCK_FEATURE: u64 = 1 << 3;

    impl VirtioDevice for MockDevice {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn device_features(&self) -> u64 {
            MOCK_FEATURE
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = offset as u8 + i as u8;
            }
        }
        fn write_config(&mut self, _offset: u64, data: &[u8]) {
            self.calls.lock().unwrap().config.extend_from_slice(data);
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), String> {
            if self.fail_activate {
                return Err("mock failure".into());
            }
            ctx.interrupt.signal_used_queue().unwrap();
            self.calls.lock().unwrap().activated = Some((ctx.queues.len(), ctx.acked_features));
            Ok(())
        }
        fn process_queue(&mut self, index: usize) {
            self.calls.lock().unwrap().notified.push(index);
        }
        fn reset(&mut self) {
            self.calls.lock().unwrap().resets += 1;
        }
    }

    fn transport(fail_activate: bool) -> (MmioTransport, Arc<Mutex<Calls>>) {
        let calls = Arc::new(Mutex::new(Calls::default()));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let dev = MockDevice {
            calls: calls.clone(),
            fail_activate,
        };
        let t =
            MmioTransport::new(Box::new(dev), mem, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
        (t, calls)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport) {
        w(t, regs::STATUS, status::ACKNOWLEDGE);
        w(t, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, regs::DRIVER_FEATURES_SEL, 0);
        w(t, regs::DRIVER_FEATURES, MOCK_FEATURE as u32);
        w(t, regs::DRIVER_FEATURES_SEL, 1);
        w(t, regs::DRIVER_FEATURES, 1); // VERSION_1
        w(
            t,
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    fn setup_queues(t: &mut MmioTransport) {
        for (i, base) in [(0u32, 0x1000u32), (1, 0x4000)] {
            w(t, regs::QUEUE_SEL, i);
            w(t, regs::QUEUE_NUM, 8);
            w(t, regs::QUEUE_DESC_LOW, base);
            w(t, regs::QUEUE_DESC_HIGH, 0);
            w(t, regs::QUEUE_AVAIL_LOW, base + 0x1000);
            w(t, regs::QUEUE_AVAIL_HIGH, 0);
            w(t, regs::QUEUE_USED_LOW, base + 0x2000);
            w(t, regs::QUEUE_USED_HIGH, 0);
            w(t, regs::QUEUE_READY, 1);
        }
    }

    const ALL: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport(false);
        assert_eq!(r(&mut t, regs::MAGIC_VALUE), MMIO_MAGIC);
        assert_eq!(r(&mut t, regs::VERSION), 2);
        assert_eq!(r(&mut t, regs::DEVICE_ID), 4);
        assert_eq!(r(&mut t, regs::VENDOR_ID), MMIO_VENDOR_ID);
        w(&mut t, regs::QUEUE_SEL, 1);
        assert_eq!(r(&mut t, regs::QUEUE_NUM_MAX), 8);
        w(&mut t, regs::QUEUE_SEL, 5);
        assert_eq!(r(&mut t, regs::QUEUE_NUM_MAX), 0);
        // Narrow register reads return zero rather than garbage.
        let mut b = [0xaau8; 2];
        t.read(regs::MAGIC_VALUE, &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn device_features_are_paged() {
        let (mut t, _) = transport(false);
        w(&mut t, regs::DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, regs::DEVICE_FEATURES), MOCK_FEATURE as u32);
        w(&mut t, regs::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, regs::DEVICE_FEATURES), 1);
        w(&mut t, regs::DEVICE_FEATURES_SEL, 2);
        assert_eq!(r(&mut t, regs::DEVICE_FEATURES), 0);
    }

    #[test]
    fn full_initialisation_activates_device() {
        let (mut t, calls) = transport(false);
        negotiate(&mut t);
        assert_eq!(
            r(&mut t, regs::STATUS) & status::FEATURES_OK,
            status::FEATURES_OK
        );
        setup_queues(&mut t);
        w(&mut t, regs::STATUS, ALL);
        assert_eq!(r(&mut t, regs::STATUS), ALL);
        assert!(t.is_activated());
        assert_eq!(
            calls.lock().unwrap().activated,
            Some((2, MOCK_FEATURE | VIRTIO_F_VERSION_1))
        );
        // The device raised its interrupt during activation; the driver acks it.
        assert_eq!(r(&mut t, regs::INTERRUPT_STATUS), 1);
        assert_eq!(t.interrupt().irqfd().read().unwrap(), 1);
        w(&mut t, regs::INTERRUPT_ACK, 1);
        assert_eq!(r(&mut t, regs::INTERRUPT_STATUS), 0);
        // Notifications reach the device only once activated, and only for real queues.
        w(&mut t, regs::QUEUE_NOTIFY, 1);
        w(&mut t, regs::QUEUE_NOTIFY, 9);
        assert_eq!(calls.lock().unwrap().notified, vec![1]);
        // Queue registers are frozen after DRIVER_OK.
        w(&mut t, regs::QUEUE_SEL, 0);
        w(&mut t, regs::QUEUE_READY, 0);
        assert_eq!(r(&mut t, regs::QUEUE_READY), 1);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let (mut t, _) = transport(false);
        w(&mut t, regs::STATUS, status::ACKNOWLEDGE);
        w(&mut t, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, regs::DRIVER_FEATURES, MOCK_FEATURE as u32);
        w(
            &mut t,
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r(&mut t, regs::STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn unoffered_features_are_refused() {
        let (mut t, _) = transport(false);
        w(&mut t, regs::STATUS, status::ACKNOWLEDGE);
        w(&mut t, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, regs::DRIVER_FEATURES, 1 << 5);
        w(&mut t, regs::DRIVER_FEATURES_SEL, 1);
        w(&mut t, regs::DRIVER_FEATURES, 1);
        w(
            &mut t,
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r(&mut t, regs::STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn out_of_order_status_is_ignored() {
        let (mut t, calls) = transport(false);
        w(&mut t, regs::STATUS, ALL);
        assert_eq!(r(&mut t, regs::STATUS), 0);
        w(&mut t, regs::STATUS, status::ACKNOWLEDGE);
        w(
            &mut t,
            regs::STATUS,
            status::ACKNOWLEDGE | status::FEATURES_OK,
        );
        assert_eq!(r(&mut t, regs::STATUS), status::ACKNOWLEDGE);
        // Queue setup before FEATURES_OK is ignored.
        w(&mut t, regs::QUEUE_NUM, 4);
        w(&mut t, regs::QUEUE_READY, 1);
        assert_eq!(r(&mut t, regs::QUEUE_READY), 0);
        assert!(calls.lock().unwrap().activated.is_none());
    }

    #[test]
    fn driver_ok_with_unready_queue_needs_reset() {
        let (mut t, calls) = transport(false);
        negotiate(&mut t);
        w(&mut t, regs::QUEUE_SEL, 0);
        w(&mut t, regs::QUEUE_READY, 1);
        w(&mut t, regs::STATUS, ALL);
        let s = r(&mut t, regs::STATUS);
        assert_eq!(s & status::DRIVER_OK, 0);
        assert_ne!(s & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(r(&mut t, regs::INTERRUPT_STATUS), 2);
        assert!(calls.lock().unwrap().activated.is_none());
    }

    #[test]
    fn failed_activation_needs_reset() {
        let (mut t, _) = transport(true);
        negotiate(&mut t);
        setup_queues(&mut t);
        w(&mut t, regs::STATUS, ALL);
        assert_ne!(r(&mut t, regs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert!(!t.is_activated());
    }

    #[test]
    fn queue_with_bad_addresses_is_not_activated() {
        let (mut t, _) = transport(false);
        negotiate(&mut t);
        w(&mut t, regs::QUEUE_SEL, 0);
        w(&mut t, regs::QUEUE_NUM, 8);
        w(&mut t, regs::QUEUE_DESC_LOW, 0xfff0_0000);
        w(&mut t, regs::QUEUE_READY, 1);
        w(&mut t, regs::STATUS, ALL);
        assert!(!t.is_activated());
    }

    #[test]
    fn reset_clears_state_and_resets_device() {
        let (mut t, calls) = transport(false);
        negotiate(&mut t);
        setup_queues(&mut t);
        w(&mut t, regs::STATUS, ALL);
        w(&mut t, regs::STATUS, 0);
        assert_eq!(r(&mut t, regs::STATUS), 0);
        assert!(!t.is_activated());
        assert_eq!(t.acked_features(), 0);
        assert_eq!(calls.lock().unwrap().resets, 1);
        w(&mut t, regs::QUEUE_SEL, 0);
        assert_eq!(r(&mut t, regs::QUEUE_READY), 0);
        w(&mut t, regs::QUEUE_NOTIFY, 0);
        assert!(calls.lock().unwrap().notified.is_empty());
    }

    #[test]
    fn config_space_is_forwarded() {
        let (mut t, calls) = transport(false);
        let mut b = [0u8; 2];
        t.read(regs::CONFIG + 4, &mut b);
        assert_eq!(b, [4, 5]);
        let gen = r(&mut t, regs::CONFIG_GENERATION);
        t.write(regs::CONFIG, &[9]);
        assert_eq!(calls.lock().unwrap().config, vec![9]);
        assert_ne!(r(&mut t, regs::CONFIG_GENERATION), gen);
    }
}
