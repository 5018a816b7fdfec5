//! CPUID: KVM's supported set, filtered for the CPU profile and patched per vCPU with its APIC
//! id and the VM topology (one socket, one thread per core, `vcpus` cores).

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::vmm::config::CpuProfile;
use crate::vmm::error::{Result, VmmError};

// Leaf 1 ECX/EDX bits.
const ECX_POPCNT: u32 = 1 << 23;
const ECX_XSAVE: u32 = 1 << 26;
const ECX_OSXSAVE: u32 = 1 << 27;
const ECX_AVX: u32 = 1 << 28;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
// Leaf 7.0 EBX bits.
const EBX_SMEP: u32 = 1 << 7;
const EBX_AVX2: u32 = 1 << 5;
const EBX_SMAP: u32 = 1 << 20;
const EBX_AVX512F: u32 = 1 << 16;

/// KVM's supported CPUID, filtered for `profile` (without per-vCPU fields).
pub fn base_cpuid(kvm: &Kvm, profile: CpuProfile) -> Result<CpuId> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| VmmError::kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    filter_for_profile(&mut cpuid, profile);
    Ok(cpuid)
}

/// Hide what KVM's instruction emulator cannot execute when guest kernel code is emulated
/// (SMAP's clac/stac, XSAVE, POPCNT, AVX*). On the nested-PVM host the guest reads the host
/// CPUID anyway, so the guest kernel clears the same features itself when it sees
/// `kvmbox.emulated_cpu`; setting them here keeps the VMM's view honest and covers hosts
/// that do honour KVM_SET_CPUID2.
pub fn filter_for_profile(cpuid: &mut CpuId, profile: CpuProfile) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ecx |= ECX_HYPERVISOR;
                if profile == CpuProfile::Emulated {
                    e.ecx &= !(ECX_POPCNT | ECX_XSAVE | ECX_OSXSAVE | ECX_AVX);
                }
            }
            7 if e.index == 0 && profile == CpuProfile::Emulated => {
                e.ebx &= !(EBX_SMAP | EBX_SMEP | EBX_AVX2 | EBX_AVX512F);
            }
            0xd if profile == CpuProfile::Emulated => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

/// Patch `cpuid` for vCPU `id` of `count` and set it on `vcpu`.
pub fn setup_cpuid(vcpu: &VcpuFd, base: &CpuId, id: u8, count: u8) -> Result<()> {
    let mut cpuid = base.clone();
    patch_topology(&mut cpuid, id, count);
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| VmmError::kvm("KVM_SET_CPUID2", e))
}

/// Write APIC id `id` and a `count`-core, single-socket topology into the topology leaves.
pub fn patch_topology(cpuid: &mut CpuId, id: u8, count: u8) {
    let cores_bits = u32::from(count.max(1)).next_power_of_two().trailing_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            4 => {
                // Cores per package - 1 in EAX[31:26]; one thread per cache.
                e.eax = (e.eax & 0x03ff_c3ff) | ((u32::from(count) - 1) << 26);
            }
            // AMD: number of cores and APIC id size.
            0x8000_0008 => {
                e.ecx = (e.ecx & !0xf0ff) | (u32::from(count) - 1) | (cores_bits.max(1) << 12);
            }
            // AMD: extended APIC id, one thread per compute unit, one node.
            0x8000_001e => {
                e.eax = u32::from(id);
                e.ebx = u32::from(id) & 0xff;
                e.ecx = 0;
            }
            0xb => {
                e.edx = u32::from(id);
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 0x100;
                    }
                    1 => {
                        e.eax = cores_bits;
                        e.ebx = u32::from(count);
                        e.ecx = 0x200 | 1;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn sample() -> CpuId {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ecx: ECX_XSAVE | ECX_POPCNT,
                ebx: 0xff00_1234,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                ebx: EBX_SMAP | EBX_SMEP | 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x8000_001e,
                ecx: 0x0102,
                ..Default::default()
            },
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn emulated_profile_hides_unemulatable_features() {
        let mut c = sample();
        filter_for_profile(&mut c, CpuProfile::Emulated);
        let s = c.as_slice();
        assert_eq!(s[0].ecx & (ECX_XSAVE | ECX_POPCNT), 0);
        assert_ne!(s[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(s[1].ebx, 1);
        let mut h = sample();
        filter_for_profile(&mut h, CpuProfile::Host);
        assert_ne!(h.as_slice()[1].ebx & EBX_SMAP, 0);
    }

    #[test]
    fn topology_carries_apic_id() {
        let mut c = sample();
        patch_topology(&mut c, 3, 4);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_eq!(s[0].ebx & 0xffff, 0x1234);
        assert_eq!((s[2].edx, s[2].ebx, s[2].eax), (3, 4, 2));
        assert_eq!((s[3].eax, s[3].ecx), (3, 0));
    }
}
