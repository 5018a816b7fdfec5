//! `--isolation vm`: each container in its own KVM microVM whose PID 1 is the guest agent
//! (kvmbox-agent). The host side plans and launches the VM ([`crate::vm_launch`]), then talks
//! to the agent over the VMM's hybrid vsock socket ([`client`], protocol in
//! [`guest_agent::protocol`]); stdio travels on per-process streams ([`stdio`]).

pub mod client;
pub mod console_log;
pub mod foreground;
pub mod lifecycle;
pub mod stdio;
pub mod timing;

pub use client::{AgentClient, AgentError, AgentTarget};
pub use lifecycle::{InitStdio, VmSettings};
