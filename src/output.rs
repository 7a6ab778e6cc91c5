//! What secret-run itself prints: every message passes through here on its way to the terminal.
//! Names, paths, backend names, a provider's stderr and a server's error text can hold control
//! characters (ESC, NUL, a carriage return); printed raw they would drive the terminal, hide
//! text or forge lines. They are written as escapes (`\u{1b}`); newlines and tabs stay.

use std::borrow::Cow;
use std::io::{self, Write};

fn is_shown_raw(c: char) -> bool {
    !c.is_control() || c == '\n' || c == '\t'
}

/// `text` with every control character except newline and tab written as `\u{..}`.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if text.chars().all(is_shown_raw) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_shown_raw(c) {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
    }
    Cow::Owned(out)
}

/// A writer that escapes control characters in what passes through it (the log's writer).
#[derive(Debug)]
pub struct Escaped<W>(pub W);

impl<W: Write> Write for Escaped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(escape_controls(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Writes to stderr without ever panicking (`eprintln!` panics when stderr is closed or full;
/// a launcher must still exit with its code then).
pub fn warn_line(text: &str) {
    let mut err = io::stderr().lock();
    let _ = err
        .write_all(escape_controls(text).as_bytes())
        .and_then(|()| err.write_all(b"\n"));
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn escapes_controls_but_not_newlines() {
        assert_eq!(escape_controls("a\nb\tc"), "a\nb\tc");
        assert_eq!(escape_controls("x\u{1b}[31my\0"), "x\\u{1b}[31my\\u{0}");
        assert_eq!(escape_controls("\r\u{9b}"), "\\u{d}\\u{9b}");
        assert_eq!(escape_controls("été"), "été");
    }
}
