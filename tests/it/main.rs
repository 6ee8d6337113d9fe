//! Integration tests against a real nats-server and a real PostgreSQL, each test with its own
//! server, port, store directory and database.

mod support;

mod catalog;
mod cluster;
mod compose;
mod consume;
mod demo;
mod durability;
mod examples;
mod exits;
mod failover;
mod guides;
mod interop;
mod layout;
mod migrate;
mod nats_tls;
mod observe;
mod permissions;
mod pg_tls;
mod provision;
mod push;
mod rejections;
mod relay;
mod reload;
mod schemas;
mod status;
