//! The last-known-good cache (`[cache]`): after every complete resolve, the values of remote
//! backends are written to one file, encrypted with age to the key's recipient, with when each
//! was last confirmed and what it maps (backend, kind, path, key, version, params). At start,
//! values a backend should have given but could not, because it is *unavailable*, are served
//! from it when confirmed within `max_age` and mapped the same way; never for a value the
//! backend refused or does not have, never a local backend's, never an issued credential.
//!
//! Writes are atomic (a temporary file in the same directory, fsync, rename): concurrent runs
//! never leave a torn file. Values are copied into zeroized buffers only, and the file holds
//! nothing readable without the key.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::manifest::plan::{Plan, PlannedVar};
use crate::manifest::run::CacheConfig;
use crate::resolve::{Outcome, Resolution, ResolvedVar};
use crate::secret::ErrorKind;

/// The format of the decrypted document; another number is refused.
const FORMAT: u32 = 1;
/// The largest cache file read.
const MAX_FILE: usize = 16 << 20;
/// The largest key file read.
const MAX_KEY: usize = 64 << 10;

/// Why the cache cannot be used; said with the file's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CacheError(pub String);

/// What was served from the cache: each variable and how old its value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub vars: Vec<(String, Duration)>,
}

#[derive(Serialize)]
struct Document<K, V> {
    format: u32,
    entries: BTreeMap<K, Entry<V>>,
}

#[derive(Serialize, Deserialize)]
struct Entry<V> {
    /// What the value maps: an edited manifest never serves an old mapping.
    mapping: String,
    /// Seconds since the epoch when its backend last gave it.
    confirmed: u64,
    value: V,
}

/// What an entry maps, as the cache records it.
fn mapping(plan: &Plan, v: &PlannedVar) -> String {
    let kind = plan.backends.get(&v.backend).map_or("", |b| b.kind);
    let key = v.key.as_ref().map(ToString::to_string).unwrap_or_default();
    // Fields joined by a separator that a manifest's strings may hold but TOML keys rarely do;
    // each field is JSON-quoted, so no two mappings join to the same text.
    serde_json::json!([v.backend, kind, v.path, key, v.version, v.params]).to_string()
}

/// Whether `v`'s backend can be cached: remote (a local backend has no outage).
fn cacheable(plan: &Plan, v: &PlannedVar) -> bool {
    plan.backends
        .get(&v.backend)
        .is_some_and(|b| !b.backend.reader().is_local())
}

/// Reads the age identity in `key_file`: its first `AGE-SECRET-KEY-1…` line.
pub fn identity(key_file: &Path) -> Result<age::x25519::Identity, CacheError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let text =
        crate::fsread::read_path(key_file, crate::fsread::Accept::Regular, MAX_KEY, deadline)
            .map_err(|e| {
                CacheError(format!(
                    "cannot read the cache key {}: {e}",
                    key_file.display()
                ))
            })?;
    let text = std::str::from_utf8(&text).map_err(|_| {
        CacheError(format!(
            "the cache key {} is not text; write one with `secret-run cache keygen -o {}`",
            key_file.display(),
            key_file.display()
        ))
    })?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .ok_or_else(|| {
            CacheError(format!(
                "the cache key {} holds no age identity (AGE-SECRET-KEY-1…); write one with `secret-run cache keygen -o {}`",
                key_file.display(),
                key_file.display()
            ))
        })?;
    line.parse().map_err(|_| {
        CacheError(format!(
            "the cache key {} holds a malformed age identity",
            key_file.display()
        ))
    })
}

/// A new identity's text (as a key file holds it) and its recipient.
pub fn keygen() -> (SecretString, String) {
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let text = format!(
        "# secret-run cache key (age X25519)\n# recipient: {recipient}\n{}\n",
        id.to_string().expose_secret()
    );
    (SecretString::from(text), recipient)
}

/// The document of the cache file, decrypted; values stay secret.
type Stored = Document<String, SecretString>;

/// Reads and decrypts the cache file.
fn load(config: &CacheConfig) -> Result<Stored, CacheError> {
    let path = &config.path;
    let id = identity(&config.key_file)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let bytes = crate::fsread::read_path(path, crate::fsread::Accept::Regular, MAX_FILE, deadline)
        .map_err(|e| match e.io_kind() {
            Some(std::io::ErrorKind::NotFound) => CacheError(format!(
                "there is no cache at {} yet (it is written after a successful start)",
                path.display()
            )),
            _ => CacheError(format!("cannot read the cache {}: {e}", path.display())),
        })?;
    let plain = Zeroizing::new(age::decrypt(&id, &bytes).map_err(|e| {
        let why = match e {
            age::DecryptError::NoMatchingKeys => {
                "it was encrypted to another key (key_file does not match)".to_owned()
            }
            age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
                "it is not an age file: corrupt, or not a secret-run cache".to_owned()
            }
            age::DecryptError::Io(_) | age::DecryptError::DecryptionFailed => {
                "it is truncated or corrupt".to_owned()
            }
            other => other.to_string(),
        };
        CacheError(format!(
            "the cache {} cannot be decrypted: {why}",
            path.display()
        ))
    })?);
    #[derive(Deserialize)]
    struct Raw {
        format: u32,
        entries: BTreeMap<String, Entry<String>>,
    }
    let raw: Raw = serde_json::from_slice(&plain).map_err(|_| {
        CacheError(format!(
            "the cache {} decrypts to something that is not a secret-run cache",
            path.display()
        ))
    })?;
    if raw.format != FORMAT {
        return Err(CacheError(format!(
            "the cache {} has format {}, which this secret-run does not read; `secret-run cache clear` and start once with the backends up",
            path.display(),
            raw.format
        )));
    }
    Ok(Document {
        format: raw.format,
        entries: raw
            .entries
            .into_iter()
            .map(|(k, e)| {
                let entry = Entry {
                    mapping: e.mapping,
                    confirmed: e.confirmed,
                    value: SecretString::from(e.value),
                };
                (k, entry)
            })
            .collect(),
    })
}

/// Writes the cache from a complete resolve (see `seal`); how many values it holds.
pub fn store(
    plan: &Plan,
    config: &CacheConfig,
    vars: &[ResolvedVar],
    served: Option<&Served>,
) -> Result<usize, CacheError> {
    match seal(plan, config, vars, served)? {
        Some((count, sealed)) => {
            write(&config.path, &sealed)?;
            Ok(count)
        }
        None => Ok(0),
    }
}

/// Writes sealed bytes to the cache file, atomically.
pub fn write(path: &Path, sealed: &[u8]) -> Result<(), CacheError> {
    crate::fsread::write_atomically(path, sealed, 0o600)
        .map_err(|e| CacheError(format!("cannot write the cache {}: {e}", path.display())))
}

/// The values of a complete resolve that belong in the cache, with when each was confirmed
/// (now, or for a value served from the cache, when it was confirmed before), encrypted:
/// how many, and the file's bytes. `None` when no value belongs there.
pub fn seal(
    plan: &Plan,
    config: &CacheConfig,
    vars: &[ResolvedVar],
    served: Option<&Served>,
) -> Result<Option<(usize, Vec<u8>)>, CacheError> {
    let now = crate::duration::unix_now();
    let old: BTreeMap<&str, u64> = served
        .map(|s| {
            s.vars
                .iter()
                .map(|(n, age)| (n.as_str(), now.saturating_sub(age.as_secs())))
                .collect()
        })
        .unwrap_or_default();
    let mut entries: BTreeMap<&str, Entry<&str>> = BTreeMap::new();
    let mut size = 64;
    for v in vars {
        let Outcome::Value(value) = &v.outcome else {
            continue;
        };
        let Some(planned) = plan.vars.iter().find(|p| p.name == v.name) else {
            continue;
        };
        if v.lease.is_some() || !cacheable(plan, planned) {
            continue;
        }
        let mapping = mapping(plan, planned);
        size += value.expose_secret().len() * 6 + mapping.len() * 2 + v.name.as_str().len() + 64;
        entries.insert(
            v.name.as_str(),
            Entry {
                confirmed: old.get(v.name.as_str()).copied().unwrap_or(now),
                mapping,
                value: value.expose_secret(),
            },
        );
    }
    if entries.is_empty() {
        return Ok(None);
    }
    let count = entries.len();
    // Sized once: a reallocation would leave a copy of the values behind, unzeroed.
    let mut plain = Zeroizing::new(Vec::with_capacity(size));
    serde_json::to_writer(
        &mut *plain,
        &Document {
            format: FORMAT,
            entries,
        },
    )
    .map_err(|e| CacheError(format!("cannot encode the cache: {e}")))?;
    let recipient = identity(&config.key_file)?.to_public();
    let sealed = age::encrypt(&recipient, &plain)
        .map_err(|e| CacheError(format!("cannot encrypt the cache: {e}")))?;
    Ok(Some((count, sealed)))
}

/// Serves, from the cache, the values that failed only because their (remote) backend is
/// unavailable, when each was confirmed within `max_age` and maps the same. All or nothing:
/// `Ok(None)` when nothing is to be served (or something failed for another reason, which the
/// cache must not hide); `Err` with every reason when one of them cannot be served.
pub fn serve(
    plan: &Plan,
    config: &CacheConfig,
    resolution: &mut Resolution,
) -> Result<Option<Served>, CacheError> {
    let templates: Vec<&str> = plan.templates.iter().map(|t| t.name.as_str()).collect();
    let mut wanted = Vec::new();
    for v in &resolution.vars {
        let Outcome::Failed(e) = &v.outcome else {
            continue;
        };
        if templates.contains(&v.name.as_str()) {
            continue;
        }
        let planned = plan.vars.iter().find(|p| p.name == v.name);
        match planned {
            Some(p) if e.kind == ErrorKind::Unavailable && cacheable(plan, p) => wanted.push(p),
            // Refused, missing, misconfigured, or a local backend: not the cache's to cover.
            _ => return Ok(None),
        }
    }
    if wanted.is_empty() {
        return Ok(None);
    }
    let stored = load(config)?;
    let now = crate::duration::unix_now();
    let mut problems = Vec::new();
    let mut found = Vec::new();
    for p in wanted {
        let name = p.name.as_str();
        match stored.entries.get(name) {
            None => problems.push(format!("{name}: not in the cache")),
            Some(e) if e.mapping != mapping(plan, p) => problems.push(format!(
                "{name}: cached from another mapping (the manifest changed since; not served)"
            )),
            Some(e) => {
                let age = Duration::from_secs(now.saturating_sub(e.confirmed));
                if age > config.max_age {
                    problems.push(format!(
                        "{name}: cached {} ago, older than max_age ({})",
                        humantime::format_duration(age),
                        humantime::format_duration(config.max_age)
                    ));
                } else {
                    found.push((name.to_owned(), age, e.value.clone()));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(CacheError(format!(
            "the cache {} cannot stand in: {}",
            config.path.display(),
            problems.join("; ")
        )));
    }
    let mut served = Served { vars: Vec::new() };
    for (name, age, value) in found {
        if let Some(v) = resolution.vars.iter_mut().find(|v| v.name.as_str() == name) {
            v.outcome = Outcome::Value(value);
            v.about = Some(format!(
                "from the cache, confirmed {} ago",
                humantime::format_duration(age)
            ));
        }
        served.vars.push((name, age));
    }
    let names: Vec<&str> = served.vars.iter().map(|(n, _)| n.as_str()).collect();
    resolution
        .backend_failures
        .retain(|f| !f.vars.iter().all(|v| names.contains(&v.as_str())));
    crate::resolve::recompose(plan, resolution);
    Ok(Some(served))
}

/// One line per variable of the plan for `cache status`: its age, and whether it would be served.
pub fn status(plan: &Plan, config: &CacheConfig) -> Result<Vec<(String, String)>, CacheError> {
    let stored = load(config)?;
    let now = crate::duration::unix_now();
    let mut rows = Vec::new();
    for p in &plan.vars {
        let name = p.name.to_string();
        let row = if !cacheable(plan, p) {
            "local backend: never cached".to_owned()
        } else {
            match stored.entries.get(p.name.as_str()) {
                None => "not in the cache".to_owned(),
                Some(e) if e.mapping != mapping(plan, p) => {
                    "cached from another mapping: not served".to_owned()
                }
                Some(e) => {
                    let age = Duration::from_secs(now.saturating_sub(e.confirmed));
                    let age_text = humantime::format_duration(age);
                    if age > config.max_age {
                        format!("cached {age_text} ago: older than max_age, not served")
                    } else {
                        format!("cached {age_text} ago: served during an outage")
                    }
                }
            }
        };
        rows.push((name, row));
    }
    let known: Vec<&str> = plan.vars.iter().map(|p| p.name.as_str()).collect();
    for name in stored
        .entries
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
    {
        rows.push((name.clone(), "in the cache, not in the manifest".to_owned()));
    }
    Ok(rows)
}
