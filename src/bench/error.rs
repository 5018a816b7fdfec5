//! Errors of the benchmark.

use std::path::PathBuf;

/// What stopped the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// `--runs 0` or `--vm-runs 0`.
    #[error("bench: --runs and --vm-runs must be at least 1")]
    NoRuns,
    /// A tool the benchmark needs is missing.
    #[error("bench: {0} not found in PATH (install busybox-static)")]
    Missing(&'static str),
    /// A filesystem operation failed.
    #[error("bench: {what} {path}: {source}", path = .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A runtime could not be started.
    #[error("bench: cannot start {runtime}: {source}")]
    Spawn {
        /// Runtime name.
        runtime: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A runtime command (create, start, delete, run) failed.
    #[error("bench: {runtime} {command} {id} failed ({status}): {stderr}")]
    RunFailed {
        /// Runtime name.
        runtime: String,
        /// The command that failed.
        command: &'static str,
        /// Container id.
        id: String,
        /// Exit status.
        status: String,
        /// Last line of its stderr.
        stderr: String,
    },
    /// `--modes` selected nothing to measure.
    #[error("bench: no mode selected (--modes is empty or --no-peers removed every mode)")]
    NoModes,
    /// Drawing the chart failed.
    #[error("bench: drawing the chart: {0}")]
    Chart(String),
    /// Serialising the spec or the report failed.
    #[error("bench: {0}")]
    Json(#[from] serde_json::Error),
}
