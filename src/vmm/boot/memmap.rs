//! The guest's e820 memory map (also used for the PVH memory map).

use crate::vmm::layout::{EBDA_START, HIMEM_START};

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// One memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// e820 type.
    pub kind: u32,
}

/// The map for the RAM ranges `ram` (as returned by `layout::ram_ranges`): low RAM up to the
/// EBDA, the EBDA..1 MiB hole reserved, then high RAM.
pub fn memory_map(ram: &[(u64, u64)]) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for &(start, len) in ram {
        let end = start + len;
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(MemoryMapEntry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::layout::ram_ranges;

    #[test]
    fn map_has_low_ram_hole_and_high_ram() {
        let m = memory_map(&ram_ranges(128 << 20));
        assert_eq!(m.len(), 3);
        assert_eq!(m[2].addr, HIMEM_START);
        assert_eq!(m[2].addr + m[2].size, 128 << 20);
        assert_eq!(m[1].kind, E820_RESERVED);
        let big = memory_map(&ram_ranges(5 << 30));
        assert_eq!(big.len(), 4);
        assert_eq!(big[3].addr, 1 << 32);
    }
}
