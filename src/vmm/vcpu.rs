//! vCPU threads: the KVM_RUN loop, exit dispatch to the PIO/MMIO buses, and stopping.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::devices::bus::Bus;
use super::error::{Result, VmmError};
use super::exit::{ExitSignal, VmExit};
use super::timings::BootTimer;
use super::vm::Vm;

/// KVM system event types (include/uapi/linux/kvm.h).
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
/// KVM internal error sub-codes.
const INTERNAL_ERROR_NAMES: [&str; 5] = [
    "unknown",
    "emulation failure",
    "simultaneous exceptions",
    "delivery event",
    "unexpected exit reason",
];

thread_local! {
    /// This thread's kvm_run page, so the kick signal handler can set `immediate_exit`.
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN_PTR.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's live kvm_run mapping; it is cleared before
            // the VcpuFd is dropped. A volatile write of one byte is async-signal-safe.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
        }
    });
}

fn install_kick_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = register_signal_handler(kick_signal(), kick_handler)
            .map_err(|e| VmmError::sys("register vCPU kick signal", e.into()));
    });
    res
}

/// Everything a vCPU thread dispatches exits to.
#[derive(Clone)]
pub struct ExitContext {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Where the VM's end is reported.
    pub exit: ExitSignal,
    /// Boot-time recorder.
    pub timer: Option<BootTimer>,
    /// Guest memory (for error reports).
    pub memory: GuestMemoryMmap,
}

/// One vCPU before it runs.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
}

impl Vcpu {
    /// Create vCPU `id` in `vm`.
    pub fn new(vm: &Vm, id: u8) -> Result<Self> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|e| VmmError::kvm("KVM_CREATE_VCPU", e))?;
        Ok(Vcpu { id, fd })
    }

    /// The vCPU index (also its APIC id).
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The KVM vCPU fd, for register/CPUID/MSR setup.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Start the KVM_RUN loop on its own thread.
    pub fn start(self, ctx: ExitContext, stop: Arc<AtomicBool>) -> Result<JoinHandle<()>> {
        install_kick_handler()?;
        let id = self.id;
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let mut runner = VcpuRunner {
                    id: self.id,
                    fd: self.fd,
                    ctx,
                    stop,
                };
                let exit = runner.run();
                runner.ctx.exit.set(exit);
            })
            .map_err(|e| VmmError::sys("spawn vCPU thread", e))
    }
}

struct VcpuRunner {
    id: u8,
    fd: VcpuFd,
    ctx: ExitContext,
    stop: Arc<AtomicBool>,
}

impl VcpuRunner {
    fn run(&mut self) -> VmExit {
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN_PTR.with(|p| p.set(run_ptr));
        let exit = self.run_loop();
        KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
        exit
    }

    fn run_loop(&mut self) -> VmExit {
        if let Some(t) = &self.ctx.timer {
            t.first_kvm_run();
        }
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return VmExit::Stopped;
            }
            let outcome = match self.fd.run() {
                Ok(exit) => handle_exit(self.id, exit, &self.ctx),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    None
                }
                Err(e) => Some(ExitKind::Done(VmExit::Error(format!(
                    "vCPU {}: KVM_RUN failed: {e}",
                    self.id
                )))),
            };
            match outcome {
                Some(ExitKind::Done(exit)) => return exit,
                Some(ExitKind::InternalError) => return VmExit::Error(self.internal_error()),
                Some(ExitKind::Unexpected(what)) => {
                    return VmExit::Error(format!(
                        "vCPU {}: unexpected KVM exit {what} at {}",
                        self.id,
                        self.location()
                    ))
                }
                None => {}
            }
            if self.ctx.exit.is_set() {
                return VmExit::Stopped;
            }
        }
    }

    /// "RIP 0x.. (CS base, CPL), instruction bytes at RIP: ..".
    fn location(&self) -> String {
        let (regs, sregs) = match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => (r, s),
            (Err(e), _) | (_, Err(e)) => return format!("unknown RIP (registers: {e})"),
        };
        let linear = sregs.cs.base.wrapping_add(regs.rip);
        let bytes = match self.code_bytes(linear, &sregs) {
            Some(b) => b
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
            None => "unreadable".to_string(),
        };
        format!(
            "RIP {:#x} (CS {:#x} base {:#x}, CPL {}, CR0 {:#x}, CR3 {:#x}, EFER {:#x}), instruction bytes at RIP: {bytes}",
            regs.rip, sregs.cs.selector, sregs.cs.base, sregs.cs.dpl, sregs.cr0, sregs.cr3, sregs.efer
        )
    }

    /// Read up to 16 bytes of guest code at `linear`, translating through the guest's page tables.
    fn code_bytes(&self, linear: u64, sregs: &kvm_bindings::kvm_sregs) -> Option<Vec<u8>> {
        let phys = match self.fd.translate_gva(linear) {
            Ok(t) if t.valid != 0 => t.physical_address,
            _ if sregs.cr0 & 0x8000_0000 == 0 => linear & 0xffff_ffff,
            _ => walk_page_tables(&self.ctx.memory, sregs.cr3, linear)?,
        };
        let mut buf = Vec::with_capacity(16);
        for i in 0..16u64 {
            match self.ctx.memory.read_obj::<u8>(GuestAddress(phys + i)) {
                Ok(b) => buf.push(b),
                Err(_) => break,
            }
        }
        (!buf.is_empty()).then_some(buf)
    }

    fn internal_error(&mut self) -> String {
        // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active member.
        let ie = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
        let name = INTERNAL_ERROR_NAMES
            .get(ie.suberror as usize)
            .copied()
            .unwrap_or("unknown");
        let n = (ie.ndata as usize).min(ie.data.len());
        let data = &ie.data[..n];
        let mut s = format!(
            "vCPU {}: KVM internal error, suberror {} ({name}) at {}; KVM data: [{}]",
            self.id,
            ie.suberror,
            self.location(),
            data.iter()
                .map(|d| format!("{d:#x}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // Emulation failures may carry the instruction bytes KVM fetched (flags bit 0).
        if ie.suberror == 1 && n >= 3 && data[0] & 1 != 0 {
            let raw: Vec<u8> = data[1..n.min(3)]
                .iter()
                .flat_map(|d| d.to_le_bytes())
                .collect();
            let len = (raw[0] as usize).min(15);
            let insn = raw[1..=len]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ");
            s.push_str(&format!("; instruction bytes reported by KVM: {insn}"));
        }
        s
    }
}

/// 4-level page walk of `linear` starting at `cr3` (4 KiB, 2 MiB and 1 GiB pages).
pub fn walk_page_tables(mem: &GuestMemoryMmap, cr3: u64, linear: u64) -> Option<u64> {
    const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
    let mut table = cr3 & ADDR_MASK;
    for level in (0..4).rev() {
        let index = (linear >> (12 + 9 * level)) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & 1 == 0 {
            return None;
        }
        let page_size_bit = entry & 0x80 != 0;
        if level == 0 || (page_size_bit && (level == 1 || level == 2)) {
            let page_mask = (1u64 << (12 + 9 * level)) - 1;
            return Some((entry & ADDR_MASK & !page_mask) | (linear & page_mask));
        }
        table = entry & ADDR_MASK;
    }
    None
}

enum ExitKind {
    Done(VmExit),
    InternalError,
    Unexpected(String),
}

fn handle_exit(id: u8, exit: VcpuExit<'_>, ctx: &ExitContext) -> Option<ExitKind> {
    match exit {
        VcpuExit::IoOut(port, data) => {
            if !ctx.pio.write(u64::from(port), data) {
                tracing::trace!(port, ?data, "write to unassigned I/O port");
            }
            None
        }
        VcpuExit::IoIn(port, data) => {
            ctx.pio.read(u64::from(port), data);
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio.write(addr, data) {
                tracing::debug!(addr, "write to unassigned MMIO address");
            }
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                tracing::debug!(addr, "read of unassigned MMIO address");
            }
            None
        }
        VcpuExit::Hlt => Some(ExitKind::Done(VmExit::Halted(id))),
        VcpuExit::Shutdown => Some(ExitKind::Done(VmExit::Reset(format!(
            "vCPU {id}: triple fault (KVM_EXIT_SHUTDOWN)"
        )))),
        VcpuExit::SystemEvent(kind, data) => Some(ExitKind::Done(match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::PowerOff(0),
            KVM_SYSTEM_EVENT_RESET => VmExit::Reset(format!("vCPU {id}: KVM system reset event")),
            other => VmExit::Error(format!("vCPU {id}: KVM system event {other} {data:?}")),
        })),
        VcpuExit::InternalError => Some(ExitKind::InternalError),
        VcpuExit::FailEntry(reason, cpu) => Some(ExitKind::Done(VmExit::Error(format!(
            "vCPU {id}: KVM_EXIT_FAIL_ENTRY, hardware entry failure reason {reason:#x} on host CPU {cpu}"
        )))),
        VcpuExit::Intr => None,
        other => Some(ExitKind::Unexpected(format!("{other:?}"))),
    }
}

/// The running vCPU threads of one VM.
pub struct VcpuGroup {
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl VcpuGroup {
    /// Start all `vcpus`, dispatching exits through `ctx`.
    pub fn start(vcpus: Vec<Vcpu>, ctx: ExitContext) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut group = VcpuGroup {
            handles: Vec::new(),
            stop: stop.clone(),
        };
        for vcpu in vcpus {
            match vcpu.start(ctx.clone(), stop.clone()) {
                Ok(h) => group.handles.push(h),
                Err(e) => {
                    group.stop_and_join();
                    return Err(e);
                }
            }
        }
        Ok(group)
    }

    /// Ask every vCPU to leave KVM_RUN and wait for their threads.
    pub fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in &self.handles {
            if !h.is_finished() {
                let _ = h.kill(kick_signal());
            }
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for VcpuGroup {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
