//! Boot GDT entries and their KVM segment-register form.

use kvm_bindings::kvm_segment;

/// Build a GDT descriptor from `flags` (granularity/size/long nibble + access byte, as
/// `0xGF_AA` packed the way Linux's GDT_ENTRY macro does), `base` and `limit`.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// 64-bit code segment (L=1, present, DPL0, execute/read, accessed).
pub const CODE64: u64 = gdt_entry(0xa09b, 0, 0xfffff);
/// 32-bit flat code segment (D=1, G=1).
pub const CODE32: u64 = gdt_entry(0xc09b, 0, 0xfffff);
/// Flat data segment.
pub const DATA: u64 = gdt_entry(0xc093, 0, 0xfffff);
/// 32-bit busy TSS.
pub const TSS: u64 = gdt_entry(0x808b, 0, 0xfffff);

/// Decode a descriptor at GDT index `index` into a KVM segment register.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    if g == 1 {
        limit = (limit << 12) | 0xfff;
    }
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_decodes_as_long_mode_segment() {
        let s = kvm_segment_from_gdt(CODE64, 1);
        assert_eq!((s.l, s.db, s.present, s.type_, s.s), (1, 0, 1, 0xb, 1));
        assert_eq!((s.base, s.limit, s.selector), (0, 0xffff_ffff, 8));
    }

    #[test]
    fn known_encodings() {
        assert_eq!(CODE64, 0x00af_9b00_0000_ffff);
        assert_eq!(DATA, 0x00cf_9300_0000_ffff);
        let s = kvm_segment_from_gdt(DATA, 2);
        assert_eq!((s.db, s.l, s.type_), (1, 0, 3));
    }
}
