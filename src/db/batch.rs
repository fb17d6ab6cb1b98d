//! Group commit: many concurrent callers, one database write per batch.
//!
//! A [`Batcher`] owns a queue and `writers` tasks. Each writer takes whatever is
//! queued (up to `max` items, optionally waiting `window` for more), hands the
//! batch to the write function, and answers every caller with its own result.
//! Callers wait for that answer, so "answered" always means "written". Under
//! low load a batch is one item and nothing waits; under load batches grow by
//! themselves while the previous write is in flight.
//!
//! Used by command intake (`command::intake`) and by the dispatcher's outcome
//! writes (`outbox::Outcomes`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;

type Item<T, R> = (T, oneshot::Sender<R>);

/// Handle to a group writer; cheap to clone. The writer tasks end once every
/// clone is dropped and the queue is drained.
pub struct Batcher<T, R> {
    tx: mpsc::Sender<Item<T, R>>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts `writers` tasks on the current Tokio runtime. `write` receives a
    /// non-empty batch and must return exactly one result per item, in order.
    pub fn start<F, Fut>(
        writers: usize,
        max: usize,
        window: Duration,
        write: F,
    ) -> (Batcher<T, R>, Vec<JoinHandle<()>>)
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send,
    {
        let max = max.max(1);
        let (tx, rx) = mpsc::channel::<Item<T, R>>(max.saturating_mul(writers.max(1)) * 4);
        let rx = Arc::new(Mutex::new(rx));
        let write = Arc::new(write);
        let handles = (0..writers.max(1))
            .map(|_| {
                let (rx, write) = (rx.clone(), write.clone());
                tokio::spawn(async move {
                    while let Some(batch) = gather(&rx, max, window).await {
                        let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) =
                            batch.into_iter().unzip();
                        let results = write(items).await;
                        debug_assert_eq!(results.len(), replies.len());
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(result);
                        }
                    }
                })
            })
            .collect();
        (Batcher { tx }, handles)
    }

    /// Queues `item` and waits for its result; `None` when the writers are
    /// gone (shutdown) or dropped the item.
    pub async fn submit(&self, item: T) -> Option<R> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((item, reply)).await.ok()?;
        rx.await.ok()
    }
}

async fn gather<T, R>(
    rx: &Mutex<mpsc::Receiver<Item<T, R>>>,
    max: usize,
    window: Duration,
) -> Option<Vec<Item<T, R>>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    if !window.is_zero() {
        let deadline = tokio::time::Instant::now() + window;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => batch.push(item),
                _ => break,
            }
        }
    }
    Some(batch)
}

/// Writes a batch with `write_all`; if that fails for a reason other than
/// the database being unreachable, retries each item alone so one bad item
/// cannot fail its neighbours.
pub async fn with_single_fallback<'a, T, O, F, Fut>(
    items: &'a [T],
    write_all: F,
) -> Vec<sqlx::Result<O>>
where
    F: Fn(Vec<&'a T>) -> Fut,
    Fut: Future<Output = sqlx::Result<Vec<O>>> + 'a,
{
    match write_all(items.iter().collect()).await {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(e) if items.len() > 1 && !is_transient(&e) => {
            tracing::warn!(error = %e, size = items.len(), "batch write failed; retrying items singly");
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                results.push(
                    write_all(vec![item])
                        .await
                        .and_then(|mut v| v.pop().ok_or(sqlx::Error::RowNotFound)),
                );
            }
            results
        }
        Err(e) => {
            tracing::error!(error = %e, size = items.len(), "batch write failed");
            let transient = is_transient(&e);
            items
                .iter()
                .map(|_| {
                    Err(if transient {
                        sqlx::Error::PoolTimedOut
                    } else {
                        sqlx::Error::Protocol(format!("batch write failed: {e}"))
                    })
                })
                .collect()
        }
    }
}

/// Errors that mean "the database is unavailable", not "this data is bad".
///
/// Besides pool and I/O errors: SQLSTATE class 08 (connection exception), 53
/// (insufficient resources), 57P01–57P03 (shutdown, cannot connect now) and
/// 40001/40P01 (serialization failure, deadlock: retrying succeeds).
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P0")
                || c == "40001"
                || c == "40P01"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_caller_gets_its_own_result_and_batches_form_under_load() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let (batcher, handles) =
            Batcher::start(1, 8, Duration::from_millis(5), move |items: Vec<u32>| {
                seen.lock().expect("lock").push(items.len());
                async move { items.into_iter().map(|i| i * 10).collect() }
            });
        let results = futures_util::future::join_all((0..20u32).map(|i| {
            let b = batcher.clone();
            async move { b.submit(i).await }
        }))
        .await;
        assert_eq!(
            results,
            (0..20u32).map(|i| Some(i * 10)).collect::<Vec<_>>()
        );
        let sizes = sizes.lock().expect("lock").clone();
        assert!(sizes.iter().all(|s| *s <= 8), "{sizes:?}");
        assert!(
            sizes.len() < 20,
            "concurrent submissions share batches: {sizes:?}"
        );
        drop(batcher);
        for h in handles {
            h.await.expect("writer ends when handles are dropped");
        }
    }
}
