-- mes-events outbox, version 1.
--
-- Invariants the relay relies on:
-- * Per-key commit order equals id order: emit() locks the key's row in key_state before it takes
--   an outbox id, so a second writer on the same key waits for the first to commit.
-- * A row is "pending" while stream_seq is null; the relay never keeps a cursor over ids, because
--   ids are taken at insert and become visible at commit, in another order.
-- * Only the holder of the current relay_lease.epoch marks rows (see relay_lease).

create table mes_events.key_state (
    key     text   primary key,
    -- Number of events ever emitted for this key: the event's per-key version.
    version bigint not null
);

create table mes_events.outbox (
    id           bigint generated always as identity primary key,
    type         text        not null check (type <> ''),
    key          text        not null check (key <> ''),
    key_version  bigint      not null,
    data         jsonb       not null,
    -- When it happened on the plant floor (CloudEvents `time`).
    occurred_at  timestamptz not null,
    -- When the MES recorded it (CloudEvents `recordedtime`).
    recorded_at  timestamptz not null default clock_timestamp(),
    traceparent  text,
    tracestate   text,
    -- Set once, from a PubAck or from the stream itself, never guessed.
    stream       text,
    stream_seq   bigint,
    published_at timestamptz,
    check ((stream is null) = (stream_seq is null))
);

create index outbox_pending on mes_events.outbox (id) where stream_seq is null;
create index outbox_published_at on mes_events.outbox (published_at) where published_at is not null;

-- Leadership fence. A relay that becomes active bumps epoch; every statement that marks rows
-- locks this row FOR SHARE with its own epoch, so once a newer relay has bumped it, an older one
-- can no longer mark anything. The advisory lock decides who is active; the epoch makes that
-- decision safe even when two relays believe they are.
create table mes_events.relay_lease (
    id          int    primary key default 1 check (id = 1),
    epoch       bigint not null default 0,
    holder      text,
    acquired_at timestamptz
);
insert into mes_events.relay_lease (id) values (1);

-- How far each stream is known to be recorded in the outbox: reconciliation reads the stream
-- from last_seq + 1. `created` detects a stream that was deleted and created again.
create table mes_events.relay_stream (
    stream   text        primary key,
    created  timestamptz not null,
    last_seq bigint      not null default 0
);

create function mes_events.emit(
    type        text,
    key         text,
    data        jsonb,
    occurred_at timestamptz default null,
    traceparent text default null,
    tracestate  text default null
) returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
    v_version bigint;
    v_id      bigint;
begin
    if emit.type is null or emit.type = '' then
        raise exception 'mes_events.emit: argument "type" must be a non-empty event type'
            using errcode = '22023';
    end if;
    if emit.key is null or emit.key = '' then
        raise exception 'mes_events.emit: argument "key" must be a non-empty business key'
            using errcode = '22023';
    end if;
    if emit.data is null then
        raise exception 'mes_events.emit: argument "data" must not be null (use ''{}''::jsonb)'
            using errcode = '22023';
    end if;

    -- Lock the key first: same-key writers queue here, in commit order.
    insert into mes_events.key_state as k (key, version)
    values (emit.key, 1)
    on conflict (key) do update set version = k.version + 1
    returning k.version into v_version;

    insert into mes_events.outbox as o (type, key, key_version, data, occurred_at, traceparent, tracestate)
    values (emit.type, emit.key, v_version, emit.data, coalesce(emit.occurred_at, now()),
            emit.traceparent, emit.tracestate)
    returning o.id into v_id;

    -- Payload-less: one wake-up per transaction (PostgreSQL folds identical notifications).
    perform pg_notify('mes_events', '');
    return v_id;
end
$$;

revoke all on function mes_events.emit(text, text, jsonb, timestamptz, text, text) from public;
