//! x86_64 boot: CPUID, MSRs, LAPIC, registers/GDT/page tables, memory map, MP table and the
//! kernel/initrd/command-line loader.

pub mod cpuid;
pub mod gdt;
pub mod lapic;
pub mod loader;
pub mod memmap;
pub mod mptable;
pub mod msrs;
pub mod paging;
pub mod regs;
