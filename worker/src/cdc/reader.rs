//! The change-stream reader: a cluster-wide change stream on the source, delivered in order as
//! raw events into a bounded channel.
//!
//! The stream starts at the task's start point (`startAtOperationTime`, inclusive) the first
//! time and after the checkpointed resume token (`startAfter`) afterwards; tokens are opaque and
//! never parsed. Transient errors reopen the stream right after the last event handed on, so the
//! consumer sees every event exactly once per reader; a resume point that left the oplog is
//! fatal (`ChangeStreamHistoryLost`): the migration cannot be correct any more.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{Document, RawDocumentBuf, doc};
use clustersync_common::extjson::OpTime;
use clustersync_common::namespace::{INTERNAL_DATABASE, NamespaceFilter};
use mongodb::Client;
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::ResumeToken;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cdc::event::{ChangeEvent, Fragments, MemoryBudget, is_relevant, marker_collection};
use crate::error::{CHANGE_STREAM_HISTORY_LOST, WorkerError, server_code};

/// Error name (and code name) of a lost change-stream history.
pub const HISTORY_LOST: &str = "ChangeStreamHistoryLost";
/// Error name of an event the server could not deliver because it is too large.
pub const EVENT_TOO_LARGE: &str = "ChangeEventTooLarge";

/// `CappedPositionLost`: older servers' way of saying the resume point left the oplog.
const CAPPED_POSITION_LOST: i32 = 136;
/// `BSONObjectTooLarge`.
const BSON_OBJECT_TOO_LARGE: i32 = 10334;
/// How long a `getMore` waits for new events before returning an empty batch (which carries the
/// post-batch resume token); bounds how stale an idle stream's checkpoint gets.
const MAX_AWAIT: Duration = Duration::from_millis(500);
/// After this many consecutive events dropped by the namespace filter, the reader hands on the
/// stream position anyway, so the checkpoint keeps moving through unsynced traffic.
const DROPPED_POSITION_EVERY: u32 = 1000;

/// What the reader hands on.
#[derive(Debug)]
pub enum ReaderItem {
    /// A relevant change event.
    Event(Box<ChangeEvent>),
    /// The stream position after everything handed on so far; `idle` when the server had no
    /// more events at the time.
    Position { token: Document, idle: bool },
}

/// Where a stream starts.
#[derive(Debug, Clone, PartialEq)]
pub enum StartAt {
    /// After this resume token.
    After(Document),
    /// At this operation time, inclusive.
    Time(OpTime),
}

/// See the module documentation.
pub struct Reader {
    pub client: Client,
    /// Every event read holds its bytes of the engine's memory budget until spooled or applied.
    pub budget: MemoryBudget,
    pub migration: String,
    pub filter: Arc<NamespaceFilter>,
    pub out: mpsc::Sender<ReaderItem>,
    pub cancel: CancellationToken,
    pub retry_budget: Duration,
}

/// The `$match` run on the server: nothing from `admin`, `config`, `local` or our internal
/// database, except the inserts of this migration's commit markers.
pub fn server_filter(migration: &str) -> Document {
    doc! {"$match": {"$or": [
        {"ns.db": {"$nin": ["admin", "config", "local", INTERNAL_DATABASE]}},
        {"operationType": "insert", "ns.db": INTERNAL_DATABASE, "ns.coll": marker_collection(migration)},
    ]}}
}

fn token_document(token: &ResumeToken) -> Result<Document, WorkerError> {
    bson::to_document(token).map_err(|e| WorkerError::InvalidData(format!("resume token: {e}")))
}

fn resume_token(token: &Document) -> Result<ResumeToken, WorkerError> {
    bson::from_document(token.clone()).map_err(|e| WorkerError::InvalidData(format!("resume token: {e}")))
}

/// Whether an error says the resume point is no longer in the source oplog.
pub fn is_history_lost(error: &WorkerError) -> bool {
    matches!(error.code(), Some(CHANGE_STREAM_HISTORY_LOST | CAPPED_POSITION_LOST))
}

/// The fatal error of a lost history.
pub fn history_lost(start: &StartAt, error: &WorkerError) -> WorkerError {
    let point = match start {
        StartAt::After(_) => "the checkpointed resume token".to_string(),
        StartAt::Time(time) => format!("operation time {time}"),
    };
    WorkerError::fatal(
        HISTORY_LOST,
        format!(
            "the change stream cannot resume from {point}: the source oplog no longer holds the resume point \
             (the copy or a pause outlasted the oplog window); start a new migration (resync) ({error})"
        ),
    )
}

fn is_unsupported_split_stage(error: &mongodb::error::Error) -> bool {
    let code = server_code(error);
    // 40324: unrecognized pipeline stage (servers before 6.0.9 / 7.0); 5187201: stage not
    // permitted in a change stream pipeline.
    matches!(code, Some(40324 | 5187201)) || error.to_string().contains("$changeStreamSplitLargeEvent")
}

impl Reader {
    /// Reads until the consumer goes away (then `Ok`) or a non-transient error.
    pub async fn run(self, start: StartAt) -> Result<(), WorkerError> {
        let mut position = start;
        let mut split_large_events = true;
        let mut failing_since: Option<Instant> = None;
        let mut attempt: u32 = 0;
        loop {
            let mut progressed = false;
            let error = match self.follow(&mut position, &mut split_large_events, &mut progressed).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if progressed {
                failing_since = None;
                attempt = 0;
            }
            if is_history_lost(&error) {
                return Err(history_lost(&position, &error));
            }
            if !error.is_retryable() {
                return Err(error);
            }
            let since = *failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() > self.retry_budget {
                warn!(error = %error, "change stream kept failing for the whole retry budget");
                return Err(error);
            }
            attempt = attempt.saturating_add(1);
            let base = Duration::from_millis(100).saturating_mul(1 << attempt.min(6)).min(Duration::from_secs(5));
            let delay = base.mul_f64(rand::rng().random_range(0.5..1.0));
            warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "change stream interrupted, reopening");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.cancel.cancelled() => return Err(WorkerError::Cancelled),
            }
        }
    }

    async fn open(
        &self,
        position: &StartAt,
        split_large_events: &mut bool,
    ) -> Result<ChangeStream<RawDocumentBuf>, WorkerError> {
        loop {
            let mut pipeline = vec![server_filter(&self.migration)];
            if *split_large_events {
                // Events over 16 MB arrive as fragments instead of failing the stream (7.0+).
                pipeline.push(doc! {"$changeStreamSplitLargeEvent": {}});
            }
            let watch = self.client.watch().pipeline(pipeline).show_expanded_events(true).max_await_time(MAX_AWAIT);
            let watch = match position {
                StartAt::After(token) => watch.start_after(resume_token(token)?),
                StartAt::Time(time) => watch.start_at_operation_time((*time).into()),
            };
            match watch.await {
                Ok(stream) => return Ok(stream.with_type::<RawDocumentBuf>()),
                Err(error) if *split_large_events && is_unsupported_split_stage(&error) => {
                    info!("the source cannot split large change events; events over 16 MB will fail the stream");
                    *split_large_events = false;
                }
                Err(error) => return Err(WorkerError::mongo("open the change stream on the source", error)),
            }
        }
    }

    async fn send(&self, item: ReaderItem) -> Result<(), ()> {
        tokio::select! {
            sent = self.out.send(item) => sent.map_err(|_| ()),
            _ = self.cancel.cancelled() => Err(()),
        }
    }

    /// Follows one opened stream; `Ok` when the consumer is gone.
    async fn follow(
        &self,
        position: &mut StartAt,
        split_large_events: &mut bool,
        progressed: &mut bool,
    ) -> Result<(), WorkerError> {
        let mut stream = self.open(position, split_large_events).await?;
        let mut fragments = Fragments::default();
        let mut dropped: u32 = 0;
        loop {
            let next = tokio::select! {
                next = stream.next_if_any() => next,
                _ = self.cancel.cancelled() => return Err(WorkerError::Cancelled),
            };
            let raw = match next {
                Ok(raw) => raw,
                Err(error) if server_code(&error) == Some(BSON_OBJECT_TOO_LARGE) && !*split_large_events => {
                    return Err(WorkerError::fatal(
                        EVENT_TOO_LARGE,
                        format!(
                            "a change event on the source is larger than 16 MB and the source cannot split it \
                             ($changeStreamSplitLargeEvent needs MongoDB 6.0.9 or 7.0); the event cannot be \
                             applied ({error})"
                        ),
                    ));
                }
                Err(error) => return Err(WorkerError::mongo("read the change stream", error)),
            };
            match raw {
                Some(raw) => {
                    *progressed = true;
                    let Some(raw) = fragments.push(raw)? else { continue };
                    let mut event = ChangeEvent::from_raw(raw)?;
                    let token = event.token.clone();
                    if is_relevant(&event, &self.filter, &self.migration) {
                        dropped = 0;
                        event.held = Some(tokio::select! {
                            held = self.budget.hold(event.size()) => held?,
                            _ = self.cancel.cancelled() => return Err(WorkerError::Cancelled),
                        });
                        if self.send(ReaderItem::Event(Box::new(event))).await.is_err() {
                            return Ok(());
                        }
                    } else {
                        dropped += 1;
                        if dropped >= DROPPED_POSITION_EVERY {
                            dropped = 0;
                            if self.send(ReaderItem::Position { token: token.clone(), idle: false }).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    // Reopening continues after this event: everything up to it is handed on
                    // (or needs nothing).
                    *position = StartAt::After(token);
                }
                None => {
                    // No token is taken in the middle of a fragmented event: resuming there would
                    // deliver its tail alone.
                    if fragments.is_pending() {
                        continue;
                    }
                    if let Some(token) = stream.resume_token() {
                        let token = token_document(&token)?;
                        if self.send(ReaderItem::Position { token: token.clone(), idle: true }).await.is_err() {
                            return Ok(());
                        }
                        *position = StartAt::After(token);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_tokens_convert_both_ways() {
        let token = doc! {"_data": "8264AB00000001"};
        let back = token_document(&resume_token(&token).unwrap()).unwrap();
        assert_eq!(back, token);
    }

    #[test]
    fn the_server_filter_keeps_only_our_markers_of_the_internal_database() {
        let filter = server_filter("m1");
        let or = filter.get_document("$match").unwrap().get_array("$or").unwrap();
        assert_eq!(or.len(), 2);
        let markers = or[1].as_document().unwrap();
        assert_eq!(markers.get_str("ns.coll").unwrap(), "markers.m1");
        assert_eq!(markers.get_str("operationType").unwrap(), "insert");
    }

    #[test]
    fn lost_history_is_fatal_and_says_how_to_recover() {
        let error = history_lost(&StartAt::Time(OpTime { t: 5, i: 1 }), &WorkerError::InvalidData("x".into()));
        let WorkerError::Fatal { name, description } = error else { panic!("not fatal") };
        assert_eq!(name, HISTORY_LOST);
        assert!(description.contains("Timestamp(5, 1)") && description.contains("resync"), "{description}");
    }
}
