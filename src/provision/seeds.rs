//! Credentials on disk: one NKey seed file per identity and the `auth.conf` rendered by
//! [`super::auth`], written into one private folder.
//!
//! Seeds are generated once and kept (never in git); running again keeps them and only rewrites
//! `auth.conf`. `--rotate NAME` gives one identity a new seed and keeps its old one beside it
//! (`NAME.previous.nk`): both are accepted, so the system can move to the new one at its own
//! time, until `--retire NAME` deletes the old one. A kept seed that group or others can read is
//! refused: it may have leaked. Every check comes before any write, and every file is replaced
//! in one rename.

use std::path::{Path, PathBuf};

use super::auth::{inbox_prefix, render, users, Scope};
use super::load::Declaration;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not hold a valid NKey user seed: delete it to generate a new one, or rotate it with --rotate {name}")]
    BadSeed { path: PathBuf, name: String },
    #[error(
        "{path} can be read or written by group or others (mode {mode:04o}), so its seed may have leaked: \
         replace it with `mes-events provision credentials --rotate {name} …` and reload nats-server, \
         or, if you know nobody else read it, `chmod 600 {path}` and run again"
    )]
    SeedExposed {
        path: PathBuf,
        name: String,
        mode: u32,
    },
    #[error("{flag} {name}: no such identity (known: {known})")]
    UnknownIdentity {
        flag: &'static str,
        name: String,
        known: String,
    },
    #[error("--rotate {name}: {name} is being rotated already ({path} is still accepted): once {name} uses its new seed, `--retire {name}`, then rotate again")]
    RotationPending { name: String, path: PathBuf },
    #[error("--retire {name}: {name} has no old seed to retire (it was not rotated, or the old one was retired already)")]
    NothingToRetire { name: String },
}

/// What happened to one identity's seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedFate {
    Kept,
    Created,
    /// A new seed; the old one is kept as `previous` and still accepted.
    Rotated,
    /// A new seed; the old one, exposed, is not kept: it is refused from the next reload.
    Replaced,
    /// Its old seed was deleted: only the current one is accepted from the next reload.
    Retired,
}

/// One identity's seed file, its inbox prefix and what was done to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub name: String,
    pub path: PathBuf,
    pub inbox_prefix: String,
    pub fate: SeedFate,
    /// Its old seed while a rotation is under way (accepted alongside the current one).
    pub previous: Option<PathBuf>,
}

/// What to do to one identity's seeds besides keeping them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// A new seed, the current one kept as the previous one.
    Rotate(&'a str),
    /// The previous seed deleted.
    Retire(&'a str),
}

/// Where an identity's previous seed is kept while it is being rotated.
pub fn previous_path(out: &Path, name: &str) -> PathBuf {
    out.join(format!("{name}.previous.nk"))
}

/// Writes `auth.conf` and one `<identity>.nk` seed per identity into `out`, keeping existing
/// seeds, and applies `change` to one identity. Nothing is written when a kept seed is
/// unreadable or exposed, or `change` cannot be done.
pub fn write(
    d: &Declaration,
    out: &Path,
    change: Option<Change<'_>>,
) -> Result<Vec<Written>, AuthError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| AuthError::Io { path, source }
    };
    let users = users(d, &Scope::default());
    let (rotate, retire) = match change {
        Some(Change::Rotate(n)) => (Some(n), None),
        Some(Change::Retire(n)) => (None, Some(n)),
        None => (None, None),
    };
    for (flag, name) in [("--rotate", rotate), ("--retire", retire)] {
        if let Some(r) = name {
            if !users.iter().any(|u| u.name == r) {
                return Err(AuthError::UnknownIdentity {
                    flag,
                    name: r.to_owned(),
                    known: users
                        .iter()
                        .map(|u| u.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    // First every check, then every write: a refusal leaves the folder as it was.
    let mut plan = Vec::new();
    for u in users {
        let path = out.join(format!("{}.nk", u.name));
        let previous_file = previous_path(out, &u.name);
        let rotating = rotate == Some(u.name.as_str());
        // A seed others could read is no seed to keep accepting: rotating it replaces it.
        let (current, exposed) = match read_seed(&path, &u.name) {
            Err(AuthError::SeedExposed { .. }) if rotating => (None, true),
            other => (other?, false),
        };
        let previous = read_seed(&previous_file, &u.name)?;
        if rotate == Some(u.name.as_str()) && previous.is_some() {
            return Err(AuthError::RotationPending {
                name: u.name.clone(),
                path: previous_file,
            });
        }
        if retire == Some(u.name.as_str()) && previous.is_none() {
            return Err(AuthError::NothingToRetire {
                name: u.name.clone(),
            });
        }
        plan.push((u, path, previous_file, current, previous, exposed));
    }
    create_private_dir(out).map_err(io(out))?;
    let mut rendered = Vec::new();
    let mut written = Vec::new();
    for (u, path, previous_file, current, mut previous, exposed) in plan {
        let mut fate = if exposed {
            SeedFate::Replaced
        } else {
            SeedFate::Kept
        };
        let current = match current {
            Some(pair) if rotate == Some(u.name.as_str()) => {
                // The current seed stays accepted, as the previous one, until retired.
                std::fs::rename(&path, &previous_file).map_err(io(&previous_file))?;
                previous = Some(pair);
                fate = SeedFate::Rotated;
                None
            }
            other => other,
        };
        let pair = match current {
            Some(pair) => pair,
            None => {
                let pair = nkeys::KeyPair::new_user();
                let seed = pair.seed().map_err(|_| AuthError::BadSeed {
                    path: path.clone(),
                    name: u.name.clone(),
                })?;
                if fate == SeedFate::Kept {
                    fate = SeedFate::Created;
                }
                write_atomically(&path, &seed, 0o600).map_err(io(&path))?;
                pair
            }
        };
        if retire == Some(u.name.as_str()) {
            std::fs::remove_file(&previous_file).map_err(io(&previous_file))?;
            previous = None;
            fate = SeedFate::Retired;
        }
        let mut keys = vec![pair.public_key()];
        keys.extend(previous.as_ref().map(nkeys::KeyPair::public_key));
        written.push(Written {
            name: u.name.clone(),
            path,
            inbox_prefix: inbox_prefix(&u.name),
            fate,
            previous: previous.is_some().then_some(previous_file),
        });
        rendered.push((u, keys));
    }
    // Public keys and permissions only, no secret: readable by the server's user (0644), and
    // replaced in one rename so that a server reloading meanwhile never reads half of it.
    let conf = out.join("auth.conf");
    write_atomically(&conf, &render(&rendered), 0o644).map_err(io(&conf))?;
    Ok(written)
}

/// The key pair in an existing seed file; `None` where there is none yet.
fn read_seed(path: &Path, name: &str) -> Result<Option<nkeys::KeyPair>, AuthError> {
    let seed = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AuthError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|source| AuthError::Io {
                path: path.to_owned(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(AuthError::SeedExposed {
                path: path.to_owned(),
                name: name.to_owned(),
                mode: mode & 0o7777,
            });
        }
    }
    nkeys::KeyPair::from_seed(seed.trim())
        .map(Some)
        .map_err(|_| AuthError::BadSeed {
            path: path.to_owned(),
            name: name.to_owned(),
        })
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Writes `text` with permissions `mode` (a seed: 0600, readable by its owner only), replacing
/// any file at `path` in one rename, so a reader never sees half of it.
pub(crate) fn write_atomically(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".mes-events-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut tmp = builder.tempfile_in(dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
