//! Devices: the PIO/MMIO bus, legacy devices and the virtio-mmio transport.

pub mod boot_timer;
pub mod bus;
pub mod i8042;
pub mod poweroff;
pub mod serial;
pub mod virtio;
