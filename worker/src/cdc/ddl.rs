//! DDL events: what each one means for the destination ([`plan_ddl`], a pure decision), and
//! carrying it out through the destination schema appliers of [`crate::schema`].
//!
//! A DDL event is a barrier: the dispatcher applies it only once every earlier event is applied
//! on every applier, and hands out nothing after it until it is done (see `dispatch.rs`). An
//! event that cannot be applied correctly — `convertToCapped`, resharding, an unknown event type —
//! is never skipped: it becomes [`DdlAction::Fail`], which fails the task with the reason.

use std::sync::Arc;

use async_trait::async_trait;
use bson::Document;
use clustersync_common::extjson::OpTime;
use clustersync_common::model::BuildIndexes;
use clustersync_common::namespace::{Namespace, NamespaceFilter};
use mongodb::Client;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cdc::apply::Tainted;
use crate::cdc::event::{ChangeEvent, OpType, convert_to_capped_target};
use crate::error::WorkerError;
use crate::mongo::Clusters;

/// Error name of a DDL event the sync cannot apply correctly.
pub const UNSUPPORTED_DDL: &str = "UnsupportedDdl";
/// Error name of a change event of a type the sync does not know.
pub const UNSUPPORTED_EVENT: &str = "UnsupportedChangeEvent";

/// The destination side of DDL: implemented over [`crate::schema`] by [`SchemaDdl`].
#[async_trait]
pub trait DestinationDdl: Send + Sync {
    /// Creates a collection or view with the options of a `create` event (sync-time relaxations
    /// applied). Idempotent.
    async fn create(&self, ns: &Namespace, operation_description: &Document) -> Result<(), WorkerError>;
    /// Drops a collection or view. Idempotent.
    async fn drop_collection(&self, ns: &Namespace) -> Result<(), WorkerError>;
    /// Drops the user collections and views of a database, keeping its `system.*` collections.
    async fn drop_database(&self, db: &str) -> Result<(), WorkerError>;
    /// Renames a collection. Idempotent (a rename already done is not an error).
    async fn rename(&self, from: &Namespace, to: &Namespace, drop_target: bool) -> Result<(), WorkerError>;
    /// Builds indexes (in their sync-time form) as `buildIndexes` allows.
    async fn create_indexes(
        &self,
        ns: &Namespace,
        indexes: &[Document],
        build: BuildIndexes,
    ) -> Result<(), WorkerError>;
    /// Drops indexes by name. Idempotent.
    async fn drop_indexes(&self, ns: &Namespace, names: &[String]) -> Result<(), WorkerError>;
    /// Applies a `modify` (collMod) event.
    async fn modify(&self, ns: &Namespace, operation_description: &Document) -> Result<(), WorkerError>;
    /// Copies the whole collection again from the source (upserts).
    async fn recopy(&self, ns: &Namespace, cancel: &CancellationToken) -> Result<(), WorkerError>;
}

/// [`DestinationDdl`] over the schema appliers of [`crate::schema`] and [`crate::copy`].
pub struct SchemaDdl {
    clusters: Arc<Clusters>,
}

impl SchemaDdl {
    pub fn new(clusters: Arc<Clusters>) -> Self {
        Self { clusters }
    }
}

#[async_trait]
impl DestinationDdl for SchemaDdl {
    async fn create(&self, ns: &Namespace, operation_description: &Document) -> Result<(), WorkerError> {
        crate::schema::apply_create(&self.clusters, ns, operation_description).await
    }
    async fn drop_collection(&self, ns: &Namespace) -> Result<(), WorkerError> {
        crate::schema::apply_drop(&self.clusters, ns).await
    }
    async fn drop_database(&self, db: &str) -> Result<(), WorkerError> {
        crate::schema::apply_drop_database(&self.clusters, db).await
    }
    async fn rename(&self, from: &Namespace, to: &Namespace, drop_target: bool) -> Result<(), WorkerError> {
        crate::schema::apply_rename(&self.clusters, from, to, drop_target).await
    }
    async fn create_indexes(
        &self,
        ns: &Namespace,
        indexes: &[Document],
        build: BuildIndexes,
    ) -> Result<(), WorkerError> {
        crate::schema::apply_create_indexes(&self.clusters, ns, indexes, build).await
    }
    async fn drop_indexes(&self, ns: &Namespace, names: &[String]) -> Result<(), WorkerError> {
        crate::schema::apply_drop_indexes(&self.clusters, ns, names).await
    }
    async fn modify(&self, ns: &Namespace, operation_description: &Document) -> Result<(), WorkerError> {
        crate::schema::apply_modify(&self.clusters, ns, operation_description).await
    }
    async fn recopy(&self, ns: &Namespace, cancel: &CancellationToken) -> Result<(), WorkerError> {
        crate::copy::recopy_collection(&self.clusters, ns, cancel).await
    }
}

/// What a DDL event means for the destination, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum DdlAction {
    Create {
        ns: Namespace,
        description: Document,
    },
    CreateIndexes {
        ns: Namespace,
        indexes: Vec<Document>,
    },
    DropIndexes {
        ns: Namespace,
        names: Vec<String>,
    },
    Modify {
        ns: Namespace,
        description: Document,
    },
    Drop {
        ns: Namespace,
    },
    DropDatabase {
        db: String,
    },
    /// Rename; `recopy` when the rename overlapped the copy (the collection may have been copied
    /// only in part under its old name).
    Rename {
        from: Namespace,
        to: Namespace,
        drop_target: bool,
        recopy: bool,
    },
    /// A collection renamed into the filter: create it as it is on the source and copy it.
    CreateAndCopy {
        ns: Namespace,
    },
    /// The event cannot be applied correctly: fail the migration with this reason.
    Fail {
        error: String,
        description: String,
    },
}

fn at(event: &ChangeEvent) -> String {
    event.cluster_time.map(|t| format!(" at {t}")).unwrap_or_default()
}

/// Decides what a (relevant) non-data event does to the destination.
///
/// `copy_completed_time` is the source time the copy completed at; a rename at or before it
/// overlapped the copy. Unknown (`None`) is treated as overlapping, which costs a re-copy and is
/// always correct.
pub fn plan_ddl(
    event: &ChangeEvent,
    filter: &NamespaceFilter,
    copy_completed_time: Option<OpTime>,
) -> Result<Vec<DdlAction>, WorkerError> {
    let included = |ns: &Namespace| filter.includes(ns);
    let convert_to_capped = |ns: &Namespace| {
        convert_to_capped_target(&ns.coll)
            .map(|target| Namespace::new(ns.db.clone(), target))
            .filter(|target| included(target))
    };
    let fail_convert = |target: &Namespace| DdlAction::Fail {
        error: UNSUPPORTED_DDL.into(),
        description: format!(
            "convertToCapped of {target}{} cannot be synced: converting a collection to a capped collection \
             during a migration is not supported; start a new migration once the conversion is done",
            at(event)
        ),
    };
    let ns = event.ns();
    let require_ns = || {
        ns.clone().ok_or_else(|| {
            WorkerError::InvalidData(format!(
                "{} event on {} without a collection",
                event.op.as_str(),
                event.ns_display()
            ))
        })
    };
    let description = || event.operation_description();
    let actions = match &event.op {
        OpType::Create => {
            let ns = require_ns()?;
            if let Some(target) = convert_to_capped(&ns) {
                vec![fail_convert(&target)]
            } else if included(&ns) {
                vec![DdlAction::Create { ns, description: description()? }]
            } else {
                Vec::new()
            }
        }
        OpType::CreateIndexes | OpType::DropIndexes | OpType::Modify | OpType::Drop => {
            let ns = require_ns()?;
            if !included(&ns) {
                return Ok(Vec::new());
            }
            match event.op {
                OpType::CreateIndexes => {
                    let indexes = description()?
                        .get_array("indexes")
                        .map_err(|e| WorkerError::InvalidData(format!("createIndexes event on {ns}: {e}")))?
                        .iter()
                        .filter_map(|index| index.as_document().cloned())
                        .collect();
                    vec![DdlAction::CreateIndexes { ns, indexes }]
                }
                OpType::DropIndexes => {
                    let names = description()?
                        .get_array("indexes")
                        .map_err(|e| WorkerError::InvalidData(format!("dropIndexes event on {ns}: {e}")))?
                        .iter()
                        .filter_map(|index| index.as_document().and_then(|i| i.get_str("name").ok()))
                        .map(str::to_string)
                        .collect();
                    vec![DdlAction::DropIndexes { ns, names }]
                }
                OpType::Modify => vec![DdlAction::Modify { ns, description: description()? }],
                _ => vec![DdlAction::Drop { ns }],
            }
        }
        OpType::DropDatabase => {
            if filter.may_include_database(&event.db) {
                vec![DdlAction::DropDatabase { db: event.db.clone() }]
            } else {
                Vec::new()
            }
        }
        OpType::Rename => {
            let from = require_ns()?;
            let to = event.to.clone().ok_or_else(|| {
                WorkerError::InvalidData(format!("rename event on {from} without a target namespace"))
            })?;
            let drop_target = description()?.contains_key("dropTarget");
            if let Some(target) = convert_to_capped(&from) {
                return Ok(vec![fail_convert(&target)]);
            }
            match (included(&from), included(&to)) {
                (true, true) => {
                    let recopy = copy_completed_time.is_none_or(|done| event.cluster_time.is_none_or(|t| t <= done));
                    vec![DdlAction::Rename { from, to, drop_target, recopy }]
                }
                (true, false) => vec![DdlAction::Drop { ns: from }],
                (false, true) => {
                    // The renamed collection replaces whatever the destination held under `to`.
                    vec![DdlAction::Drop { ns: to.clone() }, DdlAction::CreateAndCopy { ns: to }]
                }
                (false, false) => Vec::new(),
            }
        }
        OpType::ShardCollection | OpType::ReshardCollection | OpType::RefineCollectionShardKey => {
            let ns = require_ns()?;
            if !included(&ns) {
                return Ok(Vec::new());
            }
            vec![DdlAction::Fail {
                error: UNSUPPORTED_DDL.into(),
                description: format!(
                    "{} of {ns}{} cannot be applied to the destination: changing the sharding of a synced \
                     collection during a migration is not supported; start a new migration",
                    event.op.as_str(),
                    at(event)
                ),
            }]
        }
        OpType::Invalidate | OpType::Other(_) => vec![DdlAction::Fail {
            error: UNSUPPORTED_EVENT.into(),
            description: format!(
                "change event {:?} on {}{} cannot be applied: the sync does not know how to apply it, and \
                 skipping it could leave the destination different from the source",
                event.op.as_str(),
                if event.db.is_empty() { "an unknown namespace".to_string() } else { event.ns_display() },
                at(event)
            ),
        }],
        OpType::Insert | OpType::Update | OpType::Replace | OpType::Delete => {
            return Err(WorkerError::InvalidData(format!(
                "{} event on {} planned as DDL",
                event.op.as_str(),
                event.ns_display()
            )));
        }
    };
    Ok(actions)
}

/// Carries out DDL actions on the destination.
pub struct DdlExecutor {
    pub target: Arc<dyn DestinationDdl>,
    /// Namespaces whose events could not be repaired (see [`Tainted`]).
    pub tainted: Tainted,
    pub source: Client,
    pub build_indexes: BuildIndexes,
    pub cancel: CancellationToken,
}

impl DdlExecutor {
    /// Runs one action; `Fail` becomes [`WorkerError::Fatal`].
    pub async fn execute(&self, action: DdlAction) -> Result<(), WorkerError> {
        info!(action = ?action, "applying ddl");
        match action {
            DdlAction::Create { ns, description } => self.target.create(&ns, &description).await,
            DdlAction::CreateIndexes { ns, indexes } => {
                self.target.create_indexes(&ns, &indexes, self.build_indexes).await
            }
            DdlAction::DropIndexes { ns, names } => self.target.drop_indexes(&ns, &names).await,
            DdlAction::Modify { ns, description } => self.target.modify(&ns, &description).await,
            DdlAction::Drop { ns } => {
                self.target.drop_collection(&ns).await?;
                self.tainted.take(&ns);
                Ok(())
            }
            DdlAction::DropDatabase { db } => {
                self.target.drop_database(&db).await?;
                self.tainted.clear_database(&db);
                Ok(())
            }
            DdlAction::Rename { from, to, drop_target, recopy } => {
                self.target.rename(&from, &to, drop_target).await?;
                // A collection whose repairs were deferred to this rename is copied again too.
                let tainted = self.tainted.take(&from);
                self.tainted.take(&to);
                if recopy || tainted {
                    info!(from = %from, to = %to, "rename overlapped the copy: copying the collection again");
                    self.target.recopy(&to, &self.cancel).await?;
                }
                Ok(())
            }
            DdlAction::CreateAndCopy { ns } => {
                self.tainted.take(&ns);
                self.create_and_copy(&ns).await
            }
            DdlAction::Fail { error, description } => Err(WorkerError::fatal(error, description)),
        }
    }

    /// Creates `ns` on the destination as it is on the source now (options and indexes), then
    /// copies it. A collection gone from the source is left alone: its drop follows in the stream.
    async fn create_and_copy(&self, ns: &Namespace) -> Result<(), WorkerError> {
        let Some(spec) = crate::schema::list_collection_spec(&self.source, ns).await? else {
            info!(ns = %ns, "collection renamed into the filter is gone from the source; nothing to copy");
            return Ok(());
        };
        let options = spec.get_document("options").cloned().unwrap_or_default();
        self.target.create(ns, &options).await?;
        if spec.get_str("type").unwrap_or("collection") != "collection" {
            return Ok(());
        }
        let indexes: Vec<Document> = crate::schema::list_index_specs(&self.source, ns)
            .await?
            .unwrap_or_default()
            .into_iter()
            .filter(|index| index.get_str("name") != Ok("_id_"))
            .collect();
        if !indexes.is_empty() {
            self.target.create_indexes(ns, &indexes, self.build_indexes).await?;
        }
        self.target.recopy(ns, &self.cancel).await
    }
}

#[cfg(test)]
mod tests {
    use bson::{RawDocumentBuf, Timestamp, doc};

    use super::*;

    fn event(document: Document) -> ChangeEvent {
        ChangeEvent::from_raw(RawDocumentBuf::from_document(&document).unwrap()).unwrap()
    }

    fn only(collections: &[&str]) -> NamespaceFilter {
        let spec = serde_json::from_value(serde_json::json!({"database": "app", "collections": collections})).unwrap();
        NamespaceFilter::new(&[spec], &[]).unwrap()
    }

    fn failure(actions: Vec<DdlAction>) -> (String, String) {
        match actions.as_slice() {
            [DdlAction::Fail { error, description }] => (error.clone(), description.clone()),
            other => panic!("expected one failure, got {other:?}"),
        }
    }

    fn rename(from: &str, to: &str, t: u32, drop_target: bool) -> ChangeEvent {
        let mut description = doc! {"to": {"db": "app", "coll": to}};
        if drop_target {
            description.insert("dropTarget", bson::Uuid::new());
        }
        event(doc! {
            "_id": {"_data": "1"}, "operationType": "rename", "clusterTime": Timestamp { time: t, increment: 0 },
            "ns": {"db": "app", "coll": from}, "to": {"db": "app", "coll": to}, "operationDescription": description,
        })
    }

    #[test]
    fn renames_follow_the_filter_and_the_copy() {
        let filter = only(&["a", "b"]);
        let done = Some(OpTime { t: 100, i: 0 });
        let app = |c: &str| Namespace::new("app", c);
        assert_eq!(
            plan_ddl(&rename("a", "b", 100, true), &filter, done).unwrap(),
            vec![DdlAction::Rename { from: app("a"), to: app("b"), drop_target: true, recopy: true }]
        );
        assert_eq!(
            plan_ddl(&rename("a", "b", 101, false), &filter, done).unwrap(),
            vec![DdlAction::Rename { from: app("a"), to: app("b"), drop_target: false, recopy: false }]
        );
        assert_eq!(
            plan_ddl(&rename("a", "b", 101, false), &filter, None).unwrap(),
            vec![DdlAction::Rename { from: app("a"), to: app("b"), drop_target: false, recopy: true }]
        );
        assert_eq!(
            plan_ddl(&rename("a", "x", 101, false), &filter, done).unwrap(),
            vec![DdlAction::Drop { ns: app("a") }]
        );
        assert_eq!(
            plan_ddl(&rename("x", "b", 101, false), &filter, done).unwrap(),
            vec![DdlAction::Drop { ns: app("b") }, DdlAction::CreateAndCopy { ns: app("b") }]
        );
        assert!(plan_ddl(&rename("x", "y", 101, false), &filter, done).unwrap().is_empty());
    }

    #[test]
    fn convert_to_capped_and_unknown_events_fail_loudly() {
        let filter = only(&["orders"]);
        let create = event(doc! {
            "_id": {"_data": "1"}, "operationType": "create", "clusterTime": Timestamp { time: 5, increment: 1 },
            "ns": {"db": "app", "coll": "tmpA1b2C.convertToCapped.orders"}, "operationDescription": {"capped": true},
        });
        let (error, description) = failure(plan_ddl(&create, &filter, None).unwrap());
        assert_eq!(error, UNSUPPORTED_DDL);
        assert!(description.contains("convertToCapped of app.orders at Timestamp(5, 1)"), "{description}");
        let swap = rename("tmpA1b2C.convertToCapped.orders", "orders", 6, true);
        assert!(matches!(plan_ddl(&swap, &filter, None).unwrap().as_slice(), [DdlAction::Fail { .. }]));
        // convertToCapped of a collection outside the filter does not concern us.
        assert!(plan_ddl(&swap, &only(&["other"]), None).unwrap().is_empty());

        let reshard = event(doc! {"_id": {"_data": "1"}, "operationType": "reshardCollection",
        "ns": {"db": "app", "coll": "orders"}, "operationDescription": {}});
        let (error, description) = failure(plan_ddl(&reshard, &filter, None).unwrap());
        assert_eq!(error, UNSUPPORTED_DDL);
        assert!(description.contains("reshardCollection of app.orders"), "{description}");

        let unknown =
            event(doc! {"_id": {"_data": "1"}, "operationType": "somethingNew", "ns": {"db": "app", "coll": "orders"}});
        let (error, description) = failure(plan_ddl(&unknown, &filter, None).unwrap());
        assert_eq!(error, UNSUPPORTED_EVENT);
        assert!(description.contains("\"somethingNew\" on app.orders"), "{description}");
    }

    #[test]
    fn schema_events_carry_their_descriptions() {
        let filter = only(&["c"]);
        let ns = Namespace::new("app", "c");
        let indexes =
            event(doc! {"_id": {"_data": "1"}, "operationType": "createIndexes", "ns": {"db": "app", "coll": "c"},
            "operationDescription": {"indexes": [{"v": 2, "key": {"x": 1}, "name": "x_1", "unique": true}]}});
        assert_eq!(
            plan_ddl(&indexes, &filter, None).unwrap(),
            vec![DdlAction::CreateIndexes {
                ns: ns.clone(),
                indexes: vec![doc! {"v": 2, "key": {"x": 1}, "name": "x_1", "unique": true}]
            }]
        );
        let drop_indexes =
            event(doc! {"_id": {"_data": "1"}, "operationType": "dropIndexes", "ns": {"db": "app", "coll": "c"},
            "operationDescription": {"indexes": [{"v": 2, "key": {"x": 1}, "name": "x_1"}]}});
        assert_eq!(
            plan_ddl(&drop_indexes, &filter, None).unwrap(),
            vec![DdlAction::DropIndexes { ns: ns.clone(), names: vec!["x_1".into()] }]
        );
        let drop_database = event(doc! {"_id": {"_data": "1"}, "operationType": "dropDatabase", "ns": {"db": "app"}});
        assert_eq!(
            plan_ddl(&drop_database, &filter, None).unwrap(),
            vec![DdlAction::DropDatabase { db: "app".into() }]
        );
        let other = event(doc! {"_id": {"_data": "1"}, "operationType": "drop", "ns": {"db": "app", "coll": "zz"}});
        assert!(plan_ddl(&other, &filter, None).unwrap().is_empty());
    }
}
