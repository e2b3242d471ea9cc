//! The gateway's JSON and its conversions to and from the gRPC messages, in one place.
//!
//! The JSON follows the messages of `proto/keyraft/v1/keyraft.proto` field for field, with
//! proto3's JSON conventions where they matter to a client:
//! - every `bytes` field is base64 (RFC 4648 section 4, padded) in answers; requests may use
//!   either alphabet (section 4 or the URL-safe section 5), padded or not, so a value can go in
//!   a URL unescaped in its URL-safe form;
//! - numbers are JSON numbers (epochs, versions and times stay far below 2^53);
//! - a field left out of a request takes its default (0, empty); unknown fields are refused,
//!   so a misspelt option is an error rather than silently ignored.
//!
//! A malformed value is an error naming the field, as in `keyraft_proto::convert`.
// The fields are the messages' (proto/keyraft/v1/keyraft.proto documents each).
#![allow(missing_docs)]

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use keyraft_proto::pb;
use serde::{Deserialize, Serialize};

/// A request's field that did not decode: the message names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadField(pub String);

/// Decodes base64 in either alphabet, padded or not.
fn lenient(alphabet: &alphabet::Alphabet) -> GeneralPurpose {
    GeneralPurpose::new(alphabet, GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent))
}

/// The bytes of base64 field `field` (either alphabet, padded or not).
pub fn bytes(field: &str, value: &str) -> Result<Vec<u8>, BadField> {
    let url_safe = value.contains(['-', '_']);
    let engine = lenient(if url_safe { &alphabet::URL_SAFE } else { &alphabet::STANDARD });
    engine.decode(value).map_err(|e| BadField(format!("{field}: not base64: {e}")))
}

/// Bytes as they appear in answers.
pub fn base64(value: &[u8]) -> String {
    STANDARD.encode(value)
}

fn optional_bytes(field: &str, value: Option<&str>) -> Result<Vec<u8>, BadField> {
    value.map_or(Ok(Vec::new()), |v| bytes(field, v))
}

/// Query of `GET /v1/lookup/{user_id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupQuery {
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub min_epoch: u64,
    #[serde(default)]
    pub verifier_threshold: u32,
    #[serde(default)]
    pub wait_ms: u32,
}

impl LookupQuery {
    pub fn into_request(self, user_id: String) -> pb::LookupRequest {
        pb::LookupRequest {
            user_id,
            epoch: self.epoch,
            min_epoch: self.min_epoch,
            verifier_threshold: self.verifier_threshold,
            wait_ms: self.wait_ms,
        }
    }
}

/// Answer of a lookup.
#[derive(Debug, Serialize, Deserialize)]
pub struct LookupAnswer {
    /// Canonical `LookupProof` bytes (docs/protocol.md section 5).
    pub proof: String,
    pub newest_epoch_hint: u64,
}

impl From<pb::LookupResponse> for LookupAnswer {
    fn from(r: pb::LookupResponse) -> Self {
        Self { proof: base64(&r.proof), newest_epoch_hint: r.newest_epoch_hint }
    }
}

/// Body of `POST /v1/updates`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    pub user_id: String,
    /// Canonical `Update` bytes (docs/protocol.md section 2.5).
    pub update: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier_threshold: Option<u32>,
    #[serde(default)]
    pub wait_ms: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<RegistrationBody>,
    #[serde(default)]
    pub recovery: bool,
}

/// The proof of the right to register an identity: exactly one of the fields.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationBody {
    /// Canonical `Attestation` bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registrar_attestation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc_id_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_code: Option<String>,
}

impl RegistrationBody {
    fn into_proto(self) -> Result<pb::Registration, BadField> {
        use pb::registration::Proof;
        let proof = match (self.registrar_attestation, self.oidc_id_token, self.email_code) {
            (Some(a), None, None) => Proof::RegistrarAttestation(bytes("registration.registrar_attestation", &a)?),
            (None, Some(t), None) => Proof::OidcIdToken(t),
            (None, None, Some(c)) => Proof::EmailCode(c),
            _ => {
                return Err(BadField(
                    "registration: give exactly one of registrar_attestation, oidc_id_token, email_code".into(),
                ))
            }
        };
        Ok(pb::Registration { proof: Some(proof) })
    }
}

impl UpdateBody {
    pub fn into_request(self) -> Result<pb::UpdateRequest, BadField> {
        Ok(pb::UpdateRequest {
            user_id: self.user_id,
            update: bytes("update", &self.update)?,
            verifier_threshold: self.verifier_threshold,
            wait_ms: self.wait_ms,
            registration: self.registration.map(RegistrationBody::into_proto).transpose()?,
            recovery: self.recovery,
        })
    }
}

/// Answer of an update.
#[derive(Debug, Serialize, Deserialize)]
pub struct UpdateAnswer {
    pub update_id: String,
    pub epoch: u64,
    pub duplicate: bool,
    /// Canonical `LookupProof` bytes when `verifier_threshold` was given, else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

impl From<pb::UpdateResponse> for UpdateAnswer {
    fn from(r: pb::UpdateResponse) -> Self {
        Self {
            update_id: base64(&r.update_id),
            epoch: r.epoch,
            duplicate: r.duplicate,
            proof: (!r.proof.is_empty()).then(|| base64(&r.proof)),
        }
    }
}

/// Query of `GET /v1/update-status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateStatusQuery {
    pub update_id: String,
    #[serde(default)]
    pub index: Option<String>,
    #[serde(default)]
    pub version: u64,
}

impl UpdateStatusQuery {
    pub fn into_request(self) -> Result<pb::GetUpdateStatusRequest, BadField> {
        Ok(pb::GetUpdateStatusRequest {
            update_id: bytes("update_id", &self.update_id)?,
            index: optional_bytes("index", self.index.as_deref())?,
            version: self.version,
        })
    }
}

/// Answer of an update's status.
#[derive(Debug, Serialize, Deserialize)]
pub struct UpdateStatusAnswer {
    /// `UNKNOWN`, `PENDING`, `IN_EPOCH` or `REJECTED`.
    pub state: String,
    pub epoch: u64,
    pub reason: String,
    pub retryable: bool,
}

impl From<pb::GetUpdateStatusResponse> for UpdateStatusAnswer {
    fn from(r: pb::GetUpdateStatusResponse) -> Self {
        let state = r.state().as_str_name().trim_start_matches("STATE_").to_owned();
        Self { state, epoch: r.epoch, reason: r.reason, retryable: r.retryable }
    }
}

/// A signature with its signer.
#[derive(Debug, Serialize, Deserialize)]
pub struct SignatureAnswer {
    pub signer: String,
    pub signature: String,
}

/// One epoch's head and signatures.
#[derive(Debug, Serialize, Deserialize)]
pub struct EpochAnswer {
    /// Canonical `EpochHead` bytes (docs/protocol.md section 2.7).
    pub head: String,
    pub replica_signatures: Vec<SignatureAnswer>,
    pub verifier_signatures: Vec<SignatureAnswer>,
}

fn signatures(list: Vec<pb::KeySignature>) -> Vec<SignatureAnswer> {
    list.into_iter().map(|s| SignatureAnswer { signer: base64(&s.signer), signature: base64(&s.signature) }).collect()
}

impl From<pb::EpochInfo> for EpochAnswer {
    fn from(e: pb::EpochInfo) -> Self {
        Self {
            head: base64(&e.head),
            replica_signatures: signatures(e.replica_signatures),
            verifier_signatures: signatures(e.verifier_signatures),
        }
    }
}

/// Query of `GET /v1/epochs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochsQuery {
    #[serde(default)]
    pub start_epoch: u64,
    #[serde(default)]
    pub page_size: u32,
    #[serde(default)]
    pub page_token: Option<String>,
}

impl EpochsQuery {
    pub fn into_request(self) -> Result<pb::ListEpochsRequest, BadField> {
        Ok(pb::ListEpochsRequest {
            start_epoch: self.start_epoch,
            page_size: self.page_size,
            page_token: optional_bytes("page_token", self.page_token.as_deref())?,
        })
    }
}

/// A page of epochs.
#[derive(Debug, Serialize, Deserialize)]
pub struct EpochsAnswer {
    pub epochs: Vec<EpochAnswer>,
    /// Empty at the end of the listing.
    pub next_page_token: String,
}

impl From<pb::ListEpochsResponse> for EpochsAnswer {
    fn from(r: pb::ListEpochsResponse) -> Self {
        Self {
            epochs: r.epochs.into_iter().map(EpochAnswer::from).collect(),
            next_page_token: base64(&r.next_page_token),
        }
    }
}

/// Query of `GET /v1/history/{user_id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    #[serde(default)]
    pub page_size: u32,
    #[serde(default)]
    pub page_token: Option<String>,
    #[serde(default)]
    pub verifier_threshold: u32,
}

impl HistoryQuery {
    pub fn into_request(self, user_id: String) -> Result<pb::HistoryRequest, BadField> {
        Ok(pb::HistoryRequest {
            user_id,
            page_size: self.page_size,
            page_token: optional_bytes("page_token", self.page_token.as_deref())?,
            verifier_threshold: self.verifier_threshold,
        })
    }
}

/// One version in a history.
#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryVersionAnswer {
    pub version: u64,
    pub epoch: u64,
    /// Canonical `LookupProof` bytes at `epoch`.
    pub proof: String,
}

/// A page of an identity's history.
#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryAnswer {
    pub versions: Vec<HistoryVersionAnswer>,
    pub next_page_token: String,
    /// First page only: the proof at the epoch the listing is pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
}

impl From<pb::HistoryResponse> for HistoryAnswer {
    fn from(r: pb::HistoryResponse) -> Self {
        Self {
            versions: r
                .versions
                .into_iter()
                .map(|v| HistoryVersionAnswer { version: v.version, epoch: v.epoch, proof: base64(&v.proof) })
                .collect(),
            next_page_token: base64(&r.next_page_token),
            current: (!r.current.is_empty()).then(|| base64(&r.current)),
        }
    }
}

/// Every error answer: the gRPC status code's name, the message, and what the gRPC metadata
/// would have carried.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, ... (the gRPC code's name).
    pub code: String,
    pub message: String,
    /// The leader's public address, with UNAVAILABLE when one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_hint: Option<String>,
    /// With RESOURCE_EXHAUSTED from a rate limit: milliseconds until a retry can succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bytes_decode_in_either_alphabet_padded_or_not() {
        let value = [0xfb_u8, 0xff, 0xfe, 0x01];
        let standard = base64(&value);
        assert_eq!(standard, "+//+AQ==");
        for form in ["+//+AQ==", "+//+AQ", "-__-AQ==", "-__-AQ"] {
            assert_eq!(bytes("f", form).unwrap(), value, "{form}");
        }
        let e = bytes("update", "not base64!").unwrap_err();
        assert!(e.0.starts_with("update: not base64"), "{e:?}");
    }

    #[test]
    fn a_registration_takes_exactly_one_proof() {
        let none = RegistrationBody::default().into_proto().unwrap_err();
        assert!(none.0.contains("exactly one"), "{none:?}");
        let two =
            RegistrationBody { oidc_id_token: Some("t".into()), email_code: Some("c".into()), ..Default::default() };
        assert!(two.into_proto().is_err());
        let code = RegistrationBody { email_code: Some("123".into()), ..Default::default() }.into_proto().unwrap();
        assert_eq!(code.proof, Some(pb::registration::Proof::EmailCode("123".into())));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<UpdateBody>(r#"{"user_id":"a","update":"AA==","wait":5}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `wait`"), "{e}");
    }

    #[test]
    fn states_are_named_without_their_prefix() {
        let r = pb::GetUpdateStatusResponse {
            state: pb::get_update_status_response::State::InEpoch as i32,
            epoch: 7,
            ..Default::default()
        };
        assert_eq!(UpdateStatusAnswer::from(r).state, "IN_EPOCH");
    }
}
