//! Point-in-time reads (`readConcern: {level: "snapshot"}` outside transactions): a
//! collection as of an optime, rebuilt from its current state by undoing newer oplog entries.

use std::sync::Arc;

use bson::{Bson, Timestamp};

use crate::error::{Error, Result};
use crate::oplog::{Kind, Oplog};
use crate::storage::{Catalog, Collection};

/// The collection `db.coll` as it was at optime `t` (None if it did not exist then).
pub fn collection_at(
    catalog: &Catalog,
    oplog: &Oplog,
    db: &str,
    coll: &str,
    t: Timestamp,
) -> Result<Option<Collection>> {
    if let Some(first) = oplog.first_ts()
        && (first.time, first.increment) > (t.time, t.increment)
    {
        return Err(Error::new(
            239,
            format!(
                "Read timestamp Timestamp({}, {}) is older than the oldest available timestamp.",
                t.time, t.increment
            ),
        ));
    }
    let mut cur = catalog.coll(db, coll).cloned();
    let ns = format!("{db}.{coll}");
    for e in oplog.newer_than(t) {
        if e.db != db || e.coll != coll {
            continue;
        }
        match &e.kind {
            Kind::Insert { doc } => {
                if let Some(c) = cur.as_mut() {
                    let id = doc
                        .get("_id")?
                        .map(|v| Bson::try_from(v.to_raw_bson()))
                        .transpose()
                        .map_err(|e| Error::new(22, e.to_string()))?;
                    if let Some(id) = id
                        && let Some((rid, _)) = c.get_by_id(&id)
                    {
                        c.remove_rid(rid)?;
                    }
                }
            }
            Kind::Update { id, before, .. } | Kind::Replace { id, before, .. } => {
                if let Some(c) = cur.as_mut()
                    && let Some((rid, _)) = c.get_by_id(id)
                {
                    c.replace(&ns, rid, Arc::clone(before))?;
                }
            }
            Kind::Delete { before, .. } => {
                if let Some(c) = cur.as_mut() {
                    c.insert(&ns, Arc::clone(before))?;
                }
            }
            Kind::Create { .. } => cur = None,
            _ => {}
        }
    }
    Ok(cur)
}
