//! What a secret looks like in a URL, and the URL fit to print without it.
//!
//! Imports nothing of the crate: configuration, connections and logs all use it.

/// A URL list (comma-separated) fit to print: the password of `nats://user:password@host`, and the token of
/// `nats://token@host`, become `***`.
pub fn redact(urls: &str) -> String {
    urls.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let creds = &u[scheme + 3..at];
                match creds.find(':') {
                    Some(colon) => {
                        format!("{}{}:***{}", &u[..scheme + 3], &creds[..colon], &u[at..])
                    }
                    // A user alone is a token (`nats://TOKEN@host`): a secret too.
                    None => format!("{}***{}", &u[..scheme + 3], &u[at..]),
                }
            }
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}
