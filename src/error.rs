//! The crate error, grouped by who must act.
//!
//! * [`Error::Config`]: the project's `audience.toml` or SQL files are wrong; every
//!   problem found is listed together, each with its file and key path.
//! * [`Error::Input`]: a dataset (file, column, type) does not match what the
//!   config declares.
//! * [`Error::Sql`]: a segment or feature query failed to plan or run.
//! * [`Error::Storage`]: object storage (local disk or a bucket) failed.
//! * [`Error::Interrupted`]: a signal stopped the run.
//! * [`Error::Internal`]: a bug in `audience`; please report it.
//!
//! Every variant maps to exit code 2, except an interrupted run: 128 + the
//! signal's number (see [`Error::exit_code`]).

use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One problem found while validating a project. Problems are collected and
/// reported together rather than stopping at the first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The file the problem is in (e.g. `audience.toml`, `sql/segments/x.sql`).
    pub file: String,
    /// Dotted key path inside the file (`datasets.crm.path`), or a line (`line 3`).
    pub location: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.location, self.message)
        }
    }
}

/// A list of validation problems, printed one per line.
#[derive(Debug, Clone, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn push(&mut self, file: &str, location: impl Into<String>, message: impl Into<String>) {
        // One line per problem: engine messages can span lines.
        let message: String = message.into();
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        self.0.push(Problem {
            file: file.to_string(),
            location: location.into(),
            message,
        });
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// `Ok(())` when empty, otherwise the whole list as an [`Error::Config`].
    pub fn into_result(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(self))
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in the project:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// The crate error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The project configuration or SQL is invalid; all problems found are listed.
    #[error("{0}")]
    Config(Problems),

    /// A dataset does not match its declaration (missing file or column, wrong
    /// type, schema drift between files).
    #[error("dataset `{dataset}`{}{}: {message}", file.as_ref().map(|f| format!(", file `{f}`")).unwrap_or_default(), column.as_ref().map(|c| format!(", column `{c}`")).unwrap_or_default())]
    Input {
        dataset: String,
        file: Option<String>,
        column: Option<String>,
        message: String,
    },

    /// A segment or feature query failed.
    #[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Sql {
        file: String,
        line: Option<usize>,
        message: String,
    },

    /// Reading or writing object storage failed.
    #[error("storage error at `{location}`: {source}")]
    Storage {
        location: String,
        #[source]
        source: object_store::Error,
    },

    /// A local I/O failure outside object storage (state folder, project files).
    #[error("I/O error at `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// An export could not be produced as configured (limit exceeded, pack check failed).
    #[error("export to destination `{destination}`: {message}")]
    Export {
        destination: String,
        message: String,
    },

    /// The engine failed while running a stage.
    #[error("{stage}: {source}")]
    Engine {
        stage: &'static str,
        #[source]
        source: datafusion::error::DataFusionError,
    },

    /// SIGINT or SIGTERM stopped the run (see [`crate::run::interrupt`]).
    #[error(
        "interrupted by {}: the run stopped; a destination is published only if this run wrote its `_SUCCESS`",
        .0.name()
    )]
    Interrupted(crate::run::interrupt::Signal),

    /// A bug in audience. Please report it with the command that produced it.
    #[error("internal error (a bug in audience, please report it): {0}")]
    Internal(String),
}

impl Error {
    /// Exit code policy: every error is 2, except an interrupted run, which
    /// exits as the shell reports a process ended by its signal (130 for
    /// SIGINT, 143 for SIGTERM). (1 is reserved for runs that finished with
    /// warnings the user asked to fail on.)
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Interrupted(s) => s.exit_code(),
            _ => 2,
        }
    }

    pub fn input(
        dataset: &str,
        file: Option<&str>,
        column: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Error::Input {
            dataset: dataset.to_string(),
            file: file.map(str::to_string),
            column: column.map(str::to_string),
            message: message.into(),
        }
    }

    pub fn engine(stage: &'static str) -> impl FnOnce(datafusion::error::DataFusionError) -> Self {
        move |source| Error::Engine { stage, source }
    }

    pub fn storage(location: impl Into<String>) -> impl FnOnce(object_store::Error) -> Self {
        let location = location.into();
        move |source| Error::Storage { location, source }
    }

    pub fn io(path: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// "did you mean `x`?" for a misspelt name among `candidates`, if one is close.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&name.to_lowercase(), &c.to_lowercase());
        if score > 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c.to_string())
}

/// "valid values are `a`, `b`, `c`" plus a suggestion when one is close.
pub fn one_of<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str> + Clone) -> String {
    let list: Vec<String> = candidates
        .clone()
        .into_iter()
        .map(|c| format!("`{c}`"))
        .collect();
    let valid = if list.is_empty() {
        "none are declared".to_string()
    } else {
        format!("valid values are {}", list.join(", "))
    };
    match did_you_mean(name, candidates) {
        Some(s) => format!("did you mean `{s}`? {valid}"),
        None => valid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_suggests_close_names() {
        assert_eq!(
            did_you_mean("emial", ["email", "phone"]).as_deref(),
            Some("email")
        );
        assert_eq!(did_you_mean("zzz", ["email", "phone"]), None);
        assert!(one_of("crn", ["crm", "web"]).starts_with("did you mean `crm`?"));
    }
}
