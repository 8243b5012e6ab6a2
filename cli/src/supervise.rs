//! One shutdown story for the long-running commands: SIGINT/SIGTERM cancels a
//! root token; the first task to end (an error, or a stop nobody asked for)
//! cancels it too; then every task gets [`GRACE`] to finish before it is
//! abandoned, and the first error is the command's result.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long tasks may take to stop after the shutdown signal.
pub const GRACE: Duration = Duration::from_secs(10);

/// A root token cancelled by the first SIGINT or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let root = CancellationToken::new();
    let token = root.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops shoal");
                let _ = tokio::signal::ctrl_c().await;
                token.cancel();
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
            _ = term.recv() => tracing::info!("terminated, shutting down"),
            _ = token.cancelled() => return,
        }
        token.cancel();
    });
    root
}

pub type Named = (&'static str, anyhow::Result<()>);

pub fn spawn<F>(tasks: &mut JoinSet<Named>, name: &'static str, future: F)
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    tasks.spawn(async move { (name, future.await) });
}

/// Log how a task ended and keep its error if it is the first.
fn record(joined: Result<Named, tokio::task::JoinError>, first_error: &mut Option<anyhow::Error>) {
    let (name, result) = match joined {
        Ok(named) => named,
        Err(e) => ("task", Err(anyhow::anyhow!("panicked: {e}"))),
    };
    match result {
        Ok(()) => tracing::info!(task = name, "stopped"),
        Err(e) => {
            tracing::error!(task = name, error = format!("{e:#}"), "failed");
            if first_error.is_none() {
                *first_error = Some(e.context(format!("{name} failed")));
            }
        }
    }
}

/// Run until a signal or until any task ends (an error, or a stop nobody asked
/// for), then cancel the rest and give them [`GRACE`] to finish. The first
/// error is the result.
pub async fn supervise(root: CancellationToken, mut tasks: JoinSet<Named>) -> anyhow::Result<()> {
    let mut first_error: Option<anyhow::Error> = None;
    tokio::select! {
        _ = root.cancelled() => {}
        Some(joined) = tasks.join_next() => {
            record(joined, &mut first_error);
            root.cancel();
        }
    }
    let drain = async {
        while let Some(joined) = tasks.join_next().await {
            record(joined, &mut first_error);
        }
    };
    if tokio::time::timeout(GRACE, drain).await.is_err() {
        tracing::warn!(
            "tasks did not stop within {}s; leaving them",
            GRACE.as_secs()
        );
        tasks.abort_all();
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::bail;

    #[tokio::test]
    async fn a_failing_task_stops_the_others() {
        let root = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let waiter = root.child_token();
        spawn(&mut tasks, "waits", async move {
            waiter.cancelled().await;
            Ok(())
        });
        spawn(&mut tasks, "fails", async { bail!("boom") });
        let err = supervise(root.clone(), tasks).await.unwrap_err();
        assert_eq!(format!("{err:#}"), "fails failed: boom");
        assert!(root.is_cancelled());
    }
}
