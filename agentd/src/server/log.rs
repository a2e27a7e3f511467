//! The daemon's log lines. Under systemd (stderr connected to journald, `JOURNAL_STREAM`
//! naming stderr's device:inode) each line starts with the sd-daemon(3) `<N>` syslog
//! priority prefix, so journald records its level (`journalctl -p warning` works);
//! otherwise lines are readable text: `agentd: [level] message`.

use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

/// A log line's level (syslog priorities).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
    Info,
}

impl Level {
    /// The syslog priority number (sd-daemon's `<N>` prefix).
    pub fn priority(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warning => 4,
            Level::Info => 6,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Info => "info",
        }
    }
}

/// Whether `journal_stream` (`JOURNAL_STREAM`'s value, `DEV:INODE`) names the file whose
/// metadata is `(dev, ino)`: systemd sets it for the service's stderr, and a child that
/// redirected stderr elsewhere must not keep the prefixes.
pub fn names_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    journal_stream
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

fn to_journal() -> bool {
    static J: OnceLock<bool> = OnceLock::new();
    *J.get_or_init(|| {
        let Ok(v) = std::env::var("JOURNAL_STREAM") else {
            return false;
        };
        std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| names_stream(&v, m.dev(), m.ino()))
    })
}

/// One line as it is written: `<N>message` for journald, `agentd: [level] message` else.
pub fn format(level: Level, journald: bool, msg: &str) -> String {
    if journald {
        // Every line of a multi-line message gets the prefix (journald splits on newlines).
        msg.lines()
            .map(|l| format!("<{}>{l}", level.priority()))
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        format!("agentd: [{}] {msg}", level.word())
    }
}

/// Writes one log line to stderr.
pub fn log(level: Level, msg: &str) {
    eprintln!("{}", format(level, to_journal(), msg));
}

/// An error.
pub fn error(msg: &str) {
    log(Level::Error, msg);
}

/// A warning.
pub fn warn(msg: &str) {
    log(Level::Warning, msg);
}

/// Information.
pub fn info(msg: &str) {
    log(Level::Info, msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journald_lines_carry_the_priority_and_plain_lines_the_level() {
        assert_eq!(format(Level::Error, true, "a\nb"), "<3>a\n<3>b");
        assert_eq!(format(Level::Info, true, "up"), "<6>up");
        assert_eq!(format(Level::Warning, false, "x"), "agentd: [warning] x");
        assert!(names_stream("8:1234", 8, 1234));
        assert!(!names_stream("8:1234", 8, 1235));
        assert!(!names_stream("garbage", 8, 1234));
    }
}
