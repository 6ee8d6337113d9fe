-- mes-events outbox, version 5: nothing lost when the NATS host loses power.
--
-- A PubAck says the server has the event, not that its disk has it: nats-server writes through
-- the page cache and forces a sync only every `jetstream { sync_interval }` (2 minutes by
-- default). So a published event stays recoverable, data included, for a durability horizon
-- after its PubAck: the statement that moves a row out of the outbox also copies it into
-- mes_events.kept. If a stream later holds less than the relay recorded (a power cut or an OS
-- crash before the server synced), the relay puts the kept rows it lost back into the outbox,
-- under their own ids, and publishes them again, in order, with their original Nats-Msg-Id.
--
-- kept is written once per event and never updated or deleted row by row: it is split into
-- three slots, one current, and the active relay's janitor empties a slot whole (TRUNCATE) once
-- every row in it is older than the horizon and the server has been seen up for that long. No
-- index: it is read only after a loss, once.

create table mes_events.kept (
    slot         smallint    not null,
    id           bigint      not null,
    type         text        not null,
    key          text        not null,
    key_version  bigint      not null,
    data         json        not null,
    occurred_at  timestamptz not null,
    recorded_at  timestamptz not null,
    traceparent  text,
    tracestate   text,
    stream       text        not null,
    stream_seq   bigint      not null,
    published_at timestamptz not null default now()
) partition by list (slot);
create table mes_events.kept_0 partition of mes_events.kept for values in (0);
create table mes_events.kept_1 partition of mes_events.kept for values in (1);
create table mes_events.kept_2 partition of mes_events.kept for values in (2);

-- One slot is current (since set, until null): marks write there. A past slot (both set) holds
-- rows published before its `until`. An empty slot has neither.
create table mes_events.kept_slot (
    slot  smallint primary key check (slot between 0 and 2),
    since timestamptz,
    until timestamptz,
    check (until is null or since is not null)
);
create unique index kept_slot_current on mes_events.kept_slot ((true))
    where since is not null and until is null;
insert into mes_events.kept_slot (slot, since) values (0, now()), (1, null), (2, null);

-- What a stream lost is named by sequence: the published log answers "which row was at MES_EVENTS
-- 1234" (and which rows lie beyond a sequence) without a scan.
create index published_stream_seq on mes_events.published (stream, stream_seq);

-- The message at the watermark, as recorded: a stream whose message there is another one went
-- back in time and was written over (a loss, then someone else's publishes on top).
alter table mes_events.relay_stream add column last_msg_id text;
-- Since when the published log's entries for a stream are of the stream as it is now: a stream
-- deleted and created again numbers its messages from 1 again, and the entries of the one
-- before are not what it can lose. (Streams known before this version: since their creation as
-- last seen.)
alter table mes_events.relay_stream add column incarnation_since timestamptz not null default '-infinity';
update mes_events.relay_stream set incarnation_since = created;
alter table mes_events.relay_stream alter column incarnation_since set default now();

-- The horizon the active relay keeps events for, and why (for `relay status`).
alter table mes_events.relay_lease
    add column durability_horizon interval,
    add column durability_basis   text;

-- Each time a stream was found holding less than the relay recorded: what it lost, what the
-- relay restored, and what it could not (older than the horizon). A loss with rows that could
-- not be restored keeps `relay status` and /readyz failing until an operator accepts it.
create table mes_events.relay_loss (
    id                 bigint generated always as identity primary key,
    stream             text        not null,
    detected_at        timestamptz not null default now(),
    detected_by        text        not null,
    -- The stream's sequences the relay had recorded and the server no longer holds.
    lost_from          bigint      not null,
    lost_to            bigint      not null,
    lost               bigint      not null,
    restored           bigint      not null,
    -- The rows that could not be restored: their ids, keys and when they were recorded.
    unrestorable_ids   bigint[]    not null,
    unrestorable_keys  text[]      not null,
    first_recorded_at  timestamptz,
    last_recorded_at   timestamptz,
    -- The horizon in force, and why, when it was found.
    durability_basis   text        not null,
    accepted_at        timestamptz,
    accepted_by        text,
    accept_reason      text,
    check ((accepted_at is null) = (accept_reason is null))
);
