//! Replaying: a retry of a completed request gets the stored response, marked as a replay.

use http::{HeaderValue, Response};
use http_body::Body;

use super::Flow;
use crate::body::ResponseBody;
use crate::extensions::Outcome;
use crate::problem::ProblemKind;
use crate::record::Record;
use crate::store::{Store, StoreKey};

impl<St: Store> Flow<St> {
    /// The stored response, marked as a replay; a problem when the record keeps no response or
    /// cannot be read.
    pub(super) fn replay<B: Body>(
        &self,
        key: &StoreKey,
        record: &Record,
    ) -> Response<ResponseBody<B>> {
        let stored = match record.response() {
            Ok(Some(stored)) => stored,
            Ok(None) if record.is_response_expired() => {
                return self.problem(ProblemKind::ResultExpired);
            }
            Ok(None) => return self.problem(ProblemKind::ResponseNotStored),
            Err(e) => {
                tracing::error!(key = %key.log_id(), error = %e, "stored record is unreadable");
                return self.problem(ProblemKind::StoreUnavailable);
            }
        };
        let mut res = Response::new(ResponseBody::full(stored.body, stored.trailers));
        *res.status_mut() = stored.status;
        *res.headers_mut() = stored.headers;
        res.headers_mut().insert(
            self.config.replayed_header.clone(),
            HeaderValue::from_static("true"),
        );
        res.extensions_mut().insert(Outcome::Replayed);
        self.outcome(Outcome::Replayed);
        res
    }
}
