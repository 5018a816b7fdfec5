//! OCI bundle loading: `<bundle>/config.json` into an [`oci_spec::runtime::Spec`], with errors
//! that name the file, the field and (for JSON errors) the line and column.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Process, Spec};
use serde::de::DeserializeOwned;

use super::error::{Result, RuntimeError};

/// Name of the OCI config inside a bundle.
pub const CONFIG_FILE: &str = "config.json";

/// A loaded and validated bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute, canonical bundle directory.
    pub dir: PathBuf,
    /// The parsed config.json.
    pub spec: Spec,
    /// Absolute path of the rootfs (root.path resolved against the bundle).
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Load `<dir>/config.json` and validate what container setup needs.
    pub fn load(dir: &Path) -> Result<Bundle> {
        let bundle_err = |msg: &str| RuntimeError::Bundle {
            path: dir.to_path_buf(),
            msg: msg.to_string(),
        };
        let dir = match std::fs::canonicalize(dir) {
            Ok(dir) => dir,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(bundle_err("directory does not exist"))
            }
            Err(e) => return Err(RuntimeError::io("resolve bundle", dir, e)),
        };
        if !dir.is_dir() {
            return Err(bundle_err("is not a directory"));
        }
        let config = dir.join(CONFIG_FILE);
        let text = read_json_file(&config, |msg| RuntimeError::Bundle {
            path: config.clone(),
            msg,
        })?;
        let spec: Spec = parse_json(&text, |msg| RuntimeError::Bundle {
            path: config.clone(),
            msg,
        })?;
        let rootfs = validate_spec(&spec, &dir, &config)?;
        Ok(Bundle { dir, spec, rootfs })
    }
}

/// Load an OCI process JSON (`exec -p process.json`).
pub fn load_process(path: &Path) -> Result<Process> {
    let err = |msg| RuntimeError::ProcessFile {
        path: path.to_path_buf(),
        msg,
    };
    let text = read_json_file(path, err)?;
    let process: Process = parse_json(&text, err)?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(err("args is empty".into()));
    }
    Ok(process)
}

fn read_json_file(path: &Path, err: impl Fn(String) -> RuntimeError) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => err("file does not exist".into()),
        _ => err(format!("cannot read: {e}")),
    })
}

/// Parse JSON text into `T`, reporting line/column and, for bad values, the field path.
pub fn parse_json<T: DeserializeOwned>(
    text: &str,
    err: impl Fn(String) -> RuntimeError,
) -> Result<T> {
    let mut de = serde_json::Deserializer::from_str(text);
    let located = |e: &serde_json::Error| {
        let (line, column) = (e.line(), e.column());
        (line, column, strip_location(&e.to_string(), line, column))
    };
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let (line, column, msg) = located(&inner);
        if inner.is_data() && field != "." {
            err(format!(
                "field {field}: {msg} (line {line}, column {column})"
            ))
        } else {
            err(format!("line {line}, column {column}: {msg}"))
        }
    })?;
    de.end().map_err(|e| {
        let (line, column, msg) = located(&e);
        err(format!("line {line}, column {column}: {msg}"))
    })?;
    Ok(value)
}

/// serde_json appends " at line L column C" to its messages; we print the location ourselves.
fn strip_location(msg: &str, line: usize, column: usize) -> String {
    let suffix = format!(" at line {line} column {column}");
    msg.strip_suffix(&suffix).unwrap_or(msg).to_string()
}

/// Check the parts of the spec container setup relies on; returns the absolute rootfs path.
fn validate_spec(spec: &Spec, bundle: &Path, config: &Path) -> Result<PathBuf> {
    let err = |msg: String| RuntimeError::Bundle {
        path: config.to_path_buf(),
        msg,
    };
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| err("root is missing".into()))?;
    if root.path().as_os_str().is_empty() {
        return Err(err("root.path is empty".into()));
    }
    let rootfs = bundle.join(root.path());
    if !rootfs.is_dir() {
        return Err(err(format!(
            "root.path {} is not an existing directory",
            rootfs.display()
        )));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| err("process is missing".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(err("process.args is empty".into()));
    }
    if !process.cwd().is_absolute() {
        return Err(err(format!(
            "process.cwd {} is not an absolute path",
            process.cwd().display()
        )));
    }
    Ok(rootfs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{
  "ociVersion": "1.0.2",
  "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
  "root": {"path": "rootfs"},
  "linux": {"namespaces": [{"type": "pid"}]}
}"#;

    fn bundle_with(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), config).unwrap();
        dir
    }

    fn load_err(config: &str) -> String {
        let dir = bundle_with(config);
        Bundle::load(dir.path()).unwrap_err().to_string()
    }

    #[test]
    fn loads_a_minimal_bundle() {
        let dir = bundle_with(MINIMAL);
        let b = Bundle::load(dir.path()).unwrap();
        assert!(b.dir.is_absolute());
        assert_eq!(b.rootfs, b.dir.join("rootfs"));
        assert_eq!(
            b.spec.process().as_ref().unwrap().args().as_ref().unwrap()[0],
            "sh"
        );
    }

    #[test]
    fn bad_json_names_file_line_and_column() {
        let dir = bundle_with("{\n  \"ociVersion\":\n    ,\n}");
        let err = Bundle::load(dir.path()).unwrap_err().to_string();
        let config = std::fs::canonicalize(dir.path()).unwrap().join(CONFIG_FILE);
        assert_eq!(
            err,
            format!(
                "bundle {}: line 3, column 5: expected value",
                config.display()
            )
        );
    }

    #[test]
    fn trailing_garbage_is_an_error() {
        let err = load_err(&format!("{MINIMAL} x"));
        assert!(
            err.contains("line 6, column 3: trailing characters"),
            "{err}"
        );
    }

    #[test]
    fn unknown_value_names_the_field() {
        let err = load_err(&MINIMAL.replace(r#""type": "pid""#, r#""type": "pidx""#));
        assert!(
            err.contains("config.json: field linux.namespaces[0].type: "),
            "{err}"
        );
        assert!(err.contains("pidx"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = load_err(&MINIMAL.replace(r#""uid": 0"#, r#""uid": "root""#));
        assert!(
            err.contains("field process.user.uid: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn missing_directory_and_config() {
        let err = Bundle::load(Path::new("/nonexistent/bundle")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bundle /nonexistent/bundle: directory does not exist"
        );
        let dir = tempfile::tempdir().unwrap();
        let err = Bundle::load(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("/config.json: file does not exist"), "{err}");
    }

    #[test]
    fn validates_process_and_root() {
        let err = load_err(&MINIMAL.replace(r#"["sh"]"#, "[]"));
        assert!(err.ends_with("config.json: process.args is empty"), "{err}");
        let err = load_err(&MINIMAL.replace("rootfs", "nope"));
        assert!(err.contains("root.path ") && err.contains("/nope is not an existing directory"));
        let no_process = r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"}}"#;
        assert!(load_err(no_process).ends_with("process is missing"));
        let err = load_err(&MINIMAL.replace(r#""cwd": "/""#, r#""cwd": "tmp""#));
        assert!(
            err.ends_with("process.cwd tmp is not an absolute path"),
            "{err}"
        );
    }

    #[test]
    fn process_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(
            &path,
            r#"{"args": ["id"], "cwd": "/", "user": {"uid": 1, "gid": 2}}"#,
        )
        .unwrap();
        let p = load_process(&path).unwrap();
        assert_eq!(p.user().uid(), 1);
        std::fs::write(
            &path,
            r#"{"args": [], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#,
        )
        .unwrap();
        let err = load_process(&path).unwrap_err().to_string();
        assert!(err.ends_with("args is empty"), "{err}");
        std::fs::write(&path, "{").unwrap();
        let err = load_process(&path).unwrap_err().to_string();
        assert!(
            err.starts_with("process file ") && err.contains("line 1, column 1"),
            "{err}"
        );
    }
}
