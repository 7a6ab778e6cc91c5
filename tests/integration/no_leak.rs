//! No value ever reaches secret-run's own output: every command and failure path runs at trace
//! level with canary values, and no canary may appear on stderr (secret-run's) or on stdout where
//! stdout is secret-run's (`check`, `init`, failures before the child starts).

use crate::support::{CANARIES, Project, script};

const TRACE: &[(&str, &str)] = &[("RUST_LOG", "trace")];

fn canary_project() -> Project {
    let p = Project::new();
    p.write(
        ".env",
        &format!(
            "DOTENV_SECRET={}\nJSON_SECRET='{{\"user\":\"{}\",\"nested\":{{\"pw\":\"{}\"}}}}'\n",
            CANARIES[0], CANARIES[4], CANARIES[4]
        ),
    );
    p.write("run/file_secret", &format!("{}\n", CANARIES[1]));
    script(&p, "bin/provider", &format!("echo {}", CANARIES[3]));
    // Prints the canary on stdout, then fails or hangs: the value must not be echoed in the error.
    script(
        &p,
        "bin/fails-after-print",
        &format!("echo {}; echo 'provider says no' >&2; exit 2", CANARIES[3]),
    );
    script(
        &p,
        "bin/hangs-after-print",
        &format!("echo {}; exec sleep 30", CANARIES[3]),
    );
    p
}

const GOOD: &str = r#"
[backends.m]
kind = "file"
dir = "run"
[backends.cmd]
kind = "command"
argv = ["./bin/provider"]
[secrets]
DOTENV_SECRET = "dotenv/secret"
JSON_USER = { path = "json/secret", key = "user" }
JSON_PW = { path = "json/secret", key = "/nested/pw" }
FILE_SECRET = { backend = "m", path = "file_secret" }
ENV_SECRET = { backend = "env", path = "env/secret" }
CMD_SECRET = { backend = "cmd", path = "anything" }
WITH_DEFAULT = { path = "absent", default = "CANARY-default-3b9f11" }
"#;

fn run(p: &Project, args: &[&str]) -> crate::support::Run {
    let mut env = TRACE.to_vec();
    env.push(("ENV_SECRET", CANARIES[2]));
    let mut full = vec!["-vvv"];
    full.extend_from_slice(args);
    p.run_env(&full, &env)
}

#[test]
fn successful_paths_never_print_a_value() {
    let p = canary_project();
    p.write("secrets.toml", GOOD);
    let r = run(&p, &["check"]);
    r.code(0).no_canary(true);
    assert!(
        r.stderr.contains("TRACE") || r.stderr.contains("DEBUG"),
        "trace logging is on: {}",
        r.stderr
    );
    run(&p, &["check", "--json"]).code(0).no_canary(true);
    run(&p, &["--", "true"]).code(0).no_canary(true);
    run(&p, &["--exec", "--", "true"]).code(0).no_canary(true);
    // The child sees the values (proof the canaries were really resolved) on its stdout.
    let r = run(
        &p,
        &[
            "--",
            "sh",
            "-c",
            "echo \"$FILE_SECRET $CMD_SECRET $JSON_PW $WITH_DEFAULT\"",
        ],
    );
    r.code(0).no_canary(false);
    assert_eq!(
        r.stdout.trim(),
        format!(
            "{} {} {} {}",
            CANARIES[1], CANARIES[3], CANARIES[4], CANARIES[5]
        )
    );
    run(&p, &["--", "no-such-command"])
        .code(127)
        .no_canary(true);
}

#[test]
fn failure_paths_never_print_a_value() {
    let p = canary_project();
    let cases: &[(&str, i32)] = &[
        // key on a value that is not JSON
        (
            "[secrets]\nX = { path = \"dotenv/secret\", key = \"user\" }\n",
            65,
        ),
        // pointer and field misses on JSON holding canaries
        (
            "[secrets]\nX = { path = \"json/secret\", key = \"/nested/nope\" }\nY = { path = \"json/secret\", key = \"nope\" }\n",
            65,
        ),
        // a field that is an object is fine, a missing one lists names only
        (
            "[secrets]\nX = { path = \"json/secret\", key = \"/user/deeper\" }\n",
            65,
        ),
        // provider that printed the value then failed, and one that hangs after printing
        (
            "[backends.f]\nkind = \"command\"\nargv = [\"./bin/fails-after-print\"]\n[secrets]\nX = { backend = \"f\", path = \"p\" }\n",
            69,
        ),
        (
            "[backends.h]\nkind = \"command\"\nargv = [\"./bin/hangs-after-print\"]\ntimeout = \"200ms\"\n[secrets]\nX = { backend = \"h\", path = \"p\" }\n",
            69,
        ),
        // config errors around secrets
        (
            "[secrets]\nX = { path = \"dotenv/secret\", kye = \"x\" }\n",
            78,
        ),
    ];
    for (manifest, code) in cases {
        p.write("secrets.toml", manifest);
        for args in [
            &["--", "true"][..],
            &["--exec", "--", "true"],
            &["check"],
            &["check", "--json"],
        ] {
            run(&p, args).code(*code).no_canary(true);
        }
    }

    // Values the environment cannot hold: NUL byte, not UTF-8, too long; all carry a canary.
    p.write_bytes("run/nul", format!("{}\0tail", CANARIES[1]).as_bytes());
    p.write_bytes("run/bin", &[CANARIES[1].as_bytes(), &[0xff]].concat());
    p.write("run/big", &CANARIES[1].repeat(20_000));
    p.write(
        "secrets.toml",
        "[backends.m]\nkind = \"file\"\ndir = \"run\"\n[secrets]\nA = { backend = \"m\", path = \"nul\" }\nB = { backend = \"m\", path = \"bin\" }\nC = { backend = \"m\", path = \"big\" }\n",
    );
    run(&p, &["--", "true"]).code(65).no_canary(true);
    run(&p, &["check", "--json"]).code(65).no_canary(true);

    // A .env that does not parse, on a line holding a canary.
    p.write(".env", &format!("A=1\nB=\"{} unterminated\n", CANARIES[0]));
    p.write("secrets.toml", "[secrets]\nA = \"a\"\n");
    run(&p, &["--", "true"]).code(65).no_canary(true);
    run(&p, &["init", "--from-dotenv", ".env", "-f", "new.toml"])
        .code(78)
        .no_canary(true);
}

#[test]
fn init_from_dotenv_never_prints_or_writes_a_value() {
    let p = canary_project();
    let r = run(&p, &["init", "--from-dotenv", ".env"]);
    r.code(0).no_canary(true);
    for file in ["secrets.toml", ".env.template"] {
        let text = std::fs::read_to_string(p.path(file)).unwrap();
        assert!(
            !CANARIES.iter().any(|c| text.contains(c)),
            "{file} holds a value:\n{text}"
        );
    }
}
