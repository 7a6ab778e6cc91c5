//! The `.env` syntax, with docker compose's rules, because they are the ones people know:
//!
//! - `KEY=value`, `export KEY=value`, spaces around `=`; `#` starts a comment at the start of a
//!   line, or after whitespace in an unquoted value; blank lines are skipped; a UTF-8 BOM too.
//! - `'single quotes'` are literal (only `\'` is an escape); `"double quotes"` know `\n` `\r`
//!   `\t` `\\` `\"` `\'` `\$`; both may span lines. Unquoted values are trimmed.
//! - Unquoted and double-quoted values are interpolated: `$NAME`, `${NAME}`, `${NAME:-default}`,
//!   `${NAME-default}`, `${NAME:?message}`, `${NAME?message}`, `${NAME:+alt}`, `${NAME+alt}`,
//!   nested in the operand; `$$` is a literal `$`; a `$` not followed by a name or `{` stays.
//!   Names are looked up in the file (definitions above) first, then in the environment.
//! - A password never changes silently: a name that is defined nowhere is an error naming the
//!   variable and the line, never an empty string.
//!
//! Errors name the line and the key, never the text of a value.
//!
//! Written here rather than taken from dotenvy, which replaces an undefined `$NAME` with nothing
//! and lets the process environment override the file inside `${…}`: a password with a `$` in
//! it would reach the service changed, and nobody would be told.

use std::collections::HashMap;

use secrecy::zeroize::{Zeroize, Zeroizing};
use secrecy::{ExposeSecret, SecretString};

/// Why the file cannot be read: the 1-based line and what to do. Holds no value text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

struct Cursor<'t> {
    chars: std::iter::Peekable<std::str::Chars<'t>>,
    line: usize,
}

impl Cursor<'_> {
    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.chars.next();
        if c == Some('\n') {
            self.line += 1;
        }
        c
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.next();
        }
    }

    fn skip_line(&mut self) {
        while let Some(c) = self.next() {
            if c == '\n' {
                break;
            }
        }
    }
}

/// Every definition in file order (a key defined twice appears twice). `env` is the process
/// environment, consulted for names the file does not define above the reference.
pub fn parse(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, SecretString)>, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut cur = Cursor {
        chars: text.chars().peekable(),
        line: 1,
    };
    let mut entries: Vec<(String, SecretString)> = Vec::new();
    let mut defined: HashMap<String, usize> = HashMap::new();
    loop {
        while matches!(cur.peek(), Some(' ' | '\t' | '\r' | '\n')) {
            cur.next();
        }
        match cur.peek() {
            None => break,
            Some('#') => {
                cur.skip_line();
                continue;
            }
            Some(_) => {}
        }
        let line = cur.line;
        let err = |message: String| ParseError { line, message };
        let mut key = read_key(&mut cur);
        if key == "export" && matches!(cur.peek(), Some(' ' | '\t')) {
            cur.skip_blanks();
            key = read_key(&mut cur);
        }
        if key.is_empty() {
            return Err(err(
                "expected `KEY=value`: a key is letters, digits, `_`, `.` or `-`".into(),
            ));
        }
        cur.skip_blanks();
        if cur.next() != Some('=') {
            return Err(err(format!("`{key}` is not followed by `=`")));
        }
        cur.skip_blanks();
        let lookup = |name: &str| -> Option<String> {
            match defined.get(name) {
                Some(&i) => Some(entries[i].1.expose_secret().to_owned()),
                None => env(name),
            }
        };
        let value = read_value(&mut cur, &key, line, &lookup)?;
        defined.insert(key.clone(), entries.len());
        entries.push((key, SecretString::from(value.as_str())));
    }
    Ok(entries)
}

fn read_key(cur: &mut Cursor<'_>) -> String {
    let mut key = String::new();
    while let Some(c) = cur.peek() {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
            key.push(c);
            cur.next();
        } else {
            break;
        }
    }
    key
}

fn read_value(
    cur: &mut Cursor<'_>,
    key: &str,
    line: usize,
    lookup: Lookup<'_>,
) -> Result<Zeroizing<String>, ParseError> {
    let at = Value { key, line, lookup };
    let err = |message: String| at.error(message);
    match cur.peek() {
        Some(q @ ('\'' | '"')) => {
            cur.next();
            let mut raw = Zeroizing::new(String::new());
            let mut closed = false;
            while let Some(c) = cur.next() {
                if c == '\\' {
                    match cur.next() {
                        Some(n) => {
                            raw.push('\\');
                            raw.push(n);
                        }
                        None => break,
                    }
                } else if c == q {
                    closed = true;
                    break;
                } else {
                    raw.push(c);
                }
            }
            if !closed {
                return Err(err(format!(
                    "the value of `{key}` opens a {} quote that is never closed",
                    if q == '"' { "double" } else { "single" }
                )));
            }
            cur.skip_blanks();
            match cur.peek() {
                None | Some('\n') => {}
                Some('\r') => {}
                Some('#') => {}
                Some(_) => {
                    return Err(err(format!(
                        "text follows the closing quote of `{key}`'s value; put a comment after ` #`, or quote the whole value"
                    )));
                }
            }
            cur.skip_line();
            if q == '\'' {
                Ok(single_quoted(&raw))
            } else {
                at.expand(&raw, true)
            }
        }
        _ => {
            let mut raw = Zeroizing::new(String::new());
            while let Some(c) = cur.peek() {
                if c == '\n' {
                    break;
                }
                // An inline comment starts at a `#` after whitespace.
                if c == '#' && (raw.is_empty() || raw.ends_with([' ', '\t'])) {
                    cur.skip_line();
                    break;
                }
                raw.push(c);
                cur.next();
            }
            let trimmed = Zeroizing::new(raw.trim().to_owned());
            at.expand(&trimmed, false)
        }
    }
}

fn single_quoted(raw: &str) -> Zeroizing<String> {
    Zeroizing::new(raw.replace("\\'", "'"))
}

/// One value being read: its key and line, for errors, and where names are looked up.
struct Value<'a> {
    key: &'a str,
    line: usize,
    lookup: Lookup<'a>,
}

impl Value<'_> {
    fn error(&self, message: String) -> ParseError {
        ParseError {
            line: self.line,
            message,
        }
    }

    /// Applies escapes (double quotes only) and interpolation.
    fn expand(&self, raw: &str, escapes: bool) -> Result<Zeroizing<String>, ParseError> {
        let key = self.key;
        let mut out = Zeroizing::new(String::with_capacity(raw.len()));
        let mut chars = raw.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' if escapes => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, e @ ('\\' | '"' | '\'' | '$'))) => out.push(e),
                    Some((_, other)) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => out.push('\\'),
                },
                '$' => match chars.peek().map(|&(_, n)| n) {
                    Some('$') => {
                        chars.next();
                        out.push('$');
                    }
                    Some('{') => {
                        let body_start = i + 2;
                        let end = closing_brace(raw, body_start).ok_or_else(|| {
                            self.error(format!(
                                "`${{` in the value of `{key}` is never closed with `}}`; write `$$` for a literal `$`"
                            ))
                        })?;
                        let mut value = self.braced(&raw[body_start..end], escapes)?;
                        out.push_str(&value);
                        value.zeroize();
                        while chars.peek().is_some_and(|&(j, _)| j <= end) {
                            chars.next();
                        }
                    }
                    Some(n) if n.is_ascii_alphabetic() || n == '_' => {
                        let mut name = String::new();
                        while let Some(&(_, n)) = chars.peek() {
                            if n.is_ascii_alphanumeric() || n == '_' {
                                name.push(n);
                                chars.next();
                            } else {
                                break;
                            }
                        }
                        let mut value =
                            (self.lookup)(&name).ok_or_else(|| self.undefined(&name))?;
                        out.push_str(&value);
                        value.zeroize();
                    }
                    // Not a reference (`$2`, `$ `, a final `$`): kept, as compose keeps it.
                    _ => out.push('$'),
                },
                c => out.push(c),
            }
        }
        Ok(out)
    }

    fn undefined(&self, name: &str) -> ParseError {
        let key = self.key;
        self.error(format!(
            "the value of `{key}` refers to `${name}`, which is defined neither above it in the file nor in the environment; write `$$` for a literal `$`, single-quote the value, or give a default with `${{{name}:-…}}`"
        ))
    }

    /// `NAME`, or `NAME` followed by an operator and its operand (`:-default`, `?message`, …).
    fn braced(&self, body: &str, escapes: bool) -> Result<Zeroizing<String>, ParseError> {
        let key = self.key;
        let name_len = body
            .char_indices()
            .find(|&(i, c)| {
                !(c.is_ascii_alphanumeric() || c == '_') || (i == 0 && c.is_ascii_digit())
            })
            .map_or(body.len(), |(i, _)| i);
        let name = &body[..name_len];
        if name.is_empty() {
            return Err(self.error(format!(
                "`${{…}}` in the value of `{key}` does not start with a variable name; write `$$` for a literal `$`"
            )));
        }
        let rest = &body[name_len..];
        let (colon, rest) = match rest.strip_prefix(':') {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let value = (self.lookup)(name);
        // With `:`, an empty value counts as unset.
        let set = value.as_deref().is_some_and(|v| !(colon && v.is_empty()));
        let operand = |s: &str| self.expand(s, escapes);
        match rest.chars().next() {
            None if !colon => value
                .map(Zeroizing::new)
                .ok_or_else(|| self.undefined(name)),
            Some('-') if set => Ok(Zeroizing::new(value.unwrap_or_default())),
            Some('-') => operand(&rest[1..]),
            Some('+') if set => operand(&rest[1..]),
            Some('+') => Ok(Zeroizing::new(String::new())),
            Some('?') if set => Ok(Zeroizing::new(value.unwrap_or_default())),
            Some('?') => {
                let said = operand(&rest[1..])?;
                Err(self.error(format!(
                    "the value of `{key}` requires `{name}`{}: {}",
                    if colon {
                        " to be set and not empty"
                    } else {
                        " to be set"
                    },
                    if said.is_empty() {
                        "it is not"
                    } else {
                        said.as_str()
                    }
                )))
            }
            _ => Err(self.error(format!(
                "`${{{name}…}}` in the value of `{key}` uses an operator secret-run does not know; the forms are ${{{name}}}, ${{{name}:-default}}, ${{{name}-default}}, ${{{name}:?message}}, ${{{name}:+alt}}"
            ))),
        }
    }
}

/// The index of the `}` that closes a `${` whose body starts at `from`, nested `${…}` counted.
fn closing_brace(raw: &str, from: usize) -> Option<usize> {
    let bytes = raw.as_bytes();
    let mut depth = 0usize;
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "FROM_ENV" => Some("env-value".into()),
            "EMPTY_ENV" => Some(String::new()),
            "SHADOWED" => Some("from-env".into()),
            _ => None,
        }
    }

    fn values(text: &str) -> Result<Vec<(String, String)>, ParseError> {
        parse(text, &env).map(|v| {
            v.into_iter()
                .map(|(k, s)| (k, s.expose_secret().to_owned()))
                .collect()
        })
    }

    fn one(text: &str) -> String {
        let v = values(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
        v.last().map(|(_, v)| v.clone()).unwrap_or_default()
    }

    #[test]
    fn the_corpus_gives_what_it_says() {
        // The committed corpus (tests/corpus/dotenv.json) is also checked against
        // python-dotenv by the integration tests, for the cases where the two agree.
        let corpus: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/corpus/dotenv.json")).unwrap();
        for case in corpus.as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let text = case["text"].as_str().unwrap();
            match (&case["expect"], &case["error"]) {
                (serde_json::Value::Object(expect), _) => {
                    let got: std::collections::BTreeMap<String, String> = values(text)
                        .unwrap_or_else(|e| panic!("{name}: {e:?}"))
                        .into_iter()
                        .collect();
                    let want: std::collections::BTreeMap<String, String> = expect
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                        .collect();
                    assert_eq!(got, want, "case {name}");
                }
                (_, serde_json::Value::Object(e)) => {
                    let got = values(text).expect_err(name);
                    assert_eq!(
                        got.line,
                        e["line"].as_u64().unwrap() as usize,
                        "case {name}"
                    );
                    let has = e["message_has"].as_str().unwrap();
                    assert!(got.message.contains(has), "case {name}: {}", got.message);
                }
                _ => panic!("case {name} has neither `expect` nor `error`"),
            }
        }
    }

    #[test]
    fn the_file_wins_over_the_environment() {
        assert_eq!(one("SHADOWED=file\nX=${SHADOWED}"), "file");
        assert_eq!(one("X=${SHADOWED}"), "from-env");
        assert_eq!(one("X=$FROM_ENV"), "env-value");
    }

    #[test]
    fn errors_never_hold_the_value() {
        let e = values("A=ok\nPASSWORD=\"hunter2$UNDEFINED_X\"").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("UNDEFINED_X"), "{}", e.message);
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        let e = values("PASSWORD='hunter2").unwrap_err();
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        let e = values("PASSWORD=\"hunter2\" trailing").unwrap_err();
        assert!(!e.message.contains("hunter2"), "{}", e.message);
    }
}
