//! The TLS keys of a connection string, in either of libpq's forms (`postgresql://…?sslmode=…`
//! and `host=… sslmode='…'`): taken out for tokio-postgres, which refuses those it does not
//! know, with the rest of the string left exactly as written. Pure.

use super::SettingError;

/// The TLS keys of a connection string, as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
}

const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl Given {
    /// Each key with its value.
    pub fn pairs(&self) -> [(&'static str, Option<&str>); 4] {
        [
            ("sslmode", self.sslmode.as_deref()),
            ("sslrootcert", self.sslrootcert.as_deref()),
            ("sslcert", self.sslcert.as_deref()),
            ("sslkey", self.sslkey.as_deref()),
        ]
    }

    fn slot(&mut self, key: &str) -> Option<&mut Option<String>> {
        match key {
            "sslmode" => Some(&mut self.sslmode),
            "sslrootcert" => Some(&mut self.sslrootcert),
            "sslcert" => Some(&mut self.sslcert),
            "sslkey" => Some(&mut self.sslkey),
            _ => None,
        }
    }

    /// These settings with `other`'s added; a key set in both (to different values) is refused.
    pub fn with(mut self, other: &Given) -> Result<Given, SettingError> {
        for key in KEYS {
            let theirs = other.clone().slot(key).and_then(|s| s.take());
            let slot = self.slot(key).expect("a TLS key");
            match (slot.as_ref(), theirs) {
                (Some(a), Some(b)) if *a != b => {
                    return Err(SettingError::Twice {
                        key,
                        first: a.clone(),
                        second: b,
                    })
                }
                (None, Some(b)) => *slot = Some(b),
                _ => {}
            }
        }
        Ok(self)
    }
}

/// The connection string without its TLS keys (for tokio-postgres), and those keys (pure).
/// Both libpq forms: `postgresql://…?sslmode=…&…` and `host=… sslmode='…'`.
pub fn split(conn: &str) -> Result<(String, Given), SettingError> {
    let mut given = Given::default();
    if is_uri(conn) {
        let Some(q) = query_start(conn) else {
            return Ok((conn.to_owned(), given));
        };
        let (base, query) = (&conn[..q], &conn[q + 1..]);
        // Other pairs go through byte for byte (tokio-postgres only percent-decodes: a `+` is
        // a plus); the TLS values are percent-decoded as tokio-postgres would have.
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_encoding::percent_decode_str(k).decode_utf8_lossy();
            match given.slot(&key) {
                Some(slot) => {
                    *slot = Some(
                        percent_encoding::percent_decode_str(v)
                            .decode_utf8_lossy()
                            .into_owned(),
                    )
                }
                None => kept.push(pair),
            }
        }
        return Ok((
            if kept.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", kept.join("&"))
            },
            given,
        ));
    }
    // key = value pairs, values optionally single-quoted with backslash escapes.
    let mut out = String::new();
    let b = conn.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &conn[start..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'=' {
            i += 1;
        }
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(SettingError::Quote),
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < b.len() => {
                        let c = conn[i + 1..].chars().next().expect("a char");
                        value.push(c);
                        i += 1 + c.len_utf8();
                    }
                    Some(_) => {
                        let c = conn[i..].chars().next().expect("a char");
                        value.push(c);
                        i += c.len_utf8();
                    }
                }
            }
        } else {
            // Unquoted: up to whitespace, `\` escaping the next character (a space too).
            while i < b.len() && !b[i].is_ascii_whitespace() {
                let at = if b[i] == b'\\' && i + 1 < b.len() {
                    i + 1
                } else {
                    i
                };
                let c = conn[at..].chars().next().expect("a char");
                value.push(c);
                i = at + c.len_utf8();
            }
        }
        match given.slot(key) {
            Some(slot) => *slot = Some(value),
            None => {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(conn[start..i].trim());
            }
        }
    }
    Ok((out, given))
}

fn is_uri(conn: &str) -> bool {
    conn.starts_with("postgres://") || conn.starts_with("postgresql://")
}

/// Where a URL's query starts: after the credentials (a password may hold a `?`).
fn query_start(conn: &str) -> Option<usize> {
    let from = conn.rfind('@').unwrap_or(0);
    conn[from..].find('?').map(|i| from + i)
}

/// `conn` with `key` set to `value`, in the string's own form: a percent-encoded query pair
/// of a URL (read back by [`split`] as it was), or a quoted `key='value'` pair.
pub fn append(conn: &str, key: &str, value: &str) -> String {
    if is_uri(conn) {
        let sep = if query_start(conn).is_some() {
            '&'
        } else {
            '?'
        };
        // What would end or change the pair; the rest stays readable (`verify-full`, `/ca.pem`).
        const PAIR: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
            .add(b' ')
            .add(b'#')
            .add(b'%')
            .add(b'&')
            .add(b'+')
            .add(b'=')
            .add(b'?')
            .add(b'"')
            .add(b'\'');
        let v = percent_encoding::utf8_percent_encode(value, PAIR);
        format!("{conn}{sep}{key}={v}")
    } else {
        let v = value.replace('\\', "\\\\").replace('\'', "\\'");
        format!("{conn} {key}='{v}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_keys_come_out_of_both_forms_and_the_rest_stays() {
        let (rest, g) = split(
            "postgresql://u:p%40ss@db.plant:5432/mes?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgresql://u:p%40ss@db.plant:5432/mes?application_name=x"
        );
        assert_eq!(g.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(g.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        let (rest, g) = split("postgresql://db/mes?sslmode=require").unwrap();
        assert_eq!(rest, "postgresql://db/mes");
        assert_eq!(g.sslmode.as_deref(), Some("require"));

        let (rest, g) = split(
            "host=db.plant  sslmode = verify-ca password='it\\'s x' sslcert='/a b/c.crt' sslkey=/k dbname=mes",
        )
        .unwrap();
        assert_eq!(g.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(g.sslcert.as_deref(), Some("/a b/c.crt"));
        assert_eq!(g.sslkey.as_deref(), Some("/k"));
        let cfg: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(cfg.get_password(), Some(&b"it's x"[..]), "{rest}");
        assert_eq!(cfg.get_dbname(), Some("mes"));
        assert!(rest.ends_with("dbname=mes"), "{rest}");
        assert!(!rest.contains("ssl"), "{rest}");
        assert!(matches!(
            split("host=x sslkey='/k"),
            Err(SettingError::Quote)
        ));
        // A password with a `?`, and values whose `+` and `%20` must reach tokio-postgres as
        // they were written.
        let (rest, g) = split(
            "postgresql://u:pa?ss@db/mes?options=-c%20search_path%3Dx&sslrootcert=%2Fetc%2Fca+x.pem&application_name=a+b",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgresql://u:pa?ss@db/mes?options=-c%20search_path%3Dx&application_name=a+b"
        );
        assert_eq!(g.sslrootcert.as_deref(), Some("/etc/ca+x.pem"));
        // Escapes: a multi-byte character after a backslash, an escaped space unquoted.
        let (_, g) = split("password='\\é' sslkey=/a\\ b/k host=x").unwrap();
        assert_eq!(g.sslkey.as_deref(), Some("/a b/k"));
    }

    #[test]
    fn what_append_writes_split_reads_back_as_it_was() {
        for conn in [
            "postgresql://u:p?w@db/mes",
            "postgresql://db/mes?application_name=x",
            "host=db dbname=mes",
        ] {
            let with = append(conn, "sslrootcert", "/etc/a b+c'd\\e.pem");
            let (rest, g) = split(&with).unwrap();
            assert_eq!(rest, conn);
            assert_eq!(
                g.sslrootcert.as_deref(),
                Some("/etc/a b+c'd\\e.pem"),
                "{with}"
            );
        }
    }

    #[test]
    fn a_key_set_in_two_places_must_agree() {
        let a = Given {
            sslmode: Some("verify-full".into()),
            ..Given::default()
        };
        let b = Given {
            sslmode: Some("require".into()),
            sslrootcert: Some("/ca".into()),
            ..Given::default()
        };
        assert!(a
            .clone()
            .with(&b)
            .unwrap_err()
            .to_string()
            .contains("set it in one place"));
        let same = a.clone().with(&a).unwrap();
        assert_eq!(same, a);
        let c = Given {
            sslrootcert: Some("/ca".into()),
            ..Given::default()
        };
        assert_eq!(a.with(&c).unwrap().sslrootcert.as_deref(), Some("/ca"));
    }
}
