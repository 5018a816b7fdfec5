//! The `kvmbox` binary: parse the command line, set up logging, dispatch.

use clap::Parser;

fn main() {
    let cli = kvmbox::cli::Cli::parse();
    let code = kvmbox::commands::main(cli);
    std::process::exit(code);
}
