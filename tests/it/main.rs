//! Integration tests against a real nats-server and a real PostgreSQL, each test with its own
//! server, port, store directory and database.

mod support;

mod catalog;
mod compose;
mod consume;
mod demo;
mod examples;
mod interop;
mod layout;
mod migrate;
mod permissions;
mod provision;
mod rejections;
mod relay;
