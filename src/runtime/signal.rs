//! Signal names and numbers as accepted by `kill` ("TERM", "SIGTERM", "15", "RTMIN+3").

use std::str::FromStr;

use nix::sys::signal::Signal;

use super::error::{Result, RuntimeError};

/// Signals a foreground `run`/`exec` forwards to the container process (namespace mode) or to
/// the guest process through the agent (vm mode) while it waits.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Parse a signal given by name (with or without `SIG`, any case) or by number; returns the
/// signal number. Real-time signals are accepted as `RTMIN`, `RTMIN+n`, `RTMAX-n` or by number.
pub fn parse_signal(text: &str) -> Result<i32> {
    let invalid = || RuntimeError::InvalidSignal(text.to_string());
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(invalid());
    }
    if let Ok(num) = trimmed.parse::<i32>() {
        return if (1..=libc::SIGRTMAX()).contains(&num) {
            Ok(num)
        } else {
            Err(invalid())
        };
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rt) = parse_realtime(name) {
        return rt.ok_or_else(invalid);
    }
    Signal::from_str(&format!("SIG{name}"))
        .map(|s| s as i32)
        .map_err(|_| invalid())
}

/// `RTMIN[+n]` / `RTMAX[-n]`: `None` if not a real-time name, `Some(None)` if out of range.
fn parse_realtime(name: &str) -> Option<Option<i32>> {
    let (base, rest, sign) = if let Some(rest) = name.strip_prefix("RTMIN") {
        (libc::SIGRTMIN(), rest, 1)
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        (libc::SIGRTMAX(), rest, -1)
    } else {
        return None;
    };
    let offset = if rest.is_empty() {
        0
    } else {
        let digits = if sign == 1 {
            rest.strip_prefix('+')
        } else {
            rest.strip_prefix('-')
        };
        match digits.and_then(|d| d.parse::<i32>().ok()) {
            Some(n) => n,
            None => return Some(None),
        }
    };
    let num = base + sign * offset;
    Some(
        (libc::SIGRTMIN()..=libc::SIGRTMAX())
            .contains(&num)
            .then_some(num),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_and_without_prefix() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("SIGTERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("KILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("hup").unwrap(), libc::SIGHUP);
        assert_eq!(parse_signal("USR1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("SIGWINCH").unwrap(), libc::SIGWINCH);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_signal("15").unwrap(), 15);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("64").unwrap(), libc::SIGRTMAX());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("65").is_err());
        assert!(parse_signal("-1").is_err());
    }

    #[test]
    fn realtime() {
        assert_eq!(parse_signal("RTMIN").unwrap(), libc::SIGRTMIN());
        assert_eq!(parse_signal("SIGRTMIN+2").unwrap(), libc::SIGRTMIN() + 2);
        assert_eq!(parse_signal("RTMAX-1").unwrap(), libc::SIGRTMAX() - 1);
        assert!(parse_signal("RTMIN+100").is_err());
        assert!(parse_signal("RTMIN-1").is_err());
    }

    #[test]
    fn rejects_unknown() {
        for bad in ["", "FOO", "SIGFOO", "TERM2", "1.5"] {
            let err = parse_signal(bad).unwrap_err().to_string();
            assert_eq!(err, format!("invalid signal {bad:?}"));
        }
    }
}
