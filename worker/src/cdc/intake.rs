//! The intake: takes what the reader delivers and either spools it (while the copy runs and
//! while the spool drains) or hands it straight to the dispatcher (live).
//!
//! The switch to live happens here, between two reader batches, once the drainer has handed out
//! every spooled event: from then on nothing is spooled, and the next event the reader delivers
//! is exactly the one after the last spooled event, so no event is lost or seen twice. Live
//! events continue the sequence numbers where the spool ended.

use std::time::Duration;

use bson::Document;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::info;

use crate::cdc::dispatch::DispatchItem;
use crate::cdc::event::ChangeEvent;
use crate::cdc::reader::ReaderItem;
use crate::cdc::spool::{self, Spool, SpoolPos};
use crate::error::WorkerError;

/// How long a spool batch waits for more events after its first one.
const BATCH_WINDOW: Duration = Duration::from_millis(100);

/// See the module documentation.
pub struct Intake {
    pub input: mpsc::Receiver<ReaderItem>,
    pub spool: Spool,
    /// Whether events go straight to the dispatcher.
    pub live: bool,
    /// Next sequence number (spool `_id` while spooling, live counter afterwards).
    pub next_seq: u64,
    /// The spool position, published after every durable spool write.
    pub positions: watch::Sender<SpoolPos>,
    pub dispatch: mpsc::Sender<DispatchItem>,
    /// Set by the engine once the copy is complete and the drainer runs.
    pub draining: watch::Receiver<bool>,
    /// Everything below this was handed to the dispatcher by the drainer.
    pub dispatched: watch::Receiver<u64>,
    /// Set to the first live sequence number when the intake switches to live.
    pub live_from: watch::Sender<Option<u64>>,
    pub batch_events: usize,
}

fn dispatcher_gone() -> WorkerError {
    WorkerError::InvalidData("change stream dispatcher stopped".into())
}

impl Intake {
    pub async fn run(mut self) -> Result<(), WorkerError> {
        let mut last_token: Option<Document> = None;
        loop {
            let Some(first) = self.input.recv().await else {
                return Err(WorkerError::InvalidData("change stream reader stopped".into()));
            };
            let (events, position) = self.collect(first).await;
            if !self.live && *self.draining.borrow() {
                self.maybe_switch_to_live().await?;
            }
            if self.live {
                self.dispatch_live(events, position, &mut last_token).await?;
            } else {
                self.spool(events, position).await?;
            }
        }
    }

    /// Gathers a batch: up to `batch_events` events; while spooling, waits a short window for
    /// more (fewer, larger spool writes); a position ends the batch.
    async fn collect(&mut self, first: ReaderItem) -> (Vec<ChangeEvent>, Option<(Document, bool)>) {
        let mut events = Vec::new();
        let mut item = first;
        let deadline = Instant::now() + BATCH_WINDOW;
        loop {
            match item {
                ReaderItem::Position { token, idle } => return (events, Some((token, idle))),
                ReaderItem::Event(event) => events.push(*event),
            }
            if events.len() >= self.batch_events {
                return (events, None);
            }
            let next = if self.live {
                self.input.try_recv().ok()
            } else {
                tokio::time::timeout_at(deadline, self.input.recv()).await.ok().flatten()
            };
            match next {
                Some(next) => item = next,
                None => return (events, None),
            }
        }
    }

    /// Switches to live if the drainer has handed out (or nearly) everything spooled: waits for
    /// the last few, then stops spooling. Until then spooling continues, so a long drain never
    /// holds up the stream.
    async fn maybe_switch_to_live(&mut self) -> Result<(), WorkerError> {
        let end = self.positions.borrow().next_seq;
        if *self.dispatched.borrow() + self.batch_events as u64 >= end {
            self.dispatched
                .wait_for(|dispatched| *dispatched >= end)
                .await
                .map_err(|_| WorkerError::InvalidData("spool drainer stopped".into()))?;
            info!(live_from = end, "spool drained: applying events as they arrive");
            self.live = true;
            self.next_seq = end;
            self.live_from.send_replace(Some(end));
        }
        Ok(())
    }

    async fn spool(&mut self, events: Vec<ChangeEvent>, position: Option<(Document, bool)>) -> Result<(), WorkerError> {
        let entries = events
            .iter()
            .enumerate()
            .map(|(offset, event)| spool::entry(self.next_seq + offset as u64, event))
            .collect::<Result<Vec<_>, _>>()?;
        // The position is published only after the write is durable: the checkpoint may then
        // say "resume after this token, spool from this sequence number".
        self.spool.write(&entries).await?;
        self.next_seq += entries.len() as u64;
        let next_seq = self.next_seq;
        self.positions.send_modify(|pos| {
            pos.next_seq = next_seq;
            pos.handed_out = next_seq;
            pos.events_spooled += events.len() as u64;
            if let Some(last) = events.last() {
                pos.token = Some(last.token.clone());
                if last.cluster_time.is_some() {
                    pos.read_through = last.cluster_time;
                }
            }
            if let Some((token, _)) = &position {
                pos.token = Some(token.clone());
            }
            pos.idle = position.as_ref().is_some_and(|(_, idle)| *idle);
        });
        Ok(())
    }

    async fn dispatch_live(
        &mut self,
        events: Vec<ChangeEvent>,
        position: Option<(Document, bool)>,
        last_token: &mut Option<Document>,
    ) -> Result<(), WorkerError> {
        let read_through = events.iter().rev().find_map(|event| event.cluster_time);
        for event in events {
            *last_token = Some(event.token.clone());
            let seq = self.next_seq;
            self.next_seq += 1;
            self.dispatch
                .send(DispatchItem::Event { seq, event: Box::new(event), live: true })
                .await
                .map_err(|_| dispatcher_gone())?;
        }
        let idle = position.as_ref().is_some_and(|(_, idle)| *idle);
        if let Some((token, _)) = position
            && last_token.as_ref() != Some(&token)
        {
            *last_token = Some(token.clone());
            let seq = self.next_seq;
            self.next_seq += 1;
            self.dispatch.send(DispatchItem::Position { seq, token }).await.map_err(|_| dispatcher_gone())?;
        }
        // Live, only the read position, idleness and hand-out count change; the spool position
        // stays where the spool ended.
        let next_seq = self.next_seq;
        self.positions.send_if_modified(|pos| {
            let before = (pos.read_through, pos.idle, pos.handed_out);
            if read_through.is_some() {
                pos.read_through = read_through;
            }
            pos.idle = idle;
            pos.handed_out = next_seq;
            before != (pos.read_through, pos.idle, pos.handed_out)
        });
        Ok(())
    }
}
