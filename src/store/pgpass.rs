//! The password of a connection string that gives none, found where libpq finds it: the
//! `PGPASSWORD` variable, else the password file (`PGPASSFILE`, else `~/.pgpass`), whose lines
//! are `host:port:database:user:password` (`*` matches anything, `\:` and `\\` escape), the
//! first matching line winning. A password file others may read is ignored with a warning, as
//! libpq ignores it. So a password need never be written into `database.url`.
//!
//! Owns nothing else of the connection.

use std::path::{Path, PathBuf};

/// The password for (host, port, database, user) in a password file's text (pure).
pub fn lookup(text: &str, host: &str, port: u16, database: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    let wanted = [host, port.as_str(), database, user];
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_fields(line);
        if fields.len() != 5 {
            continue;
        }
        let matches = fields[..4].iter().zip(wanted).all(|((f, escaped), w)| {
            // As libpq: `localhost` also stands for a connection over a Unix socket; `\*` is a
            // star, not a wildcard.
            (f == "*" && !escaped) || f == w || (f == "localhost" && w.starts_with('/'))
        });
        if matches {
            return Some(fields[4].0.clone());
        }
    }
    None
}

/// A line's fields, each with whether it held an escape: `:` separates, `\` escapes the next
/// character.
fn split_fields(line: &str) -> Vec<(String, bool)> {
    let mut out = vec![(String::new(), false)];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' if out.len() < 5 => out.push((String::new(), false)),
            '\\' => {
                if let Some(n) = chars.next() {
                    let field = out.last_mut().expect("a field");
                    field.0.push(n);
                    field.1 = true;
                }
            }
            c => out.last_mut().expect("a field").0.push(c),
        }
    }
    out
}

/// The password file in force: `PGPASSFILE`, else `~/.pgpass`.
pub fn file() -> Option<PathBuf> {
    std::env::var_os("PGPASSFILE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")))
}

/// The password for the connection `cfg` describes, if it gives none itself.
pub fn password_for(cfg: &tokio_postgres::Config) -> Option<String> {
    if cfg.get_password().is_some() {
        return None;
    }
    if let Some(p) = std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()) {
        return Some(p);
    }
    let path = file()?;
    let text = read_private(&path)?;
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    // No user given: the operating system's, as libpq and tokio-postgres take it.
    let os_user = std::env::var("USER").ok();
    let user = cfg.get_user().or(os_user.as_deref())?;
    lookup(
        &text,
        &host,
        cfg.get_ports().first().copied().unwrap_or(5432),
        cfg.get_dbname().unwrap_or(user),
        user,
    )
}

/// The file's text, unless others may read it (then a warning, as libpq gives).
fn read_private(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "password file {} has group or world access (mode {mode:o}): ignored, as libpq ignores it; `chmod 600 {}`",
                path.display(),
                path.display()
            );
            return None;
        }
    }
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::lookup;

    #[test]
    fn the_first_matching_line_wins_with_wildcards_and_escapes() {
        let text = "# the plant's\n\
                    db.plant:5432:mes:mes_relay:s3cr\\:et\n\
                    *:*:*:mes_relay:fallback\n\
                    other:5432:mes:x:no\n";
        assert_eq!(
            lookup(text, "db.plant", 5432, "mes", "mes_relay").as_deref(),
            Some("s3cr:et")
        );
        assert_eq!(
            lookup(text, "db2.plant", 6432, "mes", "mes_relay").as_deref(),
            Some("fallback")
        );
        assert_eq!(lookup(text, "db.plant", 5432, "mes", "postgres"), None);
        assert_eq!(
            lookup("localhost:5432:*:u:p\n", "/run/postgresql", 5432, "d", "u").as_deref(),
            Some("p")
        );
        assert_eq!(
            lookup("localhost:5432:*:u:p\n", "127.0.0.1", 5432, "d", "u"),
            None
        );
        assert_eq!(lookup("broken line\n", "h", 1, "d", "u"), None);
        assert_eq!(lookup("h:1:d:\\*:p\n", "h", 1, "d", "u"), None);
        assert_eq!(
            lookup("h:1:d:\\*:p\n", "h", 1, "d", "*").as_deref(),
            Some("p")
        );
    }
}
