//! The keyed hash of key digests, for the shards' tables and the choice of shard.

use std::hash::{BuildHasher, Hash, Hasher};

/// A key's SHA-256 digest, as the maps file it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Digest(pub(super) [u8; 32]);

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        state.write_u64(u64::from_le_bytes([a, b, c, d, e, f, g, h]));
    }
}

/// A keyed, one-multiply hash for digests.
///
/// SipHash (the std default) protects a table from keys that an attacker picks to collide. Here
/// the table keys are SHA-256 digests of (scope, client key): uniformly distributed, and a client
/// cannot pick a digest, only grind keys until some bits of the digest match, at the cost of one
/// SHA-256 per try. The digest's 8 bytes are mixed with two random per-store secrets (a folded
/// 64 × 64 → 128-bit multiply, as in foldhash), so the bucket bits cannot be predicted and such
/// grinding gains nothing. The map and the shard choice use different bytes of the digest and
/// different secrets, so keys in one shard still spread over its whole table.
#[derive(Clone)]
pub(super) struct DigestState {
    xor: u64,
    mul: u64,
}

impl DigestState {
    pub(super) fn random() -> Self {
        Self {
            xor: random_u64(),
            // An odd multiplier with its top bit set is never a weak one (0 or 1).
            mul: random_u64() | (1 << 63) | 1,
        }
    }

    pub(super) fn hash_u64(&self, n: u64) -> u64 {
        let product = u128::from(n ^ self.xor) * u128::from(self.mul);
        (product as u64) ^ ((product >> 64) as u64)
    }
}

impl BuildHasher for DigestState {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher {
            state: self.clone(),
            hash: 0,
        }
    }
}

pub(super) struct DigestHasher {
    state: DigestState,
    hash: u64,
}

impl Hasher for DigestHasher {
    fn write_u64(&mut self, n: u64) {
        self.hash = self.state.hash_u64(self.hash ^ n);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `Digest` is hashed here, through `write_u64`; this keeps other input correct.
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| std::hash::RandomState::new().hash_one(0u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hash_uses_the_whole_word() {
        let state = DigestState {
            xor: 0x9e37_79b9_7f4a_7c15,
            mul: 0xa076_1d64_78bd_642f,
        };
        let hash = |d: [u8; 32]| state.hash_one(Digest(d));
        let base = [0u8; 32];
        let mut flipped = base;
        flipped[7] ^= 0x80;
        // A change in the top byte of the word reaches the low bits the table indexes with.
        assert_ne!(hash(base) & 0xffff, hash(flipped) & 0xffff);
        // Bytes past the first eight are not hashed (equality still compares all 32).
        let mut tail = base;
        tail[31] = 1;
        assert_eq!(hash(base), hash(tail));
    }
}
