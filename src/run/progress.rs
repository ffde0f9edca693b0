//! Progress for long stages: a spinner with counts on a terminal, structured
//! `tracing` events otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Where progress goes.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    terminal: bool,
}

impl Progress {
    /// Spinners when stderr is a terminal and `quiet` is off; log events otherwise.
    pub fn new(quiet: bool) -> Self {
        Progress {
            terminal: !quiet && std::io::stderr().is_terminal(),
        }
    }

    /// No spinners (tests, libraries).
    pub fn hidden() -> Self {
        Progress { terminal: false }
    }

    pub fn stage(&self, name: &'static str) -> Stage {
        let bar = self.terminal.then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix:.bold} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.set_prefix(name);
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        tracing::debug!(stage = name, "stage started");
        Stage {
            name,
            start: Instant::now(),
            bar,
        }
    }
}

/// A running stage.
pub struct Stage {
    name: &'static str,
    start: Instant,
    bar: Option<ProgressBar>,
}

impl Stage {
    /// Update the message (e.g. rows read so far).
    pub fn update(&self, msg: impl Into<String>) {
        if let Some(b) = &self.bar {
            b.set_message(msg.into());
        }
    }

    /// Finish with a summary; returns the stage's seconds.
    pub fn finish(self, summary: &str) -> f64 {
        let secs = self.start.elapsed().as_secs_f64();
        match &self.bar {
            Some(b) => {
                if let Ok(style) = ProgressStyle::with_template("✓ {prefix:.bold} {msg}") {
                    b.set_style(style);
                }
                b.finish_with_message(format!("{summary} ({secs:.2}s)"))
            }
            None => tracing::info!(stage = self.name, seconds = secs, "{summary}"),
        }
        secs
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
