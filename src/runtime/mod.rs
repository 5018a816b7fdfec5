//! The runtime library: bundles, the state store and the container lifecycle, shared by the CLI
//! and the containerd shim.
