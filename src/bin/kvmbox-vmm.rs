//! `kvmbox-vmm <vm.json>`: runs one microVM (the lean per-container VMM process; see
//! docs/vmm.md, "The VMM process"). Exit status: the guest's power-off status, 2 after a guest
//! reset/panic, 1 on a VMM error, 128+N when stopped by signal N.

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(config), None) = (args.next(), args.next()) else {
        eprintln!("usage: kvmbox-vmm <vm.json>");
        std::process::exit(2);
    };
    std::process::exit(kvmbox::vmm::process::run(std::path::Path::new(&config)));
}
