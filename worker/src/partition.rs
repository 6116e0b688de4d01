//! Planning the `_id` ranges one collection is copied (and verified) in, on the source.
//!
//! # Why ranges never span two type brackets
//!
//! MongoDB's comparison operators only match values of the operand's type bracket:
//! `{_id: {$lt: 5}}` never matches a string `_id`, and `{_id: {$gte: "a"}}` never matches a
//! number. A range `[5, "m")` would therefore silently match nothing. So every range lives in
//! one [`IdBracket`] and its filter names the bracket's types with `$type`; the brackets are
//! split on their own, and one [`IdBracket::Other`] residual range (`$not` of every typed
//! bracket) always follows, so an `_id` of a type nobody thought of is still copied.
//!
//! # Why the ranges always cover everything
//!
//! Bounds come from a `$sample` of `_id`s, sorted with [`crate::bson_order`]. Within a bracket
//! the ranges are `(open, b1)`, `[b1, b2)`, …, `[bn, open)`: whatever order the server uses
//! for the bounds (a collection collation, a disagreement with our sort), every value `x`
//! falls in the range of the largest bound `<= x`, so a bad bound can only make two ranges
//! overlap (duplicates are skipped on insert), never lose a document.
//!
//! A collection with a default collation orders strings by it: string and object brackets are
//! then not split (byte-order bounds would overlap), the others are.
//!
//! # NaN
//!
//! A NaN `_id` matches no comparison but equality (`{$lt: 5}` does not match it), although it
//! sorts below every number. NaN is never used as a bound, and the first range of the number
//! bracket uses `$not: {$gte: b1}` instead of `$lt: b1` so the NaN `_id` stays in it.

use std::cmp::Ordering;
use std::time::Duration;

use bson::{Bson, Document, RawDocumentBuf, doc};
use clustersync_common::extjson::ExtBson;
use clustersync_common::model::{IdBracket, IdRange};
use clustersync_common::namespace::Namespace;
use futures::TryStreamExt;
use mongodb::options::ReadConcern;
use tokio_util::sync::CancellationToken;

use crate::bson_order;
use crate::error::WorkerError;
use crate::mongo::{self, Clusters};
use crate::settings::WorkerSettings;

/// Most partitions one collection is split into.
const MAX_PARTITIONS: u64 = 10_000;
/// Most `_id`s sampled to plan one collection.
const MAX_SAMPLE: u64 = 100_000;
/// Samples per planned partition: enough for even quantiles.
const SAMPLES_PER_PARTITION: u64 = 10;
/// Documents read to estimate the average size when the storage statistics are unavailable.
const SIZE_PROBE_DOCUMENTS: i64 = 100;
/// Retry budget of planning reads (planning is restartable: a failure is retried by the leader).
const PLANNING_RETRY_BUDGET: Duration = Duration::from_secs(120);

/// Server error code: the namespace does not exist.
const NAMESPACE_NOT_FOUND: i32 = 26;

/// Every `$type` alias with its canonical type rank (see [`bson_order::type_rank`]).
const TYPE_ALIASES_BY_RANK: [(i32, &str); 21] = [
    (-1, "minKey"),
    (0, "undefined"),
    (5, "null"),
    (10, "double"),
    (10, "int"),
    (10, "long"),
    (10, "decimal"),
    (15, "string"),
    (15, "symbol"),
    (20, "object"),
    (25, "array"),
    (30, "binData"),
    (35, "objectId"),
    (40, "bool"),
    (45, "date"),
    (47, "timestamp"),
    (50, "regex"),
    (55, "dbPointer"),
    (60, "javascript"),
    (65, "javascriptWithScope"),
    (127, "maxKey"),
];

/// Size statistics of one source collection.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CollectionStats {
    /// Documents in the collection (summed over shards).
    pub documents: u64,
    /// Uncompressed data size in bytes (summed over shards).
    pub bytes: u64,
    /// Average document size in bytes.
    pub avg_document_bytes: u64,
    /// Whether the collection is capped.
    pub capped: bool,
    /// The capped collection's document limit, if any.
    pub capped_max_documents: Option<i64>,
    /// The capped collection's size limit in bytes, if capped.
    pub capped_max_bytes: Option<i64>,
    /// False when storage statistics were unavailable (a view, an old server) and the numbers
    /// come from `count` and a small size probe instead.
    pub from_storage_stats: bool,
}

/// One planned range with its estimated share of the collection.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRange {
    pub range: IdRange,
    pub estimated_documents: u64,
    pub estimated_bytes: u64,
}

fn read_error(what: String) -> impl Fn(mongodb::error::Error) -> WorkerError {
    move |e| WorkerError::mongo(what.clone(), e)
}

/// A number of any BSON numeric type as `u64` (negative and non-numeric values are 0).
pub(crate) fn as_u64(value: Option<&Bson>) -> u64 {
    match value {
        Some(Bson::Int32(v)) => (*v).max(0) as u64,
        Some(Bson::Int64(v)) => (*v).max(0) as u64,
        Some(Bson::Double(v)) if v.is_finite() && *v > 0.0 => *v as u64,
        _ => 0,
    }
}

/// A number of any BSON numeric type as `i64`.
pub(crate) fn as_i64(value: Option<&Bson>) -> Option<i64> {
    match value {
        Some(Bson::Int32(v)) => Some(*v as i64),
        Some(Bson::Int64(v)) => Some(*v),
        Some(Bson::Double(v)) if v.is_finite() => Some(*v as i64),
        _ => None,
    }
}

/// Size statistics of a source collection.
///
/// Uses `$collStats: {storageStats: {}}` (one result per shard on a sharded cluster, summed).
/// When that fails (a view, a server without the stage), falls back to `count` and the average
/// size of a few documents. A missing collection has empty statistics.
pub async fn collection_stats(clusters: &Clusters, ns: &Namespace) -> Result<CollectionStats, WorkerError> {
    let cancel = CancellationToken::new();
    let collection = clusters.source_db(&ns.db).collection::<Document>(&ns.coll);
    let selection = clusters.copy_read_preference.selection_criteria();
    let what = format!("collection statistics of {ns}");
    let attempt = mongo::retry(&what, &cancel, PLANNING_RETRY_BUDGET, || {
        let collection = collection.clone();
        let selection = selection.clone();
        let what = what.clone();
        async move {
            let cursor = collection
                .aggregate([doc! {"$collStats": {"storageStats": {}}}])
                .selection_criteria(selection)
                .await
                .map_err(read_error(what.clone()))?;
            cursor.try_collect::<Vec<Document>>().await.map_err(read_error(what))
        }
    })
    .await;
    match attempt {
        Ok(per_shard) => Ok(stats_from_coll_stats(&per_shard)),
        Err(e) if e.is_retryable() => Err(e),
        // Views and missing collections land here too (`NamespaceNotFound` or
        // `CommandNotSupportedOnView`): `count` runs a view's pipeline and is 0 for a missing
        // collection.
        Err(e) => {
            tracing::debug!(namespace = %ns, error = %e, "storage statistics unavailable, counting instead");
            stats_from_count(clusters, ns, &cancel).await
        }
    }
}

fn stats_from_coll_stats(per_shard: &[Document]) -> CollectionStats {
    let mut stats = CollectionStats { from_storage_stats: true, ..Default::default() };
    for shard in per_shard {
        let Ok(storage) = shard.get_document("storageStats") else {
            continue;
        };
        stats.documents += as_u64(storage.get("count"));
        stats.bytes += as_u64(storage.get("size"));
        if storage.get_bool("capped").unwrap_or(false) {
            stats.capped = true;
            stats.capped_max_documents = as_i64(storage.get("max")).filter(|max| *max > 0);
            stats.capped_max_bytes = as_i64(storage.get("maxSize"));
        }
    }
    stats.avg_document_bytes = stats.bytes.checked_div(stats.documents).unwrap_or(0);
    stats
}

async fn stats_from_count(
    clusters: &Clusters,
    ns: &Namespace,
    cancel: &CancellationToken,
) -> Result<CollectionStats, WorkerError> {
    let db = clusters.source_db(&ns.db);
    let selection = clusters.copy_read_preference.selection_criteria();
    let what = format!("count of {ns}");
    let count = mongo::retry(&what, cancel, PLANNING_RETRY_BUDGET, || {
        let db = db.clone();
        let selection = selection.clone();
        let what = what.clone();
        let command = doc! {"count": ns.coll.clone(), "query": {}};
        async move { db.run_command(command).selection_criteria(selection).await.map_err(read_error(what)) }
    })
    .await;
    let documents = match count {
        Ok(reply) => as_u64(reply.get("n")),
        Err(e) if e.code() == Some(NAMESPACE_NOT_FOUND) => return Ok(CollectionStats::default()),
        Err(e) => return Err(e),
    };
    // The average size of the first few documents: good enough to decide how many ranges a
    // collection needs; a planning estimate, never used for correctness.
    let collection = db.collection::<RawDocumentBuf>(&ns.coll);
    let what = format!("size probe of {ns}");
    let sizes = mongo::retry(&what, cancel, PLANNING_RETRY_BUDGET, || {
        let collection = collection.clone();
        let selection = selection.clone();
        let what = what.clone();
        async move {
            let cursor = collection
                .find(doc! {})
                .limit(SIZE_PROBE_DOCUMENTS)
                .selection_criteria(selection)
                .await
                .map_err(read_error(what.clone()))?;
            let docs: Vec<RawDocumentBuf> = cursor.try_collect().await.map_err(read_error(what))?;
            Ok(docs.iter().map(|d| d.as_bytes().len() as u64).collect::<Vec<_>>())
        }
    })
    .await
    .unwrap_or_default();
    let avg = if sizes.is_empty() { 0 } else { sizes.iter().sum::<u64>() / sizes.len() as u64 };
    Ok(CollectionStats {
        documents,
        bytes: documents.saturating_mul(avg),
        avg_document_bytes: avg,
        from_storage_stats: false,
        ..Default::default()
    })
}

/// Plans the ranges of one collection (see the module doc). Small collections (at most
/// `settings.partition_bytes`) and natural-order copies get one [`IdRange::whole_collection`].
pub async fn plan_ranges(
    clusters: &Clusters,
    ns: &Namespace,
    stats: &CollectionStats,
    settings: &WorkerSettings,
    natural_order: bool,
) -> Result<Vec<IdRange>, WorkerError> {
    Ok(plan_ranges_estimated(clusters, ns, stats, settings, natural_order)
        .await?
        .into_iter()
        .map(|planned| planned.range)
        .collect())
}

/// [`plan_ranges`], with each range's estimated share of the documents and bytes (from the
/// sample; ranges nobody sampled get 0), for the copy tasks' estimates.
pub async fn plan_ranges_estimated(
    clusters: &Clusters,
    ns: &Namespace,
    stats: &CollectionStats,
    settings: &WorkerSettings,
    natural_order: bool,
) -> Result<Vec<PlannedRange>, WorkerError> {
    if natural_order || stats.bytes <= settings.partition_bytes {
        return Ok(vec![PlannedRange {
            range: IdRange::whole_collection(),
            estimated_documents: stats.documents,
            estimated_bytes: stats.bytes,
        }]);
    }
    let partitions = stats.bytes.div_ceil(settings.partition_bytes.max(1)).clamp(2, MAX_PARTITIONS);
    let cancel = CancellationToken::new();
    let collated = has_collation(clusters, ns).await?;

    let mut present = Vec::new();
    for bracket in IdBracket::TYPED {
        if bracket_present(clusters, ns, bracket, &cancel).await? {
            present.push(bracket);
        }
    }

    // Keep the sample below ~4% of the collection where possible: above 5% `$sample` switches
    // from a random cursor to a full scan and sort.
    let mut sample_size = (partitions * SAMPLES_PER_PARTITION).min(MAX_SAMPLE);
    if stats.documents > 0 {
        sample_size = sample_size.min((stats.documents / 25).max(partitions));
    }
    let sample = match sample_ids(clusters, ns, sample_size, &cancel).await {
        Ok(sample) => sample,
        Err(e) if e.is_retryable() || matches!(e, WorkerError::Cancelled) => return Err(e),
        Err(e) => {
            // Without a sample every present bracket is copied as one range: slower, still complete.
            tracing::warn!(namespace = %ns, error = %e, "cannot sample _id values, copying each type bracket as one range");
            Vec::new()
        }
    };
    let planned = ranges_from_sample(&present, sample, partitions, stats, collated);
    tracing::info!(
        namespace = %ns,
        ranges = planned.len(),
        target_partitions = partitions,
        brackets = ?present,
        "planned copy ranges"
    );
    Ok(planned)
}

/// Whether any `_id` of the bracket exists (an index-backed `$type` probe on real MongoDB).
async fn bracket_present(
    clusters: &Clusters,
    ns: &Namespace,
    bracket: IdBracket,
    cancel: &CancellationToken,
) -> Result<bool, WorkerError> {
    let collection = clusters.source_db(&ns.db).collection::<Document>(&ns.coll);
    let selection = clusters.copy_read_preference.selection_criteria();
    let what = format!("probing {bracket:?} _id values of {ns}");
    let filter = doc! {"_id": {"$type": aliases(bracket)}};
    let found = mongo::retry(&what, cancel, PLANNING_RETRY_BUDGET, || {
        let collection = collection.clone();
        let selection = selection.clone();
        let filter = filter.clone();
        let what = what.clone();
        async move {
            collection
                .find_one(filter)
                .projection(doc! {"_id": 1})
                .selection_criteria(selection)
                .await
                .map_err(read_error(what))
        }
    })
    .await?;
    Ok(found.is_some())
}

async fn sample_ids(
    clusters: &Clusters,
    ns: &Namespace,
    size: u64,
    cancel: &CancellationToken,
) -> Result<Vec<Bson>, WorkerError> {
    let collection = clusters.source_db(&ns.db).collection::<Document>(&ns.coll);
    let selection = clusters.copy_read_preference.selection_criteria();
    let what = format!("sampling _id values of {ns}");
    mongo::retry(&what, cancel, PLANNING_RETRY_BUDGET, || {
        let collection = collection.clone();
        let selection = selection.clone();
        let what = what.clone();
        async move {
            let cursor = collection
                .aggregate([doc! {"$sample": {"size": size as i64}}, doc! {"$project": {"_id": 1}}])
                .allow_disk_use(true)
                .read_concern(ReadConcern::majority())
                .selection_criteria(selection)
                .await
                .map_err(read_error(what.clone()))?;
            let docs: Vec<Document> = cursor.try_collect().await.map_err(read_error(what))?;
            Ok(docs.into_iter().filter_map(|mut d| d.remove("_id")).collect())
        }
    })
    .await
}

/// Whether the source collection has a default collation other than `simple`: the server then
/// orders strings (and objects holding strings) by the collation, not by bytes.
async fn has_collation(clusters: &Clusters, ns: &Namespace) -> Result<bool, WorkerError> {
    let Some(spec) = crate::schema::list_collection_spec(&clusters.source, ns).await? else {
        return Ok(false);
    };
    let collation = spec.get_document("options").ok().and_then(|options| options.get_document("collation").ok());
    Ok(collation.is_some_and(|collation| collation.get_str("locale").is_ok_and(|locale| locale != "simple")))
}

/// Brackets whose values can be meaningfully split by bounds. The others hold one or two
/// values (MinKey, null, bool, MaxKey) or cannot be `_id`s (regex). Under a collation, string
/// and object bounds picked in byte order would be out of the server's order (still complete,
/// but overlapping): those brackets stay whole.
fn splittable(bracket: IdBracket, collated: bool) -> bool {
    match bracket {
        IdBracket::Number | IdBracket::BinData | IdBracket::ObjectId | IdBracket::Date | IdBracket::Timestamp => true,
        IdBracket::String | IdBracket::Object => !collated,
        _ => false,
    }
}

/// Turns the present brackets and a sample into ranges (pure, for tests).
fn ranges_from_sample(
    present: &[IdBracket],
    sample: Vec<Bson>,
    partitions: u64,
    stats: &CollectionStats,
    collated: bool,
) -> Vec<PlannedRange> {
    let total_sampled = sample.len() as u64;
    let mut by_bracket: Vec<(IdBracket, Vec<Bson>)> = Vec::new();
    for id in sample {
        let bracket = bson_order::bracket_of(&id);
        if bracket == IdBracket::Other {
            continue;
        }
        match by_bracket.iter_mut().find(|(b, _)| *b == bracket) {
            Some((_, ids)) => ids.push(id),
            None => by_bracket.push((bracket, vec![id])),
        }
    }
    // A bracket seen in the sample but not by its probe (inserted in between) is present too.
    let mut brackets: Vec<IdBracket> = present.to_vec();
    for (bracket, _) in &by_bracket {
        if !brackets.contains(bracket) {
            brackets.push(*bracket);
        }
    }
    brackets.sort();

    let estimate = |samples: u64| -> (u64, u64) {
        if total_sampled == 0 {
            return (0, 0);
        }
        let share = samples as f64 / total_sampled as f64;
        ((stats.documents as f64 * share).round() as u64, (stats.bytes as f64 * share).round() as u64)
    };

    let mut planned = Vec::new();
    for bracket in brackets {
        let mut ids =
            by_bracket.iter_mut().find(|(b, _)| *b == bracket).map(|(_, ids)| std::mem::take(ids)).unwrap_or_default();
        let share = if total_sampled == 0 { 0 } else { (partitions * ids.len() as u64).div_ceil(total_sampled) };
        let bounds = if splittable(bracket, collated) && share > 1 {
            ids.sort_by(bson_order::compare);
            quantile_bounds(&ids, share as usize)
        } else {
            Vec::new()
        };
        let mut lower: Option<Bson> = None;
        for upper in bounds.into_iter().map(Some).chain(std::iter::once(None)) {
            let in_range = ids
                .iter()
                .filter(|id| {
                    lower.as_ref().is_none_or(|l| bson_order::compare(id, l) != Ordering::Less)
                        && upper.as_ref().is_none_or(|u| bson_order::compare(id, u) == Ordering::Less)
                })
                .count() as u64;
            let (estimated_documents, estimated_bytes) = estimate(in_range);
            planned.push(PlannedRange {
                range: IdRange { bracket, lower: lower.clone().map(ExtBson), upper: upper.clone().map(ExtBson) },
                estimated_documents,
                estimated_bytes,
            });
            lower = upper;
        }
    }
    planned.push(PlannedRange {
        range: IdRange { bracket: IdBracket::Other, lower: None, upper: None },
        estimated_documents: 0,
        estimated_bytes: 0,
    });
    planned
}

/// `parts - 1` strictly increasing bounds splitting sorted `ids` into `parts` even slices;
/// NaN is never a bound (no range operator matches it).
fn quantile_bounds(sorted: &[Bson], parts: usize) -> Vec<Bson> {
    let usable: Vec<&Bson> = sorted.iter().filter(|id| !bson_order::is_nan(id)).collect();
    let mut bounds: Vec<Bson> = Vec::new();
    if usable.is_empty() || parts < 2 {
        return bounds;
    }
    for k in 1..parts {
        let candidate = usable[k * usable.len() / parts];
        // The first value cannot be a bound: the range below it would be empty.
        if bson_order::compare(candidate, usable[0]) == Ordering::Equal {
            continue;
        }
        if bounds.last().is_none_or(|last| bson_order::compare(candidate, last) == Ordering::Greater) {
            bounds.push(candidate.clone());
        }
    }
    bounds
}

/// The `$type` aliases of a typed bracket, as a BSON array.
fn aliases(bracket: IdBracket) -> Vec<Bson> {
    bracket.type_aliases().iter().map(|alias| Bson::String((*alias).to_string())).collect()
}

/// Every alias of every typed bracket: the complement defines [`IdBracket::Other`].
fn all_typed_aliases() -> Vec<Bson> {
    IdBracket::TYPED.iter().flat_map(|bracket| aliases(*bracket)).collect()
}

/// The `find` filter of a range (see the module doc for the NaN rule).
pub fn range_filter(range: &IdRange) -> Document {
    match range.bracket {
        IdBracket::All => doc! {},
        IdBracket::Other => doc! {"_id": {"$not": {"$type": all_typed_aliases()}}},
        bracket => {
            let mut condition = doc! {"$type": aliases(bracket)};
            if let Some(lower) = &range.lower {
                condition.insert("$gte", lower.0.clone());
            }
            if let Some(upper) = &range.upper {
                condition.extend(upper_condition(bracket, range.lower.is_none(), &upper.0));
            }
            doc! {"_id": condition}
        }
    }
}

/// `$lt: upper`, except in the number bracket's first range, which must keep the NaN `_id`.
fn upper_condition(bracket: IdBracket, lower_open: bool, upper: &Bson) -> Document {
    if bracket == IdBracket::Number && lower_open {
        doc! {"$not": {"$gte": upper.clone()}}
    } else {
        doc! {"$lt": upper.clone()}
    }
}

/// The filter of a range, restricted to `_id`s strictly after `after` in MongoDB's order
/// (resuming an `_id`-order copy). `None` is [`range_filter`].
///
/// `{$gt: v}` alone only matches `v`'s own bracket, so for the whole-collection and residual
/// ranges the filter also lists every type that sorts after `v`'s.
pub fn range_filter_after(range: &IdRange, after: Option<&Bson>) -> Document {
    let Some(after) = after else {
        return range_filter(range);
    };
    let typed = !matches!(range.bracket, IdBracket::All | IdBracket::Other);
    if typed && bson_order::bracket_of(after) == range.bracket && !bson_order::is_nan(after) && !is_single_valued(after)
    {
        // The common case, one index range: `$gt` replaces the lower bound (after >= lower).
        let mut condition = doc! {"$type": aliases(range.bracket), "$gt": after.clone()};
        if let Some(upper) = &range.upper {
            condition.insert("$lt", upper.0.clone());
        }
        return doc! {"_id": condition};
    }
    let after_filter = strictly_after(after);
    match range.bracket {
        IdBracket::All => after_filter,
        _ => doc! {"$and": [range_filter(range), after_filter]},
    }
}

/// Types whose only value is the type itself: `$gt` cannot express "after" for them.
fn is_single_valued(value: &Bson) -> bool {
    matches!(value, Bson::MinKey | Bson::MaxKey | Bson::Null | Bson::Undefined)
}

/// Matches every `_id` strictly after `value` in MongoDB's order.
fn strictly_after(value: &Bson) -> Document {
    let rank = bson_order::type_rank(value);
    let higher: Vec<Bson> = TYPE_ALIASES_BY_RANK
        .iter()
        .filter(|(r, _)| *r > rank)
        .map(|(_, alias)| Bson::String((*alias).to_string()))
        .collect();
    let same_type = if bson_order::is_nan(value) {
        // Every number but NaN sorts after NaN, and `$gt: NaN` matches nothing.
        Some(doc! {"_id": {"$type": aliases(IdBracket::Number), "$ne": f64::NAN}})
    } else if is_single_valued(value) {
        None
    } else {
        Some(doc! {"_id": {"$gt": value.clone()}})
    };
    let higher_types = (!higher.is_empty()).then(|| doc! {"_id": {"$type": higher}});
    match (same_type, higher_types) {
        (Some(same), Some(higher)) => doc! {"$or": [same, higher]},
        (Some(only), None) | (None, Some(only)) => only,
        // After MaxKey: nothing.
        (None, None) => doc! {"_id": {"$in": []}},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::oid::ObjectId;

    fn range(bracket: IdBracket, lower: Option<Bson>, upper: Option<Bson>) -> IdRange {
        IdRange { bracket, lower: lower.map(ExtBson), upper: upper.map(ExtBson) }
    }

    #[test]
    fn filters_have_the_documented_shapes() {
        assert_eq!(range_filter(&IdRange::whole_collection()), doc! {});
        let other = range_filter(&range(IdBracket::Other, None, None));
        let listed = other.get_document("_id").unwrap().get_document("$not").unwrap().get_array("$type").unwrap();
        assert_eq!(listed.len(), IdBracket::TYPED.iter().map(|b| b.type_aliases().len()).sum::<usize>());
        for (_, alias) in TYPE_ALIASES_BY_RANK {
            let typed = IdBracket::TYPED.iter().any(|b| b.type_aliases().contains(&alias));
            assert_eq!(listed.contains(&Bson::String(alias.into())), typed, "{alias}");
        }
        assert_eq!(
            range_filter(&range(IdBracket::String, Some("a".into()), Some("m".into()))),
            doc! {"_id": {"$type": ["string", "symbol"], "$gte": "a", "$lt": "m"}}
        );
        assert_eq!(range_filter(&range(IdBracket::ObjectId, None, None)), doc! {"_id": {"$type": ["objectId"]}});
        // The first number range keeps NaN; later ones start at a real bound.
        assert_eq!(
            range_filter(&range(IdBracket::Number, None, Some(Bson::Int32(10)))),
            doc! {"_id": {"$type": ["double", "int", "long", "decimal"], "$not": {"$gte": 10}}}
        );
        assert_eq!(
            range_filter(&range(IdBracket::Number, Some(Bson::Int32(10)), None)),
            doc! {"_id": {"$type": ["double", "int", "long", "decimal"], "$gte": 10}}
        );
    }

    #[test]
    fn resuming_filters_stay_in_the_range_and_cover_later_types() {
        let r = range(IdBracket::Number, Some(Bson::Int32(0)), Some(Bson::Int32(100)));
        assert_eq!(
            range_filter_after(&r, Some(&Bson::Int64(42))),
            doc! {"_id": {"$type": ["double", "int", "long", "decimal"], "$gt": 42_i64, "$lt": 100}}
        );
        assert_eq!(range_filter_after(&r, None), range_filter(&r));
        // Whole collection after a number: later numbers, and every type that sorts after numbers.
        let all = range_filter_after(&IdRange::whole_collection(), Some(&Bson::Int32(7)));
        let branches = all.get_array("$or").unwrap();
        assert_eq!(branches[0], Bson::Document(doc! {"_id": {"$gt": 7}}));
        let higher = branches[1].as_document().unwrap().get_document("_id").unwrap().get_array("$type").unwrap();
        assert!(higher.contains(&Bson::String("string".into())));
        assert!(higher.contains(&Bson::String("maxKey".into())));
        assert!(higher.contains(&Bson::String("javascript".into())));
        assert!(!higher.contains(&Bson::String("int".into())));
        assert!(!higher.contains(&Bson::String("null".into())));
        // After NaN: every other number, then the later types.
        let after_nan = range_filter_after(&IdRange::whole_collection(), Some(&Bson::Double(f64::NAN)));
        let first = after_nan.get_array("$or").unwrap()[0].as_document().unwrap().get_document("_id").unwrap().clone();
        assert!(first.contains_key("$ne") && first.contains_key("$type"), "{first}");
        // After MaxKey nothing remains; after null only the later types.
        assert_eq!(range_filter_after(&IdRange::whole_collection(), Some(&Bson::MaxKey)), doc! {"_id": {"$in": []}});
        let after_null = range_filter_after(&IdRange::whole_collection(), Some(&Bson::Null));
        assert!(after_null.get_document("_id").unwrap().contains_key("$type"), "{after_null}");
        // The residual range keeps its own condition.
        let other = range_filter_after(&range(IdBracket::Other, None, None), Some(&Bson::JavaScriptCode("x".into())));
        assert_eq!(other.get_array("$and").unwrap().len(), 2);
    }

    fn stats(bytes: u64, documents: u64) -> CollectionStats {
        CollectionStats { documents, bytes, avg_document_bytes: bytes / documents.max(1), ..Default::default() }
    }

    #[test]
    fn sampled_brackets_are_split_in_proportion_and_the_residual_range_is_always_last() {
        let mut sample: Vec<Bson> = (0..80).map(|i| Bson::Int32(i * 10)).collect();
        sample.extend((0..20).map(|i| Bson::String(format!("k{i:03}"))));
        sample.push(Bson::JavaScriptCode("ignored".into()));
        let planned = ranges_from_sample(
            &[IdBracket::Number, IdBracket::String, IdBracket::Null],
            sample,
            10,
            &stats(1000, 100),
            false,
        );
        let ranges: Vec<&IdRange> = planned.iter().map(|p| &p.range).collect();
        let numbers = ranges.iter().filter(|r| r.bracket == IdBracket::Number).count();
        let strings = ranges.iter().filter(|r| r.bracket == IdBracket::String).count();
        assert_eq!(numbers, 8, "{ranges:?}");
        assert_eq!(strings, 2, "{ranges:?}");
        assert_eq!(ranges.iter().filter(|r| r.bracket == IdBracket::Null).count(), 1);
        assert_eq!(ranges.last().unwrap().bracket, IdBracket::Other);
        // Within a bracket: open first lower, open last upper, each upper is the next lower.
        for bracket in [IdBracket::Number, IdBracket::String] {
            let chain: Vec<&&IdRange> = ranges.iter().filter(|r| r.bracket == bracket).collect();
            assert!(chain.first().unwrap().lower.is_none());
            assert!(chain.last().unwrap().upper.is_none());
            for pair in chain.windows(2) {
                assert_eq!(pair[0].upper, pair[1].lower);
                let (a, b) = (&pair[0].upper.as_ref().unwrap().0, &pair[1].upper.as_ref().map(|u| u.0.clone()));
                if let Some(b) = b {
                    assert_eq!(bson_order::compare(a, b), Ordering::Less);
                }
            }
        }
        let estimated: u64 = planned.iter().map(|p| p.estimated_documents).sum();
        assert!((95..=100).contains(&estimated), "{estimated}");
    }

    #[test]
    fn unsampled_and_unsplittable_brackets_get_one_range_and_nan_is_never_a_bound() {
        let mut sample = vec![Bson::Double(f64::NAN)];
        sample.extend((0..50).map(|i| Bson::Double(i as f64)));
        sample.extend((0..50).map(|_| Bson::Boolean(true)));
        let planned = ranges_from_sample(
            &[IdBracket::ObjectId, IdBracket::Bool, IdBracket::Number],
            sample,
            6,
            &stats(10, 10),
            false,
        );
        for p in &planned {
            for bound in [&p.range.lower, &p.range.upper].into_iter().flatten() {
                assert!(!bson_order::is_nan(&bound.0), "{:?}", p.range);
            }
        }
        let count = |bracket| planned.iter().filter(|p| p.range.bracket == bracket).count();
        assert_eq!(count(IdBracket::ObjectId), 1);
        assert_eq!(count(IdBracket::Bool), 1);
        assert!(count(IdBracket::Number) >= 2);
        assert_eq!(count(IdBracket::Other), 1);
        // No sample at all: one range per present bracket plus the residual.
        let planned =
            ranges_from_sample(&[IdBracket::ObjectId, IdBracket::String], Vec::new(), 6, &stats(10, 10), false);
        let brackets: Vec<IdBracket> = planned.iter().map(|p| p.range.bracket).collect();
        assert_eq!(brackets, vec![IdBracket::String, IdBracket::ObjectId, IdBracket::Other]);
    }

    #[test]
    fn under_a_collation_strings_and_objects_stay_whole() {
        let mut sample: Vec<Bson> = (0..50).map(Bson::Int32).collect();
        sample.extend((0..50).map(|i| Bson::String(format!("k{i:03}"))));
        let planned = ranges_from_sample(&[IdBracket::Number, IdBracket::String], sample, 8, &stats(1000, 100), true);
        let count = |bracket| planned.iter().filter(|p| p.range.bracket == bracket).count();
        assert_eq!(count(IdBracket::String), 1);
        assert!(count(IdBracket::Number) > 1);
    }

    #[test]
    fn quantile_bounds_are_strictly_increasing_even_with_duplicates() {
        let ids: Vec<Bson> = [1, 1, 1, 1, 2, 2, 3, 3, 3, 9].into_iter().map(Bson::Int32).collect();
        let bounds = quantile_bounds(&ids, 5);
        for pair in bounds.windows(2) {
            assert_eq!(bson_order::compare(&pair[0], &pair[1]), Ordering::Less);
        }
        assert!(!bounds.contains(&Bson::Int32(1)), "the smallest value cannot be a bound: {bounds:?}");
        let oids: Vec<Bson> = (0..100u8).map(|i| Bson::ObjectId(ObjectId::from_bytes([i; 12]))).collect();
        assert_eq!(quantile_bounds(&oids, 4).len(), 3);
    }

    #[test]
    fn coll_stats_are_summed_over_shards() {
        let shard = |count: i32, size: i64| doc! {"storageStats": {"count": count, "size": size, "capped": false}};
        let stats = stats_from_coll_stats(&[shard(10, 1000), shard(30, 3000)]);
        assert_eq!((stats.documents, stats.bytes, stats.avg_document_bytes), (40, 4000, 100));
        assert!(!stats.capped && stats.from_storage_stats);
        let capped = stats_from_coll_stats(&[
            doc! {"storageStats": {"count": 1, "size": 5.0, "capped": true, "max": 50, "maxSize": 4096}},
        ]);
        assert!(capped.capped);
        assert_eq!(capped.capped_max_documents, Some(50));
        assert_eq!(capped.capped_max_bytes, Some(4096));
    }
}
