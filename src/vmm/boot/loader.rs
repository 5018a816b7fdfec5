//! Kernel, initrd and command-line loading, and the boot structures for the two entry paths:
//! PVH (ELF vmlinux with a XEN_ELFNOTE_PHYS32_ENTRY note: `hvm_start_info` + memory map) and
//! the 64-bit Linux boot protocol (bzImage, or a vmlinux without PVH note: `boot_params`).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, GuestAddress, GuestMemoryMmap};

use super::memmap::MemoryMapEntry;
use super::regs::EntryMode;
use crate::vmm::error::{file_err, Result, VmmError};
use crate::vmm::layout::{
    CMDLINE_ADDR, CMDLINE_MAX_SIZE, HIMEM_START, PVH_INFO_ADDR, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR,
    ZERO_PAGE_ADDR,
};

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// Kernel image formats kvmbox boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF64 x86_64 vmlinux.
    Elf,
    /// Linux bzImage.
    BzImage,
}

/// Identify an image from its first bytes, or say why it cannot be booted.
pub fn detect_format(head: &[u8], file_len: u64) -> std::result::Result<KernelFormat, String> {
    if file_len == 0 {
        return Err("file is empty".into());
    }
    if head.len() >= 4 && &head[..4] == ELF_MAGIC {
        if head.len() < 64 {
            return Err(format!(
                "truncated ELF: {file_len} bytes, shorter than an ELF64 header"
            ));
        }
        if head[4] != ELFCLASS64 {
            return Err("32-bit ELF; kvmbox boots 64-bit x86_64 kernels".into());
        }
        if head[5] != ELFDATA2LSB {
            return Err("big-endian ELF; kvmbox boots little-endian x86_64 kernels".into());
        }
        let machine = u16::from_le_bytes([head[18], head[19]]);
        if machine != EM_X86_64 {
            let name = match machine {
                3 => "i386",
                40 => "arm",
                183 => "aarch64",
                243 => "riscv",
                _ => "unknown",
            };
            return Err(format!(
                "ELF for machine {name} (e_machine {machine}); kvmbox boots x86_64 kernels"
            ));
        }
        return Ok(KernelFormat::Elf);
    }
    if head.len() >= BZIMAGE_MAGIC_OFFSET + 4
        && &head[BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4] == BZIMAGE_MAGIC
    {
        return Ok(KernelFormat::BzImage);
    }
    Err(format!(
        "not a kernel: neither an ELF vmlinux nor a bzImage ({file_len} bytes)"
    ))
}

/// A kernel placed in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Format of the image.
    pub format: KernelFormat,
    /// Entry mode and address.
    pub mode: EntryMode,
    /// Entry point.
    pub entry: u64,
    /// First byte after the loaded image.
    pub end: u64,
    /// bzImage setup header (copied into `boot_params`).
    pub setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

fn kernel_err(path: &Path, reason: impl Into<String>) -> VmmError {
    VmmError::Kernel {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Validate and load the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel> {
    let mut file = File::open(path).map_err(|e| file_err("kernel", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| file_err("kernel", path, e))?
        .len();
    let mut head = vec![0u8; 1024];
    let n = read_up_to(&mut file, &mut head).map_err(|e| file_err("kernel", path, e))?;
    head.truncate(n);
    let format = detect_format(&head, len).map_err(|r| kernel_err(path, r))?;
    let himem = Some(GuestAddress(HIMEM_START));
    let result = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut file, himem),
        KernelFormat::BzImage => BzImage::load(mem, None, &mut file, himem),
    }
    .map_err(|e| kernel_err(path, describe_loader_error(&e)))?;
    let (mode, entry) = match (format, result.pvh_boot_cap) {
        (KernelFormat::Elf, PvhBootCapability::PvhEntryPresent(addr)) => {
            (EntryMode::Pvh, addr.raw_value())
        }
        (KernelFormat::Elf, _) => (EntryMode::Long64, result.kernel_load.raw_value()),
        // The 64-bit entry of a bzImage is 0x200 past its protected-mode start.
        (KernelFormat::BzImage, _) => (EntryMode::Long64, result.kernel_load.raw_value() + 0x200),
    };
    Ok(LoadedKernel {
        format,
        mode,
        entry,
        end: result.kernel_end,
        setup_header: result.setup_header,
    })
}

fn describe_loader_error(e: &loader::Error) -> String {
    match e {
        loader::Error::Elf(loader::elf::Error::ReadKernelImage) => {
            "truncated or too large: a segment could not be read into guest memory".into()
        }
        loader::Error::Elf(loader::elf::Error::ReadProgramHeader) => {
            "truncated ELF: program headers missing".into()
        }
        other => other.to_string(),
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            m => n += m,
        }
    }
    Ok(n)
}

/// Load the initrd at the highest page-aligned address below `max_end` that is above
/// `kernel_end`. Returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    max_end: u64,
) -> Result<(u64, u64)> {
    let err = |reason: String| VmmError::Initrd {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| file_err("initrd", path, e))?;
    let size = file
        .metadata()
        .map_err(|e| file_err("initrd", path, e))?
        .len();
    if size == 0 {
        return Err(err("file is empty".into()));
    }
    let addr = max_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or_else(|| {
            err(format!(
                "{size} bytes do not fit in guest memory above the kernel (ends at {kernel_end:#x}); raise --memory"
            ))
        })?;
    let mut remaining = size as usize;
    let mut at = addr;
    while remaining > 0 {
        let chunk = remaining.min(1 << 20);
        mem_read_from(mem, at, &mut file, chunk).map_err(|e| err(e.to_string()))?;
        remaining -= chunk;
        at += chunk as u64;
    }
    Ok((addr, size))
}

fn mem_read_from(
    mem: &GuestMemoryMmap,
    at: u64,
    file: &mut File,
    len: usize,
) -> std::result::Result<(), vm_memory::GuestMemoryError> {
    use vm_memory::Bytes;
    mem.read_exact_volatile_from(GuestAddress(at), file, len)
}

/// Build and write the kernel command line.
pub fn load_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<Cmdline> {
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(VmmError::Cmdline(format!(
            "{} bytes; the limit is {} bytes",
            cmdline.len(),
            CMDLINE_MAX_SIZE - 1
        )));
    }
    let cl = Cmdline::try_from(cmdline, CMDLINE_MAX_SIZE)
        .map_err(|e| VmmError::Cmdline(e.to_string()))?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cl)
        .map_err(|e| VmmError::Cmdline(e.to_string()))?;
    Ok(cl)
}

/// Write `hvm_start_info`, the module list (initrd) and the memory map for PVH entry.
/// Returns the value for %ebx.
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    map: &[MemoryMapEntry],
    initrd: Option<(u64, u64)>,
) -> Result<u64> {
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    if !modules.is_empty() {
        start_info.nr_modules = modules.len() as u32;
        start_info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|e| VmmError::Boot(e.to_string()))?;
    Ok(PVH_INFO_ADDR)
}

/// Write the zero page (`boot_params`) for the 64-bit Linux boot protocol. Returns the value
/// for %rsi.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    map: &[MemoryMapEntry],
    initrd: Option<(u64, u64)>,
) -> Result<u64> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    if map.len() > params.e820_table.len() {
        return Err(VmmError::Boot("too many e820 entries".into()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    let bp = BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR));
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem)
        .map_err(|e| VmmError::Boot(e.to_string()))?;
    Ok(ZERO_PAGE_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_header(class: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(ELF_MAGIC);
        h[4] = class;
        h[5] = ELFDATA2LSB;
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    }

    #[test]
    fn detects_and_rejects_formats() {
        assert_eq!(detect_format(&elf_header(2, 62), 64), Ok(KernelFormat::Elf));
        assert!(detect_format(&[], 0).unwrap_err().contains("empty"));
        assert!(detect_format(&elf_header(1, 3), 64)
            .unwrap_err()
            .contains("32-bit"));
        assert!(detect_format(&elf_header(2, 183), 64)
            .unwrap_err()
            .contains("aarch64"));
        assert!(detect_format(&elf_header(2, 62)[..20], 20)
            .unwrap_err()
            .contains("truncated"));
        assert!(detect_format(b"random bytes", 12)
            .unwrap_err()
            .contains("not a kernel"));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(BZIMAGE_MAGIC);
        assert_eq!(detect_format(&bz, 0x300), Ok(KernelFormat::BzImage));
    }
}
