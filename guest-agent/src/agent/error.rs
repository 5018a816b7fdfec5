//! The agent's fatal errors (setup failures that stop the agent; request errors are answered
//! to the host as `Response::Error` instead).

use std::io;

/// A fatal agent error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A PID-1 or listener setup step failed.
    #[error("{what}: {err}")]
    Setup {
        /// What was being done.
        what: String,
        /// Why it failed.
        err: io::Error,
    },
    /// Bad command line.
    #[error("usage: {0}")]
    Usage(String),
}

impl AgentError {
    /// A setup error from an I/O error.
    pub fn setup(what: impl Into<String>) -> impl FnOnce(io::Error) -> AgentError {
        let what = what.into();
        move |err| AgentError::Setup { what, err }
    }
}
