//! Identity normalisers (SPEC §4 "Normalisers, exactly").
//!
//! Checks, in this order: longer than 1,024 characters → `too_long`; trim (and
//! lower-case for e-mail); blocked → `blocked`; invalid → `invalid`.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, RwLock, mpsc};

use phonenumber::country::Id as Region;
use phonenumber::metadata::Database;
use phonenumber::{Mode, PhoneNumber};
use regex::Regex;

use crate::config::{Namespace, NormaliserKind};

/// Longest identity value accepted, in characters.
pub const MAX_LEN: usize = 1024;

/// Values blocked in every namespace (compared after trimming, and lower-casing for
/// e-mail), besides values made only of zeros and dashes.
pub const BUILTIN_BLOCKED: [&str; 9] = [
    "",
    "null",
    "none",
    "anonymous",
    "unknown",
    "invalid",
    "undefined",
    "0",
    "-1",
];

/// Why a value is not an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reject {
    TooLong,
    Blocked,
    Invalid,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooLong => "too_long",
            Reject::Blocked => "blocked",
            Reject::Invalid => "invalid",
        }
    }
}

/// Parse an ISO 3166 region code for phone numbers.
pub fn phone_region(code: &str) -> Option<Region> {
    code.trim().to_ascii_uppercase().parse::<Region>().ok()
}

/// A user's blocked value in the form values are compared in.
pub fn canonical_blocked(kind: NormaliserKind, value: &str) -> String {
    let t = value.trim();
    if kind == NormaliserKind::Email {
        t.to_lowercase()
    } else {
        t.to_string()
    }
}

fn builtin_blocked(v: &str) -> bool {
    BUILTIN_BLOCKED.contains(&v) || v.bytes().all(|b| b == b'0' || b == b'-')
}

/// libphonenumber's metadata: the file the `phonenumber` crate builds its own
/// database from (see `assets/phonenumber/README.md`).
const PHONE_METADATA: &str = include_str!("../../assets/phonenumber/PhoneNumberMetadata.xml");

/// Phone databases not in use. The crate's built-in database looks every
/// regular expression up behind one process-wide mutex, which makes parsing on
/// several threads slower than on one; with a database each (built when first
/// needed, about 80 ms, then kept), threads parse side by side.
static PHONE_DBS: std::sync::Mutex<Vec<Database>> = std::sync::Mutex::new(Vec::new());

/// `f` with a phone database of its own.
fn with_phone_db<T>(f: impl FnOnce(&Database) -> T) -> T {
    let db = PHONE_DBS
        .lock()
        .ok()
        .and_then(|mut dbs| dbs.pop())
        .or_else(|| Database::parse(PHONE_METADATA).ok());
    match db {
        Some(db) => {
            let out = f(&db);
            if let Ok(mut dbs) = PHONE_DBS.lock() {
                dbs.push(db);
            }
            out
        }
        None => f(&phonenumber::metadata::DATABASE),
    }
}

/// A batch for a phone thread: the region for national numbers, the trimmed
/// raw values, and where to send their E.164 forms (`None`: invalid), in order.
type PhoneJob = (Option<Region>, Vec<Box<str>>, mpsc::Sender<Parsed>);

/// A phone job's answers: each value's E.164 form (`None`: invalid), in order.
type Parsed = Vec<Option<String>>;

/// A job's raw values, and where its answers come from (`None`: no phone
/// thread took it).
type SentJob = (Vec<Box<str>>, Option<mpsc::Receiver<Parsed>>);

/// The phone threads: started when first needed and then kept, all taking
/// jobs from one queue. Each parses with a database of its own, used by that
/// thread alone, so libphonenumber's regular expressions (and the automata
/// they build lazily as numbers arrive) stay warm from one batch to the next;
/// threads made per batch each started from empty automata.
struct PhoneThreads {
    jobs: mpsc::Sender<PhoneJob>,
    queue: Arc<Mutex<mpsc::Receiver<PhoneJob>>>,
    started: usize,
}

static PHONE_THREADS: Mutex<Option<PhoneThreads>> = Mutex::new(None);

/// Where to send phone jobs, with at least `n` phone threads running; `None`
/// when none can be started (the caller then parses itself).
fn phone_jobs(n: usize) -> Option<mpsc::Sender<PhoneJob>> {
    let mut guard = PHONE_THREADS.lock().ok()?;
    let threads = guard.get_or_insert_with(|| {
        let (jobs, queue) = mpsc::channel();
        PhoneThreads {
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            started: 0,
        }
    });
    while threads.started < n {
        let queue = Arc::clone(&threads.queue);
        let spawned = std::thread::Builder::new()
            .name("audience-phone".into())
            .spawn(move || phone_thread(&queue));
        if spawned.is_err() {
            break;
        }
        threads.started += 1;
    }
    (threads.started > 0).then(|| threads.jobs.clone())
}

/// One phone thread: parses jobs until the queue closes. A job whose parse
/// panics gets no answer (its sender parses it again) and the thread starts
/// over with a fresh database.
fn phone_thread(queue: &Mutex<mpsc::Receiver<PhoneJob>>) {
    let mut db = Database::parse(PHONE_METADATA).ok();
    loop {
        let job = match queue.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        let Ok((region, values, reply)) = job else {
            return;
        };
        let Some(d) = db.as_ref() else {
            continue; // dropping `reply` sends the job back to its sender
        };
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            values
                .iter()
                .map(|v| parse_phone(d, region, v))
                .collect::<Vec<_>>()
        }));
        match parsed {
            Ok(parsed) => {
                let _ = reply.send(parsed);
            }
            Err(_) => db = Database::parse(PHONE_METADATA).ok(),
        }
    }
}

/// E.164 form of `value` as libphonenumber parses it (national numbers in
/// `region`) with `db`, or `None` when it is no valid number.
fn parse_phone(db: &Database, region: Option<Region>, value: &str) -> Option<String> {
    phonenumber::parse_with(db, region, value)
        .ok()
        .filter(|p| phonenumber::is_valid_with(db, p))
        .map(|p: PhoneNumber| p.format_with(db).mode(Mode::E164).to_string())
}

/// Phone numbers already parsed in this run (trimmed raw value → E.164, or
/// `None` when invalid), shared by the identity stage and the functions that
/// attribute records later in the run, so that libphonenumber (the slowest
/// normaliser by far) parses each raw value once per run. Sharded for threads.
///
/// It lives from the first phone read to the end of the run, so it is
/// compact: each shard keeps its raw values and answers one after another in
/// one byte buffer, an 8-byte record per number and a 4-byte table slot
/// (about 40 bytes a number, against about 115 as a map of boxed strings).
#[derive(Debug)]
pub struct PhoneCache {
    hasher: hashbrown::DefaultHashBuilder,
    shards: Vec<RwLock<PhoneShard>>,
}

/// One shard: raw value → answer.
#[derive(Debug, Default)]
struct PhoneShard {
    /// Index into `entries`, by the raw value's hash.
    table: hashbrown::HashTable<u32>,
    entries: Vec<PhoneEntry>,
    /// Each entry's raw value, then its E.164 form unless that is the raw
    /// value itself or there is none.
    bytes: Vec<u8>,
}

/// Where an entry's raw value and answer are in [`PhoneShard::bytes`].
#[derive(Debug, Clone, Copy)]
struct PhoneEntry {
    at: u32,
    raw_len: u16,
    /// Bytes of the E.164 form after the raw value, or [`INVALID`] / [`SAME`].
    answer_len: u16,
}

/// [`PhoneEntry::answer_len`]: no valid number.
const INVALID: u16 = u16::MAX;
/// [`PhoneEntry::answer_len`]: the raw value is already the E.164 form.
const SAME: u16 = u16::MAX - 1;

/// An entry's raw value in its shard's bytes.
fn raw_of(bytes: &[u8], e: PhoneEntry) -> &[u8] {
    &bytes[e.at as usize..e.at as usize + e.raw_len as usize]
}

impl PhoneShard {
    fn raw(&self, e: PhoneEntry) -> &[u8] {
        raw_of(&self.bytes, e)
    }

    fn find(&self, hash: u64, key: &str) -> Option<PhoneEntry> {
        self.table
            .find(hash, |&i| {
                self.raw(self.entries[i as usize]) == key.as_bytes()
            })
            .map(|&i| self.entries[i as usize])
    }

    fn answer(&self, e: PhoneEntry) -> Option<&str> {
        let start = e.at as usize;
        let bytes = match e.answer_len {
            INVALID => return None,
            SAME => &self.bytes[start..start + e.raw_len as usize],
            n => {
                let from = start + e.raw_len as usize;
                &self.bytes[from..from + n as usize]
            }
        };
        // Only whole `&str`s are ever stored (see `insert`).
        std::str::from_utf8(bytes).ok()
    }
}

impl Default for PhoneCache {
    fn default() -> Self {
        PhoneCache {
            hasher: hashbrown::DefaultHashBuilder::default(),
            shards: (0..16).map(|_| RwLock::default()).collect(),
        }
    }
}

impl PhoneCache {
    /// The key's hash and shard (bits 32–35: the table takes its slot from
    /// the low bits and its tag from the top ones).
    fn shard(&self, key: &str) -> (u64, &RwLock<PhoneShard>) {
        let h = std::hash::BuildHasher::hash_one(&self.hasher, key);
        (h, &self.shards[((h >> 32) & 15) as usize])
    }

    fn contains(&self, key: &str) -> bool {
        let (h, shard) = self.shard(key);
        shard.read().is_ok_and(|m| m.find(h, key).is_some())
    }

    /// `Some(answer)` when `key` has been parsed.
    fn get(&self, key: &str) -> Option<Option<String>> {
        let (h, shard) = self.shard(key);
        let m = shard.read().ok()?;
        let e = m.find(h, key)?;
        Some(m.answer(e).map(str::to_string))
    }

    /// Remember `key`'s answer. A value too long to record, or a shard past
    /// 4 GiB, is not remembered (it is parsed again when met again).
    fn insert(&self, key: &str, value: Option<&str>) {
        let (h, shard) = self.shard(key);
        let Ok(mut m) = shard.write() else { return };
        let m = &mut *m;
        let answer_len = match value {
            None => INVALID,
            Some(v) if v == key => SAME,
            Some(v) => match u16::try_from(v.len()) {
                Ok(n) if n < SAME => n,
                _ => return,
            },
        };
        let stored = match answer_len {
            INVALID | SAME => 0,
            n => n as usize,
        };
        let (Ok(raw_len), Ok(at), Ok(index)) = (
            u16::try_from(key.len()),
            u32::try_from(m.bytes.len()),
            u32::try_from(m.entries.len()),
        ) else {
            return;
        };
        if m.bytes.len() + key.len() + stored > u32::MAX as usize || m.find(h, key).is_some() {
            return;
        }
        m.bytes.extend_from_slice(key.as_bytes());
        if let Some(v) = value
            && stored > 0
        {
            m.bytes.extend_from_slice(v.as_bytes());
        }
        m.entries.push(PhoneEntry {
            at,
            raw_len,
            answer_len,
        });
        let (hasher, entries, bytes) = (&self.hasher, &m.entries, &m.bytes);
        m.table.insert_unique(h, index, |&i| {
            // Only whole `&str`s are stored; hashed as `str`, like `key`.
            let raw = std::str::from_utf8(raw_of(bytes, entries[i as usize]));
            std::hash::BuildHasher::hash_one(hasher, raw.unwrap_or_default())
        });
    }
}

/// Phone numbers on their way through the phone threads
/// ([`Normaliser::start_warm`]); [`Warming::finish`] waits for them and puts
/// them in the cache. Dropped unfinished, the answers are thrown away.
#[derive(Debug)]
#[must_use = "the numbers reach the cache only through `finish`"]
pub struct Warming<'a> {
    cache: &'a PhoneCache,
    region: Option<Region>,
    parts: Vec<SentJob>,
}

impl Warming<'_> {
    /// Wait for the answers and remember them; a job no phone thread
    /// answered (none could start, or its parse panicked) is parsed here.
    pub fn finish(self) {
        for (values, answer) in self.parts {
            match answer.and_then(|a| a.recv().ok()) {
                Some(parsed) => {
                    for (v, e164) in values.iter().zip(parsed) {
                        self.cache.insert(v, e164.as_deref());
                    }
                }
                None => with_phone_db(|db| {
                    for v in &values {
                        self.cache
                            .insert(v, parse_phone(db, self.region, v).as_deref());
                    }
                }),
            }
        }
    }
}

/// A namespace's normaliser, ready to apply to many values.
#[derive(Debug, Clone)]
pub struct Normaliser<'a> {
    ns: &'a Namespace,
    region: Option<Region>,
    patterns: Vec<Regex>,
    cache: Option<&'a PhoneCache>,
}

impl<'a> Normaliser<'a> {
    /// A normaliser for `ns`. Patterns that do not compile were refused at
    /// validation and are skipped here.
    pub fn new(ns: &'a Namespace) -> Self {
        let region = ns.default_region.as_deref().and_then(phone_region);
        let patterns = ns
            .blocked_patterns
            .iter()
            .filter_map(|p| Regex::new(p).ok())
            .collect();
        Normaliser {
            ns,
            region,
            patterns,
            cache: None,
        }
    }

    /// Remember parsed phone numbers in `cache` (and use what it holds).
    pub fn with_cache(mut self, cache: &'a PhoneCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Hand the phone numbers among `raws` that the cache does not hold yet
    /// to the phone threads (up to `threads` of them side by side) and
    /// return at once; [`Warming::finish`] waits for them and puts them in
    /// the cache, where [`Self::apply`] finds them. The identity stage
    /// normalises one batch while the next batch's numbers are parsed.
    /// `None` for other namespaces, without a cache, or for few new numbers.
    pub fn start_warm<'r>(
        &self,
        raws: impl Iterator<Item = &'r str>,
        threads: usize,
    ) -> Option<Warming<'a>> {
        let cache = self.cache?;
        if self.ns.normaliser != NormaliserKind::Phone || threads < 2 {
            return None;
        }
        let mut seen = hashbrown::HashSet::new();
        let todo: Vec<&str> = raws
            .map(str::trim)
            .filter(|v| v.len() <= MAX_LEN && !cache.contains(v) && seen.insert(*v))
            .collect();
        if todo.len() < 64 {
            return None;
        }
        let (per, region) = (todo.len().div_ceil(threads), self.region);
        let jobs = phone_jobs(threads);
        let parts = todo
            .chunks(per)
            .map(|chunk| {
                let values: Vec<Box<str>> = chunk.iter().map(|v| Box::from(*v)).collect();
                let (reply, answer) = mpsc::channel();
                let sent = jobs
                    .as_ref()
                    .is_some_and(|tx| tx.send((region, values.clone(), reply)).is_ok());
                (values, sent.then_some(answer))
            })
            .collect();
        Some(Warming {
            cache,
            region,
            parts,
        })
    }

    /// Normalise one raw value into the identity value, or say why it is rejected.
    /// Borrows from `raw` when normalising only trims.
    pub fn apply<'r>(&self, raw: &'r str) -> Result<Cow<'r, str>, Reject> {
        if raw.len() > MAX_LEN && raw.chars().count() > MAX_LEN {
            return Err(Reject::TooLong);
        }
        let trimmed = raw.trim();
        let value: Cow<'r, str> = match self.ns.normaliser {
            NormaliserKind::Email
                if trimmed
                    .bytes()
                    .any(|b| b.is_ascii_uppercase() || !b.is_ascii()) =>
            {
                Cow::Owned(trimmed.to_lowercase())
            }
            _ => Cow::Borrowed(trimmed),
        };
        if builtin_blocked(&value)
            || self.ns.blocked.contains(value.as_ref())
            || self.patterns.iter().any(|p| p.is_match(&value))
        {
            return Err(Reject::Blocked);
        }
        match self.ns.normaliser {
            // The SQL expression ran in the engine before; what is left is trim and blocked.
            NormaliserKind::Id | NormaliserKind::Sql => Ok(value),
            NormaliserKind::Email => {
                let mut parts = value.split('@');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(local), Some(domain), None)
                        if !local.is_empty() && domain.contains('.') =>
                    {
                        Ok(value)
                    }
                    _ => Err(Reject::Invalid),
                }
            }
            NormaliserKind::Phone => {
                if let Some(hit) = self.cache.and_then(|c| c.get(&value)) {
                    return hit.map(Cow::Owned).ok_or(Reject::Invalid);
                }
                let e164 = with_phone_db(|db| parse_phone(db, self.region, &value));
                if let Some(c) = self.cache {
                    c.insert(&value, e164.as_deref());
                }
                e164.map(Cow::Owned).ok_or(Reject::Invalid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn ns(kind: NormaliserKind, region: Option<&str>, blocked: &[&str]) -> Namespace {
        Namespace {
            name: "x".into(),
            normaliser: kind,
            priority: 1,
            default_region: region.map(str::to_string),
            blocked: blocked
                .iter()
                .map(|b| canonical_blocked(kind, b))
                .collect::<BTreeSet<_>>(),
            blocked_patterns: vec!["^test\\+.*@".into()],
            expression: None,
            unique: false,
            max_links: None,
            allow: BTreeSet::new(),
        }
    }

    #[test]
    fn identity_phone_cache_keeps_every_answer() {
        let cache = PhoneCache::default();
        // Enough numbers that every shard's table grows (and rehashes) often.
        let raw = |i: u32| format!("07{i:09}");
        // Invalid, another form, or the raw value itself.
        let answer = |i: u32| match i % 3 {
            0 => None,
            1 => Some(format!("+447{i:09}")),
            _ => Some(raw(i)),
        };
        for i in 0..20_000u32 {
            assert!(!cache.contains(&raw(i)));
            cache.insert(&raw(i), answer(i).as_deref());
        }
        // A repeat changes nothing.
        cache.insert(&raw(1), Some("+440"));
        for i in 0..20_000u32 {
            assert!(cache.contains(&raw(i)));
            assert_eq!(cache.get(&raw(i)), Some(answer(i)), "{}", raw(i));
        }
        assert_eq!(cache.get("07999999999999"), None);
        assert_eq!(cache.get(""), None);
        cache.insert("", Some("x"));
        assert_eq!(cache.get(""), Some(Some("x".to_string())));
    }

    #[test]
    fn identity_email_normaliser_follows_spec() {
        let n = ns(NormaliserKind::Email, None, &["Test@Example.com"]);
        let e = Normaliser::new(&n);
        assert_eq!(
            e.apply("  Ann.Lee@Example.COM "),
            Ok("ann.lee@example.com".into())
        );
        assert_eq!(
            e.apply(" Test+1@Shop.com"),
            Err(Reject::Blocked),
            "a blocked pattern, matched after lower-casing"
        );
        assert_eq!(e.apply("test@example.com"), Err(Reject::Blocked));
        assert_eq!(e.apply(" UNKNOWN "), Err(Reject::Blocked));
        assert_eq!(e.apply("   "), Err(Reject::Blocked));
        assert_eq!(e.apply("a@b@c.com"), Err(Reject::Invalid));
        assert_eq!(e.apply("@c.com"), Err(Reject::Invalid));
        assert_eq!(e.apply("a@localhost"), Err(Reject::Invalid));
        assert_eq!(e.apply(&"a".repeat(1025)), Err(Reject::TooLong));
        // too_long is checked before blocked: 1,025 spaces are too long, not blocked.
        assert_eq!(e.apply(&" ".repeat(1025)), Err(Reject::TooLong));
    }

    #[test]
    fn identity_blocked_builtins() {
        let n = ns(NormaliserKind::Id, None, &[]);
        let id = Normaliser::new(&n);
        for v in [
            "",
            "null",
            "none",
            "anonymous",
            "unknown",
            "invalid",
            "undefined",
            "0",
            "-1",
            "0000",
            "--",
            "0-0",
        ] {
            assert_eq!(id.apply(v), Err(Reject::Blocked), "{v}");
        }
        assert_eq!(id.apply(" C-001 "), Ok("C-001".into()));
        // id values are compared after trimming only, not lower-cased.
        assert_eq!(id.apply("NULL"), Ok("NULL".into()));
    }

    #[test]
    fn identity_phone_e164() {
        let n = ns(NormaliserKind::Phone, Some("GB"), &[]);
        let p = Normaliser::new(&n);
        assert_eq!(p.apply("07900 123456"), Ok("+447900123456".into()));
        assert_eq!(p.apply("+44 7900 123456"), Ok("+447900123456".into()));
        assert_eq!(p.apply("(0)7900-123456"), Ok("+447900123456".into()));
        assert_eq!(p.apply("12"), Err(Reject::Invalid));
        assert_eq!(p.apply("0000"), Err(Reject::Blocked));
    }

    /// The per-thread phone database is the crate's own: the same regions,
    /// patterns, lengths and examples, and the same answer for every example
    /// number (as written nationally and internationally).
    #[test]
    fn identity_phone_metadata_matches_the_crate() {
        use phonenumber::Type;
        let ours = Database::parse(PHONE_METADATA).expect("metadata parses");
        let theirs = &*phonenumber::metadata::DATABASE;
        let types = [
            Type::Unknown,
            Type::Emergency,
            Type::ShortCode,
            Type::StandardRate,
            Type::Carrier,
            Type::NoInternational,
        ]
        .into_iter()
        .chain(VALID_TYPES)
        .collect::<Vec<_>>();
        let answer = parse_phone;
        let (mut regions, mut examples) = (0, 0);
        for m in theirs.iter() {
            let o = ours
                .by_id(m.id())
                .unwrap_or_else(|| panic!("region {}", m.id()));
            assert_eq!(o.country_code(), m.country_code(), "{}", m.id());
            assert_eq!(o.national_prefix(), m.national_prefix(), "{}", m.id());
            assert_eq!(o.formats().len(), m.formats().len(), "{}", m.id());
            regions += 1;
            let region = m.id().parse::<Region>().ok();
            for &t in &types {
                let d = |x: &phonenumber::Metadata| {
                    x.descriptors().get(t).map(|d| {
                        (
                            d.national_number().as_str().to_owned(),
                            d.possible_length().to_vec(),
                            d.example().map(str::to_owned),
                        )
                    })
                };
                assert_eq!(d(o), d(m), "{} {t:?}", m.id());
                if let Some(ex) = m.descriptors().get(t).and_then(|d| d.example()) {
                    let intl = format!("+{}{ex}", m.country_code());
                    assert_eq!(
                        answer(&ours, region, ex),
                        answer(theirs, region, ex),
                        "{ex}"
                    );
                    assert_eq!(
                        answer(&ours, None, &intl),
                        answer(theirs, None, &intl),
                        "{intl}"
                    );
                    examples += 1;
                }
            }
        }
        assert!(
            regions > 200 && examples > 1000,
            "{regions} regions, {examples} examples"
        );
    }

    /// The number types that make a number valid (any one of them).
    const VALID_TYPES: [phonenumber::Type; 10] = {
        use phonenumber::Type;
        [
            Type::FixedLine,
            Type::Mobile,
            Type::TollFree,
            Type::PremiumRate,
            Type::SharedCost,
            Type::PersonalNumber,
            Type::Voip,
            Type::Pager,
            Type::Uan,
            Type::Voicemail,
        ]
    };

    /// Inputs for [`identity_phone_answers_match_upstream`]: every example
    /// number of every region (the crate's own metadata), as written
    /// nationally, with a national prefix, internationally and with
    /// separators, each also with a digit changed, added, dropped or a space
    /// put in, parsed with the region's code and without one; then digit
    /// strings of random lengths in random regions. Deterministic.
    fn phone_corpus() -> Vec<(Option<Region>, String)> {
        let mut x: u64 = 0x5EED;
        let mut rnd = move || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            x >> 33
        };
        let db = &*phonenumber::metadata::DATABASE;
        let mut metas: Vec<&phonenumber::Metadata> = db.iter().collect();
        metas.sort_by_key(|m| m.id().to_string());
        let regions: Vec<Option<Region>> = metas.iter().map(|m| m.id().parse().ok()).collect();
        let mut out = Vec::new();
        for (m, region) in metas.iter().zip(&regions) {
            let cc = m.country_code();
            for t in VALID_TYPES {
                let Some(ex) = m.descriptors().get(t).and_then(|d| d.example()) else {
                    continue;
                };
                let np = m.national_prefix().unwrap_or("0");
                let mut vs = vec![
                    ex.to_string(),
                    format!("{np}{ex}"),
                    format!("+{cc}{ex}"),
                    format!("+{cc} {ex}"),
                    format!("({np}) {ex}"),
                ];
                for _ in 0..4 {
                    let mut d: Vec<u8> = ex.bytes().collect();
                    let at = rnd() as usize % d.len();
                    match rnd() % 4 {
                        0 => d[at] = b'0' + (rnd() % 10) as u8,
                        1 => d.push(b'0' + (rnd() % 10) as u8),
                        2 => {
                            d.remove(at);
                        }
                        _ => d.insert(at, b' '),
                    }
                    let v = String::from_utf8(d).unwrap_or_default();
                    vs.push(format!("+{cc}{v}"));
                    vs.push(v);
                }
                for v in vs {
                    out.push((*region, v.clone()));
                    out.push((None, v));
                }
            }
        }
        for _ in 0..16_000 {
            let digits: String = (0..3 + rnd() % 14)
                .map(|_| char::from(b'0' + (rnd() % 10) as u8))
                .collect();
            let v = match rnd() % 3 {
                0 => format!("+{digits}"),
                1 => format!("0{digits}"),
                _ => digits,
            };
            out.push((regions[rnd() as usize % regions.len()], v));
        }
        out
    }

    /// `vendor/phonenumber` is libphonenumber patched for speed, not for
    /// different answers: over [`phone_corpus`] it gives exactly the E.164
    /// forms (or invalid) that the crate as published gives, recorded in
    /// `vendor/phonenumber/answers.txt` (see its PATCHED.md for how).
    #[test]
    fn identity_phone_answers_match_upstream() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/phonenumber/answers.txt");
        let db = Database::parse(PHONE_METADATA).expect("metadata parses");
        let corpus = phone_corpus();
        let got: Vec<String> = corpus
            .iter()
            .map(|(region, v)| parse_phone(&db, *region, v).unwrap_or_else(|| "-".into()))
            .collect();
        if std::env::var_os("AUDIENCE_WRITE_PHONE_ANSWERS").is_some() {
            std::fs::write(&path, got.join("\n") + "\n").expect("write answers");
            return;
        }
        let want = std::fs::read_to_string(&path).expect("vendor/phonenumber/answers.txt");
        let want: Vec<&str> = want.lines().collect();
        assert_eq!(want.len(), corpus.len(), "answers for another corpus");
        let wrong: Vec<String> = corpus
            .iter()
            .zip(want.iter().zip(&got))
            .filter(|(_, (w, g))| **w != g.as_str())
            .take(10)
            .map(|((r, v), (w, g))| format!("{r:?} {v:?}: published {w}, patched {g}"))
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert!(
            got.iter().filter(|g| g.as_str() != "-").count() > 10_000,
            "the corpus holds valid numbers too"
        );
    }

    #[test]
    fn identity_phone_cache_warms_on_threads() {
        let n = ns(NormaliserKind::Phone, Some("GB"), &[]);
        let cache = PhoneCache::default();
        let plain = Normaliser::new(&n);
        let cached = Normaliser::new(&n).with_cache(&cache);
        let raws: Vec<String> = (0..500)
            .map(|i| match i % 3 {
                0 => format!("+44 7900 {:06}", 100_000 + i),
                1 => format!(" (0)7900-{:06}", 100_000 + i),
                _ => format!("12{i}"),
            })
            .collect();
        cached
            .start_warm(raws.iter().map(String::as_str), 2)
            .expect("new numbers to parse")
            .finish();
        assert!(
            cache.get("+44 7900 100000").is_some(),
            "parsed ahead, by the trimmed value"
        );
        assert!(cache.get("(0)7900-100001").is_some());
        for r in &raws {
            assert_eq!(cached.apply(r), plain.apply(r), "{r}");
        }
    }

    #[test]
    fn identity_phone_cache_gives_the_same_answers() {
        let n = ns(NormaliserKind::Phone, Some("GB"), &[]);
        let cache = PhoneCache::default();
        let plain = Normaliser::new(&n);
        let cached = Normaliser::new(&n).with_cache(&cache);
        for v in [
            "07900 123456",
            " +44 7900 123456 ",
            "12",
            "0000",
            "07900 123456",
            "12",
        ] {
            assert_eq!(cached.apply(v), plain.apply(v), "{v}");
            assert_eq!(cached.apply(v), plain.apply(v), "{v}, from the cache");
        }
        assert_eq!(
            cache.get("12"),
            Some(None),
            "invalid numbers are remembered too"
        );
    }
}
