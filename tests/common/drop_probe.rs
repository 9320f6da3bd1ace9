//! Tells a test that a server dropped a call before it finished (the client went away).

use std::sync::Arc;

use tokio::sync::Notify;

/// Notifies when dropped before [`disarm`](Self::disarm): the server dropped the call.
pub(crate) struct DropProbe(Option<Arc<Notify>>);

impl DropProbe {
    pub(crate) fn new(dropped: Arc<Notify>) -> Self {
        Self(Some(dropped))
    }

    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for DropProbe {
    fn drop(&mut self) {
        if let Some(dropped) = self.0.take() {
            dropped.notify_one();
        }
    }
}
