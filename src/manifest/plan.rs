//! From a valid manifest and the command line to the plan of one run: which backend serves each
//! variable, at which full path, and the backends to instantiate (only those in use, so that a
//! production backend's settings do not matter on a laptop running `SECRET_BACKEND=dotenv`).

use std::collections::BTreeMap;

use secrecy::SecretString;

use super::deliver::{PlannedFile, PlannedTemplate, plan_files, plan_templates, private_dir};
use super::{EnvPolicy, Manifest};
use crate::backend::{Context, Handle, Spec};
use crate::error::{ConfigErrors, Error, Result, did_you_mean};
use crate::secret::{EnvName, Key};

/// The backend used when neither the entry, `--backend`/SECRET_BACKEND nor `default_backend`
/// names one: the `.env` beside the manifest, so that a new project runs with no server.
pub const EMBEDDED_DEFAULT: &str = "dotenv";

#[derive(Debug, Default, Clone)]
pub struct PlanOptions {
    /// `--backend` / SECRET_BACKEND: replaces the default for every entry that names no backend.
    pub backend_override: Option<String>,
    /// `--env` / SECRET_RUN_ENV: the value of `{env}` in prefixes.
    pub env_name: Option<String>,
    /// When reading the manifest's template files must give up (`None`: 30 s from now).
    pub deadline: Option<std::time::Instant>,
    /// Endpoints that create credentials (database/creds, pki/issue) are read; `false` for
    /// `check` without `--issue` and for `scan`, which must not mint database users.
    pub issue: bool,
    /// `backend_override` applies to every entry, those that name a backend too (`migrate`).
    pub every_entry: bool,
}

#[derive(Debug)]
pub struct PlannedVar {
    pub name: EnvName,
    pub backend: String,
    /// The full path, prefix applied.
    pub path: String,
    pub key: Option<Key>,
    pub version: Option<String>,
    /// What an issuing endpoint is asked for, as canonical JSON.
    pub params: Option<String>,
    pub optional: bool,
    pub default: Option<SecretString>,
    /// Delivered as a file of this mode: the variable holds the file's path.
    pub as_file: Option<u32>,
    /// The file's owner and group, when secret-run runs as root.
    pub owner: Option<nix::unistd::Uid>,
    pub group: Option<nix::unistd::Gid>,
}

#[derive(Debug)]
pub struct Plan {
    pub name: Option<String>,
    pub vars: Vec<PlannedVar>,
    pub backends: BTreeMap<String, Handle>,
    pub env: EnvPolicy,
    pub run: super::run::RunConfig,
    /// The audit log's path, relative paths resolved against the manifest's directory.
    pub audit: Option<std::path::PathBuf>,
    /// `[cache]`, its paths resolved against the manifest's directory.
    pub cache: Option<super::run::CacheConfig>,
    /// Composed values, in the order they are rendered.
    pub templates: Vec<PlannedTemplate>,
    /// `[files]`.
    pub files: Vec<PlannedFile>,
    /// Where this run's private files go (created only when there are some).
    pub private_dir: std::path::PathBuf,
}

impl Plan {
    /// The path an `as_file` entry's variable holds.
    pub fn file_of(&self, name: &EnvName) -> std::path::PathBuf {
        self.private_dir.join(name.as_str())
    }

    /// Whether this run writes any file.
    pub fn has_files(&self) -> bool {
        !self.files.is_empty() || self.vars.iter().any(|v| v.as_file.is_some())
    }

    /// Every variable the manifest defines (read from a backend or composed).
    pub fn names(&self) -> impl Iterator<Item = &EnvName> {
        self.vars
            .iter()
            .map(|v| &v.name)
            .chain(self.templates.iter().map(|t| &t.name))
    }

    /// The plan of `name` alone: its entry, or its template and what it uses; no files (an
    /// operator's command reads a value, it delivers nothing). `Err` with a did-you-mean.
    pub fn only(mut self, name: &str) -> std::result::Result<Plan, String> {
        if !self.names().any(|n| n.as_str() == name) {
            return Err(format!(
                "`{name}` is not in the manifest{}",
                did_you_mean(name, self.names().map(EnvName::as_str))
            ));
        }
        let mut wanted: std::collections::BTreeSet<String> = [name.to_owned()].into();
        // Templates use entries and earlier templates: follow them back.
        for t in self.templates.iter().rev() {
            if wanted.contains(t.name.as_str()) {
                wanted.extend(t.uses.iter().cloned());
            }
        }
        self.vars.retain(|v| wanted.contains(v.name.as_str()));
        self.templates.retain(|t| wanted.contains(t.name.as_str()));
        self.files.clear();
        for v in &mut self.vars {
            v.as_file = None;
        }
        Ok(self)
    }
}

impl Plan {
    /// Credentials the backends in use consumed, which the child does not inherit.
    pub fn consumed_env(&self) -> Vec<String> {
        self.backends
            .values()
            .flat_map(|b| b.backend.consumed_env())
            .collect()
    }
}

pub fn build(manifest: Manifest, opts: &PlanOptions) -> Result<Plan> {
    let src = &manifest.source;
    let mut problems = Vec::new();

    let declared: BTreeMap<&str, (&Spec, Option<&str>, Option<usize>)> = manifest
        .backends
        .iter()
        .map(|d| {
            (
                d.name.as_str(),
                (&d.spec, d.prefix.as_deref(), Some(d.offset)),
            )
        })
        .collect();
    let builtins: Vec<(&str, Spec)> = Spec::builtins()
        .filter(|(n, _)| !declared.contains_key(n))
        .collect();
    let mut known = declared.clone();
    for (name, spec) in &builtins {
        known.insert(name, (spec, None, None));
    }
    let names = || known.keys().copied().collect::<Vec<_>>().join(", ");

    // The default: --backend/SECRET_BACKEND, else default_backend, else the embedded default.
    let default = match (&opts.backend_override, &manifest.default_backend) {
        (Some(name), _) => {
            if !known.contains_key(name.as_str()) {
                problems.push(src.problem_at(
                    None,
                    format!(
                        "backend `{name}` (from --backend or SECRET_BACKEND) does not exist{}; the backends are: {}",
                        did_you_mean(name, known.keys().copied()),
                        names()
                    ),
                ));
            }
            Some(name.clone())
        }
        (None, Some(spanned)) => {
            let name = spanned.get_ref();
            if !known.contains_key(name.as_str()) {
                problems.push(src.problem_at(
                    Some(spanned.span().start),
                    format!(
                        "default_backend `{name}` does not exist{}; the backends are: {}",
                        did_you_mean(name, known.keys().copied()),
                        names()
                    ),
                ));
            }
            Some(name.clone())
        }
        (None, None) => Some(EMBEDDED_DEFAULT.to_owned()),
    };

    let mut vars = Vec::new();
    let mut used: BTreeMap<String, Option<usize>> = BTreeMap::new();
    let declared_names: std::collections::BTreeSet<String> = manifest
        .secrets
        .iter()
        .map(|e| e.name.to_string())
        .collect();
    let mut template_entries = Vec::new();
    for entry in manifest.secrets {
        let at = Some(entry.offset);
        if let Some(text) = entry.template {
            template_entries.push((entry.name, text, entry.offset));
            continue;
        }
        let named = entry.backend.as_ref().filter(|_| !opts.every_entry);
        let backend = match (named, &default) {
            (Some(b), _) => {
                if !known.contains_key(b.as_str()) {
                    problems.push(src.problem_at(
                        at,
                        format!(
                            "secret `{}`: backend `{b}` does not exist{}; the backends are: {}",
                            entry.name,
                            did_you_mean(b, known.keys().copied()),
                            names()
                        ),
                    ));
                    continue;
                }
                b.clone()
            }
            (None, Some(d)) if known.contains_key(d.as_str()) => d.clone(),
            // The bad default was reported once above.
            _ => continue,
        };
        let (spec, prefix, decl_at) = known[backend.as_str()];
        if let Some(version) = &entry.version {
            if let Err(msg) = spec.check_version(version) {
                problems.push(src.problem_at(
                    at,
                    format!("secret `{}`: backend `{backend}`: {msg}", entry.name),
                ));
            }
        }
        let prefix = match prefix.map(|p| expand_prefix(p, opts.env_name.as_deref())) {
            None => String::new(),
            Some(Ok(p)) => p,
            Some(Err(msg)) => {
                problems.push(src.problem_at(decl_at, format!("[backends.{backend}]: {msg}")));
                // Once per backend is enough.
                used.insert(backend.clone(), decl_at);
                continue;
            }
        };
        let path = format!("{prefix}{}", entry.path);
        if let Err(msg) = spec.config.check_path(&path) {
            problems.push(src.problem_at(at, format!("secret `{}`: {msg}", entry.name)));
        }
        if entry.params.is_some() && !spec.config.takes_params() {
            problems.push(src.problem_at(
                at,
                format!(
                    "secret `{}`: backend `{backend}` (kind {}) reads stored values and takes no `params`; only a vault backend's issuing endpoints (pki/issue/…, aws/sts/…) do",
                    entry.name, spec.kind.name
                ),
            ));
        }
        used.insert(backend.clone(), decl_at);
        let (owner, group) =
            match super::deliver::ids(entry.owner.as_deref(), entry.group.as_deref()) {
                Ok(ids) => ids,
                Err(msgs) => {
                    for m in msgs {
                        problems.push(src.problem_at(at, format!("secret `{}`: {m}", entry.name)));
                    }
                    (None, None)
                }
            };
        vars.push(PlannedVar {
            name: entry.name,
            backend,
            path,
            key: entry.key,
            version: entry.version,
            params: entry.params,
            optional: entry.optional,
            default: entry.default,
            as_file: entry.as_file,
            owner,
            group,
        });
    }
    let templates = plan_templates(src, template_entries, &declared_names, &mut problems);
    let deadline = opts
        .deadline
        .unwrap_or_else(|| std::time::Instant::now() + std::time::Duration::from_secs(30));
    let files = plan_files(
        src,
        manifest.files,
        &declared_names,
        deadline,
        &mut problems,
    );
    dedup_problems(&mut problems);

    for name in &manifest.env.remove {
        if vars.iter().any(|v| v.name.as_str() == name) {
            problems.push(src.problem_at(
                None,
                format!(
                    "[env]: `{name}` is both a secret and in `remove`; remove it from one of them"
                ),
            ));
        }
    }

    let ctx = Context {
        base_dir: src.dir(),
        issue: opts.issue,
        env_name: opts.env_name.clone(),
    };
    if let Some(slots) = &manifest.run.max_concurrent_restarts {
        match known.get(slots.vault.as_str()) {
            _ if slots.n == 0 => problems.push(src.problem_at(
                None,
                "[run] max_concurrent_restarts: `n` must be at least 1",
            )),
            Some((spec, _, at)) if spec.kind.name == "vault" => {
                used.entry(slots.vault.clone()).or_insert(*at);
            }
            Some((spec, _, _)) => problems.push(src.problem_at(
                None,
                format!(
                    "[run] max_concurrent_restarts: backend `{}` is of kind {}; the slots live in a vault backend (KV v2)",
                    slots.vault, spec.kind.name
                ),
            )),
            None => problems.push(src.problem_at(
                None,
                format!(
                    "[run] max_concurrent_restarts: backend `{}` does not exist{}",
                    slots.vault,
                    did_you_mean(&slots.vault, known.keys().copied())
                ),
            )),
        }
    }
    let mut backends = BTreeMap::new();
    for (name, decl_at) in used {
        let (spec, _, _) = known[name.as_str()];
        match spec.build(&ctx) {
            Ok(handle) => {
                backends.insert(name, handle);
            }
            Err(msg) => problems.push(src.problem_at(decl_at, format!("[backends.{name}]: {msg}"))),
        }
    }

    if !problems.is_empty() {
        return Err(Error::Config(ConfigErrors(problems)));
    }
    let audit = manifest.audit.as_ref().map(|a| ctx.base_dir.join(&a.path));
    let cache = manifest.cache.map(|c| super::run::CacheConfig {
        path: ctx.base_dir.join(&c.path),
        key_file: ctx.base_dir.join(&c.key_file),
        max_age: c.max_age,
    });
    let mut run = manifest.run;
    run.pidfile = run.pidfile.map(|p| ctx.base_dir.join(p));
    for l in &mut run.listen {
        if let super::run::ListenAddr::Unix(path) = &mut l.addr {
            *path = ctx.base_dir.join(&*path);
        }
    }
    Ok(Plan {
        name: manifest.name,
        vars,
        backends,
        env: manifest.env,
        run,
        audit,
        cache,
        templates,
        files,
        private_dir: private_dir(&src.path),
    })
}

fn dedup_problems(problems: &mut Vec<crate::error::ConfigProblem>) {
    let mut seen = std::collections::HashSet::new();
    problems.retain(|p| seen.insert(p.to_string()));
}

/// Replaces `{env}`; any other `{...}` is a mistake worth stopping for.
fn expand_prefix(prefix: &str, env_name: Option<&str>) -> Result<String, String> {
    crate::backend::expand_env("prefix", prefix, env_name).map_err(|e| e.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_expansion() {
        assert_eq!(
            expand_prefix("app/{env}/", Some("prod")).unwrap(),
            "app/prod/"
        );
        assert!(
            expand_prefix("app/{env}/", None)
                .unwrap_err()
                .contains("--env")
        );
        assert!(expand_prefix("{region}/", Some("x")).is_err());
        assert_eq!(expand_prefix("plain/", None).unwrap(), "plain/");
    }
}
