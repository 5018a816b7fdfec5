//! kvmbox guest agent library.
//!
//! `container` holds the container setup (namespaces, cgroups, mounts, pivot_root, capabilities,
//! rlimits, user, hooks) used by *both* isolation models: the host runtime calls it directly in
//! `--isolation namespace`, and the in-VM agent (PID 1 of the guest) calls it in `--isolation vm`.
//! `protocol` is the host ↔ agent wire format, shared by both sides. `agent` is the in-VM agent
//! itself (the `kvmbox-agent` binary's server).

pub mod agent;
pub mod container;
pub mod protocol;
