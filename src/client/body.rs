//! The request body the client layer hands to the inner service, and how it is buffered.
//!
//! A covered request's body is read into memory once, up to
//! [`max_body`](super::IdempotentRetryLayer::max_body), so that every attempt sends the same
//! bytes and trailers. A body over the limit is sent once as it is (the bytes already read,
//! then the rest of the stream) and not retried. A body that fails while it is read is sent
//! once too, ending with the same error, so the inner client reports it as it would without
//! the layer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::{Buffered, ResponseBody, buffer};

pin_project! {
    /// The request body the inner service of [`IdempotentRetry`](super::IdempotentRetry)
    /// receives: the caller's bytes, buffered for a re-send, or the caller's body streamed once.
    ///
    /// It has `Data = Bytes` and the caller's body's error type. hyper-util's `Client` takes it
    /// as its body type (`Client<_, ReplayBody<Full<Bytes>>>`); tonic's `Channel` takes it
    /// through `tonic::body::Body::new` (see the [module docs](super#under-a-tonic-channel)).
    pub struct ReplayBody<B>
    where
        B: Body,
    {
        // The server layer's body already streams, replays, chains a read prefix to the rest
        // of a stream, and ends with a read error: one piece of code for those jobs.
        #[pin]
        inner: ResponseBody<B>,
    }
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body` to be streamed once, as it is, as the layer does for a request it does not
    /// cover.
    pub fn new(body: B) -> Self {
        Self {
            inner: ResponseBody::new(body),
        }
    }

    /// The same bytes and trailers, for one attempt.
    pub(crate) fn replay(data: &Bytes, trailers: &Option<HeaderMap>) -> Self {
        Self {
            inner: ResponseBody::full(data.clone(), trailers.clone()),
        }
    }
}

impl<B: Body> std::fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ReplayBody").field(&self.inner).finish()
    }
}

impl<B: Body> Body for ReplayBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body after the layer tried to buffer it.
pub(crate) enum Prepared<B: Body> {
    /// The whole body: every attempt sends these bytes and trailers.
    Replayable {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Over the limit, or failed while read: to be sent once.
    Once(ReplayBody<B>),
}

/// Reads `body` up to `limit` bytes.
pub(crate) async fn prepare<B: Body>(body: B, limit: usize) -> Prepared<B> {
    let mut body = Box::pin(body);
    match buffer(body.as_mut(), limit).await {
        Buffered::Complete { data, trailers } => Prepared::Replayable { data, trailers },
        Buffered::Overflow { prefix } => Prepared::Once(ReplayBody {
            inner: ResponseBody::chained(prefix, body),
        }),
        Buffered::Failed { prefix, error } => Prepared::Once(ReplayBody {
            inner: ResponseBody::failed(prefix, error),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::convert::Infallible;

    /// A body of unknown length, in pieces.
    fn pieces(
        parts: [&'static [u8]; 3],
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
        StreamBody::new(futures_util::stream::iter(
            parts.map(|p| Ok(Frame::data(Bytes::from_static(p)))),
        ))
    }

    #[tokio::test]
    async fn within_the_limit_every_replay_sends_the_same_bytes() {
        let Prepared::Replayable { data, trailers } = prepare(pieces([b"ab", b"cd", b""]), 4).await
        else {
            panic!("not buffered");
        };
        for _ in 0..2 {
            let body = ReplayBody::<Full<Bytes>>::replay(&data, &trailers);
            assert_eq!(body.size_hint().exact(), Some(4));
            assert_eq!(body.collect().await.unwrap().to_bytes(), "abcd");
        }
    }

    #[tokio::test]
    async fn over_the_limit_the_body_is_sent_once_whole() {
        let Prepared::Once(body) = prepare(pieces([b"ab", b"cd", b"ef"]), 3).await else {
            panic!("buffered over the limit");
        };
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdef");
        // A known length over the limit is not read at all.
        let Prepared::Once(body) = prepare(Full::new(Bytes::from_static(b"abcdef")), 3).await
        else {
            panic!("buffered over the limit");
        };
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdef");
    }
}
