//! The layers of docs/architecture.md, enforced: a module of the library names only modules of
//! lower layers (`crate::…`), so that the flow argv → manifest → plan → resolve → launch → audit
//! has no way back and no cycle. A new module gets a row here and in the docs.

use std::collections::BTreeMap;
use std::path::Path;

/// Bottom to top; the same table as docs/architecture.md.
const LAYERS: &[&[&str]] = &[
    &["code", "output"],
    &["secret"],
    &["failure"],
    &["error"],
    &[
        "duration",
        "fsread",
        "interrupt",
        "protect",
        "logging",
        "template",
    ],
    &["backend"],
    &["manifest"],
    &["resolve"],
    &["audit", "cache", "redact"],
    &["launch"],
    &["cli"],
    &["app"],
];

/// Test-only modules, which may look at anything.
const TEST_ONLY: &[&str] = &["fuzz"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Every `crate::name` a file's code mentions (comments left out).
fn imports(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let text = code.as_str();
    text.match_indices("crate::")
        .map(|(i, m)| {
            text[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .filter(|name: &String| !name.is_empty())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_names_a_module_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if matches!(module.as_str(), "lib" | "main") || TEST_ONLY.contains(&module.as_str()) {
            continue;
        }
        let Some(mine) = layer_of(&module) else {
            panic!("src/{module} is in no layer: add it to LAYERS and docs/architecture.md");
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for name in imports(&text) {
            if name == module {
                continue;
            }
            let theirs = layer_of(&name)
                .unwrap_or_else(|| panic!("{} names crate::{name}, in no layer", rel.display()));
            if theirs >= mine {
                wrong
                    .entry(rel.display().to_string())
                    .or_default()
                    .push(name);
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "modules naming a module of their own layer or above: {wrong:#?}"
    );
}
