//! LISTEN/NOTIFY fan-out: one listening connection per store instance wakes
//! any number of in-process waiters.

use std::sync::Arc;
use std::time::Duration;

use onceflight_core::waiters::Waiters;
use sqlx::postgres::{PgListener, PgPool};
use tokio::task::JoinHandle;

/// The channel every onceflight schema notifies on; payloads are
/// `<schema>:<key>`.
pub(crate) const CHANNEL: &str = "onceflight";

/// Starts the listening task: LISTEN on [`CHANNEL`] and wake the waiters of
/// each notified key of `schema`. The first LISTEN happens before this
/// returns, so no wait can start before notifications flow.
pub(crate) async fn spawn_listener(
    pool: &PgPool,
    schema: &str,
    waiters: Arc<Waiters>,
) -> Result<JoinHandle<()>, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    let prefix = format!("{schema}:");
    Ok(tokio::spawn(async move {
        let mut pause = Duration::from_millis(100);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    pause = Duration::from_millis(100);
                    if let Some(key) = notification.payload().strip_prefix(&prefix) {
                        waiters.wake(key);
                    }
                }
                // The connection was lost; the next `try_recv` reconnects
                // and listens again. Anything notified meanwhile is lost, so
                // every waiter re-reads its record.
                Ok(None) => {
                    tracing::warn!("LISTEN connection lost; reconnecting");
                    waiters.wake_all();
                }
                Err(error) => {
                    tracing::warn!(%error, "LISTEN connection failed; retrying");
                    waiters.wake_all();
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }))
}
