//! The manifest (`secrets.toml`): reading it, typing each part, and locating every problem.
//!
//! The document is read in two steps so that one run reports every problem at once: first the
//! top level, with each backend and secret kept as a spanned TOML value; then each of those is
//! typed on its own, and whatever fails is collected with the line of its key. `plan.rs` then turns
//! a valid manifest into what one run will do.

pub mod deliver;
pub mod plan;
pub mod run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;
use toml::Spanned;

use crate::backend::Spec;
use crate::error::{ConfigErrors, ConfigProblem, Error, Invalid, Result};
use crate::secret::{EnvName, Key};

/// The file name looked for when no manifest is named.
pub const DEFAULT_MANIFEST: &str = "secrets.toml";

/// A manifest that is valid on its own (every field typed, every name well-formed).
/// Whether it can run (backends exist, `{env}` given) is decided by `plan`.
#[derive(Debug)]
pub struct Manifest {
    pub source: Source,
    pub name: Option<String>,
    pub default_backend: Option<Spanned<String>>,
    /// Declared backends in file order.
    pub backends: Vec<BackendDecl>,
    /// Secrets in file order.
    pub secrets: Vec<Entry>,
    /// `[files]` in file order.
    pub files: Vec<FileDecl>,
    pub env: EnvPolicy,
    /// `[run]`: what a supervised run does on reload and exit.
    pub run: run::RunConfig,
    /// `[audit]`: where events are recorded; the path is resolved against the manifest's directory.
    pub audit: Option<run::AuditConfig>,
    /// `[cache]`: the encrypted last-known-good values.
    pub cache: Option<run::CacheConfig>,
}

/// The manifest's text, kept to turn byte offsets into lines and columns.
#[derive(Debug)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    /// The directory that relative paths in the manifest are resolved against.
    pub fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    pub fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    pub fn problem_at(&self, offset: Option<usize>, message: impl Into<String>) -> ConfigProblem {
        ConfigProblem {
            file: self.path.clone(),
            position: offset.map(|o| self.position(o)),
            message: message.into(),
        }
    }
}

#[derive(Debug)]
pub struct BackendDecl {
    pub name: String,
    pub offset: usize,
    pub prefix: Option<String>,
    pub spec: Spec,
}

#[derive(Debug)]
pub struct Entry {
    pub name: EnvName,
    pub offset: usize,
    pub backend: Option<String>,
    pub path: String,
    pub key: Option<Key>,
    pub version: Option<String>,
    /// What an issuing endpoint is asked for (`params = { common_name = "…" }`), as canonical
    /// JSON (sorted keys) so that equal tables make one request.
    pub params: Option<String>,
    pub optional: bool,
    /// Values in the manifest are not secret by design, but they join the resolved values, which are.
    pub default: Option<SecretString>,
    /// The variable holds the path of a file with the value, not the value (`as_file = true`),
    /// and the file's mode.
    pub as_file: Option<u32>,
    /// The file's owner and group (`as_file`, as root).
    pub owner: Option<String>,
    pub group: Option<String>,
    /// A value composed from other entries (`template = "…"`); no backend is read for it.
    pub template: Option<String>,
}

/// One `[files."PATH"]` table.
#[derive(Debug, Clone)]
pub struct FileDecl {
    /// As written: relative (inside the run's private directory) or absolute.
    pub path: String,
    pub offset: usize,
    pub content: FileContent,
    pub mode: u32,
    /// A variable that gets the file's path.
    pub env: Option<EnvName>,
    pub owner: Option<String>,
    pub group: Option<String>,
}

#[derive(Debug, Clone)]
pub enum FileContent {
    /// A template file, relative to the manifest.
    Template(PathBuf),
    /// One entry's whole value.
    Source(EnvName),
}

/// The mode of a delivered file unless the manifest says otherwise: the owner reads it.
pub const FILE_MODE: u32 = 0o400;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inherit {
    All,
    Nothing,
    Only(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct EnvPolicy {
    pub inherit: Inherit,
    pub remove: Vec<String>,
}

impl Default for EnvPolicy {
    fn default() -> Self {
        EnvPolicy {
            inherit: Inherit::All,
            remove: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Option<String>,
    default_backend: Option<Spanned<String>>,
    #[serde(default)]
    backends: BTreeMap<Spanned<String>, toml::Value>,
    #[serde(default)]
    secrets: BTreeMap<Spanned<String>, toml::Value>,
    env: Option<Spanned<toml::Value>>,
    run: Option<Spanned<toml::Value>>,
    audit: Option<Spanned<toml::Value>>,
    cache: Option<Spanned<toml::Value>>,
    #[serde(default)]
    files: BTreeMap<Spanned<String>, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    backend: Option<String>,
    path: Option<String>,
    key: Option<String>,
    version: Option<toml::Value>,
    optional: Option<bool>,
    default: Option<String>,
    as_file: Option<bool>,
    mode: Option<String>,
    owner: Option<String>,
    group: Option<String>,
    template: Option<String>,
    params: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    template: Option<PathBuf>,
    source: Option<String>,
    mode: Option<String>,
    env: Option<String>,
    owner: Option<String>,
    group: Option<String>,
}

/// `"0400"`, `"640"`: an octal file mode.
fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("mode `{text}` is not an octal file mode such as \"0400\""))
}

fn parse_file(path: &str, value: toml::Value) -> Result<FileDecl, Vec<String>> {
    let mut problems = Vec::new();
    let raw: RawFile = value
        .try_into()
        .map_err(|e: toml::de::Error| vec![crate::error::toml_message(&e)])?;
    let p = Path::new(path);
    if path.is_empty() {
        problems.push("the path cannot be empty".into());
    } else if !p.is_absolute()
        && p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        problems.push(
            "a relative path is inside the run's private directory and cannot leave it with `..`; write an absolute path for a file elsewhere".into(),
        );
    }
    let content = match (raw.template, raw.source) {
        (Some(t), None) => Some(FileContent::Template(t)),
        (None, Some(s)) => match EnvName::parse(&s) {
            Ok(n) => Some(FileContent::Source(n)),
            Err(e) => {
                problems.push(format!("`source`: {e}"));
                None
            }
        },
        _ => {
            problems.push(
                "takes one of `template` (a template file) or `source` (an entry's name)".into(),
            );
            None
        }
    };
    let mode = match raw.mode.as_deref().map(parse_mode) {
        None => FILE_MODE,
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            problems.push(e);
            FILE_MODE
        }
    };
    let env = match raw.env.as_deref().map(EnvName::parse) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            problems.push(format!("`env`: {e}"));
            None
        }
    };
    match content {
        Some(content) if problems.is_empty() => Ok(FileDecl {
            path: path.to_owned(),
            offset: 0,
            content,
            mode,
            env,
            owner: raw.owner,
            group: raw.group,
        }),
        _ => Err(problems),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnv {
    inherit: Option<toml::Value>,
    #[serde(default)]
    remove: Vec<String>,
}

/// Reads and validates the manifest at `path`, giving up at `deadline` (a FIFO with no writer).
pub fn load(path: &Path, deadline: std::time::Instant) -> Result<Manifest> {
    use crate::fsread::{self, Accept, ReadError};
    let whole = |message: String| {
        Error::Config(ConfigErrors(vec![ConfigProblem {
            file: path.to_path_buf(),
            position: None,
            message,
        }]))
    };
    // `-f <(generate)` hands over a pipe: streams are accepted, and bounded like files.
    let mut bytes = match fsread::read_path(path, Accept::Streams, fsread::MAX_MANIFEST, deadline) {
        Ok(bytes) => bytes,
        Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NoManifest(absolute(path)));
        }
        Err(ReadError::Io(source)) => {
            return Err(Error::ManifestUnreadable {
                path: path.to_path_buf(),
                source,
            });
        }
        Err(e) => return Err(whole(format!("cannot read the manifest: {e}"))),
    };
    let text = String::from_utf8(std::mem::take(&mut *bytes))
        .map_err(|_| whole("the manifest is not valid UTF-8".into()))?;
    parse(Source {
        path: path.to_path_buf(),
        text,
    })
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Parses manifest text; every problem found is returned together.
pub fn parse(source: Source) -> Result<Manifest> {
    let raw: RawManifest = match toml::from_str(&source.text) {
        Ok(raw) => raw,
        Err(e) => {
            let offset = e.span().map(|s| s.start);
            let mut message = crate::error::toml_message(&e);
            if message.starts_with("unknown field") {
                message.push_str(" (at the top level)");
            }
            return Err(Error::Config(ConfigErrors(vec![
                source.problem_at(offset, message),
            ])));
        }
    };
    let mut problems = Vec::new();

    let backends = in_file_order(raw.backends, &source, &mut problems, |name, value| {
        parse_backend(name, value)
            .map(|(prefix, spec)| (name.to_owned(), prefix, spec))
            .map_err(|e| (format!("[backends.{name}]"), vec![e.to_string()]))
    })
    .into_iter()
    .map(|((name, prefix, spec), offset)| BackendDecl {
        name,
        offset,
        prefix,
        spec,
    })
    .collect();

    let secrets = in_file_order(raw.secrets, &source, &mut problems, |name, value| {
        let label = format!("secret `{name}`");
        parse_entry(name, value).map_err(|msgs| (label, msgs))
    })
    .into_iter()
    .map(|(mut entry, offset)| {
        entry.offset = offset;
        entry
    })
    .collect();

    let files = in_file_order(raw.files, &source, &mut problems, |path, value| {
        parse_file(path, value).map_err(|msgs| (format!("[files.\"{path}\"]"), msgs))
    })
    .into_iter()
    .map(|(mut file, offset)| {
        file.offset = offset;
        file
    })
    .collect();

    let env = match raw.env {
        None => EnvPolicy::default(),
        Some(value) => {
            let offset = value.span().start;
            match parse_env(value.into_inner()) {
                Ok(env) => env,
                Err(msgs) => {
                    problems.extend(
                        msgs.into_iter()
                            .map(|m| source.problem_at(Some(offset), format!("[env]: {m}"))),
                    );
                    EnvPolicy::default()
                }
            }
        }
    };

    let run = match raw.run {
        None => run::RunConfig::default(),
        Some(value) => {
            let offset = value.span().start;
            match value.into_inner().try_into::<run::RunConfig>() {
                Ok(run) => {
                    problems.extend(
                        run.validate()
                            .into_iter()
                            .map(|m| source.problem_at(Some(offset), format!("[run]: {m}"))),
                    );
                    run
                }
                Err(e) => {
                    problems.push(source.problem_at(
                        Some(offset),
                        format!("[run]: {}", crate::error::toml_message(&e)),
                    ));
                    run::RunConfig::default()
                }
            }
        }
    };
    let audit = typed_table::<run::AuditConfig>(raw.audit, "audit", &source, &mut problems);
    let cache = typed_table::<run::CacheConfig>(raw.cache, "cache", &source, &mut problems);

    if !problems.is_empty() {
        return Err(Error::Config(ConfigErrors(problems)));
    }
    Ok(Manifest {
        source,
        name: raw.name,
        default_backend: raw.default_backend,
        backends,
        secrets,
        files,
        env,
        run,
        audit,
        cache,
    })
}

/// A small table (`[audit]`, `[cache]`) typed, or a problem at its line.
fn typed_table<T: serde::de::DeserializeOwned>(
    value: Option<Spanned<toml::Value>>,
    name: &str,
    source: &Source,
    problems: &mut Vec<ConfigProblem>,
) -> Option<T> {
    let value = value?;
    let offset = value.span().start;
    match value.into_inner().try_into::<T>() {
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(source.problem_at(
                Some(offset),
                format!("[{name}]: {}", crate::error::toml_message(&e)),
            ));
            None
        }
    }
}

/// Types each table of `tables` in the order the file has them, with its key's offset; every
/// problem is located at its key, after the label the parser gives.
fn in_file_order<T>(
    tables: BTreeMap<Spanned<String>, toml::Value>,
    source: &Source,
    problems: &mut Vec<ConfigProblem>,
    parse: impl Fn(&str, toml::Value) -> std::result::Result<T, (String, Vec<String>)>,
) -> Vec<(T, usize)> {
    let mut ordered: Vec<_> = tables.into_iter().collect();
    ordered.sort_by_key(|(k, _)| k.span().start);
    let mut out = Vec::new();
    for (key, value) in ordered {
        let offset = key.span().start;
        match parse(key.get_ref(), value) {
            Ok(t) => out.push((t, offset)),
            Err((label, msgs)) => problems.extend(
                msgs.into_iter()
                    .map(|m| source.problem_at(Some(offset), format!("{label}: {m}"))),
            ),
        }
    }
    out
}

fn parse_backend(name: &str, value: toml::Value) -> Result<(Option<String>, Spec), Invalid> {
    // Backend names appear in `--backend`, SECRET_BACKEND and every message: keep them plain.
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err("a backend name may only use letters, digits, `_` and `-`".into());
    }
    let toml::Value::Table(mut table) = value else {
        return Err(Invalid(format!(
            "expected a table with `kind = \"...\"`, found {}",
            value.type_str()
        )));
    };
    let kind = match table.remove("kind") {
        Some(toml::Value::String(k)) => k,
        Some(other) => {
            return Err(Invalid(format!(
                "`kind` must be a string, found {}",
                other.type_str()
            )));
        }
        None => {
            return Err(Invalid(format!(
                "missing `kind` (one of: {})",
                crate::backend::kind_names().join(", ")
            )));
        }
    };
    let prefix = match table.remove("prefix") {
        None => None,
        Some(toml::Value::String(p)) => Some(p),
        Some(other) => {
            return Err(Invalid(format!(
                "`prefix` must be a string, found {}",
                other.type_str()
            )));
        }
    };
    let spec = Spec::parse(&kind, table)?;
    Ok((prefix, spec))
}

fn parse_entry(name: &str, value: toml::Value) -> Result<Entry, Vec<String>> {
    let mut problems = Vec::new();
    let env_name = EnvName::parse(name)
        .map_err(|e| problems.push(e.to_string()))
        .ok();
    let raw = match value {
        toml::Value::String(path) => Some(RawEntry {
            backend: None,
            path: Some(path),
            key: None,
            version: None,
            params: None,
            optional: None,
            default: None,
            as_file: None,
            mode: None,
            owner: None,
            group: None,
            template: None,
        }),
        toml::Value::Table(table) => match toml::Value::Table(table).try_into::<RawEntry>() {
            Ok(raw) => Some(raw),
            Err(e) => {
                problems.push(crate::error::toml_message(&e));
                None
            }
        },
        other => {
            problems.push(format!(
                "expected a path (`{name} = \"database/url\"`) or a table (`{name} = {{ path = \"...\" }}`), found {}",
                other.type_str()
            ));
            None
        }
    };
    let (Some(name), Some(raw)) = (env_name, raw) else {
        return Err(problems);
    };
    if raw.template.is_some() {
        let with = [
            ("backend", raw.backend.is_some()),
            ("path", raw.path.is_some()),
            ("key", raw.key.is_some()),
            ("version", raw.version.is_some()),
            ("params", raw.params.is_some()),
            ("optional", raw.optional.is_some()),
            ("default", raw.default.is_some()),
            ("as_file", raw.as_file.is_some()),
            ("mode", raw.mode.is_some()),
            ("owner", raw.owner.is_some()),
            ("group", raw.group.is_some()),
        ];
        for (field, set) in with {
            if set {
                problems.push(format!(
                    "`template` composes the value from other entries: `{field}` has no meaning with it; remove one of them (a composed value goes to a file through [files])"
                ));
            }
        }
    } else if raw.path.as_deref().is_none_or(|p| p.trim().is_empty()) {
        problems.push("`path` cannot be empty".into());
    }
    let as_file = match (raw.as_file, raw.mode.as_deref().map(parse_mode)) {
        (Some(true), None) => Some(FILE_MODE),
        (Some(true), Some(Ok(m))) => Some(m),
        (_, Some(Err(e))) => {
            problems.push(e);
            None
        }
        (_, Some(Ok(_))) => {
            problems.push("`mode` is the mode of the file of `as_file = true`".into());
            None
        }
        _ => None,
    };
    if as_file.is_none() && (raw.owner.is_some() || raw.group.is_some()) {
        problems.push("`owner` and `group` are for the file of `as_file = true`".into());
    }
    if raw.key.as_deref() == Some("") {
        problems.push("`key` cannot be empty; remove it to use the whole value".into());
    }
    let version = match raw.version {
        None => None,
        Some(toml::Value::String(s)) if !s.is_empty() => Some(s),
        Some(toml::Value::Integer(n)) if n > 0 => Some(n.to_string()),
        Some(_) => {
            problems.push("`version` must be a positive number or a non-empty string".into());
            None
        }
    };
    let params = match raw.params.map(params_json) {
        None => None,
        Some(Ok(json)) => Some(json),
        Some(Err(e)) => {
            problems.push(e);
            None
        }
    };
    if params.is_some() && version.is_some() {
        problems.push(
            "`params` ask an issuing endpoint for a new credential, which has no versions; remove `version`"
                .into(),
        );
    }
    if raw.optional == Some(false) && raw.default.is_some() {
        problems.push(
            "`default` makes a secret optional, but `optional = false` says it is required; remove one of them"
                .into(),
        );
    }
    let default = raw.default.map(SecretString::from);
    // A default becomes a value like any fetched one: the same checks, found here rather than
    // when the command is started.
    if let Some(Err(e)) = default
        .as_ref()
        .map(|d| crate::secret::check_env_value(&name, d))
    {
        problems.push(format!("`default`: {e}"));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Entry {
        name,
        offset: 0,
        backend: raw.backend,
        path: raw.path.unwrap_or_default(),
        key: raw.key.as_deref().map(Key::parse),
        version,
        params,
        optional: raw.optional.unwrap_or(false) || default.is_some(),
        default,
        as_file,
        owner: raw.owner,
        group: raw.group,
        template: raw.template,
    })
}

/// `params` as the JSON body of the request: strings, numbers, booleans and arrays of them,
/// keys sorted (a `toml::Table` is ordered), so that equal tables are equal text.
fn params_json(table: toml::Table) -> Result<String, String> {
    fn json(key: &str, value: toml::Value) -> Result<serde_json::Value, String> {
        Ok(match value {
            toml::Value::String(s) => s.into(),
            toml::Value::Integer(n) => n.into(),
            toml::Value::Float(f) => serde_json::Number::from_f64(f)
                .map(serde_json::Value::Number)
                .ok_or_else(|| format!("`params.{key}` is not a finite number"))?,
            toml::Value::Boolean(b) => b.into(),
            toml::Value::Array(items) => serde_json::Value::Array(
                items
                    .into_iter()
                    .map(|i| json(key, i))
                    .collect::<Result<_, _>>()?,
            ),
            other => {
                return Err(format!(
                    "`params.{key}` is a {}; params are strings, numbers, booleans or arrays of them",
                    other.type_str()
                ));
            }
        })
    }
    if table.is_empty() {
        return Err("`params` is empty; remove it, or name what the endpoint is asked for".into());
    }
    // Sorted here: both crates may keep insertion order.
    let sorted: BTreeMap<String, toml::Value> = table.into_iter().collect();
    let mut object = serde_json::Map::new();
    for (key, value) in sorted {
        let v = json(&key, value)?;
        object.insert(key, v);
    }
    serde_json::to_string(&object).map_err(|e| format!("`params`: {e}"))
}

fn parse_env(value: toml::Value) -> Result<EnvPolicy, Vec<String>> {
    let raw: RawEnv = value
        .try_into()
        .map_err(|e: toml::de::Error| vec![crate::error::toml_message(&e)])?;
    let mut problems = Vec::new();
    let inherit = match raw.inherit {
        None | Some(toml::Value::Boolean(true)) => Inherit::All,
        Some(toml::Value::Boolean(false)) => Inherit::Nothing,
        Some(toml::Value::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                match item {
                    toml::Value::String(s) => names.push(s),
                    other => problems.push(format!(
                        "`inherit` lists variable names, found {}",
                        other.type_str()
                    )),
                }
            }
            Inherit::Only(names)
        }
        Some(other) => {
            problems.push(format!(
                "`inherit` must be true, false or a list of variable names, found {}",
                other.type_str()
            ));
            Inherit::All
        }
    };
    let names = match &inherit {
        Inherit::Only(names) => names.iter().chain(raw.remove.iter()).collect::<Vec<_>>(),
        _ => raw.remove.iter().collect(),
    };
    for n in names {
        if let Err(e) = EnvName::parse(n) {
            problems.push(e.to_string());
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(EnvPolicy {
        inherit,
        remove: raw.remove,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Manifest> {
        parse(Source {
            path: "secrets.toml".into(),
            text: text.into(),
        })
    }

    fn problems(text: &str) -> Vec<String> {
        match parse_str(text) {
            Err(Error::Config(ConfigErrors(p))) => p.iter().map(|p| p.to_string()).collect(),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn shorthand_and_table() {
        let m = parse_str(
            "default_backend = \"local\"\n[secrets]\nA = \"a/b\"\nB = { path = \"c\", key = \"/x/y\", optional = true }\n",
        )
        .unwrap();
        assert_eq!(m.secrets.len(), 2);
        assert_eq!(m.secrets[0].name.as_str(), "A");
        assert_eq!(m.secrets[1].key, Some(Key::Pointer("/x/y".into())));
        assert!(m.secrets[1].optional);
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let p = problems(
            "[secrets]\n1FOO = \"a\"\nOK = \"b\"\nBAR = { path = \"c\", keys = \"x\" }\n\"A=B\" = \"d\"\n",
        );
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(
            p[0].starts_with("secrets.toml:2:1: secret `1FOO`"),
            "{}",
            p[0]
        );
        assert!(
            p[1].contains(":4:1:")
                && p[1].contains("unknown field `keys`")
                && p[1].contains("`path`"),
            "{}",
            p[1]
        );
        assert!(p[2].contains(":5:1:"), "{}", p[2]);
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let p = problems("[secrets]\nA = \"unterminated\n");
        assert!(p[0].starts_with("secrets.toml:2:"), "{}", p[0]);
    }

    #[test]
    fn unknown_top_level_field() {
        let p = problems("defualt_backend = \"x\"\n");
        assert!(
            p[0].contains("unknown field `defualt_backend`") && p[0].contains("default_backend"),
            "{}",
            p[0]
        );
    }
}
