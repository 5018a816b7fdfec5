//! The guest's serial console log (`<state>/console.log`), quoted in errors so that a failed
//! boot or a guest panic explains itself.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Lines quoted from the end of the log.
const TAIL_LINES: usize = 6;
/// Bytes read from the end of the log.
const TAIL_BYTES: u64 = 8192;
/// Longest quoted line (characters).
const MAX_LINE: usize = 160;

/// A console log path and its last lines at the time of an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLog {
    /// Where the full log is.
    pub path: PathBuf,
    /// Its last non-empty lines (control characters removed), oldest first.
    pub tail: Vec<String>,
}

impl ConsoleLog {
    /// Read the last lines of `path` (none if it is missing or empty).
    pub fn read(path: &Path) -> ConsoleLog {
        ConsoleLog {
            path: path.to_path_buf(),
            tail: read_tail(path).unwrap_or_default(),
        }
    }

    /// The error suffix: `; see <path>: last lines: "a" | "b"`.
    pub fn describe(&self) -> String {
        if self.tail.is_empty() {
            return format!("; see {} (no guest output)", self.path.display());
        }
        let quoted: Vec<String> = self.tail.iter().map(|l| format!("{l:?}")).collect();
        format!(
            "; see {}: last lines: {}",
            self.path.display(),
            quoted.join(" | ")
        )
    }

    /// The same log moved to `path` (used when the state directory holding it is removed).
    pub fn moved_to(&self, path: &Path) -> ConsoleLog {
        ConsoleLog {
            path: path.to_path_buf(),
            tail: self.tail.clone(),
        }
    }
}

fn read_tail(path: &Path) -> std::io::Result<Vec<String>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_control())
                .take(MAX_LINE)
                .collect::<String>()
                .trim()
                .to_string()
        })
        .filter(|l| !l.is_empty())
        .collect();
    // A kernel panic's reason is followed by a stack dump: quote the reason too.
    let panic = lines.iter().rposition(|l| l.contains("Kernel panic"));
    let skip = lines.len().saturating_sub(TAIL_LINES);
    let mut tail: Vec<String> = lines.split_off(skip);
    if let Some(i) = panic.filter(|&i| i < skip) {
        tail.insert(0, lines.swap_remove(i));
    }
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut text = String::new();
        for i in 0..20 {
            text.push_str(&format!("line {i}\r\n\x1b\n"));
        }
        std::fs::write(&path, text).unwrap();
        let log = ConsoleLog::read(&path);
        assert_eq!(log.tail.len(), TAIL_LINES);
        assert_eq!(log.tail.last().unwrap(), "line 19");
        let d = log.describe();
        assert!(d.starts_with(&format!(
            "; see {}: last lines: \"line 14\"",
            path.display()
        )));
        assert!(!d.contains('\n'));
    }

    #[test]
    fn a_kernel_panic_reason_is_quoted_before_its_stack_dump() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut text =
            String::from("boot\n[ 1.0] Kernel panic - not syncing: No working init found.\n");
        for i in 0..20 {
            text.push_str(&format!("[ 1.{i}]  ? frame{i}\n"));
        }
        std::fs::write(&path, text).unwrap();
        let log = ConsoleLog::read(&path);
        assert_eq!(log.tail.len(), TAIL_LINES + 1);
        assert!(log.tail[0].contains("Kernel panic - not syncing: No working init found."));
        assert_eq!(log.tail.last().unwrap(), "[ 1.19]  ? frame19");
    }

    #[test]
    fn missing_log_says_so() {
        let log = ConsoleLog::read(Path::new("/nonexistent/console.log"));
        assert_eq!(
            log.describe(),
            "; see /nonexistent/console.log (no guest output)"
        );
    }
}
