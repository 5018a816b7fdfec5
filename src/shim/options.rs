//! containerd's runtime options for kvmbox: the generic `runtimeoptions.v1.Options` message that
//! containerd uses for runtimes other than runc (`ctr run --runtime-config-path FILE`, or the CRI
//! plugin's `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kvmbox.options]` table
//! with `ConfigPath = "..."`). Its `ConfigPath` names a kvmbox config file (TOML), which sets the
//! default isolation and the microVM defaults of the containers created with it.

use std::path::PathBuf;

use containerd_shim::protos::protobuf::rt::WireType;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;

use super::error::{Result, ShimError};
use crate::vm_launch::config_file::ConfigFile;

/// The type containerd gives the options of a runtime that is not runc.
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// The runtime options of one container, as far as kvmbox reads them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// `ConfigPath`: a kvmbox config file, with its parsed contents.
    pub config: Option<(PathBuf, ConfigFile)>,
}

impl RuntimeOptions {
    /// Read the options of container `id` from containerd's Create request (`None`, or an Any
    /// with an empty type, is no options). The config file must exist and parse.
    pub fn from_any(id: &str, options: Option<&Any>) -> Result<Self> {
        let Some(any) = options.filter(|a| !a.type_url.is_empty()) else {
            return Ok(Self::default());
        };
        let kind = any.type_url.rsplit('/').next().unwrap_or_default();
        if kind != RUNTIME_OPTIONS_TYPE {
            return Err(ShimError::InvalidArgument(format!(
                "container {id}: runtime options of type {:?} are not kvmbox's (want \
                 {RUNTIME_OPTIONS_TYPE} with ConfigPath, e.g. `ctr run --runtime-config-path`)",
                any.type_url
            )));
        }
        let path = config_path(&any.value).map_err(|e| {
            ShimError::InvalidArgument(format!(
                "container {id}: runtime options {RUNTIME_OPTIONS_TYPE}: {e}"
            ))
        })?;
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let config = ConfigFile::load(&path, true)
            .map_err(|e| ShimError::InvalidArgument(format!("container {id}: {e}")))?;
        Ok(RuntimeOptions {
            config: Some((path, config)),
        })
    }
}

/// The `config_path` (field 2) of an encoded `runtimeoptions.v1.Options`; field 1 (`type_url`)
/// and unknown fields are skipped. An empty path is no path.
fn config_path(bytes: &[u8]) -> std::result::Result<Option<PathBuf>, String> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut path = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(|e| e.to_string())? {
        let wire = WireType::new(tag & 7).ok_or_else(|| format!("bad wire type in tag {tag}"))?;
        if tag >> 3 == 2 && wire == WireType::LengthDelimited {
            path = Some(input.read_string().map_err(|e| e.to_string())?);
        } else {
            input.skip_field(wire).map_err(|e| e.to_string())?;
        }
    }
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Isolation;
    use containerd_shim::protos::protobuf::CodedOutputStream;

    fn encoded(type_url: &str, config_path: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut buf);
            out.write_string(1, type_url).unwrap();
            out.write_string(2, config_path).unwrap();
            out.write_uint32(9, 42).unwrap(); // an unknown field is skipped
            out.flush().unwrap();
        }
        buf
    }

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        let mut a = Any::new();
        a.type_url = type_url.into();
        a.value = value;
        a
    }

    #[test]
    fn config_path_is_read_and_the_file_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kvmbox.toml");
        std::fs::write(&file, "isolation = \"namespace\"\nvcpus = 2\n").unwrap();
        let a = any(RUNTIME_OPTIONS_TYPE, encoded("", file.to_str().unwrap()));
        let opts = RuntimeOptions::from_any("c1", Some(&a)).unwrap();
        let (path, cfg) = opts.config.unwrap();
        assert_eq!(path, file);
        assert_eq!(cfg.isolation, Some(Isolation::Namespace));
        assert_eq!(cfg.vcpus, Some(2));
        // containerd's typeurl may carry a prefix.
        let a = any(
            "types.containerd.io/runtimeoptions.v1.Options",
            encoded("x", file.to_str().unwrap()),
        );
        assert!(RuntimeOptions::from_any("c1", Some(&a))
            .unwrap()
            .config
            .is_some());
    }

    #[test]
    fn no_options_or_no_path_is_no_config() {
        assert_eq!(
            RuntimeOptions::from_any("c1", None).unwrap(),
            RuntimeOptions::default()
        );
        assert_eq!(
            RuntimeOptions::from_any("c1", Some(&Any::new())).unwrap(),
            RuntimeOptions::default()
        );
        let a = any(RUNTIME_OPTIONS_TYPE, encoded("", ""));
        assert!(RuntimeOptions::from_any("c1", Some(&a))
            .unwrap()
            .config
            .is_none());
    }

    #[test]
    fn bad_options_are_errors_naming_the_container_and_the_problem() {
        let err = |a: Any| {
            RuntimeOptions::from_any("c9", Some(&a))
                .unwrap_err()
                .to_string()
        };
        let e = err(any("containerd.runc.v1.Options", vec![]));
        assert!(
            e.contains("c9") && e.contains("containerd.runc.v1.Options"),
            "{e}"
        );
        let e = err(any(
            RUNTIME_OPTIONS_TYPE,
            encoded("", "/nonexistent/k.toml"),
        ));
        assert!(e.contains("c9") && e.contains("/nonexistent/k.toml"), "{e}");
        let e = err(any(RUNTIME_OPTIONS_TYPE, vec![0x12, 0x40, b'a']));
        assert!(e.contains("c9") && e.contains(RUNTIME_OPTIONS_TYPE), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.toml");
        std::fs::write(&file, "isolation = \"kvm\"\n").unwrap();
        let e = err(any(
            RUNTIME_OPTIONS_TYPE,
            encoded("", file.to_str().unwrap()),
        ));
        assert!(e.contains("k.toml") && e.contains("line 1"), "{e}");
    }
}
