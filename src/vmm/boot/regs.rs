//! Initial vCPU state for each entry mode: real mode (test guests), 32-bit PVH, 64-bit Linux.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{self, kvm_segment_from_gdt};
use super::paging;
use crate::vmm::error::{Result, VmmError};
use crate::vmm::layout::{BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// How a vCPU enters the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 16-bit real mode at CS:IP = 0:`ip` (only for tiny test guests).
    Real,
    /// PVH: 32-bit protected mode, paging off, %ebx = `hvm_start_info`.
    Pvh,
    /// 64-bit long mode with the boot identity map, %rsi = `boot_params`.
    Long64,
}

/// Set registers, segment state and FPU for `mode`; `entry` is the first instruction and `arg`
/// goes to %ebx (PVH) or %rsi (64-bit Linux boot protocol).
pub fn setup_vcpu_regs(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    entry: u64,
    arg: u64,
) -> Result<()> {
    let kvm = |what| move |e| VmmError::kvm(what, e);
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Real => {
            sregs.cs.base = 0;
            sregs.cs.selector = 0;
        }
        EntryMode::Pvh => {
            write_gdt(mem, &[0, gdt::CODE32, gdt::DATA, gdt::TSS])?;
            set_flat_segments(&mut sregs, gdt::CODE32);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rbx = arg;
        }
        EntryMode::Long64 => {
            write_gdt(mem, &[0, gdt::CODE64, gdt::DATA, gdt::TSS])?;
            set_flat_segments(&mut sregs, gdt::CODE64);
            sregs.cr3 = paging::setup_identity_map(mem)
                .map_err(|e| VmmError::Boot(format!("page tables: {e}")))?;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = arg;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;
    Ok(())
}

fn write_gdt(mem: &GuestMemoryMmap, table: &[u64]) -> Result<()> {
    for (i, entry) in table.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(|e| VmmError::Boot(format!("GDT: {e}")))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(|e| VmmError::Boot(format!("IDT: {e}")))
}

fn set_flat_segments(sregs: &mut kvm_sregs, code: u64) {
    let code_seg = kvm_segment_from_gdt(code, 1);
    let data_seg = kvm_segment_from_gdt(gdt::DATA, 2);
    let tss_seg = kvm_segment_from_gdt(gdt::TSS, 3);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 0;
    sregs.cs = code_seg;
    sregs.ds = data_seg;
    sregs.es = data_seg;
    sregs.fs = data_seg;
    sregs.gs = data_seg;
    sregs.ss = data_seg;
    sregs.tr = tss_seg;
}
