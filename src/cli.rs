//! Command-line interface: runc's commands and global flags, plus kvmbox's own (`bench`, `vm`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Which isolation model runs the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Its own KVM microVM with its own guest kernel.
    Vm,
    /// A plain Linux container sharing the host kernel.
    Namespace,
}

/// Log line format, as runc's `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Output format of `list` and `ps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

/// kvmbox: an OCI runtime that runs each container in its own KVM microVM.
#[derive(Debug, Parser)]
#[command(name = "kvmbox", version, about, propagate_version = true)]
pub struct Cli {
    /// Directory holding container state.
    #[arg(
        long,
        global = true,
        default_value = "/run/kvmbox",
        env = "KVMBOX_ROOT"
    )]
    pub root: PathBuf,
    /// Write logs to this file instead of stderr.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format.
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Enable debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Isolation model for new containers (existing containers keep the one they were created
    /// with); default: the config file's `isolation`, else vm.
    #[arg(long, global = true, value_enum, env = "KVMBOX_ISOLATION")]
    pub isolation: Option<Isolation>,
    /// With `--isolation vm`: seconds to wait for the guest agent to answer (boot included);
    /// default from the config file or the built-in default.
    #[arg(long = "agent-timeout", global = true, value_name = "SECS")]
    pub agent_timeout: Option<u64>,
    /// Accepted for runc compatibility; kvmbox manages cgroupfs directly.
    #[arg(long = "systemd-cgroup", global = true, hide = true)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility; with `spec`, generates a rootless spec.
    #[arg(long, global = true, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub rootless: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container (its process waits for `start`).
    Create(CreateArgs),
    /// Start the user process of a created container.
    Start(IdArg),
    /// Print the OCI state of a container as JSON.
    State(IdArg),
    /// Send a signal to the container's init process (or all its processes).
    Kill(KillArgs),
    /// Delete a container and every resource it holds.
    Delete(DeleteArgs),
    /// Create and start a container; wait for it unless --detach.
    Run(RunArgs),
    /// Run a new process inside a running container.
    Exec(ExecArgs),
    /// List the processes running inside a container.
    Ps(PsArgs),
    /// List containers under --root.
    List(ListArgs),
    /// Change the resource limits (memory, CPU, cpuset, pids) of a created or running container.
    Update(UpdateArgs),
    /// Write a default config.json into the bundle directory.
    Spec(SpecArgs),
    /// Print the OCI features this runtime supports, as JSON.
    Features,
    /// Measure container and microVM startup, side by side with peers.
    Bench(BenchArgs),
    /// Low-level microVM commands.
    #[command(subcommand)]
    Vm(VmCommand),
}

/// A container id.
#[derive(Debug, Args)]
pub struct IdArg {
    /// Container id.
    pub id: String,
}

/// `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Container id.
    pub id: String,
    /// Path to the OCI bundle (directory holding config.json).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Write the container's init PID to this file.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master when process.terminal is true.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Use MS_MOVE + chroot instead of pivot_root (for ramfs roots).
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-new-keyring", hide = true)]
    pub no_new_keyring: bool,
    /// Pass this many extra file descriptors (3..3+N) to the container process.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    /// With `--isolation vm`: the guest kernel (overrides the spec's vm.kernel.path, the config
    /// file, KVMBOX_KERNEL and the build cache).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
}

/// `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Do not wait for the container: print nothing and return once it started.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep the container's state after it exits (do not delete).
    #[arg(long)]
    pub keep: bool,
}

/// `kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Container id.
    pub id: String,
    /// Signal name (TERM, SIGTERM) or number; default SIGTERM.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
    /// Send the signal to every process in the container.
    #[arg(short, long)]
    pub all: bool,
}

/// `delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Container id.
    pub id: String,
    /// Kill the container first if it is still running.
    #[arg(short, long)]
    pub force: bool,
}

/// `exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Container id.
    pub id: String,
    /// Allocate a pseudo-TTY.
    #[arg(short, long)]
    pub tty: bool,
    /// Do not wait for the process.
    #[arg(short, long)]
    pub detach: bool,
    /// OCI process JSON file describing the process (instead of a command line).
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Unix socket that receives the pty master (with --tty).
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Write the new process's PID to this file.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Working directory inside the container.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Extra environment variables (KEY=VALUE).
    #[arg(short, long)]
    pub env: Vec<String>,
    /// User as UID[:GID].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional group ids.
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// Add a capability to the bounding, effective, permitted and ambient sets.
    #[arg(short, long)]
    pub cap: Vec<String>,
    /// Set no_new_privs for the process.
    #[arg(long = "no-new-privs")]
    pub no_new_privs: bool,
    /// Pass this many extra file descriptors to the process.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    /// Command and arguments (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Container id.
    pub id: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: ListFormat,
    /// Arguments passed to ps(1) for the table format.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

/// `update` (runc's flags; memory sizes take k/m/g suffixes, `-1` means unlimited).
#[derive(Debug, Default, Args)]
pub struct UpdateArgs {
    /// Container id.
    pub id: String,
    /// Runtime-spec `linux.resources` JSON from this file, or `-` for stdin; the flags below
    /// override its fields.
    #[arg(short, long, value_name = "FILE|-")]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes (k, m, g suffixes; -1: unlimited).
    #[arg(long, value_name = "BYTES", allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory soft limit in bytes (k, m, g suffixes; -1: unlimited).
    #[arg(
        long = "memory-reservation",
        value_name = "BYTES",
        allow_hyphen_values = true
    )]
    pub memory_reservation: Option<String>,
    /// Memory plus swap limit in bytes (k, m, g suffixes; -1: unlimited swap).
    #[arg(long = "memory-swap", value_name = "BYTES", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// CPU CFS period in microseconds.
    #[arg(long = "cpu-period", value_name = "N")]
    pub cpu_period: Option<u64>,
    /// CPU CFS quota in microseconds per period (-1: unlimited).
    #[arg(long = "cpu-quota", value_name = "N", allow_negative_numbers = true)]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight).
    #[arg(long = "cpu-share", value_name = "N")]
    pub cpu_share: Option<u64>,
    /// CPUs the container may use (e.g. `0-1`, `0,2`).
    #[arg(long = "cpuset-cpus", value_name = "CPUS")]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the container may use (e.g. `0`).
    #[arg(long = "cpuset-mems", value_name = "MEMS")]
    pub cpuset_mems: Option<String>,
    /// Maximum number of processes (0 or -1: unlimited).
    #[arg(long = "pids-limit", value_name = "N", allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
}

/// `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: ListFormat,
    /// Print only container ids.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `spec`.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Directory to write config.json into.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    // `--rootless` (global) selects a rootless spec: a local flag of the same name would clash.
}

/// Output format of `bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchFormat {
    Text,
    Json,
    Markdown,
}

/// What `bench` can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    /// kvmbox --isolation namespace: create, start, exit, delete.
    Namespace,
    /// runc: the same phases.
    Runc,
    /// crun: the same phases.
    Crun,
    /// kvmbox --isolation vm: the same phases (reported unavailable until it works).
    Vm,
    /// kvmbox's VMM booting the guest kernel with a marker initramfs (`vm boot`).
    VmmBoot,
    /// QEMU microvm booting the same kernel and initramfs.
    QemuBoot,
}

/// `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Runs per container mode (namespace, runc, crun).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Runs per VM mode (vm, vmm-boot, qemu-boot): each boots a guest kernel.
    #[arg(long = "vm-runs", default_value_t = 3)]
    pub vm_runs: usize,
    /// Output format on stdout (json for machines); progress goes to stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub format: BenchFormat,
    /// Directory to write bench.svg (the chart), bench.md and bench.json into.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Modes to measure, comma-separated. Default: every mode, or only namespace, runc and crun
    /// with `--isolation namespace`.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub modes: Vec<BenchMode>,
    /// Skip peers (runc, crun, QEMU) even when installed.
    #[arg(long = "no-peers")]
    pub no_peers: bool,
    /// Start this many kvmbox VMs at once (with vmm-boot) and report time and host memory per
    /// VM; 0 skips.
    #[arg(long, default_value_t = 3)]
    pub density: usize,
    /// Guest kernel for the VM modes (default: `kernel-config/build.sh --print-path`).
    #[arg(long, env = "KVMBOX_KERNEL")]
    pub kernel: Option<PathBuf>,
    /// Guest memory in MiB for the VM modes.
    #[arg(long = "guest-memory", default_value_t = 128)]
    pub guest_memory: u32,
    /// QEMU executable for qemu-boot.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// Longest one VM boot may take, in seconds (guest kernel code may be emulated).
    #[arg(long = "vm-timeout", default_value_t = 600)]
    pub vm_timeout: u64,
}

/// `vm` subcommands.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot a kernel in a microVM, print its serial console and exit with the guest's status.
    Boot(VmBootArgs),
}

/// Guest CPU profile (see docs: emulated hosts hide CPU features KVM's emulator cannot run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CpuProfile {
    Host,
    Emulated,
}

/// `vm boot`.
#[derive(Debug, Args)]
pub struct VmBootArgs {
    /// Guest kernel: ELF vmlinux (PVH) or bzImage.
    #[arg(long)]
    pub kernel: PathBuf,
    /// Initial ramdisk (cpio).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line (appended to kvmbox's defaults).
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u32,
    /// Guest CPU profile; detected from the host when not given.
    #[arg(long = "cpu-profile", value_enum)]
    pub cpu_profile: Option<CpuProfile>,
    /// Write the serial console here instead of stdout.
    #[arg(long = "serial-log")]
    pub serial_log: Option<PathBuf>,
    /// Print boot-time marks (VMM start, first KVM_RUN, kernel entry, userspace) on exit.
    #[arg(long)]
    pub timings: bool,
    /// A virtio-blk disk on a raw image, `PATH[,ro]` (repeatable; the first is /dev/vda).
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    pub disks: Vec<String>,
    /// Add a virtio-rng device (/dev/hwrng in the guest).
    #[arg(long)]
    pub rng: bool,
    /// Add a virtio console (hvc0; use `--cmdline console=hvc0` to make it the kernel
    /// console); it takes stdin and writes where the serial console does.
    #[arg(long = "virtio-console")]
    pub virtio_console: bool,
    /// Share a host directory over virtio-fs, `TAG=PATH[,ro]` (repeatable); the guest mounts
    /// it with `mount -t virtiofs TAG DIR`.
    #[arg(long = "share", value_name = "TAG=PATH[,ro]")]
    pub shares: Vec<String>,
    /// A virtio-net device on a tap interface, `tap=NAME[,mac=XX:XX:XX:XX:XX:XX]` (repeatable;
    /// the tap is created for the VM's lifetime if it does not exist).
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    pub net: Vec<String>,
    /// A virtio-vsock device, `CID,PATH`: host programs connect to the Unix socket PATH and
    /// write `CONNECT <port>`; guest connections to host port P go to `PATH_P`.
    #[arg(long = "vsock", value_name = "CID,PATH")]
    pub vsock: Option<String>,
}
