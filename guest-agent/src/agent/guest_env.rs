//! Environment the guest passes on to every container process.
//!
//! On hosts where guest kernel code is emulated, the VMM puts `GLIBC_TUNABLES` (glibc without
//! AVX/AVX-512) on the kernel command line, and the kernel hands it to PID 1 (the agent) as an
//! environment variable: that guest kernel cannot context-switch AVX state (see docs/vmm.md,
//! "Guest SIGSEGV in pipelines"), so no guest process may use it. The agent forwards such
//! variables into each container process's environment unless the spec sets them itself.

use oci_spec::runtime::Process;

/// Variables forwarded from the agent's own environment into container processes.
pub const FORWARDED: &[&str] = &["GLIBC_TUNABLES"];

/// Add each of `FORWARDED` found in `lookup` to `process.env` unless already set there.
pub fn forward_into(process: &mut Process, lookup: impl Fn(&str) -> Option<String>) {
    let mut env = process.env().clone().unwrap_or_default();
    let mut changed = false;
    for name in FORWARDED {
        let prefix = format!("{name}=");
        if env.iter().any(|e| e.starts_with(&prefix)) {
            continue;
        }
        if let Some(value) = lookup(name) {
            env.push(format!("{prefix}{value}"));
            changed = true;
        }
    }
    if changed {
        process.set_env(Some(env));
    }
}

/// [`forward_into`] from the agent's real environment.
pub fn forward(process: &mut Process) {
    forward_into(process, |name| std::env::var(name).ok());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(env: &[&str]) -> Process {
        let mut p = Process::default();
        p.set_env(Some(env.iter().map(|s| s.to_string()).collect()));
        p
    }

    #[test]
    fn forwards_a_variable_the_spec_lacks() {
        let mut p = process(&["PATH=/bin"]);
        forward_into(&mut p, |n| {
            (n == "GLIBC_TUNABLES").then(|| "glibc.cpu.hwcaps=-AVX".into())
        });
        assert_eq!(
            p.env().as_ref().unwrap(),
            &vec![
                "PATH=/bin".to_string(),
                "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX".to_string()
            ]
        );
    }

    #[test]
    fn the_spec_wins_and_absent_variables_add_nothing() {
        let mut p = process(&["GLIBC_TUNABLES=mine"]);
        forward_into(&mut p, |_| Some("agent".into()));
        assert_eq!(
            p.env().as_ref().unwrap(),
            &vec!["GLIBC_TUNABLES=mine".to_string()]
        );
        let mut q = process(&["PATH=/bin"]);
        forward_into(&mut q, |_| None);
        assert_eq!(q.env().as_ref().unwrap(), &vec!["PATH=/bin".to_string()]);
    }
}
