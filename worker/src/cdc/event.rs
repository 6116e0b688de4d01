//! Change events as read from the source: the few fields the engine routes and decides on,
//! parsed out of the raw event, which is kept as is (never decoded into a `Document` and
//! re-encoded, so a 16 MB insert costs one copy, not three).
//!
//! Also here: which events matter to a migration ([`is_relevant`]), how an event is routed to
//! an applier ([`route`]), how `convertToCapped`'s temporary collection is recognised, and the
//! reassembly of events that the server split into fragments (`$changeStreamSplitLargeEvent`).

use std::hash::{Hash, Hasher};

use bson::raw::ValueAccessErrorKind;
use bson::{Document, RawBsonRef, RawDocument, RawDocumentBuf};
use clustersync_common::extjson::OpTime;
use clustersync_common::namespace::{INTERNAL_DATABASE, Namespace, NamespaceFilter};

use crate::error::WorkerError;

/// `operationType` of a change event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpType {
    Insert,
    Update,
    Replace,
    Delete,
    Create,
    CreateIndexes,
    DropIndexes,
    Modify,
    Rename,
    Drop,
    DropDatabase,
    ShardCollection,
    ReshardCollection,
    RefineCollectionShardKey,
    Invalidate,
    /// Anything else: never skipped silently (the task fails naming it).
    Other(String),
}

impl OpType {
    pub fn parse(name: &str) -> Self {
        match name {
            "insert" => Self::Insert,
            "update" => Self::Update,
            "replace" => Self::Replace,
            "delete" => Self::Delete,
            "create" => Self::Create,
            "createIndexes" => Self::CreateIndexes,
            "dropIndexes" => Self::DropIndexes,
            "modify" => Self::Modify,
            "rename" => Self::Rename,
            "drop" => Self::Drop,
            "dropDatabase" => Self::DropDatabase,
            "shardCollection" => Self::ShardCollection,
            "reshardCollection" => Self::ReshardCollection,
            "refineCollectionShardKey" => Self::RefineCollectionShardKey,
            "invalidate" => Self::Invalidate,
            other => Self::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Replace => "replace",
            Self::Delete => "delete",
            Self::Create => "create",
            Self::CreateIndexes => "createIndexes",
            Self::DropIndexes => "dropIndexes",
            Self::Modify => "modify",
            Self::Rename => "rename",
            Self::Drop => "drop",
            Self::DropDatabase => "dropDatabase",
            Self::ShardCollection => "shardCollection",
            Self::ReshardCollection => "reshardCollection",
            Self::RefineCollectionShardKey => "refineCollectionShardKey",
            Self::Invalidate => "invalidate",
            Self::Other(name) => name,
        }
    }

    /// Document-level changes (everything else changes the schema or is unknown).
    pub fn is_data(&self) -> bool {
        matches!(self, Self::Insert | Self::Update | Self::Replace | Self::Delete)
    }
}

/// One change event, with its routing fields parsed and the raw bytes kept.
#[derive(Debug)]
pub struct ChangeEvent {
    /// The whole event as the server sent it (empty for a spool reference, see `lookup_only`).
    pub raw: RawDocumentBuf,
    /// The event's resume token (`_id`); empty for a spool reference.
    pub token: Document,
    pub op: OpType,
    /// `ns.db` (missing only on events we cannot apply anyway).
    pub db: String,
    /// `ns.coll` (absent for `dropDatabase`).
    pub coll: Option<String>,
    /// `to` of a rename.
    pub to: Option<Namespace>,
    pub cluster_time: Option<OpTime>,
    /// `documentKey` of a data event.
    pub document_key: Option<RawDocumentBuf>,
    /// `collectionUUID` (bytes): which incarnation of the namespace the event is about.
    pub collection_uuid: Option<Vec<u8>>,
    /// The event was too large to spool: apply it by re-reading the document from the source.
    pub lookup_only: bool,
    /// The share of the engine's memory budget this event holds until it is dropped (spooled or
    /// applied).
    pub held: Option<Held>,
}

/// A share of a [`MemoryBudget`], given back when dropped.
pub type Held = tokio::sync::OwnedSemaphorePermit;

/// Bytes of change events one engine holds in memory at once, between being read (from the
/// stream or the spool) and being spooled or applied. Every queue between the stages is bounded
/// in events too, but events can be 16 MB each: without a byte bound, a burst of large documents
/// would take gigabytes (the out-of-memory failures peers' users report).
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    semaphore: std::sync::Arc<tokio::sync::Semaphore>,
    units: u32,
}

/// Granularity of the budget.
const BUDGET_UNIT: usize = 1024;

impl MemoryBudget {
    pub fn new(bytes: usize) -> Self {
        let units = u32::try_from((bytes / BUDGET_UNIT).max(1)).unwrap_or(u32::MAX >> 4);
        Self { semaphore: std::sync::Arc::new(tokio::sync::Semaphore::new(units as usize)), units }
    }

    /// Waits until `bytes` fit in the budget and holds them. An event larger than the whole
    /// budget waits until everything else is given back, then goes alone.
    pub async fn hold(&self, bytes: usize) -> Result<Held, WorkerError> {
        let wanted = u32::try_from(bytes.div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX).clamp(1, self.units);
        self.semaphore
            .clone()
            .acquire_many_owned(wanted)
            .await
            .map_err(|_| WorkerError::InvalidData("change stream memory budget closed".into()))
    }

    /// Bytes currently free (tests and diagnostics).
    pub fn available(&self) -> usize {
        self.semaphore.available_permits() * BUDGET_UNIT
    }
}

/// Reads an optional field: missing → `None`, wrong type → error naming the field.
fn optional<T>(result: bson::raw::ValueAccessResult<T>, what: &str) -> Result<Option<T>, WorkerError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if matches!(error.kind, ValueAccessErrorKind::NotPresent) => Ok(None),
        Err(error) => Err(WorkerError::InvalidData(format!("change event field {what}: {error}"))),
    }
}

impl ChangeEvent {
    /// Parses the routing fields of a raw change event.
    pub fn from_raw(raw: RawDocumentBuf) -> Result<Self, WorkerError> {
        let token_raw = raw
            .get_document("_id")
            .map_err(|e| WorkerError::InvalidData(format!("change event without a resume token: {e}")))?;
        let token = Document::try_from(token_raw)
            .map_err(|e| WorkerError::InvalidData(format!("change event resume token: {e}")))?;
        let op = OpType::parse(
            raw.get_str("operationType")
                .map_err(|e| WorkerError::InvalidData(format!("change event without operationType: {e}")))?,
        );
        let (db, coll) = match optional(raw.get_document("ns"), "ns")? {
            Some(ns) => (
                optional(ns.get_str("db"), "ns.db")?.unwrap_or_default().to_string(),
                optional(ns.get_str("coll"), "ns.coll")?.map(str::to_string),
            ),
            None => (String::new(), None),
        };
        let to = match optional(raw.get_document("to"), "to")? {
            Some(to) => match (optional(to.get_str("db"), "to.db")?, optional(to.get_str("coll"), "to.coll")?) {
                (Some(db), Some(coll)) => Some(Namespace::new(db, coll)),
                _ => None,
            },
            None => None,
        };
        let cluster_time = optional(raw.get_timestamp("clusterTime"), "clusterTime")?.map(OpTime::from);
        let document_key =
            optional(raw.get_document("documentKey"), "documentKey")?.map(RawDocument::to_raw_document_buf);
        let collection_uuid = optional(raw.get_binary("collectionUUID"), "collectionUUID")?.map(|b| b.bytes.to_vec());
        Ok(Self {
            raw,
            token,
            op,
            db,
            coll,
            to,
            cluster_time,
            document_key,
            collection_uuid,
            lookup_only: false,
            held: None,
        })
    }

    /// An event known only by its document (a spool reference to an event too large to spool).
    pub fn lookup(
        op: OpType,
        ns: Namespace,
        document_key: RawDocumentBuf,
        collection_uuid: Option<Vec<u8>>,
        cluster_time: Option<OpTime>,
    ) -> Self {
        Self {
            raw: RawDocumentBuf::new(),
            token: Document::new(),
            op,
            db: ns.db,
            coll: Some(ns.coll),
            to: None,
            cluster_time,
            document_key: Some(document_key),
            collection_uuid,
            lookup_only: true,
            held: None,
        }
    }

    /// `ns` as a namespace, when the event has a collection.
    pub fn ns(&self) -> Option<Namespace> {
        self.coll.as_ref().map(|coll| Namespace::new(self.db.clone(), coll.clone()))
    }

    /// `db.coll` (or `db`) for logs and error messages.
    pub fn ns_display(&self) -> String {
        match &self.coll {
            Some(coll) => format!("{}.{coll}", self.db),
            None => self.db.clone(),
        }
    }

    /// The commit marker this event inserts, if it is an insert into our marker collection.
    pub fn marker_id(&self, migration: &str) -> Option<String> {
        if self.op != OpType::Insert || self.db != INTERNAL_DATABASE {
            return None;
        }
        if self.coll.as_deref() != Some(marker_collection(migration).as_str()) {
            return None;
        }
        let key = self.document_key.as_ref()?;
        match key.get("_id") {
            Ok(Some(RawBsonRef::String(id))) => Some(id.to_string()),
            Ok(Some(RawBsonRef::ObjectId(id))) => Some(id.to_hex()),
            _ => None,
        }
    }

    /// The `operationDescription` of a DDL event, decoded (DDL events are small).
    pub fn operation_description(&self) -> Result<Document, WorkerError> {
        match optional(self.raw.get_document("operationDescription"), "operationDescription")? {
            Some(description) => Document::try_from(description)
                .map_err(|e| WorkerError::InvalidData(format!("operationDescription of {}: {e}", self.ns_display()))),
            None => Ok(Document::new()),
        }
    }

    /// The size of the raw event in bytes.
    pub fn size(&self) -> usize {
        self.raw.as_bytes().len()
    }
}

/// The source collection the leader inserts commit markers into (in [`INTERNAL_DATABASE`]).
pub fn marker_collection(migration: &str) -> String {
    format!("markers.{migration}")
}

/// If `coll` is the temporary collection `convertToCapped` builds (`tmp<5 chars>.convertToCapped.<name>`,
/// renamed over `<name>` when done), the name of the collection being converted.
pub fn convert_to_capped_target(coll: &str) -> Option<&str> {
    let rest = coll.strip_prefix("tmp")?;
    let (random, rest) = rest.split_at_checked(5)?;
    if !random.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    rest.strip_prefix(".convertToCapped.").filter(|name| !name.is_empty())
}

/// Whether an event can change what the destination must hold, given the namespace filter.
///
/// Events of internal databases are already dropped by the server-side `$match`, except the
/// inserts of our own commit markers, which are kept: they are positions the commit waits for.
pub fn is_relevant(event: &ChangeEvent, filter: &NamespaceFilter, migration: &str) -> bool {
    if event.db == INTERNAL_DATABASE {
        return event.marker_id(migration).is_some();
    }
    let included = |ns: &Namespace| {
        filter.includes(ns)
            || convert_to_capped_target(&ns.coll)
                .is_some_and(|target| filter.includes(&Namespace::new(ns.db.clone(), target)))
    };
    let Some(ns) = event.ns() else {
        // dropDatabase (or an unknown event without a collection): relevant if the database may
        // hold synced collections; an event without any namespace is kept so it fails loudly.
        return event.db.is_empty() || filter.may_include_database(&event.db);
    };
    if event.op.is_data() {
        // Writes into convertToCapped's temporary collection never reach the destination: the
        // conversion fails the migration at the collection's `create`.
        return filter.includes(&ns);
    }
    included(&ns) || event.to.as_ref().is_some_and(included)
}

/// The applier (of `appliers`) that owns a document: a hash of the namespace and `_id`, so every
/// change of one document goes through one applier, in stream order.
///
/// Numbers are hashed by value, so `_id: 1` and `_id: 1.0` — the same `_id` to MongoDB — land on
/// the same applier. (Numbers nested inside a document `_id` are hashed by their bytes.)
pub fn route(db: &str, coll: &str, document_key: &RawDocument, appliers: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    db.hash(&mut hasher);
    coll.hash(&mut hasher);
    match document_key.get("_id") {
        Ok(Some(id)) => hash_id(id, &mut hasher),
        _ => document_key.as_bytes().hash(&mut hasher),
    }
    (hasher.finish() % appliers.max(1) as u64) as usize
}

fn hash_id(id: RawBsonRef<'_>, hasher: &mut impl Hasher) {
    let as_integer = |value: f64| {
        (value.fract() == 0.0 && value >= i64::MIN as f64 && value < i64::MAX as f64).then_some(value as i64)
    };
    match id {
        RawBsonRef::Int32(value) => ("int", i64::from(value)).hash(hasher),
        RawBsonRef::Int64(value) => ("int", value).hash(hasher),
        RawBsonRef::Double(value) => match as_integer(value) {
            Some(integer) => ("int", integer).hash(hasher),
            None => ("double", value.to_bits()).hash(hasher),
        },
        other => {
            let mut holder = RawDocumentBuf::new();
            holder.append_ref("", other);
            (other.element_type() as u8, holder.as_bytes()).hash(hasher);
        }
    }
}

/// Reassembles events the server split into fragments (`splitEvent: {fragment, of}`).
///
/// Each fragment carries some of the event's top-level fields and its own resume token; the
/// event is complete with fragment `of`, and resuming after that fragment's token resumes after
/// the whole event, so the last fragment's token becomes the event's.
#[derive(Debug, Default)]
pub struct Fragments {
    parts: Vec<RawDocumentBuf>,
}

impl Fragments {
    /// Whether fragments of an unfinished event are held (no resume token may be taken then).
    pub fn is_pending(&self) -> bool {
        !self.parts.is_empty()
    }

    /// Feeds one raw event or fragment; returns the complete event once it is whole.
    pub fn push(&mut self, raw: RawDocumentBuf) -> Result<Option<RawDocumentBuf>, WorkerError> {
        let split = match raw.get_document("splitEvent") {
            Ok(split) => split,
            Err(error) if matches!(error.kind, ValueAccessErrorKind::NotPresent) => {
                if self.is_pending() {
                    return Err(WorkerError::InvalidData(format!(
                        "change event fragments 1..{} were not followed by the rest of the event",
                        self.parts.len()
                    )));
                }
                return Ok(Some(raw));
            }
            Err(error) => return Err(WorkerError::InvalidData(format!("change event splitEvent: {error}"))),
        };
        let number = |key: &str| match split.get(key) {
            Ok(Some(RawBsonRef::Int32(n))) => Ok(i64::from(n)),
            Ok(Some(RawBsonRef::Int64(n))) => Ok(n),
            _ => Err(WorkerError::InvalidData(format!("change event splitEvent.{key} is not a number"))),
        };
        let (fragment, of) = (number("fragment")?, number("of")?);
        if fragment != self.parts.len() as i64 + 1 || fragment > of {
            return Err(WorkerError::InvalidData(format!(
                "change event fragment {fragment} of {of} arrived after {} fragments",
                self.parts.len()
            )));
        }
        self.parts.push(raw);
        if fragment < of {
            return Ok(None);
        }
        let parts = std::mem::take(&mut self.parts);
        let mut whole = RawDocumentBuf::new();
        let last_token = parts
            .last()
            .and_then(|last| last.get("_id").ok().flatten())
            .ok_or_else(|| WorkerError::InvalidData("change event fragment without a resume token".into()))?;
        whole.append_ref("_id", last_token);
        for part in &parts {
            for element in part.iter() {
                let (key, value) =
                    element.map_err(|e| WorkerError::InvalidData(format!("change event fragment: {e}")))?;
                if key != "_id" && key != "splitEvent" {
                    whole.append_ref(key, value);
                }
            }
        }
        Ok(Some(whole))
    }
}

#[cfg(test)]
mod tests {
    use bson::{Timestamp, doc, rawdoc};

    use super::*;

    fn raw(document: Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&document).unwrap()
    }

    fn insert(db: &str, coll: &str, id: i32) -> ChangeEvent {
        ChangeEvent::from_raw(raw(doc! {
            "_id": {"_data": "82AA"},
            "operationType": "insert",
            "clusterTime": Timestamp { time: 7, increment: 2 },
            "ns": {"db": db, "coll": coll},
            "documentKey": {"_id": id},
            "fullDocument": {"_id": id, "x": 1},
        }))
        .unwrap()
    }

    #[test]
    fn parses_the_routing_fields() {
        let event = insert("app", "users", 5);
        assert_eq!(event.op, OpType::Insert);
        assert_eq!(event.ns(), Some(Namespace::new("app", "users")));
        assert_eq!(event.cluster_time, Some(OpTime { t: 7, i: 2 }));
        assert_eq!(event.token, doc! {"_data": "82AA"});
        assert_eq!(event.document_key.unwrap().to_document().unwrap(), doc! {"_id": 5});

        let rename = ChangeEvent::from_raw(raw(doc! {
            "_id": {"_data": "82AB"}, "operationType": "rename", "ns": {"db": "a", "coll": "b"},
            "to": {"db": "a", "coll": "c"}, "operationDescription": {"to": {"db": "a", "coll": "c"}},
        }))
        .unwrap();
        assert_eq!(rename.to, Some(Namespace::new("a", "c")));
        assert_eq!(rename.operation_description().unwrap(), doc! {"to": {"db": "a", "coll": "c"}});

        let drop_database = ChangeEvent::from_raw(raw(doc! {
            "_id": {"_data": "82AC"}, "operationType": "dropDatabase", "ns": {"db": "a"},
        }))
        .unwrap();
        assert_eq!((drop_database.ns(), drop_database.ns_display()), (None, "a".to_string()));
        assert_eq!(OpType::parse("reshardCollection"), OpType::ReshardCollection);
        assert_eq!(OpType::parse("somethingNew"), OpType::Other("somethingNew".into()));

        let error = ChangeEvent::from_raw(raw(doc! {"operationType": "insert"})).unwrap_err();
        assert!(error.to_string().contains("resume token"), "{error}");
        let error =
            ChangeEvent::from_raw(raw(doc! {"_id": {"_data": "x"}, "operationType": "insert", "ns": 3})).unwrap_err();
        assert!(error.to_string().contains("ns"), "{error}");
    }

    #[test]
    fn recognises_convert_to_capped_and_markers() {
        assert_eq!(convert_to_capped_target("tmpAb12x.convertToCapped.orders"), Some("orders"));
        assert_eq!(convert_to_capped_target("tmpAb12x.convertToCapped.a.b"), Some("a.b"));
        assert_eq!(convert_to_capped_target("tmp.convertToCapped.orders"), None);
        assert_eq!(convert_to_capped_target("tmpAb12x.convertToCapped."), None);
        assert_eq!(convert_to_capped_target("orders"), None);

        let marker = insert(INTERNAL_DATABASE, "markers.m1", 0);
        assert_eq!(marker.marker_id("m1"), None, "marker ids are strings");
        let marker = ChangeEvent::from_raw(raw(doc! {
            "_id": {"_data": "82AD"}, "operationType": "insert",
            "ns": {"db": INTERNAL_DATABASE, "coll": "markers.m1"}, "documentKey": {"_id": "c-1"},
        }))
        .unwrap();
        assert_eq!(marker.marker_id("m1"), Some("c-1".into()));
        assert_eq!(marker.marker_id("m2"), None);
    }

    #[test]
    fn relevance_follows_the_filter() {
        let spec = |json: serde_json::Value| serde_json::from_value(json).unwrap();
        let filter =
            NamespaceFilter::new(&[spec(serde_json::json!({"database": "app", "collections": ["users"]}))], &[])
                .unwrap();
        let event = |document: Document| ChangeEvent::from_raw(raw(document)).unwrap();
        assert!(is_relevant(&insert("app", "users", 1), &filter, "m"));
        assert!(!is_relevant(&insert("app", "other", 1), &filter, "m"));
        assert!(!is_relevant(&insert(INTERNAL_DATABASE, "spool.m.s", 1), &filter, "m"));
        // A rename into or out of the filter matters either way.
        let rename = |from: &str, to: &str| {
            event(doc! {"_id": {"_data": "1"}, "operationType": "rename", "ns": {"db": "app", "coll": from},
            "to": {"db": "app", "coll": to}})
        };
        assert!(is_relevant(&rename("tmp", "users"), &filter, "m"));
        assert!(is_relevant(&rename("users", "old"), &filter, "m"));
        assert!(!is_relevant(&rename("a", "b"), &filter, "m"));
        // convertToCapped of an included collection is seen at the temporary collection's create.
        let create = event(doc! {"_id": {"_data": "1"}, "operationType": "create",
        "ns": {"db": "app", "coll": "tmpXy12Z.convertToCapped.users"}});
        assert!(is_relevant(&create, &filter, "m"));
        let drop_database = event(doc! {"_id": {"_data": "1"}, "operationType": "dropDatabase", "ns": {"db": "app"}});
        assert!(is_relevant(&drop_database, &filter, "m"));
        let other_db = event(doc! {"_id": {"_data": "1"}, "operationType": "dropDatabase", "ns": {"db": "x"}});
        assert!(!is_relevant(&other_db, &filter, "m"));
    }

    #[test]
    fn routing_keeps_a_document_on_one_applier() {
        let key = |document: Document| raw(document);
        for appliers in [1, 3, 8] {
            let a = route("d", "c", &key(doc! {"_id": 1}), appliers);
            assert_eq!(a, route("d", "c", &key(doc! {"_id": 1_i64}), appliers));
            assert_eq!(a, route("d", "c", &key(doc! {"_id": 1.0}), appliers));
            // The shard key part of a document key does not move a document between appliers.
            assert_eq!(a, route("d", "c", &key(doc! {"sk": 9, "_id": 1}), appliers));
            assert!(a < appliers);
        }
        let spread: std::collections::HashSet<usize> =
            (0..64).map(|i| route("d", "c", &key(doc! {"_id": format!("k{i}")}), 8)).collect();
        assert!(spread.len() > 4, "documents spread over the appliers: {spread:?}");
        assert_ne!(route("d", "c", &key(doc! {"_id": 1.5}), 1 << 20), route("d", "c", &key(doc! {"_id": 1}), 1 << 20));
    }

    #[tokio::test]
    async fn the_memory_budget_bounds_bytes_in_flight() {
        let budget = MemoryBudget::new(64 * 1024);
        let a = budget.hold(40 * 1024).await.unwrap();
        assert_eq!(budget.available(), 24 * 1024);
        // A second event that does not fit waits until the first is given back.
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.hold(30 * 1024).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap();
        // Larger than the whole budget: takes all of it, alone.
        let huge = budget.hold(10 * 1024 * 1024).await.unwrap();
        assert_eq!(budget.available(), 0);
        drop(huge);
        assert_eq!(budget.available(), 64 * 1024);
    }

    #[test]
    fn fragments_are_reassembled_with_the_last_token() {
        let mut fragments = Fragments::default();
        let whole = raw(doc! {"_id": {"_data": "A"}, "operationType": "update"});
        assert_eq!(fragments.push(whole.clone()).unwrap(), Some(whole));
        let first = rawdoc! {"_id": {"_data": "F1"}, "splitEvent": {"fragment": 1, "of": 2}, "operationType": "insert",
        "ns": {"db": "a", "coll": "b"}};
        let second =
            rawdoc! {"_id": {"_data": "F2"}, "splitEvent": {"fragment": 2, "of": 2}, "fullDocument": {"_id": 1}};
        assert_eq!(fragments.push(first.clone()).unwrap(), None);
        assert!(fragments.is_pending());
        let event = fragments.push(second).unwrap().unwrap().to_document().unwrap();
        assert_eq!(
            event,
            doc! {"_id": {"_data": "F2"}, "operationType": "insert", "ns": {"db": "a", "coll": "b"}, "fullDocument": {"_id": 1}}
        );
        assert!(!fragments.is_pending());
        // A fragment out of order is an error, never a silently truncated event.
        let mut fragments = Fragments::default();
        let third = rawdoc! {"_id": {"_data": "F3"}, "splitEvent": {"fragment": 2, "of": 3}};
        assert!(fragments.push(third).is_err());
        fragments.push(first).unwrap();
        assert!(fragments.push(raw(doc! {"_id": {"_data": "B"}})).is_err());
    }
}
