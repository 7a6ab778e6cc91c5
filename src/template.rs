//! Templates (minijinja): composed values (`template = "postgres://{{ DB_USER }}:…"`) and the
//! files of `[files]`. The names a template may use are the manifest's variables, nothing else;
//! filters: `urlencode` (everything outside RFC 3986's unreserved characters, so a password
//! with `/`, `@`, `:` or `%` is safe in a URL's userinfo), `base64`, `json`, and minijinja's own
//! `trim` and `default`. An error names the template, its line and the variable, never a value.
//!
//! minijinja holds the values it renders as its own strings, which are not zeroed when
//! dropped: the rendered text is (`Zeroizing`), and the engine's copies live only while one
//! template renders.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use minijinja::{Environment, UndefinedBehavior, Value};
use secrecy::zeroize::Zeroizing;

/// A template problem: where (template name and line), and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    pub line: Option<usize>,
    pub message: String,
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // A file is rendered as written, its last line's newline included.
    env.set_keep_trailing_newline(true);
    // Values are not HTML: nothing is escaped behind the user's back.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.add_filter("urlencode", |v: String| urlencode(&v));
    env.add_filter("base64", |v: String| {
        base64::engine::general_purpose::STANDARD.encode(v.as_bytes())
    });
    env.add_filter("json", |v: String| {
        serde_json::to_string(&v).unwrap_or_default()
    });
    env
}

/// Percent-encodes every byte outside RFC 3986's unreserved set (`A-Z a-z 0-9 - . _ ~`).
pub fn urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn error(e: &minijinja::Error) -> TemplateError {
    // minijinja's own text for the kind of problem, without the template source it can append.
    let mut message = e.kind().to_string();
    if let Some(detail) = e.detail() {
        message = format!("{message}: {detail}");
    }
    TemplateError {
        line: e.line(),
        message,
    }
}

/// The manifest variables `text` names; a syntax error otherwise.
pub fn names(text: &str) -> Result<BTreeSet<String>, TemplateError> {
    let env = environment();
    let template = env.template_from_str(text).map_err(|e| error(&e))?;
    Ok(template.undeclared_variables(false).into_iter().collect())
}

/// Renders `text` with `values` (each variable's value, or for a file-delivered one its path).
pub fn render(
    text: &str,
    values: &BTreeMap<String, Zeroizing<String>>,
) -> Result<Zeroizing<String>, TemplateError> {
    let env = environment();
    let template = env.template_from_str(text).map_err(|e| error(&e))?;
    let context: BTreeMap<&str, Value> = values
        .iter()
        .map(|(k, v)| (k.as_str(), Value::from(v.as_str())))
        .collect();
    template.render(context).map(Zeroizing::new).map_err(|e| {
        let mut err = error(&e);
        if e.kind() == minijinja::ErrorKind::UndefinedError {
            let absent: Vec<String> = template
                .undeclared_variables(false)
                .into_iter()
                .filter(|n| !values.contains_key(n))
                .map(|n| format!("`{n}`"))
                .collect();
            if !absent.is_empty() {
                err.message = format!(
                    "{} has no value (optional and absent); write e.g. `{{{{ NAME | default('') }}}}` for a value that may be absent",
                    absent.join(", ")
                );
            }
        }
        err
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, Zeroizing<String>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Zeroizing::new((*v).to_owned())))
            .collect()
    }

    #[test]
    fn filters() {
        let v = values(&[("P", "p@ss/w:rd%? ~x"), ("U", "app")]);
        let out = render("postgres://{{ U }}:{{ P | urlencode }}@db/app", &v).unwrap();
        assert_eq!(
            out.as_str(),
            "postgres://app:p%40ss%2Fw%3Ard%25%3F%20~x@db/app"
        );
        assert_eq!(render("{{ U | base64 }}", &v).unwrap().as_str(), "YXBw");
        assert_eq!(
            render("{{ P | json }}", &v).unwrap().as_str(),
            "\"p@ss/w:rd%? ~x\""
        );
        assert_eq!(
            render("{{ MISSING | default('d') }}", &v).unwrap().as_str(),
            "d"
        );
        assert_eq!(render("{{ '  x ' | trim }}", &v).unwrap().as_str(), "x");
        assert_eq!(render("<{{ U }}>&", &v).unwrap().as_str(), "<app>&");
    }

    #[test]
    fn names_and_errors() {
        assert_eq!(
            names("{{ A }}:{{ B | urlencode }}{% if C %}{{ D }}{% endif %}").unwrap(),
            ["A", "B", "C", "D"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        );
        let e = names("line one\n{{ A ").unwrap_err();
        assert_eq!(e.line, Some(2), "{e:?}");
        let e = render("{{ NOPE }}", &values(&[("A", "secret-value")])).unwrap_err();
        assert!(!e.message.contains("secret-value"), "{e:?}");
    }
}
