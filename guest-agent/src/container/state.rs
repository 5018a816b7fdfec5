//! The OCI runtime state (what `kvmbox state` prints and what hooks get on stdin).

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Lifecycle status of a container, as in the OCI runtime spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created.
    Creating,
    /// Created; the user process has not been started.
    Created,
    /// The user process is running.
    Running,
    /// The user process exited.
    Stopped,
}

/// OCI state JSON (plus runc's `created` timestamp).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OciState {
    /// OCI spec version.
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Status.
    pub status: Status,
    /// PID of the container's init (0 when stopped).
    #[serde(default)]
    pub pid: i32,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Annotations from the spec.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    /// RFC 3339 creation time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}
