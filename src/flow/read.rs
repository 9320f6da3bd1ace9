//! Reading the request: its body is buffered (up to a limit) and the request fingerprinted,
//! then the body is handed on to the inner service unchanged.

use http::request;
use http_body::Body;

use super::Flow;
use crate::body::{Buffered, RequestBody, buffer};
use crate::config::Fingerprinting;
use crate::fingerprint::Fingerprint;
use crate::problem::ProblemKind;

impl<St> Flow<St> {
    /// Buffers the body and fingerprints the request, unless fingerprints are off.
    pub(super) async fn read<B: Body>(
        &self,
        parts: &request::Parts,
        body: B,
    ) -> Result<(RequestBody<B>, Option<Fingerprint>), ProblemKind> {
        let limit = self.config.max_request_body;
        let custom = match &self.config.fingerprint {
            Fingerprinting::Off => return Ok((RequestBody::new(body), None)),
            Fingerprinting::Default => None,
            Fingerprinting::Custom(f) => Some(f),
        };
        // Pinned in this future, not boxed: after an overflow the rest is not read.
        match buffer(std::pin::pin!(body), limit).await {
            Buffered::Complete { data, trailers } => {
                let fingerprint = match custom {
                    Some(f) => f(parts, &data),
                    None => Fingerprint::of_request(parts, &data),
                };
                Ok((RequestBody::buffered(data, trailers), Some(fingerprint)))
            }
            Buffered::Overflow { .. } => Err(ProblemKind::BodyTooLarge { limit }),
            Buffered::Failed { .. } => Err(ProblemKind::UnreadableBody),
        }
    }
}
