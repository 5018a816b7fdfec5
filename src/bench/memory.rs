//! Memory of one instance, read from `/proc/<pid>/smaps`: the process's own RSS and PSS with the
//! guest-RAM mapping left out, and that mapping's resident size (guest memory the VM touched).
//! For kvmbox `--isolation vm` the guest agent's own RSS is added from its Stats answer.

/// One sample of a process's memory, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemorySample {
    /// Resident set of every mapping except guest RAM.
    pub rss_kib: u64,
    /// Proportional set (shared pages divided among their users) of every mapping except guest RAM.
    pub pss_kib: u64,
    /// Resident part of the guest-RAM mapping (`None` for a process without one).
    pub guest_rss_kib: Option<u64>,
    /// The guest agent's own RSS (inside guest RAM touched), from its Stats answer (kvmbox
    /// `--isolation vm` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_rss_kib: Option<u64>,
}

impl MemorySample {
    /// Host memory this instance costs: PSS outside guest RAM plus the guest RAM it touched.
    pub fn host_kib(&self) -> u64 {
        self.pss_kib + self.guest_rss_kib.unwrap_or(0)
    }
}

/// One mapping of an smaps text.
#[derive(Debug, Default)]
struct Mapping {
    size: u64,
    anonymous: bool,
    rss_kib: u64,
    pss_kib: u64,
}

/// Split an smaps text into its mappings.
fn mappings(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            {
                // start-end perms offset dev inode [path]
                let inode = fields.nth(3).unwrap_or("0");
                let path = fields.next().unwrap_or("");
                out.push(Mapping {
                    size: end.saturating_sub(start),
                    anonymous: inode == "0" && (path.is_empty() || path.starts_with("[anon")),
                    ..Mapping::default()
                });
                continue;
            }
        }
        let Some(m) = out.last_mut() else { continue };
        if let Some(v) = line.strip_prefix("Rss:") {
            m.rss_kib = kib(v);
        } else if let Some(v) = line.strip_prefix("Pss:") {
            m.pss_kib = kib(v);
        }
    }
    out
}

/// `"   123 kB"` → 123.
fn kib(value: &str) -> u64 {
    value
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Summarise an smaps text. With `guest_bytes`, the guest-RAM mapping is the anonymous mapping
/// of exactly that size, else the smallest anonymous mapping larger than it (a VMM may add
/// alignment); it is counted apart from the rest.
pub fn parse_smaps(smaps: &str, guest_bytes: Option<u64>) -> MemorySample {
    let maps = mappings(smaps);
    let guest = guest_bytes.and_then(|want| {
        maps.iter()
            .enumerate()
            .filter(|(_, m)| m.anonymous && m.size >= want)
            .min_by_key(|(_, m)| m.size)
            .map(|(i, _)| i)
    });
    let mut sample = MemorySample {
        guest_rss_kib: guest_bytes.map(|_| 0),
        ..MemorySample::default()
    };
    for (i, m) in maps.iter().enumerate() {
        if Some(i) == guest {
            sample.guest_rss_kib = Some(m.rss_kib);
        } else {
            sample.rss_kib += m.rss_kib;
            sample.pss_kib += m.pss_kib;
        }
    }
    sample
}

/// Sample process `pid` (see [`parse_smaps`]).
pub fn sample(pid: u32, guest_bytes: Option<u64>) -> std::io::Result<MemorySample> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    Ok(parse_smaps(&text, guest_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0200000 r-xp 00000000 fe:01 1234 /usr/bin/kvmbox
Size:               2048 kB
Rss:                1000 kB
Pss:                 400 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:               30000 kB
Pss:               30000 kB
7f0010000000-7f0010100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                 200 kB
Pss:                 200 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  12 kB
Pss:                  12 kB
";

    #[test]
    fn guest_ram_is_counted_apart() {
        let s = parse_smaps(SMAPS, Some(128 << 20));
        assert_eq!(s.guest_rss_kib, Some(30000));
        assert_eq!(s.rss_kib, 1000 + 200 + 12);
        assert_eq!(s.pss_kib, 400 + 200 + 12);
        assert_eq!(s.host_kib(), s.pss_kib + 30000);
    }

    #[test]
    fn without_guest_everything_is_the_process() {
        let s = parse_smaps(SMAPS, None);
        assert_eq!(s.guest_rss_kib, None);
        assert_eq!(s.rss_kib, 31212);
        assert_eq!(s.pss_kib, 30612);
    }

    #[test]
    fn guest_mapping_may_be_a_little_larger_but_not_file_backed() {
        // 1 MiB wanted: the 1 MiB anonymous mapping wins over the 128 MiB one; the 2 MiB file
        // mapping never counts as guest RAM.
        let s = parse_smaps(SMAPS, Some(1 << 20));
        assert_eq!(s.guest_rss_kib, Some(200));
        let s = parse_smaps(SMAPS, Some((1 << 20) - 4096));
        assert_eq!(s.guest_rss_kib, Some(200));
    }

    #[test]
    fn missing_guest_mapping_reads_as_zero_touched() {
        let s = parse_smaps(SMAPS, Some(1 << 40));
        assert_eq!(s.guest_rss_kib, Some(0));
        assert_eq!(s.rss_kib, 31212);
    }

    #[test]
    fn own_process_can_be_sampled() {
        let s = sample(std::process::id(), None).unwrap();
        assert!(s.rss_kib > 0 && s.pss_kib > 0);
    }
}
