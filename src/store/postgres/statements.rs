//! The SQL of each operation, built once per store for its table and notification channel.
//!
//! Every operation is one statement. Times are the database's (`now()`, the statement's start
//! in autocommit), so the app servers' clocks do not matter; durations are sent as
//! microseconds (`$n * interval '1 microsecond'`).

use super::schema::Table;

/// The columns every read of a key returns, in this order (see `decode_at`): `state, token,
/// fingerprint, live, record, expired`. Past its response retention (`record_until`) a row is
/// `expired` and its response is not sent, even before the sweep frees it; rows written before
/// `record_until` existed (NULL) keep their response until `expires_at`, as they did.
const ENTRY: &str = "state, token, fingerprint, lease_until > now() AS live, \
     CASE WHEN record_until <= now() THEN NULL ELSE record END AS record, \
     coalesce(record_until <= now(), false) AS expired";

/// The statements of one store.
#[derive(Debug)]
pub(super) struct Statements {
    pub(super) begin: String,
    pub(super) complete: String,
    pub(super) release: String,
    pub(super) renew: String,
    pub(super) get: String,
    pub(super) lease_left: String,
    pub(super) commit_in: String,
    pub(super) sweep: String,
    pub(super) lookup: String,
    pub(super) evict: String,
}

impl Statements {
    pub(super) fn new(table: &Table) -> Self {
        let t = table.quoted();
        // A row in progress: a claim, or a key whose effects committed while its owner's lease
        // lasts (the owner is still to record the response).
        let in_progress = "(state = 'claimed' OR (state = 'committed' AND lease_until > now()))";
        Self {
            // $1 key, $2 token, $3 fingerprint, $4 lease (µs).
            //
            // A live record is read and returned as it is (records never change before they
            // expire), without touching the row: a replay takes no lock and writes nothing.
            // Otherwise the upsert claims the key when it is free (no row, or an expired one) or
            // already claimed by this token (a re-sent begin). ON CONFLICT locks the row and judges its
            // *latest* version, so two begins on many connections never both win. When the claim
            // is refused, the second branch reads the row as the statement's snapshot saw it: at
            // READ COMMITTED that snapshot may predate a claim that a concurrent transaction
            // committed while this statement waited for its lock, and then reads as missing or
            // free; the store sends the statement again (see `PostgresStore::begin`).
            begin: format!(
                "WITH done AS ( \
                   SELECT {ENTRY} FROM {t} \
                   WHERE key = $1 AND state = 'completed' AND expires_at > now() \
                 ), claimed AS ( \
                   INSERT INTO {t} AS r (key, state, token, fingerprint, lease_until, expires_at, record) \
                   SELECT $1, 'claimed', $2, $3, now() + $4 * interval '1 microsecond', \
                          now() + $4 * interval '1 microsecond', NULL \
                   WHERE NOT EXISTS (SELECT 1 FROM done) \
                   ON CONFLICT (key) DO UPDATE SET state = 'claimed', token = excluded.token, \
                     fingerprint = excluded.fingerprint, lease_until = excluded.lease_until, \
                     expires_at = excluded.expires_at, record = NULL, record_until = NULL, \
                     watched = false \
                   WHERE r.expires_at <= now() OR (r.state = 'claimed' AND r.token = excluded.token) \
                   RETURNING 1 \
                 ) \
                 SELECT true AS new, NULL::text AS state, NULL::bytea AS token, \
                        NULL::bytea AS fingerprint, NULL::bool AS live, NULL::bytea AS record, \
                        NULL::bool AS expired, NULL::bool AS alive \
                   FROM claimed \
                 UNION ALL \
                 SELECT false, *, true FROM done \
                 UNION ALL \
                 SELECT false, {ENTRY}, expires_at > now() \
                   FROM {t} WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM claimed) \
                   AND NOT EXISTS (SELECT 1 FROM done)"
            ),
            // $1 key, $2 token, $3 record, $4 key retention (µs), $5 channel, $6 response
            // retention (µs).
            //
            // Lands where the row still carries this token and is not completed: a live claim,
            // a claim whose lease ran out with nobody claiming the key since, or a key whose
            // effects this token committed. `already` recognises a re-sent complete.
            complete: format!(
                "WITH done AS ( \
                   UPDATE {t} SET state = 'completed', record = $3, lease_until = now(), \
                     expires_at = now() + $4 * interval '1 microsecond', \
                     record_until = now() + $6 * interval '1 microsecond' \
                   WHERE key = $1 AND token = $2 AND state <> 'completed' \
                   RETURNING key, watched \
                 ), woken AS (SELECT pg_notify($5, encode(key, 'hex')) FROM done WHERE watched) \
                 SELECT (SELECT count(*) FROM done) AS landed, \
                        EXISTS (SELECT 1 FROM {t} WHERE key = $1 AND token = $2 \
                                AND state = 'completed') AS already, \
                        (SELECT count(*) FROM woken) AS woken"
            ),
            // $1 key, $2 token, $3 channel.
            //
            // Frees a live claim of this token. A key whose effects this token committed is not
            // freed: it becomes "completed, response not stored" at once, so that duplicates
            // stop waiting for it.
            release: format!(
                "WITH freed AS ( \
                   DELETE FROM {t} WHERE key = $1 AND token = $2 AND state = 'claimed' \
                     AND lease_until > now() RETURNING key, watched \
                 ), settled AS ( \
                   UPDATE {t} SET state = 'completed', record = NULL, lease_until = now() \
                   WHERE key = $1 AND token = $2 AND state = 'committed' RETURNING key, watched \
                 ), woken AS ( \
                   SELECT pg_notify($3, encode(key, 'hex')) \
                   FROM (SELECT key, watched FROM freed \
                         UNION ALL SELECT key, watched FROM settled) AS ended \
                   WHERE watched \
                 ) \
                 SELECT (SELECT count(*) FROM freed) AS freed, \
                        (SELECT count(*) FROM woken) AS woken"
            ),
            // $1 key, $2 token, $3 lease (µs). A claim's row expires with its lease; a key whose
            // effects are committed keeps its retention.
            renew: format!(
                "UPDATE {t} SET lease_until = now() + $3 * interval '1 microsecond', \
                   expires_at = CASE WHEN state = 'claimed' \
                     THEN now() + $3 * interval '1 microsecond' ELSE expires_at END \
                 WHERE key = $1 AND token = $2 AND state IN ('claimed', 'committed') \
                   AND lease_until > now()"
            ),
            // $1 key.
            get: format!("SELECT {ENTRY} FROM {t} WHERE key = $1 AND expires_at > now()"),
            // $1 key. Marks the key watched while it is in progress, so that its `complete` or
            // `release` notifies, and returns the lease left (µs); no row otherwise. The row lock
            // orders it with those statements: either they see the mark, or this finds the key
            // no longer in progress.
            lease_left: format!(
                "UPDATE {t} SET watched = true WHERE key = $1 \
                   AND state IN ('claimed', 'committed') AND lease_until > now() \
                   AND expires_at > now() \
                 RETURNING (extract(epoch FROM lease_until - now()) * 1000000)::int8"
            ),
            // $1 key, $2 token, $3 key retention (µs), $4 response retention (µs). Runs inside
            // the handler's transaction, whose `now()` is its start: `clock_timestamp()` is the
            // time of this statement. The row lock it takes is held until the transaction ends,
            // so no `begin` can take the key over between this statement and the commit. Should
            // the owner never record its response, the key is remembered from here on: "not
            // stored" until the response retention, "expired" until the key retention.
            commit_in: format!(
                "UPDATE {t} SET state = 'committed', \
                   expires_at = at + $3 * interval '1 microsecond', \
                   record_until = at + $4 * interval '1 microsecond' \
                 FROM (SELECT clock_timestamp() AS at) AS stmt \
                 WHERE key = $1 AND token = $2 AND state = 'claimed'"
            ),
            // $1 batch size, $2 grace (µs). Deletes rows that expired more than the grace ago,
            // and frees the response of rows whose response retention ran out while the key is
            // still remembered (the two sets are disjoint, so no row is changed twice). Rows are
            // locked with SKIP LOCKED, so sweeps of many instances take different rows and never
            // wait for a request's row. Returns the rows deleted and the responses freed.
            sweep: format!(
                "WITH deleted AS ( \
                   DELETE FROM {t} WHERE key IN ( \
                     SELECT key FROM {t} WHERE expires_at < now() - $2 * interval '1 microsecond' \
                     ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
                   RETURNING 1 \
                 ), freed AS ( \
                   UPDATE {t} SET record = NULL WHERE key IN ( \
                     SELECT key FROM {t} WHERE record IS NOT NULL AND record_until < now() \
                       AND expires_at > now() \
                     ORDER BY record_until LIMIT $1 FOR UPDATE SKIP LOCKED) \
                   RETURNING 1 \
                 ) \
                 SELECT (SELECT count(*) FROM deleted) AS deleted, \
                        (SELECT count(*) FROM freed) AS freed"
            ),
            // $1 key, $2 whether to send the response. The columns of `ENTRY`, then how long the
            // current state lasts (µs, rounded up, so a live row never reads zero): the lease
            // for a row in progress, else the response retention while the response is kept
            // (rows without `record_until` keep it until `expires_at`), else the key retention;
            // never past `expires_at`. The response is only read when $2 asks for it: the CASE
            // does not evaluate (nor detoast) the column otherwise.
            lookup: format!(
                "SELECT state, token, fingerprint, live, CASE WHEN $2 THEN record END AS record, \
                        expired, left_us \
                 FROM (SELECT {ENTRY}, ceil(extract(epoch FROM least(CASE \
                         WHEN {in_progress} THEN lease_until \
                         WHEN coalesce(record_until > now(), true) \
                           THEN coalesce(record_until, expires_at) \
                         ELSE expires_at END, expires_at) - now()) * 1000000)::int8 AS left_us \
                       FROM {t} WHERE key = $1 AND expires_at > now()) AS entry"
            ),
            // $1 key, $2 whether to remove a row in progress, $3 channel.
            //
            // `target` locks the live row and judges its latest version (at READ COMMITTED a row
            // changed while this statement waited for the lock is re-read), so the decision and
            // the delete are about the same version; a handler's transaction that holds the row
            // (from its `commit_in` to its commit) makes it wait. A removed row whose waiters
            // marked it `watched` notifies them, as `release` does. Returns the row's owner and
            // whether it was in progress (it was removed unless that and not $2); no row when
            // there was no live one.
            evict: format!(
                "WITH target AS ( \
                   SELECT key, token, {in_progress} AS in_progress FROM {t} \
                   WHERE key = $1 AND expires_at > now() FOR UPDATE \
                 ), gone AS ( \
                   DELETE FROM {t} WHERE key IN (SELECT key FROM target WHERE $2 OR NOT in_progress) \
                   RETURNING key, watched \
                 ), woken AS (SELECT pg_notify($3, encode(key, 'hex')) FROM gone WHERE watched) \
                 SELECT token, in_progress, (SELECT count(*) FROM woken) AS woken \
                 FROM target"
            ),
        }
    }
}
