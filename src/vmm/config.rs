//! `VmConfig`: everything needed to build one microVM, and the guest CPU profile choice.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The command line every kvmbox guest starts with (the user's is appended).
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 rodata=off lpj=10000000 tsc=reliable no_timer_check quiet";

/// Kernel command-line flag that makes the project's guest kernel clear the CPU features KVM's
/// instruction emulator cannot execute (see docs/vmm.md).
pub const EMULATED_CPU_FLAG: &str = "kvmbox.emulated_cpu";

/// Init environment entry (`key=value` words on the kernel command line become init's environment)
/// added under the emulated profile: glibc must not pick its AVX/AVX2/AVX-512 string and memory
/// functions, because on nested-PVM hosts the guest kernel (no XSAVE) cannot context-switch the
/// YMM/ZMM/opmask state of natively running user code, so concurrent guest processes corrupt each
/// other's vector registers (docs/vmm.md, "Guest SIGSEGV in pipelines"). Inherited by every guest
/// process whose environment is inherited; a later user `--cmdline GLIBC_TUNABLES=...` replaces it.
pub const EMULATED_CPU_GLIBC_TUNABLES: &str =
    "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-FMA,-FMA4,\
     -AVX512F,-AVX512CD,-AVX512BW,-AVX512DQ,-AVX512ER,-AVX512PF,-AVX512VL,-AVX_Fast_Unaligned_Load";

/// Present on hosts whose KVM is the nested "pagetable-based VM" module (guest kernel emulated).
pub const KVM_PVM_SYSFS: &str = "/sys/module/kvm_pvm";

/// Guest CPU profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuProfile {
    /// Real KVM: the guest sees (and may use) the host CPU features.
    Host,
    /// Guest kernel code is emulated by KVM: the guest kernel must avoid instructions the
    /// emulator cannot run; the VMM passes [`EMULATED_CPU_FLAG`].
    Emulated,
}

/// A CPU profile together with the reason it was chosen (logged once per VM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileChoice {
    /// The chosen profile.
    pub profile: CpuProfile,
    /// Human-readable reason.
    pub reason: String,
}

impl CpuProfile {
    /// Pick the profile: the override if given, else `Emulated` when `pvm_marker` exists.
    pub fn choose(overridden: Option<CpuProfile>, pvm_marker: &Path) -> ProfileChoice {
        match overridden {
            Some(profile) => ProfileChoice {
                profile,
                reason: "set by --cpu-profile".to_string(),
            },
            None if pvm_marker.exists() => ProfileChoice {
                profile: CpuProfile::Emulated,
                reason: format!(
                    "{} exists: nested PVM host, guest kernel code is emulated",
                    pvm_marker.display()
                ),
            },
            None => ProfileChoice {
                profile: CpuProfile::Host,
                reason: format!("{} absent: hardware-virtualized KVM", pvm_marker.display()),
            },
        }
    }

    /// Lower-case name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            CpuProfile::Host => "host",
            CpuProfile::Emulated => "emulated",
        }
    }
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialOutput {
    /// The VMM's stdout.
    Stdout,
    /// Appended to a file (created if missing).
    File(PathBuf),
    /// Discarded.
    Sink,
}

/// A virtio-vsock device with the hybrid Unix-socket backend (see docs/devices.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (>= 3).
    pub guest_cid: u64,
    /// Host programs connect here (`CONNECT <port>\n`); guest connections to host port P go to
    /// `<uds_path>_P`.
    pub uds_path: PathBuf,
}

impl VsockConfig {
    /// Parse the command-line form `CID,PATH`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let Some((cid, path)) = spec.split_once(',') else {
            return Err(format!("--vsock {spec}: expected CID,PATH"));
        };
        let guest_cid: u64 = cid
            .trim()
            .parse()
            .map_err(|_| format!("--vsock {spec}: the cid {cid:?} is not a number"))?;
        if !(3..=u64::from(u32::MAX - 1)).contains(&guest_cid) {
            return Err(format!("--vsock {spec}: the cid must be in 3..=4294967294"));
        }
        if path.is_empty() {
            return Err(format!("--vsock {spec}: empty socket path"));
        }
        Ok(VsockConfig {
            guest_cid,
            uds_path: PathBuf::from(path),
        })
    }
}

/// One virtio-blk disk backed by a raw image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The image (regular file or block device).
    pub path: PathBuf,
    /// Expose it read-only (VIRTIO_BLK_F_RO; writes fail).
    pub read_only: bool,
}

impl DiskConfig {
    /// Parse the command-line form `PATH[,ro|,rw]`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (path, read_only) = match spec.rsplit_once(',') {
            Some((p, "ro")) => (p, true),
            Some((p, "rw")) => (p, false),
            Some((_, opt)) if !opt.contains('/') => {
                return Err(format!(
                    "--disk {spec}: unknown option {opt:?} (expected ro or rw)"
                ))
            }
            _ => (spec, false),
        };
        if path.is_empty() {
            return Err(format!("--disk {spec}: empty path"));
        }
        Ok(DiskConfig {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

/// A host directory shared with the guest over virtio-fs (`mount -t virtiofs <tag> <dir>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsConfig {
    /// Mount tag (1..=36 bytes).
    pub tag: String,
    /// The host directory.
    pub path: PathBuf,
    /// Refuse every change with EROFS.
    pub read_only: bool,
    /// How long the guest may cache what it read.
    #[serde(default)]
    pub cache: FsCache,
}

/// The guest's caching of a virtio-fs share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsCache {
    /// Names and attributes are trusted for 1 s and file data is re-read at each open: host
    /// changes show up soon (for directories the host keeps changing).
    #[default]
    Auto,
    /// Names, attributes and file data stay cached for an hour: for a container rootfs, which
    /// only the guest changes while the container runs. Every guest request costs emulated
    /// guest-kernel time on a PVM host, so this avoids re-reading binaries at every exec.
    Always,
}

impl FsConfig {
    /// Parse the command-line form `TAG=PATH[,ro|,rw][,cache=auto|always]`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let Some((tag, mut path)) = spec.split_once('=') else {
            return Err(format!(
                "--share {spec}: expected TAG=PATH[,ro][,cache=auto|always]"
            ));
        };
        let (mut read_only, mut cache) = (false, FsCache::Auto);
        // Options are trailing comma-separated words without a '/', so paths may hold commas.
        while let Some((p, opt)) = path.rsplit_once(',').filter(|(_, o)| !o.contains('/')) {
            match opt {
                "ro" => read_only = true,
                "rw" => read_only = false,
                "cache=auto" => cache = FsCache::Auto,
                "cache=always" => cache = FsCache::Always,
                _ => {
                    return Err(format!(
                        "--share {spec}: unknown option {opt:?} (expected ro, rw, cache=auto or cache=always)"
                    ))
                }
            }
            path = p;
        }
        if tag.is_empty() || tag.len() > 36 {
            return Err(format!("--share {spec}: the tag must be 1..=36 bytes"));
        }
        if path.is_empty() {
            return Err(format!("--share {spec}: empty path"));
        }
        Ok(FsConfig {
            tag: tag.to_string(),
            path: PathBuf::from(path),
            read_only,
            cache,
        })
    }
}

/// A virtio-net device on a host tap interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap interface (attached if it exists, else created for the VM's lifetime).
    pub tap: String,
    /// The guest's MAC address; `None`: derived from the tap name ([`NetConfig::guest_mac`]).
    #[serde(default)]
    pub mac: Option<[u8; 6]>,
}

impl NetConfig {
    /// Parse the command-line form `tap=NAME[,mac=XX:XX:XX:XX:XX:XX]`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut tap = None;
        let mut mac = None;
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("tap", name)) if tap.is_none() => tap = Some(name.to_string()),
                Some(("mac", m)) if mac.is_none() => {
                    mac = Some(parse_mac(m).map_err(|e| format!("--net {spec}: {e}"))?)
                }
                _ => {
                    return Err(format!(
                    "--net {spec}: unexpected {part:?} (expected tap=NAME[,mac=XX:XX:XX:XX:XX:XX])"
                ))
                }
            }
        }
        let Some(tap) = tap else {
            return Err(format!("--net {spec}: missing tap=NAME"));
        };
        crate::vmm::devices::virtio::net::tap::validate_name(&tap)
            .map_err(|e| format!("--net {spec}: {e}"))?;
        Ok(NetConfig { tap, mac })
    }

    /// The MAC the guest sees: the configured one, else a locally administered unicast
    /// address derived from the tap name (stable across boots): `02:6b:76:xx:xx:xx`.
    pub fn guest_mac(&self) -> [u8; 6] {
        if let Some(mac) = self.mac {
            return mac;
        }
        // FNV-1a of the name.
        let h = self.tap.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        let [a, b, c, _] = h.to_be_bytes();
        [0x02, 0x6b, 0x76, a, b, c]
    }
}

/// Parse `XX:XX:XX:XX:XX:XX` (hex); multicast addresses are refused (a NIC needs a unicast one).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!(
            "bad MAC address {s:?} (expected XX:XX:XX:XX:XX:XX)"
        ));
    }
    for (byte, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return Err(format!(
                "bad MAC address {s:?} (expected XX:XX:XX:XX:XX:XX)"
            ));
        }
        *byte = u8::from_str_radix(part, 16)
            .map_err(|_| format!("bad MAC address {s:?} (expected XX:XX:XX:XX:XX:XX)"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("MAC address {s} is a multicast address"));
    }
    if mac == [0; 6] {
        return Err("MAC address 00:00:00:00:00:00 is not usable".to_string());
    }
    Ok(mac)
}

/// The virtio console (the guest's hvc0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Where guest output goes.
    pub output: SerialOutput,
    /// Feed the VMM's stdin to the guest through the console's receive queue.
    pub input: bool,
}

/// Everything needed to build one microVM (also the JSON the `kvmbox-vmm` process reads).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// ELF vmlinux (PVH entry preferred) or bzImage.
    pub kernel: PathBuf,
    /// Optional initrd (cpio, possibly compressed).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Extra command line, appended after [`DEFAULT_CMDLINE`] and the profile flag.
    #[serde(default)]
    pub extra_cmdline: Option<String>,
    /// Number of vCPUs (1..=32).
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Serial console destination.
    pub serial: SerialOutput,
    /// Feed the VMM's stdin to the guest serial port.
    #[serde(default)]
    pub serial_input: bool,
    /// Guest CPU profile.
    pub cpu_profile: CpuProfile,
    /// Optional virtio-vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-blk disks, in order (the first is the guest's /dev/vda).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Add a virtio-rng device (the guest's /dev/hwrng).
    #[serde(default)]
    pub rng: bool,
    /// Add a virtio console (hvc0).
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
    /// Host directories shared over virtio-fs, one device each.
    #[serde(default)]
    pub shared_dirs: Vec<FsConfig>,
    /// virtio-net devices on tap interfaces (the guest's eth0, eth1, ...).
    #[serde(default)]
    pub net: Vec<NetConfig>,
}

impl VmConfig {
    /// A config with kvmbox's defaults (1 vCPU, 128 MiB, serial on stdout, host profile).
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            extra_cmdline: None,
            vcpus: 1,
            memory_mib: 128,
            serial: SerialOutput::Stdout,
            serial_input: false,
            cpu_profile: CpuProfile::Host,
            vsock: None,
            disks: Vec::new(),
            rng: false,
            console: None,
            shared_dirs: Vec::new(),
            net: Vec::new(),
        }
    }

    /// Validate the numeric limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.vcpus == 0 || self.vcpus > 32 {
            return Err(format!("vcpus must be 1..=32, got {}", self.vcpus));
        }
        if self.memory_mib < 32 {
            return Err(format!(
                "memory must be at least 32 MiB, got {}",
                self.memory_mib
            ));
        }
        if u64::from(self.memory_mib) > 64 * 1024 {
            return Err(format!(
                "memory must be at most 65536 MiB, got {}",
                self.memory_mib
            ));
        }
        Ok(())
    }

    /// The base kernel command line: defaults, the profile flag (and, emulated, the glibc
    /// tunables for init's environment), then the user's part.
    pub fn base_cmdline(&self) -> String {
        let mut s = DEFAULT_CMDLINE.to_string();
        if self.cpu_profile == CpuProfile::Emulated {
            s.push(' ');
            s.push_str(EMULATED_CPU_FLAG);
            s.push(' ');
            s.push_str(EMULATED_CPU_GLIBC_TUNABLES);
        }
        if let Some(extra) = self.extra_cmdline.as_deref().map(str::trim) {
            if !extra.is_empty() {
                s.push(' ');
                s.push_str(extra);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_override_wins() {
        let c = CpuProfile::choose(Some(CpuProfile::Host), Path::new("/"));
        assert_eq!(c.profile, CpuProfile::Host);
        assert!(c.reason.contains("--cpu-profile"));
    }

    #[test]
    fn profile_detected_from_marker() {
        let dir = tempfile::tempdir().unwrap();
        let c = CpuProfile::choose(None, dir.path());
        assert_eq!(c.profile, CpuProfile::Emulated);
        let c = CpuProfile::choose(None, &dir.path().join("missing"));
        assert_eq!(c.profile, CpuProfile::Host);
    }

    #[test]
    fn cmdline_has_defaults_flag_and_user_part() {
        let mut c = VmConfig::new("/k");
        c.cpu_profile = CpuProfile::Emulated;
        c.extra_cmdline = Some(" init=/init ".into());
        assert_eq!(
            c.base_cmdline(),
            format!(
                "{DEFAULT_CMDLINE} {EMULATED_CPU_FLAG} {EMULATED_CPU_GLIBC_TUNABLES} init=/init"
            )
        );
        c.cpu_profile = CpuProfile::Host;
        c.extra_cmdline = None;
        assert_eq!(c.base_cmdline(), DEFAULT_CMDLINE);
    }

    #[test]
    fn glibc_tunables_are_one_init_environment_word() {
        let (key, value) = EMULATED_CPU_GLIBC_TUNABLES.split_once('=').unwrap();
        assert_eq!(key, "GLIBC_TUNABLES");
        assert!(
            !key.contains('.'),
            "a dotted word would not reach init's environment"
        );
        assert!(!value.contains(char::is_whitespace));
        assert!(value.starts_with("glibc.cpu.hwcaps=-AVX,-AVX2,"));
        assert!(value.ends_with(",-AVX_Fast_Unaligned_Load"));
        assert!(!VmConfig::new("/k")
            .base_cmdline()
            .contains("GLIBC_TUNABLES"));
    }

    #[test]
    fn disk_specs_parse() {
        assert_eq!(
            DiskConfig::parse("/a/b.img").unwrap(),
            DiskConfig {
                path: "/a/b.img".into(),
                read_only: false
            }
        );
        assert!(DiskConfig::parse("/a/b.img,ro").unwrap().read_only);
        assert!(!DiskConfig::parse("/a/b.img,rw").unwrap().read_only);
        assert_eq!(
            DiskConfig::parse("/a,b/c.img").unwrap().path,
            PathBuf::from("/a,b/c.img")
        );
        assert!(DiskConfig::parse("/a/b.img,rx").is_err());
        assert!(DiskConfig::parse(",ro").is_err());
        assert!(DiskConfig::parse("").is_err());
    }

    #[test]
    fn share_specs_parse() {
        assert_eq!(
            FsConfig::parse("root=/a/b").unwrap(),
            FsConfig {
                tag: "root".into(),
                path: "/a/b".into(),
                read_only: false,
                cache: FsCache::Auto,
            }
        );
        assert!(FsConfig::parse("t=/a,ro").unwrap().read_only);
        let both = FsConfig::parse("t=/a,b/c,ro,cache=always").unwrap();
        assert_eq!(both.path, PathBuf::from("/a,b/c"));
        assert!(both.read_only);
        assert_eq!(both.cache, FsCache::Always);
        assert!(FsConfig::parse("t=/a,cache=never")
            .unwrap_err()
            .contains("cache=never"));
        assert!(!FsConfig::parse("t=/a,rw").unwrap().read_only);
        assert_eq!(
            FsConfig::parse("t=/a,b/c").unwrap().path,
            PathBuf::from("/a,b/c")
        );
        assert!(FsConfig::parse("/a/b").is_err());
        assert!(FsConfig::parse("=/a").is_err());
        assert!(FsConfig::parse("t=").is_err());
        assert!(FsConfig::parse("t=/a,rx").is_err());
        assert!(FsConfig::parse(&format!("{}=/a", "x".repeat(37))).is_err());
    }

    #[test]
    fn net_specs_parse() {
        assert_eq!(
            NetConfig::parse("tap=tap0").unwrap(),
            NetConfig {
                tap: "tap0".into(),
                mac: None
            }
        );
        let n = NetConfig::parse("tap=kvm1,mac=02:AB:cd:00:11:22").unwrap();
        assert_eq!(n.mac, Some([0x02, 0xab, 0xcd, 0x00, 0x11, 0x22]));
        assert_eq!(n.guest_mac(), [0x02, 0xab, 0xcd, 0x00, 0x11, 0x22]);
        assert_eq!(
            NetConfig::parse("mac=02:00:00:00:00:01,tap=t").unwrap().tap,
            "t"
        );
        for bad in [
            "",
            "tap0",
            "tap=",
            "tap=a/b",
            "tap=x,tap=y",
            "tap=t,mac=01:00:00:00:00:01",
            "tap=t,mac=00:00:00:00:00:00",
            "tap=t,mac=02:00:00:00:00",
            "tap=t,mac=02:00:00:00:00:0g",
            "tap=t,mac=002:00:00:00:00:01",
            "tap=t,mtu=9000",
        ] {
            let e = NetConfig::parse(bad).unwrap_err();
            assert!(e.starts_with(&format!("--net {bad}:")), "{e}");
        }
    }

    #[test]
    fn derived_mac_is_stable_local_unicast() {
        let a = NetConfig::parse("tap=tap0").unwrap().guest_mac();
        assert_eq!(a, NetConfig::parse("tap=tap0").unwrap().guest_mac());
        assert_ne!(a, NetConfig::parse("tap=tap1").unwrap().guest_mac());
        assert_eq!(a[0], 0x02, "locally administered, unicast");
    }

    #[test]
    fn vsock_specs_parse() {
        assert_eq!(
            VsockConfig::parse("3,/run/v.sock").unwrap(),
            VsockConfig {
                guest_cid: 3,
                uds_path: "/run/v.sock".into()
            }
        );
        assert_eq!(
            VsockConfig::parse("42,/a,b.sock").unwrap().uds_path,
            PathBuf::from("/a,b.sock")
        );
        for bad in ["", "3", "x,/a", "2,/a", "3,", "4294967295,/a"] {
            let e = VsockConfig::parse(bad).unwrap_err();
            assert!(e.starts_with(&format!("--vsock {bad}:")), "{e}");
        }
    }

    #[test]
    fn limits_are_checked() {
        let mut c = VmConfig::new("/k");
        assert!(c.validate().is_ok());
        c.vcpus = 0;
        assert!(c.validate().is_err());
        c.vcpus = 1;
        c.memory_mib = 1;
        assert!(c.validate().is_err());
    }
}
