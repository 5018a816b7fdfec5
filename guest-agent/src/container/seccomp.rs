//! linux.seccomp: the OCI profile compiled with seccompiler and installed with seccomp(2).
//!
//! seccompiler filters have one match action each, so a profile becomes a stack of filters: one
//! with the default action that lets every listed syscall through, and one per other action
//! (errno 1, errno 38, trap, ...) that applies it to its syscalls and allows everything else.
//! The kernel runs every filter and keeps the highest-precedence result, which gives the
//! profile's meaning. Syscall names unknown to this architecture are skipped (as libseccomp
//! does); `architectures` is not used (filters check the native one); SCMP_ACT_NOTIFY is refused.

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use serde_json::{json, Value};

use super::error::{ContainerError, Result};

/// Compiled filters, installed in order.
pub(crate) struct SeccompFilters(Vec<seccompiler::BpfProgram>);

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<Value> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => json!("allow"),
        LinuxSeccompAction::ScmpActErrno => json!({"errno": errno.unwrap_or(libc::EPERM as u32)}),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            json!("kill_thread")
        }
        LinuxSeccompAction::ScmpActKillProcess => json!("kill_process"),
        LinuxSeccompAction::ScmpActTrap => json!("trap"),
        LinuxSeccompAction::ScmpActTrace => json!({"trace": errno.unwrap_or(libc::EPERM as u32)}),
        LinuxSeccompAction::ScmpActLog => json!("log"),
        LinuxSeccompAction::ScmpActNotify => {
            return Err(ContainerError::InvalidSpec(
                "linux.seccomp: SCMP_ACT_NOTIFY is not supported".into(),
            ))
        }
    })
}

/// The seccompiler JSON document (filter name → filter) for a profile.
pub(crate) fn to_json(s: &LinuxSeccomp, skip: &[String]) -> Result<Value> {
    let default = action(s.default_action(), s.default_errno_ret())?;
    let allow = json!("allow");
    let mut all_rules = Vec::new();
    let mut groups: Vec<(Value, Vec<Value>)> = Vec::new();
    for sc in s.syscalls().as_deref().unwrap_or(&[]) {
        let act = action(sc.action(), sc.errno_ret())?;
        let mut args = Vec::new();
        for a in sc.args().as_deref().unwrap_or(&[]) {
            let (op, val) = match a.op() {
                LinuxSeccompOperator::ScmpCmpNe => (json!("ne"), a.value()),
                LinuxSeccompOperator::ScmpCmpLt => (json!("lt"), a.value()),
                LinuxSeccompOperator::ScmpCmpLe => (json!("le"), a.value()),
                LinuxSeccompOperator::ScmpCmpEq => (json!("eq"), a.value()),
                LinuxSeccompOperator::ScmpCmpGe => (json!("ge"), a.value()),
                LinuxSeccompOperator::ScmpCmpGt => (json!("gt"), a.value()),
                LinuxSeccompOperator::ScmpCmpMaskedEq => {
                    (json!({"masked_eq": a.value()}), a.value_two().unwrap_or(0))
                }
            };
            args.push(json!({"index": a.index(), "type": "qword", "op": op, "val": val}));
        }
        let args = if args.is_empty() {
            Value::Null
        } else {
            Value::Array(args)
        };
        for name in sc.names() {
            if skip.contains(name) {
                continue;
            }
            let rule = json!({"syscall": name, "args": args});
            all_rules.push(rule.clone());
            if act != allow {
                match groups.iter_mut().find(|(a, _)| *a == act) {
                    Some((_, rules)) => rules.push(rule),
                    None => groups.push((act.clone(), vec![rule])),
                }
            }
        }
    }
    let mut doc = serde_json::Map::new();
    if default != allow {
        doc.insert(
            "f0".into(),
            json!({"mismatch_action": default, "match_action": "allow", "filter": all_rules}),
        );
    }
    for (i, (act, rules)) in groups.into_iter().enumerate() {
        doc.insert(
            format!("f{}", i + 1),
            json!({"mismatch_action": "allow", "match_action": act, "filter": rules}),
        );
    }
    Ok(Value::Object(doc))
}

fn target_arch() -> Result<seccompiler::TargetArch> {
    if cfg!(target_arch = "x86_64") {
        Ok(seccompiler::TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(seccompiler::TargetArch::aarch64)
    } else {
        Err(ContainerError::InvalidSpec(
            "linux.seccomp: unsupported architecture".into(),
        ))
    }
}

/// Compile a profile.
pub(crate) fn compile(s: &LinuxSeccomp) -> Result<SeccompFilters> {
    let arch = target_arch()?;
    let mut skip: Vec<String> = Vec::new();
    loop {
        let doc = to_json(s, &skip)?;
        let text = serde_json::to_vec(&doc).expect("serialisable");
        match seccompiler::compile_from_json(text.as_slice(), arch) {
            Ok(map) => {
                let mut names: Vec<&String> = map.keys().collect();
                names.sort_by_key(|n| n[1..].parse::<usize>().unwrap_or(0));
                let progs = names.into_iter().map(|n| map[n].clone()).collect();
                return Ok(SeccompFilters(progs));
            }
            Err(e) => {
                // "Invalid syscall name: NAME for given arch: ..." → skip NAME and retry.
                let msg = e.to_string();
                let unknown = msg
                    .split("Invalid syscall name: ")
                    .nth(1)
                    .and_then(|r| r.split(" for given arch").next())
                    .map(str::to_owned);
                match unknown {
                    Some(name) if !skip.contains(&name) => {
                        tracing::debug!("seccomp: syscall {name} unknown here, skipped");
                        skip.push(name);
                    }
                    _ => return Err(ContainerError::InvalidSpec(format!("linux.seccomp: {msg}"))),
                }
            }
        }
    }
}

impl SeccompFilters {
    /// Install the filters on the calling thread (without forcing no_new_privs: without it the
    /// caller needs CAP_SYS_ADMIN).
    pub(crate) fn install(&self) -> Result<()> {
        for prog in &self.0 {
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: fprog points at a valid BPF program that outlives the call (the kernel
            // copies it).
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &fprog as *const libc::sock_fprog,
                )
            };
            if rc < 0 {
                return Err(ContainerError::sys("install seccomp filter")(
                    nix::Error::last(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn default_deny_profile_becomes_allow_filter_plus_action_groups() {
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]}"#,
        );
        let doc = to_json(&p, &[]).unwrap();
        assert_eq!(doc["f0"]["mismatch_action"], json!({"errno": 1}));
        assert_eq!(doc["f0"]["filter"].as_array().unwrap().len(), 4);
        assert_eq!(doc["f0"]["filter"][3]["args"][0]["op"], json!("eq"));
        assert_eq!(doc["f1"]["match_action"], json!({"errno": 38}));
        assert_eq!(doc["f1"]["filter"][0]["syscall"], json!("mkdir"));
        assert!(doc.get("f2").is_none());
        assert_eq!(compile(&p).unwrap().0.len(), 2);
    }

    #[test]
    fn unknown_syscalls_are_skipped_and_notify_refused() {
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["no_such_syscall_xyz", "mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#,
        );
        assert_eq!(compile(&p).unwrap().0.len(), 1);
        let n = profile(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#);
        assert!(compile(&n).is_err());
    }
}
