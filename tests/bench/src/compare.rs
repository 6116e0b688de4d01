//! An independent check of one collection on both sides, run when clustersync's verifier
//! reports a difference: both sides are read in `_id` order (raw BSON) and merged, so the report
//! can say whether the destination really differs and how (missing, extra, or which fields).

use bson::{RawDocument, RawDocumentBuf, doc};
use mongodb::{Client, Cursor};
use serde::Serialize;

/// What the comparison found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Comparison {
    /// The namespace compared.
    pub namespace: String,
    /// Documents read on the source.
    pub source_documents: u64,
    /// Documents read on the destination.
    pub destination_documents: u64,
    /// `_id`s only on the source.
    pub only_on_source: u64,
    /// `_id`s only on the destination.
    pub only_on_destination: u64,
    /// Documents present on both sides whose bytes differ.
    pub differing: u64,
    /// Up to five examples, described.
    pub examples: Vec<String>,
}

impl Comparison {
    /// One line for the log and the report.
    pub fn summary(&self) -> String {
        format!(
            "independent comparison of {}: {} source / {} destination documents, {} only on the source, {} only on the destination, {} differing{}",
            self.namespace,
            self.source_documents,
            self.destination_documents,
            self.only_on_source,
            self.only_on_destination,
            self.differing,
            if self.examples.is_empty() { String::new() } else { format!("; e.g. {}", self.examples.join("; ")) }
        )
    }
}

async fn open(client: &Client, db: &str, coll: &str) -> anyhow::Result<Cursor<RawDocumentBuf>> {
    Ok(client.database(db).collection::<RawDocumentBuf>(coll).find(doc! {}).sort(doc! {"_id": 1}).await?)
}

fn id_of(document: &RawDocument) -> bson::Bson {
    document
        .get("_id")
        .ok()
        .flatten()
        .and_then(|id| bson::Bson::try_from(id.to_raw_bson()).ok())
        .unwrap_or(bson::Bson::Null)
}

/// Orders two `_id`s of the bench's data set (all `i64`; anything else by its text).
fn order(a: &bson::Bson, b: &bson::Bson) -> std::cmp::Ordering {
    match (a.as_i64(), b.as_i64()) {
        (Some(a), Some(b)) => a.cmp(&b),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Describes how two versions of a document differ: fields missing, extra, changed, reordered.
fn describe(source: &RawDocument, destination: &RawDocument) -> String {
    let fields = |d: &RawDocument| -> Vec<(String, Vec<u8>)> {
        d.iter()
            .filter_map(Result::ok)
            .map(|(key, value)| {
                let mut holder = RawDocumentBuf::new();
                holder.append(key, value.to_raw_bson());
                (key.to_string(), holder.into_bytes())
            })
            .collect()
    };
    let (s, d) = (fields(source), fields(destination));
    let mut notes = Vec::new();
    for (key, value) in &s {
        match d.iter().find(|(k, _)| k == key) {
            None => notes.push(format!("{key} missing on the destination")),
            Some((_, other)) if other != value => {
                let show = |bytes: &[u8]| {
                    RawDocumentBuf::from_bytes(bytes.to_vec())
                        .ok()
                        .and_then(|doc| doc.get(key).ok().flatten().map(|v| format!("{:?}", v.to_raw_bson())))
                        .unwrap_or_default()
                        .chars()
                        .take(60)
                        .collect::<String>()
                };
                notes.push(format!("{key}: source {} destination {}", show(value), show(other)));
            }
            _ => {}
        }
    }
    for (key, _) in &d {
        if !s.iter().any(|(k, _)| k == key) {
            notes.push(format!("{key} only on the destination"));
        }
    }
    if notes.is_empty() {
        let order = |f: &[(String, Vec<u8>)]| f.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(",");
        notes.push(format!("same fields in a different order: source [{}] destination [{}]", order(&s), order(&d)));
    }
    notes.join(", ")
}

/// Compares `namespace` (`db.coll`) on both sides.
pub async fn collection(source: &Client, destination: &Client, namespace: &str) -> anyhow::Result<Comparison> {
    let (db, coll) = namespace.split_once('.').ok_or_else(|| anyhow::anyhow!("not a namespace: {namespace}"))?;
    let mut out = Comparison { namespace: namespace.to_string(), ..Comparison::default() };
    let mut left = open(source, db, coll).await?;
    let mut right = open(destination, db, coll).await?;
    let mut l = if left.advance().await? { Some(left.current().to_raw_document_buf()) } else { None };
    let mut r = if right.advance().await? { Some(right.current().to_raw_document_buf()) } else { None };
    let example = |out: &mut Comparison, text: String| {
        if out.examples.len() < 5 {
            out.examples.push(text);
        }
    };
    loop {
        let step = match (&l, &r) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => order(&id_of(a), &id_of(b)),
        };
        match step {
            std::cmp::Ordering::Less => {
                let a = l.as_ref().map(|a| id_of(a)).unwrap_or(bson::Bson::Null);
                out.only_on_source += 1;
                example(&mut out, format!("_id {a} only on the source"));
            }
            std::cmp::Ordering::Greater => {
                let b = r.as_ref().map(|b| id_of(b)).unwrap_or(bson::Bson::Null);
                out.only_on_destination += 1;
                example(&mut out, format!("_id {b} only on the destination"));
            }
            std::cmp::Ordering::Equal => {
                if let (Some(a), Some(b)) = (&l, &r)
                    && a.as_bytes() != b.as_bytes()
                {
                    out.differing += 1;
                    example(&mut out, format!("_id {}: {}", id_of(a), describe(a, b)));
                }
            }
        }
        if step != std::cmp::Ordering::Greater {
            out.source_documents += 1;
            l = if left.advance().await? { Some(left.current().to_raw_document_buf()) } else { None };
        }
        if step != std::cmp::Ordering::Less {
            out.destination_documents += 1;
            r = if right.advance().await? { Some(right.current().to_raw_document_buf()) } else { None };
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn describes_changed_missing_and_reordered_fields() {
        let a = rawdoc! {"_id": 1, "x": 1, "y": "a"};
        let b = rawdoc! {"_id": 1, "x": 2, "z": true};
        let text = describe(&a, &b);
        assert!(text.contains("x: source"), "{text}");
        assert!(text.contains("y missing on the destination"), "{text}");
        assert!(text.contains("z only on the destination"), "{text}");
        let c = rawdoc! {"_id": 1, "y": "a", "x": 1};
        assert!(describe(&a, &c).contains("different order"));
    }
}
