//! Sets of `_id` key ranges in MongoDB's order: what the planner walks in a collection's
//! `_id` index instead of every document.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound::{self, Excluded, Included, Unbounded};

use bson::Bson;

use crate::bson_order::{Key, bracket_floor, next_bracket};

/// One range of keys.
pub type Range = (Bound<Key>, Bound<Key>);

/// A union of key ranges: sorted, disjoint, none empty and no two touching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet(Vec<Range>);

fn cmp_lo(a: &Bound<Key>, b: &Bound<Key>) -> Ordering {
    match (a, b) {
        (Unbounded, Unbounded) => Ordering::Equal,
        (Unbounded, _) => Ordering::Less,
        (_, Unbounded) => Ordering::Greater,
        (Included(x), Included(y)) | (Excluded(x), Excluded(y)) => x.cmp(y),
        (Included(x), Excluded(y)) => x.cmp(y).then(Ordering::Less),
        (Excluded(x), Included(y)) => x.cmp(y).then(Ordering::Greater),
    }
}

fn cmp_hi(a: &Bound<Key>, b: &Bound<Key>) -> Ordering {
    match (a, b) {
        (Unbounded, Unbounded) => Ordering::Equal,
        (Unbounded, _) => Ordering::Greater,
        (_, Unbounded) => Ordering::Less,
        (Included(x), Included(y)) | (Excluded(x), Excluded(y)) => x.cmp(y),
        (Included(x), Excluded(y)) => x.cmp(y).then(Ordering::Greater),
        (Excluded(x), Included(y)) => x.cmp(y).then(Ordering::Less),
    }
}

/// Whether a range can hold a key. `BTreeMap::range` panics on exactly the ranges this
/// rejects (start after end, or equal excluded ends).
fn non_empty(lo: &Bound<Key>, hi: &Bound<Key>) -> bool {
    match (lo, hi) {
        (Unbounded, _) | (_, Unbounded) => true,
        (Included(a), Included(b)) => a <= b,
        (Included(a), Excluded(b)) | (Excluded(a), Included(b)) | (Excluded(a), Excluded(b)) => a < b,
    }
}

/// Whether a range ending at `hi` and the next one starting at `lo` leave no key between them.
fn touch(hi: &Bound<Key>, lo: &Bound<Key>) -> bool {
    match (hi, lo) {
        (Unbounded, _) | (_, Unbounded) => true,
        (Excluded(a), Excluded(b)) => b < a,
        (Included(a), Included(b)) | (Included(a), Excluded(b)) | (Excluded(a), Included(b)) => b <= a,
    }
}

fn flip(b: &Bound<Key>) -> Bound<Key> {
    match b {
        Included(k) => Excluded(k.clone()),
        Excluded(k) => Included(k.clone()),
        Unbounded => Unbounded,
    }
}

impl KeySet {
    /// Every key.
    pub fn all() -> KeySet {
        KeySet(vec![(Unbounded, Unbounded)])
    }

    /// No key.
    pub fn empty() -> KeySet {
        KeySet(Vec::new())
    }

    /// One range (possibly empty).
    pub fn range(lo: Bound<Key>, hi: Bound<Key>) -> KeySet {
        KeySet::from_ranges(vec![(lo, hi)])
    }

    /// Exactly the keys equal to `v`.
    pub fn point(v: &Bson) -> KeySet {
        KeySet::range(Included(Key(v.clone())), Included(Key(v.clone())))
    }

    /// Every key of a comparison bracket (see [`crate::bson_order::BRACKETS`]).
    pub fn bracket(b: u8) -> KeySet {
        KeySet::range(Included(Key(bracket_floor(b))), KeySet::bracket_end(b))
    }

    /// The upper end of bracket `b`: just below the next bracket's smallest value.
    pub fn bracket_end(b: u8) -> Bound<Key> {
        match next_bracket(b) {
            Some(n) => Excluded(Key(bracket_floor(n))),
            None => Unbounded,
        }
    }

    /// Builds a set from any ranges (empty ones are dropped, overlapping ones merged).
    pub fn from_ranges(mut ranges: Vec<Range>) -> KeySet {
        ranges.retain(|(lo, hi)| non_empty(lo, hi));
        ranges.sort_by(|a, b| cmp_lo(&a.0, &b.0));
        let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            if let Some(last) = out.last_mut()
                && touch(&last.1, &lo)
            {
                if cmp_hi(&hi, &last.1) == Ordering::Greater {
                    last.1 = hi;
                }
                continue;
            }
            out.push((lo, hi));
        }
        KeySet(out)
    }

    /// The ranges, lowest first.
    pub fn ranges(&self) -> &[Range] {
        &self.0
    }

    /// True when no key can be in the set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when every key is in the set.
    pub fn is_all(&self) -> bool {
        matches!(self.0.as_slice(), [(Unbounded, Unbounded)])
    }

    /// Keys in either set.
    pub fn union(&self, other: &KeySet) -> KeySet {
        KeySet::from_ranges(self.0.iter().chain(other.0.iter()).cloned().collect())
    }

    /// Keys in any of the sets.
    pub fn union_all(sets: impl IntoIterator<Item = KeySet>) -> KeySet {
        KeySet::from_ranges(sets.into_iter().flat_map(|s| s.0).collect())
    }

    /// Keys in both sets.
    pub fn intersect(&self, other: &KeySet) -> KeySet {
        let (a, b) = (&self.0, &other.0);
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < a.len() && j < b.len() {
            let lo = if cmp_lo(&a[i].0, &b[j].0) == Ordering::Greater { &a[i].0 } else { &b[j].0 };
            let hi = if cmp_hi(&a[i].1, &b[j].1) == Ordering::Less { &a[i].1 } else { &b[j].1 };
            out.push((lo.clone(), hi.clone()));
            if cmp_hi(&a[i].1, &b[j].1) == Ordering::Less {
                i += 1;
            } else {
                j += 1;
            }
        }
        KeySet::from_ranges(out)
    }

    /// Keys not in the set.
    pub fn complement(&self) -> KeySet {
        let mut out = Vec::new();
        let mut lo: Bound<Key> = Unbounded;
        for (r_lo, r_hi) in &self.0 {
            if !matches!(r_lo, Unbounded) {
                out.push((lo.clone(), flip(r_lo)));
            }
            if matches!(r_hi, Unbounded) {
                return KeySet::from_ranges(out);
            }
            lo = flip(r_hi);
        }
        out.push((lo, Unbounded));
        KeySet::from_ranges(out)
    }

    /// True when `k` is in the set.
    pub fn contains(&self, k: &Key) -> bool {
        let b = Included(k.clone());
        self.0.iter().any(|(lo, hi)| cmp_lo(lo, &b) != Ordering::Greater && cmp_hi(hi, &b) != Ordering::Less)
    }

    /// The entries of an `_id` index in the set, in key order (descending when `desc`).
    pub fn walk<'a, V>(
        &'a self,
        index: &'a BTreeMap<Key, V>,
        desc: bool,
    ) -> Box<dyn Iterator<Item = (&'a Key, &'a V)> + 'a> {
        let one = move |(lo, hi): &'a Range| index.range::<Key, _>((lo.as_ref(), hi.as_ref()));
        if desc {
            Box::new(self.0.iter().rev().flat_map(move |r| one(r).rev()))
        } else {
            Box::new(self.0.iter().flat_map(one))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(v: impl Into<Bson>) -> Key {
        Key(v.into())
    }

    #[test]
    fn set_algebra() {
        let a = KeySet::range(Included(k(1)), Excluded(k(5)));
        let b = KeySet::range(Included(k(5)), Included(k(9)));
        let ab = a.union(&b);
        assert_eq!(ab, KeySet::range(Included(k(1)), Included(k(9))));
        assert!(a.intersect(&b).is_empty());
        let gap = KeySet::range(Excluded(k(5)), Included(k(9)));
        assert_eq!(a.union(&gap).ranges().len(), 2, "5 itself is left out");
        let c = ab.complement();
        assert_eq!(c.ranges(), &[(Unbounded, Excluded(k(1))), (Excluded(k(9)), Unbounded)]);
        assert_eq!(c.complement(), ab);
        assert!(KeySet::all().complement().is_empty());
        assert!(KeySet::empty().complement().is_all());
        assert!(KeySet::range(Excluded(k(3)), Excluded(k(3))).is_empty());
        assert!(KeySet::range(Included(k(4)), Included(k(3))).is_empty());
        // numbers compare across types
        assert!(KeySet::point(&Bson::Int64(3)).contains(&k(3.0)));
        let numbers = KeySet::bracket(10);
        assert!(numbers.contains(&k(f64::NAN)) && numbers.contains(&k(i64::MAX)) && !numbers.contains(&k("")));
        let parts = [KeySet::point(&Bson::Int32(7)), KeySet::point(&Bson::Int32(2)), KeySet::point(&Bson::Int32(7))];
        let pts = parts.iter().fold(KeySet::empty(), |acc, p| acc.union(p));
        assert_eq!(pts.ranges().len(), 2);
        assert_eq!(pts.intersect(&KeySet::range(Excluded(k(2)), Unbounded)), KeySet::point(&Bson::Int32(7)));
    }

    #[test]
    fn walks_the_index_in_both_directions() {
        let index: BTreeMap<Key, u64> = (0..20).map(|i| (k(i), i as u64)).collect();
        let set = KeySet::range(Included(k(3)), Excluded(k(6))).union(&KeySet::point(&Bson::Double(10.0)));
        let up: Vec<u64> = set.walk(&index, false).map(|(_, v)| *v).collect();
        assert_eq!(up, vec![3, 4, 5, 10]);
        let down: Vec<u64> = set.walk(&index, true).map(|(_, v)| *v).collect();
        assert_eq!(down, vec![10, 5, 4, 3]);
    }
}
