//! The HTTP side of an endpoint: HTTPS as declared (the plant's CA, a client certificate),
//! what went wrong on the way in the operator's words, and a response's first bytes.

use crate::provision::decl::PushDecl;

/// HTTPS as declared: this host's trusted CAs plus the endpoint's `ca_file` (the plant's own
/// CA), and a client certificate where one is declared. The files are read and checked now
/// (a key others may read is refused): a mistake is told at start, naming the file.
pub(super) fn tls(
    b: reqwest::ClientBuilder,
    decl: &PushDecl,
) -> Result<reqwest::ClientBuilder, String> {
    let mut b = b.https_only(decl.url.get_ref().starts_with("https:"));
    if let Some(ca) = &decl.ca_file {
        for c in crate::tls::read_certs("push.ca_file", ca.get_ref()).map_err(|e| e.to_string())? {
            let cert = reqwest::Certificate::from_der(&c)
                .map_err(|e| format!("push.ca_file {}: {e}", ca.get_ref().display()))?;
            b = b.add_root_certificate(cert);
        }
    }
    if let (Some(cert), Some(key)) = (&decl.client_cert, &decl.client_key) {
        // Checked as every key is; reqwest takes the PEM of both, key and chain together.
        crate::tls::read_key("push.client_key", key.get_ref()).map_err(|e| e.to_string())?;
        crate::tls::read_certs("push.client_cert", cert.get_ref()).map_err(|e| e.to_string())?;
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let mut pem = read(key.get_ref())?;
        pem.push(b'\n');
        pem.extend(read(cert.get_ref())?);
        let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
            format!(
                "push.client_cert {} with push.client_key {}: {e}",
                cert.get_ref().display(),
                key.get_ref().display()
            )
        })?;
        b = b.identity(id);
    }
    Ok(b)
}

/// What went wrong on the way, in the operator's words: the causes, never reqwest's own line
/// (it holds the URL, query and all). A TLS failure says what to change.
pub(super) fn transport_error(e: &reqwest::Error) -> String {
    if let Some(r) = crate::tls::Refusal::of(e) {
        let host = e
            .url()
            .map(|u| {
                format!(
                    "{}:{}",
                    u.host_str().unwrap_or("?"),
                    u.port_or_known_default().unwrap_or(443)
                )
            })
            .unwrap_or_else(|| "the endpoint".into());
        return format!(
            "cannot connect: {}",
            r.describe(&host, "this host's store and push.ca_file")
        );
    }
    let mut causes = Vec::new();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        causes.push(c.to_string());
        cur = c.source();
    }
    let causes = causes.join(": ");
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        format!("cannot connect: {causes}")
    } else if causes.is_empty() {
        "request failed".into()
    } else {
        format!("request failed: {causes}")
    }
}

pub(super) async fn read_prefix(mut resp: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < limit {
        match resp.chunk().await {
            Ok(Some(c)) => out.extend_from_slice(&c[..c.len().min(limit - out.len())]),
            _ => break,
        }
    }
    out
}
