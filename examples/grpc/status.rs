//! Glue between gRPC statuses and the idempotency layer, shared by `examples/tonic_server.rs`
//! and `tests/grpc.rs`. Nothing here is specific to the orders service: copy it as it is.

use bytes::Bytes;
use http::{HeaderValue, Response};
use tonic::{Code, Status};
use tower_idempotency::Disposition;
use tower_idempotency::problem::{Problem, ProblemKind};

/// The layer's problems as gRPC statuses, for
/// [`IdempotencyLayer::problem_response`](tower_idempotency::IdempotencyLayer::problem_response).
///
/// By default the layer answers with an HTTP status and an `application/problem+json` body,
/// which a gRPC client reads as a broken stream (`INTERNAL`). This hook answers with a
/// trailers-only gRPC response instead: `200 OK`, `grpc-status`, `grpc-message` (the problem's
/// detail) and, where the problem has one, a `retry-after` entry the client finds in the
/// status's metadata.
pub(crate) fn grpc_problem(problem: &Problem) -> Response<Bytes> {
    let code = match problem.kind() {
        ProblemKind::MissingKey | ProblemKind::InvalidKey(_) | ProblemKind::UnreadableBody => {
            Code::InvalidArgument
        }
        ProblemKind::BodyTooLarge { .. } => Code::ResourceExhausted,
        // Another call with the key is running: retry later to get its response.
        ProblemKind::InProgress => Code::Aborted,
        // The key belongs to a different request: use a new key.
        ProblemKind::Mismatch => Code::FailedPrecondition,
        // The call ran and will not run again, but its response was not kept.
        ProblemKind::ResponseNotStored => Code::AlreadyExists,
        ProblemKind::StoreUnavailable | ProblemKind::ShuttingDown => Code::Unavailable,
        _ => Code::Unknown,
    };
    let mut res: Response<Bytes> = Status::new(code, problem.detail()).into_http();
    if let Some(after) = problem.retry_after() {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        res.headers_mut()
            .insert("retry-after", HeaderValue::from(secs));
    }
    res
}

/// Marks a handler's retryable gRPC errors so that the layer releases the key instead of
/// recording them, for `tower::ServiceBuilder::map_response` between the layer and the
/// tonic routes.
///
/// A gRPC error travels as `200 OK` with `grpc-status` in the headers (a trailers-only
/// response), which the layer records like any other `2xx`. The codes released here are those
/// whose HTTP counterparts the layer releases by default (`5xx`, `408`, `429`) and `CANCELLED`;
/// every other error, such as `INVALID_ARGUMENT`, is recorded and replayed.
pub(crate) fn release_retryable<B>(mut res: Response<B>) -> Response<B> {
    // tonic puts the handler's `Status` into the extensions of the response it makes from it.
    let code = res.extensions().get::<Status>().map(Status::code);
    if let Some(
        Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Internal
        | Code::Unimplemented
        | Code::Unavailable
        | Code::DataLoss,
    ) = code
    {
        res.extensions_mut().insert(Disposition::Release);
    }
    res
}
