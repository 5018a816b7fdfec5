//! Boot-time marks (VMM start, first KVM_RUN, first serial byte, userspace) and the VMM's own
//! memory footprint.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Value the guest's init writes to the boot-timer port once userspace runs.
pub const USERSPACE_MARK: u8 = 123;

#[derive(Default, Debug, Clone)]
struct Marks {
    first_kvm_run: Option<Instant>,
    first_serial: Option<Instant>,
    userspace: Option<Instant>,
    others: Vec<(u8, Instant)>,
}

/// Shared, cheap-to-clone boot-time recorder.
#[derive(Clone, Debug)]
pub struct BootTimer {
    start: Instant,
    marks: Arc<Mutex<Marks>>,
}

impl BootTimer {
    /// Start counting from `start` (the VMM's start).
    pub fn new(start: Instant) -> Self {
        BootTimer {
            start,
            marks: Arc::new(Mutex::new(Marks::default())),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Marks) -> R) -> R {
        f(&mut self.marks.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Record the first KVM_RUN (later calls are ignored).
    pub fn first_kvm_run(&self) {
        self.with(|m| {
            m.first_kvm_run.get_or_insert_with(Instant::now);
        });
    }

    /// Record the first byte the guest sends to its serial port.
    pub fn first_serial(&self) {
        self.with(|m| {
            m.first_serial.get_or_insert_with(Instant::now);
        });
    }

    /// Record a byte written to the boot-timer port.
    pub fn guest_mark(&self, value: u8) {
        let now = Instant::now();
        self.with(|m| {
            if value == USERSPACE_MARK {
                m.userspace.get_or_insert(now);
            } else if m.others.len() < 64 {
                m.others.push((value, now));
            }
        });
    }

    /// CLOCK_MONOTONIC (ns) of the first KVM_RUN, comparable across processes.
    pub fn first_kvm_run_monotonic_ns(&self) -> Option<u64> {
        let now_ns = super::bench::monotonic_ns();
        let now = Instant::now();
        self.with(|m| {
            m.first_kvm_run
                .map(|t| now_ns.saturating_sub((now - t).as_nanos() as u64))
        })
    }

    /// Time from VMM start to userspace, if the guest reported it.
    pub fn userspace(&self) -> Option<Duration> {
        self.with(|m| m.userspace.map(|t| t - self.start))
    }

    /// The one-line report printed by `--timings`.
    pub fn report(&self) -> String {
        let ms = |t: Option<Instant>| match t {
            Some(t) => format!("{:.1} ms", (t - self.start).as_secs_f64() * 1e3),
            None => "-".to_string(),
        };
        self.with(|m| {
            let mut s = format!(
                "VMM start 0 → first KVM_RUN {} → first serial output {} → userspace (port 0x3f0) {}",
                ms(m.first_kvm_run),
                ms(m.first_serial),
                ms(m.userspace)
            );
            for (v, t) in &m.others {
                s.push_str(&format!("; mark {v} {}", ms(Some(*t))));
            }
            s
        })
    }
}

/// Resident memory of this process in KiB, excluding the mapping that starts at `exclude_start`
/// (the guest memory), from /proc/self/smaps.
pub fn rss_kib_excluding(exclude_start: &[u64]) -> std::io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    Ok(rss_from_smaps(&smaps, exclude_start))
}

/// Sum the `Rss:` lines of an smaps text, skipping mappings starting at `exclude_start`.
pub fn rss_from_smaps(smaps: &str, exclude_start: &[u64]) -> u64 {
    let mut total = 0;
    let mut skip = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, _)) = first.split_once('-') {
            if let Ok(start) = u64::from_str_radix(start, 16) {
                skip = exclude_start.contains(&start);
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("Rss:") {
            if !skip {
                total += rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_orders_marks() {
        let t = BootTimer::new(Instant::now());
        t.first_kvm_run();
        t.guest_mark(7);
        t.guest_mark(USERSPACE_MARK);
        let r = t.report();
        assert!(r.contains("first serial output -"), "{r}");
        assert!(r.contains("mark 7"), "{r}");
        assert!(t.userspace().is_some());
    }

    #[test]
    fn smaps_sum_skips_guest_memory() {
        let smaps = "7f00-7f10 rw-p 00000000 00:00 0\nRss:                 100 kB\n\
                     8000-9000 rw-p 00000000 00:00 0\nRss:               5000 kB\n\
                     a000-b000 r-xp 00000000 00:00 0 /bin/x\nRss:                  20 kB\n";
        assert_eq!(rss_from_smaps(smaps, &[0x8000]), 120);
        assert_eq!(rss_from_smaps(smaps, &[]), 5120);
    }
}
