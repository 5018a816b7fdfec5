//! Logging setup for `--log`, `--log-format`, `--debug`.
//!
//! Lines go to the `--log` file (appended) or to stderr. The JSON format writes one object per
//! line like runc: `{"level":"info","msg":"...","time":"2026-12-01T23:05:26.123456789Z"}`
//! (extra event fields become extra keys); the text format writes
//! `time="..." level=info msg="..." key=value`.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::cli::LogFormat;

/// Where the log goes, as decided by [`init`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// The standard error stream.
    Stderr,
    /// A file given with `--log`.
    File,
}

/// Install the global subscriber. Level: warn, or debug with `debug`. Falls back to stderr
/// (with a warning there) if the log file cannot be opened.
pub fn init(log: Option<&Path>, format: LogFormat, debug: bool) -> LogTarget {
    let level = if debug {
        LevelFilter::DEBUG
    } else {
        LevelFilter::WARN
    };
    let (writer, target): (Box<dyn Write + Send>, LogTarget) = match log {
        Some(path) => match OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => (Box::new(file), LogTarget::File),
            Err(e) => {
                eprintln!(
                    "kvmbox: warning: cannot open log file {}: {e}",
                    path.display()
                );
                (Box::new(std::io::stderr()), LogTarget::Stderr)
            }
        },
        None => (Box::new(std::io::stderr()), LogTarget::Stderr),
    };
    let layer = LineLayer::new(writer, format);
    let subscriber = tracing_subscriber::registry().with(layer.with_filter(level));
    let _ = tracing::subscriber::set_global_default(subscriber);
    target
}

/// A layer writing one line per event in runc's text or JSON shape.
pub struct LineLayer {
    out: Mutex<Box<dyn Write + Send>>,
    format: LogFormat,
}

impl LineLayer {
    /// A layer writing to `out` in `format`.
    pub fn new(out: Box<dyn Write + Send>, format: LogFormat) -> Self {
        LineLayer {
            out: Mutex::new(out),
            format,
        }
    }
}

/// runc/logrus level names.
fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// Collects an event's message and other fields.
#[derive(Default)]
struct Fields {
    msg: String,
    extra: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.extra.push((field.name(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.msg = format!("{value:?}");
        } else {
            self.extra.push((field.name(), format!("{value:?}")));
        }
    }
}

/// Format one event as a line (with the trailing newline).
fn format_line(format: LogFormat, level: &Level, time: &str, fields: &Fields) -> String {
    match format {
        LogFormat::Json => {
            let mut obj = serde_json::Map::new();
            obj.insert("level".into(), level_name(level).into());
            obj.insert("msg".into(), fields.msg.clone().into());
            obj.insert("time".into(), time.into());
            for (k, v) in &fields.extra {
                obj.entry(k.to_string()).or_insert_with(|| v.clone().into());
            }
            let mut line = serde_json::Value::Object(obj).to_string();
            line.push('\n');
            line
        }
        LogFormat::Text => {
            let mut line = format!(
                "time={:?} level={} msg={:?}",
                time,
                level_name(level),
                fields.msg
            );
            for (k, v) in &fields.extra {
                let _ = write!(line, " {k}={v:?}");
            }
            line.push('\n');
            line
        }
    }
}

impl<S: Subscriber> Layer<S> for LineLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let line = format_line(self.format, event.metadata().level(), &time, &fields);
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(format: LogFormat, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let layer = LineLayer::new(Box::new(buf.clone()), format);
        let subscriber = tracing_subscriber::registry().with(layer.with_filter(LevelFilter::DEBUG));
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_lines_look_like_runc() {
        let out = capture(LogFormat::Json, || {
            tracing::info!("hello \"world\"");
            tracing::error!(id = "c1", "container c1 does not exist");
            tracing::trace!("filtered out");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["level"], "info");
        assert_eq!(first["msg"], "hello \"world\"");
        let time = first["time"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.ends_with('Z'));
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["level"], "error");
        assert_eq!(second["id"], "c1");
        assert!(second.get("fields").is_none());
    }

    #[test]
    fn text_lines() {
        let out = capture(LogFormat::Text, || tracing::warn!(pid = 7, "careful"));
        assert!(out.starts_with("time=\""), "{out}");
        assert!(
            out.contains(" level=warning msg=\"careful\" pid=\"7\"\n"),
            "{out}"
        );
    }
}
