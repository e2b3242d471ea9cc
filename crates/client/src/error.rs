//! What went wrong, by whose fault: the one error type of the client, the one classification
//! of a proof that does not verify, and gRPC statuses in words.

use crate::CONNECT_TIMEOUT_MS;
use keyraft_core::lookup::{ClientRealm, VerifyError};
use std::path::PathBuf;

/// What went wrong, by whose fault.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The caller's input or configuration is wrong; retrying will not help.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The server refused the request as it stands (a version or policy conflict, an unknown
    /// epoch); the message says why.
    #[error("refused by the server ({}): {message}", code_in_words(*code))]
    Refused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's explanation.
        message: String,
    },
    /// No replica answered usefully; try again later.
    #[error("try again: {0}")]
    Unavailable(String),
    /// A replica refused the request because this caller (its address, or the identity it
    /// acts on) sent too many requests: the caller's rate, not a server fault. Not retried
    /// here, neither on another replica (each counts its own) nor after the wait: the caller
    /// decides whether to wait `retry_after_ms` and try again.
    #[error("rate limited (the caller's rate, not a server fault; retry in {retry_after_ms} ms): {message}")]
    RateLimited {
        /// The replica's explanation: which limit, with its configuration keys.
        message: String,
        /// Milliseconds until a retry can succeed, as the replica said (its `retry-after-ms`).
        retry_after_ms: u64,
    },
    /// A replica sent an answer that does not verify: it is faulty or lying. Keep the proof.
    #[error("the server misbehaved: {0}")]
    Misbehaved(#[from] VerifyError),
    /// The newest answer satisfying this client's quorum is older than its epoch TTL: the
    /// realm, or the verifiers this client requires, are behind, or a replica is hiding newer
    /// epochs. Not proof of misbehaviour on its own; try later or another replica.
    #[error("no fresh enough answer: {0}")]
    Stale(VerifyError),
    /// A replica sent answers that verify one by one but contradict the request or each other
    /// (an older epoch than asked for, a "change" that changes nothing): it is faulty or lying.
    #[error("the server misbehaved: {0}")]
    Contradicted(String),
    /// This client's own state on this machine (the state file of the newest epochs seen and
    /// of its own updates) could not be read or written, or holds what this client cannot
    /// read: the local disk's or the file's fault, neither a server's nor the request's.
    /// Retrying will not help until the file is fixed (or deleted, forgetting the epochs seen).
    #[error(
        "this client's state file {} ({action}): {source}; the file or the disk on this machine is at fault, not the realm: fix it, or delete it to start over (forgetting the epochs seen)",
        path.display()
    )]
    LocalState {
        /// The state file.
        path: PathBuf,
        /// What was being done with it: "reading it", "writing it", ...
        action: &'static str,
        /// The OS error, or what is wrong with the bytes read (`InvalidData`).
        #[source]
        source: std::io::Error,
    },
    /// The update was applied, but this client could not record that in its state file (the
    /// source says why). The update stays applied: do not resubmit it as a new one; fix the
    /// file, then look the identity up.
    #[error(
        "the update was applied in epoch {epoch} (update id {}), but this client could not record it: {source}",
        hex::encode(update_id)
    )]
    AppliedNotRecorded {
        /// The update's id.
        update_id: Vec<u8>,
        /// The epoch it is in.
        epoch: u64,
        /// Why it could not be recorded (a [`ClientError::LocalState`]).
        #[source]
        source: Box<ClientError>,
    },
    /// An update that was to wait for its ratification is in an epoch, which did not reach the
    /// verifier ratifications this client requires within the wait: it was accepted and stays
    /// applied (its status says where; a lookup proves it once ratified). Do not resubmit it.
    #[error(
        "accepted in epoch {epoch}; not yet ratified by {verifiers} verifier{} (update id {}): look it up later",
        if *verifiers == 1 { "" } else { "s" },
        hex::encode(update_id)
    )]
    NotRatifiedYet {
        /// The update's id.
        update_id: Vec<u8>,
        /// The epoch it is in.
        epoch: u64,
        /// How many verifier ratifications this client requires.
        verifiers: usize,
    },
}

impl ClientError {
    /// Whether the server, not the network or the caller, is at fault: keep the evidence.
    pub fn is_misbehavior(&self) -> bool {
        matches!(self, Self::Misbehaved(_) | Self::Contradicted(_))
    }

    /// Whether another replica may answer usefully: "try again", a stale answer, an epoch not
    /// ratified yet, an epoch beyond the replica's newest, or an answer older than one already
    /// seen (a lagging or lying replica; reported if no replica does better).
    pub(crate) fn try_elsewhere(&self) -> bool {
        // OUT_OF_RANGE: the epoch asked for is beyond the replica's newest; a replica far
        // behind (a full disk, a partition) says so about epochs its peers have.
        matches!(
            self,
            Self::Unavailable(_)
                | Self::Stale(_)
                | Self::Misbehaved(VerifyError::Rollback { .. })
                | Self::Refused { code: tonic::Code::OutOfRange, .. }
        )
    }

    /// Which error of several to report: the most telling one.
    pub(crate) fn weight(&self) -> u8 {
        match self {
            Self::Misbehaved(_) | Self::Contradicted(_) => 3,
            Self::Stale(_) => 2,
            _ => 1,
        }
    }
}

/// The one classification of a proof that does not verify. A head older than the TTL is
/// stale and a head lacking the verifier ratifications the client requires is not ratified
/// yet: neither proves a signed statement false, so both are worth retrying (later, on another
/// replica, or for an older epoch). Anything else in the proof that fails, even with the
/// ratifications missing, proves the replica wrong.
pub(crate) fn verify_classified<T>(
    realm: &ClientRealm,
    epoch: u64,
    verify: impl Fn(&ClientRealm) -> Result<T, VerifyError>,
) -> Result<T, ClientError> {
    let classify = |e: VerifyError| match e {
        VerifyError::HeadExpired { .. } => ClientError::Stale(e),
        e => ClientError::Misbehaved(e),
    };
    match verify(realm) {
        Ok(v) => Ok(v),
        Err(VerifyError::VerifierQuorumMissing { have, need }) => {
            let lenient = ClientRealm { verifier_threshold: have, ..realm.clone() };
            match verify(&lenient) {
                Err(e) => Err(classify(e)),
                Ok(_) => Err(ClientError::Unavailable(format!(
                    "epoch {epoch} is not ratified yet: it has {have} of the {need} verifier ratifications this client requires (retry later or on another replica, or ask for an older epoch)"
                ))),
            }
        }
        Err(e) => Err(classify(e)),
    }
}

/// The metadata of a rate-limit refusal: integer milliseconds until a retry can succeed (the
/// server's `rate_limits::RETRY_AFTER_MS_METADATA`).
pub(crate) const RETRY_AFTER_MS_METADATA: &str = "retry-after-ms";

pub(crate) fn status_error(endpoint: &str, status: &tonic::Status) -> ClientError {
    use tonic::Code;
    if status.code() == Code::ResourceExhausted {
        let retry_after_ms = status
            .metadata()
            .get(RETRY_AFTER_MS_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(retry_after_ms) = retry_after_ms {
            return ClientError::RateLimited { message: format!("{endpoint}: {}", status.message()), retry_after_ms };
        }
    }
    let message = format!("{endpoint}: {}", status_in_words(status));
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal
        | Code::Aborted => ClientError::Unavailable(message),
        code => ClientError::Refused { code, message: format!("{endpoint}: {}", status.message()) },
    }
}

/// A gRPC status code in words, for messages: "failed precondition", "unavailable".
pub fn code_in_words(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "not implemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Why a call failed on the way to or from the server, in words, when the network (not the
/// server) ended it: "connection refused", "timed out after 2 s" (connecting), "no answer
/// within the call's deadline".
pub fn network_cause(status: &tonic::Status) -> Option<String> {
    use std::error::Error as _;
    let mut cause = status.source();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                // The only timeout below a call's own deadline is the connect timeout.
                std::io::ErrorKind::TimedOut => {
                    format!("timed out after {} s", CONNECT_TIMEOUT_MS.div_ceil(1_000))
                }
                _ => tls_in_words(io).unwrap_or_else(|| io.to_string()),
            });
        }
        if c.downcast_ref::<tonic::TimeoutExpired>().is_some() {
            return Some("no answer within the call's deadline".to_owned());
        }
        cause = c.source();
    }
    None
}

/// A TLS failure in words, with what to check: rustls's own words name the cause, not the
/// likely mistake.
fn tls_in_words(io: &std::io::Error) -> Option<String> {
    let tls = io.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::InvalidMessage(_) => {
            format!("TLS handshake failed ({tls}): the replica does not speak TLS; is its realm file's `tls` right?")
        }
        rustls::Error::InvalidCertificate(e) => format!(
            "the replica's TLS certificate is not acceptable ({e}): it must be issued by the realm file's `tls.ca_pem` \
             for the endpoint's host"
        ),
        other => format!("TLS: {other}"),
    })
}

/// A status in words, never tonic's `Debug` structures: the network cause when the call never
/// got an answer ("connection refused"), else "<code in words>: <message>".
pub fn status_in_words(status: &tonic::Status) -> String {
    if let Some(cause) = network_cause(status) {
        return cause;
    }
    match status.message() {
        "" => code_in_words(status.code()).to_owned(),
        message => format!("{}: {message}", code_in_words(status.code())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod rate_limit_tests {
    use super::*;

    #[test]
    fn resource_exhausted_with_retry_after_is_the_callers_rate_limit() {
        let mut status = tonic::Status::resource_exhausted("rate limited: updates from this client address ...");
        status.metadata_mut().insert(RETRY_AFTER_MS_METADATA, 1_250u64.into());
        let e = status_error("127.0.0.1:7001", &status);
        match &e {
            ClientError::RateLimited { message, retry_after_ms } => {
                assert_eq!(*retry_after_ms, 1_250);
                assert!(message.starts_with("127.0.0.1:7001: rate limited: updates"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            e.to_string().starts_with("rate limited (the caller's rate, not a server fault; retry in 1250 ms): "),
            "{e}"
        );
        assert!(!e.try_elsewhere() && !e.is_misbehavior());
        // Without the metadata (a size limit), RESOURCE_EXHAUSTED stays a refusal.
        let size = status_error("a", &tonic::Status::resource_exhausted("the request is 2000000 bytes"));
        assert!(matches!(size, ClientError::Refused { code: tonic::Code::ResourceExhausted, .. }), "{size:?}");
        let mut garbled = tonic::Status::resource_exhausted("x");
        garbled.metadata_mut().insert(RETRY_AFTER_MS_METADATA, "soon".parse().unwrap());
        assert!(matches!(status_error("a", &garbled), ClientError::Refused { .. }));
    }
}

#[cfg(test)]
mod tls_words_tests {
    use super::*;

    #[test]
    fn tls_failures_say_what_to_check() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let plaintext = tls_in_words(&io(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)));
        assert!(plaintext.is_some_and(|m| m.contains("does not speak TLS")));
        let wrong = tls_in_words(&io(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)));
        assert!(wrong.is_some_and(|m| m.contains("tls.ca_pem")));
        assert_eq!(tls_in_words(&std::io::Error::from(std::io::ErrorKind::ConnectionReset)), None);
    }
}
