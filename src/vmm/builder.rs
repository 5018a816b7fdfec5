//! `VmBuilder`: assembles memory, devices, the kernel and vCPUs from a `VmConfig` into a
//! runnable `Machine`.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_ioctls::IoEventAddress;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::boot::loader::{self, LoadedKernel};
use super::boot::regs::{setup_vcpu_regs, EntryMode};
use super::boot::{cpuid, lapic, memmap, mptable, msrs};
use super::config::{SerialOutput, VmConfig};
use super::devices::boot_timer::BootTimerPort;
use super::devices::bus::{Bus, SharedDevice};
use super::devices::i8042::I8042;
use super::devices::poweroff::{DebugExit, Pm1aControl};
use super::devices::serial::{EventFdTrigger, SerialDevice, SerialWriter};
use super::devices::virtio::block::Block;
use super::devices::virtio::console::Console;
use super::devices::virtio::fs::Fs;
use super::devices::virtio::mmio::{regs, MmioTransport};
use super::devices::virtio::net::Net;
use super::devices::virtio::rng::Rng;
use super::devices::virtio::vsock::Vsock;
use super::devices::virtio::VirtioDevice;
use super::error::{Result, VmmError};
use super::event_loop::EventLoop;
use super::exit::{ExitSignal, VmExit};
use super::layout;
use super::timings::{rss_kib_excluding, BootTimer};
use super::vcpu::{ExitContext, Vcpu, VcpuGroup};
use super::vm::Vm;

/// Assembles a microVM.
pub struct VmBuilder {
    config: VmConfig,
    timer: BootTimer,
    virtio: Vec<Box<dyn VirtioDevice>>,
}

/// A built VM, ready to run.
pub struct Machine {
    vm: Vm,
    vcpus: Vec<Vcpu>,
    ctx: ExitContext,
    serial: Arc<Mutex<SerialDevice>>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    cmdline: String,
    kernel: LoadedKernel,
    serial_input: bool,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunReport {
    /// Why the VM stopped.
    pub exit: VmExit,
    /// The VMM's resident memory (KiB) excluding guest RAM, sampled when the VM stopped.
    pub vmm_rss_kib: Option<u64>,
}

fn dev_err(device: &str, reason: impl ToString) -> VmmError {
    VmmError::Device {
        device: device.to_string(),
        reason: reason.to_string(),
    }
}

fn insert(bus: &mut Bus, dev: SharedDevice, base: u64, len: u64, name: &str) -> Result<()> {
    bus.insert(dev, base, len).map_err(|e| dev_err(name, e))
}

impl VmBuilder {
    /// Start from `config`; boot marks go to `timer`.
    pub fn new(config: VmConfig, timer: BootTimer) -> Self {
        VmBuilder {
            config,
            timer,
            virtio: Vec::new(),
        }
    }

    /// Add a virtio device on the next virtio-mmio slot (window and IRQ).
    pub fn add_virtio_device(mut self, device: Box<dyn VirtioDevice>) -> Self {
        self.virtio.push(device);
        self
    }

    /// Create the VM, load the kernel, wire the devices and configure the vCPUs.
    pub fn build(mut self) -> Result<Machine> {
        self.config.validate().map_err(VmmError::Config)?;
        let vsock_count = usize::from(self.config.vsock.is_some());
        let config_devices = config_virtio_devices(&self.config)?;
        if config_devices.len() + self.virtio.len() + vsock_count
            > (layout::IRQ_MAX - layout::VIRTIO_IRQ_BASE + 1) as usize
        {
            return Err(VmmError::Config("too many virtio devices".into()));
        }
        let mem_bytes = u64::from(self.config.memory_mib) << 20;
        let vm = Vm::new(mem_bytes, true)?;
        let mem = vm.memory().clone();
        let kernel = loader::load_kernel(&mem, &self.config.kernel)?;
        // The vsock socket appears only once the kernel loaded: a launcher waiting for it
        // (vm_launch) then knows the VMM got past the usual failures (KVM, kernel file).
        if let Some(vsock) = &self.config.vsock {
            let device = Vsock::new(vsock.guest_cid, &vsock.uds_path)
                .map_err(|e| dev_err("virtio-vsock", e))?;
            self.virtio.insert(0, Box::new(device));
        }
        let cfg = &self.config;

        let exit = ExitSignal::new().map_err(|e| VmmError::sys("exit eventfd", e))?;
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let serial = self.legacy_devices(&vm, &exit, &mut pio)?;

        let mut cmdline = cfg.base_cmdline();
        let mut transports = Vec::new();
        for (i, device) in config_devices.into_iter().chain(self.virtio).enumerate() {
            let base = layout::VIRTIO_MMIO_BASE + i as u64 * layout::VIRTIO_MMIO_SIZE;
            let irq = layout::VIRTIO_IRQ_BASE + i as u32;
            let t = attach_virtio(&vm, &mem, &mut mmio, device, base, irq)?;
            cmdline.push_str(&format!(
                " virtio_mmio.device={}K@{:#x}:{}",
                layout::VIRTIO_MMIO_SIZE >> 10,
                base,
                irq
            ));
            transports.push(t);
        }

        let cl = loader::load_cmdline(&mem, &cmdline)?;
        let cmdline_len = cl
            .as_cstring()
            .map_err(|e| VmmError::Cmdline(e.to_string()))?
            .as_bytes_with_nul()
            .len();
        let ram = layout::ram_ranges(mem_bytes);
        let low_ram_end = ram[0].1;
        let initrd = match &cfg.initrd {
            Some(path) => {
                let mut max_end = low_ram_end;
                if let Some(hdr) = kernel.setup_header {
                    if hdr.initrd_addr_max != 0 {
                        max_end = max_end.min(u64::from(hdr.initrd_addr_max) + 1);
                    }
                }
                Some(loader::load_initrd(&mem, path, kernel.end, max_end)?)
            }
            None => None,
        };
        let map = memmap::memory_map(&ram);
        mptable::setup_mptable(&mem, cfg.vcpus)?;
        let boot_arg = match kernel.mode {
            EntryMode::Pvh => loader::write_pvh_start_info(&mem, &map, initrd)?,
            _ => loader::write_boot_params(&mem, &kernel, cmdline_len, &map, initrd)?,
        };

        let base_cpuid = cpuid::base_cpuid(vm.kvm(), cfg.cpu_profile)?;
        let mut vcpus = Vec::with_capacity(cfg.vcpus as usize);
        for id in 0..cfg.vcpus {
            let vcpu = Vcpu::new(&vm, id)?;
            cpuid::setup_cpuid(vcpu.fd(), &base_cpuid, id, cfg.vcpus)?;
            msrs::setup_msrs(vcpu.fd())?;
            setup_vcpu_regs(vcpu.fd(), &mem, kernel.mode, kernel.entry, boot_arg)?;
            lapic::setup_lint(vcpu.fd())?;
            vcpus.push(vcpu);
        }

        let ctx = ExitContext {
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            exit,
            timer: Some(self.timer.clone()),
            memory: mem,
        };
        Ok(Machine {
            vm,
            vcpus,
            ctx,
            serial,
            transports,
            cmdline,
            kernel,
            serial_input: cfg.serial_input,
        })
    }

    fn legacy_devices(
        &self,
        vm: &Vm,
        exit: &ExitSignal,
        pio: &mut Bus,
    ) -> Result<Arc<Mutex<SerialDevice>>> {
        let out: Box<dyn Write + Send> = match &self.config.serial {
            SerialOutput::Stdout => Box::new(std::io::stdout()),
            SerialOutput::Sink => Box::new(std::io::sink()),
            SerialOutput::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| super::error::file_err("serial log", path, e))?,
            ),
        };
        let trigger = EventFdTrigger::new().map_err(|e| VmmError::sys("serial eventfd", e))?;
        vm.fd()
            .register_irqfd(&trigger.0, layout::COM1_IRQ)
            .map_err(|e| VmmError::kvm("KVM_IRQFD (serial)", e))?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            trigger,
            SerialWriter::new(out, Some(self.timer.clone())),
        )));
        insert(
            pio,
            serial.clone(),
            u64::from(layout::COM1_PORT),
            8,
            "serial",
        )?;
        insert(
            pio,
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            u64::from(layout::I8042_PORT),
            5,
            "i8042",
        )?;
        insert(
            pio,
            Arc::new(Mutex::new(DebugExit::new(exit.clone()))),
            u64::from(layout::POWEROFF_PORT),
            4,
            "debug-exit",
        )?;
        insert(
            pio,
            Arc::new(Mutex::new(Pm1aControl::new(exit.clone()))),
            u64::from(layout::PM1A_CNT_PORT),
            2,
            "pm1a",
        )?;
        insert(
            pio,
            Arc::new(Mutex::new(BootTimerPort::new(self.timer.clone()))),
            u64::from(layout::BOOT_TIMER_PORT),
            1,
            "boot-timer",
        )?;
        Ok(serial)
    }
}

/// The virtio devices `cfg` asks for, in slot order: disks (vda, vdb, ...), rng, console,
/// shared directories, network interfaces.
fn config_virtio_devices(cfg: &VmConfig) -> Result<Vec<Box<dyn VirtioDevice>>> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for disk in &cfg.disks {
        let block =
            Block::open(&disk.path, disk.read_only).map_err(|e| dev_err("virtio-blk", e))?;
        devices.push(Box::new(block));
    }
    if cfg.rng {
        devices.push(Box::new(Rng::new()));
    }
    if let Some(console) = &cfg.console {
        let out: Box<dyn Write + Send> = match &console.output {
            SerialOutput::Stdout => Box::new(std::io::stdout()),
            SerialOutput::Sink => Box::new(std::io::sink()),
            SerialOutput::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| super::error::file_err("virtio console log", path, e))?,
            ),
        };
        let input = match console.input {
            true => Some(
                nix::unistd::dup(std::io::stdin())
                    .map_err(|e| VmmError::sys("dup stdin for virtio-console", e.into()))?,
            ),
            false => None,
        };
        let dev = Console::new(out, input).map_err(|e| dev_err("virtio-console", e))?;
        devices.push(Box::new(dev));
    }
    for share in &cfg.shared_dirs {
        let fs = Fs::with_cache(&share.tag, &share.path, share.read_only, share.cache)
            .map_err(|e| dev_err("virtio-fs", e))?;
        devices.push(Box::new(fs));
    }
    for net in &cfg.net {
        let dev = Net::open_tap(&net.tap, net.guest_mac()).map_err(|e| dev_err("virtio-net", e))?;
        devices.push(Box::new(dev));
    }
    Ok(devices)
}

/// Put `device` behind a virtio-mmio transport at `base` with interrupt `irq`: irqfd for the
/// interrupt, one ioeventfd per queue on QueueNotify.
pub fn attach_virtio(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    device: Box<dyn VirtioDevice>,
    base: u64,
    irq: u32,
) -> Result<Arc<Mutex<MmioTransport>>> {
    let name = format!("virtio-mmio@{base:#x}");
    let irqfd = EventFd::new(EFD_NONBLOCK).map_err(|e| VmmError::sys("virtio irqfd", e))?;
    if vm.has_irqchip() {
        vm.fd()
            .register_irqfd(&irqfd, irq)
            .map_err(|e| dev_err(&name, format!("KVM_IRQFD: {e}")))?;
    }
    let transport =
        MmioTransport::new(device, mem.clone(), irqfd).map_err(|e| dev_err(&name, e))?;
    for (i, evt) in transport.queue_events().iter().enumerate() {
        vm.fd()
            .register_ioevent(
                evt,
                &IoEventAddress::Mmio(base + regs::QUEUE_NOTIFY),
                i as u32,
            )
            .map_err(|e| dev_err(&name, format!("KVM_IOEVENTFD: {e}")))?;
    }
    let transport = Arc::new(Mutex::new(transport));
    insert(
        mmio,
        transport.clone(),
        base,
        layout::VIRTIO_MMIO_SIZE,
        &name,
    )?;
    Ok(transport)
}

impl Machine {
    /// The signal that ends the VM: setting it (e.g. [`VmExit::Stopped`] on SIGTERM) stops
    /// [`Machine::run`].
    pub fn exit_signal(&self) -> ExitSignal {
        self.ctx.exit.clone()
    }

    /// The final kernel command line.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// The loaded kernel.
    pub fn kernel(&self) -> &LoadedKernel {
        &self.kernel
    }

    /// The KVM VM.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Run the guest until it powers off, resets or fails; then stop every vCPU.
    pub fn run(self) -> Result<RunReport> {
        let Machine {
            vm,
            vcpus,
            ctx,
            serial,
            transports,
            serial_input,
            ..
        } = self;
        let mut event_loop = EventLoop::new(ctx.exit.clone())?;
        if serial_input {
            event_loop.add_serial_input(serial.clone(), libc::STDIN_FILENO);
        }
        for t in transports {
            event_loop.add_virtio(t);
        }
        // Building the VM (kernel image reads, CPUID lists, argument parsing) leaves freed heap
        // behind; hand it back before the guest runs for minutes.
        // SAFETY: malloc_trim only releases free memory of the allocator.
        unsafe { libc::malloc_trim(0) };
        let mut group = VcpuGroup::start(vcpus, ctx)?;
        let exit = event_loop.run_until_exit();
        let vmm_rss_kib = rss_kib_excluding(&vm.memory_host_addrs()).ok();
        group.stop_and_join();
        serial.lock().unwrap_or_else(|e| e.into_inner()).flush();
        Ok(RunReport { exit, vmm_rss_kib })
    }
}
