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

/// Called once when the guest reports userspace (e.g. to write the timings file early).
type UserspaceHook = Arc<dyn Fn(&BootTimer) + Send + Sync>;

/// Shared, cheap-to-clone boot-time recorder.
#[derive(Clone)]
pub struct BootTimer {
    start: Instant,
    marks: Arc<Mutex<Marks>>,
    on_userspace: Arc<Mutex<Option<UserspaceHook>>>,
}

impl std::fmt::Debug for BootTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootTimer")
            .field("start", &self.start)
            .field("marks", &self.marks)
            .finish_non_exhaustive()
    }
}

/// The boot marks in milliseconds since VMM start (serializable for the timings file).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BootMarks {
    /// VMM start → first KVM_RUN.
    pub first_kvm_run_ms: Option<f64>,
    /// VMM start → first byte on the serial port (the kernel is running).
    pub first_serial_ms: Option<f64>,
    /// VMM start → the guest wrote [`USERSPACE_MARK`] to the boot-timer port.
    pub userspace_ms: Option<f64>,
    /// Other boot-timer port values and their times.
    #[serde(default)]
    pub others: Vec<(u8, f64)>,
}

impl BootTimer {
    /// Start counting from `start` (the VMM's start).
    pub fn new(start: Instant) -> Self {
        BootTimer {
            start,
            marks: Arc::new(Mutex::new(Marks::default())),
            on_userspace: Arc::new(Mutex::new(None)),
        }
    }

    /// Call `hook` once, right after the guest reports userspace.
    pub fn on_userspace(&self, hook: impl Fn(&BootTimer) + Send + Sync + 'static) {
        *self.on_userspace.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(hook));
    }

    /// The marks so far, in milliseconds since VMM start.
    pub fn marks(&self) -> BootMarks {
        let ms = |t: Option<Instant>| t.map(|t| (t - self.start).as_secs_f64() * 1e3);
        self.with(|m| BootMarks {
            first_kvm_run_ms: ms(m.first_kvm_run),
            first_serial_ms: ms(m.first_serial),
            userspace_ms: ms(m.userspace),
            others: m
                .others
                .iter()
                .map(|(v, t)| (*v, (*t - self.start).as_secs_f64() * 1e3))
                .collect(),
        })
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
        let first_userspace = self.with(|m| {
            if value == USERSPACE_MARK {
                let first = m.userspace.is_none();
                m.userspace.get_or_insert(now);
                first
            } else {
                if m.others.len() < 64 {
                    m.others.push((value, now));
                }
                false
            }
        });
        if first_userspace {
            let hook = self
                .on_userspace
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(hook) = hook {
                hook(self);
            }
        }
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
        let m = t.marks();
        assert!(m.first_kvm_run_ms.is_some() && m.userspace_ms.is_some());
        assert_eq!(m.first_serial_ms, None);
        assert_eq!(m.others.len(), 1);
    }

    #[test]
    fn userspace_hook_runs_once() {
        let t = BootTimer::new(Instant::now());
        let calls = Arc::new(Mutex::new(0));
        let c = calls.clone();
        t.on_userspace(move |timer| {
            assert!(timer.userspace().is_some());
            *c.lock().unwrap() += 1;
        });
        t.guest_mark(1);
        t.guest_mark(USERSPACE_MARK);
        t.guest_mark(USERSPACE_MARK);
        assert_eq!(*calls.lock().unwrap(), 1);
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
