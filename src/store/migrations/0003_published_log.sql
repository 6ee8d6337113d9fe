-- mes-events outbox, version 3: published events leave the outbox for a narrow log.
--
-- Marking a row published used to rewrite it (a new 1 KiB+ tuple and index entries per event),
-- which was the relay's largest cost. Now the relay deletes the row (cheap: no new tuple) and
-- logs (id, type, key, version, stream, sequence) in mes_events.published, in one statement
-- fenced by the lease epoch as before. The outbox holds only what is not yet published: pending,
-- held and rejected rows. Its stream, stream_seq and published_at columns stay (always null) so
-- that version 2's predicates and checks keep holding.

create table mes_events.published (
    id           bigint      primary key,
    type         text        not null,
    key          text        not null,
    key_version  bigint      not null,
    recorded_at  timestamptz not null,
    stream       text        not null,
    stream_seq   bigint      not null,
    published_at timestamptz not null default now()
);
create index published_published_at on mes_events.published (published_at);

with moved as (
    delete from mes_events.outbox
     where stream_seq is not null
 returning id, type, key, key_version, recorded_at, stream, stream_seq, published_at
)
insert into mes_events.published (id, type, key, key_version, recorded_at, stream, stream_seq, published_at)
select * from moved;

drop index mes_events.outbox_published_at;
