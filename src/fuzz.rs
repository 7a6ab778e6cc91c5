//! Fuzzing the two parsers that read what users (and attackers) write: the manifest and `.env`.
//! Property tests on the stable toolchain (proptest): arbitrary text and mutations of the
//! committed corpus (`tests/corpus/`) must give a value or a located error, never a panic or a
//! hang; quoted values must come back exactly as written. CI runs them for a bounded number of
//! cases (`SECRET_RUN_FUZZ_CASES`, default 2000); a failure's seed is kept by proptest in
//! `proptest-regressions/`, which is committed.

use proptest::prelude::*;
use secrecy::ExposeSecret;

use crate::backend::dotenv::parse;

fn cases() -> u32 {
    std::env::var("SECRET_RUN_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
}

const MANIFESTS: &[&str] = &[
    include_str!("../tests/corpus/manifests/example.toml"),
    include_str!("../tests/corpus/manifests/quickstart.toml"),
    include_str!("../tests/corpus/manifests/edge.toml"),
];

fn dotenv_seeds() -> Vec<String> {
    let corpus: serde_json::Value =
        serde_json::from_str(include_str!("../tests/corpus/dotenv.json")).unwrap_or_default();
    corpus
        .as_array()
        .map(|cases| {
            cases
                .iter()
                .filter_map(|c| c["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Text rich in what the parsers treat specially.
fn tricky_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(vec![
                "$", "$$", "${", "}", ":-", ":?", ":+", "-", "?", "+", "'", "\"", "\\", "#", "=",
                "\n", "\r\n", " ", "\t", "export ", "A", "B_1", "x", "\u{feff}", "\u{1b}", "\0",
                "[", "]", "[secrets]", "[backends.b]", "kind = ", "path", "{env}", "é",
            ])
            .prop_map(str::to_owned),
            1 => any::<char>().prop_map(String::from),
        ],
        0..60,
    )
    .prop_map(|parts| parts.concat())
}

/// A seed with a few bytes replaced, inserted or removed (on char boundaries).
fn mutated(seeds: Vec<String>) -> impl Strategy<Value = String> {
    (
        prop::sample::select(seeds),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, tricky_text()), 1..4),
    )
        .prop_map(|(seed, edits)| {
            let mut text: Vec<char> = seed.chars().collect();
            for (at, op, insert) in edits {
                let i = if text.is_empty() {
                    0
                } else {
                    at.index(text.len())
                };
                match op {
                    0 if !text.is_empty() => {
                        text.remove(i);
                    }
                    1 if !text.is_empty() => text[i] = insert.chars().next().unwrap_or('$'),
                    _ => {
                        for (k, c) in insert.chars().enumerate() {
                            text.insert(i + k, c);
                        }
                    }
                }
            }
            text.into_iter().collect()
        })
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse_manifest(text: String) {
    let _ = crate::manifest::parse(crate::manifest::Source {
        path: "fuzz.toml".into(),
        text,
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn dotenv_never_panics_on_any_text(text in tricky_text()) {
        if let Err(e) = parse::parse(&text, &no_env) {
            prop_assert!(e.line >= 1 && e.line <= text.lines().count().max(1) + 1);
        }
    }

    #[test]
    fn dotenv_never_panics_on_mutated_corpus(text in mutated(dotenv_seeds())) {
        let _ = parse::parse(&text, &no_env);
    }

    #[test]
    fn quoted_values_come_back_as_written(value in "\\PC*", single in any::<bool>()) {
        let quoted = if single {
            format!("'{}'", value.replace('\'', "\\'"))
        } else {
            let mut q = String::from("\"");
            for c in value.chars() {
                match c {
                    '\\' | '"' | '$' => { q.push('\\'); q.push(c); }
                    c => q.push(c),
                }
            }
            q.push('"');
            q
        };
        // Single quotes take `\'` as their only escape: a value ending in `\` is ambiguous.
        prop_assume!(!(single && value.contains('\\')));
        let parsed = parse::parse(&format!("K={quoted}\n"), &no_env);
        prop_assert!(parsed.is_ok(), "{:?}", parsed.err());
        let entries = parsed.unwrap_or_default();
        prop_assert_eq!(entries.len(), 1);
        prop_assert_eq!(entries[0].1.expose_secret(), value.as_str());
    }

    #[test]
    fn manifest_never_panics_on_any_text(text in tricky_text()) {
        parse_manifest(text);
    }

    #[test]
    fn manifest_never_panics_on_mutated_corpus(
        text in mutated(MANIFESTS.iter().map(|m| (*m).to_owned()).collect())
    ) {
        parse_manifest(text);
    }
}
