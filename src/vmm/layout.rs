//! The guest physical memory map of a kvmbox microVM (x86_64).
//!
//! ```text
//! 0x0000_0500  boot GDT            0x0000_0520  boot IDT (empty)
//! 0x0000_6000  PVH hvm_start_info  0x0000_6040  PVH module list (initrd)
//! 0x0000_7000  Linux zero page (boot_params) or PVH memory map
//! 0x0000_8ff0  boot stack top      0x0000_9000  PML4, 0xa000 PDPT, 0xb000 PD (1 GiB identity map)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (EBDA; the kernel scans 639K..640K)
//! 0x0010_0000  high memory: the kernel (vmlinux is linked at 16 MiB), initrd at the top of RAM
//! 0xc000_0000  MMIO gap up to 4 GiB: virtio-mmio at 0xd000_0000, IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000
//! 0x1_0000_0000 RAM above 3 GiB continues here
//! ```

/// Boot GDT address.
pub const GDT_ADDR: u64 = 0x500;
/// Boot IDT address (limit 0: any exception before the kernel sets its own IDT triple-faults).
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info` address (passed in %ebx).
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list address (one module: the initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map address.
pub const PVH_MEMMAP_ADDR: u64 = 0x7000;
/// Linux boot protocol zero page (`boot_params`), passed in %rsi.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table of the boot identity map.
pub const PML4_ADDR: u64 = 0x9000;
/// Level-3 page table of the boot identity map.
pub const PDPT_ADDR: u64 = 0xa000;
/// Level-2 page table of the boot identity map (2 MiB pages).
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line address.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Maximum kernel command line length including the NUL (x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA, where the MP table lives; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap; RAM beyond this continues at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First GSI handed to virtio-mmio devices (4 is COM1).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last usable IOAPIC pin.
pub const IRQ_MAX: u32 = 23;
/// IOAPIC MMIO address.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC MMIO address.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM's TSS region (3 pages) for VMX real-mode emulation, just below the BIOS area.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// KVM's identity-map page, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// COM1 port base.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 interrupt.
pub const COM1_IRQ: u32 = 4;
/// i8042 keyboard controller data port (0x60..=0x64).
pub const I8042_PORT: u16 = 0x60;
/// isa-debug-exit style power-off port (4 bytes wide).
pub const POWEROFF_PORT: u16 = 0xf4;
/// ACPI-like PM1a control port.
pub const PM1A_CNT_PORT: u16 = 0x604;
/// Boot timer debug port.
pub const BOOT_TIMER_PORT: u16 = 0x3f0;

/// The guest RAM ranges for `mem_size` bytes: below the MMIO gap and, beyond 3 GiB, above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let r = ram_ranges(4 << 30);
        assert_eq!(
            r,
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
    }
}
