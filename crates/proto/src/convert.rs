//! Wire messages to domain types and back.
//!
//! A missing field or a field that does not decode is an error naming the field, never a
//! default value; [`ConversionError::to_status`] turns it into `INVALID_ARGUMENT` for the
//! client whose request it was.

use crate::pb;
use keyraft_core::encoding::DecodeError;
use keyraft_core::{decode_canonical, Canonical, Command, PublicKey, Signature, Update};
use prost::Message as _;
use thiserror::Error;

/// Why a wire message does not convert. The sender is at fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConversionError {
    /// A required field or oneof is absent.
    #[error("field `{field}` is missing")]
    Missing {
        /// The field.
        field: &'static str,
    },
    /// A fixed-size field has the wrong length.
    #[error("field `{field}` must be {expected} bytes, got {got}")]
    WrongLength {
        /// The field.
        field: &'static str,
        /// Required length.
        expected: usize,
        /// Length received.
        got: usize,
    },
    /// A field's bytes are not a valid canonical encoding.
    #[error("field `{field}` does not decode: {source}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        source: DecodeError,
    },
    /// The message itself is not valid protobuf.
    #[error("message does not decode as {message}: {reason}")]
    Protobuf {
        /// The message type.
        message: &'static str,
        /// prost's explanation.
        reason: String,
    },
}

impl ConversionError {
    /// The gRPC status for a client that sent this: `INVALID_ARGUMENT` with the explanation.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::invalid_argument(format!("{self}; see docs/protocol.md for the encoding"))
    }
}

/// Decodes a 32-byte Ed25519 public key field.
pub fn public_key(field: &'static str, bytes: &[u8]) -> Result<PublicKey, ConversionError> {
    if bytes.len() != PublicKey::BYTES {
        return Err(ConversionError::WrongLength { field, expected: PublicKey::BYTES, got: bytes.len() });
    }
    PublicKey::from_slice(bytes).map_err(|source| ConversionError::Invalid { field, source })
}

/// Decodes a 64-byte signature field.
pub fn signature(field: &'static str, bytes: &[u8]) -> Result<Signature, ConversionError> {
    Signature::from_slice(bytes).map_err(|_| ConversionError::WrongLength {
        field,
        expected: Signature::BYTES,
        got: bytes.len(),
    })
}

/// Decodes a field holding canonical bytes of `T`.
pub fn canonical<T: Canonical>(field: &'static str, bytes: &[u8]) -> Result<T, ConversionError> {
    if bytes.is_empty() {
        return Err(ConversionError::Missing { field });
    }
    decode_canonical(bytes).map_err(|source| ConversionError::Invalid { field, source })
}

/// A `Lookup` answer as a client receives it: the proof, which the client verifies and trusts
/// alone, and the replica's unauthenticated hint about the newest epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupReply {
    /// Canonical `LookupProof` bytes, still to be verified.
    pub proof: Vec<u8>,
    /// The newest keyserver-ratified epoch the replica says it holds (`None`: not said, as by
    /// a replica of an earlier release). Signed by no one: only for telling the user that the
    /// proof's epoch is behind, never for accepting or refusing an answer.
    pub newest_epoch_hint: Option<u64>,
}

impl From<pb::LookupResponse> for LookupReply {
    fn from(r: pb::LookupResponse) -> Self {
        Self { proof: r.proof, newest_epoch_hint: (r.newest_epoch_hint != 0).then_some(r.newest_epoch_hint) }
    }
}

impl From<LookupReply> for pb::LookupResponse {
    fn from(r: LookupReply) -> Self {
        Self { proof: r.proof, newest_epoch_hint: r.newest_epoch_hint.unwrap_or(0) }
    }
}

impl TryFrom<pb::LogEntry> for Command {
    type Error = ConversionError;

    fn try_from(entry: pb::LogEntry) -> Result<Self, Self::Error> {
        use pb::log_entry::Command as C;
        Ok(match entry.command.ok_or(ConversionError::Missing { field: "LogEntry.command" })? {
            C::Update(bytes) => Command::Update(Box::new(canonical::<Update>("LogEntry.update", &bytes)?)),
            C::RecoveryRequest(bytes) => {
                Command::RecoveryRequest(Box::new(canonical::<Update>("LogEntry.recovery_request", &bytes)?))
            }
            C::EpochDelimiter(d) => Command::EpochDelimiter { epoch: d.epoch, timestamp_ms: d.timestamp_ms },
            C::ReplicaSignature(s) => Command::ReplicaSignature {
                epoch: s.epoch,
                signer: public_key("ReplicaSignature.signer", &s.signer)?,
                signature: signature("ReplicaSignature.signature", &s.signature)?,
            },
            C::VerifierSignature(s) => Command::VerifierSignature {
                epoch: s.epoch,
                verifier: public_key("VerifierSignature.verifier", &s.verifier)?,
                signature: signature("VerifierSignature.signature", &s.signature)?,
            },
            C::ConfigChange(bytes) => Command::ConfigChange(Box::new(canonical::<keyraft_core::SignedConfigChange>(
                "LogEntry.config_change",
                &bytes,
            )?)),
        })
    }
}

impl From<&Command> for pb::LogEntry {
    fn from(command: &Command) -> Self {
        use pb::log_entry::Command as C;
        let command = match command {
            Command::Update(update) => C::Update(update.encode()),
            Command::RecoveryRequest(update) => C::RecoveryRequest(update.encode()),
            Command::EpochDelimiter { epoch, timestamp_ms } => {
                C::EpochDelimiter(pb::EpochDelimiter { epoch: *epoch, timestamp_ms: *timestamp_ms })
            }
            Command::ReplicaSignature { epoch, signer, signature } => C::ReplicaSignature(pb::ReplicaSignature {
                epoch: *epoch,
                signer: signer.as_bytes().to_vec(),
                signature: signature.0.to_vec(),
            }),
            Command::VerifierSignature { epoch, verifier, signature } => C::VerifierSignature(pb::VerifierSignature {
                epoch: *epoch,
                verifier: verifier.as_bytes().to_vec(),
                signature: signature.0.to_vec(),
            }),
            Command::ConfigChange(change) => C::ConfigChange(change.encode()),
        };
        pb::LogEntry { command: Some(command) }
    }
}

/// The verifier's signed access in a `VerifierStreamRequest` (docs/protocol.md section 7.1).
pub fn stream_access(
    req: &crate::pb::VerifierStreamRequest,
) -> Result<keyraft_core::verifier_access::StreamAccess, ConversionError> {
    Ok(keyraft_core::verifier_access::StreamAccess {
        verifier: public_key("verifier_key", &req.verifier_key)?,
        time_ms: req.access_time_ms,
        signature: signature("access_signature", &req.access_signature)?,
    })
}

/// `req` signed for reading the stream of `realm` with verifier `key` at `time_ms`.
pub fn sign_stream_request(
    mut req: crate::pb::VerifierStreamRequest,
    key: &ed25519_dalek::SigningKey,
    realm: &str,
    time_ms: u64,
) -> Result<crate::pb::VerifierStreamRequest, keyraft_core::DecodeError> {
    let access = keyraft_core::verifier_access::stream_access(key, realm, time_ms)?;
    req.verifier_key = access.verifier.as_bytes().to_vec();
    req.access_time_ms = access.time_ms;
    req.access_signature = access.signature.0.to_vec();
    Ok(req)
}

/// The bytes of a log entry as the Raft log stores them.
pub fn encode_log_entry(command: &Command) -> Vec<u8> {
    pb::LogEntry::from(command).encode_to_vec()
}

/// Decodes a log entry read from the Raft log or received from a peer.
pub fn decode_log_entry(bytes: &[u8]) -> Result<Command, ConversionError> {
    let entry = pb::LogEntry::decode(bytes)
        .map_err(|e| ConversionError::Protobuf { message: "keyraft.v1.LogEntry", reason: e.to_string() })?;
    Command::try_from(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_travel_as_a_detail_not_as_words() {
        let status = Refusal::HistoryDiverged { epoch: 7 }.to_status("any words at all");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(Refusal::of(&status), Some(Refusal::HistoryDiverged { epoch: 7 }));
        // Words alone are no refusal, and neither is the detail under another code.
        assert_eq!(Refusal::of(&tonic::Status::failed_precondition("history diverged")), None);
        let mut other = tonic::Status::unavailable("x");
        other.metadata_mut().insert(REFUSAL_METADATA_KEY, "history-diverged/7".parse().unwrap());
        assert_eq!(Refusal::of(&other), None);
    }

    #[test]
    fn a_lookup_reply_without_a_hint_travels_as_zero_and_comes_back_as_none() {
        let hinted = LookupReply { proof: vec![1, 2], newest_epoch_hint: Some(31) };
        let wire = pb::LookupResponse::from(hinted.clone());
        assert_eq!(wire.newest_epoch_hint, 31);
        assert_eq!(LookupReply::from(wire), hinted);
        let older_replica = pb::LookupResponse { proof: vec![3], newest_epoch_hint: 0 };
        assert_eq!(LookupReply::from(older_replica).newest_epoch_hint, None);
    }
}

/// The metadata key carrying a [`Refusal`] on a gRPC status.
pub const REFUSAL_METADATA_KEY: &str = "keyraft-refusal";

/// A refusal a caller acts on by its kind, carried as a machine-readable detail (status
/// metadata) next to the human message, so that no caller matches message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// A verifier asked to resume a stream after `epoch` with a root other than this
    /// replica's: their histories diverged at or before `epoch`.
    HistoryDiverged {
        /// The epoch whose roots differ.
        epoch: u64,
    },
}

impl Refusal {
    /// The status refusing with this detail: `FAILED_PRECONDITION` with `message`.
    pub fn to_status(self, message: impl Into<String>) -> tonic::Status {
        let mut metadata = tonic::metadata::MetadataMap::new();
        let Self::HistoryDiverged { epoch } = self;
        if let Ok(value) = format!("history-diverged/{epoch}").parse() {
            metadata.insert(REFUSAL_METADATA_KEY, value);
        }
        tonic::Status::with_metadata(tonic::Code::FailedPrecondition, message, metadata)
    }

    /// The refusal a status carries, if any (a status without it, or with a kind this build
    /// does not know, carries none).
    pub fn of(status: &tonic::Status) -> Option<Self> {
        if status.code() != tonic::Code::FailedPrecondition {
            return None;
        }
        let value = status.metadata().get(REFUSAL_METADATA_KEY)?.to_str().ok()?;
        let epoch = value.strip_prefix("history-diverged/")?.parse().ok()?;
        Some(Self::HistoryDiverged { epoch })
    }
}
