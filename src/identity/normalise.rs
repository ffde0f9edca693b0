//! Identity normalisers (SPEC §4 "Normalisers, exactly").
//!
//! Checks, in this order: longer than 1,024 characters → `too_long`; trim (and
//! lower-case for e-mail); blocked → `blocked`; invalid → `invalid`.

use std::borrow::Cow;

use phonenumber::country::Id as Region;
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

/// A namespace's normaliser, ready to apply to many values.
#[derive(Debug, Clone)]
pub struct Normaliser<'a> {
    ns: &'a Namespace,
    region: Option<Region>,
    patterns: Vec<Regex>,
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
        }
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
                let parsed: PhoneNumber =
                    phonenumber::parse(self.region, &value).map_err(|_| Reject::Invalid)?;
                if !phonenumber::is_valid(&parsed) {
                    return Err(Reject::Invalid);
                }
                Ok(Cow::Owned(parsed.format().mode(Mode::E164).to_string()))
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
}
