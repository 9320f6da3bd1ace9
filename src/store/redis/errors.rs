//! How the driver's errors and replies map onto [`StoreError`].

use ::redis::{ErrorKind, RedisError, ServerErrorKind, Value};

use crate::store::{StoreError, StoreErrorKind};

/// What a server older than Redis 7.0 is told, by `check_config` and by a refused `begin`.
pub(super) const NEEDS_REDIS_7: &str = "RedisStore needs Redis 7.0 or newer (`SET … NX … GET`)";

pub(super) fn unexpected_reply(reply: &Value) -> StoreError {
    StoreError::with_source(
        StoreErrorKind::Other,
        format!("unexpected reply from redis: {reply:?}"),
    )
}

/// Errors that say the command may not have reached the server, or its reply did not come back.
pub(super) fn is_transport_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        )
}

pub(super) fn map_error(e: RedisError) -> StoreError {
    let kind = if e.is_timeout() {
        StoreErrorKind::Timeout
    } else if is_transport_error(&e) {
        StoreErrorKind::Unavailable
    } else {
        StoreErrorKind::Other
    };
    StoreError::with_source(kind, e)
}

/// `begin`'s errors. A server older than Redis 7.0 refuses `NX` together with `GET` with a bare
/// "syntax error"; that error is made to say what it means.
pub(super) fn map_begin_error(e: RedisError) -> StoreError {
    let old_server = e.code() == Some("ERR") && e.detail().is_some_and(|d| d.contains("syntax"));
    if old_server {
        let why = format!("{NEEDS_REDIS_7}; the server answered: {e}");
        return StoreError::with_source(StoreErrorKind::Other, why);
    }
    map_error(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a server answers with, as the driver hands it to the store.
    fn server_error(reply: &[u8]) -> RedisError {
        ::redis::parse_redis_value(reply)
            .and_then(Value::extract_error)
            .expect_err("an error reply")
    }

    /// What the store's error says through its source, where the cause is.
    fn cause(e: &StoreError) -> String {
        std::error::Error::source(e)
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    #[test]
    fn an_old_servers_refusal_of_begin_names_the_version() {
        // What Redis 6.2 answers to `SET k v NX PX 1 GET`.
        let e = map_begin_error(server_error(b"-ERR syntax error\r\n"));
        assert_eq!(e.kind(), StoreErrorKind::Other);
        assert!(cause(&e).contains("needs Redis 7.0"), "{}", cause(&e));
        // Other errors keep their own meaning.
        let e = map_begin_error(server_error(b"-LOADING Redis is loading\r\n"));
        assert_eq!(e.kind(), StoreErrorKind::Unavailable);
        let e = map_begin_error(server_error(b"-WRONGTYPE Operation against a key\r\n"));
        assert_eq!(e.kind(), StoreErrorKind::Other);
        assert!(!cause(&e).contains("needs Redis 7.0"), "{}", cause(&e));
    }
}
