//! Identity-mapped page tables for 64-bit entry (first 1 GiB, 2 MiB pages).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::vmm::layout::{PDPT_ADDR, PD_ADDR, PML4_ADDR};

/// Write PML4 → PDPT → PD mapping guest-virtual [0, 1 GiB) to the same physical addresses.
/// Returns the CR3 value.
pub fn setup_identity_map(mem: &GuestMemoryMmap) -> Result<u64, vm_memory::GuestMemoryError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    mem.write_obj(PDPT_ADDR | PRESENT_RW, GuestAddress(PML4_ADDR))?;
    mem.write_obj(PD_ADDR | PRESENT_RW, GuestAddress(PDPT_ADDR))?;
    let mut pd = [0u8; 4096];
    for (i, chunk) in pd.chunks_exact_mut(8).enumerate() {
        let entry = ((i as u64) << 21) | PRESENT_RW | PAGE_SIZE_2M;
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    mem.write_slice(&pd, GuestAddress(PD_ADDR))?;
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::vcpu::walk_page_tables;

    #[test]
    fn identity_map_translates_to_itself() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let cr3 = setup_identity_map(&mem).unwrap();
        assert_eq!(walk_page_tables(&mem, cr3, 0x1234), Some(0x1234));
        assert_eq!(walk_page_tables(&mem, cr3, 0x3fff_ffff), Some(0x3fff_ffff));
        assert_eq!(walk_page_tables(&mem, cr3, 0x4000_0000), None);
    }
}
