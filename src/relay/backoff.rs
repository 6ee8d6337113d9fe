//! Exponential back-off between retries, cut short by shutdown.
//!
//! Never sleeps past shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential back-off, 100 ms doubling up to a ceiling.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(100),
            max,
        }
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }

    /// Sleeps; false if shutdown came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let d = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}
