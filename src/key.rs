//! The `Idempotency-Key` header: parsing and validation. The scoped key that stores file
//! entries under is [`StoreKey`](crate::store::StoreKey).
//!
//! Two spellings of a key are accepted and mean the same key:
//!
//! - the IETF form, an RFC 8941 sf-string: `Idempotency-Key: "8e03978e-40d5"` (with `\"` and
//!   `\\` escapes; parameters after the string are rejected);
//! - the bare token that Stripe-style clients send: `Idempotency-Key: 8e03978e-40d5`. A bare
//!   key never holds a `,` or a `;`: RFC 8941 reads `k1, k2` as a list (two key lines that a
//!   proxy folded into one) and `k;a=1` as a key with parameters, so both get a `400`. Inside an
//!   sf-string they are ordinary characters.
//!
//! A key has 1 to 255 characters (the maximum is configurable), all printable ASCII. A request
//! with two key headers, an empty key, a malformed sf-string or a key that is too long gets a
//! `400` problem and runs nothing.

use std::fmt;

use http::{HeaderMap, HeaderName};

/// Why a key header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The header appears more than once.
    Repeated,
    /// The key is empty.
    Empty,
    /// The key is longer than the configured maximum.
    TooLong {
        /// The maximum length in characters.
        max: usize,
    },
    /// A character outside printable ASCII.
    InvalidCharacter,
    /// A value that starts with `"` but is not one valid sf-string.
    MalformedString,
    /// A bare key with a `,` or a `;`: RFC 8941 reads it as a list (two key lines that a proxy
    /// folded into one) or as a key with parameters, not as one key.
    ListOrParameters,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Repeated => f.write_str("the idempotency key header is repeated"),
            Self::Empty => f.write_str("the idempotency key is empty"),
            Self::TooLong { max } => {
                write!(f, "the idempotency key is longer than {max} characters")
            }
            Self::InvalidCharacter => {
                f.write_str("the idempotency key has a character outside printable ASCII")
            }
            Self::MalformedString => {
                f.write_str("the idempotency key is not a valid structured-field string")
            }
            Self::ListOrParameters => f.write_str(
                "the idempotency key has a ',' or a ';': it reads as a list or with parameters; send one key",
            ),
        }
    }
}

impl std::error::Error for KeyError {}

/// Reads the key from the `name` headers of a request as the layer does: `Ok(None)` when there
/// is none, the unescaped key when there is one valid key of at most `max_len` characters.
///
/// Public only for the crate's benchmarks; not part of the API.
///
/// ```
/// use http::{HeaderMap, HeaderName, HeaderValue};
/// use tower_idempotency::key::{KeyError, parse_key};
///
/// let name = HeaderName::from_static("idempotency-key");
/// let mut headers = HeaderMap::new();
/// headers.insert(&name, HeaderValue::from_static(r#""a\"b""#));
/// assert_eq!(parse_key(&headers, &name, 255), Ok(Some(r#"a"b"#.to_owned())));
///
/// headers.append(&name, HeaderValue::from_static("c"));
/// assert_eq!(parse_key(&headers, &name, 255), Err(KeyError::Repeated));
/// ```
#[doc(hidden)]
pub fn parse_key(
    headers: &HeaderMap,
    name: &HeaderName,
    max_len: usize,
) -> Result<Option<String>, KeyError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyError::Repeated);
    }
    parse_value(value.as_bytes(), max_len).map(Some)
}

/// One key header's value: the unescaped key of at most `max_len` characters.
pub(crate) fn parse_value(value: &[u8], max_len: usize) -> Result<String, KeyError> {
    let raw = trim_ows(value);
    let key = if raw.first() == Some(&b'"') {
        parse_sf_string(raw)?
    } else {
        if !raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Err(KeyError::InvalidCharacter);
        }
        if raw.iter().any(|b| matches!(b, b',' | b';')) {
            return Err(KeyError::ListOrParameters);
        }
        // Printable ASCII is valid UTF-8.
        String::from_utf8(raw.to_vec()).map_err(|_| KeyError::InvalidCharacter)?
    };
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > max_len {
        return Err(KeyError::TooLong { max: max_len });
    }
    Ok(key)
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// RFC 8941 §4.2.5, for a value that is exactly one sf-string.
fn parse_sf_string(raw: &[u8]) -> Result<String, KeyError> {
    let mut out = String::with_capacity(raw.len());
    let mut bytes = raw[1..].iter();
    loop {
        match bytes.next() {
            None => return Err(KeyError::MalformedString),
            Some(b'\\') => match bytes.next() {
                Some(&c @ (b'"' | b'\\')) => out.push(c as char),
                _ => return Err(KeyError::MalformedString),
            },
            Some(b'"') => break,
            Some(&c) if (0x20..=0x7e).contains(&c) => out.push(c as char),
            Some(_) => return Err(KeyError::InvalidCharacter),
        }
    }
    if bytes.next().is_some() {
        return Err(KeyError::MalformedString);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse(values: &[&[u8]]) -> Result<Option<String>, KeyError> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("idempotency-key", HeaderValue::from_bytes(v).unwrap());
        }
        parse_key(&h, &HeaderName::from_static("idempotency-key"), 255)
    }

    #[test]
    fn bare_and_sf_string_spell_the_same_key() {
        assert_eq!(parse(&[b"abc-123"]).unwrap().unwrap(), "abc-123");
        assert_eq!(parse(&[b"\"abc-123\""]).unwrap().unwrap(), "abc-123");
        assert_eq!(parse(&[b"  abc-123 "]).unwrap().unwrap(), "abc-123");
    }

    #[test]
    fn sf_string_escapes() {
        assert_eq!(parse(&[br#""a\"b\\c""#]).unwrap().unwrap(), r#"a"b\c"#);
        assert_eq!(parse(&[br#""a\nb""#]), Err(KeyError::MalformedString));
        assert_eq!(parse(&[br#""abc"#]), Err(KeyError::MalformedString));
        assert_eq!(parse(&[br#""abc";p=1"#]), Err(KeyError::MalformedString));
        assert_eq!(parse(&[br#""abc", "d""#]), Err(KeyError::MalformedString));
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&[b"a", b"b"]), Err(KeyError::Repeated));
        assert_eq!(parse(&[b""]), Err(KeyError::Empty));
        assert_eq!(parse(&[b"\"\""]), Err(KeyError::Empty));
        assert_eq!(parse(&[b"caf\xc3\xa9"]), Err(KeyError::InvalidCharacter));
        // Two key lines folded into one by a proxy, and a bare key with parameters.
        assert_eq!(parse(&[b"k1, k2"]), Err(KeyError::ListOrParameters));
        assert_eq!(parse(&[b"k1,k2"]), Err(KeyError::ListOrParameters));
        assert_eq!(parse(&[b"k;a=1"]), Err(KeyError::ListOrParameters));
        // Inside an sf-string they are plain characters of the key.
        assert_eq!(parse(&[b"\"k1, k2;a\""]).unwrap().unwrap(), "k1, k2;a");
        assert_eq!(
            parse(&[b"\"caf\xc3\xa9\""]),
            Err(KeyError::InvalidCharacter)
        );
        let long = vec![b'k'; 256];
        assert_eq!(parse(&[&long]), Err(KeyError::TooLong { max: 255 }));
        assert!(parse(&[&long[..255]]).unwrap().is_some());
    }
}
