//! `check` (the dry run and CI gate) and `init` (the way off `.env`).

use crate::support::Project;

#[test]
fn check_reports_every_variable_without_values() {
    let p = Project::with_manifest(
        "[secrets]\nA = \"a\"\nB = { path = \"b\", key = \"k\" }\nC = { path = \"c\", optional = true }\nD = { path = \"d\", default = \"dflt\" }\n",
    );
    p.write(".env", "A=value-a-123\nB='{\"k\":\"value-b-456\"}'\n");
    let run = p.run(&["check"]);
    run.code(0)
        .stdout_has("VARIABLE")
        .stdout_has("A         dotenv   a      ok")
        .stdout_has("B         dotenv   b [k]  ok")
        .stdout_has("absent")
        .stdout_has("default");
    assert_eq!(run.stdout.lines().count(), 5);
    assert!(
        !run.stdout.contains("value-a-123")
            && !run.stdout.contains("value-b-456")
            && !run.stdout.contains("dflt")
    );
}

#[test]
fn check_fails_listing_every_missing_secret() {
    let p = Project::with_manifest("[secrets]\nA = \"a\"\nB = \"b\"\nC = \"c\"\nD = \"d\"\n");
    p.write(".env", "A=1\n");
    let run = p.run(&["check"]);
    run.code(65).stderr_has("3 of 4 secrets did not resolve");
    for v in ["B", "C", "D"] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with(v) && l.contains("missing")),
            "{}",
            run.stdout
        );
    }
}

#[test]
fn check_json_is_machine_readable() {
    let p = Project::with_manifest(
        "[secrets]\nA = \"a\"\nB = { path = \"b\", optional = true }\nC = \"c\"\n",
    );
    p.write(".env", "A=secret-value\n");
    let run = p.run(&["check", "--json"]);
    run.code(65);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).expect("valid JSON");
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["exit_code"], 65);
    let statuses: Vec<(&str, &str)> = doc["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses, [("A", "ok"), ("B", "absent"), ("C", "missing")]);
    assert!(!run.stdout.contains("secret-value"));
}

#[test]
fn check_needs_no_command_and_reports_config_errors() {
    let p = Project::with_manifest("[secrets]\nA = { paht = \"a\" }\n");
    p.run(&["check"]).code(78).stderr_has("secrets.toml:2:1");
}

#[test]
fn init_writes_a_starter_that_parses() {
    let p = Project::new();
    p.run(&["init"]).code(0);
    let text = std::fs::read_to_string(p.path("secrets.toml")).unwrap();
    assert!(text.contains("[secrets]"));
    // It is a valid manifest: check finds the one example entry missing (65), not invalid (78).
    p.run(&["check"]).code(65).stderr_has("1 of 1 secrets");
    p.run(&["init"]).code(73);
    p.run(&["init", "--force"]).code(0);
}

#[test]
fn init_from_dotenv_moves_a_service_off_dotenv() {
    let p = Project::new();
    p.write(
        ".env",
        "# comment\nDATABASE_URL=postgres://u:sup3r-s3cret@h/db\nexport STRIPE_API_KEY=\"sk_live_abcdef\"\nMULTI=\"line1\nline2\"\n",
    );
    p.run(&["init", "--from-dotenv", ".env"]).code(0);
    let manifest = std::fs::read_to_string(p.path("secrets.toml")).unwrap();
    let template = std::fs::read_to_string(p.path(".env.template")).unwrap();
    for text in [&manifest, &template] {
        for value in ["sup3r-s3cret", "sk_live_abcdef", "line1", "line2"] {
            assert!(!text.contains(value), "a value was written:\n{text}");
        }
    }
    assert!(manifest.contains("DATABASE_URL = \"database_url\""));
    assert!(manifest.contains("STRIPE_API_KEY = \"stripe_api_key\""));
    assert!(template.lines().any(|l| l == "DATABASE_URL="));
    assert!(template.lines().any(|l| l == "MULTI="));
    // The generated manifest runs unchanged on the same .env.
    let run = p.run(&["--", "sh", "-c", "printf %s \"$STRIPE_API_KEY\""]);
    run.code(0);
    assert_eq!(run.stdout, "sk_live_abcdef");
}

#[test]
fn init_from_another_dotenv_points_the_builtin_at_it() {
    let p = Project::new();
    p.write("config/dev.env", "API_TOKEN=t0k\n");
    p.run(&["init", "--from-dotenv", "config/dev.env"]).code(0);
    let run = p.run(&["--", "sh", "-c", "printf %s \"$API_TOKEN\""]);
    run.code(0);
    assert_eq!(run.stdout, "t0k");
}

#[test]
fn init_refuses_bad_dotenv_and_existing_files_changing_nothing() {
    let p = Project::new();
    p.write(".env", "GOOD=1\nbad.key=2\n");
    p.run(&["init", "--from-dotenv", ".env"])
        .code(78)
        .stderr_has("`bad.key` is not a valid variable name");
    assert!(!p.path("secrets.toml").exists() && !p.path(".env.template").exists());

    p.write(".env", "GOOD=1\n");
    p.write(".env.template", "keep me\n");
    p.run(&["init", "--from-dotenv", ".env"])
        .code(73)
        .stderr_has(".env.template already exists");
    assert!(
        !p.path("secrets.toml").exists(),
        "nothing is written when one file is refused"
    );
    assert_eq!(
        std::fs::read_to_string(p.path(".env.template")).unwrap(),
        "keep me\n"
    );
    p.run(&["init", "--from-dotenv", "missing.env"])
        .code(78)
        .stderr_has("missing.env");
}

// The example declares Vault and AWS backends.
#[cfg(all(feature = "vault", feature = "aws"))]
#[test]
fn example_manifest_is_valid() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/secrets.toml.example"))
            .unwrap();
    let manifest = secret_run::manifest::parse(secret_run::manifest::Source {
        path: "secrets.toml.example".into(),
        text,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = manifest.backends.iter().map(|b| b.name.clone()).collect();
    assert!(
        names.len() >= 3,
        "the example shows several backends: {names:?}"
    );
    // Every declared backend can serve the whole manifest (only the backend changes per environment).
    for name in names.iter().map(String::as_str).chain(["env", "dotenv"]) {
        let manifest = secret_run::manifest::parse(secret_run::manifest::Source {
            path: "secrets.toml.example".into(),
            text: std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/secrets.toml.example"
            ))
            .unwrap(),
        })
        .unwrap();
        let opts = secret_run::manifest::plan::PlanOptions {
            backend_override: Some(name.to_owned()),
            env_name: Some("prod".into()),
            ..Default::default()
        };
        if let Err(e) = secret_run::manifest::plan::build(manifest, &opts) {
            panic!("with backend {name}: {e}");
        }
    }
}
