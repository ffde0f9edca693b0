//! Property tests: the identity graph against a naive reference on random graphs.
//!
//! The reference keeps an explicit component label per identity and relabels on
//! every merge (no union-find, no per-root bookkeeping), computes degrees from
//! the distinct pairs, and applies links in the documented order.

use std::collections::{BTreeMap, BTreeSet};

use audience::config::Class;
use audience::identity::graph::{GraphBuilder, IdentityGraph, LinkStatus, NsRules};
use proptest::prelude::*;

/// A random record: (namespace, value) identities, a time, and whether it
/// is a prospect's (the same value in both classes is two identities).
type Record = (Vec<(u16, u8)>, i64, bool);

fn records() -> impl Strategy<Value = Vec<Record>> {
    prop::collection::vec(
        (
            prop::collection::vec((0u16..3, 0u8..12), 1..4),
            0i64..6,
            prop::bool::weighted(0.2),
        ),
        0..40,
    )
}

fn class(prospect: bool) -> Class {
    if prospect {
        Class::Prospect
    } else {
        Class::Customer
    }
}

/// A record's identities (sorted, distinct), time and class.
type Row = (Vec<(u16, String)>, i64, Class);

struct Case {
    graph: IdentityGraph,
    /// Distinct (anchor, other) → newest time.
    links: BTreeMap<(u32, u32), i64>,
}

fn build(recs: &[Record]) -> Case {
    let mut builder = GraphBuilder::new(1, 2);
    let rows: Vec<Row> = recs
        .iter()
        .map(|(ids, ts, prospect)| {
            let mut ids = ids.clone();
            ids.sort();
            ids.dedup();
            (
                ids.iter()
                    .map(|(ns, v)| (*ns, format!("v{v:02}")))
                    .collect(),
                *ts,
                class(*prospect),
            )
        })
        .collect();
    for (ids, ts, class) in &rows {
        builder
            .add_row(*class, *ts, 0, ids.iter().map(|(ns, v)| (*ns, v.as_str())))
            .expect("add");
    }
    let graph = builder.finish().expect("finish");
    let mut links = BTreeMap::new();
    for (ids, ts, class) in &rows {
        let id = |(ns, v): &(u16, String)| graph.get(*class, *ns, v).expect("interned");
        for o in &ids[1..] {
            let e = links.entry((id(&ids[0]), id(o))).or_insert(*ts);
            *e = (*e).max(*ts);
        }
    }
    Case { graph, links }
}

/// Naive stitching. Returns component labels (canonicalised) and the set of cut links.
fn reference(
    case: &Case,
    rules: &[NsRules],
    never_pairs: &[(u32, u32)],
    rank: &[u32],
) -> (Vec<u32>, BTreeSet<(u32, u32)>, BTreeSet<u32>) {
    let n = case.graph.len();
    let mut degree = vec![0u64; n];
    for &(a, b) in case.links.keys() {
        degree[a as usize] += 1;
        degree[b as usize] += 1;
    }
    let quarantined: BTreeSet<u32> = (0..n as u32)
        .filter(|&i| {
            rules[case.graph.ns(i) as usize]
                .max_links
                .is_some_and(|m| degree[i as usize] > m)
        })
        .collect();
    let mut order: Vec<(&(u32, u32), &i64)> = case
        .links
        .iter()
        .filter(|((a, b), _)| !quarantined.contains(a) && !quarantined.contains(b))
        .collect();
    order.sort_by(|x, y| {
        y.1.cmp(x.1)
            .then(rank[x.0.1 as usize].cmp(&rank[y.0.1 as usize]))
            .then(rank[x.0.0 as usize].cmp(&rank[y.0.0 as usize]))
    });
    let mut label: Vec<u32> = (0..n as u32).collect();
    let mut cut = BTreeSet::new();
    for (&(a, b), _) in order {
        let (la, lb) = (label[a as usize], label[b as usize]);
        if la == lb {
            continue;
        }
        let members =
            |l: u32| -> Vec<u32> { (0..n as u32).filter(|&i| label[i as usize] == l).collect() };
        let (ma, mb) = (members(la), members(lb));
        let unique_clash = ma.iter().any(|&x| {
            mb.iter().any(|&y| {
                case.graph.ns(x) == case.graph.ns(y) && rules[case.graph.ns(x) as usize].unique
            })
        });
        let never = never_pairs.iter().any(|&(x, y)| {
            (ma.contains(&x) && mb.contains(&y)) || (ma.contains(&y) && mb.contains(&x))
        });
        if unique_clash || never {
            cut.insert((a, b));
            continue;
        }
        for l in label.iter_mut() {
            if *l == lb {
                *l = la;
            }
        }
    }
    (canonical(&label), cut, quarantined)
}

/// Labels renamed to the smallest member id, so partitions compare equal.
fn canonical(labels: &[u32]) -> Vec<u32> {
    let mut first: BTreeMap<u32, u32> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        first.entry(l).or_insert(i as u32);
    }
    labels.iter().map(|l| first[l]).collect()
}

fn check(
    recs: &[Record],
    rules: &[NsRules],
    never: &[(u16, u8, u16, u8)],
) -> Result<(), TestCaseError> {
    let mut case = build(recs);
    let mut never_pairs = Vec::new();
    for &(na, va, nb, vb) in never {
        if let (Some(a), Some(b)) = (
            case.graph.get(Class::Customer, na, &format!("v{va:02}")),
            case.graph.get(Class::Customer, nb, &format!("v{vb:02}")),
        ) && a != b
        {
            never_pairs.push((a, b));
        }
    }
    // Rank computed here from (class, namespace, value), not taken from the graph's ids.
    let n = case.graph.len() as u32;
    let mut by_rank: Vec<u32> = (0..n).collect();
    by_rank.sort_by_key(|&i| {
        (
            case.graph.class(i) as u8,
            case.graph.ns(i),
            case.graph.value(i).to_string(),
        )
    });
    let mut rank = vec![0u32; n as usize];
    for (r, &i) in by_rank.iter().enumerate() {
        rank[i as usize] = r as u32;
    }
    let (want_labels, want_cut, want_quarantine) = reference(&case, rules, &never_pairs, &rank);
    let got = case.graph.stitch(rules, &[], &never_pairs, &|_| false);
    prop_assert_eq!(canonical(&got.roots), want_labels);
    let got_cut: BTreeSet<(u32, u32)> = got
        .links
        .iter()
        .filter(|l| {
            matches!(
                l.status,
                LinkStatus::CutUnique(_) | LinkStatus::CutNeverLink
            )
        })
        .map(|l| (l.anchor, l.other))
        .collect();
    prop_assert_eq!(got_cut, want_cut);
    let got_q: BTreeSet<u32> = (0..got.quarantine.len() as u32)
        .filter(|&i| got.quarantine[i as usize].is_some())
        .collect();
    prop_assert_eq!(got_q, want_quarantine);
    prop_assert_eq!(
        got.links.len(),
        case.links.len(),
        "one link per distinct pair"
    );
    for (l, (&(a, b), &ts)) in got.links.iter().zip(&case.links) {
        prop_assert_eq!(
            (l.anchor, l.other, l.ts),
            (a, b, ts),
            "newest time per pair"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn graph_plain_matches_union_find(recs in records()) {
        check(&recs, &[NsRules::default(), NsRules::default(), NsRules::default()], &[])?;
    }

    #[test]
    fn graph_unique_namespace_matches_reference(recs in records(), unique in prop::collection::vec(any::<bool>(), 3)) {
        let rules: Vec<NsRules> = unique.iter().map(|&u| NsRules { unique: u, max_links: None }).collect();
        check(&recs, &rules, &[])?;
    }

    #[test]
    fn graph_hubs_match_reference(recs in records(), max in prop::collection::vec(prop::option::of(1u64..4), 3), unique in any::<bool>()) {
        let rules: Vec<NsRules> = max.iter().enumerate().map(|(i, &m)| NsRules { unique: unique && i == 0, max_links: m }).collect();
        check(&recs, &rules, &[])?;
    }

    #[test]
    fn graph_never_link_matches_reference(recs in records(), never in prop::collection::vec((0u16..3, 0u8..12, 0u16..3, 0u8..12), 0..4)) {
        check(&recs, &[NsRules::default(), NsRules { unique: true, max_links: None }, NsRules::default()], &never)?;
    }
}
