//! The identity graph: interned identities, deduplicated links, hub
//! quarantine, and connected components with or without constraints.
//!
//! Identities are interned per `(class, namespace, value)` into dense `u32`
//! ids over one string arena (no allocation per lookup). Classes never share an
//! id, so a prospect never joins a customer. A link is a distinct
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

/// Interned identities, their links, and the union-find.
#[derive(Debug, Default)]
pub struct IdentityGraph {
    hasher: DefaultHashBuilder,
    table: HashTable<u32>,
    arena: Vec<u8>,
    /// `offsets[i]..offsets[i + 1]` is identity `i`'s value in `arena`.
    offsets: Vec<usize>,
    /// Hash of every identity's key, so that growing the table never rehashes strings.
    hashes: Vec<u64>,
    pub class: Vec<Class>,
    pub ns: Vec<u16>,
    pub first_seen: Vec<i64>,
    pub last_seen: Vec<i64>,
    /// Source datasets: 64 per word, `datasets[word][identity]`.
    datasets: Vec<Vec<u64>>,
    links: HashMap<u64, (i64, u16)>,
    parent: Vec<u32>,
    size: Vec<u32>,
}

fn key_hash(h: &DefaultHashBuilder, class: Class, ns: u16, value: &[u8]) -> u64 {
    h.hash_one((class as u8, ns, value))
}

impl IdentityGraph {
    pub fn new() -> Self {
        IdentityGraph {
            offsets: vec![0],
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.class.len()
    }

    /// Bytes of distinct identity values.
    pub fn value_bytes(&self) -> usize {
        self.arena.len()
    }

    /// Free what only stitching needs (links, union-find, dataset sets), keeping lookups.
    pub fn shrink(&mut self) {
        self.hashes.shrink_to_fit();
        self.links = HashMap::new();
        self.parent = Vec::new();
        self.size = Vec::new();
        self.datasets = Vec::new();
        self.first_seen = Vec::new();
        self.last_seen = Vec::new();
    }

    pub fn is_empty(&self) -> bool {
        self.class.is_empty()
    }

    pub fn value(&self, id: u32) -> &str {
        let (s, e) = (self.offsets[id as usize], self.offsets[id as usize + 1]);
        // SAFETY: the arena only ever receives whole `&str`s (see `intern`), and
        // `offsets` holds the boundaries between them, so every slice is UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.arena[s..e]) }
    }

    /// The id of an identity, if it has been seen.
    pub fn get(&self, class: Class, ns: u16, value: &str) -> Option<u32> {
        let hash = key_hash(&self.hasher, class, ns, value.as_bytes());
        self.table
            .find(hash, |&id| {
                self.class[id as usize] == class
                    && self.ns[id as usize] == ns
                    && self.value(id) == value
            })
            .copied()
    }

    /// Intern an identity seen at `ts` in dataset `dataset`, returning its id.
    pub fn intern(&mut self, class: Class, ns: u16, value: &str, ts: i64, dataset: u16) -> u32 {
        let hash = key_hash(&self.hasher, class, ns, value.as_bytes());
        let found = {
            let (arena, offsets, classes, nss) =
                (&self.arena, &self.offsets, &self.class, &self.ns);
            self.table
                .find(hash, |&id| {
                    let i = id as usize;
                    classes[i] == class
                        && nss[i] == ns
                        && &arena[offsets[i]..offsets[i + 1]] == value.as_bytes()
                })
                .copied()
        };
        let id = match found {
            Some(id) => {
                let i = id as usize;
                self.first_seen[i] = self.first_seen[i].min(ts);
                self.last_seen[i] = self.last_seen[i].max(ts);
                id
            }
            None => {
                let id = self.class.len() as u32;
                self.arena.extend_from_slice(value.as_bytes());
                self.offsets.push(self.arena.len());
                self.class.push(class);
                self.ns.push(ns);
                self.first_seen.push(ts);
                self.last_seen.push(ts);
                for w in &mut self.datasets {
                    w.push(0);
                }
                self.hashes.push(hash);
                let hashes = &self.hashes;
                self.table
                    .insert_unique(hash, id, |&other| hashes[other as usize]);
                id
            }
        };
        let word = dataset as usize / 64;
        while self.datasets.len() <= word {
            self.datasets.push(vec![0; self.class.len()]);
        }
        self.datasets[word][id as usize] |= 1 << (dataset % 64);
        id
    }

    /// Dataset indexes an identity was seen in.
    pub fn datasets_of(&self, id: u32) -> Vec<u16> {
        let mut out = Vec::new();
        for (w, words) in self.datasets.iter().enumerate() {
            let mut bits = words[id as usize];
            while bits != 0 {
                out.push((w * 64 + bits.trailing_zeros() as usize) as u16);
                bits &= bits - 1;
            }
        }
        out
    }

    /// Record a link from a row's anchor to another of its identities.
    pub fn link(&mut self, anchor: u32, other: u32, ts: i64, dataset: u16) {
        let key = (u64::from(anchor) << 32) | u64::from(other);
        self.links
            .entry(key)
            .and_modify(|(t, d)| {
                if ts > *t || (ts == *t && dataset < *d) {
                    *t = ts;
                    *d = dataset;
                }
            })
            .or_insert((ts, dataset));
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

    /// Rank of every identity: position in (class, namespace index, value) order.
    /// Namespace indexes follow priority, then name, so rank is the anchor order.
    pub fn ranks(&self) -> (Vec<u32>, Vec<u32>) {
        // Class, namespace and the value's first 8 bytes in one number (byte order
        // preserved); whole values are compared only when those are equal.
        let key: Vec<u128> = (0..self.len())
            .map(|i| {
                let v = self.value(i as u32).as_bytes();
                let mut prefix = [0u8; 8];
                let k = v.len().min(8);
                prefix[..k].copy_from_slice(&v[..k]);
                (u128::from(self.class[i] as u8) << 80)
                    | (u128::from(self.ns[i]) << 64)
                    | u128::from(u64::from_be_bytes(prefix))
            })
            .collect();
        let mut order: Vec<u32> = (0..self.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            key[a as usize]
                .cmp(&key[b as usize])
                .then_with(|| self.value(a).cmp(self.value(b)))
        });
        let mut rank = vec![0u32; order.len()];
        for (r, &id) in order.iter().enumerate() {
            rank[id as usize] = r as u32;
        }
        (order, rank)
    }

    /// Stitch: quarantine hubs and never-link values, then join components.
    ///
    /// `never_values` are identities never linked to anything; `never_pairs`
    /// must never share a profile. Returns every link with its status, sorted by
    /// (anchor rank, other rank), the degree of every identity, the quarantine
    /// reasons, and the component root of every identity.
    pub fn stitch(
        &mut self,
        rules: &[NsRules],
        never_values: &[u32],
        never_pairs: &[(u32, u32)],
        allow: &dyn Fn(u32) -> bool,
        rank: &[u32],
    ) -> Stitching {
        let n = self.len();
        let mut degree = vec![0u32; n];
        for &key in self.links.keys() {
            degree[(key >> 32) as usize] += 1;
            degree[(key & 0xFFFF_FFFF) as usize] += 1;
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
        let link_map = std::mem::take(&mut self.links);
        let mut links: Vec<Link> = link_map
            .iter()
            .map(|(&key, &(ts, dataset))| {
                let (anchor, other) = ((key >> 32) as u32, (key & 0xFFFF_FFFF) as u32);
                let status = if quarantine[anchor as usize].is_some()
                    || quarantine[other as usize].is_some()
                {
                    LinkStatus::Quarantined
                } else {
                    LinkStatus::Used
                };
                Link {
                    anchor,
                    other,
                    ts,
                    dataset,
                    status,
                }
            })
            .collect();
        self.parent = (0..n as u32).collect();
        self.size = vec![1; n];
        let constrained = !never_pairs.is_empty() || rules.iter().any(|r| r.unique);
        if !constrained {
            for l in &links {
                if l.status == LinkStatus::Used {
                    self.union(l.anchor, l.other);
                }
            }
        } else {
            // Newest first; ties by the linked identity's rank, then the anchor's.
            // Keys computed once per link: (newest first, other's rank, anchor's rank).
            links.sort_by_cached_key(|l| {
                (
                    std::cmp::Reverse(l.ts),
                    (u64::from(rank[l.other as usize]) << 32) | u64::from(rank[l.anchor as usize]),
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
        let roots: Vec<u32> = (0..n as u32).map(|i| self.find(i)).collect();
        links.sort_by_cached_key(|l| {
            (u64::from(rank[l.anchor as usize]) << 32) | u64::from(rank[l.other as usize])
        });
        Stitching {
            links,
            degree,
            quarantine,
            roots,
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
        let mut g = IdentityGraph::new();
        let a = g.intern(Class::Customer, 0, "a", 1, 0);
        let b = g.intern(Class::Customer, 1, "b", 2, 1);
        let c = g.intern(Class::Customer, 1, "c", 3, 0);
        let p = g.intern(Class::Prospect, 0, "a", 4, 2);
        assert_ne!(a, p, "classes never share an identity");
        assert_eq!(g.intern(Class::Customer, 0, "a", 0, 70), a);
        assert_eq!(g.first_seen[a as usize], 0);
        assert_eq!(g.datasets_of(a), vec![0, 70]);
        assert_eq!(g.get(Class::Customer, 1, "c"), Some(c));
        g.link(a, b, 5, 0);
        g.link(a, b, 3, 1);
        assert_eq!(g.link_count(), 1, "a pair linked twice is one link");
        let (_, rank) = g.ranks();
        let s = g.stitch(
            &[NsRules::default(), NsRules::default()],
            &[],
            &[],
            &|_| false,
            &rank,
        );
        assert_eq!(s.roots[a as usize], s.roots[b as usize]);
        assert_ne!(s.roots[a as usize], s.roots[c as usize]);
        assert_eq!(s.links[0].ts, 5, "the newest time is kept");
    }
}
