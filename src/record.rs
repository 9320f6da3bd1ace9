//! The completed record a store keeps, and its versioned encoding.
//!
//! A [`Record`] is one immutable byte string, cheap to clone ([`Bytes`]), that every store keeps
//! as it is: the memory store holds it, the Redis store writes it in one value. Decoding a replay
//! slices the body out of it without a copy.
//!
//! # Encoding, version 1
//!
//! All integers are big-endian.
//!
//! | bytes | field |
//! | --- | --- |
//! | 2 | magic `TI` |
//! | 1 | version, `1` |
//! | 1 | flags: `1` fingerprint present, `2` response stored, `4` trailers present, `8` response expired |
//! | 32 | fingerprint, when flagged |
//! | 2 | status, when the response is stored |
//! | … | headers, when stored: count (u16), then per header name length (u16), name, value length (u32), value |
//! | 4 + n | body length (u32) and body, when stored |
//! | … | trailers, when flagged: as headers |
//!
//! A record whose response is *not stored* (its body was over the cap and was streamed to the
//! client) still marks the key completed: retries get a problem, never a second execution. So
//! does the small record a store keeps after the response's retention ran out, for the rest of
//! the key's retention ([`Record::response_expired`]): a late retry gets `result-expired`.

use std::fmt;

use bytes::{BufMut, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::fingerprint::Fingerprint;

const MAGIC: &[u8; 2] = b"TI";
const VERSION: u8 = 1;
const HAS_FINGERPRINT: u8 = 1;
const HAS_RESPONSE: u8 = 2;
const HAS_TRAILERS: u8 = 4;
const RESPONSE_EXPIRED: u8 = 8;

/// A completed request's record, in its stored encoding.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    bytes: Bytes,
    fingerprint: Option<Fingerprint>,
    response: Option<Layout>,
    expired: bool,
}

/// Where the parts of a stored response sit in the encoding.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Layout {
    status: StatusCode,
    headers: usize,
    body: (usize, usize),
    trailers: Option<usize>,
}

/// A stored response, decoded for a replay.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoredResponse {
    /// The status code.
    pub status: StatusCode,
    /// The stored headers (the deny list was applied when the record was made).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The trailers, when the response had any (gRPC keeps `grpc-status` here).
    pub trailers: Option<HeaderMap>,
}

impl StoredResponse {
    /// A response to store.
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        trailers: Option<HeaderMap>,
    ) -> Self {
        Self {
            status,
            headers,
            body,
            trailers,
        }
    }
}

impl Record {
    /// A record for a response that was completed but is not kept (over the size cap).
    pub fn not_stored(fingerprint: Option<Fingerprint>) -> Self {
        encode(fingerprint, None)
    }

    /// What a store keeps of a completed key after the response's retention ran out and until
    /// the key's own retention does: the fingerprint, no response. A retry then gets the
    /// `result-expired` problem, never a second execution.
    pub fn response_expired(fingerprint: Option<Fingerprint>) -> Self {
        let record = encode(fingerprint, None);
        let mut bytes = record.bytes.to_vec();
        bytes[3] |= RESPONSE_EXPIRED;
        Self {
            bytes: Bytes::from(bytes),
            expired: true,
            ..record
        }
    }

    /// A record that keeps `response` whole.
    pub fn new(fingerprint: Option<Fingerprint>, response: &StoredResponse) -> Self {
        encode(
            fingerprint,
            Some(Parts {
                status: response.status,
                headers: &response.headers,
                keep: &|_| true,
                body: &response.body,
                trailers: response.trailers.as_ref(),
            }),
        )
    }

    /// A record of a response, leaving out the headers `keep` says no to.
    pub(crate) fn filtered(
        fingerprint: Option<Fingerprint>,
        status: StatusCode,
        headers: &HeaderMap,
        keep: &dyn Fn(&HeaderName) -> bool,
        body: &[u8],
        trailers: Option<&HeaderMap>,
    ) -> Self {
        encode(
            fingerprint,
            Some(Parts {
                status,
                headers,
                keep,
                body,
                trailers,
            }),
        )
    }

    /// Parses an encoded record, checking its framing.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader {
            bytes: &bytes,
            at: 0,
        };
        if r.take(2)? != MAGIC {
            return Err(DecodeError("not a record"));
        }
        if r.u8()? != VERSION {
            return Err(DecodeError("unknown record version"));
        }
        let flags = r.u8()?;
        if flags & !(HAS_FINGERPRINT | HAS_RESPONSE | HAS_TRAILERS | RESPONSE_EXPIRED) != 0 {
            return Err(DecodeError("unknown record flags"));
        }
        let expired = flags & RESPONSE_EXPIRED != 0;
        if expired && flags & HAS_RESPONSE != 0 {
            return Err(DecodeError("an expired response with a response"));
        }
        let fingerprint = if flags & HAS_FINGERPRINT != 0 {
            let fp: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
            Some(Fingerprint::from_bytes(fp))
        } else {
            None
        };
        let response = if flags & HAS_RESPONSE != 0 {
            let status = StatusCode::from_u16(r.u16()?).map_err(|_| DecodeError("bad status"))?;
            let headers = r.at;
            r.skip_fields()?;
            let len = r.u32()? as usize;
            let start = r.at;
            r.take(len)?;
            let trailers = if flags & HAS_TRAILERS != 0 {
                let at = r.at;
                r.skip_fields()?;
                Some(at)
            } else {
                None
            };
            Some(Layout {
                status,
                headers,
                body: (start, start + len),
                trailers,
            })
        } else if flags & HAS_TRAILERS != 0 {
            return Err(DecodeError("trailers without a response"));
        } else {
            None
        };
        if r.at != bytes.len() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(Self {
            bytes,
            fingerprint,
            response,
            expired,
        })
    }

    /// The fingerprint in an encoded record, read from its head alone (no framing checks): for
    /// stores that keep records as bytes. `None` for bytes that are not a record's head.
    pub(crate) fn fingerprint_of(bytes: &[u8]) -> Option<Fingerprint> {
        match bytes {
            [m0, m1, VERSION, flags, rest @ ..]
                if [*m0, *m1] == *MAGIC && flags & HAS_FINGERPRINT != 0 =>
            {
                let fp: [u8; 32] = rest.get(..32)?.try_into().ok()?;
                Some(Fingerprint::from_bytes(fp))
            }
            _ => None,
        }
    }

    /// The encoding, as stores keep it.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The fingerprint of the request that made the record.
    pub fn fingerprint(&self) -> Option<&Fingerprint> {
        self.fingerprint.as_ref()
    }

    /// Whether this is what a store keeps of a completed key after the response's retention ran
    /// out ([`response_expired`](Self::response_expired)).
    pub fn is_response_expired(&self) -> bool {
        self.expired
    }

    /// Whether the response is kept (false for one that was over the cap, or has expired).
    pub fn is_stored(&self) -> bool {
        self.response.is_some()
    }

    /// The stored status, when the response is kept.
    pub fn status(&self) -> Option<StatusCode> {
        self.response.map(|l| l.status)
    }

    /// Decodes the stored response; `Ok(None)` when it was not kept. The body is a slice of the
    /// record, not a copy.
    pub fn response(&self) -> Result<Option<StoredResponse>, DecodeError> {
        let Some(layout) = self.response else {
            return Ok(None);
        };
        let headers = read_fields(&self.bytes, layout.headers)?;
        let trailers = match layout.trailers {
            Some(at) => Some(read_fields(&self.bytes, at)?),
            None => None,
        };
        Ok(Some(StoredResponse {
            status: layout.status,
            headers,
            body: self.bytes.slice(layout.body.0..layout.body.1),
            trailers,
        }))
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("fingerprint", &self.fingerprint)
            .field("status", &self.status())
            .field("len", &self.bytes.len())
            .finish()
    }
}

struct Parts<'a> {
    status: StatusCode,
    headers: &'a HeaderMap,
    keep: &'a dyn Fn(&HeaderName) -> bool,
    body: &'a [u8],
    trailers: Option<&'a HeaderMap>,
}

/// The most lines a header or trailer map of a record holds: the count is a `u16`.
const MAX_FIELDS: usize = u16::MAX as usize;

/// Whether the framing can hold `parts`: a body under 4 GiB, at most [`MAX_FIELDS`] header and
/// trailer lines.
fn fits(p: &Parts<'_>) -> bool {
    let lines = |map: &HeaderMap, keep: &dyn Fn(&HeaderName) -> bool| {
        map.iter().filter(|(n, _)| keep(n)).count()
    };
    u32::try_from(p.body.len()).is_ok()
        && lines(p.headers, p.keep) <= MAX_FIELDS
        && p.trailers.is_none_or(|t| lines(t, &|_| true) <= MAX_FIELDS)
}

/// Encodes a record. A response the framing cannot hold (see [`fits`]) is recorded as not
/// stored, like one over the layer's size cap: the key stays completed and is never run again.
fn encode(fingerprint: Option<Fingerprint>, response: Option<Parts<'_>>) -> Record {
    let response = match response {
        Some(p) if !fits(&p) => {
            tracing::warn!(
                "a response too large for the record's framing is recorded as not stored"
            );
            None
        }
        response => response,
    };
    let fields_len = |map: &HeaderMap, keep: &dyn Fn(&HeaderName) -> bool| {
        2 + map
            .iter()
            .filter(|(n, _)| keep(n))
            .map(|(n, v)| 6 + n.as_str().len() + v.len())
            .sum::<usize>()
    };
    let mut len = 4 + fingerprint.map_or(0, |_| 32);
    if let Some(p) = &response {
        len += 2 + fields_len(p.headers, p.keep) + 4 + p.body.len();
        if let Some(t) = p.trailers {
            len += fields_len(t, &|_| true);
        }
    }
    let mut out = Vec::with_capacity(len);
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    let mut flags = 0;
    if fingerprint.is_some() {
        flags |= HAS_FINGERPRINT;
    }
    if let Some(p) = &response {
        flags |= HAS_RESPONSE;
        if p.trailers.is_some() {
            flags |= HAS_TRAILERS;
        }
    }
    out.put_u8(flags);
    if let Some(fp) = &fingerprint {
        out.put_slice(fp.as_bytes());
    }
    if let Some(p) = &response {
        out.put_u16(p.status.as_u16());
        write_fields(&mut out, p.headers, p.keep);
        // `fits` checked the body's length.
        out.put_u32(p.body.len() as u32);
        out.put_slice(p.body);
        if let Some(t) = p.trailers {
            write_fields(&mut out, t, &|_| true);
        }
    }
    debug_assert_eq!(out.len(), len);
    let response = response.map(|p| {
        let body_end = len - p.trailers.map_or(0, |t| fields_len(t, &|_| true));
        Layout {
            status: p.status,
            headers: 4 + fingerprint.map_or(0, |_| 32) + 2,
            body: (body_end - p.body.len(), body_end),
            trailers: p.trailers.map(|_| body_end),
        }
    });
    Record {
        bytes: Bytes::from(out),
        fingerprint,
        response,
        expired: false,
    }
}

fn write_fields(out: &mut Vec<u8>, map: &HeaderMap, keep: &dyn Fn(&HeaderName) -> bool) {
    // `fits` checked the count.
    let count = map.iter().filter(|(n, _)| keep(n)).count();
    out.put_u16(count as u16);
    for (name, value) in map.iter().filter(|(n, _)| keep(n)) {
        out.put_u16(name.as_str().len() as u16);
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
}

fn read_fields(bytes: &Bytes, at: usize) -> Result<HeaderMap, DecodeError> {
    let mut r = Reader { bytes, at };
    let count = r.u16()?;
    // One more than stored: a replay adds its marker header, and a full map would grow for it.
    let mut map = HeaderMap::with_capacity(usize::from(count) + 1);
    for _ in 0..count {
        let len = usize::from(r.u16()?);
        let name =
            HeaderName::from_bytes(r.take(len)?).map_err(|_| DecodeError("bad header name"))?;
        let len = r.u32()? as usize;
        let start = r.at;
        r.take(len)?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(start..start + len))
            .map_err(|_| DecodeError("bad header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(DecodeError("truncated record"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn skip_fields(&mut self) -> Result<(), DecodeError> {
        for _ in 0..self.u16()? {
            let n = usize::from(self.u16()?);
            self.take(n)?;
            let n = self.u32()? as usize;
            self.take(n)?;
        }
        Ok(())
    }
}

/// A stored value that is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid record: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_the_framing_cannot_hold_is_recorded_as_not_stored() {
        let mut headers = HeaderMap::new();
        for i in 0..=MAX_FIELDS {
            headers
                .try_append("x-line", HeaderValue::from(i))
                .expect("room in the map");
        }
        let fp = Fingerprint::sha256("r");
        let response = StoredResponse::new(StatusCode::OK, headers, Bytes::new(), None);
        let record = Record::new(Some(fp), &response);
        assert!(!record.is_stored());
        assert_eq!(record.fingerprint(), Some(&fp));
        assert_eq!(Record::from_bytes(record.as_bytes().clone()), Ok(record));
    }

    fn sample() -> StoredResponse {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        StoredResponse::new(
            StatusCode::CREATED,
            headers,
            Bytes::from_static(b"{\"id\":1}"),
            Some(trailers),
        )
    }

    #[test]
    fn round_trips() {
        let fp = Fingerprint::sha256(b"x");
        let rec = Record::new(Some(fp), &sample());
        let back = Record::from_bytes(rec.as_bytes().clone()).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.fingerprint(), Some(&fp));
        let resp = back.response().unwrap().unwrap();
        assert_eq!(resp.status, StatusCode::CREATED);
        assert_eq!(resp.body, &b"{\"id\":1}"[..]);
        let multi: Vec<_> = resp.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        assert_eq!(resp.trailers.unwrap()["grpc-status"], "0");
    }

    #[test]
    fn filters_headers() {
        let s = sample();
        let rec = Record::filtered(
            None,
            s.status,
            &s.headers,
            &|n| n != "x-multi",
            &s.body,
            None,
        );
        let back = Record::from_bytes(rec.as_bytes().clone()).unwrap();
        let resp = back.response().unwrap().unwrap();
        assert!(resp.headers.get("x-multi").is_none());
        assert!(resp.headers.get("content-type").is_some());
        assert!(resp.trailers.is_none());
        assert_eq!(resp.body, s.body);
    }

    #[test]
    fn response_expired_round_trips() {
        let fp = Fingerprint::sha256("e");
        for fingerprint in [Some(fp), None] {
            let record = Record::response_expired(fingerprint);
            assert!(record.is_response_expired());
            assert!(!record.is_stored());
            assert!(matches!(record.response(), Ok(None)));
            let back = Record::from_bytes(record.as_bytes().clone()).unwrap();
            assert_eq!(back, record);
            assert!(back.is_response_expired());
            assert!(!Record::not_stored(fingerprint).is_response_expired());
        }
    }

    #[test]
    fn not_stored_round_trips() {
        let rec = Record::not_stored(None);
        let back = Record::from_bytes(rec.as_bytes().clone()).unwrap();
        assert!(!back.is_stored());
        assert!(back.response().unwrap().is_none());
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        let good = Record::new(Some(Fingerprint::sha256(b"x")), &sample());
        let bytes = good.as_bytes();
        for cut in 0..bytes.len() {
            assert!(
                Record::from_bytes(bytes.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
        let mut extra = bytes.to_vec();
        extra.push(0);
        assert!(Record::from_bytes(extra.into()).is_err());
        assert!(Record::from_bytes(Bytes::from_static(b"XX\x01\x00")).is_err());
        assert!(Record::from_bytes(Bytes::from_static(b"TI\x02\x00")).is_err());
    }
}
