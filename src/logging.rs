//! Logging setup for `--log`, `--log-format`, `--debug`.
