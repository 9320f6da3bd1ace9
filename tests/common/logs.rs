//! Captures what `tracing` logs during one test, for the tests that assert on log lines.

use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;

/// The log lines of one test: installed as the thread's default subscriber until dropped.
#[derive(Clone, Default)]
pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures every event of this thread (a `current_thread` runtime's tasks included) until
    /// the guard is dropped.
    ///
    /// `tracing` caches per call site whether anyone listens, across threads: a call site first
    /// reached by another test's thread, with no subscriber, may be cached as silent. So the
    /// cache is rebuilt once this thread's subscriber is in place.
    pub(crate) fn capture() -> (Self, DefaultGuard) {
        let logs = Self::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        tracing::callsite::rebuild_interest_cache();
        (logs, guard)
    }

    /// Everything logged so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// How many times `needle` was logged.
    pub(crate) fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
