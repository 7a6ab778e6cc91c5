//! What the plan says of values that are not plain variables: composed ones (`template`),
//! those delivered as files (`as_file`), and the files of `[files]`. Checked here, with the
//! manifest's lines, before anything is read: template syntax, names a template uses that the
//! manifest does not declare, cycles, two files with one path, an owner that does not exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{FileContent, FileDecl, Source};
use crate::error::ConfigProblem;
use crate::secret::EnvName;

/// A composed value, in an order where every template comes after those it uses.
#[derive(Debug, Clone)]
pub struct PlannedTemplate {
    pub name: EnvName,
    pub text: String,
    /// The variables it names, found once when the manifest is read.
    pub uses: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct PlannedFile {
    pub target: PathBuf,
    /// Relative to the run's private directory (`target` is then relative), or absolute.
    pub private: bool,
    pub content: PlannedContent,
    pub mode: u32,
    pub env: Option<EnvName>,
    pub owner: Option<nix::unistd::Uid>,
    pub group: Option<nix::unistd::Gid>,
}

#[derive(Debug, Clone)]
pub enum PlannedContent {
    /// The template's text, and its file (for messages).
    Template {
        text: String,
        file: PathBuf,
    },
    Source(EnvName),
}

/// The largest template file read.
const MAX_TEMPLATE: usize = 1 << 20;

/// Orders the templates so that each comes after the templates it uses; reports unknown names
/// and cycles at the entry's line.
pub fn plan_templates(
    src: &Source,
    templates: Vec<(EnvName, String, usize)>,
    declared: &BTreeSet<String>,
    problems: &mut Vec<ConfigProblem>,
) -> Vec<PlannedTemplate> {
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut at: BTreeMap<String, usize> = BTreeMap::new();
    let mut text_of: BTreeMap<String, String> = BTreeMap::new();
    for (name, text, offset) in &templates {
        match crate::template::names(text) {
            Ok(names) => {
                for n in names.iter().filter(|n| !declared.contains(*n)) {
                    problems.push(src.problem_at(
                        Some(*offset),
                        format!(
                            "secret `{name}`: the template names `{n}`, which the manifest does not declare{}",
                            crate::error::did_you_mean(n, declared.iter().map(String::as_str))
                        ),
                    ));
                }
                uses.insert(name.to_string(), names);
            }
            Err(e) => problems.push(src.problem_at(
                Some(*offset),
                format!(
                    "secret `{name}`: the template{}: {}",
                    e.line.map(|l| format!(" (line {l})")).unwrap_or_default(),
                    e.message
                ),
            )),
        }
        at.insert(name.to_string(), *offset);
        text_of.insert(name.to_string(), text.clone());
    }
    // Kahn's order over the templates only; plain entries are resolved before any of them.
    let mut order = Vec::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    loop {
        let ready: Vec<String> = uses
            .iter()
            .filter(|(n, deps)| {
                !done.contains(*n)
                    && deps
                        .iter()
                        .all(|d| !text_of.contains_key(d) || done.contains(d))
            })
            .map(|(n, _)| n.clone())
            .collect();
        if ready.is_empty() {
            break;
        }
        for n in ready {
            done.insert(n.clone());
            order.push(n);
        }
    }
    for (name, offset) in &at {
        if uses.contains_key(name) && !done.contains(name) {
            problems.push(src.problem_at(
                Some(*offset),
                format!("secret `{name}`: its template uses itself, through other templates or directly (a cycle)"),
            ));
        }
    }
    order
        .into_iter()
        .filter_map(|n| {
            let name = EnvName::parse(&n).ok()?;
            let text = text_of.remove(&n)?;
            let uses = uses.remove(&n).unwrap_or_default();
            Some(PlannedTemplate { name, text, uses })
        })
        .collect()
}

/// Types every `[files]` table: reads its template, checks the names it uses, the source,
/// the owner, and that no two files share a path.
pub fn plan_files(
    src: &Source,
    files: Vec<FileDecl>,
    declared: &BTreeSet<String>,
    deadline: std::time::Instant,
    problems: &mut Vec<ConfigProblem>,
) -> Vec<PlannedFile> {
    let base = src.dir();
    let mut seen: BTreeMap<PathBuf, usize> = BTreeMap::new();
    let mut planned = Vec::new();
    for f in files {
        let at = Some(f.offset);
        let table = format!("[files.\"{}\"]", f.path);
        let mut problem = |m: String| problems.push(src.problem_at(at, format!("{table}: {m}")));
        let private = !Path::new(&f.path).is_absolute();
        let target = PathBuf::from(&f.path);
        if let Some(first) = seen.insert(normal(&target), f.offset) {
            let (line, _) = src.position(first);
            problem(format!(
                "another [files] table (line {line}) writes the same path"
            ));
            continue;
        }
        let content = match f.content {
            FileContent::Source(name) => {
                if !declared.contains(name.as_str()) {
                    problem(format!(
                        "`source = \"{name}\"` is not an entry of [secrets]{}",
                        crate::error::did_you_mean(
                            name.as_str(),
                            declared.iter().map(String::as_str)
                        )
                    ));
                    continue;
                }
                PlannedContent::Source(name)
            }
            FileContent::Template(path) => {
                let file = base.join(&path);
                let text = match read_template(&file, deadline) {
                    Ok(text) => text,
                    Err(e) => {
                        problem(e);
                        continue;
                    }
                };
                match crate::template::names(&text) {
                    Ok(names) => {
                        for n in names.iter().filter(|n| !declared.contains(*n)) {
                            problem(format!(
                                "{}: names `{n}`, which the manifest does not declare{}",
                                file.display(),
                                crate::error::did_you_mean(n, declared.iter().map(String::as_str))
                            ));
                        }
                    }
                    Err(e) => {
                        problem(format!(
                            "{}{}: {}",
                            file.display(),
                            e.line.map(|l| format!(":{l}")).unwrap_or_default(),
                            e.message
                        ));
                        continue;
                    }
                }
                PlannedContent::Template { text, file }
            }
        };
        if let Some(env) = &f.env {
            if declared.contains(env.as_str()) {
                problem(format!(
                    "`env = \"{env}\"` is also a secret's name; choose another variable for the file's path"
                ));
            }
        }
        let (owner, group) = match ids(f.owner.as_deref(), f.group.as_deref()) {
            Ok(ids) => ids,
            Err(msgs) => {
                msgs.into_iter().for_each(&mut problem);
                (None, None)
            }
        };
        planned.push(PlannedFile {
            target,
            private,
            content,
            mode: f.mode,
            env: f.env,
            owner,
            group,
        });
    }
    planned
}

/// A user and a group by name, for files written as root.
pub fn ids(
    owner: Option<&str>,
    group: Option<&str>,
) -> Result<(Option<nix::unistd::Uid>, Option<nix::unistd::Gid>), Vec<String>> {
    let root = nix::unistd::geteuid().is_root();
    let mut problems = Vec::new();
    let owner = match owner {
        None => None,
        Some(_) if !root => {
            problems.push("`owner` needs secret-run to run as root; remove it".into());
            None
        }
        Some(o) => match nix::unistd::User::from_name(o) {
            Ok(Some(u)) => Some(u.uid),
            _ => {
                problems.push(format!("`owner = \"{o}\"`: no such user"));
                None
            }
        },
    };
    let group = match group {
        None => None,
        Some(_) if !root => {
            problems.push("`group` needs secret-run to run as root; remove it".into());
            None
        }
        Some(g) => match nix::unistd::Group::from_name(g) {
            Ok(Some(grp)) => Some(grp.gid),
            _ => {
                problems.push(format!("`group = \"{g}\"`: no such group"));
                None
            }
        },
    };
    if problems.is_empty() {
        Ok((owner, group))
    } else {
        Err(problems)
    }
}

fn read_template(file: &Path, deadline: std::time::Instant) -> Result<String, String> {
    use crate::fsread::{self, Accept};
    let bytes = fsread::read_path(file, Accept::Regular, MAX_TEMPLATE, deadline)
        .map_err(|e| format!("cannot read the template {}: {e}", file.display()))?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| format!("the template {} is not valid UTF-8", file.display()))
}

/// `a/./b` and `a/b` are one path.
fn normal(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// Where the run's private files go: `$XDG_RUNTIME_DIR/secret-run`, else `/dev/shm`, else the
/// system's temporary directory; one directory per run, named after the manifest (so that one
/// left by a killed run of the same manifest is found and removed) and the PID.
pub fn private_dir(manifest: &Path) -> PathBuf {
    let uid = nix::unistd::geteuid();
    let base = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("secret-run"),
        None if Path::new("/dev/shm").is_dir() => {
            PathBuf::from(format!("/dev/shm/secret-run-{uid}"))
        }
        None => std::env::temp_dir().join(format!("secret-run-{uid}")),
    };
    base.join(format!("{}-{}", manifest_id(manifest), std::process::id()))
}

/// A short, stable name for a manifest: FNV-1a of its absolute path.
fn manifest_id(manifest: &Path) -> String {
    let path = std::path::absolute(manifest).unwrap_or_else(|_| manifest.to_path_buf());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}
