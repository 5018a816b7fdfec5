//! The KVM VM: `/dev/kvm`, the VM fd, guest memory and the in-kernel interrupt controllers.

use std::sync::Arc;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::error::{Result, VmmError};
use super::layout;

/// A KVM virtual machine with its guest memory.
pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
    memory: GuestMemoryMmap,
    irqchip: bool,
}

impl Vm {
    /// Open `/dev/kvm`, create a VM with `memory_bytes` of RAM laid out as in [`layout`]; with
    /// `irqchip`, also create the in-kernel PIC/IOAPIC/LAPIC and PIT.
    pub fn new(memory_bytes: u64, irqchip: bool) -> Result<Self> {
        let kvm = Kvm::new().map_err(|e| VmmError::kvm("open /dev/kvm", e))?;
        if kvm.get_api_version() != 12 {
            return Err(VmmError::Config(format!(
                "unsupported KVM API version {}",
                kvm.get_api_version()
            )));
        }
        for (cap, name) in [
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmmError::MissingCapability(name));
            }
        }
        let fd = kvm
            .create_vm()
            .map_err(|e| VmmError::kvm("KVM_CREATE_VM", e))?;
        let memory = create_memory(memory_bytes)?;
        register_memory(&fd, &memory)?;
        fd.set_tss_address(layout::KVM_TSS_ADDR as usize)
            .map_err(|e| VmmError::kvm("KVM_SET_TSS_ADDR", e))?;
        fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
            .map_err(|e| VmmError::kvm("KVM_SET_IDENTITY_MAP_ADDR", e))?;
        if irqchip {
            fd.create_irq_chip()
                .map_err(|e| VmmError::kvm("KVM_CREATE_IRQCHIP", e))?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(pit)
                .map_err(|e| VmmError::kvm("KVM_CREATE_PIT2", e))?;
        }
        Ok(Vm {
            kvm,
            fd: Arc::new(fd),
            memory,
            irqchip,
        })
    }

    /// The `/dev/kvm` handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM fd (shared with devices that register irqfds/ioeventfds).
    pub fn fd(&self) -> &Arc<VmFd> {
        &self.fd
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Whether the in-kernel irqchip exists.
    pub fn has_irqchip(&self) -> bool {
        self.irqchip
    }

    /// Host addresses where guest memory regions are mapped (to tell them apart in smaps).
    pub fn memory_host_addrs(&self) -> Vec<u64> {
        self.memory
            .iter()
            .filter_map(|r| r.get_host_address(vm_memory::MemoryRegionAddress(0)).ok())
            .map(|p| p as u64)
            .collect()
    }

    /// End address (exclusive) of guest RAM.
    pub fn memory_end(&self) -> u64 {
        self.memory.last_addr().raw_value() + 1
    }
}

fn create_memory(memory_bytes: u64) -> Result<GuestMemoryMmap> {
    if memory_bytes < 0x10_0000 || memory_bytes % 0x1000 != 0 {
        return Err(VmmError::Memory(format!(
            "guest memory size {memory_bytes:#x} must be page-aligned and at least 1 MiB"
        )));
    }
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(memory_bytes)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmmError::Memory(e.to_string()))
}

fn register_memory(fd: &VmFd, memory: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in memory.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmmError::Memory(e.to_string()))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap owned by `memory`, which the Vm keeps alive for
        // as long as the VM fd exists.
        unsafe { fd.set_user_memory_region(r) }
            .map_err(|e| VmmError::kvm("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    Ok(())
}
