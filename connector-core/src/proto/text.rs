//! Text from a peer, made safe to put in a log line or an operator-facing
//! error message.
//!
//! A `GoAway` reason, a `DialResult` message, a close reason, an HTTP
//! CONNECT target or a gRPC address is chosen by whoever is on the other
//! end. Written into a text log as it is, a newline in it starts what looks
//! like a record of its own, and terminal escape sequences (ESC `[`...) or
//! bidirectional-override characters change what an operator sees.
//! [`escaped`] wraps such text for `Display`: every character that is not
//! printable becomes an escape, so one record stays one line.

use std::fmt::{self, Write};

use super::MAX_TEXT_LEN;

/// Peer-supplied text that displays with every non-printable character
/// escaped, clipped to [`MAX_TEXT_LEN`] bytes of the original (with `…`
/// where it was cut). Made by [`escaped`].
///
/// Escaped are control characters (C0, DEL, C1: `\n`, `\r`, `\t`, `\0`, or
/// `\u{1b}` and the like), format characters (zero-width and bidirectional
/// controls, `\u{202e}`), line and paragraph separators, spaces other than
/// U+0020, private-use and unassigned code points: whatever Rust's
/// `escape_debug` escapes, except the backslash and quotes, which are left as
/// they are. So the output holds only printable characters, and escaping it
/// again changes nothing (wrapping an error that wraps peer text does not
/// double the escapes).
#[derive(Clone, Copy)]
pub struct Escaped<'a>(&'a str);

/// Wraps `text` from a peer for a log field or an error message: see [`Escaped`].
///
/// ```
/// use connector_core::proto::escaped;
/// let forged = "bye\n2026-01-01T00:00:00Z  INFO forged\x1b[2K";
/// assert_eq!(
///     escaped(forged).to_string(),
///     r"bye\n2026-01-01T00:00:00Z  INFO forged\u{1b}[2K"
/// );
/// ```
pub fn escaped(text: &str) -> Escaped<'_> {
    Escaped(text)
}

/// Whether `c` passes through [`Escaped`] unchanged.
pub fn is_printable(c: char) -> bool {
    if matches!(c, '\\' | '"' | '\'') {
        return true;
    }
    // `str::escape_debug` escapes a character in the middle of a string only
    // when it is not printable (combining marks are left alone there, unlike
    // at the start): ask it about `c` after a plain letter.
    let mut buf = [0u8; 8];
    buf[0] = b'a';
    let len = 1 + c.encode_utf8(&mut buf[1..]).len();
    let pair = std::str::from_utf8(&buf[..len]).expect("a letter and one character");
    let mut escaped = pair.escape_debug().skip(1);
    escaped.next() == Some(c) && escaped.next().is_none()
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut end = self.0.len().min(MAX_TEXT_LEN);
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        for c in self.0[..end].chars() {
            if is_printable(c) {
                f.write_char(c)?;
            } else {
                // One escape per character: `\n`, `\0`, `\u{1b}`, ...
                let mut buf = [0u8; 4];
                let one = &*c.encode_utf8(&mut buf);
                write!(f, "{}", one.escape_debug())?;
            }
        }
        if end < self.0.len() {
            f.write_char('…')?;
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_forge_a_line_or_steer_a_terminal() {
        for (text, shown) in [
            ("plain text: it's \"fine\" \\ here", "plain text: it's \"fine\" \\ here"),
            ("a\nb\rc\td\0e", r"a\nb\rc\td\0e"),
            ("\x1b[31mred\x1b[0m", r"\u{1b}[31mred\u{1b}[0m"),
            ("\u{7f}\u{85}\u{9b}", r"\u{7f}\u{85}\u{9b}"),
            ("evil\u{202e}txt.exe\u{2066}", r"evil\u{202e}txt.exe\u{2066}"),
            ("zero\u{200b}width\u{feff}", r"zero\u{200b}width\u{feff}"),
            ("line\u{2028}para\u{2029}", r"line\u{2028}para\u{2029}"),
            ("nbsp\u{a0}", r"nbsp\u{a0}"),
            ("private\u{e000}unassigned\u{378}", r"private\u{e000}unassigned\u{378}"),
            (
                "Verbindung abgelehnt: café, 接続拒否 😀",
                "Verbindung abgelehnt: café, 接続拒否 😀",
            ),
            ("e\u{301}", "e\u{301}"),
        ] {
            assert_eq!(escaped(text).to_string(), shown, "{text:?}");
            // Escaping is idempotent: the output is all printable.
            assert_eq!(escaped(shown).to_string(), shown);
            assert!(!shown.chars().any(char::is_control));
        }
    }

    #[test]
    fn clips_long_text_on_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT_LEN);
        let shown = escaped(&long).to_string();
        assert!(shown.ends_with('…'));
        assert_eq!(shown.len(), MAX_TEXT_LEN + '…'.len_utf8());
        let exact = "x".repeat(MAX_TEXT_LEN);
        assert_eq!(escaped(&exact).to_string(), exact);
    }
}
