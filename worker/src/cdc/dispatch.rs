//! The dispatcher: takes events in stream order (from the drainer, then live from the intake),
//! registers each in the watermark, and hands it to the applier that owns its document — or,
//! for a DDL event, waits until everything before it is applied, applies it, and only then
//! continues (a DDL event is a barrier across all appliers).

use std::sync::Arc;

use bson::Document;
use clustersync_common::model::SyncStateDoc;
use clustersync_common::namespace::NamespaceFilter;
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::cdc::apply::ApplyItem;
use crate::cdc::ddl::{DdlExecutor, plan_ddl};
use crate::cdc::event::{ChangeEvent, route};
use crate::cdc::watermark::{SharedWatermark, SlotMeta};
use crate::error::WorkerError;

/// What the dispatcher receives, in sequence-number order.
#[derive(Debug)]
pub enum DispatchItem {
    /// A change event. `live` events carry their resume token into the watermark; spooled ones
    /// resume from the spool instead.
    Event { seq: u64, event: Box<ChangeEvent>, live: bool },
    /// A stream position with nothing to apply (the post-batch resume token of a quiet stream),
    /// so the checkpointed token keeps up with the stream.
    Position { seq: u64, token: Document },
}

/// See the module documentation.
pub struct Dispatcher {
    pub queue: mpsc::Receiver<DispatchItem>,
    pub appliers: Vec<mpsc::Sender<ApplyItem>>,
    pub watermark: SharedWatermark,
    pub ddl: DdlExecutor,
    pub filter: Arc<NamespaceFilter>,
    pub migration: String,
    /// The migration's state, for the copy completion time (renames that overlapped the copy).
    pub state: watch::Receiver<SyncStateDoc>,
}

impl Dispatcher {
    pub async fn run(mut self) -> Result<(), WorkerError> {
        while let Some(item) = self.queue.recv().await {
            match item {
                DispatchItem::Position { seq, token } => {
                    self.watermark.register(seq, SlotMeta { token: Some(token), ..Default::default() })?;
                    self.watermark.complete(&[seq])?;
                }
                DispatchItem::Event { seq, event, live } => self.dispatch(seq, *event, live).await?,
            }
        }
        Ok(())
    }

    async fn dispatch(&mut self, seq: u64, event: ChangeEvent, live: bool) -> Result<(), WorkerError> {
        let marker = event.marker_id(&self.migration);
        let meta = SlotMeta {
            cluster_time: event.cluster_time,
            token: live.then(|| event.token.clone()),
            marker: marker.clone(),
            is_event: true,
        };
        self.watermark.register(seq, meta)?;
        if marker.is_some() {
            // A commit marker changes nothing on the destination: it is a position, reached once
            // every event before it is applied (the watermark sees to that).
            debug!(seq, marker = ?marker, "commit marker read");
            return self.watermark.complete(&[seq]).map_err(Into::into);
        }
        if event.op.is_data() {
            let (Some(coll), Some(key)) = (&event.coll, &event.document_key) else {
                return Err(WorkerError::InvalidData(format!(
                    "{} event on {} without a collection or document key",
                    event.op.as_str(),
                    event.ns_display()
                )));
            };
            let applier = route(&event.db, coll, key, self.appliers.len());
            // The bounded queue is the backpressure: a slow applier slows the dispatcher, the
            // dispatcher the drainer or intake, and they the stream reader.
            return self.appliers[applier]
                .send(ApplyItem { seq, event })
                .await
                .map_err(|_| WorkerError::InvalidData(format!("applier {applier} stopped")));
        }
        // A barrier: the DDL must see the destination exactly as the source was just before it.
        self.watermark.wait_applied_below(seq).await;
        let copy_completed_time = self.state.borrow().copy_completed_time;
        for action in plan_ddl(&event, &self.filter, copy_completed_time)? {
            self.ddl.execute(action).await?;
        }
        self.watermark.complete(&[seq]).map_err(Into::into)
    }
}
