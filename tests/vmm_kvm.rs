//! Tiny hand-assembled guests driving the real KVM vCPU loop: port I/O and MMIO exits, the
//! 16550, power-off, several vCPUs, HLT, triple fault, emulation failures, and bad kernels.
//! Guest code here is emulated instruction by instruction on nested-PVM hosts: keep it tiny.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvmbox::vmm::boot::regs::{setup_vcpu_regs, EntryMode};
use kvmbox::vmm::builder::{attach_virtio, VmBuilder};
use kvmbox::vmm::config::{SerialOutput, VmConfig, KVM_PVM_SYSFS};
use kvmbox::vmm::devices::bus::{Bus, BusDevice};
use kvmbox::vmm::devices::poweroff::{DebugExit, Pm1aControl};
use kvmbox::vmm::devices::serial::{EventFdTrigger, SerialDevice, SerialWriter};
use kvmbox::vmm::devices::virtio::mmio::{regs, status};
use kvmbox::vmm::devices::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};
use kvmbox::vmm::error::VmmError;
use kvmbox::vmm::event_loop::EventLoop;
use kvmbox::vmm::exit::{ExitSignal, VmExit};
use kvmbox::vmm::timings::BootTimer;
use kvmbox::vmm::vcpu::{ExitContext, Vcpu, VcpuGroup};
use kvmbox::vmm::vm::Vm;
use vm_memory::{Bytes, GuestAddress};

const MEM: u64 = 4 << 20;
const CODE: u64 = 0x1000;
const TEST_PORT: u64 = 0x10;
const MMIO_ADDR: u64 = 0x1000_0000;

/// Records every write; reads return 0x2a in every byte.
#[derive(Default)]
struct Recorder {
    writes: Vec<(u64, Vec<u8>)>,
}

impl BusDevice for Recorder {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0x2a);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

struct Guest {
    vm: Vm,
    pio: Bus,
    mmio: Bus,
    exit: ExitSignal,
    vcpus: Vec<Vcpu>,
    recorder: Arc<Mutex<Recorder>>,
}

impl Guest {
    /// A VM with the recorder on port 0x10 and at MMIO 0x1000_0000 and the power-off ports.
    fn new(irqchip: bool) -> Guest {
        let vm = Vm::new(MEM, irqchip).expect("create VM");
        let exit = ExitSignal::new().unwrap();
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        pio.insert(recorder.clone(), TEST_PORT, 1).unwrap();
        mmio.insert(recorder.clone(), MMIO_ADDR, 0x1000).unwrap();
        pio.insert(Arc::new(Mutex::new(DebugExit::new(exit.clone()))), 0xf4, 4)
            .unwrap();
        pio.insert(
            Arc::new(Mutex::new(Pm1aControl::new(exit.clone()))),
            0x604,
            2,
        )
        .unwrap();
        Guest {
            vm,
            pio,
            mmio,
            exit,
            vcpus: Vec::new(),
            recorder,
        }
    }

    fn load(&self, addr: u64, code: &[u8]) {
        self.vm
            .memory()
            .write_slice(code, GuestAddress(addr))
            .unwrap();
    }

    fn add_vcpu(&mut self, mode: EntryMode, entry: u64) {
        let id = self.vcpus.len() as u8;
        let vcpu = Vcpu::new(&self.vm, id).unwrap();
        setup_vcpu_regs(vcpu.fd(), self.vm.memory(), mode, entry, 0).unwrap();
        self.vcpus.push(vcpu);
    }

    fn start(&mut self) -> VcpuGroup {
        let ctx = ExitContext {
            pio: Arc::new(self.pio.clone()),
            mmio: Arc::new(self.mmio.clone()),
            exit: self.exit.clone(),
            timer: None,
            memory: self.vm.memory().clone(),
        };
        VcpuGroup::start(std::mem::take(&mut self.vcpus), ctx).unwrap()
    }

    /// Run until the VM ends (panics after 20 s: a hang is a failure).
    fn run(mut self) -> (VmExit, Vec<(u64, Vec<u8>)>) {
        let mut group = self.start();
        let exit = self.exit.wait_timeout(Duration::from_secs(20));
        group.stop_and_join();
        let exit = exit.expect("guest did not finish within 20 s");
        let writes = std::mem::take(&mut self.recorder.lock().unwrap().writes);
        (exit, writes)
    }
}

fn on_emulated_host() -> bool {
    Path::new(KVM_PVM_SYSFS).exists()
}

#[test]
fn real_mode_port_io_reaches_the_bus_and_powers_off_with_status() {
    let mut g = Guest::new(false);
    // mov al,0x42; out 0x10,al; in al,0x10; out 0x10,al; mov al,7; out 0xf4,al; hlt
    g.load(
        CODE,
        &[
            0xb0, 0x42, 0xe6, 0x10, 0xe4, 0x10, 0xe6, 0x10, 0xb0, 0x07, 0xe6, 0xf4, 0xf4,
        ],
    );
    g.add_vcpu(EntryMode::Real, CODE);
    let (exit, writes) = g.run();
    assert_eq!(exit, VmExit::PowerOff(7));
    assert_eq!(exit.status(), 7);
    assert_eq!(writes, vec![(0, vec![0x42]), (0, vec![0x2a])]);
}

#[test]
fn pm1a_sleep_enable_powers_off_with_status_zero() {
    let mut g = Guest::new(false);
    // mov dx,0x604; mov ax,0x2000; out dx,ax; hlt
    g.load(CODE, &[0xba, 0x04, 0x06, 0xb8, 0x00, 0x20, 0xef, 0xf4]);
    g.add_vcpu(EntryMode::Real, CODE);
    assert_eq!(g.run().0, VmExit::PowerOff(0));
}

#[test]
fn long_mode_mmio_write_and_read() {
    let mut g = Guest::new(false);
    let code = [
        0xb8, 0x00, 0x00, 0x00, 0x10, // mov eax, 0x10000000
        0xc7, 0x00, 0x78, 0x56, 0x34, 0x12, // mov dword [rax], 0x12345678
        0x8b, 0x58, 0x04, // mov ebx, [rax+4]
        0x89, 0xd8, // mov eax, ebx
        0xe6, 0xf4, // out 0xf4, al  (status = the byte read over MMIO)
        0xf4, // hlt
    ];
    g.load(0x10_0000, &code);
    g.add_vcpu(EntryMode::Long64, 0x10_0000);
    let (exit, writes) = g.run();
    assert_eq!(exit, VmExit::PowerOff(0x2a));
    assert_eq!(writes, vec![(0, vec![0x78, 0x56, 0x34, 0x12])]);
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn serial_hello_through_the_16550() {
    let mut g = Guest::new(true);
    let out = Captured::default();
    let timer = BootTimer::new(Instant::now());
    let trigger = EventFdTrigger::new().unwrap();
    g.vm.fd().register_irqfd(&trigger.0, 4).unwrap();
    let serial = SerialDevice::new(
        trigger,
        SerialWriter::new(Box::new(out.clone()), Some(timer.clone())),
    );
    g.pio
        .insert(Arc::new(Mutex::new(serial)), 0x3f8, 8)
        .unwrap();
    let mut code = vec![0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for c in b"hello" {
        code.extend_from_slice(&[0xb0, *c, 0xee]); // mov al, c; out dx, al
    }
    code.extend_from_slice(&[0xb0, 0x00, 0xe6, 0xf4]); // power off, status 0
    g.load(CODE, &code);
    g.add_vcpu(EntryMode::Real, CODE);
    assert_eq!(g.run().0, VmExit::PowerOff(0));
    assert_eq!(&*out.0.lock().unwrap(), b"hello");
    assert!(!timer.report().contains("first serial output -"));
}

#[test]
fn several_vcpus_each_write_then_are_kicked_out_of_a_busy_loop() {
    let mut g = Guest::new(false);
    let n = 3u8;
    for i in 0..n {
        let at = CODE + u64::from(i) * 0x100;
        // mov al, i; out 0x10, al; jmp $
        g.load(at, &[0xb0, i, 0xe6, 0x10, 0xeb, 0xfe]);
        g.add_vcpu(EntryMode::Real, at);
    }
    let recorder = g.recorder.clone();
    let exit = g.exit.clone();
    let mut group = g.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen: Vec<u8> = recorder
            .lock()
            .unwrap()
            .writes
            .iter()
            .map(|w| w.1[0])
            .collect();
        seen.sort();
        if seen == (0..n).collect::<Vec<_>>() {
            break;
        }
        assert!(Instant::now() < deadline, "vCPU writes seen: {seen:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    // All vCPUs now spin in `jmp $`: stopping must kick them out of KVM_RUN.
    let t = Instant::now();
    exit.set(VmExit::Stopped);
    group.stop_and_join();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
}

#[test]
fn hlt_without_irqchip_ends_the_vm() {
    let mut g = Guest::new(false);
    g.load(CODE, &[0xf4]);
    g.add_vcpu(EntryMode::Real, CODE);
    assert_eq!(g.run().0, VmExit::Halted(0));
}

#[test]
fn triple_fault_is_a_reset() {
    let mut g = Guest::new(true);
    // ud2 with an empty IDT: #UD -> #DF -> triple fault -> KVM_EXIT_SHUTDOWN.
    g.load(0x10_0000, &[0x0f, 0x0b]);
    g.add_vcpu(EntryMode::Long64, 0x10_0000);
    let (exit, _) = g.run();
    assert!(
        matches!(exit, VmExit::Reset(ref why) if why.contains("triple fault")),
        "{exit:?}"
    );
    assert_ne!(exit.status(), 0);
}

#[test]
fn emulation_failure_reports_rip_and_instruction_bytes() {
    // popcnt ax, bx: KVM's instruction emulator cannot execute it. Where guest kernel code is
    // emulated (nested PVM) this must stop the VM with a report; on hardware-virtualized KVM
    // it simply runs and the guest powers off.
    let mut g = Guest::new(false);
    g.load(CODE, &[0xf3, 0x0f, 0xb8, 0xc3, 0xb0, 0x05, 0xe6, 0xf4]);
    g.add_vcpu(EntryMode::Real, CODE);
    let (exit, _) = g.run();
    if on_emulated_host() {
        let VmExit::Error(msg) = &exit else {
            panic!("expected an emulation failure, got {exit:?}")
        };
        eprintln!("reported: {msg}");
        assert!(msg.contains("RIP 0x1000"), "{msg}");
        assert!(msg.contains("f3 0f b8 c3"), "{msg}");
        assert_ne!(exit.status(), 0);
    } else {
        assert_eq!(exit, VmExit::PowerOff(5));
    }
}

fn build_with_kernel(bytes: &[u8]) -> (VmmError, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kernel");
    std::fs::write(&path, bytes).unwrap();
    let mut cfg = VmConfig::new(&path);
    cfg.serial = SerialOutput::Sink;
    cfg.memory_mib = 64;
    let err = match VmBuilder::new(cfg, BootTimer::new(Instant::now())).build() {
        Ok(_) => panic!("a bad kernel was accepted"),
        Err(e) => e,
    };
    (err, dir)
}

fn elf64_header(class: u8, machine: u16) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = class;
    h[5] = 1; // little endian
    h[6] = 1;
    h[16] = 2; // ET_EXEC
    h[18..20].copy_from_slice(&machine.to_le_bytes());
    h[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // e_entry
    h[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    h[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    h[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    h[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    h
}

#[test]
fn bad_kernel_files_are_clear_errors() {
    let mut truncated = elf64_header(2, 62);
    // PT_LOAD of 64 KiB at file offset 0x1000: the file ends long before.
    let mut ph = vec![0u8; 56];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes());
    ph[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
    ph[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes());
    ph[32..40].copy_from_slice(&0x1_0000u64.to_le_bytes());
    ph[40..48].copy_from_slice(&0x1_0000u64.to_le_bytes());
    truncated.extend_from_slice(&ph);
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "empty"),
        (
            "header only",
            elf64_header(2, 62)[..40].to_vec(),
            "truncated",
        ),
        ("truncated segment", truncated, "truncated"),
        ("aarch64", elf64_header(2, 183), "aarch64"),
        ("32-bit", elf64_header(1, 3), "32-bit"),
        ("random", random, "not a kernel"),
    ];
    for (name, bytes, expect) in cases {
        let (err, dir) = build_with_kernel(&bytes);
        let msg = err.to_string();
        assert!(matches!(err, VmmError::Kernel { .. }), "{name}: {msg}");
        assert!(msg.contains(expect), "{name}: {msg}");
        assert!(
            msg.contains(&dir.path().join("kernel").display().to_string()),
            "{name}: {msg}"
        );
        assert!(!msg.contains('\n'), "{name}: one line expected: {msg}");
    }
}

#[test]
fn cli_reports_a_bad_kernel_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vmlinux");
    std::fs::write(&path, b"").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvmbox"))
        .args(["vm", "boot", "--kernel"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("vmlinux") && errors[0].contains("empty"),
        "{stderr}"
    );
    assert!(stderr.contains("cpu profile"), "{stderr}");
}

/// Records queue notifications and answers each with a used-ring interrupt.
struct NotifyProbe {
    notified: Arc<Mutex<Vec<usize>>>,
    interrupt: Option<Arc<VirtioInterrupt>>,
}

impl VirtioDevice for NotifyProbe {
    fn device_type(&self) -> u32 {
        4
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[8, 8]
    }
    fn device_features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), String> {
        self.interrupt = Some(ctx.interrupt);
        Ok(())
    }
    fn process_queue(&mut self, index: usize) {
        self.notified.lock().unwrap().push(index);
        if let Some(i) = &self.interrupt {
            i.signal_used_queue().unwrap();
        }
    }
}

#[test]
fn virtio_queue_notify_goes_through_ioeventfd_and_the_event_loop() {
    let mut g = Guest::new(true);
    let base = 0x2000_0000u64;
    let notified = Arc::new(Mutex::new(Vec::new()));
    let probe = NotifyProbe {
        notified: notified.clone(),
        interrupt: None,
    };
    let mem = g.vm.memory().clone();
    let transport = attach_virtio(&g.vm, &mem, &mut g.mmio, Box::new(probe), base, 5).unwrap();
    // The driver side of the initialisation, done from the host for brevity.
    {
        let mut t = transport.lock().unwrap();
        let mut w = |off: u64, v: u32| BusDevice::write(&mut *t, off, &v.to_le_bytes());
        w(regs::STATUS, status::ACKNOWLEDGE);
        w(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(regs::DRIVER_FEATURES_SEL, 1);
        w(regs::DRIVER_FEATURES, 1);
        w(
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        for (q, at) in [(0u32, 0x20_0000u32), (1, 0x21_0000)] {
            w(regs::QUEUE_SEL, q);
            w(regs::QUEUE_DESC_LOW, at);
            w(regs::QUEUE_AVAIL_LOW, at + 0x1000);
            w(regs::QUEUE_USED_LOW, at + 0x2000);
            w(regs::QUEUE_READY, 1);
        }
        w(
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert!(t.is_activated());
    }
    // Guest: notify queue 1 at base+0x50 (handled by KVM's ioeventfd, no exit), then spin.
    let code = [
        0xb8, 0x50, 0x00, 0x00, 0x20, // mov eax, 0x20000050
        0xc7, 0x00, 0x01, 0x00, 0x00, 0x00, // mov dword [rax], 1
        0xeb, 0xfe, // jmp $
    ];
    g.load(0x10_0000, &code);
    g.add_vcpu(EntryMode::Long64, 0x10_0000);
    let mut event_loop = EventLoop::new(g.exit.clone()).unwrap();
    event_loop.add_virtio(transport.clone());
    let loop_thread = std::thread::spawn(move || event_loop.run_until_exit());
    let mut group = g.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while notified.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    g.exit.set(VmExit::Stopped);
    group.stop_and_join();
    assert_eq!(loop_thread.join().unwrap(), VmExit::Stopped);
    assert_eq!(*notified.lock().unwrap(), vec![1]);
    let t = transport.lock().unwrap();
    assert_eq!(t.interrupt().status() & 1, 1);
    assert!(
        t.interrupt().irqfd().read().is_err(),
        "irqfd is consumed by KVM's irqfd"
    );
}

/// `mov eax, <reg>; shr eax, 8; out 0xf4, al`: powers off with bits 8..15 of the boot argument
/// register (%esi = 0x7000 zero page, %ebx = 0x6000 PVH start info).
fn report_arg_code(reg_is_ebx: bool) -> Vec<u8> {
    let mov = if reg_is_ebx {
        [0x89, 0xd8]
    } else {
        [0x89, 0xf0]
    };
    let mut c = mov.to_vec();
    c.extend_from_slice(&[0xc1, 0xe8, 0x08, 0xe6, 0xf4, 0xf4]);
    c
}

fn boot_synthetic(kernel: &[u8], initrd: Option<&[u8]>) -> VmExit {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kernel");
    std::fs::write(&path, kernel).unwrap();
    let mut cfg = VmConfig::new(&path);
    cfg.serial = SerialOutput::Sink;
    cfg.memory_mib = 64;
    if let Some(data) = initrd {
        let p = dir.path().join("initrd");
        std::fs::write(&p, data).unwrap();
        cfg.initrd = Some(p);
    }
    let machine = VmBuilder::new(cfg, BootTimer::new(Instant::now()))
        .build()
        .expect("build");
    machine.run().expect("run").exit
}

/// A minimal ELF64 x86_64 image: one PT_LOAD of `code` at 1 MiB (file offset 0x1000), and
/// optionally a PT_NOTE with XEN_ELFNOTE_PHYS32_ENTRY pointing at `pvh_entry`.
fn synthetic_elf(code: &[u8], pvh_entry: Option<u32>) -> Vec<u8> {
    let mut f = elf64_header(2, 62);
    f[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes());
    let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
    f[56..58].copy_from_slice(&phnum.to_le_bytes());
    let mut load = vec![0u8; 56];
    load[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    load[8..16].copy_from_slice(&0x1000u64.to_le_bytes()); // p_offset
    load[16..24].copy_from_slice(&0x10_0000u64.to_le_bytes()); // p_vaddr
    load[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // p_paddr
    load[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    load[40..48].copy_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    f.extend_from_slice(&load);
    let mut note = Vec::new();
    if let Some(entry) = pvh_entry {
        note.extend_from_slice(&4u32.to_le_bytes()); // namesz
        note.extend_from_slice(&4u32.to_le_bytes()); // descsz
        note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&entry.to_le_bytes());
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        ph[8..16].copy_from_slice(&0x800u64.to_le_bytes());
        ph[32..40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        f.extend_from_slice(&ph);
    }
    f.resize(0x800, 0);
    f.extend_from_slice(&note);
    f.resize(0x1000, 0);
    f.extend_from_slice(code);
    f
}

#[test]
fn elf_with_pvh_note_enters_in_32_bit_mode_with_start_info_in_ebx() {
    let mut code = vec![0x90u8; 0x100];
    code.extend_from_slice(&report_arg_code(true));
    let exit = boot_synthetic(&synthetic_elf(&code, Some(0x10_0100)), Some(b"initrd"));
    assert_eq!(exit, VmExit::PowerOff(0x60));
}

#[test]
fn elf_without_pvh_note_enters_in_long_mode_with_boot_params_in_rsi() {
    let exit = boot_synthetic(&synthetic_elf(&report_arg_code(false), None), None);
    assert_eq!(exit, VmExit::PowerOff(0x70));
}

#[test]
fn bzimage_enters_64_bit_code_at_load_plus_0x200() {
    let mut f = vec![0u8; 1024]; // boot sector + one setup sector
    f[0x1f1] = 1; // setup_sects
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
    f[0x211] = 1; // LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    f[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    f.extend_from_slice(&[0x90u8; 0x200]); // 32-bit entry area (unused)
    f.extend_from_slice(&report_arg_code(false));
    let exit = boot_synthetic(&f, Some(b"initrd"));
    assert_eq!(exit, VmExit::PowerOff(0x70));
}
