//! `audience generate`: a realistic synthetic project of any size, deterministic
//! for a given seed.
//!
//! People are generated in blocks of [`BLOCK`] with a random stream seeded from
//! `(seed, block)`, so the output does not depend on threads or batch sizes.
//! Record batches are streamed to Parquet files that roll every
//! [`ROWS_PER_FILE`] rows: memory stays bounded at any size.
//!
//! What is in it: three customer profile sources (crm, loyalty, web sign-ups)
//! with conflicting attributes and update times; dirty identifiers (case,
//! whitespace, national and international phone formats, junk values); anonymous
//! web sessions on cookies, later stitched by login events carrying an e-mail;
//! shared devices (cookies used by several people: hubs); purchases with revenue
//! over the year before `end`; e-mail consent flags; and a prospect list that
//! shares some e-mails with customers.

mod tables;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use tables::V;

/// People per random block.
pub const BLOCK: u64 = 1000;
/// Rows per Parquet file before a new part file starts.
pub const ROWS_PER_FILE: usize = 4_000_000;

/// Options for [`generate`].
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub people: u64,
    pub out: PathBuf,
    pub seed: u64,
    /// Average events per person (web events and purchases together).
    pub events_per_person: u32,
    /// The end of the generated year of activity (exclusive).
    pub end: DateTime<Utc>,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GenerateSummary {
    pub people: u64,
    /// `(dataset, rows, files)`.
    pub datasets: Vec<(String, u64, usize)>,
}

const FIRST: [&str; 40] = [
    "Olivia", "Amelia", "Isla", "Ava", "Mia", "Ivy", "Lily", "Isabella", "Rosie", "Sophia",
    "Grace", "Freya", "Emily", "Poppy", "Ella", "Evie", "Chloe", "Sienna", "Ruby", "Alice", "Noah",
    "Oliver", "George", "Arthur", "Muhammad", "Leo", "Harry", "Oscar", "Archie", "Henry",
    "Theodore", "Jack", "Charlie", "Finley", "Freddie", "Alfie", "Thomas", "James", "Jacob",
    "William",
];
const LAST: [&str; 30] = [
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel",
    "Robinson", "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall",
    "Thomas", "Clarke", "Jackson", "Wood", "Harris", "Edwards", "Turner", "Martin", "Cooper",
    "Hill", "Ward", "Hughes",
];
const CITIES: [(&str, &str); 12] = [
    ("London", "SW1A"),
    ("Manchester", "M1"),
    ("Birmingham", "B1"),
    ("Leeds", "LS1"),
    ("Glasgow", "G1"),
    ("Liverpool", "L1"),
    ("Bristol", "BS1"),
    ("Edinburgh", "EH1"),
    ("Cardiff", "CF10"),
    ("Belfast", "BT1"),
    ("Newcastle", "NE1"),
    ("Brighton", "BN1"),
];
const STREETS: [&str; 10] = [
    "High Street",
    "Station Road",
    "Church Lane",
    "Victoria Road",
    "Green Lane",
    "Manor Road",
    "Park Avenue",
    "Queens Road",
    "New Street",
    "Mill Lane",
];
const DOMAINS: [&str; 6] = [
    "gmail.com",
    "yahoo.co.uk",
    "outlook.com",
    "hotmail.co.uk",
    "icloud.com",
    "btinternet.com",
];
const JUNK_EMAIL: [&str; 6] = ["", "unknown", "N/A", "none", "test@example.com", "no email"];
const JUNK_PHONE: [&str; 4] = ["0000000000", "-", "n/a", "123"];
const TIERS: [&str; 3] = ["bronze", "silver", "gold"];
const PAGES: [&str; 8] = [
    "/", "/shoes", "/dresses", "/sale", "/bags", "/account", "/basket", "/new-in",
];
const CHANNELS: [&str; 3] = ["web", "store", "app"];
const LIST_SOURCES: [&str; 3] = ["event_signup", "partner_list", "competition"];

const DAY_US: i64 = 86_400_000_000;

struct Person {
    first: &'static str,
    last: &'static str,
    gender: &'static str,
    email: String,
    alt_email: String,
    phone: String,
    city: usize,
    old_city: usize,
    house: u32,
    street: &'static str,
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn dirty_email(rng: &mut ChaCha8Rng, email: &str) -> String {
    let r: f64 = rng.random();
    if r < 0.02 {
        pick(rng, &JUNK_EMAIL).to_string()
    } else if r < 0.12 {
        email.to_uppercase()
    } else if r < 0.17 {
        format!("  {email} ")
    } else {
        email.to_string()
    }
}

fn dirty_phone(rng: &mut ChaCha8Rng, national: &str) -> String {
    // national is "079XXXXXXXX"
    let r: f64 = rng.random();
    if r < 0.02 {
        pick(rng, &JUNK_PHONE).to_string()
    } else if r < 0.35 {
        format!("+44 {} {}", &national[1..5], &national[5..])
    } else if r < 0.5 {
        format!("(0){}-{}", &national[1..5], &national[5..])
    } else {
        format!("{} {}", &national[..5], &national[5..])
    }
}

fn cookie_id(seed: u64, person: u64, k: u64) -> String {
    let h = splitmix(
        seed ^ person.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k.wrapping_mul(0xBF58_476D_1CE4_E5B9),
    );
    format!("ck_{h:016x}")
}

/// A fixed mixing function for ids that must not depend on the random stream.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where a project is generated before it replaces `out`'s files: a hidden
/// folder inside `out` (on the same file system, so each part moves into
/// place by a rename).
pub const STAGING: &str = ".audience-generate.partial";

/// Generate a project into `opts.out`: its data sets and project files,
/// replacing those already there. Everything is written to [`STAGING`]
/// first and moved into place once complete: a generation that fails or is
/// stopped leaves `out` as it was (a killed one leaves the staging folder,
/// which the next generation removes).
///
/// `progress` is called after each block of people with the count so far;
/// an error it returns (e.g. [`Error::Interrupted`]) stops the generation.
///
/// # Errors
/// [`Error::Io`] when the output folder or files cannot be written; what
/// `progress` returns.
pub fn generate(
    opts: &GenerateOptions,
    progress: impl FnMut(u64) -> Result<()>,
) -> Result<GenerateSummary> {
    let out = &opts.out;
    let stage = out.join(STAGING);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(Error::io(stage.display().to_string()))?;
    }
    let written = generate_into(opts, &stage, progress).and_then(|summary| {
        publish(&stage, out, &summary)?;
        Ok(summary)
    });
    // Empty after a publish; what is left of the project otherwise.
    let _ = std::fs::remove_dir_all(&stage);
    written
}

/// Move the staged project files and data sets over `out`'s.
fn publish(stage: &Path, out: &Path, summary: &GenerateSummary) -> Result<()> {
    let io = |p: &Path| Error::io(p.display().to_string());
    let datasets = summary
        .datasets
        .iter()
        .map(|(name, _, _)| format!("data/{name}"));
    for rel in datasets.chain(PROJECT_FILES.iter().map(|(rel, _)| (*rel).to_string())) {
        let (from, to) = (stage.join(&rel), out.join(&rel));
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        if to.is_dir() {
            std::fs::remove_dir_all(&to).map_err(io(&to))?;
        }
        std::fs::rename(&from, &to).map_err(io(&to))?;
    }
    Ok(())
}

fn generate_into(
    opts: &GenerateOptions,
    stage: &Path,
    mut progress: impl FnMut(u64) -> Result<()>,
) -> Result<GenerateSummary> {
    let name = opts
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "generated".into());
    write_project_files(stage, &name)?;
    let data = stage.join("data");
    let mut t = tables::all(&data)?;
    let end = opts.end.timestamp_micros();
    let start = end - 365 * DAY_US;
    let hub_count = (opts.people / 2000).max(1);
    // About eight people log in on each shared device.
    let hub_rate = (hub_count as f64 * 8.0 / opts.people.max(1) as f64).min(1.0);
    let epp = f64::from(opts.events_per_person);

    let blocks = opts.people.div_ceil(BLOCK);
    for block in 0..blocks {
        let mut rng =
            ChaCha8Rng::seed_from_u64(splitmix(opts.seed) ^ splitmix(block.wrapping_add(1)));
        let lo = block * BLOCK;
        let hi = ((block + 1) * BLOCK).min(opts.people);
        for i in lo..hi {
            person(
                &mut rng,
                &mut t,
                opts.seed,
                i,
                start,
                end,
                (hub_count, hub_rate),
                epp,
            )?;
        }
        progress(hi)?;
    }
    let mut summary = GenerateSummary {
        people: opts.people,
        datasets: Vec::new(),
    };
    for table in [t.crm, t.loyalty, t.signups, t.web, t.purchases, t.prospects] {
        summary.datasets.push(table.finish()?);
    }
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn person(
    rng: &mut ChaCha8Rng,
    t: &mut tables::Tables,
    seed: u64,
    i: u64,
    start: i64,
    end: i64,
    (hub_count, hub_rate): (u64, f64),
    epp: f64,
) -> Result<()> {
    let first = pick(rng, &FIRST);
    let last = pick(rng, &LAST);
    let female = FIRST.iter().position(|f| *f == first).unwrap_or(0) < 20;
    let domain = pick(rng, &DOMAINS);
    let p = Person {
        first,
        last,
        gender: if rng.random_bool(0.05) {
            "unknown"
        } else if female {
            "F"
        } else {
            "M"
        },
        email: format!(
            "{}.{}{}@{}",
            first.to_lowercase(),
            last.to_lowercase(),
            i,
            domain
        ),
        alt_email: format!("{}{}@work-{}.co.uk", first.to_lowercase(), i, i % 97),
        phone: format!(
            "079{}{:07}",
            pick(rng, &[0u8, 2, 4, 5, 6, 7, 8, 9]),
            rng.random_range(0..10_000_000u32)
        ),
        city: rng.random_range(0..CITIES.len()),
        old_city: rng.random_range(0..CITIES.len()),
        house: rng.random_range(1..200),
        street: pick(rng, &STREETS),
    };
    let ts = |rng: &mut ChaCha8Rng| rng.random_range(start..end);
    let address = |city: usize, house: u32, street: &str| {
        (
            format!("{house} {street}"),
            CITIES[city].0,
            format!("{} {}AA", CITIES[city].1, house % 9 + 1),
        )
    };

    let in_crm = rng.random_bool(0.7);
    let in_loyalty = rng.random_bool(0.4);
    let in_signup = rng.random_bool(0.5);
    let crm_id = format!("C{i:09}");
    let loyalty_id = format!("L{i:08}");
    let optin = |rng: &mut ChaCha8Rng| {
        if rng.random_bool(0.1) {
            None
        } else {
            Some(rng.random_bool(0.6))
        }
    };

    if in_crm {
        let moved = rng.random_bool(0.2);
        let city = if moved { p.old_city } else { p.city };
        let (line, city_name, postcode) = address(city, p.house, p.street);
        let email = dirty_email(rng, &p.email);
        let phone = if rng.random_bool(0.8) {
            Some(dirty_phone(rng, &p.phone))
        } else {
            None
        };
        let opt = optin(rng);
        let updated = ts(rng);
        t.crm.row(&[
            V::S(Some(&crm_id)),
            V::S(Some(&email)),
            V::S(phone.as_deref()),
            V::S(Some(p.first)),
            V::S(Some(p.last)),
            V::S(Some(p.gender)),
            V::S(Some(city_name)),
            V::S(Some(&postcode)),
            V::S(Some(&line)),
            V::B(opt),
            V::T(Some(updated)),
        ])?;
    }
    if in_loyalty {
        let email = if rng.random_bool(0.1) {
            p.alt_email.clone()
        } else {
            dirty_email(rng, &p.email)
        };
        let phone = if rng.random_bool(0.6) {
            Some(dirty_phone(rng, &p.phone))
        } else {
            None
        };
        let first = if rng.random_bool(0.1) {
            &p.first[..p.first.len().min(3)]
        } else {
            p.first
        };
        let (line, city_name, postcode) = address(p.city, p.house, p.street);
        let updated = ts(rng);
        let tier = pick(rng, &TIERS);
        let points = rng.random_range(0..20_000i64);
        t.loyalty.row(&[
            V::S(Some(&loyalty_id)),
            V::S(Some(&email)),
            V::S(phone.as_deref()),
            V::S(Some(first)),
            V::S(if rng.random_bool(0.1) {
                None
            } else {
                Some(p.last)
            }),
            V::S(Some(city_name)),
            V::S(Some(&postcode)),
            V::S(Some(&line)),
            V::S(Some(tier)),
            V::I(Some(points)),
            V::T(Some(updated)),
        ])?;
    }
    let cookies = 1 + rng.random_range(0..3u64);
    if in_signup {
        let email = dirty_email(rng, &p.email);
        let opt = optin(rng);
        let signed = ts(rng);
        let city = if rng.random_bool(0.3) {
            None
        } else {
            Some(CITIES[p.city].0)
        };
        t.signups.row(&[
            V::S(Some(&email)),
            V::S(Some(&cookie_id(seed, i, 0))),
            V::S(Some(p.first)),
            V::S(city),
            V::B(opt),
            V::T(Some(signed)),
        ])?;
    }
    // Web events: anonymous page views per cookie, a login that links cookie and e-mail.
    let web_events = (epp * 0.85 * rng.random_range(0.2..1.8)).round() as u64;
    let logs_in = rng.random_bool(0.7);
    for k in 0..cookies {
        let cookie = cookie_id(seed, i, k);
        let per_cookie = web_events / cookies + u64::from(k < web_events % cookies);
        for e in 0..per_cookie {
            let when = ts(rng);
            let (kind, email) = if e == 0 && logs_in {
                ("login", Some(dirty_email(rng, &p.email)))
            } else if rng.random_bool(0.1) {
                ("add_to_cart", None)
            } else {
                ("page_view", None)
            };
            t.web.row(&[
                V::S(Some(&cookie)),
                V::S(email.as_deref()),
                V::S(Some(kind)),
                V::S(Some(pick(rng, &PAGES))),
                V::T(Some(when)),
            ])?;
        }
    }
    // A shared device (hub): a few logins on one of the shared cookies.
    if rng.random_bool(hub_rate) {
        let hub = format!("ck_shared_{:04}", rng.random_range(0..hub_count));
        let when = ts(rng);
        let email = dirty_email(rng, &p.email);
        t.web.row(&[
            V::S(Some(&hub)),
            V::S(Some(&email)),
            V::S(Some("login")),
            V::S(Some("/account")),
            V::T(Some(when)),
        ])?;
    }
    // Purchases: by crm id when known, else by e-mail.
    if rng.random_bool(0.6) {
        let n = (epp * 0.25 * rng.random_range(0.0..2.0)).round() as u64;
        for o in 0..n {
            let when = ts(rng);
            let revenue = (rng.random_range(5.0..250.0f64) * 100.0).round() / 100.0;
            let by_crm = in_crm && rng.random_bool(0.7);
            let email = if by_crm {
                None
            } else {
                Some(dirty_email(rng, &p.email))
            };
            let order = format!("O{i:09}-{o:03}");
            t.purchases.row(&[
                V::S(if by_crm { Some(&crm_id) } else { None }),
                V::S(email.as_deref()),
                V::S(Some("purchase")),
                V::S(Some(&order)),
                V::F(Some(revenue)),
                V::S(Some(pick(rng, &CHANNELS))),
                V::T(Some(when)),
            ])?;
        }
    }
    // Prospects: a purchased list; some e-mails are also customers'.
    if rng.random_bool(0.2) {
        let email = if rng.random_bool(0.3) {
            p.email.clone()
        } else {
            format!(
                "{}.{}.p{}@{}",
                first.to_lowercase(),
                last.to_lowercase(),
                i,
                domain
            )
        };
        let updated = ts(rng);
        t.prospects.row(&[
            V::S(Some(&email)),
            V::S(Some(p.first)),
            V::S(Some(p.last)),
            V::S(Some(CITIES[rng.random_range(0..CITIES.len())].0)),
            V::S(Some(pick(rng, &LIST_SOURCES))),
            V::T(Some(updated)),
        ])?;
    }
    Ok(())
}

/// The generated project's `audience.toml` and SQL: the examples in `sql/examples/`.
const PROJECT_FILES: [(&str, &str); 8] = [
    (
        "audience.toml",
        include_str!("../../sql/examples/audience.toml"),
    ),
    (
        "sql/features/purchase_stats.sql",
        include_str!("../../sql/examples/features/purchase_stats.sql"),
    ),
    (
        "sql/segments/high_value.sql",
        include_str!("../../sql/examples/segments/high_value.sql"),
    ),
    (
        "sql/segments/newsletter_optin.sql",
        include_str!("../../sql/examples/segments/newsletter_optin.sql"),
    ),
    (
        "sql/segments/high_value_optin.sql",
        include_str!("../../sql/examples/segments/high_value_optin.sql"),
    ),
    (
        "sql/segments/gold_lapsed.sql",
        include_str!("../../sql/examples/segments/gold_lapsed.sql"),
    ),
    (
        "sql/segments/browsed_not_bought.sql",
        include_str!("../../sql/examples/segments/browsed_not_bought.sql"),
    ),
    (
        "sql/segments/prospects_london.sql",
        include_str!("../../sql/examples/segments/prospects_london.sql"),
    ),
];

fn write_project_files(out: &Path, name: &str) -> Result<()> {
    for (rel, text) in PROJECT_FILES {
        let path = out.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io(dir.display().to_string()))?;
        }
        let text = text.replace("{{name}}", name);
        std::fs::write(&path, text).map_err(Error::io(path.display().to_string()))?;
    }
    Ok(())
}
