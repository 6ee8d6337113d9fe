//! PostgreSQL's TLS as libpq sets it up, so a PostgreSQL user's settings mean what they expect:
//! `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`), `sslrootcert` (a PEM
//! file, or `system` for this host's store), `sslcert` and `sslkey`, read from the connection
//! string (URL query or key=value), else from `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`,
//! `PGSSLKEY`, else libpq's defaults (`prefer`; `~/.postgresql/root.crt`, `postgresql.crt` and
//! `postgresql.key` where they exist). tokio-postgres knows only `disable`, `prefer` and
//! `require` and no certificate files: [`string`] takes those keys out of the string, and this
//! module resolves them and builds the rustls connector that does the rest.
//!
//! Owns the TLS settings of a connection string and the words for a failed TLS connection to
//! PostgreSQL; nothing of sessions.

use std::path::{Path, PathBuf};

use tokio_postgres_rustls::MakeRustlsConnect;

mod string;

pub use string::{append, split, Given};

use super::{Check, Refusal, TlsError};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the trusted CAs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    File(PathBuf),
    /// This host's certificate store (`sslrootcert=system`).
    System,
    /// None: the server's certificate is not checked.
    None,
}

/// A connection's TLS, every default resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub mode: SslMode,
    pub root: Root,
    /// The client's certificate and key (PEM files).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// A wrong TLS setting in a connection string: nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    #[error("sslmode={0:?} is not one of disable, prefer, require, verify-ca, verify-full (allow is not offered: use prefer)")]
    Mode(String),
    #[error("sslmode={mode} checks the server's certificate, and there is no root certificate: set sslrootcert to the CA's PEM file (or to `system` for this host's store), or put it at {default}")]
    NoRoot { mode: &'static str, default: String },
    #[error("sslrootcert=system checks the server against this host's store and needs sslmode=verify-full (libpq's rule), not {0}")]
    WeakWithSystem(&'static str),
    #[error("sslcert={cert} is given without sslkey: give the client key's file too")]
    CertWithoutKey { cert: String },
    #[error("sslkey={key} is given without sslcert: give the client certificate's file too")]
    KeyWithoutCert { key: String },
    #[error("{key} is set twice, as {first:?} and {second:?} (in database.url and in database.{key}): set it in one place")]
    Twice {
        key: &'static str,
        first: String,
        second: String,
    },
    #[error("an unterminated quoted value in the connection string: close the quote")]
    Quote,
    #[error(transparent)]
    File(#[from] TlsError),
}

/// Every default resolved as libpq does (pure but for whether the default files exist):
/// `env` reads an environment variable, `home` is the user's home folder.
pub fn resolve(
    given: &Given,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> Result<Tls, SettingError> {
    let pick =
        |v: &Option<String>, var: &str| v.clone().or_else(|| env(var)).filter(|s| !s.is_empty());
    let root_given = pick(&given.sslrootcert, "PGSSLROOTCERT");
    let system = root_given.as_deref() == Some("system");
    let mode = match pick(&given.sslmode, "PGSSLMODE").as_deref() {
        None if system => SslMode::VerifyFull,
        None => SslMode::Prefer,
        Some("disable") => SslMode::Disable,
        Some("prefer") => SslMode::Prefer,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        Some(other) => return Err(SettingError::Mode(other.to_owned())),
    };
    let in_home = |f: &str| home.map(|h| h.join(".postgresql").join(f));
    let default_root = in_home("root.crt");
    let root = match root_given {
        Some(s) if s == "system" => Root::System,
        Some(path) => Root::File(path.into()),
        None => match &default_root {
            Some(p) if p.is_file() => Root::File(p.clone()),
            _ => Root::None,
        },
    };
    if system && mode != SslMode::VerifyFull && mode != SslMode::Disable {
        return Err(SettingError::WeakWithSystem(mode.as_str()));
    }
    if mode >= SslMode::VerifyCa && root == Root::None {
        return Err(SettingError::NoRoot {
            mode: mode.as_str(),
            default: default_root
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.postgresql/root.crt".into()),
        });
    }
    let cert = pick(&given.sslcert, "PGSSLCERT");
    let key = pick(&given.sslkey, "PGSSLKEY");
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((c.into(), k.into())),
        (Some(cert), None) => match in_home("postgresql.key").filter(|p| p.is_file()) {
            Some(k) => Some((cert.into(), k)),
            None => return Err(SettingError::CertWithoutKey { cert }),
        },
        (None, Some(key)) => match in_home("postgresql.crt").filter(|p| p.is_file()) {
            Some(c) => Some((c, key.into())),
            None => return Err(SettingError::KeyWithoutCert { key }),
        },
        (None, None) => match (in_home("postgresql.crt"), in_home("postgresql.key")) {
            (Some(c), Some(k)) if c.is_file() && k.is_file() => Some((c, k)),
            _ => None,
        },
    };
    Ok(Tls { mode, root, client })
}

impl Tls {
    /// From the connection string's own keys and the process environment.
    pub fn of(given: &Given) -> Result<Tls, SettingError> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        resolve(given, &|v| std::env::var(v).ok(), home.as_deref())
    }

    /// tokio-postgres's own mode for this one.
    pub fn driver_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }

    /// How the server's certificate is checked: libpq's `require` with a root certificate
    /// checks as `verify-ca` does.
    pub fn check(&self) -> Check {
        match (self.mode, &self.root) {
            (SslMode::VerifyFull, _) => Check::Full,
            (SslMode::VerifyCa, _) => Check::Chain,
            (SslMode::Require, Root::File(_) | Root::System) => Check::Chain,
            _ => Check::Nothing,
        }
    }

    /// The rustls connector (files read now: a missing or exposed one is told before any
    /// connection is tried).
    pub fn connector(&self) -> Result<MakeRustlsConnect, SettingError> {
        if self.mode == SslMode::Disable {
            // No TLS, so no file of it read (libpq reads none either).
            return Ok(MakeRustlsConnect::new(super::client_config(
                rustls::RootCertStore::empty(),
                Check::Nothing,
                None,
            )?));
        }
        let roots = match (&self.root, self.check()) {
            (_, Check::Nothing) => rustls::RootCertStore::empty(),
            (Root::File(p), _) => super::roots(Some(p))?,
            (Root::System, _) => super::roots(None)?,
            (Root::None, _) => rustls::RootCertStore::empty(),
        };
        let client = self
            .client
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        Ok(MakeRustlsConnect::new(super::client_config(
            roots,
            self.check(),
            client,
        )?))
    }

    /// Where the trusted CAs come from, as a setting (for messages).
    pub fn ca(&self) -> String {
        match &self.root {
            Root::File(p) => format!("sslrootcert={}", p.display()),
            Root::System => "sslrootcert=system".into(),
            Root::None => "no sslrootcert".into(),
        }
    }

    /// A line for start-up logs: how this connection is protected.
    pub fn summary(&self) -> String {
        let client = match &self.client {
            Some((c, _)) => format!(", client certificate {}", c.display()),
            None => String::new(),
        };
        match self.check() {
            _ if self.mode == SslMode::Disable => "not encrypted (sslmode=disable)".into(),
            Check::Full => format!("TLS, server verified with {}{client}", self.ca()),
            Check::Chain => format!(
                "TLS, server's CA verified with {} (not its host name: sslmode=verify-full checks that too){client}",
                self.ca()
            ),
            Check::Nothing if self.mode == SslMode::Prefer => format!(
                "TLS if the server offers it, server not verified (sslmode=prefer: set sslmode=verify-full and sslrootcert){client}"
            ),
            Check::Nothing => format!(
                "TLS, server not verified (sslmode=require without sslrootcert: set sslmode=verify-full and sslrootcert){client}"
            ),
        }
    }

    /// Whether the server is authenticated (a start-up warning otherwise).
    pub fn verified(&self) -> bool {
        self.check() != Check::Nothing
    }
}

/// A failed connection to PostgreSQL at `peer` (host:port) told as what to change, where it is a matter of
/// TLS or of the server's rules for encryption; `None` for anything else.
pub fn describe(e: &tokio_postgres::Error, peer: &str, tls: &Tls) -> Option<String> {
    if let Some(db) = e.as_db_error() {
        let said = db.message();
        if said.contains("no encryption") && !said.contains("\"[local]\"") {
            return Some(format!(
                "PostgreSQL at {peer} accepts only encrypted connections from here (its pg_hba.conf has hostssl lines only) and this one is not (sslmode={}): set sslmode=verify-full and sslrootcert to the server's CA",
                tls.mode.as_str()
            ));
        }
        if said.contains("requires a valid client certificate") {
            return Some(format!(
                "PostgreSQL at {peer} requires a client certificate (pg_hba.conf clientcert=verify-full or cert): set sslcert and sslkey to one signed by the CA the server trusts (ssl_ca_file)"
            ));
        }
        if said.contains("certificate authentication failed")
            || said.contains("does not match") && said.contains("certificate")
        {
            return Some(format!(
                "PostgreSQL at {peer} refused this client's certificate: {said} (its common name must be the database user, or mapped to it in pg_ident.conf)"
            ));
        }
        return None;
    }
    let text = e.to_string();
    // The causes, each said once (this layer sits below `show`).
    let chain = std::iter::successors(Some(e as &dyn std::error::Error), |c| c.source()).fold(
        String::new(),
        |mut s, c| {
            let text = c.to_string();
            if !s.contains(&text) {
                if !s.is_empty() {
                    s.push_str(": ");
                }
                s.push_str(&text);
            }
            s
        },
    );
    if chain.contains("server does not support TLS") {
        return Some(format!(
            "PostgreSQL at {peer} does not speak TLS and sslmode={} requires it: turn ssl on on the server (ssl = on, ssl_cert_file, ssl_key_file), or check database.url names the right server",
            tls.mode.as_str()
        ));
    }
    if let Some(r) = Refusal::of(e) {
        return Some(r.describe(&format!("PostgreSQL at {peer}"), &tls.ca()));
    }
    if text.contains("TLS") {
        return Some(format!("TLS with PostgreSQL at {peer} failed: {chain}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_libpqs() {
        let none = |_: &str| None;
        let home = tempfile::tempdir().unwrap();
        let t = resolve(&Given::default(), &none, Some(home.path())).unwrap();
        assert_eq!(
            (t.mode, t.check(), t.client.is_none()),
            (SslMode::Prefer, Check::Nothing, true)
        );
        // verify-* without a root certificate anywhere: refused, naming the default place.
        let full = Given {
            sslmode: Some("verify-full".into()),
            ..Given::default()
        };
        let e = resolve(&full, &none, Some(home.path()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sslrootcert") && e.contains(".postgresql/root.crt"),
            "{e}"
        );
        // The files in ~/.postgresql are found, and `require` with a root checks the chain.
        let dir = home.path().join(".postgresql");
        std::fs::create_dir(&dir).unwrap();
        for f in ["root.crt", "postgresql.crt", "postgresql.key"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let t = resolve(&full, &none, Some(home.path())).unwrap();
        assert_eq!(t.root, Root::File(dir.join("root.crt")));
        assert_eq!(
            t.client,
            Some((dir.join("postgresql.crt"), dir.join("postgresql.key")))
        );
        let require = Given {
            sslmode: Some("require".into()),
            ..Given::default()
        };
        assert_eq!(
            resolve(&require, &none, Some(home.path())).unwrap().check(),
            Check::Chain
        );
        // The environment, under the string's own keys.
        let env = |v: &str| (v == "PGSSLMODE").then(|| "disable".to_string());
        assert_eq!(
            resolve(&Given::default(), &env, None).unwrap().mode,
            SslMode::Disable
        );
        assert_eq!(
            resolve(&full, &env, Some(home.path())).unwrap().mode,
            SslMode::VerifyFull
        );
        // system: verify-full by default, weaker refused.
        let system = Given {
            sslrootcert: Some("system".into()),
            ..Given::default()
        };
        assert_eq!(
            resolve(&system, &none, None).unwrap().mode,
            SslMode::VerifyFull
        );
        let weak = Given {
            sslmode: Some("require".into()),
            ..system.clone()
        };
        assert!(matches!(
            resolve(&weak, &none, None),
            Err(SettingError::WeakWithSystem(_))
        ));
        let bad = Given {
            sslmode: Some("allow".into()),
            ..Given::default()
        };
        assert!(resolve(&bad, &none, None)
            .unwrap_err()
            .to_string()
            .contains("use prefer"));
        let half = Given {
            sslcert: Some("/c".into()),
            ..Given::default()
        };
        assert!(matches!(
            resolve(&half, &none, None),
            Err(SettingError::CertWithoutKey { .. })
        ));
    }
}
