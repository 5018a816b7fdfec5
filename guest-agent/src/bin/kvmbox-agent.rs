//! `kvmbox-agent`: PID 1 of a kvmbox guest (or, with `--listen-unix PATH`, the same server on a
//! Unix socket for tests). See `guest_agent::agent`.

use guest_agent::agent::{self, pid1, Mode, Options, Outcome};

fn main() {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            agent::log::line(&e.to_string());
            if std::process::id() == 1 {
                pid1::power_off();
            }
            std::process::exit(2);
        }
    };
    if opts.mode == Mode::Pid1 {
        // A panic must not kill PID 1 (the kernel would panic): report it and power off.
        std::panic::set_hook(Box::new(|info| {
            agent::log::line(&format!("fatal: {info}"));
            pid1::power_off();
        }));
    }
    match agent::run(&opts) {
        Ok(Outcome::PowerOff) => pid1::power_off(),
        Ok(Outcome::Exit) => {}
        Err(e) => {
            agent::log::line(&format!("fatal: {e}"));
            if opts.mode == Mode::Pid1 {
                pid1::power_off();
            }
            std::process::exit(1);
        }
    }
}
