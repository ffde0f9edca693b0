//! Profile ids: deterministic, not personal data, and stable across runs.
//!
//! A fresh id is 12 characters: the first 60 bits of SHA-256 over a fixed
//! prefix, the class and the component's representative identity (its
//! earliest-seen identity; ties: rank, i.e. namespace priority, namespace
//! name, value), written in lower-case Crockford base32 (`0-9a-z` without
//! `i l o u`). Twelve bytes fit inside an Arrow string view, so grouping and
//! joining on `profile_id` compare ids as integers; the alphabet is in ASCII
//! order, so ids sort as their numbers do. With the previous run's identity
//! map ([`Previous`]):
//!
//! * every previous id goes to the component holding most of the identities
//!   that carried it (ties: the component whose best-ranked identity ranks
//!   first), so when a profile splits, the larger part keeps the id;
//! * a component given several previous ids (a merge) keeps the one carried by
//!   most of its identities (ties: the smallest id); the others retire;
//! * a component with no previous id gets a fresh one; a fresh id is never an
//!   id of the previous map nor another component's id in this run (on a clash
//!   the hash is salted with `#1`, `#2`, ... in component order).
//!
//! So a component that only grows keeps its id, and the same input with the
//! same previous map gives byte-identical ids. Previous ids are carried as
//! text, whatever their form (the 32-hex-character ids of earlier versions
//! included).

use datafusion::arrow::array::{Array, StringArray, StringBuilder};
use sha2::{Digest, Sha256};

use super::graph::IdentityGraph;
use crate::config::Class;

/// The previous run's ids.
#[derive(Debug, Default)]
pub struct Previous {
    /// Index into `ids` of each identity of this run (`u32::MAX`: not in the previous map).
    pub by_identity: Vec<u32>,
    /// Every id of the previous map, so that a fresh id never reuses one.
    pub ids: IdSet,
}

/// Distinct strings, each numbered in order of arrival, in one buffer.
#[derive(Debug, Default)]
pub struct IdSet {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    table: hashbrown::HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl IdSet {
    /// The number of `s`, added if new.
    pub fn intern(&mut self, s: &str) -> u32 {
        let h = std::hash::BuildHasher::hash_one(&self.hasher, s.as_bytes());
        let Self {
            bytes,
            ends,
            table,
            hasher,
        } = self;
        let text = |k: u32| -> &[u8] { slice(bytes, ends, k) };
        if let Some(&k) = table.find(h, |&k| text(k) == s.as_bytes()) {
            return k;
        }
        let k = ends.len() as u32;
        bytes.extend_from_slice(s.as_bytes());
        ends.push(bytes.len());
        table.insert_unique(h, k, |&j| {
            std::hash::BuildHasher::hash_one(&*hasher, slice(bytes, ends, j))
        });
        k
    }

    /// Whether `s` is in the set.
    pub fn contains(&self, s: &str) -> bool {
        let h = std::hash::BuildHasher::hash_one(&self.hasher, s.as_bytes());
        self.table
            .find(h, |&k| slice(&self.bytes, &self.ends, k) == s.as_bytes())
            .is_some()
    }

    /// The string numbered `k`.
    pub fn get(&self, k: u32) -> &str {
        // Only whole `&str`s are appended, so every slice is UTF-8.
        std::str::from_utf8(slice(&self.bytes, &self.ends, k)).unwrap_or_default()
    }

    /// The number of strings.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

fn slice<'a>(bytes: &'a [u8], ends: &[usize], k: u32) -> &'a [u8] {
    let k = k as usize;
    let start = if k == 0 { 0 } else { ends[k - 1] };
    &bytes[start..ends[k]]
}

/// Lower-case Crockford base32, in ASCII order.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// The length of a fresh profile id.
pub const ID_LEN: usize = 12;

/// A fresh profile id, and its 60-bit number.
pub fn fresh_id(class: Class, namespace: &str, value: &str, salt: u32) -> (String, u64) {
    let n = fresh_number(class, namespace, value, salt);
    (String::from_utf8_lossy(&id_text(n)).into_owned(), n)
}

/// The number of a fresh profile id: the first 60 bits of the hash.
fn fresh_number(class: Class, namespace: &str, value: &str, salt: u32) -> u64 {
    let mut h = Sha256::new();
    h.update(b"audience-profile-v2\x1f");
    h.update(class.as_str().as_bytes());
    h.update([0x1f]);
    h.update(namespace.as_bytes());
    h.update([0x1f]);
    h.update(value.as_bytes());
    if salt > 0 {
        h.update(format!("#{salt}").as_bytes());
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) >> 4
}

/// The text of a fresh id: its number's 12 base32 digits, most significant first.
fn id_text(n: u64) -> [u8; ID_LEN] {
    std::array::from_fn(|k| ALPHABET[((n >> (5 * (ID_LEN - 1 - k))) & 31) as usize])
}

/// Profiles: components numbered in order of their best-ranked identity.
#[derive(Debug)]
pub struct Profiles {
    /// Profile number of every identity.
    pub of: Vec<u32>,
    /// Profile id by profile number.
    pub ids: ProfileIds,
}

/// Profile ids by profile number, kept in one string column: 16 bytes a
/// profile (a 12-character id and an offset) where a `String` each took
/// about 56; they are kept for the whole run (17M profiles at 10M people).
#[derive(Debug, Clone)]
pub struct ProfileIds(StringArray);

impl ProfileIds {
    /// The id of profile `p`.
    ///
    /// # Panics
    /// When there is no profile `p`.
    pub fn get(&self, p: u32) -> &str {
        self.0.value(p as usize)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ids in profile order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.0.len()).map(|p| self.0.value(p))
    }
}

impl Default for ProfileIds {
    fn default() -> Self {
        ProfileIds(StringArray::from(Vec::<&str>::new()))
    }
}

impl<S: AsRef<str>> FromIterator<S> for ProfileIds {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        ProfileIds(StringArray::from_iter_values(iter))
    }
}

/// Assign a profile id to every component.
///
/// `roots[i]` is identity `i`'s component root (ids are ranks, so id order
/// is rank order).
pub fn assign(
    graph: &IdentityGraph,
    ns_names: &[&str],
    roots: &[u32],
    previous: Option<&Previous>,
) -> Profiles {
    let (of, np) = number_components(roots);
    // Representative: the earliest-seen identity (ties: the smallest id),
    // read partition by partition rather than id by id.
    let mut rep: Vec<(i64, u32)> = vec![(i64::MAX, NONE); np];
    for (i, seen) in graph.first_seen_all() {
        let r = &mut rep[of[i as usize] as usize];
        if (seen, i) < *r {
            *r = (seen, i);
        }
    }
    let rep: Vec<u32> = rep.into_iter().map(|(_, i)| i).collect();
    debug_assert!(rep.iter().all(|&i| i != NONE), "first-seen times kept");
    // The previous id each profile keeps (an index into `previous.ids`).
    let carried = match previous {
        Some(prev) => carry(prev, &of, np),
        None => vec![NONE; np],
    };
    let fresh = |p: usize, salt: u32| {
        let (class, ns, value) = graph.identity(rep[p]);
        fresh_number(class, ns_names[ns as usize], value, salt)
    };
    // Fresh numbers hashed on all cores (`u64::MAX`: the profile keeps a
    // previous id), then checked for clashes in profile order.
    let mut number = vec![u64::MAX; np];
    {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let per = np.div_ceil(threads).max(1 << 14);
        std::thread::scope(|s| {
            for (c, (numbers, kept)) in number.chunks_mut(per).zip(carried.chunks(per)).enumerate()
            {
                let rep = &rep;
                s.spawn(move || {
                    // Representatives are in no order: looked up a batch at
                    // a time, each asked for ahead.
                    let first = c * per;
                    for start in (0..numbers.len()).step_by(BATCH) {
                        let end = numbers.len().min(start + BATCH);
                        let todo: Vec<usize> = (start..end).filter(|&k| kept[k] == NONE).collect();
                        let reps: Vec<u32> = todo.iter().map(|&k| rep[first + k]).collect();
                        for (&k, (class, ns, value)) in todo.iter().zip(graph.identities(&reps)) {
                            numbers[k] = fresh_number(class, ns_names[ns as usize], value, 0);
                        }
                    }
                });
            }
        });
    }
    let old_ids: Option<&IdSet> = previous.map(|p| &p.ids);
    let taken = |n: u64| {
        old_ids
            .is_some_and(|old| old.contains(std::str::from_utf8(&id_text(n)).unwrap_or_default()))
    };
    if previous.is_some() || has_duplicates(&number) {
        let fresh_count = carried.iter().filter(|&&k| k == NONE).count();
        let mut used: hashbrown::HashSet<u64> = hashbrown::HashSet::with_capacity(fresh_count);
        for (p, n) in number.iter_mut().enumerate() {
            if *n == u64::MAX {
                continue;
            }
            let mut salt = 0;
            while taken(*n) || !used.insert(*n) {
                salt += 1;
                *n = fresh(p, salt);
            }
        }
    }
    let mut text = StringBuilder::with_capacity(np, np * ID_LEN);
    for (&n, &kept) in number.iter().zip(&carried) {
        match old_ids {
            Some(old) if kept != NONE => text.append_value(old.get(kept)),
            _ => text.append_value(std::str::from_utf8(&id_text(n)).unwrap_or_default()),
        }
    }
    Profiles {
        of,
        ids: ProfileIds(text.finish()),
    }
}

/// Whether two fresh numbers (`u64::MAX`: none) are equal. Rare with 60
/// bits, so without previous ids to avoid, sorted copies (the two halves of
/// the number range side by side) rule clashes out faster than a set built
/// one random insert at a time.
fn has_duplicates(numbers: &[u64]) -> bool {
    let half = 1u64 << 59;
    let (mut low, mut high): (Vec<u64>, Vec<u64>) = numbers
        .iter()
        .copied()
        .filter(|&n| n != u64::MAX)
        .partition(|&n| n < half);
    let dup = |v: &mut Vec<u64>| {
        v.sort_unstable();
        v.windows(2).any(|w| w[0] == w[1])
    };
    std::thread::scope(|s| {
        let other = s.spawn(|| dup(&mut high));
        let here = dup(&mut low);
        other.join().unwrap_or(true) || here
    })
}

/// Not a profile, identity or previous id.
const NONE: u32 = u32::MAX;
/// Profiles whose representatives are looked up at once for fresh ids:
/// their values stay in cache until they are hashed.
const BATCH: usize = 4096;

/// The profile number of every identity, components numbered in order of
/// their smallest id, and the number of profiles. When every root is its
/// component's smallest id (plain stitching, on one machine or a cluster) a
/// root comes before its members and one pass suffices; otherwise (the
/// constrained stitch's roots are any member) roots are numbered apart.
fn number_components(roots: &[u32]) -> (Vec<u32>, usize) {
    let mut of: Vec<u32> = Vec::with_capacity(roots.len());
    let mut np = 0u32;
    for (i, &r) in roots.iter().enumerate() {
        match (r as usize).cmp(&i) {
            std::cmp::Ordering::Equal => {
                of.push(np);
                np += 1;
            }
            std::cmp::Ordering::Less => of.push(of[r as usize]),
            std::cmp::Ordering::Greater => {
                of.clear();
                let mut number = vec![NONE; roots.len()];
                np = 0;
                for &r in roots {
                    let k = &mut number[r as usize];
                    if *k == NONE {
                        *k = np;
                        np += 1;
                    }
                    of.push(*k);
                }
                break;
            }
        }
    }
    (of, np as usize)
}

/// The previous id each profile keeps, by profile (`NONE`: a fresh one).
///
/// Each previous id goes to the profile holding most of the identities that
/// carried it (ties: the earlier profile); a profile given several keeps the
/// one carried by most of its identities (ties: the smallest id text).
fn carry(prev: &Previous, of: &[u32], np: usize) -> Vec<u32> {
    // (previous id, profile) of every identity that carried one, sorted:
    // each run is one pair, its length the identities behind it.
    let mut pairs: Vec<u64> = prev
        .by_identity
        .iter()
        .zip(of)
        .filter(|(old, _)| **old != NONE)
        .map(|(&old, &p)| (u64::from(old) << 32) | u64::from(p))
        .collect();
    pairs.sort_unstable();
    let mut kept: Vec<(u64, u32)> = vec![(0, NONE); np];
    let mut i = 0;
    while i < pairs.len() {
        let old = (pairs[i] >> 32) as u32;
        // This previous id's profiles in ascending order: the first with the most wins.
        let mut best = (0u64, 0u32);
        while i < pairs.len() && (pairs[i] >> 32) as u32 == old {
            let pair = pairs[i];
            let mut k = 0u64;
            while i < pairs.len() && pairs[i] == pair {
                k += 1;
                i += 1;
            }
            if k > best.0 {
                best = (k, pair as u32);
            }
        }
        let (k, p) = best;
        let e = &mut kept[p as usize];
        if k > e.0 || (k == e.0 && prev.ids.get(old) < prev.ids.get(e.1)) {
            *e = (k, old);
        }
    }
    kept.into_iter().map(|(_, old)| old).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::graph::GraphBuilder;

    #[test]
    fn identity_fresh_ids_are_12_base32_digits_sorting_as_numbers() {
        let mut seen = Vec::new();
        for v in 0..2000 {
            let (id, n) = fresh_id(Class::Customer, "email", &format!("u{v}@x.io"), 0);
            assert_eq!(id.len(), ID_LEN);
            assert!(id.bytes().all(|c| ALPHABET.contains(&c)), "{id}");
            assert!(n < 1 << 60);
            // The digits are the number's, most significant first.
            let back = id.bytes().fold(0u64, |acc, c| {
                acc * 32 + ALPHABET.iter().position(|&a| a == c).unwrap_or(99) as u64
            });
            assert_eq!(back, n, "{id}");
            seen.push((id, n));
        }
        let mut by_text = seen.clone();
        by_text.sort();
        let mut by_number = seen;
        by_number.sort_by_key(|p| p.1);
        assert_eq!(by_text, by_number, "text order is number order");
        assert_ne!(
            fresh_id(Class::Customer, "email", "a", 0),
            fresh_id(Class::Prospect, "email", "a", 0)
        );
        assert_ne!(
            fresh_id(Class::Customer, "email", "a", 0),
            fresh_id(Class::Customer, "email", "a", 1)
        );
    }

    #[test]
    fn identity_fresh_number_clashes_are_found_in_either_half() {
        let high = (1u64 << 59) + 5;
        assert!(!has_duplicates(&[]));
        assert!(
            !has_duplicates(&[1, u64::MAX, u64::MAX, 2, high]),
            "none is not a number"
        );
        assert!(has_duplicates(&[3, 7, 3]));
        assert!(has_duplicates(&[high, 3, u64::MAX, high]));
    }

    #[test]
    fn identity_id_set_numbers_distinct_strings() {
        let mut s = IdSet::default();
        assert!(s.is_empty());
        let words = ["b", "", "0123456789abcdef0123456789abcdef", "a", "b", "ab"];
        let ks: Vec<u32> = words.iter().map(|w| s.intern(w)).collect();
        assert_eq!(ks, vec![0, 1, 2, 3, 0, 4]);
        assert_eq!(s.len(), 5);
        for (w, k) in words.iter().zip(&ks) {
            assert_eq!(s.get(*k), *w);
            assert!(s.contains(w));
        }
        assert!(!s.contains("ba"));
        for i in 0..10_000 {
            s.intern(&format!("x{i}"));
        }
        assert_eq!(s.get(3), "a", "numbers survive the table growing");
        assert_eq!(s.intern("x9999"), 10_004);
    }

    #[test]
    fn identity_fresh_id_never_reuses_a_previous_id() {
        let mut b = GraphBuilder::new(1, 1);
        b.add_row(Class::Customer, 0, 0, [(0, "a")]).expect("row");
        b.add_row(Class::Customer, 0, 0, [(0, "b")]).expect("row");
        let g = b.finish().expect("graph");
        let roots: Vec<u32> = (0..g.len() as u32).collect();
        let plain = assign(&g, &["email"], &roots, None);
        let (a0, _) = fresh_id(Class::Customer, "email", "a", 0);
        assert_eq!(plain.ids.get(0), a0);
        // A previous map that holds `a`'s fresh id for an identity not in this
        // run, and a legacy 32-hex id for `b`: `a` is salted, `b` keeps its id.
        let mut prev = Previous {
            by_identity: vec![u32::MAX; g.len()],
            ..Default::default()
        };
        prev.ids.intern(&a0);
        let legacy = "0123456789abcdef0123456789abcdef";
        prev.by_identity[1] = prev.ids.intern(legacy);
        let carried = assign(&g, &["email"], &roots, Some(&prev));
        assert_eq!(
            carried.ids.get(0),
            fresh_id(Class::Customer, "email", "a", 1).0
        );
        assert_eq!(carried.ids.get(1), legacy);
    }

    /// The numbering and carrying rules as first written: a number per root
    /// on first sight; counts of (previous id, profile) in a map.
    fn reference(roots: &[u32], prev: &Previous) -> (Vec<u32>, Vec<u32>) {
        use std::collections::{BTreeMap, HashMap};
        let mut number: HashMap<u32, u32> = HashMap::new();
        let of: Vec<u32> = roots
            .iter()
            .map(|r| {
                let k = number.len() as u32;
                *number.entry(*r).or_insert(k)
            })
            .collect();
        let mut counts: HashMap<(u32, u32), u64> = HashMap::new();
        for (id, &old) in prev.by_identity.iter().enumerate() {
            if old != NONE {
                *counts.entry((old, of[id])).or_default() += 1;
            }
        }
        let mut best: BTreeMap<u32, (u64, u32)> = BTreeMap::new();
        for (&(old, p), &k) in &counts {
            let e = best.entry(old).or_insert((k, p));
            if k > e.0 || (k == e.0 && p < e.1) {
                *e = (k, p);
            }
        }
        let mut survivor: BTreeMap<u32, (u64, &str)> = BTreeMap::new();
        for (&old, &(k, p)) in &best {
            let id = prev.ids.get(old);
            let e = survivor.entry(p).or_insert((k, id));
            if k > e.0 || (k == e.0 && id < e.1) {
                *e = (k, id);
            }
        }
        let mut kept = vec![NONE; number.len()];
        for (p, (_, id)) in survivor {
            kept[p as usize] = (0..prev.ids.len() as u32)
                .find(|&k| prev.ids.get(k) == id)
                .unwrap_or(NONE);
        }
        (of, kept)
    }

    proptest::proptest! {
        /// Profile numbers and carried ids match the reference, for roots
        /// that are each component's smallest id (plain) or any member
        /// (constrained), with ties in counts on both sides.
        #[test]
        fn identity_numbering_and_carrying_match_the_reference(
            parent in proptest::collection::vec(0usize..1000, 1..300),
            smallest in proptest::bool::ANY,
            olds in proptest::collection::vec(proptest::option::of(0u32..12), 300),
            texts in proptest::collection::vec("[a-c]{1,3}", 12),
        ) {
            // A forest: each identity hangs under an earlier one (or itself).
            let n = parent.len();
            let mut roots: Vec<u32> = Vec::with_capacity(n);
            for (i, &p) in parent.iter().enumerate() {
                let r = if p % 3 == 0 || i == 0 { i as u32 } else { roots[p % i] };
                roots.push(r);
            }
            if !smallest {
                // Each component's root becomes its largest member.
                let mut largest = std::collections::HashMap::new();
                for (i, &r) in roots.iter().enumerate() {
                    largest.insert(r, i as u32);
                }
                for r in &mut roots {
                    *r = largest[r];
                }
            }
            let mut prev = Previous { by_identity: vec![NONE; n], ..Default::default() };
            let ks: Vec<u32> = texts.iter().map(|t| prev.ids.intern(t)).collect();
            for (slot, old) in prev.by_identity.iter_mut().zip(&olds) {
                if let Some(o) = old {
                    *slot = ks[*o as usize];
                }
            }
            let (of, np) = number_components(&roots);
            let (want_of, want_kept) = reference(&roots, &prev);
            proptest::prop_assert_eq!(&of, &want_of);
            proptest::prop_assert_eq!(np, want_kept.len());
            proptest::prop_assert_eq!(carry(&prev, &of, np), want_kept);
        }
    }
}
