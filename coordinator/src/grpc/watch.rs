//! The `WatchProgress` stream: progress reports as they change, and a heartbeat.
//!
//! One task per stream watches the migration's key prefix in the store. Any change marks the
//! report stale; the report is then rebuilt (at most once per [`MIN_REBUILD_GAP`], so a busy
//! migration that writes checkpoints many times a second costs a few reads per second, not one
//! per write) and sent if it differs from the last one sent. The last report is sent again once
//! the interval asked for has passed without a change. If the store watch fails, the task
//! falls back to rebuilding every [`MIN_REBUILD_GAP`] until the watch is back, so no change
//! goes unreported.
//!
//! The stream ends when the client goes away, when the server shuts down, or with an error
//! status when the report cannot be built for a reason that will not pass (a transient store
//! failure is retried instead).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use clustersync_common::store::{StoreError, WatchEvent, WatchStream};
use clustersync_proto::v1::WatchProgressResponse as PbWatchProgressResponse;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::debug;

use crate::control::Control;
use crate::progress::Progress;

/// The response stream of `WatchProgress`.
pub type ProgressStream = Pin<Box<dyn Stream<Item = Result<PbWatchProgressResponse, Status>> + Send>>;

/// Shortest time between two rebuilds of the report.
pub const MIN_REBUILD_GAP: Duration = Duration::from_millis(200);

/// Pause before watching the store again after the watch failed.
const WATCH_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Reports queued for a slow client before the task waits for it.
const CHANNEL_CAPACITY: usize = 4;

/// Starts the task behind one `WatchProgress` call and returns its stream.
pub fn spawn(control: Arc<Control>, interval: Duration, shutdown: CancellationToken) -> ProgressStream {
    let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
    tokio::spawn(run(control, interval, shutdown, sender));
    Box::pin(futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    }))
}

/// The store watch, if it is up.
enum StoreWatch {
    Up(WatchStream),
    /// Down: try again at this instant.
    Down(Instant),
}

impl StoreWatch {
    /// The next batch of events; never resolves while the watch is down.
    async fn next(&mut self) -> Option<Result<Vec<WatchEvent>, StoreError>> {
        match self {
            StoreWatch::Up(stream) => stream.next().await,
            StoreWatch::Down(_) => std::future::pending().await,
        }
    }
}

async fn run(
    control: Arc<Control>,
    interval: Duration,
    shutdown: CancellationToken,
    sender: mpsc::Sender<Result<PbWatchProgressResponse, Status>>,
) {
    let prefix = control.keys().migration_prefix();
    let mut store_watch = StoreWatch::Down(Instant::now());
    let mut last_sent: Option<(Progress, Instant)> = None;
    let mut last_rebuild: Option<Instant> = None;
    let mut stale = true;
    loop {
        // Watch before reading, so a change between the read and the watch is not missed.
        if let StoreWatch::Down(retry_at) = store_watch
            && Instant::now() >= retry_at
        {
            store_watch = match control.store().watch_prefix(&prefix, None).await {
                Ok(stream) => StoreWatch::Up(stream),
                Err(error) => {
                    debug!(%error, "cannot watch the store for progress changes; polling meanwhile");
                    StoreWatch::Down(Instant::now() + WATCH_RETRY_PAUSE)
                }
            };
            stale = true;
        }

        let now = Instant::now();
        let heartbeat_at = last_sent.as_ref().map_or(now, |(_, sent_at)| *sent_at + interval);
        let rebuild_allowed_at = last_rebuild.map_or(now, |at| at + MIN_REBUILD_GAP);
        if (stale || now >= heartbeat_at) && now >= rebuild_allowed_at {
            last_rebuild = Some(now);
            stale = false;
            match control.progress().await {
                Ok(progress) => {
                    let changed = last_sent.as_ref().is_none_or(|(sent, _)| *sent != progress);
                    if changed || now >= heartbeat_at {
                        let message = PbWatchProgressResponse { progress: Some((&progress).into()) };
                        if sender.send(Ok(message)).await.is_err() {
                            return;
                        }
                        last_sent = Some((progress, Instant::now()));
                    }
                }
                Err(error) if error.is_retryable() => {
                    debug!(error = error.name(), description = %error, "progress not available; retrying");
                    stale = true;
                }
                Err(error) => {
                    let _ = sender.send(Err(Status::from(error))).await;
                    return;
                }
            }
        }

        // Sleep until the heartbeat, or until a stale report may be rebuilt, or until the
        // store watch may be retried (polling meanwhile).
        let heartbeat_at = last_sent.as_ref().map_or(Instant::now(), |(_, sent_at)| *sent_at + interval);
        let rebuild_allowed_at = last_rebuild.map_or(Instant::now(), |at| at + MIN_REBUILD_GAP);
        let mut wake_at = heartbeat_at.max(rebuild_allowed_at);
        if stale {
            wake_at = rebuild_allowed_at;
        }
        if let StoreWatch::Down(retry_at) = store_watch {
            wake_at = wake_at.min(retry_at.max(rebuild_allowed_at));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sender.closed() => return,
            _ = tokio::time::sleep_until(wake_at) => {
                if matches!(store_watch, StoreWatch::Down(_)) {
                    stale = true;
                }
            }
            events = store_watch.next() => match events {
                Some(Ok(_)) => stale = true,
                Some(Err(error)) => {
                    debug!(%error, "the progress watch ended; watching again");
                    store_watch = StoreWatch::Down(Instant::now());
                    stale = true;
                }
                None => {
                    store_watch = StoreWatch::Down(Instant::now());
                    stale = true;
                }
            },
        }
    }
}
