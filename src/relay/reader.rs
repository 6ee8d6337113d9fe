//! Reading: publishable rows in id order, never skipping one that committed late.
//!
//! Rows are read by a pending marker, not an id cursor alone. The reader reads above the highest
//! id dealt with, and the store checks in the same snapshot whether a pending row at or below it
//! became visible since the previous read; then the caller finishes what is in flight and the
//! reader starts again from the oldest pending row. While one batch is published the next is
//! already being read, from this one's last row and snapshot; a batch read ahead cannot see
//! rejections recorded while the one before it was published, so the reader carries their keys.
//!
//! Owns the cursor, the previous snapshot, the read sent ahead and the carried keys.

use std::collections::HashSet;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio_postgres::Client;

use crate::store::outbox::{self, Fetched, Prepared};
use crate::store::session::send_now;

/// A batch read sent ahead of its turn.
struct ReadAhead<'a> {
    /// It reads after this id: taken only if the reader still stands there.
    cursor: i64,
    limit: usize,
    fetched: BoxFuture<'a, Result<Fetched, tokio_postgres::Error>>,
}

/// One batch as read.
pub(crate) struct Batch {
    pub fetched: Fetched,
    /// How many rows it asked for: fewer came when the outbox had no more.
    pub limit: usize,
    /// It was read ahead, before the previous batch's rejections were recorded.
    pub read_ahead: bool,
}

pub(crate) struct Reader<'a> {
    client: &'a Client,
    prepared: &'a Prepared,
    /// Highest outbox id dealt with (published, rejected or held) since reading last started
    /// from the oldest pending row; 0: read from the start next.
    pub cursor: i64,
    /// Snapshot of the previous read, while `cursor` is above 0: the next read checks that no
    /// pending row at or below the cursor became visible since.
    after: Option<String>,
    read_ahead: Option<ReadAhead<'a>>,
    /// Keys rejected in the batch before: a batch read ahead did not see those rejections.
    held: HashSet<String>,
}

impl<'a> Reader<'a> {
    pub fn new(client: &'a Client, prepared: &'a Prepared) -> Reader<'a> {
        Reader {
            client,
            prepared,
            cursor: 0,
            after: None,
            read_ahead: None,
            held: HashSet::new(),
        }
    }

    /// Reads up to `limit` rows after the cursor, taking the batch read ahead when it was read
    /// from where the reader stands and fits in `room`.
    pub async fn read(
        &mut self,
        limit: usize,
        room: usize,
    ) -> Result<Batch, tokio_postgres::Error> {
        let ahead = self.read_ahead.take();
        Ok(match ahead {
            Some(next) if next.cursor == self.cursor && next.limit <= room => Batch {
                fetched: next.fetched.await?,
                limit: next.limit,
                read_ahead: true,
            },
            other => {
                // A read ahead that does not fit must go before the new read is awaited: its
                // unread answer would hold the new one back.
                drop(other);
                Batch {
                    fetched: outbox::fetch(
                        self.client,
                        self.prepared,
                        self.cursor,
                        limit as i64,
                        self.after.as_deref(),
                    )
                    .await?,
                    limit,
                    read_ahead: false,
                }
            }
        })
    }

    /// Drops the read sent ahead, keeping the cursor: its unread answer would hold back every
    /// later answer on the session (the lease heartbeat's included).
    pub fn drop_ahead(&mut self) {
        self.read_ahead = None;
    }

    /// Takes a batch in (its lease and late checks passed): a full one has the next read sent
    /// ahead now, from its last row, in its snapshot. Returns the keys the batch must hold: those
    /// rejected in the batch before, when it was read ahead of their rejection.
    pub fn accept(&mut self, batch: &mut Batch) -> HashSet<String> {
        let fetched = &mut batch.fetched;
        if let (true, Some(last)) = (fetched.rows.len() == batch.limit, fetched.rows.last()) {
            self.send_ahead(last.id, batch.limit, fetched.snapshot.clone());
        }
        self.after = Some(std::mem::take(&mut fetched.snapshot));
        let mut held = std::mem::take(&mut self.held);
        if !batch.read_ahead {
            held.clear();
        }
        held
    }

    /// A row of the current batch was rejected: the next batch, read ahead, must hold its key.
    pub fn hold(&mut self, key: &str) {
        self.held.insert(key.to_owned());
    }

    /// The batch is dealt with up to `last` (every row published, rejected or held), or, with
    /// `None`, only partly (the client refused a publish): then the read ahead passed rows that
    /// were not sent, and is dropped.
    pub fn done(&mut self, last: Option<i64>) {
        match last {
            Some(last) => self.cursor = self.cursor.max(last),
            None => self.read_ahead = None,
        }
    }

    /// Reads from the oldest pending row next (after a late row, a failure, a reconciliation).
    pub fn read_from_start(&mut self) {
        self.cursor = 0;
        self.after = None;
        self.read_ahead = None;
        self.held.clear();
    }

    /// Sends the read of the batch after `cursor` now, to be taken when room allows.
    fn send_ahead(&mut self, cursor: i64, limit: usize, after: String) {
        let (client, prepared) = (self.client, self.prepared);
        let fetched = send_now(
            async move { outbox::fetch(client, prepared, cursor, limit as i64, Some(&after)).await }
                .boxed(),
        );
        self.read_ahead = Some(ReadAhead {
            cursor,
            limit,
            fetched,
        });
    }
}
