//! virtio-vsock (device id 19) with a hybrid Unix-socket backend, as Firecracker has.
//!
//! [`device`] moves packets between the virtqueues and the backend: descriptor chains are
//! parsed by the `virtio-vsock` crate (every address and length checked by vm-memory and
//! virtio-queue), a malformed chain fails only its own packet. [`backend`] proxies streams to
//! host Unix sockets; [`connection`] holds one stream's state and credit; [`packet`] the wire
//! constants. See docs/devices.md for the protocol on the host side and the threat model.

pub mod backend;
pub mod connection;
pub mod device;
pub mod packet;

pub use device::{Vsock, VsockError, VsockStats};

#[cfg(test)]
mod tests;
