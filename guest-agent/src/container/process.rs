//! Applying `process` to the calling (child) process: rlimits, capabilities, user and groups,
//! umask, cwd, no_new_privileges, and the final execve with the spec's environment.
//! (apparmorProfile and selinuxLabel are ignored: neither LSM is used here.)

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{Capabilities, Capability, PosixRlimitType, Process};

use super::error::{ContainerError, Result};

/// The resource number of an OCI rlimit type.
pub(crate) fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Apply process.rlimits.
pub(crate) fn apply_rlimits(p: &Process) -> Result<()> {
    for r in p.rlimits().as_deref().unwrap_or(&[]) {
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: valid rlimit struct.
        if unsafe { libc::setrlimit(rlimit_resource(r.typ()), &lim) } < 0 {
            return Err(ContainerError::sys(format!("setrlimit {}", r.typ()))(
                nix::Error::last(),
            ));
        }
    }
    Ok(())
}

/// Map an OCI capability to the `caps` crate's type ("CAP_" + the SCREAMING_SNAKE name).
pub(crate) fn to_caps(c: &Capability) -> Option<caps::Capability> {
    caps::Capability::from_str(&format!("CAP_{c}")).ok()
}

fn cap_set(set: Option<&Capabilities>) -> HashSet<caps::Capability> {
    set.map(|s| s.iter().filter_map(to_caps).collect())
        .unwrap_or_default()
}

/// Drop from the bounding set every capability not in process.capabilities.bounding (needs
/// CAP_SETPCAP: call before changing user).
pub(crate) fn apply_bounding(p: &Process) -> Result<()> {
    let Some(c) = p.capabilities() else {
        return Ok(());
    };
    let keep = cap_set(c.bounding().as_ref());
    for cap in caps::all() {
        if keep.contains(&cap) {
            continue;
        }
        if let Err(e) = caps::drop(None, caps::CapSet::Bounding, cap) {
            // Capabilities this kernel does not know about cannot be in the set anyway.
            let msg = e.to_string();
            if !msg.contains("Invalid argument") {
                return Err(ContainerError::Init(format!(
                    "drop {cap} from the bounding set: {msg}"
                )));
            }
        }
    }
    Ok(())
}

/// Switch to process.user (groups, gid, uid), keeping the permitted capabilities across.
pub(crate) fn apply_user(p: &Process) -> Result<()> {
    let u = p.user();
    let gids: Vec<Gid> = u
        .additional_gids()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    // setgroups is denied in a user namespace whose gid_map was written with setgroups=deny.
    let setgroups_allowed = std::fs::read_to_string("/proc/self/setgroups")
        .map(|s| s.trim() != "deny")
        .unwrap_or(true);
    if setgroups_allowed {
        nix::unistd::setgroups(&gids).map_err(ContainerError::sys("setgroups"))?;
    } else if !gids.is_empty() {
        return Err(ContainerError::InvalidSpec(
            "additionalGids need setgroups, which is denied".into(),
        ));
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let gid = Gid::from_raw(u.gid());
    nix::unistd::setresgid(gid, gid, gid)
        .map_err(ContainerError::sys(format!("setresgid {}", u.gid())))?;
    let uid = Uid::from_raw(u.uid());
    nix::unistd::setresuid(uid, uid, uid)
        .map_err(ContainerError::sys(format!("setresuid {}", u.uid())))?;
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    Ok(())
}

/// Make the effective set equal to the permitted set (kept across the user switch).
pub(crate) fn raise_effective() -> Result<()> {
    let perm = caps::read(None, caps::CapSet::Permitted)
        .map_err(|e| ContainerError::Init(format!("read permitted capabilities: {e}")))?;
    caps::set(None, caps::CapSet::Effective, &perm)
        .map_err(|e| ContainerError::Init(format!("raise effective capabilities: {e}")))
}

/// Set the inheritable, effective, permitted and ambient sets (after the user switch).
pub(crate) fn apply_caps(p: &Process) -> Result<()> {
    let Some(c) = p.capabilities() else {
        return Ok(());
    };
    let e = cap_set(c.effective().as_ref());
    let perm = cap_set(c.permitted().as_ref());
    let i = cap_set(c.inheritable().as_ref());
    let set = |what: &str, s: caps::CapSet, v: &HashSet<caps::Capability>| {
        caps::set(None, s, v)
            .map_err(|err| ContainerError::Init(format!("set {what} capabilities: {err}")))
    };
    // Inheritable first (while the permitted set is still full), then shrink effective and
    // permitted (effective must stay a subset of permitted).
    set("inheritable", caps::CapSet::Inheritable, &i)?;
    set("effective", caps::CapSet::Effective, &e)?;
    set("permitted", caps::CapSet::Permitted, &perm)?;
    let _ = caps::clear(None, caps::CapSet::Ambient);
    for cap in cap_set(c.ambient().as_ref()) {
        // As runc: an ambient capability not in permitted ∩ inheritable is skipped.
        if let Err(err) = caps::raise(None, caps::CapSet::Ambient, cap) {
            tracing::debug!("ambient {cap} not raised: {err}");
        }
    }
    Ok(())
}

/// Set process.user.umask (default 0022).
pub(crate) fn apply_umask(p: &Process) {
    let mask = p.user().umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        mask as libc::mode_t,
    ));
}

/// chdir to process.cwd (must exist).
pub(crate) fn apply_cwd(p: &Process) -> Result<()> {
    let cwd = if p.cwd().as_os_str().is_empty() {
        Path::new("/")
    } else {
        p.cwd().as_path()
    };
    nix::unistd::chdir(cwd).map_err(ContainerError::sys(format!("cwd {}", cwd.display())))
}

/// prctl(PR_SET_NO_NEW_PRIVS) when process.noNewPrivileges.
pub(crate) fn apply_no_new_privileges(p: &Process) -> Result<()> {
    if p.no_new_privileges() == Some(true) {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
            return Err(ContainerError::sys("set no_new_privs")(nix::Error::last()));
        }
    }
    Ok(())
}

/// Write oom_score_adj of `pid` ("self" or a number).
pub(crate) fn set_oom_score_adj(pid: &str, value: i32) -> Result<()> {
    let path = format!("/proc/{pid}/oom_score_adj");
    std::fs::write(&path, value.to_string()).map_err(ContainerError::io("write", path))
}

/// The value of PATH in `env` (the default PATH if unset).
fn path_var(env: &[String]) -> &str {
    env.iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
}

/// Find `arg0` as execve would with the container's PATH: names with a '/' are used as they are,
/// others are looked up in each PATH directory for an executable regular file.
pub(crate) fn find_executable(arg0: &str, env: &[String]) -> Result<PathBuf> {
    let check = |p: &Path| -> std::io::Result<bool> {
        let m = std::fs::metadata(p)?;
        Ok(m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if arg0.is_empty() {
        return Err(ContainerError::InvalidSpec(
            "process.args[0] is empty".into(),
        ));
    }
    if arg0.contains('/') {
        return match check(Path::new(arg0)) {
            Ok(true) => Ok(PathBuf::from(arg0)),
            Ok(false) => Err(ContainerError::Init(format!(
                "exec {arg0}: permission denied (not an executable file)"
            ))),
            Err(e) => Err(ContainerError::Init(format!("exec {arg0}: {e}"))),
        };
    }
    for dir in path_var(env).split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(arg0);
        if let Ok(true) = check(&cand) {
            return Ok(cand);
        }
    }
    Err(ContainerError::Init(format!(
        "exec {arg0}: executable file not found in $PATH"
    )))
}

/// Everything execve needs, prepared before the last setup steps.
pub(crate) struct ExecArgs {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

fn cstring(what: &str, s: &[u8]) -> Result<CString> {
    CString::new(s).map_err(|_| ContainerError::InvalidSpec(format!("{what} contains a NUL byte")))
}

impl ExecArgs {
    /// Resolve args[0] and convert args/env.
    pub(crate) fn prepare(p: &Process) -> Result<Self> {
        let args = p.args().as_deref().unwrap_or(&[]);
        if args.is_empty() {
            return Err(ContainerError::InvalidSpec(
                "process.args must not be empty".into(),
            ));
        }
        let env = p.env().as_deref().unwrap_or(&[]);
        let path = find_executable(&args[0], env)?;
        Ok(ExecArgs {
            path: cstring("process.args[0]", path.as_os_str().as_bytes())?,
            argv: args
                .iter()
                .map(|a| cstring("process.args", a.as_bytes()))
                .collect::<Result<_>>()?,
            envp: env
                .iter()
                .map(|e| cstring("process.env", e.as_bytes()))
                .collect::<Result<_>>()?,
        })
    }

    /// execve; only returns on failure.
    pub(crate) fn exec(&self) -> ContainerError {
        match nix::unistd::execve(&self.path, &self.argv, &self.envp) {
            Err(e) => ContainerError::sys(format!("exec {}", self.path.to_string_lossy()))(e),
            Ok(never) => match never {},
        }
    }
}

/// Reset what the caller may have changed and exec would keep: blocked signals and ignored
/// SIGPIPE (the Rust runtime ignores it).
pub(crate) fn reset_signals() {
    // SAFETY: plain libc calls with valid arguments.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Mark every fd from `first` up close-on-exec, and clear close-on-exec on 0..first (stdio and
/// the preserved fds).
pub(crate) fn prepare_fds(first: u32) -> Result<()> {
    // SAFETY: close_range with the CLOEXEC flag does not close anything.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc < 0 {
        return Err(ContainerError::sys("close_range")(nix::Error::last()));
    }
    for fd in 3..first as i32 {
        // SAFETY: fcntl on a possibly-closed fd just fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_map() {
        assert_eq!(
            to_caps(&Capability::NetBindService),
            Some(caps::Capability::CAP_NET_BIND_SERVICE)
        );
        assert_eq!(
            to_caps(&Capability::SysAdmin),
            Some(caps::Capability::CAP_SYS_ADMIN)
        );
        assert_eq!(
            to_caps(&Capability::AuditWrite),
            Some(caps::Capability::CAP_AUDIT_WRITE)
        );
    }

    #[test]
    fn rlimit_names_map() {
        assert_eq!(
            rlimit_resource(PosixRlimitType::RlimitNofile),
            libc::RLIMIT_NOFILE
        );
        assert_eq!(
            rlimit_resource(PosixRlimitType::RlimitNproc),
            libc::RLIMIT_NPROC
        );
        assert_eq!(
            rlimit_resource(PosixRlimitType::RlimitRttime),
            libc::RLIMIT_RTTIME
        );
    }

    #[test]
    fn executables_are_found_in_the_spec_path() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        let sh = find_executable("sh", &env).unwrap();
        assert!(sh.ends_with("sh"));
        assert_eq!(
            find_executable("/bin/sh", &env).unwrap(),
            PathBuf::from("/bin/sh")
        );
        let e = find_executable("no-such-binary-xyz", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("executable file not found"), "{e}");
        assert!(find_executable("/etc/passwd", &env).is_err());
        assert_eq!(
            path_var(&["A=1".into()]),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        );
    }
}
