//! `secret-run init`: write a starter manifest from the embedded template and, with
//! `--from-dotenv`, turn an existing `.env` into manifest entries plus a `.env.template` holding
//! the names only: the first step of moving a service off `.env`. Values are never written.

use std::path::{Path, PathBuf};

use crate::backend::{Context, dotenv};
use crate::error::{Error, Result};
use crate::output::warn_line;
use crate::secret::EnvName;

const TEMPLATE: &str = include_str!("../../templates/secrets.toml");
const TEMPLATE_FILE: &str = ".env.template";

pub fn run(
    manifest: &Path,
    from_dotenv: Option<&Path>,
    force: bool,
    deadline: std::time::Instant,
) -> Result<u8> {
    let dir = match manifest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (backends, secrets, template) = match from_dotenv {
        None => (
            String::new(),
            "DATABASE_URL = \"database/url\"\n".to_owned(),
            None,
        ),
        Some(file) => from_env_file(file, &dir, deadline)?,
    };
    let template_path = dir.join(TEMPLATE_FILE);
    // Refuse before writing anything, so that a refusal changes nothing.
    if !force {
        for path in
            std::iter::once(manifest).chain(template.as_ref().map(|_| template_path.as_path()))
        {
            // A symlink counts, dangling or not: it is never written through.
            if path.symlink_metadata().is_ok() {
                return Err(Error::AlreadyExists(path.to_path_buf()));
            }
        }
    }
    let text = TEMPLATE
        .replace("{{backends}}\n", &backends)
        .replace("{{secrets}}\n", &secrets);
    write(manifest, &text, force)?;
    warn_line(&format!("secret-run: wrote {}", manifest.display()));
    if let Some(names) = template {
        write(&template_path, &names, force)?;
        warn_line(&format!(
            "secret-run: wrote {} (names only, no values)",
            template_path.display()
        ));
    }
    Ok(0)
}

/// Writes a new file, never through a symlink: without `force` the name must be free
/// (O_EXCL); with it, a file written beside it replaces the name (a symlink itself, not what
/// it points to).
fn write(path: &Path, text: &str, force: bool) -> Result<()> {
    use std::io::Write;
    let failed = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let create = |at: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(at)
            .and_then(|mut f| f.write_all(text.as_bytes()))
    };
    if !force {
        return create(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::AlreadyExists(path.to_path_buf())
            } else {
                failed(e)
            }
        });
    }
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".secret-run-{}", std::process::id()));
    let temp = PathBuf::from(temp);
    create(&temp)
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            failed(e)
        })
}

/// Entries for every key of `file` (each with a path that reads that very key back, see
/// `path_for`), and the text of `.env.template`.
fn from_env_file(
    file: &Path,
    dir: &Path,
    deadline: std::time::Instant,
) -> Result<(String, String, Option<String>)> {
    let reader = dotenv::DotenvBackend::new(
        &dotenv::Config {
            path: Some(file.to_path_buf()),
        },
        &Context {
            base_dir: PathBuf::from("."),
            issue: false,
            env_name: None,
        },
    );
    let entries = reader
        .read_ordered(deadline)
        .map_err(|e| Error::Init(format!("cannot use {}: {e}", file.display())))?;
    let mut names: Vec<String> = Vec::new();
    for (name, _value) in entries {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let invalid: Vec<String> = names
        .iter()
        .filter_map(|n| EnvName::parse(n).err().map(|e| e.to_string()))
        .collect();
    if !invalid.is_empty() {
        return Err(Error::Init(format!(
            "{} has keys that cannot be environment variables (nothing was written):\n  {}",
            file.display(),
            invalid.join("\n  ")
        )));
    }
    let mut secrets = String::new();
    let mut template = String::from(
        "# The variables this service needs; values come from the backends in secrets.toml.\n\
         # Copy to .env and fill in for local development. Never commit the copy.\n",
    );
    for name in &names {
        secrets.push_str(&format!("{name} = \"{}\"\n", path_for(name, &names)));
        template.push_str(&format!("{name}=\n"));
    }
    // The built-in `dotenv` backend reads `.env` beside the manifest; point it elsewhere if needed.
    let beside = dir.join(".env");
    let same = matches!((file.canonicalize(), beside.canonicalize()), (Ok(a), Ok(b)) if a == b);
    let backends = if same {
        String::new()
    } else {
        let path = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        format!(
            "\n[backends.dotenv]\nkind = \"dotenv\"\npath = {}\n",
            toml_string(&path.display().to_string())
        )
    };
    Ok((backends, secrets, Some(template)))
}

/// The path that reads `key` back from its file: the key in lower case when the built-in rule
/// maps that back to the key and no other key is spelled so; otherwise the key itself, which
/// the `dotenv` backend looks up as it is (`db_password`, `Api_Key`).
fn path_for(key: &str, keys: &[String]) -> String {
    let lower = key.to_ascii_lowercase();
    if crate::secret::path_to_var(&lower) == key && !keys.contains(&lower) {
        lower
    } else {
        key.to_owned()
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}
