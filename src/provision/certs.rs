//! Certificates for a plant without a PKI of its own, as `provision credentials --tls` writes
//! them beside the seeds, in `tls/`: a CA, the NATS server's certificate for the names clients
//! reach it by, one client certificate per identity (its common name the identity), and
//! `tls.conf`, the `tls {}` block nats-server includes (clients verified against that CA; each
//! identity's nkey still decides what it may do). Files that exist are kept, never overwritten;
//! keys are owner-only.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::seeds::write_atomically;

/// Why the certificates could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a PEM private key this can sign with: {reason}; move it away to start a new CA (every certificate it signed must then be issued again)")]
    BadCaKey { path: PathBuf, reason: String },
    #[error("{path} may be read by others (mode {mode:o}): `chmod 600 {path}`")]
    KeyExposed { path: PathBuf, mode: u32 },
    #[error("a certificate for {what}: {reason}")]
    Issue { what: String, reason: String },
    #[error("--tls-name {0:?} is not a host name or an IP address")]
    Name(String),
}

/// One file: where, and whether it was made now.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub created: bool,
}

const CA_NAME: &str = "mes-events plant CA";

/// The folder the certificates go in.
pub fn dir(out: &Path) -> PathBuf {
    out.join("tls")
}

/// Writes what is missing of: the CA, the server's certificate for `names`, a client
/// certificate for each of `identities`, and `tls.conf` naming the files as nats-server sees
/// them (under `server_dir`, the folder `out` is mounted at on the server).
pub fn write(
    identities: &[&str],
    names: &[String],
    out: &Path,
    server_dir: &Path,
) -> Result<Vec<Written>, CertError> {
    for n in names {
        if n.is_empty() || n.contains(|c: char| c.is_whitespace() || c == '/' || c == '"') {
            return Err(CertError::Name(n.clone()));
        }
    }
    let tls = dir(out);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CertError::Io { path, source }
    };
    std::fs::create_dir_all(&tls).map_err(io(&tls))?;
    let mut written = Vec::new();
    let (ca_cert, ca_key) = (tls.join("ca.crt"), tls.join("ca.key"));
    // A new CA (none yet, or its key gone): every certificate is issued again, none of the old
    // ones would chain to it. New server names: the server's certificate is issued again.
    let fresh_ca = !ca_key.is_file();
    let names_file = tls.join("server.names");
    let names_text = names.join("\n") + "\n";
    let same_names = std::fs::read_to_string(&names_file).is_ok_and(|t| t == names_text);
    let issuer = if ca_key.is_file() {
        check_private(&ca_key)?;
        let pem = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
        let key = KeyPair::from_pem(&pem).map_err(|e| CertError::BadCaKey {
            path: ca_key.clone(),
            reason: e.to_string(),
        })?;
        written.push(Written {
            path: ca_cert.clone(),
            created: false,
        });
        Issuer::new(ca_params(), key)
    } else {
        let key = KeyPair::generate().map_err(issue("the CA"))?;
        let cert = ca_params().self_signed(&key).map_err(issue("the CA"))?;
        write_atomically(&ca_key, &key.serialize_pem(), 0o600).map_err(io(&ca_key))?;
        write_atomically(&ca_cert, &cert.pem(), 0o644).map_err(io(&ca_cert))?;
        written.push(Written {
            path: ca_cert.clone(),
            created: true,
        });
        Issuer::new(ca_params(), key)
    };
    let mut leaf = |file: &str, what: String, params: CertificateParams, keep: bool| {
        let (crt, key) = (
            tls.join(format!("{file}.crt")),
            tls.join(format!("{file}.key")),
        );
        if keep && !fresh_ca && crt.is_file() && key.is_file() {
            check_private(&key)?;
            written.push(Written {
                path: crt,
                created: false,
            });
            return Ok(());
        }
        let k = KeyPair::generate().map_err(issue(&what))?;
        let c = params.signed_by(&k, &issuer).map_err(issue(&what))?;
        write_atomically(&key, &k.serialize_pem(), 0o600).map_err(io(&key))?;
        write_atomically(&crt, &c.pem(), 0o644).map_err(io(&crt))?;
        written.push(Written {
            path: crt,
            created: true,
        });
        Ok::<(), CertError>(())
    };
    let mut server = leaf_params(names.first().map_or("nats", String::as_str), 825)
        .map_err(issue("the server"))?;
    server.subject_alt_names = CertificateParams::new(names.to_vec())
        .map_err(|_| CertError::Name(names.join(",")))?
        .subject_alt_names;
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf("server", "the server".into(), server, same_names)?;
    if !same_names {
        write_atomically(&names_file, &names_text, 0o644).map_err(io(&names_file))?;
    }
    for id in identities {
        let mut p = leaf_params(id, 825).map_err(issue(id))?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        leaf(id, format!("identity {id}"), p, true)?;
    }
    let conf = out.join("tls.conf");
    let on_server = dir(server_dir);
    let text = format!(
        "# Generated by `mes-events provision credentials --tls` (do not edit): nats-server's\n\
         # certificate from the CA in tls/, and every client verified against that CA (each\n\
         # identity has its certificate in tls/; its nkey still decides what it may do).\n\
         tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 2\n}}\n",
        on_server.join("server.crt").display(),
        on_server.join("server.key").display(),
        on_server.join("ca.crt").display()
    );
    let same = std::fs::read_to_string(&conf).is_ok_and(|t| t == text);
    if !same {
        write_atomically(&conf, &text, 0o644).map_err(io(&conf))?;
    }
    written.push(Written {
        path: conf,
        created: !same,
    });
    Ok(written)
}

fn issue(what: &str) -> impl Fn(rcgen::Error) -> CertError + '_ {
    move |e| CertError::Issue {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, CA_NAME);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(3650);
    p
}

fn leaf_params(cn: &str, days: i64) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(days);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

fn check_private(path: &Path) -> Result<(), CertError> {
    crate::tls::check_private("key", path).map_err(|e| match e {
        crate::tls::TlsError::KeyExposed { path, mode, .. } => CertError::KeyExposed { path, mode },
        crate::tls::TlsError::Read { path, source, .. } => CertError::Io { path, source },
        other => CertError::Issue {
            what: path.display().to_string(),
            reason: other.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_second_run_keeps_everything_and_adds_what_is_new() {
        let out = tempfile::tempdir().unwrap();
        let names = vec!["nats".to_string(), "127.0.0.1".to_string()];
        let first = super::write(&["admin", "relay"], &names, out.path(), out.path()).unwrap();
        assert!(first.iter().all(|w| w.created), "{first:?}");
        let ca = std::fs::read(out.path().join("tls/ca.crt")).unwrap();
        let second =
            super::write(&["admin", "relay", "erp"], &names, out.path(), out.path()).unwrap();
        let created: Vec<_> = second.iter().filter(|w| w.created).collect();
        assert_eq!(created.len(), 1, "{second:?}");
        assert!(created[0].path.ends_with("tls/erp.crt"));
        assert_eq!(std::fs::read(out.path().join("tls/ca.crt")).unwrap(), ca);
        // Another name: the server's certificate again, the others kept.
        let more = vec!["nats".to_string(), "nats.plant".to_string()];
        let third =
            super::write(&["admin", "relay", "erp"], &more, out.path(), out.path()).unwrap();
        let created: Vec<_> = third.iter().filter(|w| w.created).collect();
        assert_eq!(created.len(), 1, "{third:?}");
        assert!(created[0].path.ends_with("tls/server.crt"));
        let conf = std::fs::read_to_string(out.path().join("tls.conf")).unwrap();
        assert!(
            conf.contains("verify: true") && conf.contains("tls/server.crt"),
            "{conf}"
        );
        // erp's certificate chains to the CA kept from the first run.
        let roots = crate::tls::roots(Some(&out.path().join("tls/ca.crt"))).unwrap();
        assert_eq!(roots.len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.path().join("tls/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
        assert!(matches!(
            super::write(&[], &["a b".into()], out.path(), out.path()),
            Err(super::CertError::Name(_))
        ));
    }
}
