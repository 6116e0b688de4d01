//! Tunables of the data plane, with defaults that suit a small machine. Loaded from the
//! `worker:` section of the YAML configuration by the binary; validated there.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mongo::CopyReadPreference;

/// Data-plane settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkerSettings {
    /// Tasks one worker process runs at once (copy partitions, change streams, verify ranges).
    pub task_slots: u32,
    /// Most documents per copy insert batch (also the checkpoint granularity of a copy).
    pub copy_batch_documents: usize,
    /// Most bytes per copy insert batch.
    pub copy_batch_bytes: usize,
    /// Target size of one copy partition; the planner splits collections into ranges of about this size.
    pub partition_bytes: u64,
    /// Read preference for copy and verification reads on the source.
    pub copy_read_preference: CopyReadPreference,
    /// Parallel appliers of one change stream; events are routed by document key.
    pub appliers: usize,
    /// Most events per spool write.
    pub spool_batch_events: usize,
    /// Most events per applier batch.
    pub apply_batch_events: usize,
    /// Total time a transient error is retried before the task attempt gives up.
    #[serde(with = "humantime_serde")]
    pub retry_budget: Duration,
    /// Target lag: when applying falls further behind than this, copy reads are throttled.
    #[serde(with = "humantime_serde")]
    pub target_lag: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            task_slots: 4,
            copy_batch_documents: 1000,
            copy_batch_bytes: 8 * 1024 * 1024,
            partition_bytes: 64 * 1024 * 1024,
            copy_read_preference: CopyReadPreference::Primary,
            appliers: 8,
            spool_batch_events: 1000,
            apply_batch_events: 500,
            retry_budget: crate::mongo::DEFAULT_RETRY_BUDGET,
            target_lag: Duration::from_secs(10),
        }
    }
}

impl WorkerSettings {
    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, value: u64| {
            if value == 0 { Err(format!("worker.{name} must be greater than 0")) } else { Ok(()) }
        };
        positive("taskSlots", self.task_slots as u64)?;
        positive("copyBatchDocuments", self.copy_batch_documents as u64)?;
        positive("appliers", self.appliers as u64)?;
        positive("spoolBatchEvents", self.spool_batch_events as u64)?;
        positive("applyBatchEvents", self.apply_batch_events as u64)?;
        if self.copy_batch_bytes < 16 * 1024 * 1024 / 16 {
            return Err("worker.copyBatchBytes must be at least 1 MiB".into());
        }
        if self.partition_bytes < 1024 * 1024 {
            return Err("worker.partitionBytes must be at least 1 MiB".into());
        }
        if self.retry_budget.is_zero() {
            return Err("worker.retryBudget must be greater than 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        WorkerSettings::default().validate().unwrap();
        let bad = WorkerSettings { appliers: 0, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("appliers"));
    }
}
