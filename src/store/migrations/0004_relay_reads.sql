-- mes-events outbox, version 4: the relay's reads cost what they read, not what went before.
--
-- Version 3's fetch counted every pending row at or below the relay's read position, to notice a
-- row that committed late (its id taken before that position, its commit after). Deleted rows
-- stay in the pending index until VACUUM, so that count walked the outbox's whole recent history
-- on every read: at 150,000 published rows it cost 8 ms a read, and a 1,000,000-event backlog
-- drained in quadratic time.
--
-- Now each row records txid: the transaction that made it publishable (its emit, or the retry or
-- discard that released it). The relay keeps the snapshot of its previous read. A pending row at
-- or below the read position whose txid that snapshot could not see is a late row. Such a
-- transaction was running then (one exact probe of outbox_late per running transaction) or
-- started after (a range of outbox_late over the transactions since), so the check costs the
-- same whatever the history.
--
-- Rows written before this migration have no txid: they committed before it ran (it locks the
-- table), so they can never be late.

alter table mes_events.outbox add column txid xid8;
-- Set apart from add column: a volatile default there would rewrite every existing row.
alter table mes_events.outbox alter column txid set default pg_current_xact_id();

-- "txid is not null" keeps this index out of every query that does not constrain txid: with the
-- pending predicate alone, a planner without statistics took it for `id > $1 order by id`
-- (sorting the whole outbox to return one row).
create index outbox_late on mes_events.outbox (txid)
    where txid is not null and stream_seq is null and rejected_at is null and discarded_at is null;

-- The published log is purged oldest id first (ids follow publish time closely enough), which
-- spares every mark an index insert.
drop index mes_events.published_published_at;

-- Event data is stored as the text that emit's jsonb prints as (the same bytes the relay used to
-- produce by reading data::text, so every message stays byte for byte what it was). Printing
-- jsonb cost the relay 6 µs an event, a third of its PostgreSQL time; printed once, by each
-- writer in its own transaction, it costs the relay a copy. emit still takes jsonb, so callers
-- and the check that data is an object do not change. This rewrites the outbox once.
alter table mes_events.outbox alter column data type json using data::json;
