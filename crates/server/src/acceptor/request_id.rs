//! Request ids: every request a listener serves has one, in a `request` span around its
//! handling (so every log line of the request carries it, in text and in JSON) and in the
//! `x-request-id` response header, for a client to quote when it reports a problem.
//!
//! A client may choose the id by sending `x-request-id` (1 to [`REQUEST_ID_BYTES_MAX`] bytes
//! of letters, digits and `-_.:`); anything else is replaced by one of the replica's own:
//! an id is written into logs, and a client must not be able to write arbitrary text there.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The header that carries a request's id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id a client may choose, in bytes.
pub const REQUEST_ID_BYTES_MAX: usize = 64;

/// A request's id (in the request's extensions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// The client's id from `headers` if it is one, else a new one.
    pub fn for_request(headers: &http::HeaderMap) -> Self {
        headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|id| is_valid(id))
            .map_or_else(Self::generate, |id| Self(id.to_owned()))
    }

    /// A new id: this process's random prefix and a counter, unique per process run.
    pub fn generate() -> Self {
        static PREFIX: OnceLock<u32> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let prefix = *PREFIX.get_or_init(rand::random);
        Self(format!("{prefix:08x}-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_valid(id: &str) -> bool {
    (1..=REQUEST_ID_BYTES_MAX).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_id_is_kept_only_if_it_is_short_plain_text() {
        let with = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(REQUEST_ID_HEADER, v.parse().unwrap());
            RequestId::for_request(&h)
        };
        assert_eq!(with("abc-123_x.y:z").as_str(), "abc-123_x.y:z");
        for refused in ["", "a b", "a\"b", "{\"level\":\"ERROR\"}", &"x".repeat(65)] {
            let id = with(refused);
            assert_ne!(id.as_str(), refused);
            assert!(is_valid(id.as_str()), "{id}");
        }
        assert!(is_valid(RequestId::for_request(&http::HeaderMap::new()).as_str()));
        let (a, b) = (RequestId::generate(), RequestId::generate());
        assert_ne!(a, b);
    }
}
