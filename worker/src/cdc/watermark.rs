//! The apply watermark: how far the change stream is applied *in order*.
//!
//! Every event handed to the appliers gets a dense sequence number (its spool `_id` while
//! draining, a counter continuing from there when live). Appliers finish out of order — one
//! applier may be far ahead of another — so the durable position (the checkpointed resume token,
//! `next_apply_seq`, `applied_through`) may only move to the end of the longest prefix of
//! sequence numbers that are *all* applied. Checkpointing anything beyond it could skip an event
//! that one slow applier still holds, which is silent divergence after a takeover.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bson::Document;
use clustersync_common::extjson::OpTime;
use tokio::sync::watch;

use crate::error::WorkerError;

/// How many applied commit-marker ids are remembered (a migration writes one per `/commit`).
const REMEMBERED_MARKERS: usize = 16;

/// What the checkpoint needs to know about one sequence number once it is applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlotMeta {
    /// Cluster time of the event (none for a bare resume-token position).
    pub cluster_time: Option<OpTime>,
    /// Resume token after this item, for items read live (spooled items resume from the spool).
    pub token: Option<Document>,
    /// The id of a commit marker this item inserts on the source.
    pub marker: Option<String>,
    /// Whether the item is a change event (counted in `events_applied`) rather than a position.
    pub is_event: bool,
}

/// The applied prefix: everything below `next_seq` is applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// First sequence number not known to be applied.
    pub next_seq: u64,
    /// Cluster time of the last event of the prefix.
    pub cluster_time: Option<OpTime>,
    /// Resume token of the last live item of the prefix.
    pub token: Option<Document>,
    /// Change events in the prefix since the watermark was created.
    pub events: u64,
    /// Commit markers in the prefix, most recent last.
    pub markers: Vec<String>,
}

/// A violated watermark invariant: a bug in the caller, never a data condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatermarkError {
    #[error("sequence number {got} registered out of order (expected {expected})")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("sequence number {seq} completed but it is not pending")]
    NotPending { seq: u64 },
}

impl From<WatermarkError> for WorkerError {
    fn from(error: WatermarkError) -> Self {
        WorkerError::InvalidData(format!("change stream watermark: {error}"))
    }
}

#[derive(Debug)]
struct Slot {
    done: bool,
    meta: SlotMeta,
}

/// The watermark over sequence numbers (single-threaded core; see [`SharedWatermark`]).
#[derive(Debug)]
pub struct Watermark {
    /// Sequence number of `slots[0]` (equal to `applied.next_seq`).
    base: u64,
    slots: VecDeque<Slot>,
    applied: Applied,
}

impl Watermark {
    /// A watermark whose applied prefix ends below `next_seq`, at `cluster_time` / `token`.
    pub fn new(next_seq: u64, cluster_time: Option<OpTime>, token: Option<Document>) -> Self {
        Self {
            base: next_seq,
            slots: VecDeque::new(),
            applied: Applied { next_seq, cluster_time, token, events: 0, markers: Vec::new() },
        }
    }

    /// The sequence number the next [`Watermark::register`] must use.
    pub fn next_to_register(&self) -> u64 {
        self.base + self.slots.len() as u64
    }

    /// Registers `seq` as handed out (not yet applied). Sequence numbers come in order.
    pub fn register(&mut self, seq: u64, meta: SlotMeta) -> Result<(), WatermarkError> {
        let expected = self.next_to_register();
        if seq != expected {
            return Err(WatermarkError::OutOfOrder { expected, got: seq });
        }
        self.slots.push_back(Slot { done: false, meta });
        Ok(())
    }

    /// Marks `seq` applied; returns whether the applied prefix moved.
    pub fn complete(&mut self, seq: u64) -> Result<bool, WatermarkError> {
        let slot = seq
            .checked_sub(self.base)
            .and_then(|offset| usize::try_from(offset).ok())
            .and_then(|offset| self.slots.get_mut(offset))
            .filter(|slot| !slot.done)
            .ok_or(WatermarkError::NotPending { seq })?;
        slot.done = true;
        let mut advanced = false;
        while self.slots.front().is_some_and(|slot| slot.done) {
            let Some(slot) = self.slots.pop_front() else { break };
            self.base += 1;
            advanced = true;
            let applied = &mut self.applied;
            applied.next_seq = self.base;
            if slot.meta.cluster_time.is_some() {
                applied.cluster_time = slot.meta.cluster_time;
            }
            if slot.meta.token.is_some() {
                applied.token = slot.meta.token;
            }
            if slot.meta.is_event {
                applied.events += 1;
            }
            if let Some(marker) = slot.meta.marker {
                applied.markers.push(marker);
                if applied.markers.len() > REMEMBERED_MARKERS {
                    applied.markers.remove(0);
                }
            }
        }
        Ok(advanced)
    }

    /// The applied prefix.
    pub fn applied(&self) -> &Applied {
        &self.applied
    }

    /// Items handed out and not yet applied (including those waiting behind a slower one).
    pub fn pending(&self) -> usize {
        self.slots.len()
    }
}

/// A [`Watermark`] shared by the dispatcher (registers), the appliers (complete) and the
/// checkpointer (reads), with a way to wait until a position is applied (DDL barriers).
#[derive(Clone)]
pub struct SharedWatermark {
    inner: Arc<Mutex<Watermark>>,
    /// `Applied::next_seq`, published on every advance.
    next_tx: Arc<watch::Sender<u64>>,
}

impl SharedWatermark {
    pub fn new(watermark: Watermark) -> Self {
        let (next_tx, _) = watch::channel(watermark.applied().next_seq);
        Self { inner: Arc::new(Mutex::new(watermark)), next_tx: Arc::new(next_tx) }
    }

    fn lock(&self) -> MutexGuard<'_, Watermark> {
        // A panic while holding the lock cannot leave the watermark half-updated in a way that
        // matters: the task is torn down and the durable checkpoint is what the next run uses.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn register(&self, seq: u64, meta: SlotMeta) -> Result<(), WatermarkError> {
        self.lock().register(seq, meta)
    }

    /// Marks every sequence number of `seqs` applied.
    pub fn complete(&self, seqs: &[u64]) -> Result<(), WatermarkError> {
        let next = {
            let mut watermark = self.lock();
            let mut advanced = false;
            for seq in seqs {
                advanced |= watermark.complete(*seq)?;
            }
            advanced.then(|| watermark.applied().next_seq)
        };
        if let Some(next) = next {
            self.next_tx.send_replace(next);
        }
        Ok(())
    }

    /// Waits until every sequence number below `seq` is applied.
    pub async fn wait_applied_below(&self, seq: u64) {
        let mut rx = self.next_tx.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail here.
        let _ = rx.wait_for(|next| *next >= seq).await;
    }

    pub fn applied(&self) -> Applied {
        self.lock().applied().clone()
    }

    pub fn pending(&self) -> usize {
        self.lock().pending()
    }
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;

    fn event(t: u32, token: Option<&str>) -> SlotMeta {
        SlotMeta {
            cluster_time: Some(OpTime { t, i: 0 }),
            token: token.map(|data| doc! {"_data": data}),
            marker: None,
            is_event: true,
        }
    }

    #[test]
    fn advances_only_over_a_complete_prefix() {
        let mut watermark = Watermark::new(10, None, Some(doc! {"_data": "start"}));
        for (seq, t) in [(10, 1), (11, 2), (12, 3)] {
            watermark.register(seq, event(t, Some(&format!("tok{seq}")))).unwrap();
        }
        // The last applier finishes first: nothing before it is applied, so nothing moves.
        assert!(!watermark.complete(12).unwrap());
        assert_eq!(watermark.applied().next_seq, 10);
        assert_eq!(watermark.applied().token, Some(doc! {"_data": "start"}));
        assert!(watermark.complete(10).unwrap());
        assert_eq!(watermark.applied().next_seq, 11);
        assert_eq!(watermark.applied().cluster_time, Some(OpTime { t: 1, i: 0 }));
        assert!(watermark.complete(11).unwrap());
        let applied = watermark.applied();
        assert_eq!(applied.next_seq, 13);
        assert_eq!(applied.token, Some(doc! {"_data": "tok12"}));
        assert_eq!(applied.cluster_time, Some(OpTime { t: 3, i: 0 }));
        assert_eq!(applied.events, 3);
        assert_eq!(watermark.pending(), 0);
    }

    #[test]
    fn positions_and_markers_are_tracked_but_not_counted_as_events() {
        let mut watermark = Watermark::new(0, None, None);
        watermark.register(0, event(5, None)).unwrap();
        watermark.register(1, SlotMeta { token: Some(doc! {"_data": "pbrt"}), ..Default::default() }).unwrap();
        watermark.register(2, SlotMeta { marker: Some("m1".into()), is_event: true, ..event(6, None) }).unwrap();
        watermark.complete(1).unwrap();
        watermark.complete(2).unwrap();
        assert!(watermark.applied().markers.is_empty(), "the marker is applied only once all before it are");
        watermark.complete(0).unwrap();
        let applied = watermark.applied();
        assert_eq!(applied.markers, vec!["m1".to_string()]);
        assert_eq!(applied.events, 2);
        // The bare position keeps the token; the later event without a token does not erase it.
        assert_eq!(applied.token, Some(doc! {"_data": "pbrt"}));
        assert_eq!(applied.cluster_time, Some(OpTime { t: 6, i: 0 }));
    }

    #[test]
    fn misuse_is_an_error_not_a_silent_skip() {
        let mut watermark = Watermark::new(3, None, None);
        assert_eq!(watermark.register(4, event(1, None)), Err(WatermarkError::OutOfOrder { expected: 3, got: 4 }));
        watermark.register(3, event(1, None)).unwrap();
        assert_eq!(watermark.complete(2), Err(WatermarkError::NotPending { seq: 2 }));
        assert_eq!(watermark.complete(9), Err(WatermarkError::NotPending { seq: 9 }));
        watermark.complete(3).unwrap();
        assert_eq!(watermark.complete(3), Err(WatermarkError::NotPending { seq: 3 }));
    }

    #[tokio::test]
    async fn barrier_waits_for_every_earlier_item() {
        let shared = SharedWatermark::new(Watermark::new(0, None, None));
        for seq in 0..3 {
            shared.register(seq, event(1, None)).unwrap();
        }
        let waiter = {
            let shared = shared.clone();
            tokio::spawn(async move { shared.wait_applied_below(2).await })
        };
        shared.complete(&[1]).unwrap();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        shared.complete(&[0]).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(shared.applied().next_seq, 2);
        assert_eq!(shared.pending(), 1);
    }
}
