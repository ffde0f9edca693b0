//! The identity graph: interned identities, deduplicated links, hub
//! quarantine, and connected components with or without constraints.
//!
//! Identities are interned per `(class, namespace, value)` by a
//! [`GraphBuilder`] (radix-partitioned hash tables over string arenas, no
//! allocation per value), then numbered densely in rank order, so an id *is* a
//! rank and the graph is the same whatever the hashing or thread timing.
//! Classes never share an id, so a prospect never joins a customer. A link is a distinct
//! `(anchor, other)` pair with the newest time and dataset that produced it.
//!
//! Stitching ([`IdentityGraph::stitch`]):
//! 1. **Quarantine**: an identity with more distinct direct links than its
//!    namespace's `max_links` (and not allow-listed), or a never-link value,
//!    keeps none of its links.
//! 2. **Plain** (no unique namespace, no never-link pair): union-find over the
//!    remaining links: profiles are exactly the connected components.
//! 3. **Constrained**: links are applied newest first; ties by the linked
//!    (non-anchor) identity's rank, then the anchor's rank, where rank orders
//!    identities by class, namespace priority, namespace name, value. A link
//!    that would join two components holding different values of a unique
//!    namespace, or the two sides of a never-link pair, is cut.

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use std::hash::BuildHasher;

use crate::config::Class;
use crate::error::{Error, Result};

/// What happened to a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkStatus {
    /// Joined (or confirmed) a profile.
    Used,
    /// Dropped because an endpoint is quarantined (hub or never-link value).
    Quarantined,
    /// Cut: it would have put two values of this unique namespace (index) in one profile.
    CutUnique(u16),
    /// Cut: it would have joined the two sides of a never-link pair.
    CutNeverLink,
}

/// Why an identity is quarantined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Quarantine {
    /// More distinct direct links than `max_links`.
    MaxLinks,
    /// Named by a never-link rule without a partner.
    NeverLink,
}

/// A distinct link and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub anchor: u32,
    pub other: u32,
    /// Newest record time that produced the link.
    pub ts: i64,
    /// Dataset index of that record (the smallest index among records of that time).
    pub dataset: u16,
    pub status: LinkStatus,
}

/// Per-namespace settings the graph needs, by namespace index.
#[derive(Debug, Clone, Default)]
pub struct NsRules {
    pub unique: bool,
    pub max_links: Option<u64>,
}

/// Radix partitions of the interner: bits 40..48 of a key's hash (the hash
/// table itself uses the low bits for the bucket and the top seven for tags).
const PART_BITS: u32 = 8;
const PARTS: usize = 1 << PART_BITS;
const LOCAL_BITS: u32 = 32 - PART_BITS;
/// Identity occurrences buffered before they are interned partition by partition.
const CHUNK: usize = 1 << 20;
/// Raw links buffered before the first sort-and-deduplicate.
const MIN_COMPACT: usize = 1 << 22;

fn part_of(hash: u64) -> usize {
    ((hash >> 40) as usize) & (PARTS - 1)
}

/// An identity occurrence waiting to be interned.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    hash: u64,
    ts: i64,
    start: u32,
    len: u32,
    ns: u16,
    dataset: u16,
    class: Class,
}

/// A link before deduplication: `key` is `(anchor << 32) | other`.
#[derive(Debug, Clone, Copy)]
struct RawLink {
    key: u64,
    ts: i64,
    dataset: u16,
}

/// One interned identity of a partition, packed so that a probe or a gather
/// touches one cache line besides the value bytes.
#[derive(Debug, Clone, Copy)]
struct Meta {
    first_seen: i64,
    last_seen: i64,
    /// `arena[start..start + len]` is the value.
    start: u32,
    len: u32,
    ns: u16,
    class: Class,
}

/// One radix partition of the interner: its own hash table and values, small
/// enough to stay in cache while a chunk's occurrences for it are interned.
#[derive(Debug, Default)]
struct Part {
    table: HashTable<u32>,
    hashes: Vec<u64>,
    arena: Vec<u8>,
    meta: Vec<Meta>,
    /// `words` bitset words per identity: the datasets it was seen in.
    datasets: Vec<u64>,
    /// After [`GraphBuilder::finish`]: local index → dense identity id.
    dense: Vec<u32>,
}

impl Part {
    /// Put this partition's identities in rank order (class, namespace,
    /// value), sorting in cache: values, attributes and dataset sets are
    /// rewritten in that order. The table still maps to the old local indexes
    /// (see [`Run::order`]).
    fn sort_by_rank(&mut self, words: usize) -> Run {
        let n = self.meta.len();
        let mut keyed: Vec<(u128, u32)> = (0..n)
            .map(|l| (rank_key(&head(&self.meta[l]), self.value(l)), l as u32))
            .collect();
        keyed.sort_unstable_by_key(|e| e.0);
        refine_ties(&mut keyed, 12, 12, &|l| self.value(l as usize));
        let mut run = Run {
            keys: Vec::with_capacity(n),
            order: Vec::with_capacity(n),
        };
        let mut arena = Vec::with_capacity(self.arena.len());
        let mut meta = Vec::with_capacity(n);
        let mut datasets = Vec::with_capacity(self.datasets.len());
        for &(_, old) in &keyed {
            let (m, v) = (self.meta[old as usize], self.value(old as usize));
            run.keys.push(rank_key(&head(&m), v));
            run.order.push(old);
            meta.push(Meta {
                start: arena.len() as u32,
                ..m
            });
            arena.extend_from_slice(v);
            let o = old as usize * words;
            datasets.extend_from_slice(&self.datasets[o..o + words]);
        }
        (self.arena, self.meta, self.datasets) = (arena, meta, datasets);
        run
    }

    fn value(&self, local: usize) -> &[u8] {
        let m = &self.meta[local];
        &self.arena[m.start as usize..(m.start + m.len) as usize]
    }

    /// Intern one occurrence; returns the local index.
    ///
    /// # Errors
    /// When the partition's values outgrow 4 GiB.
    fn intern(&mut self, e: &Entry, value: &[u8], words: usize) -> std::result::Result<u32, ()> {
        let found = {
            let (arena, meta) = (&self.arena, &self.meta);
            self.table
                .find(e.hash, |&l| {
                    let m = &meta[l as usize];
                    m.class == e.class
                        && m.ns == e.ns
                        && &arena[m.start as usize..(m.start + m.len) as usize] == value
                })
                .copied()
        };
        let local = match found {
            Some(l) => {
                let m = &mut self.meta[l as usize];
                m.first_seen = m.first_seen.min(e.ts);
                m.last_seen = m.last_seen.max(e.ts);
                l
            }
            None => {
                let l = self.meta.len() as u32;
                let start = u32::try_from(self.arena.len()).map_err(|_| ())?;
                self.arena.extend_from_slice(value);
                self.meta.push(Meta {
                    first_seen: e.ts,
                    last_seen: e.ts,
                    start,
                    len: value.len() as u32,
                    ns: e.ns,
                    class: e.class,
                });
                self.datasets.extend(std::iter::repeat_n(0, words));
                self.hashes.push(e.hash);
                let hashes = &self.hashes;
                self.table.insert_unique(e.hash, l, |&o| hashes[o as usize]);
                l
            }
        };
        let d = e.dataset as usize;
        self.datasets[local as usize * words + d / 64] |= 1 << (d % 64);
        Ok(local)
    }
}

/// Identities gathered from the partitions in rank order.
#[derive(Debug, Default)]
struct Gathered {
    arena: Vec<u8>,
    /// End of each value in `arena`.
    ends: Vec<usize>,
    class: Vec<Class>,
    ns: Vec<u16>,
    first_seen: Vec<i64>,
    last_seen: Vec<i64>,
    datasets: Vec<u64>,
}

/// A partition's identities in rank order (see [`Part::sort_by_rank`]).
#[derive(Debug, Default)]
struct Run {
    /// Top-level rank key of each identity, in rank order.
    keys: Vec<u128>,
    /// `order[new] = old`: the local index each identity had while interning.
    order: Vec<u32>,
}

fn head(m: &Meta) -> [u8; 3] {
    let mut h = [0u8; 3];
    h[0] = m.class as u8;
    h[1..].copy_from_slice(&m.ns.to_be_bytes());
    h
}

/// Where the merge stands in one run: its next identity's rank key, the
/// value's next 16 bytes after the key's (zero-padded, big-endian) and the value.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    key: u128,
    key2: u128,
    value: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Cursor<'a> {
    fn at(part: &'a Part, keys: &[u128], pos: usize, end: usize) -> Self {
        if pos >= end {
            return Cursor {
                key: 0,
                key2: 0,
                value: &[],
                pos,
                end,
            };
        }
        let value = part.value(pos);
        let mut k2 = [0u8; 16];
        let rest = value.get(12..).unwrap_or_default();
        let take = rest.len().min(16);
        k2[..take].copy_from_slice(&rest[..take]);
        Cursor {
            key: keys[pos],
            key2: u128::from_be_bytes(k2),
            value,
            pos,
            end,
        }
    }

    /// Rank order; a finished run comes after everything. Equal keys share
    /// class, namespace and the first 12 bytes: then the next bytes decide.
    fn before(&self, other: &Self) -> bool {
        if self.pos >= self.end {
            return false;
        }
        if other.pos >= other.end {
            return true;
        }
        (self.key, self.key2, self.value) < (other.key, other.key2, other.value)
    }
}

/// Merge the rank-ordered runs of every partition, `ranges[p]` of partition
/// `p`, numbering identities from `base` into `ranks[p]` (which covers
/// `ranges[p]`) and gathering their attributes in that order. A tournament
/// tree picks the next identity in one comparison a level; each partition is
/// read front to back, so the merge streams through memory.
fn merge_runs(
    parts: &[Part],
    runs: &[&[u128]],
    ranges: &[(usize, usize)],
    mut ranks: Vec<&mut [u32]>,
    base: u32,
    words: usize,
) -> Gathered {
    let n: usize = ranges.iter().map(|(a, b)| b - a).sum();
    let bytes: usize = ranges
        .iter()
        .zip(parts)
        .map(|(&(a, b), p)| {
            let end = |i: usize| p.meta.get(i).map_or(p.arena.len(), |m| m.start as usize);
            end(b) - end(a)
        })
        .sum();
    let mut g = Gathered {
        arena: Vec::with_capacity(bytes),
        ends: Vec::with_capacity(n),
        class: Vec::with_capacity(n),
        ns: Vec::with_capacity(n),
        first_seen: Vec::with_capacity(n),
        last_seen: Vec::with_capacity(n),
        datasets: Vec::with_capacity(n * words),
    };
    let k = ranges.len().next_power_of_two();
    let mut cur: Vec<Cursor> = (0..k)
        .map(|p| match ranges.get(p) {
            Some(&(a, b)) => Cursor::at(&parts[p], runs[p], a, b),
            None => Cursor::at(&parts[0], &[], 0, 0),
        })
        .collect();
    // tree[node] holds the loser of the match at that node; leaves are k + run.
    let mut tree = vec![0usize; k];
    let mut winner_of = vec![0usize; 2 * k];
    for (p, w) in winner_of[k..].iter_mut().enumerate() {
        *w = p;
    }
    for node in (1..k).rev() {
        let (l, r) = (winner_of[2 * node], winner_of[2 * node + 1]);
        let (w, lose) = if cur[r].before(&cur[l]) {
            (r, l)
        } else {
            (l, r)
        };
        winner_of[node] = w;
        tree[node] = lose;
    }
    let mut winner = winner_of[1.min(2 * k - 1)];
    let mut rank = base;
    while cur[winner].pos < cur[winner].end {
        let (p, pos) = (winner, cur[winner].pos);
        let part = &parts[p];
        let m = &part.meta[pos];
        g.arena.extend_from_slice(cur[p].value);
        g.ends.push(g.arena.len());
        g.class.push(m.class);
        g.ns.push(m.ns);
        g.first_seen.push(m.first_seen);
        g.last_seen.push(m.last_seen);
        g.datasets
            .extend_from_slice(&part.datasets[pos * words..(pos + 1) * words]);
        ranks[p][pos - ranges[p].0] = rank;
        rank += 1;
        cur[p] = Cursor::at(part, runs[p], pos + 1, ranges[p].1);
        let mut node = (p + k) / 2;
        let mut cand = p;
        while node >= 1 {
            let other = tree[node];
            if cur[other].before(&cur[cand]) {
                tree[node] = cand;
                cand = other;
            }
            node /= 2;
        }
        winner = cand;
    }
    g
}

/// `f` on every partition, the partitions split into `threads` contiguous ranges.
fn par_parts<T: Send>(
    parts: &mut [Part],
    threads: usize,
    f: &(impl Fn(usize, &mut Part) -> T + Sync),
) -> Vec<T> {
    let per = parts.len().div_ceil(threads.max(1)).max(1);
    if threads < 2 {
        return parts
            .iter_mut()
            .enumerate()
            .map(|(p, part)| f(p, part))
            .collect();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .chunks_mut(per)
            .enumerate()
            .map(|(c, chunk)| {
                s.spawn(move || {
                    chunk
                        .iter_mut()
                        .enumerate()
                        .map(|(k, part)| f(c * per + k, part))
                        .collect::<Vec<T>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Builds an [`IdentityGraph`] from rows of identities.
///
/// Occurrences are buffered, hashed, and interned a chunk at a time, radix
/// partition by partition (each partition's table and values stay in cache),
/// on several threads when the chunk is large. Ids are then renumbered in rank
/// order (class, namespace index, value) by [`GraphBuilder::finish`], so the
/// graph does not depend on hashing or on thread timing.
#[derive(Debug)]
pub struct GraphBuilder {
    hasher: DefaultHashBuilder,
    parts: Vec<Part>,
    words: usize,
    threads: usize,
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    /// Start of each buffered row's entries in `entries`.
    rows: Vec<u32>,
    links: Vec<RawLink>,
    compact_at: usize,
    /// Scratch of [`Self::flush`], kept between chunks: the occurrences and
    /// their bytes in partition order, and where each came from.
    sorted: Vec<Entry>,
    sorted_bytes: Vec<u8>,
    order: Vec<u32>,
}

impl GraphBuilder {
    /// A builder for identities from `datasets` datasets, interning on up to `threads` threads.
    pub fn new(datasets: usize, threads: usize) -> Self {
        GraphBuilder {
            hasher: DefaultHashBuilder::default(),
            parts: (0..PARTS).map(|_| Part::default()).collect(),
            words: datasets.div_ceil(64).max(1),
            threads: threads.max(1),
            bytes: Vec::new(),
            entries: Vec::new(),
            rows: Vec::new(),
            links: Vec::new(),
            compact_at: MIN_COMPACT,
            sorted: Vec::new(),
            sorted_bytes: Vec::new(),
            order: Vec::new(),
        }
    }

    /// Add a record's identities, anchor first: the anchor is linked to each
    /// of the others. `identities` must be distinct.
    ///
    /// # Errors
    /// [`Error::Input`] when the graph outgrows 32-bit identity ids.
    pub fn add_row<'a>(
        &mut self,
        class: Class,
        ts: i64,
        dataset: u16,
        identities: impl IntoIterator<Item = (u16, &'a str)>,
    ) -> Result<()> {
        let first = self.entries.len();
        for (ns, value) in identities {
            let v = value.as_bytes();
            let start = self.bytes.len();
            self.bytes.extend_from_slice(v);
            self.entries.push(Entry {
                hash: self.hasher.hash_one((class as u8, ns, v)),
                ts,
                start: start as u32,
                len: v.len() as u32,
                ns,
                dataset,
                class,
            });
        }
        if self.entries.len() > first {
            self.rows.push(first as u32);
        }
        if self.entries.len() >= CHUNK || self.bytes.len() >= (u32::MAX / 2) as usize {
            self.flush()?;
        }
        Ok(())
    }

    /// Intern the buffered occurrences and record their links.
    fn flush(&mut self) -> Result<()> {
        let n = self.entries.len();
        if n == 0 {
            return Ok(());
        }
        // Counting sort of the occurrences by partition, moving them (and
        // their value bytes) so that interning reads them front to back.
        let mut bounds = vec![0usize; PARTS + 1];
        let mut byte_at = vec![0usize; PARTS + 1];
        for e in &self.entries {
            bounds[part_of(e.hash) + 1] += 1;
            byte_at[part_of(e.hash) + 1] += e.len as usize;
        }
        for p in 0..PARTS {
            bounds[p + 1] += bounds[p];
            byte_at[p + 1] += byte_at[p];
        }
        let mut next = bounds.clone();
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        order.resize(n, 0);
        let mut sorted = std::mem::take(&mut self.sorted);
        sorted.clear();
        sorted.resize(n, Entry::default());
        let mut sorted_bytes = std::mem::take(&mut self.sorted_bytes);
        sorted_bytes.clear();
        sorted_bytes.resize(self.bytes.len(), 0);
        for (i, e) in self.entries.iter().enumerate() {
            let p = part_of(e.hash);
            let (pos, at) = (next[p], byte_at[p]);
            let (start, len) = (e.start as usize, e.len as usize);
            sorted_bytes[at..at + len].copy_from_slice(&self.bytes[start..start + len]);
            sorted[pos] = Entry {
                start: at as u32,
                ..*e
            };
            order[pos] = i as u32;
            next[p] += 1;
            byte_at[p] += len;
        }
        let mut local_ids = vec![0u32; n];
        let threads = if n >= 1 << 16 { self.threads } else { 1 };
        {
            let (entries, bytes, words) = (&sorted, &sorted_bytes, self.words);
            let work = |parts: &mut [Part], first: usize, ids: &mut [u32], base: usize| {
                for (k, part) in parts.iter_mut().enumerate() {
                    let p = first + k;
                    for pos in bounds[p]..bounds[p + 1] {
                        let e = &entries[pos];
                        let v = &bytes[e.start as usize..(e.start + e.len) as usize];
                        ids[pos - base] = part.intern(e, v, words).unwrap_or(u32::MAX);
                    }
                }
            };
            if threads == 1 {
                work(&mut self.parts, 0, &mut local_ids, 0);
            } else {
                // Contiguous partition ranges with about the same number of occurrences.
                let mut cuts = vec![0usize];
                for t in 1..threads {
                    let goal = n * t / threads;
                    let p = bounds.partition_point(|&b| b < goal).min(PARTS);
                    cuts.push(p.max(*cuts.last().unwrap_or(&0)));
                }
                cuts.push(PARTS);
                std::thread::scope(|s| {
                    let mut parts: &mut [Part] = &mut self.parts;
                    let mut ids: &mut [u32] = &mut local_ids;
                    for w in cuts.windows(2) {
                        let (lo, hi) = (w[0], w[1]);
                        let (mine, rest) = std::mem::take(&mut parts).split_at_mut(hi - lo);
                        parts = rest;
                        let (my_ids, rest_ids) =
                            std::mem::take(&mut ids).split_at_mut(bounds[hi] - bounds[lo]);
                        ids = rest_ids;
                        let (work, base) = (&work, bounds[lo]);
                        s.spawn(move || work(mine, lo, my_ids, base));
                    }
                });
            }
        }
        // Encoded ids (partition in the top bits), back in occurrence order.
        let mut ids = vec![0u32; n];
        for p in 0..PARTS {
            for pos in bounds[p]..bounds[p + 1] {
                let local = local_ids[pos];
                if local >> LOCAL_BITS != 0 {
                    return Err(Error::input(
                        "(identity graph)",
                        None,
                        None,
                        "more distinct identities or identity bytes than one graph holds (2^32 ids, 1 TiB of values): split the project",
                    ));
                }
                ids[order[pos] as usize] = ((p as u32) << LOCAL_BITS) | local;
            }
        }
        (self.order, self.sorted, self.sorted_bytes) = (order, sorted, sorted_bytes);
        self.rows.push(n as u32);
        for w in self.rows.windows(2) {
            let (a, b) = (w[0] as usize, w[1] as usize);
            let anchor = u64::from(ids[a]) << 32;
            for (id, e) in ids[a + 1..b].iter().zip(&self.entries[a + 1..b]) {
                self.links.push(RawLink {
                    key: anchor | u64::from(*id),
                    ts: e.ts,
                    dataset: e.dataset,
                });
            }
        }
        self.entries.clear();
        self.bytes.clear();
        self.rows.clear();
        if self.links.len() >= self.compact_at {
            dedup_links(&mut self.links);
            self.compact_at = (2 * self.links.len()).max(MIN_COMPACT);
        }
        Ok(())
    }

    /// Intern what is buffered, number identities in rank order and
    /// deduplicate the links.
    ///
    /// # Errors
    /// [`Error::Input`] when the graph outgrows 32-bit identity ids.
    pub fn finish(mut self) -> Result<IdentityGraph> {
        self.flush()?;
        (self.sorted, self.sorted_bytes, self.order) = (Vec::new(), Vec::new(), Vec::new());
        (self.entries, self.bytes) = (Vec::new(), Vec::new());
        let (words, threads) = (self.words, self.threads);
        let mut parts = self.parts;
        let n: usize = parts.iter().map(|p| p.meta.len()).sum();
        let threads = if n >= 1 << 16 { threads } else { 1 };
        // Each partition sorted in cache, then the sorted runs merged.
        let runs = par_parts(&mut parts, threads, &|_, p| p.sort_by_rank(words));
        // Dense id of each identity, by partition, in rank order (filled by the merge).
        let mut ranks: Vec<Vec<u32>> = runs.iter().map(|r| vec![0; r.keys.len()]).collect();
        let halves = {
            let keys: Vec<&[u128]> = runs.iter().map(|r| r.keys.as_slice()).collect();
            // The middle of the largest run splits every run in two (hash
            // partitions are samples of the same distribution).
            let (sp, spos) = parts
                .iter()
                .enumerate()
                .max_by_key(|(_, p)| p.meta.len())
                .map_or((0, 0), |(p, part)| (p, part.meta.len() / 2));
            let splitter =
                (threads > 1 && spos > 0).then(|| (keys[sp][spos], parts[sp].value(spos)));
            let split: Vec<usize> = parts
                .iter()
                .zip(&keys)
                .map(|(part, k)| match splitter {
                    None => k.len(),
                    Some(s) => {
                        let (mut a, mut b) = (0, k.len());
                        while a < b {
                            let m = (a + b) / 2;
                            if (k[m], part.value(m)) < s {
                                a = m + 1;
                            } else {
                                b = m;
                            }
                        }
                        a
                    }
                })
                .collect();
            let lo: Vec<(usize, usize)> = split.iter().map(|&s| (0, s)).collect();
            let hi: Vec<(usize, usize)> = split
                .iter()
                .zip(&keys)
                .map(|(&s, k)| (s, k.len()))
                .collect();
            let (mut ranks_lo, mut ranks_hi) = (Vec::new(), Vec::new());
            for (r, &s) in ranks.iter_mut().zip(&split) {
                let (a, b) = r.split_at_mut(s);
                ranks_lo.push(a);
                ranks_hi.push(b);
            }
            let base = split.iter().sum::<usize>() as u32;
            if splitter.is_some() {
                let (parts, keys) = (&parts, &keys);
                std::thread::scope(|s| {
                    let first = s.spawn(|| merge_runs(parts, keys, &lo, ranks_lo, 0, words));
                    let second = merge_runs(parts, keys, &hi, ranks_hi, base, words);
                    first
                        .join()
                        .map(|first| vec![first, second])
                        .unwrap_or_else(|e| std::panic::resume_unwind(e))
                })
            } else {
                vec![merge_runs(&parts, &keys, &lo, ranks_lo, 0, words)]
            }
        };
        let mut g = IdentityGraph {
            hasher: self.hasher,
            words,
            offsets: Vec::with_capacity(n + 1),
            ..IdentityGraph::default()
        };
        g.offsets.push(0);
        for (k, h) in halves.into_iter().enumerate() {
            let base = g.arena.len();
            g.offsets.extend(h.ends.iter().map(|e| base + e));
            if k == 0 {
                g.arena = h.arena;
                g.class = h.class;
                g.ns = h.ns;
                g.first_seen = h.first_seen;
                g.last_seen = h.last_seen;
                g.datasets = h.datasets;
            } else {
                g.arena.extend_from_slice(&h.arena);
                g.class.extend_from_slice(&h.class);
                g.ns.extend_from_slice(&h.ns);
                g.first_seen.extend_from_slice(&h.first_seen);
                g.last_seen.extend_from_slice(&h.last_seen);
                g.datasets.extend_from_slice(&h.datasets);
            }
        }
        par_parts(&mut parts, threads, &|p, part| {
            // Only lookups remain: the table, the stored hashes and the dense
            // ids (by the local index the table holds).
            part.dense = vec![0; ranks[p].len()];
            for (&old, &rank) in runs[p].order.iter().zip(&ranks[p]) {
                part.dense[old as usize] = rank;
            }
            part.arena = Vec::new();
            part.meta = Vec::new();
            part.datasets = Vec::new();
        });
        drop((runs, ranks));
        let dense = |enc: u32| {
            parts[(enc >> LOCAL_BITS) as usize].dense[(enc & ((1 << LOCAL_BITS) - 1)) as usize]
        };
        let mut links = self.links;
        for l in &mut links {
            let (a, b) = ((l.key >> 32) as u32, l.key as u32);
            l.key = (u64::from(dense(a)) << 32) | u64::from(dense(b));
        }
        dedup_links(&mut links);
        g.links = links
            .into_iter()
            .map(|l| Link {
                anchor: (l.key >> 32) as u32,
                other: l.key as u32,
                ts: l.ts,
                dataset: l.dataset,
                status: LinkStatus::Used,
            })
            .collect();
        g.parts = parts;
        Ok(g)
    }
}

/// Sort by key, keep one link per key: the newest time, then the smallest dataset.
fn dedup_links(links: &mut Vec<RawLink>) {
    links.sort_unstable_by(|a, b| {
        a.key
            .cmp(&b.key)
            .then(b.ts.cmp(&a.ts))
            .then(a.dataset.cmp(&b.dataset))
    });
    links.dedup_by_key(|l| l.key);
}

/// A sort key for a value from byte `depth` on: `head` (class and namespace,
/// at the top level only), then the next data bytes zero-padded, then
/// `min(bytes left, room + 1)`, so shorter values sort first and a last byte of
/// `room + 1` says "more bytes follow" (see [`refine_ties`]).
fn rank_key(head: &[u8], rest: &[u8]) -> u128 {
    let mut k = [0u8; 16];
    let room = 15 - head.len();
    k[..head.len()].copy_from_slice(head);
    let take = rest.len().min(room);
    k[head.len()..head.len() + take].copy_from_slice(&rest[..take]);
    k[15] = rest.len().min(room + 1) as u8;
    u128::from_be_bytes(k)
}

/// Runs of equal keys whose values go on are re-keyed on their next 15 bytes
/// and sorted again (most significant bytes first), so whole values are never
/// compared pairwise and each value is read once per level. The keys in `v`
/// hold value bytes up to `depth`, `room` of them in the key.
fn refine_ties<'a>(
    v: &mut [(u128, u32)],
    depth: usize,
    room: usize,
    value_of: &impl Fn(u32) -> &'a [u8],
) {
    let mut i = 0;
    while i < v.len() {
        let mut j = i + 1;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        if j - i > 1 && (v[i].0 & 0xFF) as usize == room + 1 {
            let run = &mut v[i..j];
            for e in run.iter_mut() {
                e.0 = rank_key(&[], &value_of(e.1)[depth..]);
            }
            run.sort_unstable_by_key(|e| e.0);
            refine_ties(run, depth + 15, 15, value_of);
        }
        i = j;
    }
}

/// Interned identities, numbered in rank order (class, namespace index, value),
/// with their distinct links sorted by (anchor, other).
#[derive(Debug, Default)]
pub struct IdentityGraph {
    hasher: DefaultHashBuilder,
    /// The builder's partitions, kept for lookups (table, hashes, dense ids).
    parts: Vec<Part>,
    words: usize,
    arena: Vec<u8>,
    /// `offsets[i]..offsets[i + 1]` is identity `i`'s value in `arena`.
    offsets: Vec<usize>,
    pub class: Vec<Class>,
    pub ns: Vec<u16>,
    pub first_seen: Vec<i64>,
    pub last_seen: Vec<i64>,
    /// `words` bitset words per identity: the datasets it was seen in.
    datasets: Vec<u64>,
    links: Vec<Link>,
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl IdentityGraph {
    pub fn len(&self) -> usize {
        self.class.len()
    }

    pub fn is_empty(&self) -> bool {
        self.class.is_empty()
    }

    /// Bytes of distinct identity values.
    pub fn value_bytes(&self) -> usize {
        self.arena.len()
    }

    /// Free what only stitching needs (links, union-find, dataset sets), keeping lookups.
    pub fn shrink(&mut self) {
        self.links = Vec::new();
        self.parent = Vec::new();
        self.size = Vec::new();
        self.datasets = Vec::new();
        self.first_seen = Vec::new();
        self.last_seen = Vec::new();
    }

    pub fn value(&self, id: u32) -> &str {
        let (s, e) = (self.offsets[id as usize], self.offsets[id as usize + 1]);
        // SAFETY: the arena only ever receives whole `&str`s (see `add_row`), and
        // `offsets` holds the boundaries between them, so every slice is UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.arena[s..e]) }
    }

    /// The id of an identity, if it has been seen.
    pub fn get(&self, class: Class, ns: u16, value: &str) -> Option<u32> {
        let hash = self.hasher.hash_one((class as u8, ns, value.as_bytes()));
        let part = self.parts.get(part_of(hash))?;
        part.table
            .find(hash, |&l| {
                let id = part.dense[l as usize];
                self.class[id as usize] == class
                    && self.ns[id as usize] == ns
                    && self.value(id) == value
            })
            .map(|&l| part.dense[l as usize])
    }

    /// Dataset indexes an identity was seen in.
    pub fn datasets_of(&self, id: u32) -> Vec<u16> {
        let mut out = Vec::new();
        let words = &self.datasets[id as usize * self.words..(id as usize + 1) * self.words];
        for (w, &word) in words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                out.push((w * 64 + bits.trailing_zeros() as usize) as u16);
                bits &= bits - 1;
            }
        }
        out
    }

    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize];
            x = p;
        }
        x
    }

    fn union(&mut self, a: u32, b: u32) -> u32 {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return ra;
        }
        let (big, small) = if self.size[ra as usize] >= self.size[rb as usize] {
            (ra, rb)
        } else {
            (rb, ra)
        };
        self.parent[small as usize] = big;
        self.size[big as usize] += self.size[small as usize];
        big
    }

    /// Stitch: quarantine hubs and never-link values, then join components.
    ///
    /// `never_values` are identities never linked to anything; `never_pairs`
    /// must never share a profile. Returns every link with its status, sorted by
    /// (anchor, other) (rank order), the degree of every identity, the
    /// quarantine reasons, and the component root of every identity.
    pub fn stitch(
        &mut self,
        rules: &[NsRules],
        never_values: &[u32],
        never_pairs: &[(u32, u32)],
        allow: &dyn Fn(u32) -> bool,
    ) -> Stitching {
        let mut st = self.mark(rules, never_values, allow);
        self.join(&mut st, rules, never_pairs, None);
        st
    }

    /// Whether stitching must apply links one by one in time order (a unique
    /// namespace or a never-link pair), rather than take connected components.
    pub fn is_constrained(rules: &[NsRules], never_pairs: &[(u32, u32)]) -> bool {
        !never_pairs.is_empty() || rules.iter().any(|r| r.unique)
    }

    /// Step 1: degrees, quarantine, and each link marked used or quarantined.
    /// The links move into the result; `roots` is left empty for [`Self::join`].
    pub fn mark(
        &mut self,
        rules: &[NsRules],
        never_values: &[u32],
        allow: &dyn Fn(u32) -> bool,
    ) -> Stitching {
        let n = self.len();
        let mut degree = vec![0u32; n];
        for l in &self.links {
            degree[l.anchor as usize] += 1;
            degree[l.other as usize] += 1;
        }
        let mut quarantine: Vec<Option<Quarantine>> = vec![None; n];
        for id in 0..n {
            if let Some(max) = rules[self.ns[id] as usize].max_links
                && u64::from(degree[id]) > max
                && !allow(id as u32)
            {
                quarantine[id] = Some(Quarantine::MaxLinks);
            }
        }
        for &v in never_values {
            quarantine[v as usize] = Some(Quarantine::NeverLink);
        }
        let mut links = std::mem::take(&mut self.links);
        for l in &mut links {
            l.status = if quarantine[l.anchor as usize].is_some()
                || quarantine[l.other as usize].is_some()
            {
                LinkStatus::Quarantined
            } else {
                LinkStatus::Used
            };
        }
        Stitching {
            links,
            degree,
            quarantine,
            roots: Vec::new(),
        }
    }

    /// Step 2: the component root of every identity, from the used links.
    ///
    /// Unconstrained, `components` (a root per identity computed elsewhere, e.g.
    /// on a cluster by [`super::components`]) is taken as is when given, and
    /// union-find runs otherwise; constrained, links are applied in time order here.
    pub fn join(
        &mut self,
        st: &mut Stitching,
        rules: &[NsRules],
        never_pairs: &[(u32, u32)],
        components: Option<Vec<u32>>,
    ) {
        let n = self.len();
        let constrained = Self::is_constrained(rules, never_pairs);
        if !constrained && let Some(roots) = components {
            debug_assert_eq!(roots.len(), n);
            st.roots = roots;
            return;
        }
        let links = &mut st.links;
        self.parent = (0..n as u32).collect();
        self.size = vec![1; n];
        if !constrained {
            for l in links.iter() {
                if l.status == LinkStatus::Used {
                    self.union(l.anchor, l.other);
                }
            }
        } else {
            // Newest first; ties by the linked identity's rank, then the anchor's
            // (ids are ranks).
            links.sort_unstable_by_key(|l| {
                (
                    std::cmp::Reverse(l.ts),
                    (u64::from(l.other) << 32) | u64::from(l.anchor),
                )
            });
            let unique_ns: Vec<bool> = rules.iter().map(|r| r.unique).collect();
            // Per root: the unique-namespace identities it holds, and its never-link members.
            let mut held: HashMap<u32, Vec<u32>> = HashMap::new();
            for id in 0..n as u32 {
                if unique_ns[self.ns[id as usize] as usize] {
                    held.entry(id).or_default().push(id);
                }
            }
            let mut partners: HashMap<u32, Vec<u32>> = HashMap::new();
            for &(a, b) in never_pairs {
                partners.entry(a).or_default().push(b);
                partners.entry(b).or_default().push(a);
            }
            let mut guarded: HashMap<u32, Vec<u32>> = HashMap::new();
            for &id in partners.keys() {
                guarded.entry(id).or_default().push(id);
            }
            for l in links.iter_mut() {
                if l.status != LinkStatus::Used {
                    continue;
                }
                let (ra, rb) = (self.find(l.anchor), self.find(l.other));
                if ra == rb {
                    continue;
                }
                let ha = held.get(&ra).map(Vec::as_slice).unwrap_or_default();
                let hb = held.get(&rb).map(Vec::as_slice).unwrap_or_default();
                let clash = ha.iter().find_map(|&x| {
                    hb.iter()
                        .find(|&&y| self.ns[x as usize] == self.ns[y as usize])
                        .map(|_| self.ns[x as usize])
                });
                if let Some(ns) = clash {
                    l.status = LinkStatus::CutUnique(ns);
                    continue;
                }
                let ga = guarded.get(&ra).cloned().unwrap_or_default();
                let gb_root = rb;
                let mut never = false;
                for x in &ga {
                    for p in partners.get(x).map(Vec::as_slice).unwrap_or_default() {
                        if self.find(*p) == gb_root {
                            never = true;
                        }
                    }
                }
                if never {
                    l.status = LinkStatus::CutNeverLink;
                    continue;
                }
                let root = self.union(ra, rb);
                let other = if root == ra { rb } else { ra };
                if let Some(v) = held.remove(&other) {
                    held.entry(root).or_default().extend(v);
                }
                if let Some(v) = guarded.remove(&other) {
                    guarded.entry(root).or_default().extend(v);
                }
            }
        }
        st.roots = (0..n as u32).map(|i| self.find(i)).collect();
        if constrained {
            links.sort_unstable_by_key(|l| (u64::from(l.anchor) << 32) | u64::from(l.other));
        }
    }
}

/// The result of [`IdentityGraph::stitch`].
#[derive(Debug, Clone)]
pub struct Stitching {
    pub links: Vec<Link>,
    pub degree: Vec<u32>,
    pub quarantine: Vec<Option<Quarantine>>,
    pub roots: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_union_find_joins_components() {
        let mut b = GraphBuilder::new(71, 2);
        b.add_row(Class::Customer, 5, 0, [(0, "a"), (1, "b")])
            .unwrap();
        b.add_row(Class::Customer, 3, 1, [(0, "a"), (1, "b")])
            .unwrap();
        b.add_row(Class::Customer, 3, 0, [(1, "c")]).unwrap();
        b.add_row(Class::Prospect, 4, 2, [(0, "a")]).unwrap();
        b.add_row(Class::Customer, 0, 70, [(0, "a")]).unwrap();
        let mut g = b.finish().unwrap();
        let a = g.get(Class::Customer, 0, "a").unwrap();
        let bb = g.get(Class::Customer, 1, "b").unwrap();
        let c = g.get(Class::Customer, 1, "c").unwrap();
        let p = g.get(Class::Prospect, 0, "a").unwrap();
        assert_eq!(
            (a, bb, c, p),
            (0, 1, 2, 3),
            "ids are ranks: class, namespace, value"
        );
        assert_eq!(g.first_seen[a as usize], 0);
        assert_eq!(g.datasets_of(a), vec![0, 1, 70]);
        assert_eq!(g.link_count(), 1, "a pair linked twice is one link");
        let s = g.stitch(&[NsRules::default(), NsRules::default()], &[], &[], &|_| {
            false
        });
        assert_eq!(s.roots[a as usize], s.roots[bb as usize]);
        assert_ne!(s.roots[a as usize], s.roots[c as usize]);
        assert_eq!(s.links[0].ts, 5, "the newest time is kept");
    }

    #[test]
    fn large_graphs_intern_the_same_on_one_thread_and_many() {
        let build = |threads| {
            let mut b = GraphBuilder::new(1, threads);
            for i in 0..300_000u32 {
                // x values share 20 bytes, so the merge and its split compare whole values.
                let (x, y) = (
                    format!("x-long-shared-prefix{}", i % 70_001),
                    format!("y{}", i % 90_007),
                );
                b.add_row(
                    Class::Customer,
                    i64::from(i),
                    0,
                    [(0, x.as_str()), (1, y.as_str())],
                )
                .unwrap();
            }
            b.finish().unwrap()
        };
        let (one, two) = (build(1), build(2));
        assert_eq!(one.len(), 70_001 + 90_007);
        assert_eq!(one.arena, two.arena);
        assert_eq!(one.last_seen, two.last_seen);
        assert_eq!(one.links, two.links);
        for i in 1..one.len() as u32 {
            let key = |i: u32| (one.class[i as usize], one.ns[i as usize], one.value(i));
            assert!(key(i - 1) < key(i), "ids in rank order at {i}");
        }
        assert_eq!(
            one.get(Class::Customer, 1, "y5").map(|i| one.value(i)),
            two.get(Class::Customer, 1, "y5").map(|i| two.value(i))
        );
    }

    proptest::proptest! {
        /// Ids are ranks, whatever the partitions: values sharing long
        /// prefixes land in different partitions and meet in the merge.
        #[test]
        fn graph_ids_are_ranks_across_partitions(
            values in proptest::collection::btree_set(
                (0u16..3, proptest::collection::vec(proptest::sample::select(vec!['a', 'b', '\0']), 0..30)),
                1..400,
            ),
            prospect in proptest::collection::vec(proptest::bool::ANY, 400),
        ) {
            let mut b = GraphBuilder::new(1, 2);
            let mut want: Vec<(Class, u16, String)> = Vec::new();
            for ((ns, tail), &p) in values.iter().zip(&prospect) {
                let class = if p { Class::Prospect } else { Class::Customer };
                let v: String = format!("shared-prefix-{}", tail.iter().collect::<String>());
                b.add_row(class, 0, 0, [(*ns, v.as_str())]).unwrap();
                want.push((class, *ns, v));
            }
            want.sort();
            want.dedup();
            let g = b.finish().unwrap();
            let got: Vec<(Class, u16, String)> = (0..g.len() as u32)
                .map(|i| (g.class[i as usize], g.ns[i as usize], g.value(i).to_owned()))
                .collect();
            proptest::prop_assert_eq!(&got, &want);
            for (i, (c, ns, v)) in want.iter().enumerate() {
                proptest::prop_assert_eq!(g.get(*c, *ns, v), Some(i as u32));
            }
        }

        #[test]
        fn rank_keys_sort_like_whole_values(
            values in proptest::collection::btree_set(
                proptest::collection::vec(proptest::sample::select(vec![0u8, b'a', b'b']), 0..50),
                0..200,
            ),
            ns in proptest::collection::vec(0u16..3, 200),
        ) {
            let items: Vec<(u16, Vec<u8>)> =
                values.into_iter().zip(ns).map(|(v, n)| (n, v)).collect();
            let mut keyed: Vec<(u128, u32)> = items
                .iter()
                .enumerate()
                .map(|(i, (n, v))| {
                    let head = [0, (n >> 8) as u8, *n as u8];
                    (rank_key(&head, v), i as u32)
                })
                .collect();
            keyed.sort_unstable_by_key(|e| e.0);
            refine_ties(&mut keyed, 12, 12, &|i| items[i as usize].1.as_slice());
            let got: Vec<u32> = keyed.iter().map(|e| e.1).collect();
            let mut want: Vec<u32> = (0..items.len() as u32).collect();
            want.sort_by(|&a, &b| items[a as usize].cmp(&items[b as usize]));
            proptest::prop_assert_eq!(got, want);
        }
    }
}
