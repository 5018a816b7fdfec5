//! `plan`: the shape of a container's microVM (kernel, agent, VMM, vCPUs, memory, CPU profile,
//! agent timeout) from the CLI, the OCI spec, the config file, the environment and defaults.
//!
//! vCPUs and memory, first match wins: [`VmOptions`] (CLI), the annotations
//! `io.kvmbox.vcpus` / `io.kvmbox.memory_mib`, the spec's resources (`linux.resources.cpu`
//! quota/period rounded up and capped by the host CPUs; `linux.resources.memory.limit` in MiB
//! rounded up plus `memory_overhead_mib`, default 64), the config file, then 1 vCPU / 128 MiB.
//! The spec's `vm` section: `vm.kernel.path` is a kernel source (see [`super::kernel`]),
//! `vm.kernel.parameters` are appended to the kernel command line, `vm.hypervisor.path` names
//! the VMM binary (it must accept `<vm.json>` like `kvmbox-vmm`); `vm.kernel.initrd`,
//! `vm.hypervisor.parameters` and `vm.image` are rejected (kvmbox builds the initrd itself
//! from the agent and the container rootfs).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::Spec;

use super::agent::{find_agent, find_vmm, AGENT_ENV, VMM_ENV};
use super::config_file::{ConfigFile, CONFIG_ENV, DEFAULT_CONFIG_PATH};
use super::error::VmLaunchError;
use super::kernel::{find_build_script, find_kernel, KernelSources, KERNEL_ENV};
use crate::vmm::config::CpuProfile;

/// Annotation overriding the vCPU count.
pub const VCPUS_ANNOTATION: &str = "io.kvmbox.vcpus";
/// Annotation overriding the guest memory (MiB).
pub const MEMORY_ANNOTATION: &str = "io.kvmbox.memory_mib";
/// Environment variable overriding the agent timeout (seconds).
pub const AGENT_TIMEOUT_ENV: &str = "KVMBOX_AGENT_TIMEOUT";
/// Environment variable naming the cache directory (kernels, agent initramfs).
pub const CACHE_ENV: &str = "KVMBOX_CACHE";
/// The default cache directory.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/kvmbox";
/// Default vCPU count.
pub const DEFAULT_VCPUS: u8 = 1;
/// Default guest memory (MiB): small RAM boots much faster on an emulated guest kernel.
pub const DEFAULT_MEMORY_MIB: u32 = 128;
/// Default guest RAM added to a container's memory limit (kernel, agent, page cache).
pub const DEFAULT_MEMORY_OVERHEAD_MIB: u32 = 64;
/// Default time the host waits for the agent (boots take 15–100 s on a loaded nested host).
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest vCPU count the VMM accepts.
pub const MAX_VCPUS: u8 = 32;
/// Guest memory bounds the VMM accepts (MiB).
pub const MEMORY_RANGE_MIB: std::ops::RangeInclusive<u32> = 32..=65536;
/// The KVM device.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// Per-invocation choices from the command line (`--kernel`, `--cpu-profile`, ...). Build it
/// with `VmOptions { kernel, ..Default::default() }` so new fields do not break callers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmOptions {
    /// `--kernel`: the guest kernel (highest priority).
    pub kernel: Option<PathBuf>,
    /// `--cpu-profile`: overrides detection and the config file.
    pub cpu_profile: Option<CpuProfile>,
    /// vCPU count override (highest priority).
    pub vcpus: Option<u8>,
    /// Guest memory override in MiB (highest priority).
    pub memory_mib: Option<u32>,
}

/// Everything needed to build the initrd and launch the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPlan {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Which source named the kernel ("--kernel", "KVMBOX_KERNEL", "kernel build cache", ...).
    pub kernel_from: &'static str,
    /// The static guest agent binary (the guest's `/init`).
    pub agent: PathBuf,
    /// The VMM binary (`kvmbox-vmm`).
    pub vmm: PathBuf,
    /// vCPU count.
    pub vcpus: u8,
    /// Where the vCPU count came from.
    pub vcpus_from: &'static str,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Where the memory size came from.
    pub memory_from: &'static str,
    /// How long the host waits for the agent's first answer.
    pub agent_timeout: Duration,
    /// CPU profile override; `None`: detected at launch.
    pub cpu_profile: Option<CpuProfile>,
    /// Extra kernel command-line words (the spec's `vm.kernel.parameters`).
    pub extra_cmdline: Vec<String>,
    /// `${KVMBOX_CACHE:-/var/cache/kvmbox}` (agent initramfs cache).
    pub cache_dir: PathBuf,
}

/// The process environment `plan` reads, made explicit for tests.
#[derive(Debug, Clone)]
pub struct PlanEnv {
    /// The config file path.
    pub config_path: PathBuf,
    /// Whether the config file must exist (it was named by `KVMBOX_CONFIG`).
    pub config_required: bool,
    /// `KVMBOX_KERNEL`.
    pub kernel: Option<PathBuf>,
    /// `KVMBOX_AGENT`.
    pub agent: Option<PathBuf>,
    /// `KVMBOX_VMM`.
    pub vmm: Option<PathBuf>,
    /// `KVMBOX_AGENT_TIMEOUT` (raw).
    pub agent_timeout: Option<String>,
    /// `${KVMBOX_CACHE:-/var/cache/kvmbox}`.
    pub cache_dir: PathBuf,
    /// The running executable (for the binaries next to it).
    pub current_exe: Option<PathBuf>,
    /// `kernel-config/build.sh`, if found.
    pub kernel_build_script: Option<PathBuf>,
    /// Usable host CPUs.
    pub host_cpus: u32,
    /// The KVM device to check (`/dev/kvm`).
    pub kvm_device: PathBuf,
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl PlanEnv {
    /// Read the real environment.
    pub fn from_process() -> Self {
        let config = env_path(CONFIG_ENV);
        let current_exe = std::env::current_exe().ok();
        PlanEnv {
            config_required: config.is_some(),
            config_path: config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH)),
            kernel: env_path(KERNEL_ENV),
            agent: env_path(AGENT_ENV),
            vmm: env_path(VMM_ENV),
            agent_timeout: std::env::var_os(AGENT_TIMEOUT_ENV)
                .map(|v: OsString| v.to_string_lossy().into_owned()),
            cache_dir: cache_dir(),
            kernel_build_script: find_build_script(current_exe.as_deref()),
            current_exe,
            host_cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            kvm_device: PathBuf::from(KVM_DEVICE),
        }
    }
}

/// `${KVMBOX_CACHE:-/var/cache/kvmbox}`.
pub fn cache_dir() -> PathBuf {
    env_path(CACHE_ENV).unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR))
}

/// Check that `device` (normally /dev/kvm) can be opened read-write.
pub fn check_kvm(device: &Path) -> Result<(), VmLaunchError> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(VmLaunchError::Kvm(format!(
            "{} not found: is KVM enabled? (load kvm_intel/kvm_amd, enable virtualization or \
             nested virtualization; or use --isolation namespace)",
            device.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(VmLaunchError::Kvm(format!(
                "{}: permission denied (run as root or join the group owning it)",
                device.display()
            )))
        }
        Err(e) => Err(VmLaunchError::Kvm(format!("{}: {e}", device.display()))),
    }
}

fn annotation<T>(
    spec: &Spec,
    key: &str,
    range: std::ops::RangeInclusive<T>,
    what: &str,
) -> Result<Option<T>, VmLaunchError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let Some(value) = spec.annotations().as_ref().and_then(|a| a.get(key)) else {
        return Ok(None);
    };
    let bad = || VmLaunchError::Annotation {
        key: key.to_string(),
        value: value.clone(),
        reason: format!(
            "must be an integer {}..={} ({what})",
            range.start(),
            range.end()
        ),
    };
    let v: T = value.trim().parse().map_err(|_| bad())?;
    if !range.contains(&v) {
        return Err(bad());
    }
    Ok(Some(v))
}

/// vCPUs from `linux.resources.cpu` quota/period: ceil(quota/period), at most `host_cpus`.
fn vcpus_from_cpu_quota(spec: &Spec, host_cpus: u32) -> Option<u8> {
    let cpu = spec
        .linux()
        .as_ref()?
        .resources()
        .as_ref()?
        .cpu()
        .as_ref()?;
    let quota = cpu.quota().filter(|q| *q > 0)? as u64;
    let period = cpu.period().filter(|p| *p > 0).unwrap_or(100_000);
    let cap = host_cpus.clamp(1, u32::from(MAX_VCPUS)) as u64;
    Some(quota.div_ceil(period).clamp(1, cap) as u8)
}

/// Memory from `linux.resources.memory.limit`: MiB rounded up plus `overhead`.
fn memory_from_limit(spec: &Spec, overhead: u32) -> Result<Option<u32>, VmLaunchError> {
    let limit = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0);
    let Some(limit) = limit else { return Ok(None) };
    let mib = (limit as u64).div_ceil(1 << 20) + u64::from(overhead);
    let max = *MEMORY_RANGE_MIB.end();
    if mib > u64::from(max) {
        return Err(VmLaunchError::Spec(format!(
            "linux.resources.memory.limit {limit} needs {mib} MiB of guest RAM (limit + \
             {overhead} MiB overhead), more than the {max} MiB maximum"
        )));
    }
    Ok(Some((mib as u32).max(*MEMORY_RANGE_MIB.start())))
}

/// What the spec's `vm` section contributes.
#[derive(Debug, Default)]
struct SpecVm {
    kernel: Option<PathBuf>,
    parameters: Vec<String>,
    hypervisor: Option<PathBuf>,
}

fn spec_vm(spec: &Spec) -> Result<SpecVm, VmLaunchError> {
    let Some(vm) = spec.vm() else {
        return Ok(SpecVm::default());
    };
    if vm.image().is_some() {
        return Err(VmLaunchError::Spec(
            "vm.image is not supported: kvmbox packs the container rootfs into the initramfs"
                .into(),
        ));
    }
    let kernel = vm.kernel();
    if kernel.initrd().as_deref().is_some_and(|i| !i.is_empty()) {
        return Err(VmLaunchError::Spec(
            "vm.kernel.initrd is not supported: kvmbox builds the initrd itself (agent + \
             container rootfs)"
                .into(),
        ));
    }
    let mut out = SpecVm {
        kernel: (!kernel.path().as_os_str().is_empty()).then(|| kernel.path().clone()),
        parameters: kernel.parameters().clone().unwrap_or_default(),
        hypervisor: None,
    };
    if let Some(p) = out.parameters.iter().find(|p| p.contains(['\n', '\0'])) {
        return Err(VmLaunchError::Spec(format!(
            "vm.kernel.parameters: {p:?} contains a newline or NUL"
        )));
    }
    if let Some(h) = vm.hypervisor() {
        if h.parameters().as_ref().is_some_and(|p| !p.is_empty()) {
            return Err(VmLaunchError::Spec(
                "vm.hypervisor.parameters is not supported (the VMM reads its vm.json only)".into(),
            ));
        }
        if !h.path().as_os_str().is_empty() {
            out.hypervisor = Some(h.path().clone());
        }
    }
    Ok(out)
}

/// Plan the VM of a container from `spec` and `opts` with the real environment.
pub fn plan(spec: &Spec, opts: &VmOptions) -> Result<VmPlan, VmLaunchError> {
    plan_with(spec, opts, &PlanEnv::from_process())
}

/// [`plan`] with an explicit environment.
pub fn plan_with(spec: &Spec, opts: &VmOptions, env: &PlanEnv) -> Result<VmPlan, VmLaunchError> {
    let config = ConfigFile::load(&env.config_path, env.config_required)?;
    let vm = spec_vm(spec)?;

    if let Some(v) = opts.vcpus {
        if !(1..=MAX_VCPUS).contains(&v) {
            return Err(VmLaunchError::Spec(format!(
                "vCPU override {v}: must be 1..={MAX_VCPUS}"
            )));
        }
    }
    if let Some(m) = opts.memory_mib {
        if !MEMORY_RANGE_MIB.contains(&m) {
            return Err(VmLaunchError::Spec(format!(
                "memory override {m} MiB: must be {}..={}",
                MEMORY_RANGE_MIB.start(),
                MEMORY_RANGE_MIB.end()
            )));
        }
    }
    let (vcpus, vcpus_from) = if let Some(v) = opts.vcpus {
        (v, "option")
    } else if let Some(v) = annotation(spec, VCPUS_ANNOTATION, 1..=MAX_VCPUS, "vCPUs")? {
        (v, VCPUS_ANNOTATION)
    } else if let Some(v) = vcpus_from_cpu_quota(spec, env.host_cpus) {
        (v, "linux.resources.cpu quota/period")
    } else if let Some(v) = config.vcpus {
        (v, "config file vcpus")
    } else {
        (DEFAULT_VCPUS, "default")
    };
    let overhead = config
        .memory_overhead_mib
        .unwrap_or(DEFAULT_MEMORY_OVERHEAD_MIB);
    let (memory_mib, memory_from) = if let Some(m) = opts.memory_mib {
        (m, "option")
    } else if let Some(m) = annotation(spec, MEMORY_ANNOTATION, MEMORY_RANGE_MIB, "MiB")? {
        (m, MEMORY_ANNOTATION)
    } else if let Some(m) = memory_from_limit(spec, overhead)? {
        (m, "linux.resources.memory.limit + overhead")
    } else if let Some(m) = config.memory_mib {
        (m, "config file memory_mib")
    } else {
        (DEFAULT_MEMORY_MIB, "default")
    };
    let agent_timeout = match &env.agent_timeout {
        Some(raw) => match raw.trim().parse::<u64>() {
            Ok(s) if s > 0 => Duration::from_secs(s),
            _ => {
                return Err(VmLaunchError::Env {
                    var: AGENT_TIMEOUT_ENV,
                    value: raw.clone(),
                    reason: "must be a positive number of seconds".into(),
                })
            }
        },
        None => config
            .agent_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_AGENT_TIMEOUT),
    };
    let cpu_profile = opts.cpu_profile.or(config.cpu_profile);

    check_kvm(&env.kvm_device)?;
    let kernel = find_kernel(&KernelSources {
        cli: opts.kernel.clone(),
        spec: vm.kernel,
        config: config.kernel.clone().map(|k| (k, env.config_path.clone())),
        env: env.kernel.clone(),
        cache_dir: env.cache_dir.clone(),
        build_script: env.kernel_build_script.clone(),
    })?;
    let agent = find_agent(
        env.agent.as_deref(),
        config.agent.as_deref(),
        env.current_exe.as_deref(),
    )?;
    let vmm = find_vmm(
        env.vmm.as_deref(),
        vm.hypervisor.as_deref(),
        config.vmm.as_deref(),
        env.current_exe.as_deref(),
    )?;
    Ok(VmPlan {
        kernel: kernel.path,
        kernel_from: kernel.from,
        agent,
        vmm,
        vcpus,
        vcpus_from,
        memory_mib,
        memory_from,
        agent_timeout,
        cpu_profile,
        extra_cmdline: vm.parameters,
        cache_dir: env.cache_dir.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        env: PlanEnv,
    }

    fn touch(p: &Path) -> PathBuf {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
        p.to_path_buf()
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let env = PlanEnv {
            config_path: d.join("config.toml"),
            config_required: false,
            kernel: Some(touch(&d.join("env-vmlinux"))),
            agent: Some(touch(&d.join("kvmbox-agent"))),
            vmm: Some(touch(&d.join("kvmbox-vmm"))),
            agent_timeout: None,
            cache_dir: d.join("cache"),
            current_exe: None,
            kernel_build_script: None,
            host_cpus: 2,
            kvm_device: touch(&d.join("kvm")),
        };
        Fixture { dir, env }
    }

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    const PLAIN: &str = r#"{"ociVersion": "1.0.2"}"#;

    #[test]
    fn defaults() {
        let f = fixture();
        let p = plan_with(&spec(PLAIN), &VmOptions::default(), &f.env).unwrap();
        assert_eq!((p.vcpus, p.vcpus_from), (1, "default"));
        assert_eq!((p.memory_mib, p.memory_from), (128, "default"));
        assert_eq!(p.agent_timeout, Duration::from_secs(120));
        assert_eq!(p.kernel, f.env.kernel.clone().unwrap());
        assert_eq!(p.kernel_from, KERNEL_ENV);
        assert_eq!(p.cpu_profile, None);
        assert!(p.extra_cmdline.is_empty());
    }

    #[test]
    fn priority_option_annotation_resources_config_default() {
        let mut f = fixture();
        std::fs::write(
            &f.env.config_path,
            "vcpus = 3\nmemory_mib = 200\nmemory_overhead_mib = 10\ncpu_profile = \"host\"\n",
        )
        .unwrap();
        f.env.host_cpus = 8;
        let full = r#"{"ociVersion": "1.0.2",
            "annotations": {"io.kvmbox.vcpus": "4", "io.kvmbox.memory_mib": "300"},
            "linux": {"resources": {"memory": {"limit": 104857601},
                                    "cpu": {"quota": 150000, "period": 100000}}}}"#;
        let opts = VmOptions {
            vcpus: Some(5),
            memory_mib: Some(400),
            cpu_profile: Some(CpuProfile::Emulated),
            ..Default::default()
        };
        let p = plan_with(&spec(full), &opts, &f.env).unwrap();
        assert_eq!((p.vcpus, p.memory_mib), (5, 400));
        assert_eq!(p.cpu_profile, Some(CpuProfile::Emulated));
        let p = plan_with(&spec(full), &VmOptions::default(), &f.env).unwrap();
        assert_eq!((p.vcpus, p.memory_mib), (4, 300));
        assert_eq!(
            (p.vcpus_from, p.memory_from),
            (VCPUS_ANNOTATION, MEMORY_ANNOTATION)
        );
        assert_eq!(p.cpu_profile, Some(CpuProfile::Host));
        let no_annotations = full.replace("io.kvmbox.", "other.");
        let p = plan_with(&spec(&no_annotations), &VmOptions::default(), &f.env).unwrap();
        // ceil(1.5) = 2 vCPUs; 100 MiB + 1 byte → 101 MiB + 10 MiB overhead.
        assert_eq!((p.vcpus, p.memory_mib), (2, 111));
        let p = plan_with(&spec(PLAIN), &VmOptions::default(), &f.env).unwrap();
        assert_eq!((p.vcpus, p.memory_mib), (3, 200));
        assert_eq!(p.vcpus_from, "config file vcpus");
    }

    #[test]
    fn cpu_quota_is_capped_by_host_cpus_and_limit_uses_default_overhead() {
        let f = fixture();
        let s = spec(
            r#"{"ociVersion": "1.0.2", "linux": {"resources": {
                "memory": {"limit": 67108864}, "cpu": {"quota": 800000, "period": 100000}}}}"#,
        );
        let p = plan_with(&s, &VmOptions::default(), &f.env).unwrap();
        assert_eq!(p.vcpus, 2);
        assert_eq!(p.memory_mib, 64 + DEFAULT_MEMORY_OVERHEAD_MIB);
        let unlimited = spec(
            r#"{"ociVersion": "1.0.2", "linux": {"resources": {
                "memory": {"limit": -1}, "cpu": {"quota": -1}}}}"#,
        );
        let p = plan_with(&unlimited, &VmOptions::default(), &f.env).unwrap();
        assert_eq!((p.vcpus, p.memory_mib), (1, 128));
        let huge = spec(
            r#"{"ociVersion": "1.0.2", "linux": {"resources": {
                "memory": {"limit": 1099511627776}}}}"#,
        );
        let err = plan_with(&huge, &VmOptions::default(), &f.env).unwrap_err();
        assert!(err.to_string().contains("memory.limit"), "{err}");
    }

    #[test]
    fn bad_annotations_name_the_annotation() {
        let f = fixture();
        for (key, value) in [
            (VCPUS_ANNOTATION, "0"),
            (VCPUS_ANNOTATION, "two"),
            (VCPUS_ANNOTATION, "33"),
            (MEMORY_ANNOTATION, "16"),
            (MEMORY_ANNOTATION, "-5"),
            (MEMORY_ANNOTATION, "1e3"),
        ] {
            let s = spec(&format!(
                r#"{{"ociVersion": "1.0.2", "annotations": {{"{key}": "{value}"}}}}"#
            ));
            let err = plan_with(&s, &VmOptions::default(), &f.env)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(value), "{err}");
        }
    }

    #[test]
    fn spec_vm_section() {
        let f = fixture();
        let k = touch(&f.dir.path().join("spec-vmlinux"));
        let h = touch(&f.dir.path().join("hyp"));
        let mut env = f.env.clone();
        env.vmm = None;
        let s = spec(&format!(
            r#"{{"ociVersion": "1.0.2", "vm": {{"kernel": {{"path": "{}",
                "parameters": ["loglevel=7", "foo=bar"]}}, "hypervisor": {{"path": "{}"}}}}}}"#,
            k.display(),
            h.display()
        ));
        let p = plan_with(&s, &VmOptions::default(), &env).unwrap();
        assert_eq!(
            (p.kernel.clone(), p.kernel_from),
            (k, "spec vm.kernel.path")
        );
        assert_eq!(p.extra_cmdline, ["loglevel=7", "foo=bar"]);
        assert_eq!(p.vmm, h);
        let cli = touch(&f.dir.path().join("cli-vmlinux"));
        let opts = VmOptions {
            kernel: Some(cli.clone()),
            ..Default::default()
        };
        assert_eq!(plan_with(&s, &opts, &env).unwrap().kernel, cli);
        for (bad, what) in [
            (
                r#""vm": {"kernel": {"path": "/k", "initrd": "/i"}}"#,
                "vm.kernel.initrd",
            ),
            (
                r#""vm": {"kernel": {"path": "/k"}, "image": {"path": "/i", "format": "raw"}}"#,
                "vm.image",
            ),
            (
                r#""vm": {"kernel": {"path": "/k"}, "hypervisor": {"path": "/h", "parameters": ["-x"]}}"#,
                "vm.hypervisor.parameters",
            ),
        ] {
            let s = spec(&format!(r#"{{"ociVersion": "1.0.2", {bad}}}"#));
            let err = plan_with(&s, &VmOptions::default(), &f.env)
                .unwrap_err()
                .to_string();
            assert!(err.contains(what), "{err}");
        }
    }

    #[test]
    fn agent_timeout_env_and_config() {
        let mut f = fixture();
        std::fs::write(&f.env.config_path, "agent_timeout_secs = 30\n").unwrap();
        let p = plan_with(&spec(PLAIN), &VmOptions::default(), &f.env).unwrap();
        assert_eq!(p.agent_timeout, Duration::from_secs(30));
        f.env.agent_timeout = Some("7".into());
        let p = plan_with(&spec(PLAIN), &VmOptions::default(), &f.env).unwrap();
        assert_eq!(p.agent_timeout, Duration::from_secs(7));
        f.env.agent_timeout = Some("soon".into());
        let err = plan_with(&spec(PLAIN), &VmOptions::default(), &f.env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(AGENT_TIMEOUT_ENV) && err.contains("soon"),
            "{err}"
        );
    }

    #[test]
    fn config_file_errors_and_missing_pieces() {
        let mut f = fixture();
        std::fs::write(&f.env.config_path, "kernal = \"/k\"\n").unwrap();
        let err = plan_with(&spec(PLAIN), &VmOptions::default(), &f.env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.toml") && err.contains("kernal"),
            "{err}"
        );
        std::fs::remove_file(&f.env.config_path).unwrap();
        f.env.kvm_device = f.dir.path().join("no-kvm");
        let err = plan_with(&spec(PLAIN), &VmOptions::default(), &f.env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-kvm not found: is KVM enabled?"), "{err}");
        let mut f = fixture();
        f.env.agent = None;
        let err = plan_with(&spec(PLAIN), &VmOptions::default(), &f.env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("make build"), "{err}");
        f.env.agent = Some(touch(&f.dir.path().join("a")));
        f.env.kernel = None;
        let err = plan_with(&spec(PLAIN), &VmOptions::default(), &f.env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("kernel-config/build.sh"), "{err}");
    }

    #[test]
    fn kvm_permission_denied_is_clear() {
        // Root bypasses file modes, so only check the message shape with a non-openable node.
        let d = tempfile::tempdir().unwrap();
        let err = check_kvm(d.path()).unwrap_err().to_string();
        assert!(err.starts_with(&d.path().display().to_string()), "{err}");
    }
}
