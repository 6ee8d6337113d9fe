//! Store: every SQL statement of mes-events, one file per concern, and the PostgreSQL sessions
//! they run on.
//!
//! - [`session`]: connecting, and driving a connection so NOTIFY wakes the relay.
//! - [`pgpass`]: the password from `PGPASSWORD` or the password file, as libpq finds it.
//! - [`migrate`]: the versioned `mes_events` schema (`migrations/*.sql`).
//! - [`write`]: `mes_events.emit`, the write side.
//! - [`lease`]: the relay's advisory lock, lease epoch and stream watermarks.
//! - [`outbox`]: the relay's hot reads and marks, rejections, the published log.
//! - [`kept`]: published rows kept for the durability horizon, restoring what a stream lost,
//!   the record of losses.
//! - [`operator`]: counts, rejected rows, retry and discard.
//!
//! Imports only the event layer (for rows and rejections) and TLS (for its sessions). Never decides anything: the relay
//! and the CLI do.

/// A statement fenced by the relay lease: prefixes `lease as (…)`, which locks the lease row
/// FOR SHARE only while its epoch is `$1`. Every statement that writes on the relay's behalf is
/// written with it and writes only `where exists (select 1 from lease)`, so once a newer relay
/// has bumped the epoch an older one writes nothing, and while a relay's epoch is current no
/// other can bump it under a running statement.
macro_rules! fenced {
    ($rest:literal) => {
        concat!(
            "with lease as (select epoch from mes_events.relay_lease where id = 1 and epoch = $1 for share), ",
            $rest
        )
    };
}

pub mod kept;
pub mod lease;
pub mod migrate;
pub mod operator;
pub mod outbox;
pub mod pgpass;
pub mod session;
pub mod write;
