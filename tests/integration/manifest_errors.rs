//! Bad input: every problem named with file, line and field (or variable, backend and path), the
//! documented exit code, and nothing run.

use crate::support::{Project, script};

#[test]
fn no_manifest_says_where_it_looked_and_what_to_do() {
    let p = Project::new();
    let run = p.run(&["--", "true"]);
    run.code(78)
        .stderr_has("no manifest found: looked for")
        .stderr_has("secrets.toml")
        .stderr_has("secret-run init");
    p.run_env(&["--", "true"], &[("SECRET_RUN_MANIFEST", "conf/app.toml")])
        .code(78)
        .stderr_has("conf/app.toml");
}

#[test]
fn toml_syntax_error_has_file_line_column() {
    let p = Project::with_manifest("[secrets]\nA = \"a\"\nB = \"unterminated\n");
    p.run(&["--", "true"])
        .code(78)
        .stderr_has("secrets.toml:3:");
}

#[test]
fn all_problems_of_one_manifest_at_once() {
    let p = Project::with_manifest(
        r#"default_backend = "local"

[backends.local]
kind = "dotenv"
pth = ".env"

[backends.vault2]
kind = "vualt"

[secrets]
1FOO = "a"
FOO-BAR = "b"
"A=B" = "c"
"" = "d"
GOOD = { path = "g", kye = "x" }
TYPO = { backend = "locl", path = "t" }
BOTH = { path = "x", optional = false, default = "d" }
EMPTY = ""
"#,
    );
    let run = p.run(&["--", "true"]);
    run.code(78)
        .stderr_has("secrets.toml:3:11: [backends.local]: unknown field `pth`, expected `path`")
        .stderr_has("secrets.toml:7:11: [backends.vault2]: unknown kind `vualt`")
        .stderr_has("kinds are: env, dotenv, file, command")
        .stderr_has("secrets.toml:11:1: secret `1FOO`: `1FOO` is not a valid variable name")
        .stderr_has("secrets.toml:12:1: secret `FOO-BAR`")
        .stderr_has("`-` is not allowed")
        .stderr_has("secrets.toml:13:1: secret `A=B`")
        .stderr_has("secrets.toml:14:1: secret ``: a variable name cannot be empty")
        .stderr_has("secrets.toml:15:1: secret `GOOD`: unknown field `kye`, expected one of `backend`, `path`, `key`, `version`, `optional`, `default`")
        .stderr_has("secrets.toml:17:1: secret `BOTH`: `default` makes a secret optional")
        .stderr_has("secrets.toml:18:1: secret `EMPTY`: `path` cannot be empty");
    // The typo in a backend name is found once the rest is valid, with a suggestion.
    let p = Project::with_manifest(
        "[backends.local]\nkind = \"dotenv\"\n[secrets]\nTYPO = { backend = \"locl\", path = \"t\" }\n",
    );
    p.run(&["--", "true"]).code(78).stderr_has(
        "secrets.toml:4:1: secret `TYPO`: backend `locl` does not exist (did you mean `local`?)",
    );
    p.run(&["--backend", "dotnev", "--", "true"])
        .code(78)
        .stderr_has("backend `dotnev` (from --backend or SECRET_BACKEND) does not exist (did you mean `dotenv`?)");
}

#[test]
fn unknown_top_level_field_lists_valid_ones() {
    let p = Project::with_manifest("defualt_backend = \"env\"\n");
    p.run(&["--", "true"])
        .code(78)
        .stderr_has("secrets.toml:1:1: unknown field `defualt_backend`, expected one of `name`, `default_backend`, `backends`, `secrets`, `env`");
}

#[test]
fn version_on_a_backend_without_versions() {
    let p = Project::with_manifest("[secrets]\nA = { path = \"a\", version = 3 }\n");
    p.run(&["--", "true"])
        .code(78)
        .stderr_has("secrets.toml:2:1: secret `A`: backend `dotenv`: kind dotenv has no versions; remove `version`");
}

#[test]
fn key_on_non_json_and_pointer_miss_list_field_names() {
    let p = Project::with_manifest(
        "[secrets]\nA = { path = \"plain\", key = \"user\" }\nB = { path = \"creds\", key = \"/primary/pass\" }\nC = { path = \"creds\", key = \"nope\" }\n",
    );
    p.write(".env", "PLAIN=\"not json at all\"\nCREDS='{\"user\":\"u\",\"primary\":{\"password\":\"p\",\"host\":\"h\"}}'\n");
    p.run(&["--", "true"])
        .code(65)
        .stderr_has("cannot resolve 3 secrets")
        .stderr_has("A (backend `dotenv`, path `plain`): `key = \"user\"` needs a JSON value, but the value is not JSON")
        .stderr_has("B (backend `dotenv`, path `creds`): no field `/primary/pass`; `/primary` has fields: password, host")
        .stderr_has("C (backend `dotenv`, path `creds`): no field `nope`; the value has fields: user, primary");
}

#[test]
fn nul_byte_non_utf8_and_oversized_values() {
    let p = Project::with_manifest(
        "[backends.m]\nkind = \"file\"\ndir = \"run\"\n[secrets]\nNUL = { backend = \"m\", path = \"nul\" }\nBIN = { backend = \"m\", path = \"bin\" }\nBIG = { backend = \"m\", path = \"big\" }\n",
    );
    p.write_bytes("run/nul", b"ab\0cd");
    p.write_bytes("run/bin", &[0x66, 0xff, 0xfe]);
    p.write("run/big", &"x".repeat(200_000));
    p.run(&["--", "true"])
        .code(65)
        .stderr_has("NUL (backend `m`, path `nul`): the value contains a NUL byte")
        .stderr_has("BIN (backend `m`, path `bin`): the value is not valid UTF-8")
        .stderr_has("BIG (backend `m`, path `big`):")
        .stderr_has("larger than the 131072 bytes");
}

#[test]
fn dotenv_missing_or_unparseable() {
    let p = Project::with_manifest("[secrets]\nA = \"a\"\nB = \"b\"\n");
    p.run(&["--", "true"])
        .code(65)
        .stderr_has("backend `dotenv`: cannot read .env file")
        .stderr_has("No such file")
        .stderr_has("needed by A, B");
    p.write(".env", "A=1\nB=\"unterminated secret-ish text\nC=3\n");
    let run = p.run(&["--", "true"]);
    run.code(65)
        .stderr_has("at line 2")
        .stderr_has("`B` opens a double quote that is never closed");
    assert!(!run.stderr.contains("secret-ish"), "{}", run.stderr);
}

#[test]
fn an_unused_backend_does_not_need_its_environment() {
    // A production backend with {env} in its prefix does not stop a laptop run on dotenv.
    let p = Project::with_manifest(
        "default_backend = \"prod\"\n[backends.prod]\nkind = \"file\"\ndir = \"/run/secrets\"\nprefix = \"{env}/\"\n[secrets]\nA = \"a\"\n",
    );
    p.write(".env", "A=1\n");
    p.run_env(&["--", "true"], &[("SECRET_BACKEND", "dotenv")])
        .code(0);
}

#[test]
fn nothing_runs_when_the_manifest_is_invalid() {
    let p = Project::with_manifest("[secrets]\n1BAD = \"x\"\n");
    script(&p, "cmd.sh", "touch ran");
    p.run(&["--", "./cmd.sh"]).code(78);
    assert!(!p.path("ran").exists());
}

#[test]
fn max_concurrent_restarts_needs_a_vault_backend_and_at_least_one_slot() {
    for (slots, needle) in [
        (
            "{ n = 0, vault = \"vault\", path = \"l\" }",
            "`n` must be at least 1",
        ),
        (
            "{ n = 1, vault = \"dotenv\", path = \"l\" }",
            "is of kind dotenv",
        ),
        (
            "{ n = 1, vault = \"vualt\", path = \"l\" }",
            "backend `vualt` does not exist",
        ),
    ] {
        let p = crate::support::Project::with_manifest(&format!(
            "[backends.vault]\nkind = \"vault\"\naddress = \"http://127.0.0.1:1\"\n[secrets]\nA = \"a\"\n[run]\nmax_concurrent_restarts = {slots}\n"
        ));
        p.write(".env", "A=1\n");
        p.run(&["--", "true"]).code(78).stderr_has(needle);
    }
}
