//! `kvmbox bench`: VM vs container startup, side by side with peers.

use crate::cli::{BenchArgs, Cli};

/// Run the benchmark described by `args`.
pub fn run(cli: &Cli, args: &BenchArgs) -> anyhow::Result<()> {
    let _ = (cli, args);
    anyhow::bail!("bench: not implemented yet")
}
