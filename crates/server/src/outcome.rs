//! From what the log did with a proposed command to what its proposer answers: the one place
//! a log outcome becomes a gRPC status, for the public service (updates, ratifications) and
//! the peer service alike.

use crate::raft::types::ApplyResponse;
use keyraft_core::UpdateRejection;
use keyraft_state::{Ignored, Outcome, Rejected};
use tonic::Status;

/// A proposed command the log took, or had taken before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// An update staged into (or already in) `epoch`.
    Update {
        /// The epoch the update appears in.
        epoch: u64,
        /// Whether the same update was applied or staged before.
        duplicate: bool,
    },
    /// The open epoch closed.
    EpochClosed {
        /// The closed epoch.
        epoch: u64,
    },
    /// A replica or verifier signature is stored.
    Signature {
        /// The epoch signed.
        epoch: u64,
        /// Whether it was stored before.
        duplicate: bool,
    },
    /// A configuration change is pending until the next head (or was applied before).
    ConfigChange {
        /// The generation it leads to.
        generation: u64,
        /// Whether it was applied before.
        duplicate: bool,
    },
}

/// The status for an update the rules refuse, whether the edge or the step found it: retryable
/// refusals are `UNAVAILABLE`, final ones `FAILED_PRECONDITION`.
pub(crate) fn rejection_status(reason: &UpdateRejection) -> Status {
    if reason.is_retryable() {
        Status::unavailable(format!("update refused for now, retry later: {reason}"))
    } else {
        Status::failed_precondition(format!("update refused: {reason}"))
    }
}

/// The proposer's answer for `response`: what was taken, or the status that says why not and
/// whose fault it is.
pub(crate) fn answer(response: ApplyResponse) -> Result<Taken, Status> {
    let outcome = match response {
        ApplyResponse::Applied(outcome) => outcome,
        // The proposer encoded the command itself: the fault is this realm's, not the caller's.
        ApplyResponse::Refused(why) => return Err(Status::internal(format!("the log refused the command: {why}"))),
        ApplyResponse::Internal => {
            return Err(Status::internal("the log answered a command with a Raft-internal entry's response"))
        }
    };
    match outcome {
        Outcome::UpdateAccepted { epoch, .. } => Ok(Taken::Update { epoch, duplicate: false }),
        Outcome::UpdateDuplicate { epoch, .. } => Ok(Taken::Update { epoch, duplicate: true }),
        Outcome::UpdateRejected { reason, .. } => Err(rejection_status(&reason)),
        Outcome::EpochClosed(head) => Ok(Taken::EpochClosed { epoch: head.epoch }),
        Outcome::ReplicaSignatureStored { epoch, .. } | Outcome::VerifierSignatureStored { epoch } => {
            Ok(Taken::Signature { epoch, duplicate: false })
        }
        Outcome::Ignored(Ignored::DuplicateSignature { epoch }) => Ok(Taken::Signature { epoch, duplicate: true }),
        Outcome::ConfigChangeStaged { generation, .. } => Ok(Taken::ConfigChange { generation, duplicate: false }),
        Outcome::Ignored(Ignored::DuplicateConfigChange { generation }) => {
            Ok(Taken::ConfigChange { generation, duplicate: true })
        }
        Outcome::Ignored(why @ (Ignored::DelimiterForOtherEpoch { .. } | Ignored::PreviousEpochNotRatified { .. })) => {
            Err(Status::failed_precondition(format!("the log ignored the command: {why}")))
        }
        Outcome::Rejected(why) => Err(rejected_status(&why)),
        // A fresh command is never behind the applied position; seeing this is a bug here.
        Outcome::AlreadyApplied => Err(Status::internal("the log answered a new command as already applied")),
    }
}

fn rejected_status(why: &Rejected) -> Status {
    let message = format!("refused: {why}");
    match why {
        Rejected::UnknownReplica(_) | Rejected::UnknownVerifier(_) => Status::permission_denied(message),
        Rejected::BadSignature { .. } => Status::invalid_argument(message),
        Rejected::UnknownEpoch(_) => Status::not_found(message),
        // This replica's view may lag the one the caller acted on: retry.
        Rejected::EpochNotKeyserverRatified(_) => Status::unavailable(message),
        // The change's authors must fix it (sign it by a majority, follow the newest config).
        Rejected::ConfigChange(_) => Status::failed_precondition(message),
        // Another change is on its way into a head: retry after it.
        Rejected::ConfigChangePending { .. } => Status::unavailable(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::CommandRefused;
    use keyraft_core::PublicKey;
    use tonic::Code;

    fn code(response: ApplyResponse) -> Result<Taken, Code> {
        answer(response).map_err(|s| s.code())
    }

    fn key() -> PublicKey {
        keyraft_core::keys::public_key_of(&ed25519_dalek::SigningKey::from_bytes(&[7; 32]))
    }

    #[test]
    fn every_outcome_has_one_answer() {
        let applied = ApplyResponse::Applied;
        let id = [1u8; 32];
        let table: Vec<(ApplyResponse, Result<Taken, Code>)> = vec![
            (applied(Outcome::UpdateAccepted { id, epoch: 4 }), Ok(Taken::Update { epoch: 4, duplicate: false })),
            (applied(Outcome::UpdateDuplicate { id, epoch: 3 }), Ok(Taken::Update { epoch: 3, duplicate: true })),
            (
                applied(Outcome::UpdateRejected { id, reason: UpdateRejection::AlreadyUpdatedInEpoch { epoch: 4 } }),
                Err(Code::Unavailable),
            ),
            (
                applied(Outcome::UpdateRejected { id, reason: UpdateRejection::CurrentPolicyNotSatisfied }),
                Err(Code::FailedPrecondition),
            ),
            (
                applied(Outcome::ReplicaSignatureStored { epoch: 2, ratified: true }),
                Ok(Taken::Signature { epoch: 2, duplicate: false }),
            ),
            (
                applied(Outcome::VerifierSignatureStored { epoch: 2 }),
                Ok(Taken::Signature { epoch: 2, duplicate: false }),
            ),
            (
                applied(Outcome::Ignored(Ignored::DuplicateSignature { epoch: 2 })),
                Ok(Taken::Signature { epoch: 2, duplicate: true }),
            ),
            (
                applied(Outcome::Ignored(Ignored::DelimiterForOtherEpoch { open: 3, got: 2 })),
                Err(Code::FailedPrecondition),
            ),
            (applied(Outcome::Rejected(Rejected::UnknownVerifier(key()))), Err(Code::PermissionDenied)),
            (
                applied(Outcome::Rejected(Rejected::BadSignature { epoch: 1, signer: key() })),
                Err(Code::InvalidArgument),
            ),
            (applied(Outcome::Rejected(Rejected::UnknownEpoch(9))), Err(Code::NotFound)),
            (applied(Outcome::Rejected(Rejected::EpochNotKeyserverRatified(9))), Err(Code::Unavailable)),
            (applied(Outcome::AlreadyApplied), Err(Code::Internal)),
            (ApplyResponse::Refused(CommandRefused::TooManyCommands { max: 1024 }), Err(Code::Internal)),
            (ApplyResponse::Internal, Err(Code::Internal)),
        ];
        for (response, expected) in table {
            assert_eq!(code(response.clone()), expected, "{response:?}");
        }
    }

    #[test]
    fn messages_name_the_typed_reason() {
        let status = answer(ApplyResponse::Applied(Outcome::UpdateRejected {
            id: [0; 32],
            reason: UpdateRejection::VersionNotIncreasing { current: 4, got: 4 },
        }))
        .unwrap_err();
        assert_eq!(status.message(), "update refused: version 4 does not exceed the current version 4");
        let status =
            answer(ApplyResponse::Applied(Outcome::Rejected(Rejected::EpochNotKeyserverRatified(7)))).unwrap_err();
        assert!(status.message().contains("epoch 7 is not keyserver-ratified yet"), "{}", status.message());
    }

    #[test]
    fn responses_cross_the_network_unchanged() {
        // What a leader sends back to a follower that forwarded the command.
        let response = ApplyResponse::Applied(Outcome::Rejected(Rejected::BadSignature { epoch: 5, signer: key() }));
        let bytes = postcard::to_allocvec(&response).unwrap();
        assert_eq!(postcard::from_bytes::<ApplyResponse>(&bytes).unwrap(), response);
    }
}
