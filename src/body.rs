//! The body types the layer hands on.
//!
//! - [`RequestBody`] is what the inner service receives. A request the layer only passes
//!   through keeps its original body, streamed untouched. A protected request's body was
//!   buffered to fingerprint it, and is handed on as the same bytes followed by the same
//!   trailers.
//! - [`ResponseBody`] is what the layer answers with: the inner body streamed untouched, a
//!   stored or freshly recorded body (with its trailers, for gRPC's `grpc-status`), or, for a
//!   response over the cap, the buffered start followed by the rest of the stream.
//!
//! Both have `Data = Bytes` and the wrapped body's error type, so they fit axum (`Router`
//! accepts any such body), tonic and hyper without conversion.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

pin_project! {
    /// The request body the inner service receives.
    #[derive(Debug)]
    pub struct RequestBody<B> {
        #[pin]
        kind: RequestKind<B>,
    }
}

pin_project! {
    #[project = RequestKindProj]
    #[derive(Debug)]
    enum RequestKind<B> {
        Stream { #[pin] body: B },
        // Trailers boxed: they are rare (gRPC), and unboxed every request would carry the
        // space of a `HeaderMap`, passed-through ones included.
        Buffered { data: Option<Bytes>, trailers: Option<Box<HeaderMap>> },
    }
}

impl<B> RequestBody<B> {
    /// Wraps `body` to be streamed as it is, as the layer does for requests it passes through.
    #[doc(hidden)]
    pub fn new(body: B) -> Self {
        Self {
            kind: RequestKind::Stream { body },
        }
    }

    pub(crate) fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: RequestKind::Buffered {
                data: non_empty(data),
                trailers: trailers.map(Box::new),
            },
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            RequestKindProj::Stream { body } => poll_bytes(body, cx),
            RequestKindProj::Buffered { data, trailers } => {
                Poll::Ready(take_buffered(data, trailers))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Stream { body } => body.is_end_stream(),
            RequestKind::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Stream { body } => body.size_hint(),
            RequestKind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

pin_project! {
    /// The response body the layer answers with.
    pub struct ResponseBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: ResponseKind<B>,
    }
}

pin_project! {
    #[project = ResponseKindProj]
    enum ResponseKind<B>
    where
        B: Body,
    {
        Stream { #[pin] body: B },
        // Trailers boxed, as in `RequestKind`.
        Full { data: Option<Bytes>, trailers: Option<Box<HeaderMap>>, error: Option<B::Error> },
        Chained { prefix: Option<Bytes>, rest: Pin<Box<B>> },
    }
}

impl<B: Body> ResponseBody<B> {
    /// Wraps `body` to be streamed as it is.
    #[doc(hidden)]
    pub fn new(body: B) -> Self {
        Self {
            kind: ResponseKind::Stream { body },
        }
    }

    /// A body of `data` followed by `trailers`.
    pub(crate) fn full(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: ResponseKind::Full {
                data: non_empty(data),
                trailers: trailers.map(Box::new),
                error: None,
            },
        }
    }

    /// `data` followed by `error`: a body that failed while the layer buffered it.
    pub(crate) fn failed(data: Bytes, error: B::Error) -> Self {
        Self {
            kind: ResponseKind::Full {
                data: non_empty(data),
                trailers: None,
                error: Some(error),
            },
        }
    }

    /// `prefix` followed by what is left of `rest`.
    pub(crate) fn chained(prefix: Bytes, rest: Pin<Box<B>>) -> Self {
        Self {
            kind: ResponseKind::Chained {
                prefix: non_empty(prefix),
                rest,
            },
        }
    }
}

impl<B: Body> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            ResponseKind::Stream { .. } => "Stream",
            ResponseKind::Full { .. } => "Full",
            ResponseKind::Chained { .. } => "Chained",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            ResponseKindProj::Stream { body } => poll_bytes(body, cx),
            ResponseKindProj::Full {
                data,
                trailers,
                error,
            } => match take_buffered(data, trailers) {
                None => Poll::Ready(error.take().map(Err)),
                frame => Poll::Ready(frame),
            },
            ResponseKindProj::Chained { prefix, rest } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => poll_bytes(rest.as_mut(), cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Stream { body } => body.is_end_stream(),
            ResponseKind::Full {
                data,
                trailers,
                error,
            } => data.is_none() && trailers.is_none() && error.is_none(),
            ResponseKind::Chained { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Stream { body } => body.size_hint(),
            ResponseKind::Full {
                data,
                trailers,
                error,
            } => {
                let len = data.as_ref().map_or(0, |d| d.len() as u64);
                // An exact length lets HTTP/1.1 send `Content-Length`, which leaves no room for
                // trailers; with trailers, only the lower bound is given.
                if trailers.is_some() || error.is_some() {
                    let mut hint = SizeHint::new();
                    hint.set_lower(len);
                    hint
                } else {
                    SizeHint::with_exact(len)
                }
            }
            ResponseKind::Chained { prefix, rest } => {
                let len = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + len);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + len);
                }
                hint
            }
        }
    }
}

/// `None` for no bytes, so that an empty body ends at once (`is_end_stream`) and sends no frame.
fn non_empty(data: Bytes) -> Option<Bytes> {
    (!data.is_empty()).then_some(data)
}

/// Polls a frame and turns its data into `Bytes` (free when it already is `Bytes`).
fn poll_bytes<B: Body>(
    body: Pin<&mut B>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
    let frame = ready!(body.poll_frame(cx));
    Poll::Ready(frame.map(|r| r.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))))
}

fn take_buffered<E>(
    data: &mut Option<Bytes>,
    trailers: &mut Option<Box<HeaderMap>>,
) -> Option<Result<Frame<Bytes>, E>> {
    if let Some(data) = data.take() {
        return Some(Ok(Frame::data(data)));
    }
    trailers.take().map(|t| Ok(Frame::trailers(*t)))
}

/// A body read into memory, up to a limit.
pub(crate) enum Buffered<E> {
    /// The whole body, and its trailers.
    Complete {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// The body is longer than the limit: what was read; the rest is still in the body.
    Overflow { prefix: Bytes },
    /// The body failed: what was read before, and the error.
    Failed { prefix: Bytes, error: E },
}

/// Reads `body` until it ends or more than `limit` bytes have come.
///
/// One chunk stays as it is (no copy); more are gathered into one buffer. The body is borrowed,
/// so that a caller that needs the rest after an overflow (a response) can keep it, and one that
/// does not (a request, answered `413`) can pin it where it is instead of boxing it.
pub(crate) async fn buffer<B: Body + ?Sized>(
    mut body: Pin<&mut B>,
    limit: usize,
) -> Buffered<B::Error> {
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    let mut len = 0usize;
    let gathered = |first: Option<Bytes>, more: Option<BytesMut>| match more {
        Some(m) => m.freeze(),
        None => first.unwrap_or_default(),
    };
    if body.size_hint().lower() > limit as u64 {
        return Buffered::Overflow {
            prefix: Bytes::new(),
        };
    }
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                return Buffered::Failed {
                    prefix: gathered(first, more),
                    error,
                };
            }
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return Buffered::Complete {
                        data: gathered(first, more),
                        trailers: Some(trailers),
                    };
                }
                continue;
            }
        };
        let chunk = data.copy_to_bytes(data.remaining());
        len += chunk.len();
        match (&mut first, &mut more) {
            (None, None) => first = Some(chunk),
            (Some(f), None) => {
                let mut m = BytesMut::with_capacity(f.len() + chunk.len());
                m.extend_from_slice(f);
                m.extend_from_slice(&chunk);
                first = None;
                more = Some(m);
            }
            (_, Some(m)) => m.extend_from_slice(&chunk),
        }
        if len > limit {
            return Buffered::Overflow {
                prefix: gathered(first, more),
            };
        }
    }
    Buffered::Complete {
        data: gathered(first, more),
        trailers: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};
    use std::convert::Infallible;
    use std::pin::pin;

    fn chunks(parts: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = Infallible> + use<> {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn buffers_chunks_and_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"cd"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let body = pin!(StreamBody::new(futures_util::stream::iter(frames)));
        match buffer(body, 10).await {
            Buffered::Complete { data, trailers: t } => {
                assert_eq!(data, "abcd");
                assert_eq!(t, Some(trailers));
            }
            _ => panic!("expected the whole body"),
        }
    }

    #[tokio::test]
    async fn overflow_keeps_prefix_and_rest() {
        let mut body = Box::pin(chunks(&[b"abc", b"def", b"ghi"]));
        let Buffered::Overflow { prefix } = buffer(body.as_mut(), 4).await else {
            panic!("expected overflow");
        };
        assert_eq!(prefix, "abcdef");
        let whole = ResponseBody::chained(prefix, body).collect().await.unwrap();
        assert_eq!(whole.to_bytes(), "abcdefghi");
    }

    #[tokio::test]
    async fn size_hint_over_limit_overflows_without_reading() {
        let mut body = Box::pin(Full::new(Bytes::from_static(b"0123456789")));
        let Buffered::Overflow { prefix } = buffer(body.as_mut(), 4).await else {
            panic!("expected overflow");
        };
        assert!(prefix.is_empty());
        let whole = ResponseBody::chained(prefix, body).collect().await.unwrap();
        assert_eq!(whole.to_bytes(), "0123456789");
    }

    #[tokio::test]
    async fn request_body_hands_on_data_then_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-t", "1".parse().unwrap());
        let body = RequestBody::<Full<Bytes>>::buffered(Bytes::from_static(b"hi"), Some(trailers));
        assert_eq!(body.size_hint().exact(), Some(2));
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-t"], "1");
        assert_eq!(collected.to_bytes(), "hi");
    }

    #[tokio::test]
    async fn full_response_with_trailers_is_not_exact() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let body = ResponseBody::<Full<Bytes>>::full(Bytes::from_static(b"x"), Some(trailers));
        assert_eq!(body.size_hint().exact(), None);
        let body = ResponseBody::<Full<Bytes>>::full(Bytes::from_static(b"x"), None);
        assert_eq!(body.size_hint().exact(), Some(1));
    }
}
