//! The aws-secrets-manager and aws-ssm backends against a real moto server: plain, JSON and binary
//! secrets, stages and version ids, batching (with the API calls counted), Parameter Store types
//! and versions, and the failures (missing, wrong region, no credentials, unreachable, denied).

use std::time::{Duration, Instant};

use crate::moto::{self, Moto};
use crate::support::{Project, Run, child_env};

/// The moto environment, with some variables replaced (an empty value removes one).
fn env<'a>(m: &'a Moto, changes: &[(&'a str, &'a str)]) -> Vec<(&'a str, String)> {
    let mut env: Vec<(&str, String)> = m
        .env()
        .into_iter()
        .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
        .collect();
    env.extend(
        changes
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (*k, (*v).to_owned())),
    );
    env
}

fn as_refs<'a>(env: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn run(p: &Project, args: &[&str], env: &[(&str, String)]) -> Run {
    p.run_env(args, &as_refs(env))
}

#[test]
fn plain_json_pointer_binary_and_prefix_with_env() {
    let m = moto::shared();
    m.py(r#"
sm.create_secret(Name='/t-sm/dev/plain', SecretString='CANARY-aws-plain-0c1d')
sm.create_secret(Name='/t-sm/dev/alpaca', SecretString=json.dumps({'api_key_id': 'CANARY-aws-json-3e4f', 'primary': {'password': 'pw-5a6b', 'port': 5432}, 'nested': json.dumps({'x': 'inner'})}))
sm.create_secret(Name='/t-sm/dev/bin-text', SecretBinary=b'binary but text')
sm.create_secret(Name='/t-sm/dev/bin-raw', SecretBinary=b'\xff\x00\xfe')
"#);
    let manifest = |extra: &str, secrets: &str| {
        Project::with_manifest(&format!(
            "[backends.aws]\nkind = \"aws-secrets-manager\"\nprefix = \"/t-sm/{{env}}/\"\n{extra}\n[secrets]\n{secrets}"
        ))
    };
    let p = manifest(
        "",
        r#"PLAIN = { backend = "aws", path = "plain" }
API_KEY_ID = { backend = "aws", path = "alpaca", key = "api_key_id" }
DB_PASSWORD = { backend = "aws", path = "alpaca", key = "/primary/password" }
DB_PORT = { backend = "aws", path = "alpaca", key = "/primary/port" }
INNER = { backend = "aws", path = "alpaca", key = "/nested/x" }
BIN = { backend = "aws", path = "bin-text" }
"#,
    );
    let e = env(m, &[]);
    let child = child_env(&p, &["--env", "dev"], &as_refs(&e));
    assert_eq!(child["PLAIN"], "CANARY-aws-plain-0c1d");
    assert_eq!(child["API_KEY_ID"], "CANARY-aws-json-3e4f");
    assert_eq!(child["DB_PASSWORD"], "pw-5a6b");
    assert_eq!(child["DB_PORT"], "5432");
    assert_eq!(child["INNER"], "inner");
    assert_eq!(child["BIN"], "binary but text");
    // AWS credentials stay with the child by default: services make their own AWS calls.
    assert_eq!(child["AWS_ACCESS_KEY_ID"], "testing");

    // check: the version id and stages, never a value, at trace level too.
    let r = run(&p, &["-vvv", "--env", "dev", "check"], &e);
    r.code(0).no_canary(true);
    r.stdout_has("stages AWSCURRENT");
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("PLAIN") && l.contains("(version ") && l.contains('-')),
        "{}",
        r.stdout
    );

    // At trace level (RUST_LOG too), the SDK's request dumps stay capped: no session token.
    let e_token = env(m, &[("AWS_SESSION_TOKEN", "CANARY-session-token-b7c8")]);
    run(&p, &["-vvv", "--env", "dev", "--", "true"], &e_token)
        .code(0)
        .no_canary(true);
    // However RUST_LOG spells trace: upper case, a number, per module, per span.
    for spelling in [
        "trace",
        "TRACE",
        "5",
        "aws_sigv4::sign=trace,aws_smithy_runtime=TRACE",
        "[{x}]=trace,trace",
        "off,aws_smithy_runtime_api=trace,aws_smithy_http_client=trace,hyper=trace",
    ] {
        let e_rust_log = env(
            m,
            &[
                ("AWS_SESSION_TOKEN", "CANARY-session-token-b7c8"),
                ("RUST_LOG", spelling),
            ],
        );
        run(&p, &["--env", "dev", "--", "true"], &e_rust_log)
            .code(0)
            .no_canary(true);
    }

    // Binary that is not UTF-8: an error that says what to do, or base64 when asked.
    let secret = r#"RAW = { backend = "aws", path = "bin-raw" }"#;
    run(&manifest("", secret), &["--env", "dev", "--", "true"], &e)
        .code(65)
        .stderr_has("is binary and is not valid UTF-8")
        .stderr_has("encoding = \"base64\"");
    let child = child_env(
        &manifest("encoding = \"base64\"", secret),
        &["--env", "dev"],
        &as_refs(&e),
    );
    assert_eq!(child["RAW"], "/wD+");

    // [env].remove drops the AWS credentials when wanted.
    let p = Project::with_manifest(
        "[backends.aws]\nkind = \"aws-secrets-manager\"\n[env]\nremove = [\"AWS_ACCESS_KEY_ID\", \"AWS_SECRET_ACCESS_KEY\"]\n[secrets]\nPLAIN = { backend = \"aws\", path = \"/t-sm/dev/plain\" }\n",
    );
    let child = child_env(&p, &[], &as_refs(&e));
    assert!(
        !child.contains_key("AWS_ACCESS_KEY_ID") && !child.contains_key("AWS_SECRET_ACCESS_KEY")
    );
}

#[test]
fn stages_and_version_ids() {
    let m = moto::shared();
    let old_id = m.py(r#"
r = sm.create_secret(Name='t-stage/db', SecretString=json.dumps({'password': 'old-pw'}))
sm.put_secret_value(SecretId='t-stage/db', SecretString=json.dumps({'password': 'new-pw'}))
print(r['VersionId'])
"#);
    let old_id = old_id.trim();
    let p = Project::with_manifest(&format!(
        r#"[backends.aws]
kind = "aws-secrets-manager"
[secrets]
NOW = {{ backend = "aws", path = "t-stage/db", key = "password" }}
CURRENT = {{ backend = "aws", path = "t-stage/db", key = "password", version = "AWSCURRENT" }}
PREVIOUS = {{ backend = "aws", path = "t-stage/db", key = "password", version = "AWSPREVIOUS" }}
BY_ID = {{ backend = "aws", path = "t-stage/db", key = "password", version = "{old_id}" }}
"#
    ));
    let e = env(m, &[]);
    let child = child_env(&p, &[], &as_refs(&e));
    assert_eq!(child["NOW"], "new-pw");
    assert_eq!(child["CURRENT"], "new-pw");
    assert_eq!(child["PREVIOUS"], "old-pw");
    assert_eq!(child["BY_ID"], "old-pw");
    run(&p, &["check"], &e)
        .code(0)
        .stdout_has(&format!("(version {old_id}, stages AWSPREVIOUS"));

    let p = Project::with_manifest(
        "[backends.aws]\nkind = \"aws-secrets-manager\"\n[secrets]\nX = { backend = \"aws\", path = \"t-stage/db\", version = \"NOSUCHSTAGE\" }\n",
    );
    run(&p, &["--", "true"], &e)
        .code(65)
        .stderr_has("with version `NOSUCHSTAGE`");
}

/// The API calls the run made, from the call counter's debug lines.
fn api_calls(r: &Run, operation: &str) -> usize {
    r.stderr
        .lines()
        .filter(|l| l.contains("AWS API call") && l.contains(&format!("operation=\"{operation}\"")))
        .count()
}

#[test]
fn thirty_secrets_take_two_batch_calls() {
    let m = moto::shared();
    m.py("for i in range(30):\n    sm.create_secret(Name=f't-batch/s{i:02d}', SecretString=f'batch-value-{i:02d}')\n");
    let mut manifest = String::from(
        "[backends.aws]\nkind = \"aws-secrets-manager\"\nprefix = \"t-batch/\"\n[secrets]\n",
    );
    for i in 0..30 {
        manifest.push_str(&format!(
            "S{i:02} = {{ backend = \"aws\", path = \"s{i:02}\" }}\n"
        ));
    }
    // Two variables reading one secret cost one fetch.
    manifest.push_str("AGAIN = { backend = \"aws\", path = \"s00\" }\n");
    let p = Project::with_manifest(&manifest);
    let e = env(m, &[]);
    let r = run(
        &p,
        &[
            "-vv",
            "--",
            "sh",
            "-c",
            "env | grep -c '^S[0-9][0-9]=batch-value-'; echo \"$AGAIN\"",
        ],
        &e,
    );
    r.code(0).stdout_has("30\nbatch-value-00");
    assert_eq!(api_calls(&r, "BatchGetSecretValue"), 2, "{}", r.stderr);
    assert_eq!(api_calls(&r, "GetSecretValue"), 0, "{}", r.stderr);
}

#[test]
fn parameter_store_types_versions_and_labels() {
    let m = moto::shared();
    m.py(r#"
ssm.put_parameter(Name='/t-ssm/dev/redis/password', Value='CANARY-ssm-v1-7d8e', Type='SecureString')
ssm.put_parameter(Name='/t-ssm/dev/redis/password', Value='CANARY-ssm-v2-9f0a', Type='SecureString', Overwrite=True)
ssm.put_parameter(Name='/t-ssm/dev/hosts', Value='a.internal,b.internal', Type='StringList')
ssm.put_parameter(Name='/t-ssm/dev/region', Value='eu-central-1', Type='String')
ssm.label_parameter_version(Name='/t-ssm/dev/redis/password', ParameterVersion=1, Labels=['stable'])
for i in range(12):
    ssm.put_parameter(Name=f'/t-ssm/dev/many/p{i:02d}', Value=f'param-{i:02d}', Type='String')
"#);
    let mut manifest = String::from(
        r#"[backends.params]
kind = "aws-ssm"
prefix = "/t-ssm/{env}/"
[secrets]
REDIS_PASSWORD = { backend = "params", path = "redis/password" }
REDIS_V1 = { backend = "params", path = "redis/password", version = 1 }
REDIS_STABLE = { backend = "params", path = "redis/password", version = "stable" }
HOSTS = { backend = "params", path = "hosts" }
REGION = { backend = "params", path = "region" }
"#,
    );
    for i in 0..12 {
        manifest.push_str(&format!(
            "P{i:02} = {{ backend = \"params\", path = \"many/p{i:02}\" }}\n"
        ));
    }
    let p = Project::with_manifest(&manifest);
    let e = env(m, &[]);
    let child = child_env(&p, &["--env", "dev"], &as_refs(&e));
    assert_eq!(child["REDIS_PASSWORD"], "CANARY-ssm-v2-9f0a");
    assert_eq!(child["REDIS_V1"], "CANARY-ssm-v1-7d8e");
    assert_eq!(child["REDIS_STABLE"], "CANARY-ssm-v1-7d8e");
    assert_eq!(child["HOSTS"], "a.internal,b.internal");
    assert_eq!(child["REGION"], "eu-central-1");
    assert_eq!(child["P11"], "param-11");
    let r = run(&p, &["-vvv", "--env", "dev", "check"], &e);
    r.code(0).no_canary(true);
    r.stdout_has("ok (version 2, SecureString, modified 20")
        .stdout_has("ok (version 1, SecureString");
    // 17 reads, 10 names a call, versions of one name in separate calls: 3 calls.
    let r = run(&p, &["-vv", "--env", "dev", "--", "true"], &e);
    r.code(0);
    assert_eq!(api_calls(&r, "GetParameters"), 3, "{}", r.stderr);

    let p = Project::with_manifest(
        "[backends.params]\nkind = \"aws-ssm\"\n[secrets]\nNOPE = { backend = \"params\", path = \"/t-ssm/dev/nope\" }\nOLD = { backend = \"params\", path = \"/t-ssm/dev/region\", version = 9 }\n",
    );
    run(&p, &["--", "true"], &e)
        .code(65)
        .stderr_has("no parameter `/t-ssm/dev/nope` in us-east-1")
        .stderr_has("no parameter `/t-ssm/dev/region:9`");
}

#[test]
fn missing_secret_and_wrong_region() {
    let m = moto::shared();
    m.py("sm.create_secret(Name='t-region/key', SecretString='in-us-east-1')\n");
    let manifest = |region: &str| {
        Project::with_manifest(&format!(
            "[backends.aws]\nkind = \"aws-secrets-manager\"\nregion = \"{region}\"\n[secrets]\nKEY = {{ backend = \"aws\", path = \"t-region/key\" }}\nGONE = {{ backend = \"aws\", path = \"t-region/gone\" }}\n"
        ))
    };
    let e = env(m, &[]);
    run(&manifest("us-east-1"), &["--", "true"], &e)
        .code(65)
        .stderr_has(
            "GONE (backend `aws`, path `t-region/gone`): no secret `t-region/gone` in us-east-1",
        );
    let r = run(&manifest("eu-west-1"), &["--", "true"], &e);
    r.code(65)
        .stderr_has("no secret `t-region/key` in eu-west-1");
}

#[test]
fn no_credentials_and_no_region_are_one_clear_sentence() {
    let m = moto::shared();
    let p = Project::with_manifest(
        "[backends.aws]\nkind = \"aws-secrets-manager\"\n[secrets]\nK = { backend = \"aws\", path = \"t-nocreds/k\" }\n",
    );
    let e = env(
        m,
        &[("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")],
    );
    let r = run(&p, &["--timeout", "20s", "--", "true"], &e);
    r.code(77).stderr_has("no AWS credentials found");
    assert!(!r.stderr.contains("metadata"), "{}", r.stderr);

    let e = env(m, &[("AWS_REGION", "")]);
    run(&p, &["--", "true"], &e)
        .code(78)
        .stderr_has("no AWS region");
}

#[test]
fn unreachable_and_silent_endpoints_are_unavailable_within_the_deadline() {
    let m = moto::shared();
    let p = Project::with_manifest(
        "[backends.aws]\nkind = \"aws-secrets-manager\"\nendpoint_url = \"http://127.0.0.1:1\"\n[secrets]\nK = { backend = \"aws\", path = \"k\" }\n",
    );
    let e = env(m, &[]);
    let started = Instant::now();
    run(&p, &["--timeout", "10s", "--", "true"], &e)
        .code(69)
        .stderr_has("cannot reach AWS");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    let p = Project::with_manifest(&format!(
        "[backends.ssm]\nkind = \"aws-ssm\"\nendpoint_url = \"http://127.0.0.1:{port}\"\nrequest_timeout = \"1s\"\n[secrets]\nK = {{ backend = \"ssm\", path = \"/k\" }}\n"
    ));
    let started = Instant::now();
    run(&p, &["--timeout", "3s", "--", "true"], &e).code(69);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn iam_denials_name_the_action_and_the_batch_falls_back() {
    // moto enforces IAM after the first N calls: enough to create a user allowed only
    // secretsmanager:GetSecretValue (not the batch call) and its secrets.
    let m = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "5")]);
    let keys = m.py(r#"
iam.create_user(UserName='reader')
iam.put_user_policy(UserName='reader', PolicyName='read', PolicyDocument=json.dumps({
    'Version': '2012-10-17',
    'Statement': [{'Effect': 'Allow', 'Action': ['secretsmanager:GetSecretValue'], 'Resource': '*'}]}))
k = iam.create_access_key(UserName='reader')['AccessKey']
sm.create_secret(Name='t-iam/a', SecretString='value-a')
sm.create_secret(Name='t-iam/b', SecretString='value-b')
print(k['AccessKeyId'], k['SecretAccessKey'])
"#);
    let mut keys = keys.split_whitespace();
    let (id, secret) = (keys.next().unwrap(), keys.next().unwrap());
    let e = env(
        &m,
        &[("AWS_ACCESS_KEY_ID", id), ("AWS_SECRET_ACCESS_KEY", secret)],
    );
    let p = Project::with_manifest(
        "[backends.aws]\nkind = \"aws-secrets-manager\"\n[secrets]\nA = { backend = \"aws\", path = \"t-iam/a\" }\nB = { backend = \"aws\", path = \"t-iam/b\" }\n",
    );
    let r = run(&p, &["-vv", "--", "sh", "-c", "echo \"$A $B\""], &e);
    r.code(0).stdout_has("value-a value-b");
    assert_eq!(api_calls(&r, "BatchGetSecretValue"), 1, "{}", r.stderr);
    assert_eq!(api_calls(&r, "GetSecretValue"), 2, "{}", r.stderr);
    r.stderr_has("falling back to GetSecretValue");

    // Parameter Store is not allowed at all: the error names the action.
    let p = Project::with_manifest(
        "[backends.p]\nkind = \"aws-ssm\"\n[secrets]\nP = { backend = \"p\", path = \"/t-iam/p\" }\n",
    );
    run(&p, &["--", "true"], &e)
        .code(77)
        .stderr_has("the IAM policy needs `ssm:GetParameters`");
}

/// The API operations one backend's watch uses: the one that asks for versions, and those
/// that carry values.
struct Ops {
    check: &'static str,
    reads: &'static [&'static str],
}

/// How many times the calls of `ops` named `id`, as the proxy counted them.
fn calls_naming(counts: &serde_json::Value, ops: &[&str], id: &str) -> u64 {
    ops.iter()
        .map(|op| counts[*op]["ids"][id].as_u64().unwrap_or(0))
        .sum()
}

/// A run supervising a child of A and B from `table` with `watch = "1s"`, through the counting
/// proxy: for 30 ticks with no change, no value is read again (counted per secret by the
/// proxy); after `update` (boto3), B's new value `b2` reaches the child with one read of B,
/// none of A, and the trace log says `changed`. No value in secret-run's own output.
fn watch_reads_only_what_changed(
    m: &Moto,
    table: &str,
    ops: &Ops,
    (a, b): (&str, &str),
    update: &str,
    changed: &str,
) {
    let proxy = Throttle::start(m, "{}");
    let p = Project::with_manifest(&format!(
        "{table}\n[secrets]\nA = {{ backend = \"w\", path = \"{a}\" }}\nB = {{ backend = \"w\", path = \"{b}\" }}\n[run]\nwatch = \"1s\"\nmin_restart_interval = \"100ms\"\n"
    ));
    let e = proxy.env(m);
    let run = crate::support::Supervised::start_env(
        &p,
        &[
            "-vvv",
            "--",
            "sh",
            "-c",
            "echo \"$B\" >> seen; exec sleep 120",
        ],
        &as_refs(&e),
    );
    crate::support::wait_until("the first child", Duration::from_secs(10), || {
        p.path("seen").exists()
    });
    let first = proxy.counts();
    assert_eq!(calls_naming(&first, ops.reads, a), 1, "{first}");
    assert_eq!(calls_naming(&first, ops.reads, b), 1, "{first}");
    // Thirty ticks (~30 s): versions asked for each, no value read again.
    crate::support::wait_until("30 ticks", Duration::from_secs(60), || {
        calls_naming(&proxy.counts(), &[ops.check], a) >= 30
    });
    let quiet = proxy.counts();
    assert_eq!(calls_naming(&quiet, ops.reads, a), 1, "{quiet}");
    assert_eq!(calls_naming(&quiet, ops.reads, b), 1, "{quiet}");
    m.py(update);
    crate::support::wait_until("the new value", Duration::from_secs(10), || {
        std::fs::read_to_string(p.path("seen")).is_ok_and(|s| s.lines().last() == Some("b2"))
    });
    let after = proxy.counts();
    assert_eq!(calls_naming(&after, ops.reads, a), 1, "A not read: {after}");
    assert_eq!(
        calls_naming(&after, ops.reads, b),
        2,
        "B read once: {after}"
    );
    let log = std::fs::read_to_string(p.path("secret-run.err")).unwrap_or_default();
    assert!(log.contains(changed));
    let stderr = run.stop_expecting(143);
    assert!(!stderr.contains("CANARY"));
}

#[test]
fn watch_asks_describe_secret_and_reads_only_what_changed() {
    let m = moto::shared();
    m.py("sm.create_secret(Name='t-watch/a', SecretString='CANARY-aws-plain-0c1d')\nsm.create_secret(Name='t-watch/b', SecretString='b1')");
    watch_reads_only_what_changed(
        m,
        "[backends.w]\nkind = \"aws-secrets-manager\"",
        &Ops {
            check: "secretsmanager.DescribeSecret",
            reads: &[
                "secretsmanager.GetSecretValue",
                "secretsmanager.BatchGetSecretValue",
            ],
        },
        ("t-watch/a", "t-watch/b"),
        "sm.put_secret_value(SecretId='t-watch/b', SecretString='b2')",
        "a new AWSCURRENT version; reading it",
    );
    let e = env(m, &[]);
    // recheck = "values": every tick reads the values again, in batches.
    let q = Project::with_manifest(
        "[backends.aws]\nkind = \"aws-secrets-manager\"\nrecheck = \"values\"\n[secrets]\nA = { backend = \"aws\", path = \"t-watch/a\" }\nB = { backend = \"aws\", path = \"t-watch/b\" }\n[run]\nwatch = \"1s\"\n",
    );
    let run =
        crate::support::Supervised::start_env(&q, &["-vvv", "--", "sleep", "60"], &as_refs(&e));
    let log = || std::fs::read_to_string(q.path("secret-run.err")).unwrap_or_default();
    crate::support::wait_until("two ticks", Duration::from_secs(10), || {
        log().matches("Secrets Manager reads done").count() >= 3
    });
    assert!(!log().contains("unchanged; its value is not read again"));
    run.stop_expecting(143);
}

/// Creates `count` secrets `PREFIX/s00`… with values `v0`…, and returns their `[secrets]` lines
/// (`S00 = …`) for a backend named `aws`.
fn create_secrets(m: &Moto, prefix: &str, count: usize) -> String {
    let mut create = String::new();
    let mut secrets = String::new();
    for i in 0..count {
        create.push_str(&format!(
            "sm.create_secret(Name='{prefix}/s{i:02}', SecretString='v{i}')\n"
        ));
        secrets.push_str(&format!(
            "S{i:02} = {{ backend = \"aws\", path = \"{prefix}/s{i:02}\" }}\n"
        ));
    }
    m.py(&create);
    secrets
}

/// The throttling proxy fixture (tests/fixtures/throttle_proxy.py) in front of `m`, with
/// per-operation `limits` (`{"secretsmanager.BatchGetSecretValue": [rate, burst]}`).
struct Throttle {
    port: u16,
    endpoint: String,
    _keeper: crate::kept::Kept,
    _dir: tempfile::TempDir,
}

impl Throttle {
    fn start(m: &Moto, limits: &str) -> Throttle {
        Throttle::spawn(m, limits, false)
    }

    /// The proxy replaying moto's answers to reads (`--replay`): nothing may be written to
    /// moto while it runs.
    fn start_replaying(m: &Moto, limits: &str) -> Throttle {
        Throttle::spawn(m, limits, true)
    }

    fn spawn(m: &Moto, limits: &str, replay: bool) -> Throttle {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::kept::free_port_pair();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/throttle_proxy.py"
        );
        let mut args = vec![
            script.to_owned(),
            port.to_string(),
            format!("127.0.0.1:{}", m.port),
            limits.to_owned(),
        ];
        if replay {
            args.push("--replay".to_owned());
        }
        let keeper = crate::kept::Kept::spawn(
            &crate::kept::venv_bin("python"),
            &args,
            &dir.path().join("proxy.log"),
            &[],
        );
        assert!(
            crate::support::poll_until(Duration::from_secs(10), || {
                crate::kept::http_status(port, "GET", "/_counts") == Some(200)
            }),
            "the throttling proxy did not start"
        );
        Throttle {
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            _keeper: keeper,
            _dir: dir,
        }
    }

    /// The moto environment with AWS calls going through the proxy.
    fn env<'a>(&'a self, m: &'a Moto) -> Vec<(&'a str, String)> {
        env(m, &[("AWS_ENDPOINT_URL", &self.endpoint)])
    }

    /// The proxy's calls per operation (plain HTTP/1.0: no client program needed).
    fn counts(&self) -> serde_json::Value {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        conn.write_all(b"GET /_counts HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap()
    }
}

#[test]
fn a_throttled_batch_falls_back_to_single_reads_and_the_start_succeeds() {
    // A moto of its own: under the shared one's load (every other test) an attempt can time out
    // and be retried, and the exact call counts below would count the retry.
    let own = Moto::start(&[]);
    let m = &own;
    let secrets = create_secrets(m, "t-throttle", 30);
    // The batch API allows nothing at all: every batch call is throttled.
    let proxy = Throttle::start(m, r#"{"secretsmanager.BatchGetSecretValue": [0, 0]}"#);
    let p = Project::with_manifest(&format!(
        "[backends.aws]\nkind = \"aws-secrets-manager\"\n[secrets]\n{secrets}"
    ));
    let e = proxy.env(m);
    let dump = crate::support::child_env(&p, &["-v"], &as_refs(&e));
    assert_eq!(dump["S00"], "v0");
    assert_eq!(dump["S29"], "v29");
    let counts = proxy.counts();
    assert_eq!(
        counts["secretsmanager.BatchGetSecretValue"]["throttled"], 2,
        "{counts}"
    );
    assert_eq!(
        counts["secretsmanager.GetSecretValue"]["ok"], 30,
        "{counts}"
    ); // Visible at -v, and counted by check --json.
    let r = run(&p, &["-v", "check", "--json"], &e);
    r.code(0).stderr_has("AWS throttled a call");
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["backends"][0]["throttled"], 2, "{}", r.stdout);
    assert_eq!(doc["backends"][0]["calls"], 32, "{}", r.stdout);

    // throttled_batch = "retry": the batch is called again until it gets through (the quota
    // here: one call, then one a second); no single read.
    let proxy = Throttle::start(m, r#"{"secretsmanager.BatchGetSecretValue": [1, 1]}"#);
    let e = proxy.env(m);
    let p = Project::with_manifest(&format!(
        "[backends.aws]\nkind = \"aws-secrets-manager\"\nthrottled_batch = \"retry\"\nmax_parallel = 2\n[secrets]\n{secrets}"
    ));
    let dump = crate::support::child_env(&p, &[], &as_refs(&e));
    assert_eq!(dump["S29"], "v29");
    let counts = proxy.counts();
    assert_eq!(
        counts["secretsmanager.BatchGetSecretValue"]["ok"], 2,
        "{counts}"
    );
    assert!(
        counts["secretsmanager.BatchGetSecretValue"]["throttled"]
            .as_u64()
            .unwrap()
            > 0,
        "{counts}"
    );
    assert!(
        counts.get("secretsmanager.GetSecretValue").is_none(),
        "{counts}"
    );
    // Bad settings name the field.
    for (setting, says) in [
        (
            "max_parallel = 0",
            "`max_parallel = 0` must be between 1 and 256",
        ),
        ("throttled_batch = \"never\"", "throttled_batch"),
    ] {
        let p = Project::with_manifest(&format!(
            "[backends.aws]\nkind = \"aws-secrets-manager\"\n{setting}\n[secrets]\nS = {{ backend = \"aws\", path = \"t-throttle/s00\" }}\n"
        ));
        run(&p, &["--", "true"], &e).code(78).stderr_has(says);
    }
}

#[test]
fn two_hundred_concurrent_starts_of_a_hundred_secrets_at_the_published_rates_all_succeed() {
    // A moto of its own, written before the proxy starts: the proxy replays moto's answers
    // (moto alone serves ~250 calls/s here; the fleet sends 10,000 and more).
    let own = Moto::start(&[]);
    let m = &own;
    let secrets = create_secrets(m, "t-fleet", 100);
    let proxy = Throttle::start_replaying(
        m,
        r#"{"secretsmanager.BatchGetSecretValue": [100, 100], "secretsmanager.GetSecretValue": [10000, 10000]}"#,
    );
    let p = Project::with_manifest(&format!(
        "[backends.aws]\nkind = \"aws-secrets-manager\"\n[secrets]\n{secrets}"
    ));
    let e = proxy.env(m);
    let starts: Vec<_> = (0..200)
        .map(|_| {
            let mut cmd = p.cmd();
            cmd.args([
                "--timeout",
                "120s",
                "--exec",
                "--",
                "sh",
                "-c",
                "test \"$S00\" = v0 && test \"$S99\" = v99",
            ])
            .envs(e.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let failed: Vec<String> = starts
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .filter(|o| !o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 200 starts failed: {:?}",
        failed.len(),
        failed.first()
    );
    // 1,000 batch calls at 100/s: the quota was met, and its secrets were read singly.
    let counts = proxy.counts();
    let batch = &counts["secretsmanager.BatchGetSecretValue"];
    assert!(batch["throttled"].as_u64().unwrap() > 0, "{batch}");
    assert_eq!(
        batch["ok"].as_u64().unwrap() + batch["throttled"].as_u64().unwrap(),
        1000,
        "one call per 20 secrets per start, none retried"
    );
    // Every throttled batch's 20 secrets were read singly (and those of a batch whose answer
    // did not come back in time under this load: at most every batch's).
    let singles = counts["secretsmanager.GetSecretValue"]["ok"]
        .as_u64()
        .unwrap();
    assert!(
        singles >= batch["throttled"].as_u64().unwrap() * 20 && singles <= 1000 * 20,
        "{singles} single reads: {batch}"
    );
}

#[test]
fn watch_on_parameter_store_asks_versions_and_reads_only_what_changed() {
    let m = moto::shared();
    m.py("ssm.put_parameter(Name='/t-watch-ssm/a', Value='CANARY-ssm-v1-7d8e', Type='SecureString')\nssm.put_parameter(Name='/t-watch-ssm/b', Value='b1', Type='String')");
    watch_reads_only_what_changed(
        m,
        "[backends.w]\nkind = \"aws-ssm\"",
        &Ops {
            check: "AmazonSSM.DescribeParameters",
            reads: &["AmazonSSM.GetParameters"],
        },
        ("/t-watch-ssm/a", "/t-watch-ssm/b"),
        "ssm.put_parameter(Name='/t-watch-ssm/b', Value='b2', Type='String', Overwrite=True)",
        "a new version; reading it",
    );
}
