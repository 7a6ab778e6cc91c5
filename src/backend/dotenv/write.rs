//! Writing one key of a `.env` (`put`, `migrate`): its last definition is replaced (or one is
//! appended), and every other byte of the file is kept. The new text is parsed before it is
//! written: a value that would read back differently is refused and nothing changes.

use secrecy::ExposeSecret;
use secrecy::zeroize::Zeroizing;

use super::DotenvBackend;
use crate::backend::{Put, Written, check_create_only};
use crate::fsread::{self, Accept};
use crate::secret::{SecretError, path_to_var};

/// `value` quoted so that dotenvy, python-dotenv and secret-run's parser all read back the same
/// bytes; `None` when no quoting does: `${` (python-dotenv expands it even in single quotes), or
/// `$` together with a quote, a backslash or a line break. Single quotes when nothing inside
/// needs escaping, else double quotes with `\\`, `\"` and `\n`.
pub fn quote(value: &str) -> Option<String> {
    if value.contains("${") {
        return None;
    }
    if !value.contains(['\'', '\\', '\n', '\r']) {
        return Some(format!("'{value}'"));
    }
    if value.contains(['$', '\r']) {
        return None;
    }
    let mut out = String::with_capacity(value.len() + 8);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    Some(out)
}

/// Where the last definition of `key` is in `text`: the byte range of its whole line(s).
fn definition(text: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let mut found = None;
    let mut at = 0;
    while at < text.len() {
        let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i + 1);
        let body = text[at..line_end].trim_start();
        let body = body.strip_prefix("export ").map_or(body, str::trim_start);
        let mut end = line_end;
        let value = body
            .strip_prefix(key)
            .map(str::trim_start)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::trim_start);
        if let Some(value) = value {
            // `value` runs to the end of the line: where it starts, in `text`.
            end = value_end(text, line_end - value.len()).unwrap_or(line_end);
            found = Some(at..end);
        }
        at = end;
    }
    found
}

/// The end of the line where a value starting at `start` ends (after its closing quote when
/// it is quoted, which may be lines later).
fn value_end(text: &str, start: usize) -> Option<usize> {
    let rest = &text[start..];
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let mut escaped = false;
    for (i, c) in rest.char_indices().skip(1) {
        if quote == '"' && c == '\\' && !escaped {
            escaped = true;
            continue;
        }
        if c == quote && !escaped {
            let close = start + i;
            return Some(
                text[close..]
                    .find('\n')
                    .map_or(text.len(), |n| close + n + 1),
            );
        }
        escaped = false;
    }
    None
}

impl DotenvBackend {
    pub(super) fn write(&self, put: &Put) -> Result<Written, SecretError> {
        let shown = self.path.display().to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let original =
            match fsread::read_path(&self.path, Accept::Regular, fsread::MAX_DOTENV, deadline) {
                Ok(bytes) => bytes,
                Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => {
                    Zeroizing::new(Vec::new())
                }
                Err(e) => return Err(e.into_secret_error(&format!(".env file {shown}"))),
            };
        let text = std::str::from_utf8(&original)
            .map_err(|_| SecretError::invalid(format!("{shown} is not valid UTF-8")))?;
        let values = self.read_ordered(deadline).unwrap_or_default();
        // The key as the reads find it: the path itself when the file has it, else the rule.
        let key = if values.iter().any(|(k, _)| *k == put.path) {
            put.path.clone()
        } else {
            path_to_var(&put.path)
        };
        let current = values.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v);
        check_create_only(put, current.is_some(), &format!("`{key}` in {shown}"))?;
        let value = match &put.key {
            Some(field) => {
                crate::secret::set_field(current.map(|c| c.expose_secret()), field, &put.value)?
            }
            None => Zeroizing::new(put.value.expose_secret().to_owned()),
        };
        let quoted = Zeroizing::new(quote(&value).ok_or_else(|| {
            SecretError::invalid(format!(
                "the value cannot be written to {shown} so that every .env reader reads it back the same (it holds `${{`, or `$` with a quote, a backslash or a line break)"
            ))
        })?);
        let mut new = Zeroizing::new(String::with_capacity(
            text.len() + quoted.len() + key.len() + 2,
        ));
        match definition(text, &key) {
            Some(range) => {
                let prefix = if text[range.clone()].trim_start().starts_with("export ") {
                    "export "
                } else {
                    ""
                };
                new.push_str(&text[..range.start]);
                new.push_str(&format!("{prefix}{key}={}\n", quoted.as_str()));
                new.push_str(&text[range.end..]);
            }
            None => {
                new.push_str(text);
                if !text.is_empty() && !text.ends_with('\n') {
                    new.push('\n');
                }
                new.push_str(&format!("{key}={}\n", quoted.as_str()));
            }
        }
        // Read back before it is written: the same value, or nothing changes.
        let env = |name: &str| std::env::var(name).ok();
        let back = super::parse::parse(&new, &env)
            .ok()
            .and_then(|vals| vals.into_iter().rev().find(|(k, _)| *k == key))
            .is_some_and(|(_, v)| v.expose_secret() == value.as_str());
        if !back {
            return Err(SecretError::invalid(format!(
                "`{key}` would not read back the same from {shown}; nothing was written"
            )));
        }
        let mode = std::fs::metadata(&self.path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap_or(0o600);
        fsread::write_atomically(&self.path, new.as_bytes(), mode)
            .map_err(|e| SecretError::from_io(&shown, e))?;
        Ok(Written { version: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_definition_is_found_with_its_continuation_lines() {
        let text = "A=1\n# c\nexport B=\"two\nlines\"\nA='x'\nC=3";
        assert_eq!(&text[definition(text, "A").unwrap()], "A='x'\n");
        assert_eq!(
            &text[definition(text, "B").unwrap()],
            "export B=\"two\nlines\"\n"
        );
        assert_eq!(&text[definition(text, "C").unwrap()], "C=3");
        assert!(definition(text, "D").is_none());
        assert!(definition("AB=1\n", "A").is_none());
    }

    #[test]
    fn quoting_is_chosen_so_that_nothing_is_read_differently() {
        assert_eq!(
            quote("a b#c $HOME \"q\"").as_deref(),
            Some("'a b#c $HOME \"q\"'")
        );
        assert_eq!(quote("it's\nline").as_deref(), Some("\"it's\\nline\""));
        assert_eq!(quote("back\\slash").as_deref(), Some("\"back\\\\slash\""));
        assert_eq!(quote("it's $HOME"), None);
        assert_eq!(quote("${PATH}"), None);
    }
}
