//! Text that came from inside a sandbox (an agent's output, the argv of its calls, its error
//! lines) on its way to a person's terminal. A terminal interprets escape sequences: an agent
//! could set the window title, write the clipboard (OSC 52), rewrite lines already shown,
//! plant hyperlinks or make the terminal answer a query into the next prompt. So when the
//! destination is a terminal, `agentctl` prints every control character escaped (`\x1b`)
//! except newline, tab and carriage return (progress bars); `--raw` turns that off.
//! Output to a file or a pipe is passed through unchanged (nothing interprets it).

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static RAW: AtomicBool = AtomicBool::new(false);

/// `--raw`: print control sequences as they are even to a terminal.
pub fn set_raw(raw: bool) {
    RAW.store(raw, Ordering::Relaxed);
}

/// Whether `c` reaches the terminal as it is: printable text, newline, tab, carriage return.
/// C0 controls (ESC among them), DEL and the C1 controls (U+0080–U+009F, which some
/// terminals take as CSI/OSC introducers) do not.
fn passes(c: char) -> bool {
    matches!(c, '\n' | '\t' | '\r') || !(c.is_control())
}

/// `s` with every control character that does not [`passes`] written as `\xNN` (C0, DEL)
/// or `\u{NNNN}` (C1); borrowed when nothing needed escaping.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if s.chars().all(passes) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if passes(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:04x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

fn write_to(mut w: impl Write, is_terminal: bool, s: &str) {
    let text = if is_terminal && !RAW.load(Ordering::Relaxed) {
        escape_controls(s)
    } else {
        Cow::Borrowed(s)
    };
    // A closed pipe (`agentctl logs | head`) is not an error worth reporting.
    let _ = w.write_all(text.as_bytes());
    let _ = w.flush();
}

/// Prints sandbox-originated text on stdout (escaped when stdout is a terminal).
pub fn out(s: &str) {
    let o = std::io::stdout();
    let tty = o.is_terminal();
    write_to(o.lock(), tty, s);
}

/// Prints sandbox-originated text on stderr (escaped when stderr is a terminal).
pub fn err(s: &str) {
    let e = std::io::stderr();
    let tty = e.is_terminal();
    write_to(e.lock(), tty, s);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code
    use super::*;

    #[test]
    fn plain_text_newlines_tabs_and_carriage_returns_pass_borrowed() {
        let s = "compiling 3/7\r\tok\nδ ünïcode\n";
        assert!(matches!(escape_controls(s), Cow::Borrowed(_)));
    }

    #[test]
    fn escape_sequences_and_c1_controls_are_shown_not_interpreted() {
        // OSC 52 clipboard write, a title change, a CSI cursor move, BEL, DEL, C1 CSI.
        let s = "a\x1b]52;c;ZXZpbA==\x07b\x1b[2Jc\x7fd\u{9b}31me";
        let e = escape_controls(s);
        assert_eq!(e, "a\\x1b]52;c;ZXZpbA==\\x07b\\x1b[2Jc\\x7fd\\u{009b}31me");
        assert!(!e.chars().any(|c| !passes(c)));
    }

    #[test]
    fn only_a_terminal_gets_escaped_text_and_raw_turns_it_off() {
        let mut file = Vec::new();
        write_to(&mut file, false, "x\x1b[1my");
        assert_eq!(file, b"x\x1b[1my");
        let mut tty = Vec::new();
        write_to(&mut tty, true, "x\x1b[1my");
        assert_eq!(tty, b"x\\x1b[1my");
        set_raw(true);
        let mut raw = Vec::new();
        write_to(&mut raw, true, "x\x1b[1my");
        set_raw(false);
        assert_eq!(raw, b"x\x1b[1my");
    }
}
