//! The benchmark's results and their text, markdown and JSON renderings.

use super::host::HostInfo;
use super::stats::{median_ratio, Summary};

/// Results of one runtime.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RuntimeResult {
    /// Runtime name.
    pub runtime: String,
    /// Runtime version.
    pub version: String,
    /// Statistics of the samples (absent when the runtime failed before any sample).
    pub summary: Option<Summary>,
    /// Every sample in milliseconds, in run order.
    pub samples_ms: Vec<f64>,
    /// Why the runtime dropped out, if it did.
    pub error: Option<String>,
}

/// kvmbox's median divided by a peer's, with the target for it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Ratio {
    /// `kvmbox/<peer>`.
    pub name: String,
    /// The ratio of medians.
    pub value: f64,
    /// The ratio kvmbox aims to stay under.
    pub target: f64,
}

/// Everything a benchmark run measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// The host.
    pub host: HostInfo,
    /// What one sample is.
    pub workload: String,
    /// Runs per runtime requested.
    pub runs: usize,
    /// One entry per runtime, kvmbox first.
    pub results: Vec<RuntimeResult>,
    /// kvmbox/crun and kvmbox/runc, where both were measured.
    pub ratios: Vec<Ratio>,
    /// How things were measured (e.g. crun's mount namespace).
    pub notes: Vec<String>,
}

/// Target ratio of kvmbox's median to `peer`'s (issue 2: faster than crun, under half of runc).
pub fn target_for(peer: &str) -> Option<f64> {
    match peer {
        "crun" => Some(1.0),
        "runc" => Some(0.5),
        _ => None,
    }
}

impl Report {
    /// Compute the kvmbox/peer ratios from `results` (kvmbox must be the entry named "kvmbox").
    pub fn compute_ratios(results: &[RuntimeResult]) -> Vec<Ratio> {
        let Some(ours) = results
            .iter()
            .find(|r| r.runtime == "kvmbox")
            .and_then(|r| r.summary)
        else {
            return Vec::new();
        };
        results
            .iter()
            .filter(|r| r.runtime != "kvmbox")
            .filter_map(|r| {
                let target = target_for(&r.runtime)?;
                let value = median_ratio(&ours, r.summary.as_ref()?)?;
                Some(Ratio {
                    name: format!("kvmbox/{}", r.runtime),
                    value,
                    target,
                })
            })
            .collect()
    }

    /// Rows of the results table: runtime, version, min, median, max.
    fn rows(&self) -> Vec<Vec<String>> {
        self.results
            .iter()
            .map(|r| match (&r.summary, &r.error) {
                (Some(s), None) => vec![
                    r.runtime.clone(),
                    r.version.clone(),
                    format!("{:.1}", s.min_ms),
                    format!("{:.1}", s.median_ms),
                    format!("{:.1}", s.max_ms),
                ],
                (_, err) => vec![
                    r.runtime.clone(),
                    r.version.clone(),
                    "-".into(),
                    "-".into(),
                    format!("failed: {}", err.as_deref().unwrap_or("no samples")),
                ],
            })
            .collect()
    }

    /// Human-readable report.
    pub fn text(&self) -> String {
        let mut out = format!("{}\nworkload: {}\n\n", self.host.line(), self.workload);
        out += &text_table(&HEADERS, &self.rows());
        out += "\n";
        for r in &self.ratios {
            out += &format!("{}\n", ratio_line(r));
        }
        for n in &self.notes {
            out += &format!("note: {n}\n");
        }
        out
    }

    /// Markdown report (results.md).
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# kvmbox bench\n\n{}\n\nworkload: {}\n\n",
            self.host.line(),
            self.workload
        );
        out += &markdown_table(&HEADERS, &self.rows());
        out += "\n";
        for r in &self.ratios {
            out += &format!("- {}\n", ratio_line(r));
        }
        for n in &self.notes {
            out += &format!("- note: {n}\n");
        }
        out
    }
}

const HEADERS: [&str; 5] = ["runtime", "version", "min ms", "median ms", "max ms"];

/// `median kvmbox/crun: 0.52 (target < 1.00: met)`.
pub fn ratio_line(r: &Ratio) -> String {
    let verdict = if r.value < r.target { "met" } else { "not met" };
    format!(
        "median {}: {:.2} (target < {:.2}: {verdict})",
        r.name, r.value, r.target
    )
}

/// Column widths: the longest cell (in chars) of each column, headers included.
fn widths(headers: &[&str], rows: &[Vec<String>]) -> Vec<usize> {
    headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// A plain-text table: left-aligned first two columns, right-aligned numbers, two spaces apart.
pub fn text_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let w = widths(headers, rows);
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < 2 {
                    format!("{c:<width$}", width = w[i])
                } else {
                    format!("{c:>width$}", width = w[i])
                }
            })
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

/// A GitHub-flavoured markdown table with numbers right-aligned.
pub fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", headers.join(" | "));
    let align: Vec<&str> = (0..headers.len())
        .map(|i| if i < 2 { "---" } else { "---:" })
        .collect();
    out += &format!("| {} |\n", align.join(" | "));
    for r in rows {
        out += &format!("| {} |\n", r.join(" | "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, samples: &[f64]) -> RuntimeResult {
        RuntimeResult {
            runtime: name.into(),
            version: "1.0".into(),
            summary: Summary::of_ms(samples),
            samples_ms: samples.to_vec(),
            error: None,
        }
    }

    fn report() -> Report {
        let results = vec![
            result("kvmbox", &[4.0, 5.0, 6.0]),
            result("runc", &[20.0, 25.0, 30.0]),
            result("crun", &[8.0, 10.0, 12.0]),
        ];
        Report {
            host: HostInfo {
                cpu_model: "CPU".into(),
                cpus: 2,
                kernel: "6.1".into(),
                cgroup: "v1".into(),
            },
            workload: "run /bin/true".into(),
            runs: 3,
            ratios: Report::compute_ratios(&results),
            results,
            notes: vec!["crun in a private mount namespace".into()],
        }
    }

    #[test]
    fn ratios_divide_kvmbox_median_by_each_peer() {
        let r = report();
        assert_eq!(r.ratios.len(), 2);
        assert_eq!(r.ratios[0].name, "kvmbox/runc");
        assert!((r.ratios[0].value - 0.2).abs() < 1e-9);
        assert_eq!(r.ratios[0].target, 0.5);
        assert_eq!(r.ratios[1].name, "kvmbox/crun");
        assert!((r.ratios[1].value - 0.5).abs() < 1e-9);
    }

    #[test]
    fn no_ratio_without_kvmbox_samples() {
        let mut results = vec![result("kvmbox", &[]), result("runc", &[1.0])];
        assert!(Report::compute_ratios(&results).is_empty());
        results[0] = result("kvmbox", &[1.0]);
        results[1].summary = None;
        assert!(Report::compute_ratios(&results).is_empty());
    }

    #[test]
    fn text_table_aligns_columns() {
        let rows = vec![
            vec!["kvmbox".into(), "0.1.0".into(), "4.0".into()],
            vec!["crun".into(), "1.8.1".into(), "12.5".into()],
        ];
        let t = text_table(&["runtime", "version", "min ms"], &rows);
        assert_eq!(
            t,
            "runtime  version  min ms\n\
             kvmbox   0.1.0       4.0\n\
             crun     1.8.1      12.5\n"
        );
    }

    #[test]
    fn markdown_table_has_header_separator_and_rows() {
        let rows = vec![vec!["a".into(), "b".into(), "1.0".into()]];
        let t = markdown_table(&["x", "y", "z"], &rows);
        assert_eq!(t, "| x | y | z |\n| --- | --- | ---: |\n| a | b | 1.0 |\n");
    }

    #[test]
    fn text_report_has_host_table_ratios_and_notes() {
        let t = report().text();
        assert!(t.starts_with("host: CPU (2 CPUs), Linux 6.1, cgroup v1\n"));
        assert!(
            t.contains("kvmbox   1.0         4.0        5.0     6.0\n"),
            "{t}"
        );
        assert!(t.contains("median kvmbox/runc: 0.20 (target < 0.50: met)\n"));
        assert!(t.contains("median kvmbox/crun: 0.50 (target < 1.00: met)\n"));
        assert!(t.contains("note: crun in a private mount namespace\n"));
    }

    #[test]
    fn failed_runtime_is_shown_with_its_error() {
        let mut r = report();
        r.results[2] = RuntimeResult {
            summary: None,
            error: Some("exit status 1".into()),
            ..result("crun", &[])
        };
        let md = r.markdown();
        assert!(
            md.contains("| crun | 1.0 | - | - | failed: exit status 1 |"),
            "{md}"
        );
    }

    #[test]
    fn ratio_verdict() {
        let r = Ratio {
            name: "kvmbox/crun".into(),
            value: 1.2,
            target: 1.0,
        };
        assert_eq!(
            ratio_line(&r),
            "median kvmbox/crun: 1.20 (target < 1.00: not met)"
        );
    }

    #[test]
    fn json_report_has_every_section() {
        let v = serde_json::to_value(report()).unwrap();
        assert_eq!(v["results"][0]["runtime"], "kvmbox");
        assert_eq!(v["results"][0]["summary"]["median_ms"], 5.0);
        assert_eq!(v["ratios"][1]["name"], "kvmbox/crun");
        assert_eq!(v["host"]["cgroup"], "v1");
    }
}
