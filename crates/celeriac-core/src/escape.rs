//! Showing text that came from a message (a task name, an id, a queue, an
//! error message) in a log line or on a terminal without letting it forge
//! lines or drive the terminal.
//!
//! [`Escaped`] writes its value with every control character escaped:
//! `\n`, `\r` and `\t` as those two-character sequences, every other one
//! (ESC, NUL, DEL, the C1 controls) and the Unicode line separators and
//! bidirectional overrides as `\u{..}`. [`EscapedLines`] keeps line breaks
//! and tabs, for text that is meant to span lines (a traceback). Text
//! without such characters is written unchanged, without copying.
//!
//! # Examples
//!
//! ```
//! use celeriac_core::escape::{Escaped, EscapedLines};
//!
//! let name = "evil\n2026-01-01 INFO forged \x1b[31mred";
//! assert_eq!(Escaped(name).to_string(), r"evil\n2026-01-01 INFO forged \u{1b}[31mred");
//! assert_eq!(Escaped("tasks.add").to_string(), "tasks.add");
//! // Any Display value: an error, or format_args!.
//! assert_eq!(Escaped(format_args!("{}-{}", "a\r", 1)).to_string(), r"a\r-1");
//! assert_eq!(EscapedLines("line 1\nline 2\x1b]0;title\x07").to_string(), "line 1\nline 2\\u{1b}]0;title\\u{7}");
//! ```

use std::fmt::{self, Write as _};

/// A value shown with its control characters escaped (see the [module
/// docs](self)); use it for every log field and every line of terminal
/// output that carries text from a message.
#[derive(Clone, Copy)]
pub struct Escaped<T>(pub T);

/// Like [`Escaped`], but line breaks (`\n`) and tabs are kept: for text
/// that spans lines, such as a traceback.
#[derive(Clone, Copy)]
pub struct EscapedLines<T>(pub T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            Escaper {
                out: f,
                lines: false
            },
            "{}",
            self.0
        )
    }
}

impl<T: fmt::Display> fmt::Debug for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<T: fmt::Display> fmt::Display for EscapedLines<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            Escaper {
                out: f,
                lines: true
            },
            "{}",
            self.0
        )
    }
}

impl<T: fmt::Display> fmt::Debug for EscapedLines<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Whether `c` must be escaped: a control character (C0, DEL, C1), a
/// Unicode line or paragraph separator, or a bidirectional formatting
/// character (which can make text read differently from what it is).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// A `fmt::Write` that escapes as it writes.
struct Escaper<'a, W> {
    out: &'a mut W,
    lines: bool,
}

impl<W: fmt::Write> fmt::Write for Escaper<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let keep = |c: char| !needs_escape(c) || (self.lines && (c == '\n' || c == '\t'));
        if s.chars().all(keep) {
            return self.out.write_str(s);
        }
        let mut start = 0;
        for (i, c) in s.char_indices() {
            if keep(c) {
                continue;
            }
            self.out.write_str(&s[start..i])?;
            match c {
                '\n' => self.out.write_str("\\n")?,
                '\r' => self.out.write_str("\\r")?,
                '\t' => self.out.write_str("\\t")?,
                c => write!(self.out, "\\u{{{:x}}}", u32::from(c))?,
            }
            start = i + c.len_utf8();
        }
        self.out.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_control_character_is_escaped_and_nothing_else_changes() {
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            let shown = Escaped(format!("a{c}b")).to_string();
            assert!(!shown.chars().any(char::is_control), "{c:?} -> {shown:?}");
            assert!(shown.starts_with('a') && shown.ends_with('b'), "{shown:?}");
        }
        for s in ["tasks.add", "é ü 漢字 🦀", "a\\nb", "50%", ""] {
            assert_eq!(Escaped(s).to_string(), s);
            assert_eq!(EscapedLines(s).to_string(), s);
        }
    }

    #[test]
    fn separators_and_bidi_overrides_are_escaped() {
        assert_eq!(
            Escaped("a\u{2028}b\u{202e}c\u{2066}d").to_string(),
            r"a\u{2028}b\u{202e}c\u{2066}d"
        );
    }

    #[test]
    fn lines_keeps_line_breaks_and_tabs_only() {
        assert_eq!(
            EscapedLines("Traceback:\n\tat x\r\n\x1b[2J").to_string(),
            "Traceback:\n\tat x\\r\n\\u{1b}[2J"
        );
        assert_eq!(Escaped("a\n\tb").to_string(), r"a\n\tb");
    }
}
