//! The one catalogue of coordination-store keys.
//!
//! Every key clustersync reads or writes lives under `/{root}/{migration}/`, so several
//! migrations (and several unrelated applications) can share one etcd. `root` is validated when
//! the configuration loads (it starts with `/`, has no trailing `/`, no empty segment).
//!
//! | key | value (JSON) | lifetime |
//! |---|---|---|
//! | `{m}/state` | [`SyncStateDoc`](crate::model::SyncStateDoc): lifecycle state, options, failure, commit progress | permanent; every transition is a CAS on `mod_revision` |
//! | `{m}/leader` | [`LeaderValue`](crate::model::LeaderValue): the elected coordinator | bound to the leader's lease |
//! | `{m}/instances/{instance}` | [`InstanceInfo`](crate::model::InstanceInfo): a live process, its roles and API address | bound to the process's lease |
//! | `{m}/plan/collections/{collection_id:020}` | [`PlannedCollection`](crate::model::PlannedCollection) | written by the leader during setup |
//! | `{m}/tasks/{task_id:020}` | [`TaskSpec`](crate::model::TaskSpec): immutable description of claimable work | written by the leader |
//! | `{m}/claims/{task_id:020}` | [`ClaimValue`](crate::model::ClaimValue): who holds the task | bound to the holder's lease; its `create_revision` is the fencing token |
//! | `{m}/checkpoints/{task_id:020}` | [`TaskCheckpoint`](crate::model::TaskCheckpoint) | written only through a txn fenced on the claim |
//! | `{m}/release/{task_id:020}` | empty: the leader asks the holder to hand the task back (rebalancing, pause) | deleted by the holder when it releases |
//! | `{m}/progress/{instance}` | [`InstanceProgress`](crate::model::InstanceProgress): live counters of one process | bound to the process's lease |
//!
//! `{m}` stands for `/{root}/{migration}`.

use crate::ids::{InstanceId, MigrationId, TaskId};

/// Default root prefix of every key.
pub const DEFAULT_ROOT: &str = "/clustersync";

/// Error for an invalid root prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid store root prefix {root:?}: {reason}")]
pub struct RootPrefixError {
    pub root: String,
    pub reason: &'static str,
}

/// Builds every key of one migration. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    base: String,
}

impl Keys {
    /// Validates `root` and builds the key space of `migration`.
    pub fn new(root: &str, migration: &MigrationId) -> Result<Self, RootPrefixError> {
        validate_root(root)?;
        Ok(Self { base: format!("{root}/{migration}") })
    }

    /// The prefix every key of this migration starts with (ends with `/`).
    pub fn migration_prefix(&self) -> String {
        format!("{}/", self.base)
    }

    pub fn state(&self) -> String {
        format!("{}/state", self.base)
    }

    pub fn leader(&self) -> String {
        format!("{}/leader", self.base)
    }

    pub fn instances_prefix(&self) -> String {
        format!("{}/instances/", self.base)
    }

    pub fn instance(&self, id: &InstanceId) -> String {
        format!("{}{id}", self.instances_prefix())
    }

    pub fn planned_collections_prefix(&self) -> String {
        format!("{}/plan/collections/", self.base)
    }

    pub fn planned_collection(&self, id: crate::ids::CollectionId) -> String {
        format!("{}{}", self.planned_collections_prefix(), id.to_key_segment())
    }

    pub fn tasks_prefix(&self) -> String {
        format!("{}/tasks/", self.base)
    }

    pub fn task(&self, id: TaskId) -> String {
        format!("{}{}", self.tasks_prefix(), id.to_key_segment())
    }

    pub fn claims_prefix(&self) -> String {
        format!("{}/claims/", self.base)
    }

    pub fn claim(&self, id: TaskId) -> String {
        format!("{}{}", self.claims_prefix(), id.to_key_segment())
    }

    pub fn checkpoints_prefix(&self) -> String {
        format!("{}/checkpoints/", self.base)
    }

    pub fn checkpoint(&self, id: TaskId) -> String {
        format!("{}{}", self.checkpoints_prefix(), id.to_key_segment())
    }

    pub fn releases_prefix(&self) -> String {
        format!("{}/release/", self.base)
    }

    pub fn release(&self, id: TaskId) -> String {
        format!("{}{}", self.releases_prefix(), id.to_key_segment())
    }

    pub fn progress_prefix(&self) -> String {
        format!("{}/progress/", self.base)
    }

    pub fn progress(&self, id: &InstanceId) -> String {
        format!("{}{id}", self.progress_prefix())
    }

    /// Parses the task id out of a `tasks/`, `claims/`, `checkpoints/` or `release/` key.
    pub fn task_id_of(&self, key: &str) -> Option<TaskId> {
        for prefix in [self.tasks_prefix(), self.claims_prefix(), self.checkpoints_prefix(), self.releases_prefix()] {
            if let Some(rest) = key.strip_prefix(&prefix) {
                return rest.parse().ok();
            }
        }
        None
    }

    /// Parses the instance id out of an `instances/` or `progress/` key.
    pub fn instance_id_of(&self, key: &str) -> Option<InstanceId> {
        [self.instances_prefix(), self.progress_prefix()]
            .iter()
            .find_map(|prefix| key.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.parse().ok())
    }

    /// Parses the collection id out of a `plan/collections/` key.
    pub fn collection_id_of(&self, key: &str) -> Option<crate::ids::CollectionId> {
        key.strip_prefix(&self.planned_collections_prefix()).and_then(|rest| rest.parse().ok())
    }
}

/// Checks a root prefix: starts with `/`, does not end with `/`, no empty segments.
pub fn validate_root(root: &str) -> Result<(), RootPrefixError> {
    let error = |reason| Err(RootPrefixError { root: root.to_string(), reason });
    if !root.starts_with('/') {
        return error("must start with '/'");
    }
    if root.len() > 1 && root.ends_with('/') {
        return error("must not end with '/'");
    }
    if root == "/" {
        return error("must name at least one segment, e.g. /clustersync");
    }
    if root[1..].split('/').any(str::is_empty) {
        return error("must not contain empty segments ('//')");
    }
    if root.chars().any(char::is_whitespace) {
        return error("must not contain whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::CollectionId;

    fn keys() -> Keys {
        Keys::new("/cs", &MigrationId::new("m1").unwrap()).unwrap()
    }

    #[test]
    fn keys_have_the_documented_layout() {
        let k = keys();
        assert_eq!(k.state(), "/cs/m1/state");
        assert_eq!(k.leader(), "/cs/m1/leader");
        assert_eq!(k.task(TaskId(7)), "/cs/m1/tasks/00000000000000000007");
        assert_eq!(k.claim(TaskId(7)), "/cs/m1/claims/00000000000000000007");
        assert_eq!(k.checkpoint(TaskId(7)), "/cs/m1/checkpoints/00000000000000000007");
        assert_eq!(k.release(TaskId(7)), "/cs/m1/release/00000000000000000007");
        let worker = InstanceId::new("w-1").unwrap();
        assert_eq!(k.instance(&worker), "/cs/m1/instances/w-1");
        assert_eq!(k.progress(&worker), "/cs/m1/progress/w-1");
        assert_eq!(k.planned_collection(CollectionId(3)), "/cs/m1/plan/collections/00000000000000000003");
        assert!(k.state().starts_with(&k.migration_prefix()));
    }

    #[test]
    fn ids_round_trip_through_keys() {
        let k = keys();
        for id in [TaskId(0), TaskId(1), TaskId(u64::MAX)] {
            assert_eq!(k.task_id_of(&k.task(id)), Some(id));
            assert_eq!(k.task_id_of(&k.claim(id)), Some(id));
            assert_eq!(k.task_id_of(&k.checkpoint(id)), Some(id));
            assert_eq!(k.task_id_of(&k.release(id)), Some(id));
        }
        let worker = InstanceId::new("w-1").unwrap();
        assert_eq!(k.instance_id_of(&k.instance(&worker)), Some(worker.clone()));
        assert_eq!(k.instance_id_of(&k.progress(&worker)), Some(worker));
        assert_eq!(k.collection_id_of(&k.planned_collection(CollectionId(5))), Some(CollectionId(5)));
        assert_eq!(k.task_id_of("/other/key"), None);
    }

    #[test]
    fn root_prefix_is_validated() {
        assert!(validate_root("/clustersync").is_ok());
        assert!(validate_root("/a/b").is_ok());
        for bad in ["", "clustersync", "/", "/a/", "/a//b", "/a b"] {
            assert!(validate_root(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
