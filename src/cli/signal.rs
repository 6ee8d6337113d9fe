//! Shutdown on the first SIGTERM or Ctrl-C, for the commands that run until stopped.
//!
//! Never stops anything itself: it only cancels the token the commands watch.

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A cancellation token cancelled by the first SIGTERM or Ctrl-C, and the task that waits for
/// them (stopped when this is dropped).
pub struct Shutdown {
    pub token: CancellationToken,
    task: JoinHandle<()>,
}

impl Shutdown {
    pub fn on_signal() -> Shutdown {
        let token = CancellationToken::new();
        let task = tokio::spawn(cancel_on_signal(token.clone()));
        Shutdown { token, task }
    }
}

impl Drop for Shutdown {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("signal received; stopping");
    token.cancel();
}
