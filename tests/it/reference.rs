//! A plain, row-by-row reference implementation of the sample project's rules,
//! written independently of the engine: it reads the Parquet files directly,
//! normalises with its own code (and libphonenumber), stitches with a plain
//! union-find, merges most-recent-wins, and evaluates each sample segment in
//! Rust. The pipeline's exports are checked against it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::Path;

use arrow::array::{Array, BooleanArray, Float64Array, StringArray, TimestampMicrosecondArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};

/// One row of any sample dataset: the columns the reference needs.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub dataset: String,
    pub ids: Vec<(usize, String)>, // (namespace rank, raw value)
    pub ts: Option<i64>,
    pub strings: BTreeMap<String, Option<String>>,
    pub opt_in: Option<bool>,
    pub revenue: Option<f64>,
}

/// Namespaces in priority order.
pub const NAMESPACES: [&str; 5] = ["crm_id", "loyalty_id", "email", "phone", "cookie"];

fn read(dir: &Path, dataset: &str, ids: &[(&str, usize)], ts: &str, strings: &[&str]) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("data").join(dataset))
        .expect("dataset dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f).expect("open"))
            .expect("parquet")
            .build()
            .expect("reader");
        for batch in reader {
            let batch = batch.expect("batch");
            let s = |name: &str| {
                batch
                    .column_by_name(name)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
            };
            let t = batch
                .column_by_name(ts)
                .and_then(|c| {
                    c.as_any()
                        .downcast_ref::<TimestampMicrosecondArray>()
                        .cloned()
                })
                .expect("ts");
            let opt = batch
                .column_by_name("email_opt_in")
                .and_then(|c| c.as_any().downcast_ref::<BooleanArray>().cloned());
            let rev = batch
                .column_by_name("revenue")
                .and_then(|c| c.as_any().downcast_ref::<Float64Array>().cloned());
            for i in 0..batch.num_rows() {
                let mut row = Row {
                    dataset: dataset.to_string(),
                    ts: (!t.is_null(i)).then(|| t.value(i)),
                    ..Default::default()
                };
                for (col, rank) in ids {
                    let a = s(col).expect("identity column");
                    if !a.is_null(i) {
                        row.ids.push((*rank, a.value(i).to_string()));
                    }
                }
                for col in strings {
                    let a = s(col).expect("string column");
                    row.strings.insert(
                        col.to_string(),
                        (!a.is_null(i)).then(|| a.value(i).to_string()),
                    );
                }
                row.opt_in = opt
                    .as_ref()
                    .and_then(|o| (!o.is_null(i)).then(|| o.value(i)));
                row.revenue = rev
                    .as_ref()
                    .and_then(|o| (!o.is_null(i)).then(|| o.value(i)));
                rows.push(row);
            }
        }
    }
    rows
}

fn blocked(v: &str) -> bool {
    [
        "",
        "null",
        "none",
        "anonymous",
        "unknown",
        "invalid",
        "undefined",
        "0",
        "-1",
    ]
    .contains(&v)
        || v.chars().all(|c| c == '0' || c == '-')
}

/// The sample's normalisation rules, written out by hand.
pub fn normalise(rank: usize, raw: &str) -> Option<String> {
    if raw.chars().count() > 1024 {
        return None;
    }
    let t = raw.trim();
    match NAMESPACES[rank] {
        "email" => {
            let v = t.to_lowercase();
            if blocked(&v) || v == "test@example.com" || v == "noreply@example.com" {
                return None;
            }
            let parts: Vec<&str> = v.split('@').collect();
            (parts.len() == 2 && !parts[0].is_empty() && parts[1].contains('.')).then_some(v)
        }
        "phone" => {
            if blocked(t) {
                return None;
            }
            let n = phonenumber::parse(Some(phonenumber::country::Id::GB), t).ok()?;
            phonenumber::is_valid(&n).then(|| n.format().mode(phonenumber::Mode::E164).to_string())
        }
        _ => (!blocked(t)).then(|| t.to_string()),
    }
}

struct Uf(Vec<usize>);
impl Uf {
    fn find(&mut self, x: usize) -> usize {
        if self.0[x] != x {
            let r = self.find(self.0[x]);
            self.0[x] = r;
        }
        self.0[x]
    }
    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.0[a.max(b)] = a.min(b);
        }
    }
}

/// (preferred email, merged city, merged loyalty tier).
pub type ProfileFields = (Option<String>, Option<String>, Option<String>);

/// Profile id → its identities as (namespace rank, value, first seen, last seen).
type Members = HashMap<String, Vec<(usize, String, i64, i64)>>;

/// Expected results for one class.
#[derive(Debug, Default)]
pub struct Expected {
    /// Segment id → expected profile ids.
    pub segments: BTreeMap<String, BTreeSet<String>>,
    /// Profile id → (preferred email, merged city, merged loyalty tier).
    pub profiles: BTreeMap<String, ProfileFields>,
}

fn profile_id(class: &str, ns: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!("audience-profile-v2\x1f{class}\x1f{ns}\x1f{value}").as_bytes());
    // The first 60 bits, as 12 digits of lower-case Crockford base32.
    let d = h.finalize();
    let mut n = d[..8].iter().fold(0u64, |n, &b| n << 8 | u64::from(b)) >> 4;
    let mut digits = vec![0u8; 12];
    for slot in digits.iter_mut().rev() {
        *slot = b"0123456789abcdefghjkmnpqrstvwxyz"[(n % 32) as usize];
        n /= 32;
    }
    String::from_utf8(digits).expect("ascii")
}

/// Cookies seen with more distinct identities than this are shared devices (the sample's `max_links`).
const COOKIE_MAX_LINKS: usize = 5;

/// Stitch rows of one class; returns per row its profile id (None if rejected),
/// and per profile the identities with (first, last) seen.
fn stitch(class: &str, rows: &[Row]) -> (Vec<Option<String>>, Members) {
    let mut index: HashMap<(usize, String), usize> = HashMap::new();
    let mut seen: Vec<(i64, i64)> = Vec::new();
    let mut keys: Vec<(usize, String)> = Vec::new();
    let mut row_nodes: Vec<Option<Vec<usize>>> = Vec::new();
    for r in rows {
        let Some(ts) = r.ts else {
            row_nodes.push(None);
            continue;
        };
        let mut ids: Vec<(usize, String)> = r
            .ids
            .iter()
            .filter_map(|(rank, v)| normalise(*rank, v).map(|n| (*rank, n)))
            .collect();
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            row_nodes.push(None);
            continue;
        }
        let mut nodes = Vec::new();
        for k in ids {
            let n = *index.entry(k.clone()).or_insert_with(|| {
                keys.push(k.clone());
                seen.push((ts, ts));
                keys.len() - 1
            });
            seen[n] = (seen[n].0.min(ts), seen[n].1.max(ts));
            nodes.push(n);
        }
        row_nodes.push(Some(nodes));
    }
    // Distinct links anchor -> other; cookies with too many are quarantined.
    let links: BTreeSet<(usize, usize)> = row_nodes
        .iter()
        .flatten()
        .flat_map(|n| n[1..].iter().map(move |o| (n[0], *o)))
        .collect();
    let mut degree = vec![0usize; keys.len()];
    for (a, b) in &links {
        degree[*a] += 1;
        degree[*b] += 1;
    }
    let quarantined: Vec<bool> = (0..keys.len())
        .map(|n| NAMESPACES[keys[n].0] == "cookie" && degree[n] > COOKIE_MAX_LINKS)
        .collect();
    let mut uf = Uf((0..keys.len()).collect());
    for (a, b) in &links {
        if !quarantined[*a] && !quarantined[*b] {
            uf.union(*a, *b);
        }
    }
    let mut comps: HashMap<usize, Vec<usize>> = HashMap::new();
    for n in 0..keys.len() {
        let r = uf.find(n);
        comps.entry(r).or_default().push(n);
    }
    let mut pid_of_root = HashMap::new();
    let mut members = HashMap::new();
    for (root, nodes) in &comps {
        let rep = nodes
            .iter()
            .min_by(|a, b| (seen[**a].0, &keys[**a]).cmp(&(seen[**b].0, &keys[**b])))
            .expect("non-empty");
        let pid = profile_id(class, NAMESPACES[keys[*rep].0], &keys[*rep].1);
        members.insert(
            pid.clone(),
            nodes
                .iter()
                .map(|n| (keys[*n].0, keys[*n].1.clone(), seen[*n].0, seen[*n].1))
                .collect(),
        );
        pid_of_root.insert(*root, pid);
    }
    // A row belongs to its best identity that is not quarantined (else its best).
    let pids = row_nodes
        .into_iter()
        .map(|nodes| {
            nodes.map(|n| {
                let owner = n.iter().copied().find(|x| !quarantined[*x]).unwrap_or(n[0]);
                pid_of_root[&uf.find(owner)].clone()
            })
        })
        .collect();
    (pids, members)
}

/// Most recent non-null value per profile; ties by dataset name, then the smallest value.
fn latest<T: Clone + PartialOrd>(rows: &[(String, &Row, Option<T>)]) -> BTreeMap<String, T> {
    let mut best: BTreeMap<String, (i64, String, T)> = BTreeMap::new();
    for (pid, r, v) in rows {
        let (Some(v), Some(ts)) = (v.clone(), r.ts) else {
            continue;
        };
        let better = match best.get(pid) {
            None => true,
            Some((bts, bds, bv)) => {
                ts > *bts || (ts == *bts && (r.dataset < *bds || (r.dataset == *bds && v < *bv)))
            }
        };
        if better {
            best.insert(pid.clone(), (ts, r.dataset.clone(), v));
        }
    }
    best.into_iter().map(|(k, (_, _, v))| (k, v)).collect()
}

const DAY: i64 = 86_400_000_000;

/// Compute the sample's expected segments and profile fields at `as_of` (µs).
pub fn expected(dir: &Path, as_of: i64) -> (Expected, Expected) {
    let crm = read(
        dir,
        "crm",
        &[("crm_id", 0), ("email", 2), ("phone", 3)],
        "updated_at",
        &["city"],
    );
    let loyalty = read(
        dir,
        "loyalty",
        &[("loyalty_id", 1), ("email", 2), ("phone", 3)],
        "updated_at",
        &["city", "loyalty_tier"],
    );
    let signups = read(
        dir,
        "web_signups",
        &[("email", 2), ("cookie_id", 4)],
        "signed_up_at",
        &["city"],
    );
    let web = read(
        dir,
        "web_events",
        &[("cookie_id", 4), ("email", 2)],
        "event_time",
        &["event_type"],
    );
    let purchases = read(
        dir,
        "purchases",
        &[("crm_id", 0), ("email", 2)],
        "purchased_at",
        &["event_type"],
    );
    let prospects = read(dir, "prospects", &[("email", 2)], "updated_at", &["city"]);

    // Customers.
    let all: Vec<Row> = crm
        .iter()
        .chain(&loyalty)
        .chain(&signups)
        .chain(&web)
        .chain(&purchases)
        .cloned()
        .collect();
    let (pids, members) = stitch("customer", &all);
    let tagged: Vec<(String, &Row)> = all
        .iter()
        .zip(&pids)
        .filter_map(|(r, p)| p.clone().map(|p| (p, r)))
        .collect();
    let profile_rows: Vec<&(String, &Row)> = tagged
        .iter()
        .filter(|(_, r)| ["crm", "loyalty", "web_signups"].contains(&r.dataset.as_str()))
        .collect();
    let opt = latest(
        &profile_rows
            .iter()
            .map(|(p, r)| (p.clone(), *r, r.opt_in))
            .collect::<Vec<_>>(),
    );
    let city = latest(
        &profile_rows
            .iter()
            .map(|(p, r)| (p.clone(), *r, r.strings.get("city").cloned().flatten()))
            .collect::<Vec<_>>(),
    );
    let tier = latest(
        &profile_rows
            .iter()
            .map(|(p, r)| {
                (
                    p.clone(),
                    *r,
                    r.strings.get("loyalty_tier").cloned().flatten(),
                )
            })
            .collect::<Vec<_>>(),
    );
    let preferred_email = |pid: &str| -> Option<String> {
        members[pid]
            .iter()
            .filter(|(rank, ..)| *rank == 2)
            .max_by(|a, b| a.3.cmp(&b.3).then_with(|| b.1.cmp(&a.1)))
            .map(|m| m.1.clone())
    };
    let mut c = Expected::default();
    for pid in members.keys() {
        c.profiles.insert(
            pid.clone(),
            (
                preferred_email(pid),
                city.get(pid).cloned(),
                tier.get(pid).cloned(),
            ),
        );
    }
    let event = |r: &Row, kind: &str| {
        r.strings.get("event_type").cloned().flatten().as_deref() == Some(kind)
    };
    let mut revenue: BTreeMap<String, f64> = BTreeMap::new();
    let mut last_purchase: BTreeMap<String, i64> = BTreeMap::new();
    let mut recent_view = BTreeSet::new();
    let mut recent_buy = BTreeSet::new();
    for (pid, r) in &tagged {
        let Some(ts) = r.ts else { continue };
        if ts > as_of {
            continue;
        }
        if r.dataset == "purchases" && event(r, "purchase") {
            if ts > as_of - 365 * DAY {
                *revenue.entry(pid.clone()).or_default() += r.revenue.unwrap_or(0.0);
            }
            let e = last_purchase.entry(pid.clone()).or_insert(ts);
            *e = (*e).max(ts);
            if ts > as_of - 30 * DAY {
                recent_buy.insert(pid.clone());
            }
        }
        if r.dataset == "web_events" && event(r, "page_view") && ts > as_of - 7 * DAY {
            recent_view.insert(pid.clone());
        }
    }
    let high_value: BTreeSet<String> = revenue
        .iter()
        .filter(|(_, v)| **v >= 500.0)
        .map(|(k, _)| k.clone())
        .collect();
    let optin: BTreeSet<String> = members
        .keys()
        .filter(|p| opt.get(*p) == Some(&true) && preferred_email(p).is_some())
        .cloned()
        .collect();
    let gold: BTreeSet<String> = members
        .keys()
        .filter(|p| {
            tier.get(*p).map(String::as_str) == Some("gold")
                && last_purchase.get(*p).is_none_or(|t| *t <= as_of - 90 * DAY)
        })
        .cloned()
        .collect();
    c.segments.insert(
        "high_value_optin".into(),
        high_value.intersection(&optin).cloned().collect(),
    );
    c.segments.insert("high_value".into(), high_value);
    c.segments.insert("newsletter_optin".into(), optin);
    c.segments.insert("gold_lapsed".into(), gold);
    c.segments.insert(
        "browsed_not_bought".into(),
        recent_view.difference(&recent_buy).cloned().collect(),
    );

    // Prospects.
    let (ppids, pmembers) = stitch("prospect", &prospects);
    let ptagged: Vec<(String, &Row)> = prospects
        .iter()
        .zip(&ppids)
        .filter_map(|(r, p)| p.clone().map(|p| (p, r)))
        .collect();
    let pcity = latest(
        &ptagged
            .iter()
            .map(|(p, r)| (p.clone(), *r, r.strings.get("city").cloned().flatten()))
            .collect::<Vec<_>>(),
    );
    let mut p = Expected::default();
    for (pid, ids) in &pmembers {
        let email = ids
            .iter()
            .filter(|(rank, ..)| *rank == 2)
            .max_by(|a, b| a.3.cmp(&b.3).then_with(|| b.1.cmp(&a.1)))
            .map(|m| m.1.clone());
        p.profiles
            .insert(pid.clone(), (email, pcity.get(pid).cloned(), None));
    }
    p.segments.insert(
        "prospects_london".into(),
        pmembers
            .keys()
            .filter(|k| pcity.get(*k).map(String::as_str) == Some("London"))
            .cloned()
            .collect(),
    );
    (c, p)
}
