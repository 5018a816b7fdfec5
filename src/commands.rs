//! Dispatch of parsed CLI commands onto the runtime library. Errors become one line on stderr
//! (and the log) and exit code 1.

use crate::cli::{Cli, Command};

/// Run the parsed command line; returns the process exit code.
pub fn main(cli: Cli) -> i32 {
    match &cli.command {
        Command::Vm(crate::cli::VmCommand::Boot(args)) => match crate::vmm::boot_command(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("kvmbox: error: {e:#}");
                1
            }
        },
        Command::Bench(args) => match crate::bench::run(&cli, args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("kvmbox: error: {e:#}");
                1
            }
        },
        _ => {
            eprintln!("kvmbox: error: not implemented yet");
            1
        }
    }
}
