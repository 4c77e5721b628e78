//! Text that a guest or an upstream controls, made safe to write into the
//! host's log or onto an operator's terminal.
//!
//! A guest chooses measurement names, secret names, error and status text,
//! URIs; an upstream chooses its error bodies. Written as they are, a
//! newline starts a line that looks like the host's own (a forged
//! `INFO wattedge: admin token generated`), an ANSI escape rewrites or hides
//! what the operator sees, and a megabyte name floods the journal. Every
//! such string goes through [`escape`] (or [`shown`] in a tracing field):
//! control characters, Unicode line separators and bidirectional overrides
//! are escaped, and the text is cut to a bound. One helper, so no path
//! escapes differently.

use std::borrow::Cow;
use std::fmt;

/// Longest guest text kept in one logged field (bytes, before escaping).
pub const MAX_LOGGED: usize = 512;

/// What marks text that [`escape`] cut.
pub const CUT_MARK: &str = "…";

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// True for characters that must not reach a log line or a terminal as
/// they are: control characters but tab (newlines, ESC, C1 controls such as
/// NEL), Unicode line and paragraph separators, and the bidirectional
/// controls that reorder what a terminal shows.
fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `text` on one line, at most `max` bytes of it: unsafe characters (see
/// [`is_unsafe`]) become `\n`, `\r` or `\u{..}`, and cut text ends in
/// [`CUT_MARK`]. Borrows when nothing needs changing.
pub fn escape(text: &str, max: usize) -> Cow<'_, str> {
    let kept = cut(text, max);
    let was_cut = kept.len() < text.len();
    if !was_cut && !kept.chars().any(is_unsafe) {
        return Cow::Borrowed(kept);
    }
    let mut out = String::with_capacity(kept.len() + 8);
    for c in kept.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if is_unsafe(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    if was_cut {
        out.push_str(CUT_MARK);
    }
    Cow::Owned(out)
}

/// Guest or upstream text for a tracing field (`error = %shown(&e)`):
/// escaped and cut to [`MAX_LOGGED`] bytes.
pub fn shown(text: impl fmt::Display) -> Shown {
    let text = text.to_string();
    match escape(&text, MAX_LOGGED) {
        Cow::Borrowed(_) => Shown(text),
        Cow::Owned(escaped) => Shown(escaped),
    }
}

/// Text made safe by [`shown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown(String);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORGED: &str = "x\n2026-12-07T00:00:00Z  INFO wattedge: forged\r\u{1b}[2K\u{1b}]0;title\u{7}";

    #[test]
    fn a_forged_line_stays_on_one_line_without_escapes() {
        let shown = escape(FORGED, 4096);
        assert!(!shown.contains(['\n', '\r', '\u{1b}', '\u{7}']), "{shown}");
        assert!(shown.starts_with("x\\n2026-12-07T00:00:00Z  INFO wattedge: forged\\r\\u{1b}[2K"), "{shown}");
    }

    #[test]
    fn line_separators_and_bidi_overrides_are_escaped() {
        for c in ['\u{2028}', '\u{2029}', '\u{202e}', '\u{2067}', '\u{85}', '\u{9b}'] {
            let text = format!("a{c}b");
            assert_eq!(escape(&text, 64), format!("a{}b", c.escape_unicode()));
        }
        assert_eq!(escape("plain\ttext é", 64), "plain\ttext é");
        assert!(matches!(escape("plain", 64), Cow::Borrowed(_)));
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary_and_marked() {
        let long = "é".repeat(1000);
        let shown = escape(&long, 101);
        assert_eq!(shown, format!("{}{CUT_MARK}", "é".repeat(50)));
        assert!(shown.len() <= 101 + CUT_MARK.len());
        assert_eq!(shown_len(&"\n".repeat(10_000)), MAX_LOGGED * 2 + CUT_MARK.len());
    }

    fn shown_len(text: &str) -> usize {
        shown(text).to_string().len()
    }
}
