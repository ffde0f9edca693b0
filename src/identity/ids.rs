//! Profile ids: deterministic, not personal data, and stable across runs.
//!
//! A fresh id is 32 hex characters of SHA-256 over a fixed prefix, the class and
//! the component's representative identity: its earliest-seen identity (ties:
//! rank, i.e. namespace priority, namespace name, value). With the previous
//! run's identity map ([`Previous`]):
//!
//! * every previous id goes to the component holding most of the identities
//!   that carried it (ties: the component whose best-ranked identity ranks
//!   first), so when a profile splits, the larger part keeps the id;
//! * a component given several previous ids (a merge) keeps the one carried by
//!   most of its identities (ties: the smallest id); the others retire;
//! * a component with no previous id gets a fresh one; a fresh id never reuses
//!   an id of the previous map (on a clash the hash is salted with `#1`, `#2`, ...).
//!
//! So a component that only grows keeps its id, and the same input with the
//! same previous map gives byte-identical ids.

use std::collections::{BTreeMap, HashMap, HashSet};

use sha2::{Digest, Sha256};

use super::graph::IdentityGraph;
use crate::config::Class;

/// The previous run's ids, as 128-bit numbers (ids are 32 hex characters).
#[derive(Debug, Default)]
pub struct Previous {
    /// Index into `ids` of each identity of this run (`u32::MAX`: not in the previous map).
    pub by_identity: Vec<u32>,
    /// Distinct previous ids.
    pub ids: Vec<u128>,
    /// Every previous id, so that a fresh id never reuses one.
    pub all: HashSet<u128>,
}

/// A profile id as a number (`None` if it is not 32 hex characters).
pub fn id_number(id: &str) -> Option<u128> {
    (id.len() == 32)
        .then(|| u128::from_str_radix(id, 16).ok())
        .flatten()
}

/// A number as a profile id.
pub fn id_text(n: u128) -> String {
    format!("{n:032x}")
}

/// A fresh profile id.
pub fn fresh_id(class: Class, namespace: &str, value: &str, salt: u32) -> String {
    let mut h = Sha256::new();
    h.update(b"audience-profile-v1\x1f");
    h.update(class.as_str().as_bytes());
    h.update([0x1f]);
    h.update(namespace.as_bytes());
    h.update([0x1f]);
    h.update(value.as_bytes());
    if salt > 0 {
        h.update(format!("#{salt}").as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Profiles: components numbered in order of their best-ranked identity.
#[derive(Debug)]
pub struct Profiles {
    /// Profile number of every identity.
    pub of: Vec<u32>,
    /// Profile id by profile number.
    pub ids: Vec<String>,
}

/// Assign a profile id to every component.
///
/// `order` lists identities by rank; `roots[i]` is identity `i`'s component root.
pub fn assign(
    graph: &IdentityGraph,
    ns_names: &[&str],
    roots: &[u32],
    order: &[u32],
    previous: Option<&Previous>,
) -> Profiles {
    const NONE: u32 = u32::MAX;
    let n = roots.len();
    // Number components in order of their best-ranked identity; representative per component.
    let mut number = vec![NONE; n];
    let mut rep: Vec<u32> = Vec::new();
    for &i in order {
        let r = roots[i as usize] as usize;
        if number[r] == NONE {
            number[r] = rep.len() as u32;
            rep.push(i);
        } else {
            let c = number[r] as usize;
            if graph.first_seen[i as usize] < graph.first_seen[rep[c] as usize] {
                rep[c] = i;
            }
        }
    }
    let of: Vec<u32> = roots.iter().map(|&r| number[r as usize]).collect();
    drop(number);
    let mut ids: Vec<Option<String>> = vec![None; rep.len()];
    let empty = HashSet::new();
    let old_ids: &HashSet<u128> = previous.map(|p| &p.all).unwrap_or(&empty);
    if let Some(prev) = previous {
        // (old id, profile) → identities carrying it.
        let mut counts: HashMap<(u32, u32), u64> = HashMap::new();
        for (id, &old) in prev.by_identity.iter().enumerate() {
            if old != NONE {
                *counts.entry((old, of[id])).or_default() += 1;
            }
        }
        // Each old id to the profile with most of its identities (ties: the earlier profile).
        let mut best: BTreeMap<u32, (u64, u32)> = BTreeMap::new();
        for (&(old, p), &k) in &counts {
            let e = best.entry(old).or_insert((k, p));
            if k > e.0 || (k == e.0 && p < e.1) {
                *e = (k, p);
            }
        }
        // Each profile keeps the old id with most identities (ties: the smallest id).
        // Numbers compare like the fixed-width hex ids they stand for.
        let mut survivor: BTreeMap<u32, (u64, u128)> = BTreeMap::new();
        for (&old, &(k, p)) in &best {
            let id = prev.ids[old as usize];
            let e = survivor.entry(p).or_insert((k, id));
            if k > e.0 || (k == e.0 && id < e.1) {
                *e = (k, id);
            }
        }
        for (p, (_, id)) in survivor {
            ids[p as usize] = Some(id_text(id));
        }
    }
    let mut used: HashSet<u128> = HashSet::new();
    for (p, slot) in ids.iter_mut().enumerate() {
        if slot.is_some() {
            continue;
        }
        let i = rep[p] as usize;
        let (class, ns, value) = (
            graph.class[i],
            ns_names[graph.ns[i] as usize],
            graph.value(i as u32),
        );
        let mut salt = 0;
        let mut id = fresh_id(class, ns, value, salt);
        while id_number(&id).is_some_and(|k| used.contains(&k) || old_ids.contains(&k)) {
            salt += 1;
            id = fresh_id(class, ns, value, salt);
        }
        used.extend(id_number(&id));
        *slot = Some(id);
    }
    Profiles {
        of,
        ids: ids.into_iter().map(Option::unwrap_or_default).collect(),
    }
}
