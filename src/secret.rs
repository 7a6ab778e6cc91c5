//! Secret names, references and values: what a manifest entry asks for, what a backend hands back,
//! and the checks every value passes before it may go into an environment.
//!
//! Values are `SecretString` from the moment a backend reads them. Errors built here describe a
//! value (its length, its field names) and never contain it.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use crate::code;

/// Linux refuses an environment string (`NAME=value` plus its NUL) longer than 32 pages
/// (`MAX_ARG_STRLEN`); checking here turns an obscure `E2BIG` from execve into a clear error.
pub const MAX_ENV_STRING: usize = 32 * 4096;

/// A valid POSIX environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvName(String);

/// Why a name cannot be an environment variable's; the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadName(String);

impl EnvName {
    pub fn parse(name: &str) -> Result<EnvName, BadName> {
        let mut chars = name.chars();
        let Some(first) = chars.next() else {
            return Err(BadName("a variable name cannot be empty".into()));
        };
        if !(first.is_ascii_alphabetic() || first == '_') {
            return Err(BadName(format!(
                "`{name}` is not a valid variable name: it must start with a letter or `_`"
            )));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
        {
            return Err(BadName(format!(
                "`{name}` is not a valid variable name: `{}` is not allowed (use letters, digits and `_`)",
                bad.escape_default()
            )));
        }
        Ok(EnvName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The built-in path → variable rule of the `env` and `dotenv` backends:
/// `database/url` → `DATABASE_URL` (`/`, `-`, `.` become `_`, upper case).
pub fn path_to_var(path: &str) -> String {
    path.chars()
        .map(|c| match c {
            '/' | '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// How a field is chosen inside a structured value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A top-level field name.
    Field(String),
    /// An RFC 6901 JSON pointer (`/primary/password`).
    Pointer(String),
}

impl Key {
    pub fn parse(key: &str) -> Key {
        if key.starts_with('/') {
            Key::Pointer(key.to_owned())
        } else {
            Key::Field(key.to_owned())
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Field(s) | Key::Pointer(s) => f.write_str(s),
        }
    }
}

/// Why one secret could not be produced. The message never contains a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The path, field or variable does not exist.
    NotFound,
    /// The value exists but cannot be used (not JSON, NUL byte, not UTF-8, too long, empty).
    Invalid,
    /// The backend refused access.
    PermissionDenied,
    /// The backend could not be reached, failed, or timed out.
    Unavailable,
    /// The backend's configuration is incomplete where only run time can tell (no AWS region).
    Misconfigured,
    /// A bug in secret-run (a backend broke its contract): exit 70, never blamed on the secrets.
    Internal,
    /// A write found the secret changed since it was read (check-and-set), or already there
    /// when it must not be.
    Conflict,
}

impl ErrorKind {
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::NotFound | ErrorKind::Invalid => code::SECRET_MISSING,
            ErrorKind::PermissionDenied => code::PERMISSION_DENIED,
            ErrorKind::Unavailable => code::UNAVAILABLE,
            ErrorKind::Misconfigured => code::CONFIG,
            ErrorKind::Internal => code::SOFTWARE,
            ErrorKind::Conflict => code::TEMP_FAIL,
        }
    }

    /// A short word for `check` output.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "missing",
            ErrorKind::Invalid => "invalid",
            ErrorKind::PermissionDenied => "denied",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Misconfigured => "misconfigured",
            ErrorKind::Internal => "internal",
            ErrorKind::Conflict => "conflict",
        }
    }
}

/// Why a value could not be produced: a kind (which decides the exit code, and whether a cache
/// or a retry may step in), a message that names what failed and says what to do, and the
/// underlying error when there is one. The message already includes what the source says that
/// matters, so it is printed alone; the source is for code that must tell causes apart.
#[derive(Debug, Clone)]
pub struct SecretError {
    pub kind: ErrorKind,
    pub message: String,
    pub source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

/// Two errors are the same when they say the same thing: the source adds no difference a reader
/// would see (used to say an error shared by every read once).
impl PartialEq for SecretError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for SecretError {}

impl SecretError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        SecretError {
            kind,
            message: message.into(),
            source: None,
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, message)
    }
    pub fn misconfigured(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Misconfigured, message)
    }
    /// A backend broke its contract with the resolver (a bug, exit 70).
    pub fn bug(what: &str) -> Self {
        Self::new(
            ErrorKind::Internal,
            format!("{what} (a bug in secret-run; please report it)"),
        )
    }

    /// Keeps the error this one explains.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(std::sync::Arc::new(source));
        self
    }

    /// Classifies an I/O error on `what` (a file, a program) without losing the OS's reason.
    pub fn from_io(what: &str, err: std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Unavailable,
        };
        SecretError::new(kind, format!("cannot read {what}: {err}")).with_source(err)
    }
}

impl std::error::Error for SecretError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Turns bytes read from a file or a program into a value, taking ownership so that the only
/// plain copy is zeroized whatever happens.
pub fn value_from_bytes(bytes: Vec<u8>) -> Result<SecretString, SecretError> {
    let bytes = secrecy::zeroize::Zeroizing::new(bytes);
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(SecretString::from(text)),
        Err(e) => Err(SecretError::invalid(format!(
            "the value is not valid UTF-8 (invalid byte at offset {}); an environment value must be text",
            e.valid_up_to()
        ))),
    }
}

/// Removes one trailing newline (`\n` or `\r\n`), as files written by `echo` or editors end with one.
pub fn strip_one_newline(value: SecretString) -> SecretString {
    let text = value.expose_secret();
    let trimmed = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'));
    match trimmed {
        Some(t) => SecretString::from(t),
        None => value,
    }
}

/// Applies `key` to a value holding JSON. Errors list the available field names, never values.
pub fn apply_key(value: &SecretString, key: &Key) -> Result<SecretString, SecretError> {
    let parsed: serde_json::Value = serde_json::from_str(value.expose_secret()).map_err(|e| {
        SecretError::invalid(format!(
            "`key = \"{key}\"` needs a JSON value, but the value is not JSON ({} at line {} column {}); remove `key` to use the whole value",
            classify_json_error(&e),
            e.line(),
            e.column()
        ))
    })?;
    select(&parsed, key)
}

fn classify_json_error(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data | serde_json::error::Category::Io => "invalid data",
    }
}

/// `current` (a JSON object's text, or nothing yet) with the field `key` names set to `value`:
/// the read-modify-write of `put` on one field. A pointer creates the objects it passes through.
pub fn set_field(
    current: Option<&str>,
    key: &Key,
    value: &SecretString,
) -> Result<secrecy::zeroize::Zeroizing<String>, SecretError> {
    let mut doc: serde_json::Value = match current {
        Some(text) => serde_json::from_str(text).map_err(|_| {
            SecretError::invalid(format!(
                "`key = \"{key}\"` sets a field of a JSON object, but the current value is not JSON; write the whole value without `key`"
            ))
        })?,
        None => serde_json::Value::Object(serde_json::Map::new()),
    };
    let new = serde_json::Value::String(value.expose_secret().to_owned());
    let target = match key {
        Key::Field(name) => doc
            .as_object_mut()
            .map(|o| o.entry(name.clone()).or_insert(serde_json::Value::Null)),
        Key::Pointer(pointer) => {
            let parts: Vec<String> = pointer
                .split('/')
                .skip(1)
                .map(|p| p.replace("~1", "/").replace("~0", "~"))
                .collect();
            slot(&mut doc, &parts)
        }
    };
    let Some(slot) = target else {
        return Err(SecretError::invalid(format!(
            "`key = \"{key}\"` goes through something that is not a JSON object in the current value"
        )));
    };
    *slot = new;
    Ok(secrecy::zeroize::Zeroizing::new(doc.to_string()))
}

/// The place `parts` lead to from `at`, creating the objects on the way.
fn slot<'v>(at: &'v mut serde_json::Value, parts: &[String]) -> Option<&'v mut serde_json::Value> {
    match parts.split_first() {
        None => Some(at),
        Some((first, rest)) => {
            let next = at
                .as_object_mut()?
                .entry(first.clone())
                .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
            slot(next, rest)
        }
    }
}

/// The value of a secret made of named fields, when no `key` says which: its only field, or its
/// field `value`. Otherwise the error lists the field names (never values).
pub fn only_field(value: &SecretString) -> Result<SecretString, SecretError> {
    let parsed: serde_json::Value = serde_json::from_str(value.expose_secret())
        .map_err(|_| SecretError::invalid("the secret's fields are not a JSON object"))?;
    let serde_json::Value::Object(fields) = &parsed else {
        return Err(SecretError::invalid(format!(
            "the secret is {}, not an object of fields",
            json_type(&parsed)
        )));
    };
    let name = match fields.len() {
        0 => return Err(SecretError::not_found("the secret has no fields")),
        1 => fields.keys().next().cloned().unwrap_or_default(),
        _ if fields.contains_key("value") => "value".to_owned(),
        _ => {
            return Err(SecretError::invalid(format!(
                "the secret has several fields ({}) and none is named `value`; choose one with `key = \"…\"`",
                fields
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    };
    select(&parsed, &Key::Field(name))
}

/// Selects a field (or follows a pointer) in parsed JSON and turns the result into a value:
/// strings as they are, numbers and booleans as written, objects and arrays as compact JSON.
/// A pointer goes on into a string that holds JSON (a field storing a JSON document).
pub fn select(value: &serde_json::Value, key: &Key) -> Result<SecretString, SecretError> {
    let found: Option<std::borrow::Cow<'_, serde_json::Value>> = match key {
        Key::Field(name) => match value {
            serde_json::Value::Object(map) => map.get(name).map(std::borrow::Cow::Borrowed),
            other => {
                return Err(SecretError::invalid(format!(
                    "`key = \"{name}\"` needs a JSON object, but the value is {}",
                    json_type(other)
                )));
            }
        },
        Key::Pointer(ptr) => walk(value, ptr).ok(),
    };
    let Some(found) = found else {
        return Err(SecretError::not_found(format!(
            "no field `{key}`; {}",
            describe_fields(value, key)
        )));
    };
    match found.as_ref() {
        serde_json::Value::String(s) => Ok(SecretString::from(s.as_str())),
        serde_json::Value::Null => Err(SecretError::invalid(format!("field `{key}` is null"))),
        other @ (serde_json::Value::Bool(_)
        | serde_json::Value::Number(_)
        | serde_json::Value::Array(_)
        | serde_json::Value::Object(_)) => Ok(SecretString::from(other.to_string())),
    }
}

/// Follows an RFC 6901 pointer as far as it goes, parsing a string that holds JSON when the
/// pointer goes on past it. `Err` carries where it stopped (the path reached and the node there).
#[allow(clippy::type_complexity)]
fn walk<'a>(
    root: &'a serde_json::Value,
    ptr: &str,
) -> Result<
    std::borrow::Cow<'a, serde_json::Value>,
    (String, std::borrow::Cow<'a, serde_json::Value>),
> {
    use std::borrow::Cow;
    let mut node: Cow<'a, serde_json::Value> = Cow::Borrowed(root);
    let mut at = String::new();
    for token in ptr.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        if let serde_json::Value::String(text) = node.as_ref() {
            match serde_json::from_str::<serde_json::Value>(text) {
                Ok(inner @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => {
                    node = Cow::Owned(inner);
                }
                _ => return Err((at, node)),
            }
        }
        let next = match node {
            Cow::Borrowed(n) => child(n, &token).map(Cow::Borrowed),
            Cow::Owned(ref n) => child(n, &token).cloned().map(Cow::Owned),
        };
        match next {
            Some(n) => {
                node = n;
                at.push('/');
                at.push_str(&token);
            }
            None => return Err((at, node)),
        }
    }
    Ok(node)
}

fn child<'a>(node: &'a serde_json::Value, token: &str) -> Option<&'a serde_json::Value> {
    match node {
        serde_json::Value::Object(m) => m.get(token),
        serde_json::Value::Array(a) => token.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Names the fields available where a lookup stopped: for a pointer, at the deepest object it
/// reached. Only names are listed, in their stored order.
fn describe_fields(root: &serde_json::Value, key: &Key) -> String {
    let (at, node) = match key {
        Key::Field(_) => (String::new(), std::borrow::Cow::Borrowed(root)),
        Key::Pointer(ptr) => match walk(root, ptr) {
            Ok(n) => (ptr.clone(), n),
            Err(stopped) => stopped,
        },
    };
    let place = if at.is_empty() {
        "the value".to_owned()
    } else {
        format!("`{at}`")
    };
    match node.as_ref() {
        serde_json::Value::Object(m) if m.is_empty() => format!("{place} is an empty object"),
        serde_json::Value::Object(m) => format!(
            "{place} has fields: {}",
            m.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
        ),
        serde_json::Value::Array(a) => format!("{place} is an array of {} items", a.len()),
        other => format!("{place} is {}", json_type(other)),
    }
}

/// The last checks before a value may become `NAME=value` in an environment.
pub fn check_env_value(name: &EnvName, value: &SecretString) -> Result<(), SecretError> {
    let text = value.expose_secret();
    if let Some(pos) = text.find('\0') {
        return Err(SecretError::invalid(format!(
            "the value contains a NUL byte (at offset {pos}) and cannot be put into an environment"
        )));
    }
    let size = name.as_str().len() + 1 + text.len() + 1;
    if size > MAX_ENV_STRING {
        return Err(SecretError::invalid(format!(
            "the value is {} bytes, larger than the {MAX_ENV_STRING} bytes an environment value can hold (Linux limits one environment string to {MAX_ENV_STRING} bytes); deliver it as a file with `as_file = true`",
            text.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(EnvName::parse("DATABASE_URL").is_ok());
        assert!(EnvName::parse("_x1").is_ok());
        for bad in ["", "1FOO", "FOO-BAR", "A=B", "A B", "É"] {
            assert!(EnvName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn path_rule() {
        assert_eq!(path_to_var("database/url"), "DATABASE_URL");
        assert_eq!(path_to_var("stripe-api.key"), "STRIPE_API_KEY");
    }

    #[test]
    fn keys_and_pointers() {
        let v = SecretString::from(
            r#"{"user":"u","primary":{"password":"p","port":5432},"tags":["a"]}"#,
        );
        let get = |k: &str| apply_key(&v, &Key::parse(k)).map(|s| s.expose_secret().to_owned());
        assert_eq!(get("user").unwrap(), "u");
        assert_eq!(get("/primary/password").unwrap(), "p");
        assert_eq!(get("/primary/port").unwrap(), "5432");
        assert_eq!(get("tags").unwrap(), r#"["a"]"#);
        let miss = get("/primary/pass").unwrap_err();
        assert_eq!(miss.kind, ErrorKind::NotFound);
        assert!(
            miss.message
                .contains("`/primary` has fields: password, port"),
            "{}",
            miss.message
        );
        assert!(!miss.message.contains("\"p\""));
    }

    #[test]
    fn pointer_into_a_field_holding_json() {
        let v = SecretString::from(r#"{"db":"{\"password\":\"pw\",\"port\":5432}","x":"1"}"#);
        let get = |k: &str| apply_key(&v, &Key::parse(k)).map(|s| s.expose_secret().to_owned());
        assert_eq!(get("/db/password").unwrap(), "pw");
        let miss = get("/db/user").unwrap_err();
        assert!(
            miss.message.contains("`/db` has fields: password, port"),
            "{}",
            miss.message
        );
        assert!(!miss.message.contains("pw"));
    }

    #[test]
    fn only_field_rules() {
        let one = SecretString::from(r#"{"token":"t"}"#);
        assert_eq!(only_field(&one).unwrap().expose_secret(), "t");
        let named = SecretString::from(r#"{"a":"1","value":"v"}"#);
        assert_eq!(only_field(&named).unwrap().expose_secret(), "v");
        let many = SecretString::from(r#"{"user":"u-secret","password":"p-secret"}"#);
        let e = only_field(&many).unwrap_err();
        assert!(e.message.contains("user, password"), "{}", e.message);
        assert!(!e.message.contains("secret\""));
        assert!(!e.message.contains("u-secret"));
    }

    #[test]
    fn non_json_value_is_not_echoed() {
        let v = SecretString::from("hunter2-not-json");
        let e = apply_key(&v, &Key::parse("user")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(!e.message.contains("hunter2"));
    }

    #[test]
    fn env_value_checks() {
        let n = EnvName::parse("X").unwrap();
        assert!(check_env_value(&n, &SecretString::from("a\0b")).is_err());
        assert!(check_env_value(&n, &SecretString::from("a".repeat(MAX_ENV_STRING))).is_err());
        assert!(check_env_value(&n, &SecretString::from("fine")).is_ok());
    }

    #[test]
    fn newline_and_utf8() {
        let s = strip_one_newline(SecretString::from("v\n\n"));
        assert_eq!(s.expose_secret(), "v\n");
        assert!(value_from_bytes(vec![0xff, 0xfe]).is_err());
    }
}
