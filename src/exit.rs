//! Exit codes of the `mes-events` binary. Scripts and supervisors rely on these; never renumber.

use std::process::ExitCode;

/// Success; for `relay`, a requested stop (SIGTERM, Ctrl-C) after recording what was in flight.
pub const OK: u8 = 0;
/// A runtime failure: a server unreachable for a one-shot command, a query or publish failed.
pub const FAILURE: u8 = 1;
/// A usage or configuration error: bad flag, unknown config key, bad value. Fix the invocation.
pub const USAGE: u8 = 2;
/// The environment is not set up: schema not migrated, stream missing. The message says what to
/// run (`mes-events migrate`, `mes-events provision apply`).
pub const NOT_READY: u8 = 3;
/// `provision plan`: the server differs from the declaration (apply would change something).
pub const CHANGES: u8 = 4;
/// `provision apply`: a change was refused (a field the server cannot change in place); the
/// message says why and what it would take. Everything else was applied.
pub const REFUSED: u8 = 5;

pub fn code(c: u8) -> ExitCode {
    ExitCode::from(c)
}
