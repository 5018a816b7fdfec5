//! Shim settings derived from the bundle and the environment containerd gives the shim.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::error::{Result, ShimError};
use crate::runtime::Isolation;

/// OCI annotation choosing the isolation model of a container.
pub const ISOLATION_ANNOTATION: &str = "io.kvmbox.isolation";
/// Environment variable giving the isolation model when the annotation is absent.
pub const ISOLATION_ENV: &str = "KVMBOX_ISOLATION";
/// CRI annotation naming a container's pod sandbox (containers of one pod share a shim).
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// Environment variable overriding where the shim keeps kvmbox's container state.
pub const STATE_ROOT_ENV: &str = "KVMBOX_SHIM_ROOT";
/// Default parent of the per-namespace kvmbox state roots.
pub const DEFAULT_STATE_ROOT: &str = "/run/containerd/kvmbox";

/// The annotations of `<bundle>/config.json` (empty if it has none).
pub fn bundle_annotations(bundle: &Path) -> Result<HashMap<String, String>> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ShimError::io("read", &path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ShimError::InvalidArgument(format!("{}: {e}", path.display())))?;
    Ok(value
        .get("annotations")
        .and_then(|a| a.as_object())
        .map(|a| {
            a.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

/// The isolation model of container `id`: the annotation `io.kvmbox.isolation`, else the
/// `isolation` of the config file named by the runtime options (`options`: its path and value),
/// else `$KVMBOX_ISOLATION` (`env`), else `vm`. Returns the model and where it came from.
pub fn choose_isolation(
    id: &str,
    annotations: &HashMap<String, String>,
    options: Option<(&Path, Isolation)>,
    env: Option<&str>,
) -> Result<(Isolation, String)> {
    if !annotations.contains_key(ISOLATION_ANNOTATION) {
        if let Some((path, isolation)) = options {
            let source = format!("runtime options config {}", path.display());
            return Ok((isolation, source));
        }
    }
    let (value, source) = match annotations.get(ISOLATION_ANNOTATION) {
        Some(v) => (v.as_str(), format!("annotation {ISOLATION_ANNOTATION}")),
        None => match env.filter(|v| !v.is_empty()) {
            Some(v) => (v, format!("${ISOLATION_ENV}")),
            None => ("vm", "the default".to_string()),
        },
    };
    match value {
        "namespace" => Ok((Isolation::Namespace, source)),
        "vm" => Ok((Isolation::Vm, source)),
        other => Err(ShimError::InvalidArgument(format!(
            "container {id}: {source}: unknown isolation {other:?} (want vm or namespace)"
        ))),
    }
}

/// The id grouping containers into one shim: the pod sandbox id, else the container id.
pub fn grouping(id: &str, annotations: &HashMap<String, String>) -> String {
    annotations
        .get(SANDBOX_ID_ANNOTATION)
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| id.to_string())
}

/// Where the shim keeps kvmbox's state for containerd namespace `namespace`.
pub fn state_root(namespace: &str) -> PathBuf {
    let base = std::env::var_os(STATE_ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_ROOT));
    base.join(namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn isolation_comes_from_annotation_then_options_then_env_then_vm() {
        let pick = |a: &[(&str, &str)], env| choose_isolation("c1", &ann(a), None, env);
        let (iso, src) = pick(&[(ISOLATION_ANNOTATION, "namespace")], Some("vm")).unwrap();
        assert_eq!(
            (iso, src.as_str()),
            (Isolation::Namespace, "annotation io.kvmbox.isolation")
        );
        assert_eq!(
            pick(&[], Some("namespace")).unwrap().0,
            Isolation::Namespace
        );
        let (iso, src) = pick(&[], None).unwrap();
        assert_eq!((iso, src.as_str()), (Isolation::Vm, "the default"));
        assert_eq!(pick(&[], Some("")).unwrap().0, Isolation::Vm);
        assert_eq!(
            pick(&[(ISOLATION_ANNOTATION, "vm")], Some("namespace"))
                .unwrap()
                .0,
            Isolation::Vm
        );
        // The runtime options' config file comes after the annotation, before the env.
        let cfg = Path::new("/etc/kvmbox/ns.toml");
        let with_options = |a: &[(&str, &str)]| {
            choose_isolation("c1", &ann(a), Some((cfg, Isolation::Namespace)), Some("vm"))
        };
        let (iso, src) = with_options(&[]).unwrap();
        assert_eq!(
            (iso, src.as_str()),
            (
                Isolation::Namespace,
                "runtime options config /etc/kvmbox/ns.toml"
            )
        );
        assert_eq!(
            with_options(&[(ISOLATION_ANNOTATION, "vm")]).unwrap().0,
            Isolation::Vm
        );
        let err = pick(&[(ISOLATION_ANNOTATION, "kvm")], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown isolation \"kvm\""), "{err}");
        assert!(err.contains("container c1"), "{err}");
    }

    #[test]
    fn pods_group_by_sandbox_id() {
        assert_eq!(grouping("c1", &ann(&[])), "c1");
        assert_eq!(
            grouping("c1", &ann(&[(SANDBOX_ID_ANNOTATION, "pod1")])),
            "pod1"
        );
    }

    #[test]
    fn annotations_are_read_from_config_json() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{"io.kvmbox.isolation":"namespace"}}"#,
        )
        .unwrap();
        let a = bundle_annotations(dir.path()).unwrap();
        assert_eq!(
            a.get(ISOLATION_ANNOTATION).map(String::as_str),
            Some("namespace")
        );
        assert!(bundle_annotations(Path::new("/nonexistent")).is_err());
    }
}
