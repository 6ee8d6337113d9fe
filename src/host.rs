//! This machine's name, as the lease records the active relay (`host:pid`) and a discard records
//! who gave up on a row (`user@host`).
//!
//! Never fails: a name that cannot be read is `unknown`.

/// The host name: the kernel's, else `$HOSTNAME`, else `unknown`.
pub fn name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}
