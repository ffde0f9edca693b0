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

use hashbrown::{DefaultHashBuilder, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

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
/// tables use the low 32 bits).
const PART_BITS: u32 = 8;
const PARTS: usize = 1 << PART_BITS;
const LOCAL_BITS: u32 = 32 - PART_BITS;
const LOCAL_MASK: u32 = (1 << LOCAL_BITS) - 1;
/// Identity occurrences buffered before they are interned partition by
/// partition. Two chunks are alive at a time (one filled while the other is
/// interned): half a million occurrences each keeps that to the memory one
/// chunk of a million took before interning overlapped, and the finer
/// handovers wait less (links-only at 1M: 1.45 s, against 1.59-2.00 s with
/// 1Mi chunks overlapped and 1.57-1.77 s with 1Mi chunks not overlapped).
const CHUNK: usize = 1 << 19;
/// Raw links buffered before the first sort-and-deduplicate.
const MIN_COMPACT: usize = 1 << 22;
/// Items (occurrences, identities, links) below which a step runs on one
/// thread: starting threads would cost more than they save.
const PARALLEL_FROM: usize = 1 << 16;

fn part_of(hash: u64) -> usize {
    ((hash >> 40) as usize) & (PARTS - 1)
}

/// A key's hash: 56 bits, so that it packs with the class in a [`Meta`].
fn key_hash(hasher: &DefaultHashBuilder, class: Class, ns: u16, value: &[u8]) -> u64 {
    hasher.hash_one((class as u8, ns, value)) >> 8
}

/// A partition's hash table: 16-slot buckets of one cache line, each slot
/// 7 bits of the key's hash over `index + 1` (0 is empty), probed bucket
/// after bucket.
///
/// hashbrown's tables hide where a key's bucket is until they look it up;
/// here the bucket is known from the hash, so the interner asks for it a
/// few occurrences ahead ([`Table::prefetch`]), and then for the record a
/// bucket names ([`Table::candidate`]): at 10M people a partition is far
/// larger than the cache and every lookup would otherwise wait on memory.
/// Growing asks the caller for each key's hash again, in index order.
/// Nothing is ever removed.
#[derive(Debug, Default)]
struct Table {
    buckets: Vec<Bucket>,
    len: usize,
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(align(64))]
struct Bucket([u32; 16]);

/// Bits of a slot that hold `index + 1` (a partition holds fewer than
/// 2^[`LOCAL_BITS`] identities); the hash's top bits fill the rest.
const SLOT_BITS: u32 = LOCAL_BITS + 1;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;

/// Where a lookup ended: the index found, or the empty slot (bucket, slot)
/// an insert of that key takes.
enum Probe {
    Found(u32),
    Vacant(usize, usize),
}

impl Table {
    /// `h`'s first bucket (low bits; the slots keep its top bits).
    #[inline]
    fn home(&self, h: u32) -> usize {
        h as usize & (self.buckets.len() - 1)
    }

    /// Ask for `h`'s bucket ahead of a lookup.
    #[inline]
    fn prefetch(&self, h: u32) {
        if !self.buckets.is_empty() {
            prefetch(self.buckets.as_ptr().wrapping_add(self.home(h)));
        }
    }

    /// Look `h` up; `eq` confirms an index whose slot holds the same top bits.
    #[inline]
    fn probe(&self, h: u32, mut eq: impl FnMut(u32) -> bool) -> Probe {
        if self.buckets.is_empty() {
            return Probe::Vacant(usize::MAX, 0);
        }
        let (mask, tag) = (self.buckets.len() - 1, h & !SLOT_MASK);
        let mut b = self.home(h);
        loop {
            for (k, &slot) in self.buckets[b].0.iter().enumerate() {
                if slot == 0 {
                    return Probe::Vacant(b, k);
                }
                if slot & !SLOT_MASK == tag && eq((slot & SLOT_MASK) - 1) {
                    return Probe::Found((slot & SLOT_MASK) - 1);
                }
            }
            b = (b + 1) & mask;
        }
    }

    /// The first index whose slot has `h`'s top bits (to prefetch its record).
    #[inline]
    fn candidate(&self, h: u32) -> Option<u32> {
        self.find(h, |_| true)
    }

    #[inline]
    fn find(&self, h: u32, eq: impl FnMut(u32) -> bool) -> Option<u32> {
        match self.probe(h, eq) {
            Probe::Found(i) => Some(i),
            Probe::Vacant(..) => None,
        }
    }

    /// Put the next index (`len`, absent so far) at the vacant slot a probe
    /// for `h` found; `hash_of` gives each index's `h` when the table grows.
    fn push(&mut self, h: u32, vacant: (usize, usize), hash_of: impl Fn(u32) -> u32) {
        let index = self.len as u32;
        // At most three quarters full, so that a probe seldom leaves its bucket.
        if (self.len + 1) * 4 > self.buckets.len() * 16 * 3 {
            let want = (self.buckets.len() * 2).max(1);
            self.buckets = vec![Bucket::default(); want];
            for i in 0..index {
                self.place(hash_of(i), i);
            }
            self.place(h, index);
        } else {
            self.buckets[vacant.0].0[vacant.1] = (h & !SLOT_MASK) | (index + 1);
        }
        self.len += 1;
    }

    fn place(&mut self, h: u32, index: u32) {
        let Probe::Vacant(b, k) = self.probe(h, |_| false) else {
            unreachable!("a probe that never matches ends at a vacant slot")
        };
        self.buckets[b].0[k] = (h & !SLOT_MASK) | (index + 1);
    }

    /// Give every index a new number.
    fn renumber(&mut self, f: impl Fn(u32) -> u32) {
        for slot in self.buckets.iter_mut().flat_map(|b| b.0.iter_mut()) {
            if *slot != 0 {
                *slot = (*slot & !SLOT_MASK) | (f((*slot & SLOT_MASK) - 1) + 1);
            }
        }
    }
}

/// The class whose discriminant is `b`.
fn class_of(b: u8) -> Class {
    [Class::Customer, Class::Prospect]
        .into_iter()
        .find(|c| *c as u8 == b)
        .unwrap_or_default()
}

/// An identity occurrence waiting to be interned.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// [`key_hash`].
    hash: u64,
    ts: i64,
    /// Index among the buffered occurrences (anchors and links refer to it).
    occurrence: u32,
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

/// One interned identity of a partition while interning, packed in 24
/// bytes (its hash is kept apart, in [`Part::hashes`]: a probe compares
/// length, class, namespace and value, after the 7 bits of the hash the
/// table's slots hold).
#[derive(Debug, Clone, Copy)]
struct Meta {
    first_seen: i64,
    last_seen: i64,
    /// Where the value is: [`Arena`] page and offset.
    at: u32,
    /// The value's length in bytes (at most [`MAX_VALUE`]) with the class
    /// in the top bit: a probe compares both at once.
    len_class: u16,
    ns: u16,
}

/// Bytes a value may have (the class takes a bit of [`Meta::len_class`]).
const MAX_VALUE: usize = (1 << 15) - 1;

impl Meta {
    fn len_class(class: Class, len: u16) -> u16 {
        (u16::from(class as u8) << 15) | len
    }

    fn len(&self) -> u16 {
        self.len_class & MAX_VALUE as u16
    }

    fn class(&self) -> Class {
        class_of((self.len_class >> 15) as u8)
    }
}

/// One radix partition of the interner: its own hash table and values, small
/// enough to stay in cache while a chunk's occurrences for it are interned.
///
/// Its arrays grow in pages ([`Paged`], [`Arena`]) rather than by
/// reallocation: a partition grows all the while rows are read, and a `Vec`
/// grown in place keeps spare room and is copied each time it moves (like for
/// like at 1M: a 5% lower peak, about the same time).
#[derive(Debug, Default)]
struct Part {
    /// Hash of (class, namespace, value) → local index.
    table: Table,
    arena: Arena,
    meta: Paged<Meta>,
    /// The low 32 bits of each identity's [`key_hash`], which the table
    /// keeps 7 of: for placing the keys again when it grows (hashing the
    /// values again took 2% of the links-only bench).
    hashes: Paged<u32>,
    /// `words` bitset words per identity: the datasets it was seen in.
    datasets: Paged<Word>,
}

/// A word of an identity's dataset bitset. A byte: most projects have a
/// few datasets, and the sets are kept for every identity until the
/// identity map is written (a u64 word took 7 bytes more per identity).
type Word = u8;
const WORD_BITS: usize = Word::BITS as usize;

/// Items in a full page of a [`Paged`] array (few in tests, so that every
/// graph test crosses pages).
#[cfg(not(test))]
const PAGE_BITS: u32 = 10;
#[cfg(test)]
const PAGE_BITS: u32 = 3;
const PAGE: usize = 1 << PAGE_BITS;
/// Bytes in an [`Arena`] page (a value has at most `u16::MAX`).
const ARENA_PAGE: usize = 1 << 16;

/// A growable array in pages of [`PAGE`] items: growing never moves what is
/// stored. The first page grows like a `Vec`, so that small graphs stay small.
#[derive(Debug)]
struct Paged<T> {
    pages: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Paged<T> {
    fn default() -> Self {
        Paged {
            pages: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Paged<T> {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, item: T) {
        match self.pages.last_mut() {
            Some(page) if page.len() < PAGE => page.push(item),
            _ => {
                let mut page = if self.pages.is_empty() {
                    Vec::new()
                } else {
                    Vec::with_capacity(PAGE)
                };
                page.push(item);
                self.pages.push(page);
            }
        }
        self.len += 1;
    }

    #[inline]
    fn get(&self, i: usize) -> &T {
        &self.pages[i >> PAGE_BITS][i & (PAGE - 1)]
    }

    /// Ask for item `i`'s cache line (nothing when `i` is out of range).
    #[inline]
    fn prefetch(&self, i: usize) {
        if let Some(page) = self.pages.get(i >> PAGE_BITS) {
            prefetch(page.as_ptr().wrapping_add(i & (PAGE - 1)));
        }
    }

    #[inline]
    fn get_mut(&mut self, i: usize) -> &mut T {
        &mut self.pages[i >> PAGE_BITS][i & (PAGE - 1)]
    }
}

/// Value bytes in pages of [`ARENA_PAGE`] bytes; a value never straddles
/// two, and is found by `page << 16 | offset`.
#[derive(Debug, Default)]
struct Arena {
    pages: Vec<Vec<u8>>,
    bytes: usize,
}

impl Arena {
    /// Store `value` (at most `u16::MAX` bytes); `None` when the arena
    /// holds 4 GiB already.
    fn push(&mut self, value: &[u8]) -> Option<u32> {
        debug_assert!(value.len() <= usize::from(u16::MAX));
        let fits = self
            .pages
            .last()
            .is_some_and(|p| p.len() + value.len() <= ARENA_PAGE);
        if !fits {
            if self.pages.len() >= 1 << 16 {
                return None;
            }
            // The first page grows as needed (small graphs stay small); the others are whole.
            let cap = if self.pages.is_empty() { 0 } else { ARENA_PAGE };
            self.pages.push(Vec::with_capacity(cap));
        }
        let last = self.pages.len() - 1;
        let page = &mut self.pages[last];
        if page.len() + value.len() > page.capacity() {
            let want = (page.capacity() * 2).clamp(page.len() + value.len(), ARENA_PAGE);
            page.reserve_exact(want - page.len());
        }
        let offset = page.len() as u32;
        page.extend_from_slice(value);
        self.bytes += value.len();
        Some(((last as u32) << 16) | offset)
    }

    /// Ask for the first cache line of the value at `at`.
    #[inline]
    fn prefetch(&self, at: u32) {
        if let Some(page) = self.pages.get((at >> 16) as usize) {
            prefetch(page.as_ptr().wrapping_add((at & 0xFFFF) as usize));
        }
    }

    #[inline]
    fn get(&self, at: u32, len: u16) -> &[u8] {
        let offset = (at & 0xFFFF) as usize;
        &self.pages[(at >> 16) as usize][offset..offset + usize::from(len)]
    }

    /// The rank key of the value at `at` (see [`rank_key_in`]).
    #[inline]
    fn rank_key(&self, head: [u8; 3], at: u32, len: u16) -> u128 {
        let page = &self.pages[(at >> 16) as usize];
        rank_key_in(head, page, (at & 0xFFFF) as usize, usize::from(len))
    }
}

/// Grow `v` by a quarter (not double) when full: the raw links are most of
/// the memory besides the partitions while rows are read (large arrays are
/// remapped, not copied, by glibc's `realloc`).
fn reserve_quarter<T>(v: &mut Vec<T>, more: usize) {
    if v.len() + more > v.capacity() {
        v.reserve_exact((v.capacity() / 4).max(more).max(64));
    }
}

impl Part {
    /// Ask for the record (and dataset words) of the identity that `h`'s
    /// bucket names first, if any.
    #[inline]
    fn prefetch_record(&self, h: u32, words: usize) {
        if let Some(l) = self.table.candidate(h) {
            self.meta.prefetch(l as usize);
            self.datasets.prefetch(l as usize * words);
        }
    }

    /// Ask for the value of the identity that `h`'s bucket names first.
    #[inline]
    fn prefetch_value(&self, h: u32) {
        if let Some(l) = self.table.candidate(h) {
            self.arena.prefetch(self.meta.get(l as usize).at);
        }
    }

    fn value(&self, local: usize) -> &[u8] {
        let m = self.meta.get(local);
        self.arena.get(m.at, m.len())
    }

    /// Intern one occurrence; returns the local index.
    ///
    /// # Errors
    /// When the partition outgrows 2^[`LOCAL_BITS`] identities or 4 GiB of
    /// values, or the value [`MAX_VALUE`] bytes.
    fn intern(&mut self, e: &Entry, value: &[u8], words: usize) -> std::result::Result<u32, ()> {
        if value.len() > MAX_VALUE {
            return Err(());
        }
        let len = value.len() as u16;
        let len_class = Meta::len_class(e.class, len);
        let found = {
            let (arena, meta) = (&self.arena, &self.meta);
            self.table.probe(e.hash as u32, |l| {
                let m = meta.get(l as usize);
                m.len_class == len_class && m.ns == e.ns && arena.get(m.at, len) == value
            })
        };
        let local = match found {
            Probe::Found(l) => {
                let m = self.meta.get_mut(l as usize);
                m.first_seen = m.first_seen.min(e.ts);
                m.last_seen = m.last_seen.max(e.ts);
                l
            }
            Probe::Vacant(b, k) => {
                let l = self.meta.len() as u32;
                if l >> LOCAL_BITS != 0 {
                    return Err(());
                }
                // `Sorted` keeps a partition's values in one array with u32 ends.
                u32::try_from(self.arena.bytes + value.len()).map_err(|_| ())?;
                let at = self.arena.push(value).ok_or(())?;
                self.meta.push(Meta {
                    first_seen: e.ts,
                    last_seen: e.ts,
                    at,
                    len_class,
                    ns: e.ns,
                });
                for _ in 0..words {
                    self.datasets.push(0);
                }
                self.hashes.push(e.hash as u32);
                let hashes = &self.hashes;
                self.table
                    .push(e.hash as u32, (b, k), |i| *hashes.get(i as usize));
                l
            }
        };
        let d = e.dataset as usize;
        *self
            .datasets
            .get_mut(local as usize * words + d / WORD_BITS) |= 1 << (d % WORD_BITS);
        Ok(local)
    }

    /// This partition in rank order (class, namespace, value), sorted in
    /// cache and rewritten as columns; the table now maps to positions in
    /// that order. Also returns `order[pos] = local index while interning`
    /// (what the buffered links refer to).
    fn into_sorted(mut self, words: usize) -> (Sorted, Vec<u32>) {
        let n = self.meta.len();
        let mut keyed: Vec<(u128, u32)> = (0..n)
            .map(|l| {
                let m = self.meta.get(l);
                let key = self.arena.rank_key(head(m.class(), m.ns), m.at, m.len());
                (key, l as u32)
            })
            .collect();
        keyed.sort_unstable_by_key(|e| e.0);
        refine_ties(&mut keyed, 12, 12, &|l| self.value(l as usize));
        let mut s = Sorted {
            table: std::mem::take(&mut self.table),
            arena: Vec::with_capacity(self.arena.bytes),
            ends: Vec::with_capacity(n),
            ns: Vec::with_capacity(n),
            class: Vec::with_capacity(n),
            first_seen: Vec::with_capacity(n),
            last_seen: Vec::with_capacity(n),
            datasets: Vec::with_capacity(n * words),
            rank: Vec::new(),
        };
        let order: Vec<u32> = keyed.into_iter().map(|(_, old)| old).collect();
        let mut pos_of = vec![0u32; n];
        for (pos, &old) in order.iter().enumerate() {
            // The records are read in rank order, all over the partition:
            // each record is asked for ahead, then its value (from the
            // record, by then in cache) and its dataset words.
            if let Some(&next) = order.get(pos + AHEAD) {
                self.meta.prefetch(next as usize);
            }
            if let Some(&next) = order.get(pos + AHEAD / 2) {
                self.arena.prefetch(self.meta.get(next as usize).at);
                self.datasets.prefetch(next as usize * words);
            }
            pos_of[old as usize] = pos as u32;
            let m = self.meta.get(old as usize);
            s.arena.extend_from_slice(self.value(old as usize));
            s.ends.push(s.arena.len() as u32);
            s.ns.push(m.ns);
            s.class.push(m.class());
            s.first_seen.push(m.first_seen);
            s.last_seen.push(m.last_seen);
            let o = old as usize * words;
            s.datasets
                .extend((o..o + words).map(|w| *self.datasets.get(w)));
        }
        // A value's hash does not change: the table's entries are renumbered in place.
        s.table.renumber(|l| pos_of[l as usize]);
        (s, order)
    }
}

/// A partition's identities in rank order, as columns: what the graph keeps
/// (the identities are not copied into one array: the graph locates each
/// dense id in its partition).
#[derive(Debug, Default)]
struct Sorted {
    /// Hash of (class, namespace, value) → position.
    table: Table,
    arena: Vec<u8>,
    /// End of each value in `arena` (it starts where the previous one ends).
    ends: Vec<u32>,
    ns: Vec<u16>,
    class: Vec<Class>,
    first_seen: Vec<i64>,
    last_seen: Vec<i64>,
    /// `words` bitset words per identity: the datasets it was seen in.
    datasets: Vec<Word>,
    /// Dense id (rank in the whole graph) of each position.
    rank: Vec<u32>,
}

impl Sorted {
    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Where `pos`'s value starts in `arena` (where the previous one ends).
    fn start(&self, pos: usize) -> usize {
        pos.checked_sub(1).map_or(0, |p| self.ends[p] as usize)
    }

    fn value(&self, pos: usize) -> &[u8] {
        &self.arena[self.start(pos)..self.ends[pos] as usize]
    }

    /// Rank order within and across partitions: class, namespace index, value bytes.
    fn rank_of(&self, pos: usize) -> (u8, u16, &[u8]) {
        (self.class[pos] as u8, self.ns[pos], self.value(pos))
    }

    /// Ask for the lines of `pos`'s value end and last-seen time.
    fn prefetch_value_and_seen(&self, pos: usize) {
        prefetch(self.ends.as_ptr().wrapping_add(pos.saturating_sub(1)));
        prefetch(self.last_seen.as_ptr().wrapping_add(pos));
    }
}

/// The top of a rank key: class, then namespace index (big-endian).
fn head(class: Class, ns: u16) -> [u8; 3] {
    let mut h = [0u8; 3];
    h[0] = class as u8;
    h[1..].copy_from_slice(&ns.to_be_bytes());
    h
}

/// Where the merge stands in one partition: its next identity's rank key, the
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
    fn at(part: &'a Sorted, pos: usize, end: usize) -> Self {
        if pos >= end {
            // After every identity: a rank key's first byte is a class (0 or 1).
            return Cursor {
                key: u128::MAX,
                key2: u128::MAX,
                value: &[],
                pos,
                end,
            };
        }
        let start = part.start(pos);
        let len = part.ends[pos] as usize - start;
        Cursor {
            key: rank_key_in(head(part.class[pos], part.ns[pos]), &part.arena, start, len),
            key2: word_at(&part.arena, start + 12, len.saturating_sub(12)),
            value: &part.arena[start..start + len],
            pos,
            end,
        }
    }

    /// Rank order; a finished run comes after everything. Equal keys share
    /// class, namespace and the first 12 bytes: then the next bytes decide.
    ///
    /// Keys almost always differ, so this is one well-predicted branch and
    /// a comparison whose result the merge uses without branching.
    #[inline]
    fn before(&self, other: &Self) -> bool {
        if self.key != other.key {
            return self.key < other.key;
        }
        (self.key2, self.value) < (other.key2, other.value)
    }
}

/// How far ahead in its run the merge prefetches (positions).
pub(crate) const AHEAD: usize = 16;

/// Merge the rank-ordered partitions, `ranges[p]` of partition `p`,
/// numbering identities from `base`: `ranks[p]` (which covers `ranges[p]`)
/// gets each one's dense id and `locate` (from `base` on) each dense id's
/// partition and position. A tournament tree picks the next identity in one
/// comparison a level; each partition is read front to back.
fn merge_runs(
    parts: &[Sorted],
    ranges: &[(usize, usize)],
    mut ranks: Vec<&mut [u32]>,
    base: u32,
    locate: &mut [u32],
) {
    let k = ranges.len().next_power_of_two();
    let mut cur: Vec<Cursor> = (0..k)
        .map(|p| match ranges.get(p) {
            Some(&(a, b)) => Cursor::at(&parts[p], a, b),
            None => Cursor::at(&parts[0], 0, 0),
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
    let mut i = 0usize;
    while cur[winner].pos < cur[winner].end {
        let (p, pos) = (winner, cur[winner].pos);
        locate[i] = ((p as u32) << LOCAL_BITS) | pos as u32;
        i += 1;
        cur[p] = Cursor::at(&parts[p], pos + 1, ranges[p].1);
        // Each run is read front to back, but the runs are too many for the
        // hardware to follow: its next lines are asked for by hand, well
        // before the run wins again.
        let part = &parts[p];
        let ahead = pos + AHEAD;
        prefetch(part.ends.as_ptr().wrapping_add(ahead));
        prefetch(part.ns.as_ptr().wrapping_add(ahead));
        prefetch(part.class.as_ptr().wrapping_add(ahead));
        if let Some(&end) = part.ends.get(pos + AHEAD / 4) {
            prefetch(part.arena.as_ptr().wrapping_add(end as usize));
        }
        let mut node = (p + k) / 2;
        let mut cand = p;
        while node >= 1 {
            // Which side wins is a coin toss: selected, not branched on.
            let other = tree[node];
            let swap = cur[other].before(&cur[cand]);
            tree[node] = if swap { cand } else { other };
            cand = if swap { other } else { cand };
            node /= 2;
        }
        winner = cand;
    }
    debug_assert_eq!(i, locate.len());
    // Dense ids by position, after the merge (out of the tree's chain of
    // dependent loads): each partition's positions come in order, so these
    // are as many streams of writes as there are partitions.
    for (i, &at) in locate.iter().enumerate() {
        let (p, pos) = ((at >> LOCAL_BITS) as usize, (at & LOCAL_MASK) as usize);
        ranks[p][pos - ranges[p].0] = base + i as u32;
    }
}

/// Ask for the cache line holding `p` ahead of its use. Only a hint: it
/// never faults, so `p` may be past the end of its array.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `f` on every partition, the partitions split into `threads` contiguous ranges.
fn par_parts<P: Send, T: Send>(
    parts: &mut [P],
    threads: usize,
    f: &(impl Fn(usize, &mut P) -> T + Sync),
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
/// Occurrences are hashed and buffered by radix partition as rows arrive,
/// then interned a chunk at a time, partition by partition (each
/// partition's table and values stay in cache), on several threads when the
/// chunk is large, and in the background: the caller fills the next chunk
/// meanwhile. Chunks are interned one after another, in order. Ids are then
/// renumbered in rank order (class, namespace index, value) by
/// [`GraphBuilder::finish`], so the graph does not depend on hashing or on
/// thread timing.
#[derive(Debug)]
pub struct GraphBuilder {
    hasher: DefaultHashBuilder,
    /// The chunk rows go into.
    fill: Chunk,
    /// Occurrences buffered before they are interned ([`CHUNK`]; less in tests).
    chunk: usize,
    /// The partitions and links, here when no chunk is being interned.
    idle: Option<Interning>,
    /// A chunk being interned, which hands back the partitions, the links
    /// and the chunk's buffers (for the next fill).
    busy: Option<std::thread::JoinHandle<(Interning, Chunk, Result<()>)>>,
    /// An emptied chunk's buffers, for the next fill.
    spare: Option<Chunk>,
}

/// What interning a chunk changes: the partitions and the raw links.
#[derive(Debug)]
struct Interning {
    parts: Vec<Part>,
    links: Vec<RawLink>,
    words: usize,
    threads: usize,
    /// Raw links buffered before the next sort-and-deduplicate.
    compact_at: usize,
    min_compact: usize,
    sample: LinkSample,
    /// Encoded id of each occurrence of the chunk (scratch).
    ids: Vec<AtomicU32>,
}

/// The raw links whose keys hash into 1/64 of the key space (so every copy
/// of a sampled link is sampled): tells whether sorting the buffered links
/// to drop repeats would remove enough of them to pay for the sort.
#[derive(Debug, Default)]
struct LinkSample {
    /// Distinct sampled keys so far.
    keys: hashbrown::HashSet<u64>,
    /// Sampled links in the buffer, repeats included.
    buffered: usize,
}

impl LinkSample {
    #[inline]
    fn add(&mut self, key: u64) {
        if key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58 == 0 {
            self.buffered += 1;
            self.keys.insert(key);
        }
    }

    /// Whether a compaction would likely remove at least an eighth of the
    /// buffered links (yes while the sample is too small to tell).
    fn worth_compacting(&self) -> bool {
        self.buffered < 1024 || (self.buffered - self.keys.len()) * 8 >= self.buffered
    }

    /// After a compaction the buffer holds each key once.
    fn compacted(&mut self) {
        self.buffered = self.keys.len();
    }
}

/// Occurrences waiting to be interned, by partition, and their rows.
#[derive(Debug)]
struct Chunk {
    pending: Vec<Pending>,
    /// Occurrences and value bytes, over all partitions.
    n: usize,
    bytes: usize,
    /// Each row with its first occurrence (the anchor).
    rows: Vec<Row>,
}

impl Chunk {
    fn new() -> Self {
        Chunk {
            pending: (0..PARTS).map(|_| Pending::default()).collect(),
            n: 0,
            bytes: 0,
            rows: Vec::new(),
        }
    }

    fn clear(&mut self) {
        for p in &mut self.pending {
            p.entries.clear();
            p.bytes.clear();
        }
        (self.n, self.bytes) = (0, 0);
        self.rows.clear();
    }
}

/// A partition's occurrences waiting to be interned, with their value bytes
/// one after another.
#[derive(Debug, Default)]
struct Pending {
    entries: Vec<Entry>,
    bytes: Vec<u8>,
}

/// A buffered row: its occurrences are `first..` the next row's first.
#[derive(Debug, Clone, Copy)]
struct Row {
    first: u32,
    dataset: u16,
    ts: i64,
}

impl GraphBuilder {
    /// A builder for identities from `datasets` datasets, interning on up to `threads` threads.
    pub fn new(datasets: usize, threads: usize) -> Self {
        GraphBuilder {
            hasher: DefaultHashBuilder::default(),
            fill: Chunk::new(),
            chunk: CHUNK,
            idle: Some(Interning {
                parts: (0..PARTS).map(|_| Part::default()).collect(),
                links: Vec::new(),
                words: datasets.div_ceil(WORD_BITS).max(1),
                threads: threads.max(1),
                compact_at: MIN_COMPACT,
                min_compact: MIN_COMPACT,
                sample: LinkSample::default(),
                ids: Vec::new(),
            }),
            busy: None,
            spare: None,
        }
    }

    /// Small chunks and early link compaction, to exercise both in tests.
    #[cfg(test)]
    fn with_chunk(mut self, chunk: usize, compact: usize) -> Self {
        self.chunk = chunk;
        if let Some(i) = &mut self.idle {
            (i.compact_at, i.min_compact) = (compact, compact);
        }
        self
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
        let fill = &mut self.fill;
        let first = fill.n;
        for (ns, value) in identities {
            let v = value.as_bytes();
            let hash = key_hash(&self.hasher, class, ns, v);
            let pending = &mut fill.pending[part_of(hash)];
            pending.bytes.extend_from_slice(v);
            pending.entries.push(Entry {
                hash,
                ts,
                occurrence: fill.n as u32,
                len: v.len() as u32,
                ns,
                dataset,
                class,
            });
            fill.n += 1;
            fill.bytes += v.len();
        }
        if fill.n > first {
            fill.rows.push(Row {
                first: first as u32,
                dataset,
                ts,
            });
        }
        if fill.n >= self.chunk || fill.bytes >= (u32::MAX / 2) as usize {
            self.flush()?;
        }
        Ok(())
    }

    /// Hand the filled chunk to interning (in the background when it is
    /// large), once the previous one is done.
    fn flush(&mut self) -> Result<()> {
        self.wait()?;
        if self.fill.n == 0 {
            return Ok(());
        }
        let next = self.spare.take().unwrap_or_else(Chunk::new);
        let chunk = std::mem::replace(&mut self.fill, next);
        let mut interning = self.take_idle()?;
        if interning.threads > 1 && chunk.n >= PARALLEL_FROM {
            self.busy = Some(std::thread::spawn(move || {
                let r = interning.intern(&chunk);
                (interning, chunk, r)
            }));
            Ok(())
        } else {
            let r = interning.intern(&chunk);
            self.done(interning, chunk);
            r
        }
    }

    /// Wait for the chunk being interned, if any.
    fn wait(&mut self) -> Result<()> {
        match self.busy.take() {
            Some(h) => {
                let (interning, chunk, r) =
                    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
                self.done(interning, chunk);
                r
            }
            None => Ok(()),
        }
    }

    fn take_idle(&mut self) -> Result<Interning> {
        self.idle
            .take()
            .ok_or_else(|| Error::Internal("identity graph: interning state lost".into()))
    }

    fn done(&mut self, interning: Interning, mut chunk: Chunk) {
        chunk.clear();
        (self.idle, self.spare) = (Some(interning), Some(chunk));
    }

    /// Intern what is buffered, number identities in rank order and
    /// deduplicate the links.
    ///
    /// # Errors
    /// [`Error::Input`] when the graph outgrows 32-bit identity ids.
    pub fn finish(mut self) -> Result<IdentityGraph> {
        self.flush()?;
        self.wait()?;
        let Interning {
            mut parts,
            links,
            words,
            threads,
            ..
        } = self.take_idle()?;
        (self.fill, self.spare) = (Chunk::new(), None);
        crate::engine::trim_heap();
        let n: usize = parts.iter().map(|p| p.meta.len()).sum();
        tracing::debug!(identities = n, "identity graph: interned, ranking");
        let threads = if n >= PARALLEL_FROM { threads } else { 1 };
        // Each partition sorted in cache, then the sorted partitions merged.
        let (mut sorted, orders): (Vec<Sorted>, Vec<Vec<u32>>) =
            par_parts(&mut parts, threads, &|_, p| {
                std::mem::take(p).into_sorted(words)
            })
            .into_iter()
            .unzip();
        drop(parts);
        crate::engine::trim_heap();
        tracing::debug!("identity graph: partitions sorted");
        let mut locate = vec![0u32; n];
        {
            // Dense id of each identity, by partition and position (filled by the merge).
            let mut ranks: Vec<Vec<u32>> = sorted.iter().map(|s| vec![0; s.len()]).collect();
            // The middle of the largest partition splits every partition in
            // two (hash partitions are samples of the same distribution).
            let (sp, spos) = sorted
                .iter()
                .enumerate()
                .max_by_key(|(_, p)| p.len())
                .map_or((0, 0), |(p, part)| (p, part.len() / 2));
            let splitter = (threads > 1 && spos > 0).then(|| sorted[sp].rank_of(spos));
            let split: Vec<usize> = sorted
                .iter()
                .map(|part| match splitter {
                    None => part.len(),
                    Some(s) => {
                        let (mut a, mut b) = (0, part.len());
                        while a < b {
                            let m = (a + b) / 2;
                            if part.rank_of(m) < s {
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
                .zip(&sorted)
                .map(|(&s, p)| (s, p.len()))
                .collect();
            let (mut ranks_lo, mut ranks_hi) = (Vec::new(), Vec::new());
            for (r, &s) in ranks.iter_mut().zip(&split) {
                let (a, b) = r.split_at_mut(s);
                ranks_lo.push(a);
                ranks_hi.push(b);
            }
            let lo_n = split.iter().sum::<usize>();
            let (locate_lo, locate_hi) = locate.split_at_mut(lo_n);
            if splitter.is_some() {
                let parts = &sorted;
                std::thread::scope(|s| {
                    s.spawn(|| merge_runs(parts, &lo, ranks_lo, 0, locate_lo));
                    merge_runs(parts, &hi, ranks_hi, lo_n as u32, locate_hi);
                });
            } else {
                merge_runs(&sorted, &lo, ranks_lo, 0, locate_lo);
            }
            for (part, r) in sorted.iter_mut().zip(ranks) {
                part.rank = r;
            }
        }
        tracing::debug!("identity graph: identities ranked");
        // The buffered links name identities by their local index while
        // interning: renumbered to dense ids, then deduplicated.
        let dense: Vec<Vec<u32>> = par_parts(&mut sorted, threads, &|p, part| {
            let mut d = vec![0u32; part.len()];
            for (&old, &rank) in orders[p].iter().zip(&part.rank) {
                d[old as usize] = rank;
            }
            d
        });
        drop(orders);
        let mut links = links;
        {
            // Two random reads a link: on every thread, each asked for ahead.
            let slot = |enc: u32| &dense[(enc >> LOCAL_BITS) as usize][(enc & LOCAL_MASK) as usize];
            let renumber = |links: &mut [RawLink]| {
                for k in 0..links.len() {
                    if let Some(l) = links.get(k + AHEAD) {
                        prefetch(slot((l.key >> 32) as u32));
                        prefetch(slot(l.key as u32));
                    }
                    let l = &mut links[k];
                    let (a, b) = (*slot((l.key >> 32) as u32), *slot(l.key as u32));
                    l.key = (u64::from(a) << 32) | u64::from(b);
                }
            };
            if threads < 2 || links.len() < PARALLEL_FROM {
                renumber(&mut links);
            } else {
                let per = links.len().div_ceil(threads);
                std::thread::scope(|s| {
                    for chunk in links.chunks_mut(per) {
                        s.spawn(|| renumber(chunk));
                    }
                });
            }
        }
        drop(dense);
        dedup_links(&mut links, threads);
        tracing::debug!(
            links = links.len(),
            "identity graph: links renumbered and deduplicated"
        );
        let links = links
            .into_iter()
            .map(|l| Link {
                anchor: (l.key >> 32) as u32,
                other: l.key as u32,
                ts: l.ts,
                dataset: l.dataset,
                status: LinkStatus::Used,
            })
            .collect();
        Ok(IdentityGraph {
            hasher: self.hasher,
            value_bytes: sorted.iter().map(|p| p.arena.len()).sum(),
            parts: sorted,
            words,
            locate,
            links,
            parent: Vec::new(),
            size: Vec::new(),
        })
    }
}

impl Interning {
    /// Intern a chunk's occurrences and record its links.
    fn intern(&mut self, chunk: &Chunk) -> Result<()> {
        let n = chunk.n;
        if n == 0 {
            return Ok(());
        }
        let mut ids = std::mem::take(&mut self.ids);
        ids.clear();
        ids.resize_with(n, || AtomicU32::new(0));
        let full = AtomicBool::new(false);
        let threads = if n >= PARALLEL_FROM { self.threads } else { 1 };
        {
            let (ids, full, words) = (&ids, &full, self.words);
            let work = |parts: &mut [Part], pending: &[Pending], first: usize| {
                for (k, (part, pending)) in parts.iter_mut().zip(pending).enumerate() {
                    let p = (first + k) as u32;
                    let mut at = 0usize;
                    let entries = &pending.entries;
                    for (j, e) in entries.iter().enumerate() {
                        // Once a partition outgrows the cache, each lookup
                        // waits on memory three times (bucket, record,
                        // value): each is asked for ahead, the record and
                        // value of the identity a bucket names as soon as
                        // that bucket is likely in.
                        if let Some(next) = entries.get(j + AHEAD) {
                            part.table.prefetch(next.hash as u32);
                        }
                        if let Some(next) = entries.get(j + AHEAD / 2) {
                            part.prefetch_record(next.hash as u32, words);
                        }
                        if let Some(next) = entries.get(j + AHEAD / 4) {
                            part.prefetch_value(next.hash as u32);
                        }
                        let v = &pending.bytes[at..at + e.len as usize];
                        at += e.len as usize;
                        match part.intern(e, v, words) {
                            Ok(local) => ids[e.occurrence as usize]
                                .store((p << LOCAL_BITS) | local, Ordering::Relaxed),
                            _ => full.store(true, Ordering::Relaxed),
                        }
                    }
                }
            };
            if threads == 1 {
                work(&mut self.parts, &chunk.pending, 0);
            } else {
                // Contiguous partition ranges with about the same number of occurrences.
                let mut cuts = vec![0usize];
                let mut seen = 0usize;
                for (p, pending) in chunk.pending.iter().enumerate() {
                    seen += pending.entries.len();
                    if seen * threads >= n * cuts.len() && cuts.len() < threads {
                        cuts.push(p + 1);
                    }
                }
                cuts.push(PARTS);
                std::thread::scope(|s| {
                    let mut parts: &mut [Part] = &mut self.parts;
                    for w in cuts.windows(2) {
                        let (lo, hi) = (w[0], w[1]);
                        let (mine, rest) = std::mem::take(&mut parts).split_at_mut(hi - lo);
                        parts = rest;
                        let (work, pending) = (&work, &chunk.pending[lo..hi]);
                        s.spawn(move || work(mine, pending, lo));
                    }
                });
            }
        }
        if full.into_inner() {
            return Err(Error::input(
                "(identity graph)",
                None,
                None,
                "more distinct identities or identity bytes than one graph holds (2^32 ids, 1 TiB of values, 32 KiB a value): split the project",
            ));
        }
        let id = |i: usize| u64::from(ids[i].load(Ordering::Relaxed));
        let ends = chunk
            .rows
            .iter()
            .skip(1)
            .map(|r| r.first as usize)
            .chain([n]);
        for (row, end) in chunk.rows.iter().zip(ends) {
            let a = row.first as usize;
            reserve_quarter(&mut self.links, end - a - 1);
            for o in a + 1..end {
                let key = (id(a) << 32) | id(o);
                self.sample.add(key);
                self.links.push(RawLink {
                    key,
                    ts: row.ts,
                    dataset: row.dataset,
                });
            }
        }
        self.ids = ids;
        if self.links.len() >= self.compact_at {
            if self.sample.worth_compacting() {
                self.sample.compacted();
                let before = self.links.len();
                dedup_links(&mut self.links, self.threads);
                // Each compaction sorts every link so far: when it removed
                // less than a quarter, the next one waits longer.
                let grow = if self.links.len() * 4 > before * 3 {
                    4
                } else {
                    2
                };
                self.compact_at = (grow * self.links.len()).max(self.min_compact);
            } else {
                // Too few repeats to pay for sorting every link: wait as
                // long as after a compaction that removed little.
                self.compact_at = (4 * self.links.len()).max(self.min_compact);
            }
        }
        Ok(())
    }
}

/// Sort by key, keep one link per key: the newest time, then the smallest
/// dataset. On several threads, the links are first split in place around a
/// sampled key and the two sides sorted side by side (equal keys stay on one
/// side, so the result is the same).
fn dedup_links(links: &mut Vec<RawLink>, threads: usize) {
    let order = |a: &RawLink, b: &RawLink| {
        a.key
            .cmp(&b.key)
            .then(b.ts.cmp(&a.ts))
            .then(a.dataset.cmp(&b.dataset))
    };
    let n = links.len();
    if threads > 1 && n >= PARALLEL_FROM {
        let mut sample: Vec<u64> = (0..1023).map(|i| links[i * (n / 1023)].key).collect();
        let (_, &mut pivot, _) = sample.select_nth_unstable(511);
        // Hoare partition: keys below the pivot first.
        let (mut i, mut j) = (0, n);
        loop {
            while i < j && links[i].key < pivot {
                i += 1;
            }
            while i < j && links[j - 1].key >= pivot {
                j -= 1;
            }
            if i >= j {
                break;
            }
            links.swap(i, j - 1);
            i += 1;
            j -= 1;
        }
        let (low, high) = links.split_at_mut(i);
        std::thread::scope(|s| {
            s.spawn(|| low.sort_unstable_by(order));
            high.sort_unstable_by(order);
        });
    } else {
        links.sort_unstable_by(order);
    }
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

/// `buf[start..start + len]`'s first 16 bytes as a big-endian word, zero-padded,
/// read as one word (bytes past the value masked off) when `buf` has 16
/// bytes from `start`, which spares copying a few bytes at a time.
#[inline]
fn word_at(buf: &[u8], start: usize, len: usize) -> u128 {
    let take = len.min(16);
    if take == 0 {
        return 0;
    }
    match buf.get(start..).and_then(|b| b.first_chunk::<16>()) {
        Some(window) => {
            u128::from_be_bytes(*window) & !(u128::MAX.checked_shr(8 * take as u32).unwrap_or(0))
        }
        _ => {
            let mut k = [0u8; 16];
            k[..take].copy_from_slice(&buf[start..start + take]);
            u128::from_be_bytes(k)
        }
    }
}

/// [`rank_key`] with a 3-byte `head` for the value `buf[start..start + len]`.
#[inline]
fn rank_key_in(head: [u8; 3], buf: &[u8], start: usize, len: usize) -> u128 {
    let value = word_at(buf, start, len.min(12)) >> 32;
    (u128::from(head[0]) << 120)
        | (u128::from(head[1]) << 112)
        | (u128::from(head[2]) << 104)
        | (value << 8)
        | len.min(13) as u128
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
            for k in 0..run.len() {
                if let Some(e) = run.get(k + AHEAD / 2) {
                    prefetch(value_of(e.1).as_ptr().wrapping_add(depth));
                }
                let e = &mut run[k];
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
///
/// The identities stay in the builder's partitions (each in rank order, as
/// columns); `locate` finds a dense id's partition and position.
#[derive(Debug, Default)]
pub struct IdentityGraph {
    hasher: DefaultHashBuilder,
    parts: Vec<Sorted>,
    words: usize,
    /// Dense id → partition (top bits) and position in it.
    locate: Vec<u32>,
    value_bytes: usize,
    links: Vec<Link>,
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl IdentityGraph {
    pub fn len(&self) -> usize {
        self.locate.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locate.is_empty()
    }

    /// Bytes of distinct identity values.
    pub fn value_bytes(&self) -> usize {
        self.value_bytes
    }

    /// Free what only stitching and the identity outputs need (links,
    /// union-find, first-seen times, dataset sets), keeping values and
    /// last-seen times.
    pub fn free_history(&mut self) {
        self.links = Vec::new();
        self.parent = Vec::new();
        self.size = Vec::new();
        for p in &mut self.parts {
            p.datasets = Vec::new();
            p.first_seen = Vec::new();
        }
    }

    /// [`Self::free_history`], and the last-seen times: what is left serves lookups.
    pub fn shrink(&mut self) {
        self.free_history();
        for p in &mut self.parts {
            p.last_seen = Vec::new();
        }
    }

    /// An identity's partition and position there.
    #[inline]
    fn at(&self, id: u32) -> (&Sorted, usize) {
        let e = self.locate[id as usize];
        (
            &self.parts[(e >> LOCAL_BITS) as usize],
            (e & LOCAL_MASK) as usize,
        )
    }

    pub fn class(&self, id: u32) -> Class {
        let (p, i) = self.at(id);
        p.class[i]
    }

    /// Namespace index.
    pub fn ns(&self, id: u32) -> u16 {
        let (p, i) = self.at(id);
        p.ns[i]
    }

    /// Ask for where `id`'s value ends and when it was last seen (the
    /// value itself is asked for through [`Self::prefetch_value`]).
    pub fn prefetch_identity(&self, id: u32) {
        let (part, pos) = self.at(id);
        part.prefetch_value_and_seen(pos);
    }

    /// Ask for the first line of `id`'s value (its end must be in cache).
    pub fn prefetch_value(&self, id: u32) {
        let (part, pos) = self.at(id);
        prefetch(part.arena.as_ptr().wrapping_add(part.start(pos)));
    }

    /// The ids of one class and namespace: a range, since ids are ranks.
    pub fn ns_ids(&self, class: Class, ns: u16) -> std::ops::Range<u32> {
        let head = |class: Class, ns: u16| (u32::from(class as u8) << 16) | u32::from(ns);
        let first_at = |key: u32| -> u32 {
            let (mut a, mut b) = (0u32, self.len() as u32);
            while a < b {
                let m = a + (b - a) / 2;
                if head(self.class(m), self.ns(m)) < key {
                    a = m + 1;
                } else {
                    b = m;
                }
            }
            a
        };
        let at = head(class, ns);
        first_at(at)..first_at(at + 1)
    }

    /// Earliest record time the identity was seen at (until [`Self::free_history`]).
    pub fn first_seen(&self, id: u32) -> i64 {
        let (p, i) = self.at(id);
        p.first_seen[i]
    }

    /// Latest record time the identity was seen at (until [`Self::shrink`]).
    pub fn last_seen(&self, id: u32) -> i64 {
        let (p, i) = self.at(id);
        p.last_seen[i]
    }

    /// Every identity's id and first-seen time, partition by partition
    /// (each read front to back; ids in no particular order). Until
    /// [`Self::free_history`], like [`Self::first_seen`].
    pub fn first_seen_all(&self) -> impl Iterator<Item = (u32, i64)> + '_ {
        self.parts
            .iter()
            .flat_map(|p| p.rank.iter().copied().zip(p.first_seen.iter().copied()))
    }

    /// Class, namespace index and value, the identity located once (what
    /// [`Self::class`], [`Self::ns`] and [`Self::value`] give one by one).
    pub fn identity(&self, id: u32) -> (Class, u16, &str) {
        let (p, i) = self.at(id);
        // SAFETY: as in `value`.
        let value = unsafe { std::str::from_utf8_unchecked(p.value(i)) };
        (p.class[i], p.ns[i], value)
    }

    /// [`Self::identity`] of each of `ids`, in order. Ids in no order (a
    /// link's other end) each wait on memory three times (where the identity
    /// is, its class and namespace, where its value ends): each is asked for
    /// ahead, in stages, and then the value's first line, for a caller that
    /// reads it soon.
    pub fn identities(&self, ids: &[u32]) -> Vec<(Class, u16, &str)> {
        let mut out = Vec::with_capacity(ids.len());
        for (j, &id) in ids.iter().enumerate() {
            if let Some(&k) = ids.get(j + 2 * AHEAD) {
                prefetch(self.locate.as_ptr().wrapping_add(k as usize));
            }
            if let Some(&k) = ids.get(j + AHEAD) {
                let (p, i) = self.at(k);
                prefetch(p.ends.as_ptr().wrapping_add(i.saturating_sub(1)));
                prefetch(p.class.as_ptr().wrapping_add(i));
                prefetch(p.ns.as_ptr().wrapping_add(i));
            }
            if let Some(&k) = ids.get(j + AHEAD / 2) {
                self.prefetch_value(k);
            }
            out.push(self.identity(id));
        }
        out
    }

    pub fn value(&self, id: u32) -> &str {
        let (p, i) = self.at(id);
        // SAFETY: arenas only ever receive whole `&str`s (see `add_row`), and
        // `ends` holds the boundaries between them, so every slice is UTF-8.
        unsafe { std::str::from_utf8_unchecked(p.value(i)) }
    }

    /// The id of an identity, if it has been seen.
    pub fn get(&self, class: Class, ns: u16, value: &str) -> Option<u32> {
        let hash = key_hash(&self.hasher, class, ns, value.as_bytes());
        let part = self.parts.get(part_of(hash))?;
        part.table
            .find(hash as u32, |pos| {
                let pos = pos as usize;
                part.class[pos] == class
                    && part.ns[pos] == ns
                    && part.value(pos) == value.as_bytes()
            })
            .map(|pos| part.rank[pos as usize])
    }

    /// The datasets the identity was seen in, by index, ascending (until
    /// [`Self::free_history`]).
    pub fn datasets_of(&self, id: u32) -> impl Iterator<Item = u16> + '_ {
        let (p, i) = self.at(id);
        p.datasets[i * self.words..(i + 1) * self.words]
            .iter()
            .enumerate()
            .flat_map(|(w, &word)| {
                std::iter::successors((word != 0).then_some(word), |&b| {
                    let rest = b & (b - 1);
                    (rest != 0).then_some(rest)
                })
                .map(move |b| (w * WORD_BITS + b.trailing_zeros() as usize) as u16)
            })
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
        let mut quarantine: Vec<Option<Quarantine>> = vec![None; n];
        let mut any = !never_values.is_empty();
        // Every identity's degree when a namespace has a limit; otherwise
        // only the never-link values' (4 bytes an identity and a pass with
        // random writes saved). Kept for the quarantined identities only.
        let mut degree: HashMap<u32, u32> = never_values.iter().map(|&v| (v, 0)).collect();
        if rules.iter().any(|r| r.max_links.is_some()) {
            let mut all = vec![0u32; n];
            // The links are in anchor order; their other ends are all over.
            for (k, l) in self.links.iter().enumerate() {
                if let Some(next) = self.links.get(k + AHEAD) {
                    prefetch(all.as_ptr().wrapping_add(next.other as usize));
                }
                all[l.anchor as usize] += 1;
                all[l.other as usize] += 1;
            }
            // Only namespaces with a limit are looked at (each is a range of ids).
            for class in [Class::Customer, Class::Prospect] {
                for (ns, rule) in rules.iter().enumerate() {
                    let Some(max) = rule.max_links else { continue };
                    for id in self.ns_ids(class, ns as u16) {
                        if u64::from(all[id as usize]) > max && !allow(id) {
                            quarantine[id as usize] = Some(Quarantine::MaxLinks);
                            degree.insert(id, all[id as usize]);
                            any = true;
                        }
                    }
                }
            }
            for &v in never_values {
                degree.insert(v, all[v as usize]);
            }
        } else if !degree.is_empty() {
            for l in &self.links {
                for end in [l.anchor, l.other] {
                    if let Some(d) = degree.get_mut(&end) {
                        *d += 1;
                    }
                }
            }
        }
        for &v in never_values {
            quarantine[v as usize] = Some(Quarantine::NeverLink);
        }
        // Every link is `Used` until here.
        let mut links = std::mem::take(&mut self.links);
        if any {
            for l in &mut links {
                if quarantine[l.anchor as usize].is_some() || quarantine[l.other as usize].is_some()
                {
                    l.status = LinkStatus::Quarantined;
                }
            }
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
    /// union-find runs otherwise: either way each root is its component's
    /// smallest id. Constrained, links are applied in time order here (union
    /// by size: roots are members, not necessarily the smallest).
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
        if !constrained {
            // Rem's union-find with splicing: parents only ever point to
            // smaller ids, so each root is its component's smallest id (as the
            // cluster's rounds give) and one pass front to back finds them all.
            let mut parent: Vec<u32> = (0..n as u32).collect();
            for (k, l) in links.iter().enumerate() {
                if let Some(next) = links.get(k + AHEAD) {
                    prefetch(parent.as_ptr().wrapping_add(next.other as usize));
                }
                if l.status == LinkStatus::Used {
                    rem_unite(&mut parent, l.anchor, l.other);
                }
            }
            for i in 0..n {
                parent[i] = parent[parent[i] as usize];
            }
            st.roots = parent;
            return;
        }
        self.parent = (0..n as u32).collect();
        self.size = vec![1; n];
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
            if unique_ns[self.ns(id) as usize] {
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
                    .find(|&&y| self.ns(x) == self.ns(y))
                    .map(|_| self.ns(x))
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
        st.roots = (0..n as u32).map(|i| self.find(i)).collect();
        links.sort_unstable_by_key(|l| (u64::from(l.anchor) << 32) | u64::from(l.other));
        (self.parent, self.size) = (Vec::new(), Vec::new());
    }
}

/// Join the components of `x` and `y` (Rem's algorithm with splicing, after
/// Patwary, Blair and Manne, "Experiments on Union-Find Algorithms for the
/// Disjoint-Set Data Structure", 2010): walk up both sides at once, always
/// from the side whose parent is larger, hanging that node under the other
/// side's parent. `parent[i] <= i` before and after.
fn rem_unite(parent: &mut [u32], x: u32, y: u32) {
    let (mut rx, mut ry) = (x as usize, y as usize);
    loop {
        let (px, py) = (parent[rx], parent[ry]);
        if px == py {
            return;
        }
        if px > py {
            parent[rx] = py;
            if px as usize == rx {
                return;
            }
            rx = px as usize;
        } else {
            parent[ry] = px;
            if py as usize == ry {
                return;
            }
            ry = py as usize;
        }
    }
}

/// The result of [`IdentityGraph::stitch`].
#[derive(Debug, Clone)]
pub struct Stitching {
    pub links: Vec<Link>,
    /// Each quarantined identity's degree (distinct identities directly linked).
    pub degree: HashMap<u32, u32>,
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
        assert_eq!(g.first_seen(a), 0);
        assert_eq!(g.datasets_of(a).collect::<Vec<_>>(), vec![0, 1, 70]);
        assert_eq!(g.link_count(), 1, "a pair linked twice is one link");
        let s = g.stitch(&[NsRules::default(), NsRules::default()], &[], &[], &|_| {
            false
        });
        assert_eq!(s.roots[a as usize], s.roots[bb as usize]);
        assert_ne!(s.roots[a as usize], s.roots[c as usize]);
        assert_eq!(s.links[0].ts, 5, "the newest time is kept");
    }

    /// The batch lookup the outputs use gives what one-by-one lookups give,
    /// for ids in no order and repeated, shorter and longer than how far it
    /// asks ahead.
    #[test]
    fn identity_batch_lookup_matches_one_by_one() {
        let mut b = GraphBuilder::new(1, 2);
        for i in 0..500u32 {
            let class = if i % 7 == 0 {
                Class::Prospect
            } else {
                Class::Customer
            };
            let (a, o) = (format!("a{i}"), format!("other-{}", i * 31));
            b.add_row(class, 0, 0, [(0, a.as_str()), (2, o.as_str())])
                .unwrap();
        }
        let g = b.finish().unwrap();
        let n = g.len() as u32;
        let scrambled: Vec<u32> = (0..2 * n).map(|i| (i * 389 + 11) % n).collect();
        for ids in [
            &scrambled[..],
            &scrambled[..3],
            &[][..],
            &scrambled[..2 * AHEAD + 1],
        ] {
            let one_by_one: Vec<_> = ids.iter().map(|&i| g.identity(i)).collect();
            assert_eq!(g.identities(ids), one_by_one);
        }
    }

    /// A quarantined identity's degree counts its distinct neighbours, with
    /// or without a `max_links` somewhere (without one, only the never-link
    /// values' degrees are counted).
    #[test]
    fn identity_quarantined_degrees_with_and_without_limits() {
        let build = || {
            let mut b = GraphBuilder::new(1, 1);
            b.add_row(Class::Customer, 1, 0, [(0, "hub"), (1, "x")])
                .unwrap();
            b.add_row(Class::Customer, 2, 0, [(0, "hub"), (1, "y")])
                .unwrap();
            b.add_row(Class::Customer, 3, 0, [(0, "hub"), (1, "y")])
                .unwrap();
            b.add_row(Class::Customer, 4, 0, [(0, "lone"), (1, "x")])
                .unwrap();
            // The hub as a link's other end too.
            b.add_row(Class::Customer, 5, 0, [(1, "z"), (0, "hub")])
                .unwrap();
            b.finish().unwrap()
        };
        let limited = NsRules {
            max_links: Some(1),
            ..NsRules::default()
        };
        for rules in [
            vec![NsRules::default(), NsRules::default()],
            vec![limited.clone(), NsRules::default()],
            vec![NsRules::default(), limited],
        ] {
            let mut g = build();
            let (hub, lone) = (
                g.get(Class::Customer, 0, "hub").unwrap(),
                g.get(Class::Customer, 0, "lone").unwrap(),
            );
            let x = g.get(Class::Customer, 1, "x").unwrap();
            let s = g.stitch(&rules, &[hub], &[], &|_| false);
            assert_eq!(s.degree.get(&hub), Some(&3), "{rules:?}");
            assert_eq!(s.quarantine[hub as usize], Some(Quarantine::NeverLink));
            match rules[1].max_links {
                Some(_) => {
                    assert_eq!(s.quarantine[x as usize], Some(Quarantine::MaxLinks));
                    assert_eq!(s.degree.get(&x), Some(&2));
                }
                None => assert_eq!(s.degree.get(&x), None, "not quarantined, not kept"),
            }
            assert_eq!(s.degree.get(&lone), None);
        }
    }

    #[test]
    fn paged_arrays_and_arenas_keep_every_item_across_pages() {
        let mut p: Paged<u64> = Paged::default();
        for i in 0..3 * PAGE as u64 + 5 {
            p.push(i * 7);
        }
        assert_eq!(p.len(), 3 * PAGE + 5);
        assert_eq!(p.pages.len(), 4);
        assert!(p.pages.iter().all(|page| page.capacity() <= PAGE));
        *p.get_mut(PAGE) += 1;
        assert_eq!(*p.get(PAGE), PAGE as u64 * 7 + 1);
        assert_eq!(*p.get(3 * PAGE + 4), (3 * PAGE as u64 + 4) * 7);

        let mut a = Arena::default();
        let values: Vec<Vec<u8>> = (0..400u32)
            .map(|i| vec![(i % 251) as u8; (i as usize * 997) % 3000])
            .chain([vec![9u8; usize::from(u16::MAX)], vec![8u8; 1]])
            .collect();
        let at: Vec<u32> = values.iter().map(|v| a.push(v).unwrap()).collect();
        for (v, &at) in values.iter().zip(&at) {
            assert_eq!(a.get(at, v.len() as u16), &v[..]);
        }
        assert!(a.pages.iter().all(|page| page.len() <= ARENA_PAGE));
        assert_eq!(a.bytes, values.iter().map(Vec::len).sum::<usize>());
    }

    #[test]
    fn table_finds_every_key_through_growth_spills_and_shared_bits() {
        // Keys 0..n: hashes crowd a few home buckets (a full bucket spills to
        // the next) and many share their top bits, so only `eq` tells them apart.
        let hash = |k: u32| (k % 7) | ((k % 3) << 30);
        let mut t = Table::default();
        let n = 2_000u32;
        for k in 0..n {
            match t.probe(hash(k), |i| i == k) {
                Probe::Found(i) => panic!("{k} found as {i} before it was added"),
                Probe::Vacant(b, s) => t.push(hash(k), (b, s), hash),
            }
        }
        assert_eq!(t.len, n as usize);
        for k in 0..n {
            assert_eq!(t.find(hash(k), |i| i == k), Some(k));
        }
        assert_eq!(t.find(hash(n), |i| i == n), None);
        t.renumber(|i| n - 1 - i);
        for k in 0..n {
            assert_eq!(t.find(hash(k), |i| i == n - 1 - k), Some(n - 1 - k));
        }
    }

    #[test]
    fn link_sample_tells_repeated_links_from_distinct_ones() {
        let mut distinct = LinkSample::default();
        for k in 0..1_000_000u64 {
            distinct.add(k * 7919);
        }
        assert!(!distinct.worth_compacting());
        let mut repeated = LinkSample::default();
        for k in 0..1_000_000u64 {
            repeated.add((k % 500_000) * 7919);
        }
        assert!(repeated.worth_compacting(), "half the links are repeats");
        repeated.compacted();
        assert!(!repeated.worth_compacting());
        // A sample too small to tell: compact, as before sampling.
        let mut few = LinkSample::default();
        (0..1_000u64).for_each(|k| few.add(k));
        assert!(few.worth_compacting());
    }

    #[test]
    fn a_value_past_32_kib_is_an_error_not_a_panic() {
        for (len, fits) in [(MAX_VALUE, true), (MAX_VALUE + 1, false), (70_000, false)] {
            let mut b = GraphBuilder::new(1, 1);
            let long = "x".repeat(len);
            for class in [Class::Customer, Class::Prospect] {
                b.add_row(class, 0, 0, [(0, "a"), (1, long.as_str())])
                    .unwrap();
            }
            match b.finish() {
                // The class bit beside the length keeps the two apart.
                Ok(g) => {
                    assert!(fits, "{len}");
                    assert_eq!(g.len(), 4);
                    assert_eq!(g.get(Class::Prospect, 1, &long), Some(3));
                }
                Err(e) => {
                    assert!(!fits, "{len}: {e}");
                    assert!(e.to_string().contains("32 KiB a value"), "{e}");
                }
            }
        }
    }

    #[test]
    fn large_graphs_intern_the_same_on_one_thread_and_many() {
        let build = |threads| {
            let mut b = GraphBuilder::new(1, threads);
            if threads > 1 {
                b = b.with_chunk(70_000, 100_000);
            }
            for i in 0..300_000u32 {
                // The last 50k rows repeat the first 50k later (the newest time is kept).
                let j = if i >= 250_000 { i - 250_000 } else { i };
                // x values share 20 bytes, so the merge and its split compare whole values.
                let (x, y) = (
                    format!("x-long-shared-prefix{}", j % 70_001),
                    format!("y{}", j % 90_007),
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
        assert_eq!(one.value_bytes(), two.value_bytes());
        for i in 0..one.len() as u32 {
            assert_eq!(
                (one.value(i), one.first_seen(i), one.last_seen(i)),
                (two.value(i), two.first_seen(i), two.last_seen(i))
            );
            assert_eq!(one.get(one.class(i), one.ns(i), one.value(i)), Some(i));
        }
        assert_eq!(one.links, two.links);
        assert_eq!(one.links.len(), 250_000);
        let x0 = one
            .get(Class::Customer, 0, "x-long-shared-prefix0")
            .unwrap();
        let y0 = one.get(Class::Customer, 1, "y0").unwrap();
        let l = one
            .links
            .iter()
            .find(|l| (l.anchor, l.other) == (x0, y0))
            .unwrap();
        assert_eq!(l.ts, 250_000);
        for i in 1..one.len() as u32 {
            let key = |i: u32| (one.class(i), one.ns(i), one.value(i));
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
                .map(|i| (g.class(i), g.ns(i), g.value(i).to_owned()))
                .collect();
            proptest::prop_assert_eq!(&got, &want);
            for (i, (c, ns, v)) in want.iter().enumerate() {
                proptest::prop_assert_eq!(g.get(*c, *ns, v), Some(i as u32));
            }
        }

        /// Rem's union-find keeps parents below their children, and its
        /// roots are each component's smallest id (what label propagation
        /// to the minimum, the cluster's way, gives).
        #[test]
        fn rem_union_find_roots_are_smallest_ids(
            edges in proptest::collection::vec((0u32..60, 0u32..60), 0..150),
        ) {
            let n = 60usize;
            let mut parent: Vec<u32> = (0..n as u32).collect();
            for &(a, b) in &edges {
                rem_unite(&mut parent, a, b);
                proptest::prop_assert!(parent.iter().enumerate().all(|(i, &p)| p as usize <= i));
            }
            for i in 0..n {
                parent[i] = parent[parent[i] as usize];
            }
            let mut label: Vec<u32> = (0..n as u32).collect();
            let mut changed = true;
            while changed {
                changed = false;
                for &(a, b) in &edges {
                    let m = label[a as usize].min(label[b as usize]);
                    if label[a as usize] != m || label[b as usize] != m {
                        (label[a as usize], label[b as usize], changed) = (m, m, true);
                    }
                }
            }
            proptest::prop_assert_eq!(parent, label);
        }

        #[test]
        fn rank_keys_read_as_words_equal_rank_keys(
            buf in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            start in 0usize..64,
            len in 0usize..40,
            head in proptest::array::uniform3(proptest::num::u8::ANY),
        ) {
            let start = start.min(buf.len());
            let len = len.min(buf.len() - start);
            proptest::prop_assert_eq!(
                rank_key_in(head, &buf, start, len),
                rank_key(&head, &buf[start..start + len])
            );
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
