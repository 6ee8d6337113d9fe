//! Provisioning: streams, one durable pull consumer per external system, and who may read what,
//! declared in files under nats/ and made true on a server with plan / apply / status.
//!
//! - [`decl`]: the file format, one file parsed (before any server call).
//! - [`load`]: the folder loaded and validated as a whole (before any server call), with
//!   [`pushed`] for a pushed system's rules.
//! - [`plan`]: declared vs live, field by field (pure).
//! - [`apply`]: reading live state, applying a plan, consumer status.
//! - [`auth`]: NATS server accounts and permissions generated from the same declaration.
//! - [`seeds`]: the identities' seed files and `auth.conf` on disk.
//! - [`certs`]: a CA and TLS certificates for the server and each identity, for a plant without
//!   a PKI of its own (`credentials --tls`).
//! - [`schemas`]: the active catalog's schemas in the `MES_SCHEMAS` bucket, for every system to
//!   read.
//!
//! Never deletes or recreates a stream; never deletes a consumer unless asked (`--prune`,
//! `--allow-recreate`).

pub mod apply;
pub mod auth;
pub mod certs;
pub mod decl;
pub mod load;
pub mod plan;
mod pushed;
pub mod schemas;
pub mod seeds;

pub use apply::{apply, plan, status, Options, ProvisionError};
pub use decl::DeclError;
pub use load::{load_dir, Declaration};
