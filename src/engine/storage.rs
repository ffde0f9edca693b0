//! Locations on local disk or in object storage, and the stores behind them.
//!
//! Every read and write of `audience` goes through `object_store`, so local
//! folders and buckets behave the same. Credentials and endpoints come from the
//! environment or each cloud's provider chain (`AWS_*`, `GOOGLE_*`, `AZURE_*`);
//! they are never read from `audience.toml`, and never printed or written.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use url::Url;

use crate::error::{Error, Result};

/// URL schemes `audience` reads and writes.
pub const SCHEMES: [&str; 6] = ["file", "s3", "gs", "az", "abfs", "memory"];

/// A location: a local path or a URL, resolved against the project root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    url: Url,
    /// Bytes at the start of the decoded URL path where `*`, `?` and `[`
    /// are literal: the project root of a relative path.
    literal: usize,
}

impl Location {
    /// Parse `text`: a URL with one of [`SCHEMES`], or a local path (relative
    /// paths are resolved against `root`). Globs (`*`, `?`, `[`) are kept as written.
    ///
    /// # Errors
    /// A message saying what is wrong with the text, for the caller to locate.
    pub fn parse(text: &str, root: &Path) -> std::result::Result<Location, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty location: give a path or a URL".into());
        }
        if let Some((scheme, _)) = text.split_once("://") {
            if !SCHEMES.contains(&scheme) {
                return Err(format!(
                    "unsupported URL scheme `{scheme}://`: {}",
                    crate::error::one_of(scheme, SCHEMES)
                ));
            }
            // `?` is a wildcard and `#` a character of a key, never a query
            // or a fragment. A query-like tail (`?k=v`) is refused unechoed:
            // it may be a signature (a SAS token, a presigned URL).
            if text
                .split_once('?')
                .is_some_and(|(_, tail)| tail.contains('='))
            {
                return Err(format!(
                    "a `{scheme}://` URL must not carry a query string (`?name=value`): credentials such as SAS tokens come from the environment (e.g. AZURE_STORAGE_SAS_TOKEN) or the provider chain; for a one-character wildcard before a `key=value` folder, write `[!/]` instead of `?`"
                ));
            }
            let escaped = text.replace('?', "%3F").replace('#', "%23");
            let url =
                Url::parse(&escaped).map_err(|e| format!("`{text}` is not a valid URL: {e}"))?;
            if !url.username().is_empty() || url.password().is_some() {
                // Never echo the text: it holds a secret.
                return Err(format!(
                    "a `{scheme}://` URL must not carry credentials; they come from the environment or the provider chain"
                ));
            }
            if scheme != "file" && url.host_str().unwrap_or_default().is_empty() {
                return Err(format!("`{text}` names no bucket or container"));
            }
            return Ok(Location { url, literal: 0 });
        }
        // A relative root (a caller that did not make it absolute) would
        // otherwise put its first directory in the URL's host.
        let path = std::path::absolute(root.join(text)).unwrap_or_else(|_| root.join(text));
        let mut s = path.to_string_lossy().into_owned();
        if text.ends_with('/') && !s.ends_with('/') {
            s.push('/');
        }
        // Keep glob characters literal in the URL path: they are interpreted by the lister.
        let url = Url::parse(&format!("file://{}", percent_path(&s)))
            .map_err(|e| format!("`{text}` is not a usable path: {e}"))?;
        // Wildcards are read in `text` only, not in the root it is relative to.
        let literal = if std::path::Path::new(text).is_absolute() {
            0
        } else {
            let base = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
            let base = base.to_string_lossy();
            if s.starts_with(base.as_ref()) {
                base.len()
            } else {
                0
            }
        };
        Ok(Location { url, literal })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    pub fn is_local(&self) -> bool {
        self.url.scheme() == "file"
    }

    /// `scheme://authority/`, the key the store is registered under.
    pub fn store_url(&self) -> Url {
        let mut u = self.url.clone();
        u.set_path("/");
        u.set_query(None);
        u.set_fragment(None);
        u
    }

    /// The object-store path of this location (no leading slash): the
    /// decoded URL path as it is, the path DataFusion reads this location
    /// at. (`StorePath::from` would escape `%`, `{`, `[` … once more, and
    /// write `/tmp/a%41/` to the folder `/tmp/a%2541/`.)
    pub fn path(&self) -> StorePath {
        let decoded = percent_decode(self.url.path());
        let trimmed = decoded.trim_matches('/');
        // Empty, `.` or `..` segments (`a//b`) are not valid object paths.
        StorePath::parse(trimmed).unwrap_or_else(|_| StorePath::from(trimmed))
    }

    /// A child location, `self/rel`.
    pub fn join(&self, rel: &str) -> Location {
        let mut url = self.url.clone();
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}/{}", rel.trim_start_matches('/')));
        Location {
            url,
            literal: self.literal,
        }
    }

    /// A location with a wildcard (`*`, `?` or `[` in its path, after the
    /// project root of a relative path) split into the folder to list (the
    /// path up to the last `/` before the first wildcard) and the pattern
    /// files below it must match; `None` without one.
    pub fn glob(&self) -> Option<(Location, String)> {
        let path = percent_decode(self.url.path());
        let from = path
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| i >= self.literal)?;
        let first = from + path[from..].find(['*', '?', '['])?;
        let cut = path[..first].rfind('/').map_or(0, |s| s + 1);
        let mut url = self.url.clone();
        url.set_path(&percent_path(&path[..cut]));
        Some((Location { url, literal: 0 }, path[cut..].to_string()))
    }

    /// The text to show users: the local path for files, the URL otherwise.
    pub fn display(&self) -> String {
        if self.is_local() {
            percent_decode(self.url.path())
        } else {
            self.url.to_string()
        }
    }

    /// The store for this location; see [`store_for`].
    pub fn store(&self) -> Result<Arc<dyn ObjectStore>> {
        store_for(&self.url)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

/// Characters escaped in a local path turned into a `file://` URL. Glob
/// characters `*` and `[` and `=` (hive partitions) stay literal; `?` is
/// escaped so that it stays in the path (see [`Location::glob`]).
const PATH_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'?')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'^')
    .add(b'|')
    .add(b'\\');

fn percent_path(s: &str) -> String {
    utf8_percent_encode(s, PATH_ESCAPES).to_string()
}

fn percent_decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

fn memory_stores() -> &'static Mutex<HashMap<String, Arc<InMemory>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

fn registered_stores() -> &'static Mutex<HashMap<String, Arc<dyn ObjectStore>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

/// Serve `scheme://authority` (e.g. `memory://faulty` or `s3://bucket`) with
/// `store` in this process, instead of the store built from the environment:
/// for embedding `audience` with a custom or instrumented store (tests use
/// one that fails chosen requests).
///
/// # Errors
/// [`Error::Internal`] when the registry is poisoned.
pub fn register_store(base: &str, store: Arc<dyn ObjectStore>) -> Result<()> {
    registered_stores()
        .lock()
        .map_err(|_| Error::Internal("store registry poisoned".into()))?
        .insert(base.trim_end_matches('/').to_string(), store);
    Ok(())
}

/// The object store serving `url`: a store given to [`register_store`], else local disk for `file://`, S3/GCS/Azure
/// configured from the environment for `s3://`, `gs://`, `az://`/`abfs://`, and a
/// process-wide in-memory store per authority for `memory://` (tests only).
///
/// # Errors
/// [`Error::Storage`] when the cloud builder rejects its environment (e.g. a
/// missing region or account); the message names the URL, never a secret.
pub fn store_for(url: &Url) -> Result<Arc<dyn ObjectStore>> {
    let base = format!("{}://{}", url.scheme(), url.authority());
    if let Some(s) = registered_stores()
        .lock()
        .map_err(|_| Error::Internal("store registry poisoned".into()))?
        .get(&base)
    {
        return Ok(s.clone());
    }
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "file" => Arc::new(LocalFileSystem::new()),
        "memory" => {
            let mut stores = memory_stores()
                .lock()
                .map_err(|_| Error::Internal("memory store registry poisoned".into()))?;
            stores
                .entry(base)
                .or_insert_with(|| Arc::new(InMemory::new()))
                .clone()
        }
        "s3" => Arc::new(
            s3_builder(url.as_str())
                .build()
                .map_err(Error::storage(&base))?,
        ),
        "gs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .build()
                .map_err(Error::storage(&base))?,
        ),
        "az" | "abfs" => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .build()
                .map_err(Error::storage(&base))?,
        ),
        other => {
            return Err(Error::Internal(format!(
                "unsupported scheme `{other}` passed validation"
            )));
        }
    };
    Ok(store)
}

/// The S3 client for `url`, configured from the environment. Like the AWS CLI,
/// bodies sent over HTTPS are not hashed a second time for the request
/// signature (TLS protects them, and each export file's SHA-256 is in its
/// manifest); over plain HTTP (emulators) they are. `AWS_UNSIGNED_PAYLOAD`
/// decides when it is set.
fn s3_builder(url: &str) -> AmazonS3Builder {
    let b = AmazonS3Builder::from_env().with_url(url);
    if std::env::var_os("AWS_UNSIGNED_PAYLOAD").is_some() {
        b
    } else {
        unsigned_over_https(b)
    }
}

fn unsigned_over_https(b: AmazonS3Builder) -> AmazonS3Builder {
    let https = b
        .get_config_value(&AmazonS3ConfigKey::Endpoint)
        .is_none_or(|e| e.starts_with("https://"));
    b.with_unsigned_payload(https)
}

/// Write `bytes` to `loc` through `store`, naming the location on failure.
///
/// # Errors
/// [`Error::Storage`] with the location when the store refuses the write.
pub async fn put(store: &dyn ObjectStore, loc: &Location, bytes: bytes::Bytes) -> Result<()> {
    use object_store::ObjectStoreExt;
    store
        .put(&loc.path(), object_store::PutPayload::from(bytes))
        .await
        .map_err(Error::storage(loc.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_bodies_are_signed_only_over_plain_http() {
        let unsigned = |b: AmazonS3Builder| {
            unsigned_over_https(b).get_config_value(&AmazonS3ConfigKey::UnsignedPayload)
        };
        assert_eq!(unsigned(AmazonS3Builder::new()).as_deref(), Some("true"));
        assert_eq!(
            unsigned(AmazonS3Builder::new().with_endpoint("https://s3.example.net")).as_deref(),
            Some("true")
        );
        assert_eq!(
            unsigned(AmazonS3Builder::new().with_endpoint("http://127.0.0.1:9000")).as_deref(),
            Some("false")
        );
    }

    #[test]
    fn relative_roots_resolve_from_the_working_directory() {
        let l = Location::parse("out", Path::new("benches/data")).unwrap();
        let want = std::env::current_dir().unwrap().join("benches/data/out");
        assert_eq!(l.url().host_str().unwrap_or_default(), "");
        assert_eq!(
            l.url().to_file_path().unwrap(),
            want,
            "{}",
            l.url().as_str()
        );
    }

    #[test]
    fn storage_locations_resolve() {
        let root = Path::new("/proj");
        let l = Location::parse("data/crm", root).unwrap();
        assert_eq!(l.url().as_str(), "file:///proj/data/crm");
        assert_eq!(l.path().as_ref(), "proj/data/crm");
        let s = Location::parse("s3://bucket/exports/", root).unwrap();
        assert_eq!(s.store_url().as_str(), "s3://bucket/");
        assert_eq!(s.path().as_ref(), "exports");
        assert_eq!(s.join("run1/a.csv").path().as_ref(), "exports/run1/a.csv");
        assert!(
            Location::parse("ftp://x/y", root)
                .unwrap_err()
                .contains("unsupported")
        );
        assert!(Location::parse("s3:///nobucket", root).is_err());
        let secret = Location::parse("s3://AKIAX:hunter2@bucket/x", root).unwrap_err();
        assert!(secret.contains("must not carry credentials") && !secret.contains("hunter2"));
        let spaced = Location::parse("my data/x.parquet", root).unwrap();
        assert_eq!(spaced.display(), "/proj/my data/x.parquet");
    }

    #[test]
    fn wildcards_stay_in_the_path_and_split_off() {
        let root = Path::new("/proj");
        let none = Location::parse("data/crm/", root).unwrap();
        assert!(none.glob().is_none());
        for (text, folder, pattern) in [
            ("data/crm/*.parquet", "/proj/data/crm/", "*.parquet"),
            (
                "data/crm/part-?.parquet",
                "/proj/data/crm/",
                "part-?.parquet",
            ),
            (
                "data/c#rm/day=[0-9]*/x.parquet",
                "/proj/data/c#rm/",
                "day=[0-9]*/x.parquet",
            ),
            (
                "s3://b/events/part-?.parquet",
                "s3://b/events/",
                "part-?.parquet",
            ),
            ("s3://b/ev#1/*/x.parquet", "s3://b/ev%231/", "*/x.parquet"),
            ("gs://b/*.parquet", "gs://b/", "*.parquet"),
        ] {
            let l = Location::parse(text, root).unwrap();
            assert!(
                l.url().query().is_none() && l.url().fragment().is_none(),
                "{text}"
            );
            let (base, glob) = l.glob().unwrap_or_else(|| panic!("{text}: no wildcard"));
            assert_eq!(
                (base.display().as_str(), glob.as_str()),
                (folder, pattern),
                "{text}"
            );
        }
        // Wildcard characters in the project root are literal.
        let odd = Path::new("/p[1]/a%41 *");
        assert!(Location::parse("data/crm/", odd).unwrap().glob().is_none());
        let (base, glob) = Location::parse("data/crm/*.parquet", odd)
            .unwrap()
            .glob()
            .unwrap();
        assert_eq!(
            (base.display().as_str(), glob.as_str()),
            ("/p[1]/a%41 */data/crm/", "*.parquet")
        );
        assert_eq!(base.path().as_ref(), "p[1]/a%41 */data/crm");
        let sas = Location::parse("az://c/x/?sv=2024&sig=SeCrEt", root).unwrap_err();
        assert!(
            sas.contains("query string") && !sas.contains("SeCrEt"),
            "{sas}"
        );
    }
}
