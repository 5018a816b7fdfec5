//! containerd runtime v2 shim for kvmbox (`io.containerd.kvmbox.v2`).

fn main() {
    std::process::exit(kvmbox::shim::main());
}
