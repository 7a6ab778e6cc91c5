//! Values delivered as files: each `as_file` entry's value, and each `[files]` table rendered.
//! Relative targets go into the run's private directory (0700, on a memory filesystem when one
//! is found: `$XDG_RUNTIME_DIR`, `/dev/shm`); absolute ones where they say. Every write is
//! atomic (a temporary file in the same directory, fsync, rename), so a reader never sees half a
//! file; a file whose content did not change is not touched. Everything written is removed when
//! secret-run exits, except with `--exec` (the command uses the files after secret-run is gone).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;
use secrecy::zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::manifest::deliver::PlannedContent;
use crate::manifest::plan::Plan;
use crate::resolve::{Outcome, ResolvedVar};

/// The files of one run.
#[derive(Debug)]
pub struct Files<'a> {
    plan: &'a Plan,
    dir_made: bool,
    /// Absolute targets written by this run, removed at exit.
    written: Vec<PathBuf>,
    keep: bool,
}

/// One file, rendered, not yet written.
struct Rendered {
    path: PathBuf,
    mode: u32,
    owner: Option<nix::unistd::Uid>,
    group: Option<nix::unistd::Gid>,
    bytes: Zeroizing<Vec<u8>>,
}

impl<'a> Files<'a> {
    /// Checks that every absolute target can be written, before any secret is fetched, and
    /// removes the private directories that killed runs of this manifest left behind.
    pub fn prepare(plan: &'a Plan) -> Result<Files<'a>> {
        let files = Files::inspect(plan)?;
        if plan.has_files() {
            remove_leftovers(&plan.private_dir);
        }
        Ok(files)
    }

    /// The files of `plan`, their targets checked, nothing written or removed: for `check`.
    pub fn inspect(plan: &'a Plan) -> Result<Files<'a>> {
        let files = Files {
            plan,
            dir_made: false,
            written: Vec::new(),
            keep: false,
        };
        for f in plan.files.iter().filter(|f| !f.private) {
            let parent = f.target.parent().unwrap_or(Path::new("/"));
            if !parent.is_dir() {
                return Err(Error::Write {
                    path: f.target.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("its directory {} does not exist", parent.display()),
                    ),
                });
            }
            if let Err(e) = nix::unistd::access(parent, nix::unistd::AccessFlags::W_OK) {
                return Err(Error::Write {
                    path: f.target.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!("its directory {} is not writable ({e})", parent.display()),
                    ),
                });
            }
        }
        Ok(files)
    }

    /// The variables that hold a file's path instead of a value.
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for v in self.plan.vars.iter().filter(|v| v.as_file.is_some()) {
            env.insert(
                v.name.to_string(),
                self.plan.file_of(&v.name).display().to_string(),
            );
        }
        for f in &self.plan.files {
            if let Some(name) = &f.env {
                env.insert(
                    name.to_string(),
                    self.target(&f.target, f.private).display().to_string(),
                );
            }
        }
        env
    }

    fn target(&self, path: &Path, private: bool) -> PathBuf {
        if private {
            self.plan.private_dir.join(path)
        } else {
            path.to_path_buf()
        }
    }

    /// Every file's content from `vars`, without writing anything: what `check` reports.
    pub fn render_all(
        &self,
        vars: &[ResolvedVar],
    ) -> Vec<(PathBuf, std::result::Result<usize, String>)> {
        self.render(vars)
            .into_iter()
            .map(|(path, r)| (path, r.map(|f| f.bytes.len())))
            .collect()
    }

    fn render(
        &self,
        vars: &[ResolvedVar],
    ) -> Vec<(PathBuf, std::result::Result<Rendered, String>)> {
        let plan = self.plan;
        let value_of = |name: &str| {
            vars.iter()
                .find(|v| v.name.as_str() == name)
                .and_then(ResolvedVar::value)
        };
        // Issuing endpoints `check` did not read: nothing to render from them, nothing wrong.
        let unissued = |name: &str| {
            vars.iter()
                .any(|v| v.name.as_str() == name && matches!(v.outcome, Outcome::Unissued))
        };
        let mut out = Vec::new();
        for v in plan.vars.iter() {
            let Some(mode) = v.as_file else { continue };
            if unissued(v.name.as_str()) {
                continue;
            }
            let path = plan.file_of(&v.name);
            let r = match value_of(v.name.as_str()) {
                Some(value) => Ok(Rendered {
                    path: path.clone(),
                    mode,
                    owner: v.owner,
                    group: v.group,
                    bytes: Zeroizing::new(value.expose_secret().as_bytes().to_vec()),
                }),
                None => Err(format!("`{}` has no value (optional and absent)", v.name)),
            };
            out.push((path, r));
        }
        // In a template, a file-delivered entry is its path, as in the child's environment.
        let env = self.env();
        let context: BTreeMap<String, Zeroizing<String>> = vars
            .iter()
            .filter_map(|v| {
                let shown = match env.get(v.name.as_str()) {
                    Some(path) => path.clone(),
                    None if matches!(v.outcome, Outcome::Unissued) => "(not issued)".to_owned(),
                    None => v.value()?.expose_secret().to_owned(),
                };
                Some((v.name.to_string(), Zeroizing::new(shown)))
            })
            .collect();
        for f in &plan.files {
            let path = self.target(&f.target, f.private);
            if matches!(&f.content, PlannedContent::Source(name) if unissued(name.as_str())) {
                continue;
            }
            let bytes = match &f.content {
                PlannedContent::Source(name) => value_of(name.as_str())
                    .map(|v| Zeroizing::new(v.expose_secret().as_bytes().to_vec()))
                    .ok_or_else(|| {
                        format!("`source = \"{name}\"` has no value (optional and absent)")
                    }),
                PlannedContent::Template { text, file } => crate::template::render(text, &context)
                    .map(|t| Zeroizing::new(t.as_bytes().to_vec()))
                    .map_err(|e| {
                        format!(
                            "{}{}: {}",
                            file.display(),
                            e.line.map(|l| format!(":{l}")).unwrap_or_default(),
                            e.message
                        )
                    }),
            };
            out.push((
                path.clone(),
                bytes.map(|bytes| Rendered {
                    path,
                    mode: f.mode,
                    owner: f.owner,
                    group: f.group,
                    bytes,
                }),
            ));
        }
        out
    }

    /// Writes every file whose content changed; how many were written. A file that cannot be
    /// rendered stops before anything is written.
    pub fn write(&mut self, vars: &[ResolvedVar]) -> Result<usize> {
        if !self.plan.has_files() {
            return Ok(0);
        }
        let mut rendered = Vec::new();
        for (path, r) in self.render(vars) {
            rendered.push(r.map_err(|reason| Error::Deliver { path, reason })?);
        }
        let private = |r: &Rendered| r.path.starts_with(&self.plan.private_dir);
        if !self.dir_made && rendered.iter().any(private) {
            // A file given to another owner must be reachable by it: the directory can then be
            // passed through (0711), never listed.
            let shared = rendered
                .iter()
                .any(|r| private(r) && (r.owner.is_some() || r.group.is_some()));
            make_private_dir(&self.plan.private_dir, if shared { 0o711 } else { 0o700 })?;
            self.dir_made = true;
        }
        let mut changed = 0;
        for r in rendered {
            if let Some(parent) = r.path.parent() {
                if r.path.starts_with(&self.plan.private_dir) && !parent.is_dir() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .map_err(|source| Error::Write {
                            path: parent.to_path_buf(),
                            source,
                        })?;
                }
            }
            if unchanged(&r.path, &r.bytes) {
                continue;
            }
            write_atomically(&r).map_err(|source| Error::Write {
                path: r.path.clone(),
                source,
            })?;
            changed += 1;
            if !r.path.starts_with(&self.plan.private_dir) && !self.written.contains(&r.path) {
                self.written.push(r.path.clone());
            }
        }
        tracing::debug!(changed, "files written");
        Ok(changed)
    }

    /// The files stay when secret-run ends (`--exec`).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Files<'_> {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for path in &self.written {
            let _ = std::fs::remove_file(path);
        }
        if self.dir_made {
            let _ = std::fs::remove_dir_all(&self.plan.private_dir);
        }
    }
}

fn make_private_dir(dir: &Path, mode: u32) -> Result<()> {
    let failed = |source| Error::Write {
        path: dir.to_path_buf(),
        source,
    };
    if let Some(base) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(base)
            .map_err(failed)?;
        if mode != 0o700 {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o711))
                .map_err(failed)?;
        }
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(failed)?;
    }
    if !on_memory_filesystem(dir) {
        tracing::warn!(
            dir = %dir.display(),
            "the private directory for secret files is not on a memory filesystem (tmpfs): the files reach a disk; set XDG_RUNTIME_DIR to a tmpfs"
        );
    }
    Ok(())
}

fn on_memory_filesystem(dir: &Path) -> bool {
    use nix::sys::statfs::{FsType, TMPFS_MAGIC, statfs};
    // ramfs has no constant in nix; its number is in linux/magic.h.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC || s.filesystem_type() == RAMFS_MAGIC)
}

/// Private directories of this manifest whose run has ended without removing them (SIGKILL).
fn remove_leftovers(dir: &Path) {
    let (Some(base), Some(name)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    let Some(id) = name
        .to_str()
        .and_then(|n| n.split_once('-'))
        .map(|(id, _)| id.to_owned())
    else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((their_id, pid)) = name.to_str().and_then(|n| n.split_once('-')) else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        let gone =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(nix::Error::ESRCH);
        if their_id == id && gone {
            tracing::info!(dir = %entry.path().display(), "removing the files of a run that was killed");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn unchanged(path: &Path, bytes: &[u8]) -> bool {
    match std::fs::read(path) {
        Ok(old) => {
            let same = old == bytes;
            drop(Zeroizing::new(old));
            same
        }
        Err(_) => false,
    }
}

fn write_atomically(r: &Rendered) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let dir = r.path.parent().unwrap_or(Path::new("."));
    let name = r
        .path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.secret-run-{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&temp)?;
    let result = (|| {
        file.write_all(&r.bytes)?;
        if r.owner.is_some() || r.group.is_some() {
            nix::unistd::fchown(file.as_fd(), r.owner, r.group)?;
        }
        // After the content and the owner: the mode says who may read it, umask aside.
        nix::sys::stat::fchmod(
            file.as_fd(),
            nix::sys::stat::Mode::from_bits_truncate(r.mode),
        )?;
        file.sync_all()?;
        std::fs::rename(&temp, &r.path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}
