//! Change-application load: a generator writing a 50/30/20 update/insert/delete mix on the
//! source, and a probe measuring when each write becomes visible on the destination.
//!
//! # How lag is measured
//!
//! Every write gets a sequence number `seq`. Updates `$set` `seq` and `t` (the send time, Unix
//! ms) into the document; inserts carry them in the new document; a delete's `seq` is recorded
//! against the deleted `_id` before the delete is sent (`_id`s are never reused). The send time
//! is taken just before the write goes to the source, so it is no later than the source's commit
//! of the write.
//!
//! The probe follows a change stream on the **destination**'s `bench` database. Each event there
//! is one write clustersync applied, and its `wallTime` is the destination's clock at the moment
//! the write was committed there — i.e. when it became visible to readers. The probe finds the
//! `seq` the event carries (`updateDescription.updatedFields.seq` for updates,
//! `fullDocument.seq` for inserts and replacements, the recorded `seq` of the `_id` for deletes)
//! and keeps the first `wallTime` seen for it. Lag of a write = destination `wallTime` − send
//! time. Both clocks are this machine's `CLOCK_REALTIME` (all processes run here), in
//! milliseconds. Nothing is sampled: every write is accounted for, and the probe's own reading
//! speed does not matter because it uses the destination's commit times, not the time it reads
//! an event.
//!
//! The probe costs the destination server one change-stream reader; that cost is part of every
//! figure measured with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bson::{Document, RawDocumentBuf, doc};
use futures::StreamExt;
use mongodb::{Client, Collection};
use rand::Rng;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::data::{DATABASE, Layout, document};

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// One writer's documents: writer `w` of `W` owns the `_id`s congruent to `w` modulo `W`, so
/// writers never touch each other's documents.
struct WriterState {
    index: usize,
    live: Vec<(usize, i64)>,
    next_id: i64,
    stride: i64,
}

/// Sequence numbers and the deletes waiting to be seen, shared by the writers and the probe.
#[derive(Default)]
struct Shared {
    seq: AtomicU64,
    deletes: Mutex<HashMap<i64, u64>>,
}

/// The generator and its writers' state across phases.
pub struct Workload {
    layout: Layout,
    writers: Vec<WriterState>,
    shared: Arc<Shared>,
}

/// One write as sent.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Sequence number.
    pub seq: u64,
    /// Send time, Unix ms.
    pub sent_ms: i64,
}

/// What one phase of the generator did.
#[derive(Debug, Default)]
pub struct PhaseWrites {
    /// Unix ms when the phase started.
    pub start_ms: i64,
    /// Unix ms when the last write was acknowledged by the source.
    pub stop_ms: i64,
    /// Every acknowledged write.
    pub writes: Vec<Sent>,
    /// Writes the source refused or that failed in transit.
    pub errors: u64,
    /// The first error, for the report.
    pub first_error: Option<String>,
}

/// What a writer task hands back: its state, its writes, its error count and first error.
type WriterResult = (WriterState, Vec<Sent>, u64, Option<String>);

/// A phase in progress.
pub struct RunningPhase {
    start_ms: i64,
    tasks: Vec<JoinHandle<WriterResult>>,
}

impl RunningPhase {
    /// Whether every writer has stopped.
    pub fn is_finished(&self) -> bool {
        self.tasks.iter().all(|task| task.is_finished())
    }

    /// Waits for the writers; gives their state back to `workload`.
    pub async fn finish(self, workload: &mut Workload) -> anyhow::Result<PhaseWrites> {
        let mut out = PhaseWrites { start_ms: self.start_ms, ..PhaseWrites::default() };
        for task in self.tasks {
            let (state, writes, errors, first_error) = task.await?;
            workload.writers.push(state);
            out.writes.extend(writes);
            out.errors += errors;
            out.first_error = out.first_error.or(first_error);
        }
        out.stop_ms = now_ms();
        workload.writers.sort_by_key(|w| w.index);
        Ok(out)
    }
}

impl Workload {
    /// A generator with `writers` concurrent writers over the documents of `layout`.
    pub fn new(layout: &Layout, writers: usize) -> Workload {
        let n = layout.documents() as i64;
        let mut states: Vec<WriterState> = (0..writers)
            .map(|index| WriterState { index, live: Vec::new(), next_id: n + index as i64, stride: writers as i64 })
            .collect();
        for (collection, (_, ids)) in layout.collections.iter().enumerate() {
            for id in ids.clone() {
                states[(id as usize) % writers].live.push((collection, id));
            }
        }
        Workload { layout: layout.clone(), writers: states, shared: Arc::new(Shared::default()) }
    }

    /// Starts the writers on `client` (the source) for `duration`, as fast as they can go
    /// (`rate: None`) or at `rate` writes per second in total, sent on a fixed schedule
    /// (a late writer catches up rather than skipping writes).
    pub fn start_phase(&mut self, client: &Client, duration: Duration, rate: Option<f64>) -> RunningPhase {
        let count = self.writers.len().max(1);
        let db = client.database(DATABASE);
        let raw: Arc<Vec<Collection<RawDocumentBuf>>> =
            Arc::new(self.layout.collections.iter().map(|(name, _)| db.collection(name)).collect());
        let plain: Arc<Vec<Collection<Document>>> =
            Arc::new(self.layout.collections.iter().map(|(name, _)| db.collection(name)).collect());
        let start = Instant::now();
        let deadline = start + duration;
        let mut tasks = Vec::new();
        for mut state in self.writers.drain(..) {
            let (raw, plain, shared, layout) = (raw.clone(), plain.clone(), self.shared.clone(), self.layout.clone());
            let interval = rate.map(|rate| Duration::from_secs_f64(count as f64 / rate.max(0.001)));
            tasks.push(tokio::spawn(async move {
                let mut writes = Vec::new();
                let (mut errors, mut first_error) = (0u64, None::<String>);
                let mut next_send = interval.map(|i| start + i.mul_f64(state.index as f64 / count as f64));
                loop {
                    if let Some(at) = next_send {
                        if at >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(at).await;
                        next_send = interval.map(|i| at + i);
                    } else if Instant::now() >= deadline {
                        break;
                    }
                    let seq = shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
                    let result = write_one(&mut state, seq, &raw, &plain, &shared, &layout).await;
                    match result {
                        Ok(sent_ms) => writes.push(Sent { seq, sent_ms }),
                        Err(error) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| error.to_string());
                        }
                    }
                }
                (state, writes, errors, first_error)
            }));
        }
        RunningPhase { start_ms: now_ms(), tasks }
    }
}

/// One write of the 50/30/20 update/insert/delete mix; returns its send time.
async fn write_one(
    state: &mut WriterState,
    seq: u64,
    raw: &[Collection<RawDocumentBuf>],
    plain: &[Collection<Document>],
    shared: &Shared,
    layout: &Layout,
) -> mongodb::error::Result<i64> {
    let (op, pick, value, collection) = {
        let mut rng = rand::rng();
        (rng.random_range(0..100u32), rng.random::<u64>(), rng.random::<i64>(), layout.weighted_collection(&mut rng))
    };
    let op = if state.live.is_empty() { 60 } else { op };
    let sent_ms;
    match op {
        0..50 => {
            let (collection, id) = state.live[(pick % state.live.len() as u64) as usize];
            sent_ms = now_ms();
            plain[collection]
                .update_one(
                    doc! {"_id": id},
                    doc! {"$set": {"seq": seq as i64, "t": sent_ms, "v": value}, "$inc": {"n": 1}},
                )
                .await?;
        }
        50..80 => {
            let id = state.next_id;
            state.next_id += state.stride;
            let document = {
                let mut rng = rand::rng();
                sent_ms = now_ms();
                document(id, seq as i64, sent_ms, &mut rng)
            };
            raw[collection].insert_one(document).await?;
            state.live.push((collection, id));
        }
        _ => {
            let index = (pick % state.live.len() as u64) as usize;
            let (collection, id) = state.live.swap_remove(index);
            shared.deletes.lock().expect("deletes lock").insert(id, seq);
            sent_ms = now_ms();
            plain[collection].delete_one(doc! {"_id": id}).await?;
        }
    }
    Ok(sent_ms)
}

/// The destination-side probe: first destination `wallTime` of every `seq`.
pub struct Probe {
    seen: Arc<Mutex<HashMap<u64, i64>>>,
    unmatched: Arc<AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Probe {
    /// Opens the change stream on the destination (before returning, so no later write is
    /// missed) and starts reading it.
    pub async fn start(destination: &Client, workload: &Workload) -> anyhow::Result<Probe> {
        let mut stream = destination.database(DATABASE).watch().await?.with_type::<RawDocumentBuf>();
        let seen = Arc::new(Mutex::new(HashMap::<u64, i64>::new()));
        let unmatched = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (seen_in, unmatched_in, shared) = (seen.clone(), unmatched.clone(), workload.shared.clone());
        let task = tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stopped.changed() => return Ok(()),
                    next = stream.next() => match next {
                        Some(event) => event?,
                        None => return Ok(()),
                    },
                };
                match seq_and_wall(&event, &shared) {
                    Some((seq, wall)) => {
                        seen_in.lock().expect("probe lock").entry(seq).or_insert(wall);
                    }
                    None => {
                        unmatched_in.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Ok(Probe { seen, unmatched, stop, task })
    }

    /// Writes seen so far.
    pub fn seen(&self) -> u64 {
        self.seen.lock().expect("probe lock").len() as u64
    }

    /// Destination events that matched no write of the generator.
    pub fn unmatched(&self) -> u64 {
        self.unmatched.load(Ordering::Relaxed)
    }

    /// Fails if the probe's change stream failed.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.task.is_finished() {
            anyhow::bail!("the destination change stream of the lag probe stopped");
        }
        Ok(())
    }

    /// The destination `wallTime` of each given write (`None`: not visible yet).
    pub fn visible_at(&self, writes: &[Sent]) -> Vec<Option<i64>> {
        let seen = self.seen.lock().expect("probe lock");
        writes.iter().map(|w| seen.get(&w.seq).copied()).collect()
    }

    /// Stops the probe.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await?
    }
}

fn seq_and_wall(event: &RawDocumentBuf, shared: &Shared) -> Option<(u64, i64)> {
    let wall = event.get_datetime("wallTime").ok()?.timestamp_millis();
    let seq = match event.get_str("operationType").ok()? {
        "update" => {
            event.get_document("updateDescription").ok()?.get_document("updatedFields").ok()?.get_i64("seq").ok()?
        }
        "insert" | "replace" => event.get_document("fullDocument").ok()?.get_i64("seq").ok()?,
        "delete" => {
            let id = event.get_document("documentKey").ok()?.get_i64("_id").ok()?;
            shared.deletes.lock().expect("deletes lock").remove(&id)? as i64
        }
        _ => return None,
    };
    (seq > 0).then_some((seq as u64, wall))
}

/// Figures of one load phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CdcFigures {
    /// Requested total write rate (`None`: as fast as possible).
    pub target_writes_per_sec: Option<f64>,
    /// Seconds the generator ran.
    pub seconds: f64,
    /// Writes acknowledged by the source.
    pub writes: u64,
    /// Writes that failed.
    pub write_errors: u64,
    /// Source writes per second.
    pub source_writes_per_sec: f64,
    /// Writes of the phase divided by the time from the phase's start to the last of them
    /// visible on the destination: the rate clustersync applied this load at.
    pub applied_events_per_sec: f64,
    /// Writes visible on the destination before the generator stopped, per second of the phase.
    pub applied_in_window_per_sec: f64,
    /// Lag percentiles, ms (destination commit time − source send time).
    pub lag_p50_ms: Option<i64>,
    /// 99th percentile.
    pub lag_p99_ms: Option<i64>,
    /// Largest.
    pub lag_max_ms: Option<i64>,
    /// Writes visible on the destination.
    pub visible: u64,
    /// Writes never seen on the destination within the wait.
    pub missing: u64,
    /// Seconds from the generator's stop to the last write visible (`None`: writes missing).
    pub converge_seconds: Option<f64>,
    /// clustersync's `totalEventsApplied` growth over the phase and its convergence.
    pub clustersync_events_applied: Option<u64>,
    /// Largest `lagTimeSeconds` clustersync reported during the phase.
    pub clustersync_max_lag_seconds: Option<u64>,
    /// First write error, if any.
    pub first_error: Option<String>,
}

/// Percentile by nearest rank of sorted values.
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Computes the figures of a phase from what was sent and what the probe saw.
pub fn figures(phase: &PhaseWrites, visible: &[Option<i64>], target: Option<f64>) -> CdcFigures {
    let seconds = (phase.stop_ms - phase.start_ms).max(1) as f64 / 1000.0;
    let mut lags: Vec<i64> = Vec::with_capacity(visible.len());
    let (mut in_window, mut last_visible) = (0u64, None::<i64>);
    for (write, wall) in phase.writes.iter().zip(visible) {
        if let Some(wall) = wall {
            lags.push((wall - write.sent_ms).max(0));
            if *wall <= phase.stop_ms {
                in_window += 1;
            }
            last_visible = Some(last_visible.map_or(*wall, |last| last.max(*wall)));
        }
    }
    lags.sort_unstable();
    let writes = phase.writes.len() as u64;
    let missing = writes - lags.len() as u64;
    let applied_span = last_visible.map(|last| (last.max(phase.stop_ms) - phase.start_ms).max(1) as f64 / 1000.0);
    CdcFigures {
        target_writes_per_sec: target,
        seconds,
        writes,
        write_errors: phase.errors,
        source_writes_per_sec: writes as f64 / seconds,
        applied_events_per_sec: applied_span.map_or(0.0, |span| lags.len() as f64 / span),
        applied_in_window_per_sec: in_window as f64 / seconds,
        lag_p50_ms: percentile(&lags, 50.0),
        lag_p99_ms: percentile(&lags, 99.0),
        lag_max_ms: lags.last().copied(),
        visible: lags.len() as u64,
        missing,
        converge_seconds: (missing == 0)
            .then(|| last_visible.map_or(0.0, |last| (last - phase.stop_ms).max(0) as f64 / 1000.0)),
        clustersync_events_applied: None,
        clustersync_max_lag_seconds: None,
        first_error: phase.first_error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn figures_of_a_phase_that_keeps_up_and_one_that_does_not() {
        let phase = PhaseWrites {
            start_ms: 0,
            stop_ms: 1000,
            writes: (0..10).map(|i| Sent { seq: i + 1, sent_ms: i as i64 * 100 }).collect(),
            ..PhaseWrites::default()
        };
        let visible: Vec<Option<i64>> = phase.writes.iter().map(|w| Some(w.sent_ms + 10)).collect();
        let f = figures(&phase, &visible, None);
        assert_eq!(f.missing, 0);
        assert_eq!(f.lag_p99_ms, Some(10));
        assert_eq!(f.converge_seconds, Some(0.0));
        assert!((f.applied_events_per_sec - 10.0).abs() < 1e-9);

        // Applied at half the write rate: the last write shows up a second after the stop.
        let slow: Vec<Option<i64>> = (0..10).map(|i| Some(i * 200 + 200)).collect();
        let f = figures(&phase, &slow, None);
        assert_eq!(f.converge_seconds, Some(1.0));
        assert!((f.applied_events_per_sec - 5.0).abs() < 1e-9);

        let mut partial = visible.clone();
        partial[3] = None;
        let f = figures(&phase, &partial, None);
        assert_eq!((f.missing, f.converge_seconds), (1, None));
    }
}
