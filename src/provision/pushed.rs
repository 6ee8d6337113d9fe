//! A pushed system's declaration: the rules of its `[push]` table (a URL fit to print and to
//! POST to, one secret source, sane retry, concurrency, rate, pause and headers), and what it
//! sets on the system's consumers (a delivery per attempt, a short ack_wait, one pinned puller
//! at a time). Called by [`super::load`] while it validates the whole folder; never calls a
//! server.

use std::time::Duration;

use super::decl::{line_of, ConsumerDecl, DeclError, PushDecl, PushMode, Source};

/// The `[push]` table's consumer `i` (`c`), adjusted: push times its own attempts, so each is
/// one delivery of the consumer; a declared `max_deliver` or `backoff` that disagrees is named.
pub(super) fn consumer(
    src: &Source,
    i: usize,
    p: &PushDecl,
    c: &mut ConsumerDecl,
) -> Vec<DeclError> {
    let mut out = Vec::new();
    let mut e = |key: &str, message: String| {
        out.push(DeclError {
            file: src.path.display().to_string(),
            line: line_of(&src.text, c.stream.span().start),
            key: format!("consumer[{i}].{key}"),
            message,
        })
    };
    let wanted = p.max_deliver();
    match c.max_deliver {
        Some(m) if m != wanted => e("max_deliver", format!(
            "this system is pushed to: its consumer delivers once per attempt, so max_deliver is {wanted} (1 + the {} retries{}); drop max_deliver, or change [push] retry",
            p.retry().len(),
            if wanted < 0 { ", and after_last = \"hold\" never gives up" } else { "" }
        )),
        _ => c.max_deliver = Some(wanted),
    }
    if c.backoff.is_some() {
        e(
            "backoff",
            "this system is pushed to: [push] retry sets the delays between attempts; drop backoff"
                .into(),
        );
    }
    if c.ack_wait.is_none() {
        c.ack_wait = Some(PushDecl::DEFAULT_ACK_WAIT);
    }
    c.pinned = Some(p.takeover());
    out
}

/// A push endpoint's own rules: a URL that is http(s) and carries no credentials, one secret
/// source, sane retry, concurrency, rate and headers.
pub(super) fn check(src: &Source, p: &PushDecl, has_consumer: bool) -> Vec<DeclError> {
    let mut out = Vec::new();
    let mut e = |span: std::ops::Range<usize>, key: &str, message: String| {
        out.push(DeclError {
            file: src.path.display().to_string(),
            line: line_of(&src.text, span.start),
            key: format!("push.{key}"),
            message,
        })
    };
    match url::Url::parse(p.url.get_ref()) {
        Err(why) => e(p.url.span(), "url", format!("{:?} is not a URL ({why}): write it like \"https://workflow.example.com/hooks/mes\"", crate::secret::redact(p.url.get_ref()))),
        Ok(u) if !matches!(u.scheme(), "http" | "https") => e(p.url.span(), "url", format!("{:?}: only http and https endpoints can be pushed to", crate::secret::redact(p.url.get_ref()))),
        Ok(u) if !u.username().is_empty() || u.password().is_some() => e(p.url.span(), "url", "a user or password in the URL would be printed in logs and status: remove it; the receiver authenticates each request by its webhook-signature".into()),
        Ok(_) => {}
    }
    let https = url::Url::parse(p.url.get_ref()).is_ok_and(|u| u.scheme() == "https");
    for (key, given) in [
        ("ca_file", &p.ca_file),
        ("client_cert", &p.client_cert),
        ("client_key", &p.client_key),
    ] {
        if let (Some(f), false) = (given, https) {
            e(
                f.span(),
                key,
                format!(
                    "{key} is for https:// endpoints: this one is not (use https, or remove {key})"
                ),
            );
        }
    }
    match (&p.client_cert, &p.client_key) {
        (Some(c), None) => e(
            c.span(),
            "client_key",
            "client_cert needs its key: client_key = \"/etc/mes-events/<system>.key\"".into(),
        ),
        (None, Some(k)) => e(
            k.span(),
            "client_cert",
            "client_key needs its certificate: client_cert = \"/etc/mes-events/<system>.crt\""
                .into(),
        ),
        _ => {}
    }
    match (&p.secret_file, &p.secret_env) {
        (Some(_), Some(env)) => e(env.span(), "secret_env", "give the signing secret one way: secret_file or secret_env, not both".into()),
        (None, None) => e(p.url.span(), "secret_file", "a push endpoint needs its signing secret (whsec_…): secret_file = \"/run/secrets/<system>.whsec\" or secret_env = \"<VARIABLE>\" (never the secret itself in this file)".into()),
        _ => {}
    }
    if let Some(r) = &p.retry {
        if r.get_ref().is_empty() || r.get_ref().iter().any(|d| d.0.is_zero()) {
            e(r.span(), "retry", "retry is the delays between attempts, each above zero, e.g. [\"5s\", \"30s\", \"2m\", \"10m\", \"1h\"]".into());
        }
    }
    if let Some(c) = &p.concurrency {
        if *c.get_ref() == 0 {
            e(
                c.span(),
                "concurrency",
                "concurrency is how many keys are delivered at once: 1 or more".into(),
            );
        }
    }
    for (key, n) in [
        ("max_batch", &p.max_batch),
        ("max_batch_bytes", &p.max_batch_bytes),
    ] {
        let Some(n) = n else { continue };
        if p.mode != PushMode::Batched {
            e(
                n.span(),
                key,
                format!("{key} is for batched requests: add mode = \"batched\", or remove {key}"),
            );
        } else if *n.get_ref() == 0 {
            e(
                n.span(),
                key,
                format!("{key} must be 1 or more (leave it out for the default)"),
            );
        }
    }
    if let Some(r) = &p.rate_limit {
        if !r.get_ref().is_finite() || *r.get_ref() <= 0.0 {
            e(
                r.span(),
                "rate_limit",
                "rate_limit is requests per second, above zero (leave it out for no limit)".into(),
            );
        }
    }
    if p.pause_after.as_ref().is_some_and(|n| *n.get_ref() == 0) {
        e(
            p.url.span(),
            "pause_after",
            "pause_after is failures in a row before the endpoint is paused: 1 or more".into(),
        );
    }
    if p.pause.is_some_and(|t| t.is_zero()) {
        e(
            p.url.span(),
            "pause",
            "pause must be above zero, e.g. \"30s\"".into(),
        );
    }
    if p.takeover.is_some_and(|t| t < Duration::from_secs(1)) {
        e(
            p.url.span(),
            "takeover",
            "takeover must be 1s or more (the server's pin timeout; pulls expire at half of it)"
                .into(),
        );
    }
    if p.timeout.is_some_and(|t| t.is_zero()) {
        e(
            p.url.span(),
            "timeout",
            "timeout must be above zero, e.g. \"10s\"".into(),
        );
    }
    for name in p.headers.keys() {
        let lower = name.to_ascii_lowercase();
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            e(
                p.url.span(),
                "headers",
                format!("{name:?} is not an HTTP header name"),
            );
        } else if lower.starts_with("ce-")
            || lower.starts_with("webhook-")
            || [
                "content-type",
                "content-length",
                "host",
                "transfer-encoding",
                "connection",
            ]
            .contains(&lower.as_str())
        {
            e(p.url.span(), "headers", format!("{name} is set by the push service itself (the event, its signature or the transport)"));
        }
    }
    if !has_consumer {
        e(
            p.url.span(),
            "url",
            "a pushed system needs a [[consumer]] to deliver from".into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::provision::decl::parse;
    use crate::provision::load::{validate, Declaration};

    /// The declaration of one pushed system (`push` = its `[push]` table's lines, `consumer` =
    /// extra lines of its consumer), or every error, one line each.
    fn pushed(push: &str, consumer: &str) -> Result<Declaration, String> {
        let streams = "[[stream]]\nname = \"MES_EVENTS\"\nsubjects = [\"mes.>\"]\n";
        let system = format!(
            "[system]\nname = \"workflow\"\n[[consumer]]\nstream = \"MES_EVENTS\"\n{consumer}\n[push]\n{push}\n"
        );
        let sources = vec![
            parse(Path::new("streams.toml"), streams).unwrap(),
            parse(Path::new("systems/workflow.toml"), &system).map_err(|e| e.to_string())?,
        ];
        validate(sources).map_err(|e| {
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    #[test]
    fn a_pushed_systems_consumer_delivers_once_per_attempt() {
        let url = "url = \"https://wf.example/hook\"\nsecret_env = \"WF_SECRET\"";
        let d = pushed(&format!("{url}\nretry = [\"1s\", \"2s\"]"), "").unwrap();
        let c = &d.systems[0].consumers[0].1;
        assert_eq!(c.max_deliver, Some(3));
        assert_eq!(
            c.ack_wait,
            Some(crate::provision::decl::PushDecl::DEFAULT_ACK_WAIT)
        );
        let d = pushed(&format!("{url}\nafter_last = \"hold\""), "").unwrap();
        assert_eq!(d.systems[0].consumers[0].1.max_deliver, Some(-1));
        assert_eq!(d.systems[0].push.as_ref().unwrap().retry().len(), 5);
    }

    #[test]
    fn every_push_mistake_is_named_with_its_key() {
        let ok = "url = \"https://wf.example/hook\"\nsecret_env = \"WF_SECRET\"";
        for (push, consumer, key, words) in [
            (
                "url = \"https://wf.example/hook\"",
                "",
                "push.secret_file",
                "needs its signing secret",
            ),
            (
                "url = \"https://wf.example/hook\"\nsecret_env = \"A\"\nsecret_file = \"/s\"",
                "",
                "push.secret_env",
                "not both",
            ),
            (
                "url = \"https://user:pw@wf.example/hook\"\nsecret_env = \"A\"",
                "",
                "push.url",
                "would be printed",
            ),
            (
                "url = \"ftp://wf.example/hook\"\nsecret_env = \"A\"",
                "",
                "push.url",
                "only http and https",
            ),
            (
                "url = \"not a url\"\nsecret_env = \"A\"",
                "",
                "push.url",
                "is not a URL",
            ),
            (
                "url = \"http://wf.example/hook\"\nsecret_env = \"A\"\nca_file = \"/ca.pem\"",
                "",
                "push.ca_file",
                "for https:// endpoints",
            ),
            (
                &format!("{ok}\nclient_cert = \"/c.pem\""),
                "",
                "push.client_key",
                "needs its key",
            ),
            (
                &format!("{ok}\nretry = []"),
                "",
                "push.retry",
                "each above zero",
            ),
            (
                &format!("{ok}\nconcurrency = 0"),
                "",
                "push.concurrency",
                "1 or more",
            ),
            (
                &format!("{ok}\nmax_batch = 50"),
                "",
                "push.max_batch",
                "add mode = \"batched\"",
            ),
            (
                &format!("{ok}\nmode = \"batched\"\nmax_batch_bytes = 0"),
                "",
                "push.max_batch_bytes",
                "1 or more",
            ),
            (
                &format!("{ok}\nrate_limit = 0.0"),
                "",
                "push.rate_limit",
                "above zero",
            ),
            (
                &format!("{ok}\nheaders = {{ \"webhook-id\" = \"x\" }}"),
                "",
                "push.headers",
                "set by the push service",
            ),
            (
                &format!("{ok}\nretry = [\"1s\"]"),
                "max_deliver = 5",
                "consumer[0].max_deliver",
                "max_deliver is 2",
            ),
            (
                ok,
                "backoff = [\"1s\"]",
                "consumer[0].backoff",
                "drop backoff",
            ),
        ] {
            let e = pushed(push, consumer).unwrap_err();
            assert!(
                e.contains(&format!(": {key}: ")) && e.contains(words),
                "{push} / {consumer}: {e}"
            );
            assert!(!e.contains("pw@"), "{e}");
        }
    }
}
