//! The TTL monitor: removes documents whose indexed date is older than the index's
//! `expireAfterSeconds` (and, for clustered collections with `expireAfterSeconds`, by `_id`),
//! writing replicated delete entries to the oplog like mongod.

use bson::Bson;

use crate::bson_order::as_i64;
use crate::oplog::{Kind, Pending};
use crate::query;
use crate::server::State;

fn expired(v: Option<&Bson>, cutoff_ms: i64) -> bool {
    match v {
        Some(Bson::DateTime(d)) => d.timestamp_millis() < cutoff_ms,
        Some(Bson::Array(a)) => a
            .iter()
            .filter_map(|x| if let Bson::DateTime(d) = x { Some(d.timestamp_millis()) } else { None })
            .min()
            .is_some_and(|m| m < cutoff_ms),
        Some(Bson::ObjectId(o)) => o.timestamp().timestamp_millis() < cutoff_ms,
        _ => false,
    }
}

/// One pass over every collection; returns the number of documents removed.
pub fn run_pass(st: &mut State) -> usize {
    let now = bson::DateTime::now().timestamp_millis();
    let mut ops = Vec::new();
    for (db, d) in st.catalog.dbs.iter_mut() {
        for (name, c) in d.colls.iter_mut() {
            if c.view.is_some() {
                continue;
            }
            let mut rules: Vec<(String, i64)> = c
                .indexes
                .iter()
                .filter(|i| i.key.len() == 1)
                .filter_map(|i| {
                    let secs = i.spec.get("expireAfterSeconds").and_then(as_i64)?;
                    let field = i.key.keys().next()?.clone();
                    Some((field, secs))
                })
                .collect();
            if c.options.contains_key("clusteredIndex")
                && let Some(secs) = c.options.get("expireAfterSeconds").and_then(as_i64)
            {
                rules.push(("_id".to_string(), secs));
            }
            if rules.is_empty() {
                continue;
            }
            let mut doomed = Vec::new();
            for (rid, doc) in &c.records {
                let Ok(dec) = doc.to_document() else { continue };
                if rules.iter().any(|(f, secs)| expired(query::get_path(&dec, f), now - secs.saturating_mul(1000))) {
                    doomed.push((*rid, dec.get("_id").cloned().unwrap_or(Bson::Null)));
                }
            }
            for (rid, id) in doomed {
                if let Ok(Some(old)) = c.remove_rid(rid) {
                    ops.push(Pending {
                        db: db.clone(),
                        coll: name.clone(),
                        uuid: Some(c.uuid),
                        kind: Kind::Delete { id, pre: None, before: old },
                    });
                }
            }
        }
    }
    let n = ops.len();
    if n > 0 {
        st.oplog.append_each(ops);
        st.last_write = std::time::Instant::now();
    }
    n
}
