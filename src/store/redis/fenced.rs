//! `complete` and `renew` as one fenced command each, `SET … IFEQ … GET`, on servers that have
//! it (Valkey 8.1 and newer, Redis 8.4 and newer); the scripts otherwise. Detected once per store.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::redis::Value;
use ::redis::aio::ConnectionLike;

use super::RedisStore;
use super::errors::{is_transport_error, map_error, unexpected_reply};
use super::layout::{CLAIMED, COMPLETED, Claim, HEADER_LEN, VERSION, millis};
use super::retention::tombstone;
use super::scripts::RENEW;
use crate::store::{Fingerprint, OwnerToken, Record, StoreError, StoreErrorKind, StoreKey};

/// How many claims [`Held`] remembers at most; past that, fenced `renew`s guess and may need a
/// second round trip, and nothing else changes.
const HELD_MAX: usize = 65_536;

/// The claims this store made and may still hold, with the fingerprint each was made with: `IFEQ`
/// compares whole values, and `renew` is given only the token. Forgotten at `complete` and
/// `release`, and once their lease is over.
#[derive(Debug, Default)]
pub(super) struct Held {
    claims: Mutex<Claims>,
}

/// (key digest, token) → (the claim's fingerprint, the end of its lease).
type Claims = HashMap<([u8; 32], OwnerToken), (Option<Fingerprint>, Instant)>;

impl Held {
    fn claims(&self) -> std::sync::MutexGuard<'_, Claims> {
        // Every statement leaves the map consistent; a panic elsewhere cannot break it.
        self.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn insert(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        fingerprint: Option<&Fingerprint>,
        lease: Duration,
    ) {
        let now = Instant::now();
        let mut claims = self.claims();
        if claims.len() >= HELD_MAX {
            claims.retain(|_, (_, until)| *until > now);
            if claims.len() >= HELD_MAX {
                return;
            }
        }
        let until = now.checked_add(lease).unwrap_or(now);
        claims.insert((*key.digest(), token), (fingerprint.copied(), until));
    }

    fn fingerprint(&self, key: &StoreKey, token: OwnerToken) -> Option<Fingerprint> {
        self.claims()
            .get(&(*key.digest(), token))
            .and_then(|(fp, _)| *fp)
    }

    fn extend(&self, key: &StoreKey, token: OwnerToken, lease: Duration) {
        if let Some((_, until)) = self.claims().get_mut(&(*key.digest(), token)) {
            let now = Instant::now();
            *until = now.checked_add(lease).unwrap_or(now);
        }
    }

    pub(super) fn forget(&self, key: &StoreKey, token: OwnerToken) {
        self.claims().remove(&(*key.digest(), token));
    }
}

/// How the store sends `complete`, once it knows the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Commands {
    /// The Lua script (Redis 7.x, or fenced commands turned off).
    Scripts,
    /// `SET … IFEQ <claim> … GET`.
    SetIfEq,
}

impl Commands {
    /// What `INFO server` says the server has: `SET … IFEQ` from Valkey 8.1 and Redis 8.4.
    pub(super) fn of(info: &str) -> Self {
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|v| version(v.trim()))
        };
        let fenced = match field("valkey_version:") {
            Some(valkey) => valkey >= (8, 1),
            None => field("redis_version:").is_some_and(|redis| redis >= (8, 4)),
        };
        if fenced { Self::SetIfEq } else { Self::Scripts }
    }
}

/// `major.minor` of a version string; unreadable parts count as 0.
fn version(v: &str) -> (u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// How to send `complete` and `renew`: asked once (`INFO server`), then remembered by every
    /// clone. When the server cannot be reached, the operation fails as its own command would
    /// have, and the next one asks again.
    pub(super) async fn commands(&self) -> Result<Commands, StoreError> {
        if !self.fenced {
            return Ok(Commands::Scripts);
        }
        if let Some(commands) = self.commands.get() {
            return Ok(*commands);
        }
        let mut connection = self.connection.clone();
        let info: Result<String, _> = ::redis::cmd("INFO")
            .arg("server")
            .query_async(&mut connection)
            .await;
        let commands = match info {
            Ok(info) => Commands::of(&info),
            Err(e) if is_transport_error(&e) => return Err(map_error(e)),
            // `INFO` refused (renamed by a managed offering): keep to what every server has.
            Err(_) => Commands::Scripts,
        };
        Ok(*self.commands.get_or_init(|| async { commands }).await)
    }

    pub(super) async fn complete_with(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        record: &Record,
    ) -> Result<(), StoreError> {
        let done = match self.commands().await? {
            Commands::SetIfEq => self.complete_fenced(key, token, record).await,
            Commands::Scripts => self.complete_scripted(key, token, record).await,
        };
        if done.as_ref().err().is_none_or(|e| !e.kind().is_ambiguous()) {
            self.held.forget(key, token);
        }
        done
    }

    pub(super) async fn renew_with(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let done = match self.commands().await? {
            Commands::SetIfEq => {
                let claim = Claim::new(token, self.held.fingerprint(key, token).as_ref());
                let claim = claim.as_bytes();
                self.set_if_claimed(key, token, claim, claim, millis(lease), None)
                    .await
            }
            Commands::Scripts => {
                let lease = millis(lease).to_string();
                self.owner_checked(&RENEW, key, token, &[lease.as_bytes()])
                    .await
            }
        };
        match &done {
            Ok(()) => self.held.extend(key, token, lease),
            Err(e) if e.kind() == StoreErrorKind::NotOwner => self.held.forget(key, token),
            Err(_) => {}
        }
        done
    }

    /// `SET <key> <record> IFEQ <claim> PX <ttl> GET`: the record, written only over this
    /// token's claim.
    ///
    /// The record carries the fingerprint the claim was made with (the layer records the
    /// fingerprint it claimed with), so the claim's whole value is known without asking.
    async fn complete_fenced(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        record: &Record,
    ) -> Result<(), StoreError> {
        let mut value = Vec::with_capacity(HEADER_LEN + record.as_bytes().len());
        value.extend_from_slice(&[VERSION, COMPLETED]);
        value.extend_from_slice(&token.to_bytes());
        value.extend_from_slice(record.as_bytes());
        let claim = Claim::new(token, record.fingerprint());
        let tombstone = self.remembers_keys().then(|| tombstone(token, record));
        self.set_if_claimed(
            key,
            token,
            &value,
            claim.as_bytes(),
            millis(self.ttl),
            tombstone.as_deref(),
        )
        .await
    }

    /// `SET <key> <record> NX PX <ms>`: the owner's record on a key that is free, the rare
    /// second round trip of a `complete` that came after its lease; `NotOwner` when another
    /// owner claimed the key in between.
    async fn complete_free_key(
        &self,
        redis_key: &str,
        value: &[u8],
        px: u64,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let reply: Value = ::redis::cmd("SET")
            .arg(redis_key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(px)
            .query_async(&mut connection)
            .await
            .map_err(map_error)?;
        match reply {
            Value::Okay => Ok(()),
            Value::Nil => Err(StoreError::new(StoreErrorKind::NotOwner)),
            other => Err(unexpected_reply(&other)),
        }
    }

    /// `SET <key> <value> IFEQ <claim> PX <ms> GET`: written only where the key holds `claim`,
    /// and the reply is the value that was there, which tells what happened.
    ///
    /// When the key holds this token's claim with another fingerprint than `claim` guessed, the
    /// command is sent once more against the claim found; nobody else writes a claim with this
    /// token. A key that already holds this token's record (a `complete` re-sent after a lost
    /// reply) counts as done for `complete` and as not owned for `renew`.
    ///
    /// A `tombstone` (the key's, for `complete` where keys outlive their responses) is written
    /// in the same round trip as the first `SET`, whatever that finds: there is no fenced write
    /// of a second key. Where the record is then refused, the tombstone stands for the execution
    /// that this owner ran and could not record (its lease had run out and another owner holds
    /// the key): that owner's record replaces it, and should that owner release instead, a retry
    /// gets `result-expired` rather than running a third time.
    async fn set_if_claimed(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        value: &[u8],
        claim: &[u8],
        px: u64,
        tombstone: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let redis_key = self.redis_key(key);
        let completing = value.get(1) == Some(&COMPLETED);
        let mut expected = claim.to_vec();
        let mut tombstone = tombstone.map(|t| (self.tombstone_key(key), t));
        for _ in 0..2 {
            let mut connection = self.connection.clone();
            let mut set = ::redis::cmd("SET");
            set.arg(&redis_key)
                .arg(if completing { value } else { &expected[..] })
                .arg("IFEQ")
                .arg(&expected)
                .arg("PX")
                .arg(px)
                .arg("GET");
            let reply: Value = match tombstone.take() {
                None => set.query_async(&mut connection).await,
                Some((tombstone_key, tombstone)) => {
                    let mut pipe = ::redis::pipe();
                    pipe.add_command(set)
                        .cmd("SET")
                        .arg(tombstone_key)
                        .arg(tombstone)
                        .arg("PX")
                        .arg(self.tombstone_px())
                        .ignore();
                    pipe.query_async::<(Value,)>(&mut connection)
                        .await
                        .map(|(reply,)| reply)
                }
            }
            .map_err(map_error)?;
            let found = match reply {
                Value::BulkString(found) => found,
                // The key is free: its claim expired and nobody claimed it since (a `complete`
                // delayed past its lease). The record lands where the key is still free.
                Value::Nil if completing => {
                    return self.complete_free_key(&redis_key, value, px).await;
                }
                Value::Nil => break,
                other => return Err(unexpected_reply(&other)),
            };
            if found == expected {
                return Ok(());
            }
            let ours = found.len() >= HEADER_LEN
                && found[0] == VERSION
                && found[2..HEADER_LEN] == token.to_bytes();
            match found.get(1) {
                Some(&COMPLETED) if ours && completing => return Ok(()),
                Some(&CLAIMED) if ours => expected = found,
                _ => break,
            }
        }
        Err(StoreError::new(StoreErrorKind::NotOwner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_claims_are_remembered_until_forgotten_or_over() {
        let held = Held::default();
        let (key, token) = (StoreKey::new(None, "k"), OwnerToken::generate());
        let fp = Fingerprint::sha256(b"request");
        held.insert(&key, token, Some(&fp), Duration::from_secs(30));
        assert_eq!(held.fingerprint(&key, token), Some(fp));
        assert_eq!(held.fingerprint(&key, OwnerToken::generate()), None);
        assert_eq!(held.fingerprint(&StoreKey::new(None, "other"), token), None);
        held.forget(&key, token);
        assert_eq!(held.fingerprint(&key, token), None);

        // Full: claims whose lease is over make room; live ones are never pushed out.
        for i in 0..HELD_MAX {
            let key = StoreKey::new(None, &i.to_string());
            held.insert(&key, token, None, Duration::ZERO);
        }
        held.insert(&key, token, Some(&fp), Duration::from_secs(30));
        assert_eq!(held.fingerprint(&key, token), Some(fp));
        assert_eq!(held.claims().len(), 1);
    }

    #[test]
    fn detects_the_servers_with_set_ifeq() {
        let info = |lines: &str| format!("# Server\r\n{lines}\r\nredis_mode:standalone\r\n");
        let of = |lines: &str| Commands::of(&info(lines));
        assert_eq!(of("redis_version:7.0.15"), Commands::Scripts);
        assert_eq!(of("redis_version:8.2.1"), Commands::Scripts);
        assert_eq!(of("redis_version:8.4.0"), Commands::SetIfEq);
        assert_eq!(of("redis_version:10.0.0"), Commands::SetIfEq);
        // Valkey answers with a Redis-compatible `redis_version` of 7.2.4: its own decides.
        let valkey = |v: &str| of(&format!("redis_version:7.2.4\r\nvalkey_version:{v}"));
        assert_eq!(valkey("8.0.2"), Commands::Scripts);
        assert_eq!(valkey("8.1.8"), Commands::SetIfEq);
        assert_eq!(valkey("9.0.0"), Commands::SetIfEq);
        assert_eq!(of("server_name:unknown"), Commands::Scripts);
    }
}
