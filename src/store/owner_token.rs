//! [`OwnerToken`]: the fencing value that tells one claim's owner from another.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Who holds a claim: a value unique to one request's execution.
///
/// The layer draws a fresh token for every claim: 64 random bits fixed per process, then a
/// 64-bit counter, so tokens never repeat within a process and collide across processes only by
/// chance. Stores check it on `complete`, `release` and `renew`, so a stale owner whose lease ran
/// out cannot overwrite its successor. Handlers find it in the
/// [`IdempotencyClaim`](crate::IdempotencyClaim) and can pass it on to fence their own writes
/// (compare-and-set on "owner = token"). It is an identity, not a monotonic counter: compare
/// for equality only.
// Bytes, not `u128`: byte alignment keeps the stores' entries free of padding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerToken([u8; 16]);

impl OwnerToken {
    /// A token no other claim in this process has had.
    pub fn generate() -> Self {
        static PROCESS: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        /// Each thread takes blocks of this many counter values, so that threads do not fight
        /// over one cache line for every claim.
        const BLOCK: u64 = 1 << 16;
        thread_local! {
            /// The next value of this thread's block, and the end of the block.
            static NEXT: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
        }
        let process = *PROCESS.get_or_init(|| {
            // Without an OS random source, fall back to the std hasher's random keys.
            getrandom::u64().unwrap_or_else(|_| {
                use std::hash::{BuildHasher, RandomState};
                RandomState::new().hash_one(std::process::id())
            })
        });
        let n = NEXT.with(|next| {
            let (mut n, mut end) = next.get();
            if n == end {
                n = COUNTER.fetch_add(BLOCK, Ordering::Relaxed);
                end = n + BLOCK;
            }
            next.set((n + 1, end));
            n
        });
        Self::from_u128((u128::from(process) << 64) | u128::from(n))
    }

    /// A token from its numeric value (as stored by a backend).
    pub const fn from_u128(value: u128) -> Self {
        Self(value.to_be_bytes())
    }

    /// The numeric value.
    pub const fn as_u128(self) -> u128 {
        u128::from_be_bytes(self.0)
    }

    /// The 16 big-endian bytes.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// A token from 16 big-endian bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for OwnerToken {
    /// 32 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.as_u128())
    }
}

impl fmt::Debug for OwnerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerToken({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_round_trip() {
        let a = OwnerToken::generate();
        let b = OwnerToken::generate();
        assert_ne!(a, b);
        assert_eq!(OwnerToken::from_bytes(a.to_bytes()), a);
        assert_eq!(a.to_string().len(), 32);
    }
}
