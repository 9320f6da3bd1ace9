//! The value layout: what a claim and a record look like in Redis (documented on
//! [`RedisStore`](super::RedisStore)).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::store::{Entry, Fingerprint, OwnerToken, Record, StoreError, StoreErrorKind};

/// Layout version, first byte of every value.
pub(super) const VERSION: u8 = 1;
/// State byte of a claim.
pub(super) const CLAIMED: u8 = 1;
/// State byte of a completed record.
pub(super) const COMPLETED: u8 = 2;
/// Version, state and token.
pub(super) const HEADER_LEN: usize = 18;
/// The longest `PX` the store sends (about 2 200 years); Redis rejects expiry times that
/// overflow when added to its clock.
pub(super) const MAX_PX: u64 = 1 << 46;

/// A claim's value: version, state, token and, when the claim has one, the fingerprint.
pub(super) struct Claim {
    bytes: [u8; HEADER_LEN + 32],
    len: usize,
}

impl Claim {
    pub(super) fn new(token: OwnerToken, fingerprint: Option<&Fingerprint>) -> Self {
        let mut bytes = [0; HEADER_LEN + 32];
        bytes[0] = VERSION;
        bytes[1] = CLAIMED;
        bytes[2..HEADER_LEN].copy_from_slice(&token.to_bytes());
        let len = match fingerprint {
            Some(fp) => {
                bytes[HEADER_LEN..].copy_from_slice(fp.as_bytes());
                bytes.len()
            }
            None => HEADER_LEN,
        };
        Self { bytes, len }
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Milliseconds for `PX`/`PEXPIRE`: rounded up (a lease is never shorter than asked), at least 1.
pub(super) fn millis(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).clamp(1, MAX_PX)
}

/// Decodes a stored value (see the layout in the docs of [`RedisStore`](super::RedisStore)).
pub(super) fn decode(value: Bytes) -> Result<Entry, StoreError> {
    if value.len() < HEADER_LEN {
        return Err(corrupt("shorter than its header"));
    }
    if value[0] != VERSION {
        return Err(corrupt("unknown layout version"));
    }
    let token = OwnerToken::from_bytes(value[2..HEADER_LEN].try_into().expect("16 bytes"));
    match value[1] {
        CLAIMED => {
            let fingerprint = match &value[HEADER_LEN..] {
                [] => None,
                fp => Some(Fingerprint::from_bytes(
                    fp.try_into()
                        .map_err(|_| corrupt("bad fingerprint length"))?,
                )),
            };
            Ok(Entry::InProgress { fingerprint, token })
        }
        COMPLETED => Ok(Entry::Completed(Record::from_bytes(
            value.slice(HEADER_LEN..),
        )?)),
        _ => Err(corrupt("unknown state")),
    }
}

/// The fingerprint in the head of a completed value read without its response (its first
/// bytes: header, then the record's head up to its fingerprint).
pub(super) fn completed_fingerprint(head: &[u8]) -> Result<Option<Fingerprint>, StoreError> {
    match head {
        [VERSION, COMPLETED, ..] if head.len() >= HEADER_LEN => {
            Ok(Record::fingerprint_of(&head[HEADER_LEN..]))
        }
        _ => Err(corrupt("a cut value that is not a record")),
    }
}

/// Why a stored value could not be decoded.
#[derive(Debug)]
struct LayoutError(&'static str);

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid redis store value: {}", self.0)
    }
}

impl std::error::Error for LayoutError {}

pub(super) fn corrupt(what: &'static str) -> StoreError {
    StoreError::with_source(StoreErrorKind::Corrupt, LayoutError(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(token: OwnerToken, fp: Option<&Fingerprint>) -> Bytes {
        let mut v = vec![VERSION, CLAIMED];
        v.extend_from_slice(&token.to_bytes());
        if let Some(fp) = fp {
            v.extend_from_slice(fp.as_bytes());
        }
        Bytes::from(v)
    }

    #[test]
    fn decodes_claims() {
        let token = OwnerToken::generate();
        let fp = Fingerprint::sha256(b"request");
        assert_eq!(
            decode(claim(token, Some(&fp))).unwrap(),
            Entry::InProgress {
                fingerprint: Some(fp),
                token
            }
        );
        assert_eq!(
            decode(claim(token, None)).unwrap(),
            Entry::InProgress {
                fingerprint: None,
                token
            }
        );
    }

    #[test]
    fn decodes_records() {
        let token = OwnerToken::generate();
        let record = Record::not_stored(Some(Fingerprint::sha256(b"r")));
        let mut v = vec![VERSION, COMPLETED];
        v.extend_from_slice(&token.to_bytes());
        v.extend_from_slice(record.as_bytes());
        assert_eq!(decode(Bytes::from(v)).unwrap(), Entry::Completed(record));
    }

    #[test]
    fn rejects_foreign_values() {
        let token = OwnerToken::generate();
        let bad = |v: &[u8]| decode(Bytes::copy_from_slice(v)).unwrap_err().kind();
        assert_eq!(bad(b""), StoreErrorKind::Corrupt);
        assert_eq!(
            bad(b"some other application's value"),
            StoreErrorKind::Corrupt
        );
        let mut v = claim(token, None).to_vec();
        v[1] = 9;
        assert_eq!(bad(&v), StoreErrorKind::Corrupt);
        let mut v = claim(token, None).to_vec();
        v.push(0);
        assert_eq!(bad(&v), StoreErrorKind::Corrupt);
        let mut v = claim(token, None).to_vec();
        v[1] = COMPLETED;
        v.extend_from_slice(b"not a record");
        assert_eq!(bad(&v), StoreErrorKind::Corrupt);
    }

    #[test]
    fn millis_rounds_up_and_clamps() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
        assert_eq!(millis(Duration::MAX), MAX_PX);
    }
}
