//! Plain-text and markdown tables, and how numbers are written in them.

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

/// A plain-text table: the first `left` columns left-aligned, the rest (numbers)
/// right-aligned, two spaces apart.
pub fn text_table(headers: &[&str], left: usize, rows: &[Vec<String>]) -> String {
    let w = widths(headers, rows);
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let width = w.get(i).copied().unwrap_or(0);
                if i < left {
                    format!("{c:<width$}")
                } else {
                    format!("{c:>width$}")
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

/// A GitHub-flavoured markdown table, the first `left` columns left-aligned and the rest
/// right-aligned. `|` in cells is escaped.
pub fn markdown_table(headers: &[&str], left: usize, rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", headers.join(" | "));
    let align: Vec<&str> = (0..headers.len())
        .map(|i| if i < left { "---" } else { "---:" })
        .collect();
    out += &format!("| {} |\n", align.join(" | "));
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| c.replace('|', "\\|")).collect();
        out += &format!("| {} |\n", cells.join(" | "));
    }
    out
}

/// Milliseconds with a precision that suits their size: `0.42`, `16.3`, `20928`.
pub fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// KiB as MiB with two decimals.
pub fn mib(kib: f64) -> String {
    format!("{:.2}", kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_table_aligns_columns() {
        let rows = vec![
            vec!["kvmbox".into(), "0.1.0".into(), "4.0".into()],
            vec!["crun".into(), "1.8.1".into(), "12.5".into()],
        ];
        let t = text_table(&["runtime", "version", "min ms"], 2, &rows);
        assert_eq!(
            t,
            "runtime  version  min ms\n\
             kvmbox   0.1.0       4.0\n\
             crun     1.8.1      12.5\n"
        );
    }

    #[test]
    fn markdown_table_has_header_separator_and_rows() {
        let rows = vec![vec!["a|b".into(), "b".into(), "1.0".into()]];
        let t = markdown_table(&["x", "y", "z"], 2, &rows);
        assert_eq!(
            t,
            "| x | y | z |\n| --- | --- | ---: |\n| a\\|b | b | 1.0 |\n"
        );
    }

    #[test]
    fn numbers_are_written_to_their_size() {
        assert_eq!(ms(0.4213), "0.42");
        assert_eq!(ms(16.34), "16.3");
        assert_eq!(ms(20928.04), "20928");
        assert_eq!(mib(3244.0), "3.17");
    }
}
