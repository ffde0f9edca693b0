//! Stopping a run on SIGINT or SIGTERM (`audience run`).
//!
//! The first signal asks the run to stop: a stage before the export is
//! dropped where it stands; the export stops between files, and between the
//! parts of a multipart upload, which it then aborts. The run then writes its
//! record (`failed`, with the signal), releases its locks, removes its
//! temporary files, and the process exits with 128 + the signal number (130
//! for SIGINT, 143 for SIGTERM). A destination whose `_SUCCESS` for the run
//! was already written stays published; no other is. A second signal exits at
//! once, as a kill would (the next run marks the record failed).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

use crate::error::{Error, Result};

/// A signal that stops a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        }
    }

    /// The shell's code for a process ended by this signal: 128 + its number.
    pub fn exit_code(self) -> i32 {
        match self {
            Signal::Int => 130,
            Signal::Term => 143,
        }
    }
}

/// Whether (and by which signal) a run was asked to stop. Clones share the
/// state; the default is never raised unless [`Interrupt::raise`] is called.
#[derive(Debug, Clone)]
pub struct Interrupt(Arc<watch::Sender<Option<Signal>>>);

impl Default for Interrupt {
    fn default() -> Self {
        Interrupt(Arc::new(watch::channel(None).0))
    }
}

impl Interrupt {
    /// An interrupt raised by this process's first SIGINT or SIGTERM; a
    /// second one exits at once. Needs a Tokio runtime.
    ///
    /// # Errors
    /// [`Error::Internal`] when the signal handlers cannot be installed.
    pub fn listen() -> Result<Interrupt> {
        use tokio::signal::unix::{SignalKind, signal};
        let io = |e: std::io::Error| Error::Internal(format!("installing signal handlers: {e}"));
        let mut term = signal(SignalKind::terminate()).map_err(io)?;
        let mut int = signal(SignalKind::interrupt()).map_err(io)?;
        let stop = Interrupt::default();
        let raised = stop.clone();
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    _ = int.recv() => Signal::Int,
                    _ = term.recv() => Signal::Term,
                };
                if raised.raised().is_some() {
                    eprintln!("{}: exiting at once", sig.name());
                    std::process::exit(sig.exit_code());
                }
                tracing::warn!(
                    signal = sig.name(),
                    "stopping (a second signal exits at once; a run is then left for the next one to mark failed)"
                );
                raised.raise(sig);
            }
        });
        Ok(stop)
    }

    /// Ask the run to stop (the first signal is the one reported).
    pub fn raise(&self, sig: Signal) {
        self.0.send_if_modified(|s| {
            let first = s.is_none();
            if first {
                *s = Some(sig);
            }
            first
        });
    }

    pub fn raised(&self) -> Option<Signal> {
        *self.0.borrow()
    }

    /// # Errors
    /// [`Error::Interrupted`] once the interrupt is raised.
    pub fn check(&self) -> Result<()> {
        self.raised().map_or(Ok(()), |s| Err(Error::Interrupted(s)))
    }

    /// Wait until the interrupt is raised.
    pub async fn raised_signal(&self) -> Signal {
        let mut rx = self.0.subscribe();
        loop {
            if let Some(s) = *rx.borrow_and_update() {
                return s;
            }
            // The sender lives as long as `self`: `changed` cannot fail here.
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// `work`, or [`Error::Interrupted`] as soon as the interrupt is raised
    /// (`work` is then dropped where it stands).
    ///
    /// # Errors
    /// What `work` returns, or [`Error::Interrupted`].
    pub async fn race<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            biased;
            s = self.raised_signal() => Err(Error::Interrupted(s)),
            r = work => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_signal_is_reported_and_stops_work() {
        let stop = Interrupt::default();
        assert!(stop.check().is_ok());
        let clone = stop.clone();
        let waiting =
            tokio::spawn(async move { clone.race(std::future::pending::<Result<()>>()).await });
        stop.raise(Signal::Term);
        stop.raise(Signal::Int);
        let r = waiting.await.expect("joined");
        assert!(matches!(r, Err(Error::Interrupted(Signal::Term))), "{r:?}");
        assert!(matches!(
            stop.check(),
            Err(Error::Interrupted(Signal::Term))
        ));
        assert_eq!(Signal::Term.exit_code(), 143);
        // Work that is already done wins over nothing raised.
        assert_eq!(
            Interrupt::default().race(async { Ok(7) }).await.ok(),
            Some(7)
        );
    }
}
