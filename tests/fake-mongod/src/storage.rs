//! In-memory storage: databases, collections (raw BSON documents keyed by `_id` in MongoDB
//! order, plus natural/insertion order), index catalogs with enforced unique keys, capped
//! collections and views.

use std::collections::BTreeMap;
use std::sync::Arc;

use bson::{Bson, Document, RawDocumentBuf, doc};

use crate::bson_order::{CompoundKey, Key};
use crate::error::{Error, Result};
use crate::query::{self, Node};

/// Shared immutable stored document.
pub type Doc = Arc<RawDocumentBuf>;

/// One index definition, plus the key entries for unique / prepareUnique indexes.
#[derive(Debug, Clone)]
pub struct Index {
    /// The full `listIndexes` entry: `{v: 2, key, name, ...options}`.
    pub spec: Document,
    /// Key pattern.
    pub key: Document,
    /// Index name.
    pub name: String,
    /// Compiled partial filter, if any.
    pub partial: Option<Node>,
    /// Key entries (only kept for unique and prepareUnique indexes): key -> record ids.
    pub entries: Option<BTreeMap<CompoundKey, Vec<u64>>>,
}

impl Index {
    /// Builds an index from its spec.
    pub fn from_spec(spec: Document) -> Result<Index> {
        let key = spec.get_document("key").cloned().unwrap_or_default();
        let name = spec.get_str("name").unwrap_or("").to_string();
        let partial = match spec.get_document("partialFilterExpression") {
            Ok(p) => Some(query::compile(p)?),
            Err(_) => None,
        };
        let mut ix = Index { spec, key, name, partial, entries: None };
        if ix.tracks_keys() {
            ix.entries = Some(BTreeMap::new());
        }
        Ok(ix)
    }

    /// True for `unique: true`.
    pub fn unique(&self) -> bool {
        self.name == "_id_" || self.spec.get_bool("unique").unwrap_or(false)
    }

    /// True for `prepareUnique: true`.
    pub fn prepare_unique(&self) -> bool {
        self.spec.get_bool("prepareUnique").unwrap_or(false)
    }

    fn tracks_keys(&self) -> bool {
        self.name != "_id_" && (self.unique() || self.prepare_unique())
    }

    fn sparse(&self) -> bool {
        self.spec.get_bool("sparse").unwrap_or(false)
    }

    /// All index keys of a document (arrays expand into one key per element); None if
    /// the document is not indexed (sparse / partial).
    pub fn keys_of(&self, doc: &Document) -> Option<Vec<CompoundKey>> {
        if let Some(p) = &self.partial
            && !p.matches(doc, &Default::default())
        {
            return None;
        }
        let mut per_field: Vec<Vec<Bson>> = Vec::new();
        let mut all_missing = true;
        for (field, _) in &self.key {
            let mut vals = Vec::new();
            match query::get_path(doc, field) {
                Some(Bson::Array(a)) => {
                    all_missing = false;
                    if a.is_empty() {
                        vals.push(Bson::Undefined);
                    } else {
                        vals.extend(a.iter().cloned());
                    }
                }
                Some(v) => {
                    all_missing = false;
                    vals.push(v.clone());
                }
                None => {
                    // dotted paths through arrays of documents
                    let c = query::candidates(doc, field);
                    let found: Vec<Bson> = c.iter().filter(|c| !c.expanded).filter_map(|c| c.v.cloned()).collect();
                    if found.is_empty() {
                        vals.push(Bson::Null);
                    } else {
                        all_missing = false;
                        vals.extend(found);
                    }
                }
            }
            per_field.push(vals);
        }
        if all_missing && self.sparse() {
            return None;
        }
        let mut keys: Vec<Vec<Key>> = vec![Vec::new()];
        for vals in per_field {
            let mut next = Vec::new();
            for k in &keys {
                for v in &vals {
                    let mut k2 = k.clone();
                    k2.push(Key(v.clone()));
                    next.push(k2);
                }
            }
            keys = next;
        }
        let mut out: Vec<CompoundKey> = keys.into_iter().map(CompoundKey).collect();
        out.sort();
        out.dedup();
        Some(out)
    }
}

/// Formats a value the way mongod prints it in duplicate key messages.
pub fn shell_fmt(v: &Bson) -> String {
    match v {
        Bson::String(s) => format!("\"{s}\""),
        Bson::ObjectId(o) => format!("ObjectId('{o}')"),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Double(d) => {
            if d.fract() == 0.0 && d.is_finite() {
                format!("{}.0", *d as i64)
            } else {
                d.to_string()
            }
        }
        Bson::Null | Bson::Undefined => "null".into(),
        Bson::Boolean(b) => b.to_string(),
        Bson::Document(d) => {
            let inner: Vec<String> = d.iter().map(|(k, v)| format!("{k}: {}", shell_fmt(v))).collect();
            if inner.is_empty() { "{}".into() } else { format!("{{ {} }}", inner.join(", ")) }
        }
        Bson::Array(a) => {
            let inner: Vec<String> = a.iter().map(shell_fmt).collect();
            format!("[ {} ]", inner.join(", "))
        }
        Bson::DateTime(d) => format!("new Date({})", d.timestamp_millis()),
        other => other.to_string(),
    }
}

/// Builds the E11000 error for a duplicate key.
pub fn dup_key_error(ns: &str, index: &Index, key: &CompoundKey) -> Error {
    let mut key_value = Document::new();
    let mut pattern = Document::new();
    let mut parts = Vec::new();
    for ((field, dir), k) in index.key.iter().zip(key.0.iter()) {
        let v = if matches!(k.0, Bson::Undefined) { Bson::Null } else { k.0.clone() };
        parts.push(format!("{field}: {}", shell_fmt(&v)));
        key_value.insert(field.clone(), v);
        pattern.insert(field.clone(), dir.clone());
    }
    Error::new(
        11000,
        format!(
            "E11000 duplicate key error collection: {ns} index: {} dup key: {{ {} }}",
            index.name,
            parts.join(", ")
        ),
    )
    .with_extra(doc! {"keyPattern": pattern, "keyValue": key_value})
}

/// A view definition.
#[derive(Debug, Clone)]
pub struct View {
    /// Source collection name.
    pub view_on: String,
    /// Pipeline.
    pub pipeline: Vec<Document>,
}

/// A collection (or a view, when `view` is set).
#[derive(Debug, Clone)]
pub struct Collection {
    /// Collection UUID.
    pub uuid: bson::Uuid,
    /// Creation options as shown by listCollections.
    pub options: Document,
    /// Documents in natural (insertion) order, by record id.
    pub records: BTreeMap<u64, Doc>,
    /// `_id` index: `_id` value -> record id.
    pub ids: BTreeMap<Key, u64>,
    /// Next record id.
    pub next_rid: u64,
    /// Indexes (the first is `_id_` unless the collection is a view).
    pub indexes: Vec<Index>,
    /// Sum of document sizes.
    pub data_size: u64,
    /// View definition.
    pub view: Option<View>,
}

/// Result of applying a write to a collection.
pub struct Applied {
    /// The record id written.
    pub rid: u64,
}

fn id_of_raw(doc: &RawDocumentBuf) -> Result<Bson> {
    match doc.get("_id")? {
        Some(v) => Ok(Bson::try_from(v.to_raw_bson()).map_err(|e| Error::new(22, e.to_string()))?),
        None => Err(Error::new(2, "document has no _id")),
    }
}

impl Collection {
    /// A new empty collection with an `_id_` index.
    pub fn new(options: Document) -> Collection {
        let clustered = options.get_document("clusteredIndex").is_ok();
        let mut indexes = Vec::new();
        if !clustered {
            indexes.push(Index::from_spec(doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}).unwrap_or_else(|_| {
                Index { spec: Document::new(), key: doc! {"_id": 1}, name: "_id_".into(), partial: None, entries: None }
            }));
        }
        Collection {
            uuid: bson::Uuid::new(),
            options,
            records: BTreeMap::new(),
            ids: BTreeMap::new(),
            next_rid: 1,
            indexes,
            data_size: 0,
            view: None,
        }
    }

    /// A view.
    pub fn new_view(view_on: String, pipeline: Vec<Document>, options: Document) -> Collection {
        let mut c = Collection::new(options);
        c.indexes.clear();
        c.view = Some(View { view_on, pipeline });
        c
    }

    /// False for time-series collections, whose `_id` is neither unique nor indexed.
    pub fn id_indexed(&self) -> bool {
        !self.options.contains_key("timeseries")
    }

    /// Number of documents.
    pub fn count(&self) -> usize {
        self.records.len()
    }

    /// True for capped collections.
    pub fn capped(&self) -> bool {
        self.options.get_bool("capped").unwrap_or(false)
    }

    /// Capped size and max.
    pub fn capped_limits(&self) -> (u64, Option<u64>) {
        let size = self.options.get("size").and_then(crate::bson_order::as_i64).unwrap_or(0).max(0) as u64;
        let max = self.options.get("max").and_then(crate::bson_order::as_i64).filter(|m| *m > 0).map(|m| m as u64);
        (size, max)
    }

    /// Looks up a document by `_id`.
    pub fn get_by_id(&self, id: &Bson) -> Option<(u64, &Doc)> {
        let rid = *self.ids.get(&Key(id.clone()))?;
        self.records.get(&rid).map(|d| (rid, d))
    }

    fn check_unique(&self, ns: &str, decoded: &Document, rid: u64) -> Result<Vec<(usize, Vec<CompoundKey>)>> {
        let mut out = Vec::new();
        for (i, ix) in self.indexes.iter().enumerate() {
            let Some(entries) = &ix.entries else { continue };
            let Some(keys) = ix.keys_of(decoded) else { continue };
            for k in &keys {
                if let Some(rids) = entries.get(k)
                    && rids.iter().any(|r| *r != rid)
                {
                    return Err(dup_key_error(ns, ix, k));
                }
            }
            out.push((i, keys));
        }
        Ok(out)
    }

    fn needs_decode(&self) -> bool {
        self.indexes.iter().any(|i| i.entries.is_some())
    }

    fn add_keys(&mut self, keys: Vec<(usize, Vec<CompoundKey>)>, rid: u64) {
        for (i, ks) in keys {
            if let Some(entries) = self.indexes[i].entries.as_mut() {
                for k in ks {
                    entries.entry(k).or_default().push(rid);
                }
            }
        }
    }

    fn remove_keys(&mut self, decoded: &Document, rid: u64) {
        for ix in &mut self.indexes {
            if ix.entries.is_none() {
                continue;
            }
            let keys = ix.keys_of(decoded);
            let Some(entries) = ix.entries.as_mut() else { continue };
            for k in keys.unwrap_or_default() {
                if let Some(v) = entries.get_mut(&k) {
                    v.retain(|r| *r != rid);
                    if v.is_empty() {
                        entries.remove(&k);
                    }
                }
            }
        }
    }

    /// Inserts a document (which must have an `_id`). Returns the evicted documents for capped collections.
    pub fn insert(&mut self, ns: &str, doc: Doc) -> Result<Vec<Doc>> {
        let id = id_of_raw(&doc)?;
        if matches!(id, Bson::Array(_)) {
            return Err(Error::new(53, "can't use an array for _id"));
        }
        let key = Key(id);
        let has_id_index = self.id_indexed();
        if has_id_index && self.ids.contains_key(&key) {
            let ix = self.indexes.first().cloned().unwrap_or_else(|| Index {
                spec: Document::new(),
                key: doc! {"_id": 1},
                name: "_id_".into(),
                partial: None,
                entries: None,
            });
            return Err(dup_key_error(ns, &ix, &CompoundKey(vec![key])));
        }
        let rid = self.next_rid;
        let keys = if self.needs_decode() {
            let decoded = doc.to_document()?;
            self.check_unique(ns, &decoded, rid)?
        } else {
            Vec::new()
        };
        self.next_rid += 1;
        self.add_keys(keys, rid);
        self.data_size += doc.as_bytes().len() as u64;
        if has_id_index {
            self.ids.insert(key, rid);
        }
        self.records.insert(rid, doc);
        let mut evicted = Vec::new();
        if self.capped() {
            let (size, max) = self.capped_limits();
            while self.records.len() > 1
                && ((size > 0 && self.data_size > size) || max.is_some_and(|m| self.records.len() as u64 > m))
            {
                let Some((&old_rid, _)) = self.records.iter().next() else { break };
                if let Some(d) = self.remove_rid(old_rid)? {
                    evicted.push(d);
                }
            }
        }
        Ok(evicted)
    }

    /// Replaces the document stored under `rid` (the `_id` must not change).
    pub fn replace(&mut self, ns: &str, rid: u64, new_doc: Doc) -> Result<Doc> {
        let old = self.records.get(&rid).cloned().ok_or_else(|| Error::new(1, "record vanished"))?;
        if self.needs_decode() {
            let new_dec = new_doc.to_document()?;
            let keys = self.check_unique(ns, &new_dec, rid)?;
            let old_dec = old.to_document()?;
            self.remove_keys(&old_dec, rid);
            self.add_keys(keys, rid);
        }
        self.data_size = self.data_size + new_doc.as_bytes().len() as u64 - old.as_bytes().len() as u64;
        self.records.insert(rid, new_doc);
        Ok(old)
    }

    /// Removes a record. Returns the removed document.
    pub fn remove_rid(&mut self, rid: u64) -> Result<Option<Doc>> {
        let Some(old) = self.records.remove(&rid) else { return Ok(None) };
        if self.id_indexed() {
            let id = id_of_raw(&old)?;
            self.ids.remove(&Key(id));
        }
        if self.needs_decode() {
            let dec = old.to_document()?;
            self.remove_keys(&dec, rid);
        }
        self.data_size -= old.as_bytes().len() as u64;
        Ok(Some(old))
    }

    /// Finds an index by name.
    pub fn index_by_name(&self, name: &str) -> Option<&Index> {
        self.indexes.iter().find(|i| i.name == name)
    }

    /// Finds an index by key pattern.
    pub fn index_by_key(&self, key: &Document) -> Option<&Index> {
        self.indexes.iter().find(|i| &i.key == key)
    }

    /// Adds an index, building its key entries (fails on duplicates for unique indexes).
    pub fn add_index(&mut self, ns: &str, mut ix: Index) -> Result<()> {
        if ix.entries.is_some() {
            let enforce = ix.spec.get_bool("unique").unwrap_or(false);
            let mut entries: BTreeMap<CompoundKey, Vec<u64>> = BTreeMap::new();
            for (rid, d) in &self.records {
                let dec = d.to_document()?;
                if let Some(keys) = ix.keys_of(&dec) {
                    for k in keys {
                        let e = entries.entry(k.clone()).or_default();
                        if enforce && !e.is_empty() && !e.contains(rid) {
                            return Err(dup_key_error(ns, &ix, &k));
                        }
                        e.push(*rid);
                    }
                }
            }
            ix.entries = Some(entries);
        }
        self.indexes.push(ix);
        Ok(())
    }

    /// Rebuilds the key entries of index `i` (after an option change).
    pub fn rebuild_index(&mut self, i: usize) -> Result<()> {
        let spec = self.indexes[i].spec.clone();
        let mut ix = Index::from_spec(spec)?;
        if let Some(entries) = ix.entries.as_mut() {
            for (rid, d) in &self.records {
                let dec = d.to_document()?;
                if let Some(keys) = Index::from_spec(ix.spec.clone())?.keys_of(&dec) {
                    for k in keys {
                        entries.entry(k).or_default().push(*rid);
                    }
                }
            }
        }
        self.indexes[i] = ix;
        Ok(())
    }

    /// Keys with more than one record in index `i` (for unique conversion checks).
    pub fn duplicate_keys(&self, i: usize) -> Result<Vec<(CompoundKey, Vec<u64>)>> {
        let ix = Index::from_spec(self.indexes[i].spec.clone())?;
        let mut map: BTreeMap<CompoundKey, Vec<u64>> = BTreeMap::new();
        for (rid, d) in &self.records {
            let dec = d.to_document()?;
            if let Some(keys) = ix.keys_of(&dec) {
                for k in keys {
                    let e = map.entry(k).or_default();
                    if !e.contains(rid) {
                        e.push(*rid);
                    }
                }
            }
        }
        Ok(map.into_iter().filter(|(_, v)| v.len() > 1).collect())
    }

    /// Total index size estimate.
    pub fn index_size(&self) -> u64 {
        (self.records.len() as u64 * 16 + 4096) * self.indexes.len().max(1) as u64
    }
}

/// A database: collections and views by name.
#[derive(Debug, Clone, Default)]
pub struct Database {
    /// Collections and views.
    pub colls: BTreeMap<String, Collection>,
}

/// All databases.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Databases by name.
    pub dbs: BTreeMap<String, Database>,
}

impl Catalog {
    /// Looks up a collection.
    pub fn coll(&self, db: &str, coll: &str) -> Option<&Collection> {
        self.dbs.get(db)?.colls.get(coll)
    }

    /// Looks up a collection mutably.
    pub fn coll_mut(&mut self, db: &str, coll: &str) -> Option<&mut Collection> {
        self.dbs.get_mut(db)?.colls.get_mut(coll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(d: Document) -> Doc {
        Arc::new(RawDocumentBuf::from_document(&d).unwrap())
    }

    #[test]
    fn unique_and_capped() {
        let mut c = Collection::new(doc! {});
        c.add_index("db.c", Index::from_spec(doc! {"v": 2, "key": {"a": 1}, "name": "a_1", "unique": true}).unwrap())
            .unwrap();
        c.insert("db.c", raw(doc! {"_id": 1, "a": 1})).unwrap();
        let e = c.insert("db.c", raw(doc! {"_id": 2, "a": 1})).unwrap_err();
        assert_eq!(e.code(), 11000);
        assert!(e.message().contains("index: a_1 dup key: { a: 1 }"), "{}", e.message());
        let e = c.insert("db.c", raw(doc! {"_id": 1, "a": 5})).unwrap_err();
        assert!(e.message().contains("dup key: { _id: 1 }"));
        let mut capped = Collection::new(doc! {"capped": true, "size": 100000, "max": 2});
        for i in 0..5 {
            capped.insert("db.k", raw(doc! {"_id": i})).unwrap();
        }
        assert_eq!(capped.count(), 2);
    }
}
