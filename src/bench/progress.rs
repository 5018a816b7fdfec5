//! Progress on stderr while the benchmark runs (indicatif), drawn only when stderr is a terminal
//! so that logs and pipes stay clean.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar over the benchmark's runs.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar of `total` steps on stderr; hidden unless stderr is a terminal.
    pub fn new(total: u64) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress {
                bar: ProgressBar::hidden(),
            };
        }
        let bar = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{elapsed_precise:.dim} [{bar:30}] {pos}/{len} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        // VM boots take seconds to minutes on emulated hosts: keep the clock moving.
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress { bar }
    }

    /// Say what runs now.
    pub fn doing(&self, what: impl Into<String>) {
        self.bar.set_message(what.into());
    }

    /// One step done.
    pub fn step(&self) {
        self.bar.inc(1);
    }

    /// Remove the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_bar_counts_steps() {
        // Under `cargo test` stderr is captured or a pipe in CI; either way the bar works.
        let p = Progress::new(3);
        p.doing("x");
        p.step();
        p.step();
        assert_eq!(p.bar.position(), 2);
        p.finish();
    }
}
