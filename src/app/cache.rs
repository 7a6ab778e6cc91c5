//! `secret-run cache keygen|status|clear`, and the cache's part in a start: values served
//! during an outage (said and audited), and the cache written after a complete start.

use std::path::PathBuf;

use secrecy::ExposeSecret;

use super::setup::{load_plan, write_stdout};
use crate::audit::{Audit, Event};
use crate::cache::{self, Served};
use crate::cli::{CacheAction, Global};
use crate::error::{Error, Result};
use crate::manifest::plan::Plan;
use crate::manifest::run::CacheConfig;
use crate::resolve::{Resolution, ResolvedVar};

pub fn run(global: &Global, action: CacheAction) -> Result<u8> {
    match action {
        CacheAction::Keygen { output, force } => keygen(global, output, force),
        CacheAction::Status => {
            let plan = load_plan(global, false)?;
            let config = configured(&plan, global)?;
            let rows = cache::status(&plan, config).map_err(|e| Error::Cache(e.0))?;
            let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(8);
            let mut out = format!(
                "cache {} (max_age {})\n{:width$}  STATUS\n",
                config.path.display(),
                humantime::format_duration(config.max_age),
                "VARIABLE"
            );
            for (name, status) in rows {
                out.push_str(&format!("{name:width$}  {status}\n"));
            }
            write_stdout(crate::output::escape_controls(&out).as_bytes())?;
            Ok(0)
        }
        CacheAction::Clear => {
            let config = from_manifest(global)?;
            match std::fs::remove_file(&config.path) {
                Ok(()) => eprintln!("secret-run: removed {}", config.path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    eprintln!("secret-run: no cache at {}", config.path.display());
                }
                Err(source) => {
                    return Err(Error::Write {
                        path: config.path.clone(),
                        source,
                    });
                }
            }
            Ok(0)
        }
    }
}

fn configured<'p>(plan: &'p Plan, global: &Global) -> Result<&'p CacheConfig> {
    plan.cache.as_ref().ok_or_else(|| no_cache(global))
}

fn no_cache(global: &Global) -> Error {
    Error::Usage(format!(
        "{} has no [cache] table (path, key_file, max_age)",
        global.manifest.display()
    ))
}

/// `[cache]` from the manifest alone, its paths resolved: `keygen` and `clear` need no
/// backend's settings (no VAULT_ADDR on the laptop that makes a key).
fn from_manifest(global: &Global) -> Result<CacheConfig> {
    let manifest = crate::manifest::load(&global.manifest, super::setup::deadline(global))?;
    let dir = manifest.source.dir();
    let c = manifest.cache.ok_or_else(|| no_cache(global))?;
    Ok(CacheConfig {
        path: dir.join(&c.path),
        key_file: dir.join(&c.key_file),
        max_age: c.max_age,
    })
}

fn keygen(global: &Global, output: Option<PathBuf>, force: bool) -> Result<u8> {
    let path = match output {
        Some(p) => p,
        None => from_manifest(global)?.key_file,
    };
    let (text, recipient) = cache::keygen();
    super::setup::create_private(&path, force, text.expose_secret().as_bytes())?;
    eprintln!("secret-run: wrote a new cache key to {}", path.display());
    write_stdout(format!("{recipient}\n").as_bytes())?;
    Ok(0)
}

/// At start, when a backend is unavailable: the values the cache can stand in for, said and
/// audited. Why it cannot, when it cannot, is said too; the start then fails as it would have.
pub fn serve(
    plan: &Plan,
    enabled: bool,
    resolution: &mut Resolution,
    audit: &mut Audit,
) -> Option<Served> {
    let config = plan.cache.as_ref().filter(|_| enabled)?;
    match cache::serve(plan, config, resolution) {
        Ok(Some(served)) => {
            let list: Vec<String> = served
                .vars
                .iter()
                .map(|(n, age)| format!("{n} ({} old)", humantime::format_duration(*age)))
                .collect();
            tracing::warn!(
                "a backend is unavailable: starting with cached values: {}",
                list.join(", ")
            );
            audit.record(Event::CacheServe {
                vars: served
                    .vars
                    .iter()
                    .map(|(n, age)| (n.clone(), age.as_secs()))
                    .collect(),
            });
            Some(served)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::error!("{e}");
            None
        }
    }
}

/// After a complete start: the values written to the cache; a failure is a warning.
pub fn store(plan: &Plan, enabled: bool, vars: &[ResolvedVar], served: Option<&Served>) {
    let Some(config) = plan.cache.as_ref().filter(|_| enabled) else {
        return;
    };
    match cache::store(plan, config, vars, served) {
        Ok(n) => tracing::debug!(values = n, path = %config.path.display(), "cache written"),
        Err(e) => tracing::warn!("{e}"),
    }
}
