-- mes-events outbox, version 2: rows that cannot become a valid event are kept, not dropped.
--
-- A row is rejected (with the reason's kind, the data path and schema rule at fault, and the
-- full text) when its type is unknown, its data fails its schema, or its message would be too
-- large. Later rows of the same key then wait: a key is held while it has a rejected row that was
-- neither retried nor discarded (derived through outbox_held_keys, not stored twice).
-- `mes-events outbox retry` clears the rejection (optionally with corrected data);
-- `mes-events outbox discard` releases the key on purpose and records who and why.

alter table mes_events.outbox
    add column rejected_at    timestamptz,
    add column reject_kind    text,
    add column reject_path    text,
    add column reject_rule    text,
    add column reject_reason  text,
    add column retries        int not null default 0,
    add column discarded_at   timestamptz,
    add column discarded_by   text,
    add column discard_reason text,
    add check ((rejected_at is null) = (reject_reason is null)),
    add check (discarded_at is null or rejected_at is not null);

drop index mes_events.outbox_pending;
create index outbox_pending on mes_events.outbox (id)
    where stream_seq is null and rejected_at is null and discarded_at is null;
create index outbox_held_keys on mes_events.outbox (key, id)
    where rejected_at is not null and discarded_at is null;

-- Up-front check in emit (cheap; the relay validates data against the catalog's schemas):
-- the type must have the catalog's form, and data must be a JSON object.
create or replace function mes_events.emit(
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
    if emit.type is null or emit.type !~ '^[a-z0-9-]+(\.[a-z0-9-]+)*\.mes\.[a-z0-9]+\.[a-z0-9]+\.v(0|[1-9][0-9]*)$' then
        raise exception 'mes_events.emit: type % is not of the form <reverse-dns>.mes.<category>.<event>.v<major>', quote_nullable(emit.type)
            using errcode = '22023',
                  hint = 'e.g. io.mesevents.mes.processorder.statuschanged.v1; see schemas/catalog.json';
    end if;
    if emit.key is null or emit.key = '' then
        raise exception 'mes_events.emit: argument "key" must be a non-empty business key'
            using errcode = '22023';
    end if;
    if emit.data is null or jsonb_typeof(emit.data) <> 'object' then
        raise exception 'mes_events.emit: argument "data" must be a JSON object, got %', coalesce(jsonb_typeof(emit.data), 'null')
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

    perform pg_notify('mes_events', '');
    return v_id;
end
$$;
