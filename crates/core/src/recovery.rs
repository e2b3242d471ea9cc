//! Recovery with a veto window (protocol version 2, docs/protocol.md section 6.3).
//!
//! An owner who lost the keys of an identity re-claims it through the realm's registration
//! method: a *recovery request* is an update (version `current + 1`, a new policy and
//! profile) signed so that the **new** policy is satisfied, plus a registration proof that
//! only the edge checks. The current policy need not sign: its keys are what was lost.
//!
//! A recovery does not take effect at once. The epoch that applies the request makes the
//! identity's leaf commit to both its entry and the [`PendingRecovery`]; it becomes the entry
//! only in the first later epoch whose head is issued at or after
//! [`PendingRecovery::effective_ms`] (the request epoch's issue time plus the realm's
//! window). Until then any ordinary update, signed under the current policy, cancels it (a
//! *veto*), and every lookup proof carries it, so an owner's watching device sees it.
//!
//! Every rule here runs in the edge, in the replicas' step, in third-party verifiers and in
//! clients checking a proof: [`check_recovery`], [`effective_ms`] and
//! [`PendingRecovery::matures_in`].

use crate::encoding::{put_u64, Canonical, DecodeError, Reader};
use crate::hash::{hash, label};
use crate::limits::PENDING_RECOVERY_BYTES_MAX;
use crate::types::{profile_commitment, Entry, RealmConfig};
use crate::update::{check_signatures, check_version, SignedEntry, Update, UpdateRejection};
use thiserror::Error;

/// A recovery waiting for its veto window to pass: what the leaf of its index commits to next
/// to the current entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRecovery {
    /// The recovery's entry, signed by its new policy.
    pub signed: SignedEntry,
    /// The epoch that applied the request.
    pub requested_epoch: u64,
    /// The issue time of `requested_epoch`'s head plus the realm's window: the first epoch
    /// issued at or after it (and after `requested_epoch`) makes the recovery the entry.
    pub effective_ms: u64,
}

impl PendingRecovery {
    /// Whether the recovery becomes the entry when epoch `epoch`, issued at `issue_time_ms`,
    /// closes: the one maturity rule of replicas, verifiers and clients.
    pub fn matures_in(&self, epoch: u64, issue_time_ms: u64) -> bool {
        epoch > self.requested_epoch && issue_time_ms >= self.effective_ms
    }
}

impl Canonical for PendingRecovery {
    const NAME: &'static str = "pending recovery";

    fn encode_into(&self, out: &mut Vec<u8>) {
        self.signed.encode_into(out);
        put_u64(out, self.requested_epoch);
        put_u64(out, self.effective_ms);
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let start = r.remaining();
        let signed = SignedEntry::decode_from(r)?;
        let requested_epoch = r.u64("pending recovery requested epoch")?;
        if requested_epoch == 0 {
            return Err(DecodeError::Invalid { what: "pending recovery requested epoch", why: "epochs start at 1" });
        }
        let effective_ms = r.u64("pending recovery effective time")?;
        let used = start - r.remaining();
        if used > PENDING_RECOVERY_BYTES_MAX {
            return Err(DecodeError::TooLong { what: "pending recovery", max: PENDING_RECOVERY_BYTES_MAX, got: used });
        }
        Ok(Self { signed, requested_epoch, effective_ms })
    }
}

/// The value of a leaf: the entry's hash, or, while a recovery is pending,
/// `H("keyraft/v2/entry-pending-recovery", Entry || PendingRecovery)`, so that no proof of the
/// entry can leave the pending recovery out. Leaves without one keep their version-1 value.
pub fn leaf_value(entry: &Entry, pending: Option<&PendingRecovery>) -> crate::Digest {
    leaf_value_of_bytes(&entry.encode(), pending)
}

/// [`leaf_value`] of an entry's canonical bytes.
pub fn leaf_value_of_bytes(entry: &[u8], pending: Option<&PendingRecovery>) -> crate::Digest {
    match pending {
        None => crate::types::entry_hash(entry),
        Some(p) => hash(label::ENTRY_PENDING_RECOVERY, &[entry, &p.encode()]),
    }
}

/// When a recovery requested in an epoch issued at `request_issue_time_ms` takes effect under
/// `config`: that time plus the window (saturating: a window reaching past the end of time
/// never ends). `None` where recovery is disabled.
pub fn effective_ms(config: &RealmConfig, request_issue_time_ms: u64) -> Option<u64> {
    let window = recovery_window_ms(config)?;
    Some(request_issue_time_ms.saturating_add(window))
}

/// The realm's veto window, or `None` where recovery is disabled (protocol version 1, or a
/// window of 0).
pub fn recovery_window_ms(config: &RealmConfig) -> Option<u64> {
    config.registration.as_ref().filter(|p| p.recovery_enabled()).map(|p| p.recovery_window_ms)
}

/// Why a recovery request is refused, beyond the signature rules it shares with updates.
#[derive(Debug, Clone, PartialEq, Eq, Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum RecoveryRejection {
    /// The realm does not allow recovery (protocol version 1, or a window of 0).
    #[error("this realm does not allow recovery (protocol version 1, or a recovery window of 0)")]
    RecoveryDisabled,
    /// There is nothing to recover: the identity has no entry (register it instead).
    #[error("the identity is not registered: there is nothing to recover (register it instead)")]
    RecoveryOfUnregistered,
    /// A recovery replaces the current entry with the next version, exactly.
    #[error("a recovery must have version {}, the current version {current} plus one; got {got}", current.saturating_add(1))]
    VersionNotNext {
        /// The current version.
        current: u64,
        /// The version submitted.
        got: u64,
    },
    /// The recovery's entry is for another index than the entry it replaces.
    #[error("the recovery's entry is at another index than the identity's")]
    IndexMismatch,
    /// Registrations of this identity are open (first come, first served): anyone could
    /// "recover" it, so no one may.
    #[error("identities in an open namespace cannot be recovered: anyone could claim them")]
    OpenNamespace,
}

/// Checks a recovery request's signed entry against the `current` entry at its index: the
/// realm allows recovery, the identity has an entry, the version is the next one, and every
/// signature is by a key of the new policy, verifies, and together they satisfy the new
/// policy. The current policy need not sign (its keys are what was lost).
pub fn check_recovery_entry(
    config: &RealmConfig,
    current: Option<&Entry>,
    new: &SignedEntry,
) -> Result<(), UpdateRejection> {
    if recovery_window_ms(config).is_none() {
        return Err(UpdateRejection::Recovery(RecoveryRejection::RecoveryDisabled));
    }
    let Some(current) = current else {
        return Err(UpdateRejection::Recovery(RecoveryRejection::RecoveryOfUnregistered));
    };
    // The version rule of every update (recovery exists from protocol version 2, where it is
    // +1), reported as a recovery's.
    check_version(config, Some(current), &new.entry).map_err(|_| {
        UpdateRejection::Recovery(RecoveryRejection::VersionNotNext {
            current: current.version,
            got: new.entry.version,
        })
    })?;
    if new.entry.index != current.index {
        return Err(UpdateRejection::Recovery(RecoveryRejection::IndexMismatch));
    }
    check_signatures(config, new, None, None)
}

/// [`check_recovery_entry`] for a complete request, with its profile.
pub fn check_recovery(config: &RealmConfig, current: Option<&Entry>, update: &Update) -> Result<(), UpdateRejection> {
    if update.signed.entry.profile_commitment != profile_commitment(&update.profile.encode()) {
        return Err(UpdateRejection::ProfileCommitmentMismatch);
    }
    check_recovery_entry(config, current, &update.signed)
}

/// Why a pending recovery carried by a proof about epoch `head` cannot be what the replicas
/// hold (the client's check, docs/protocol.md section 5.1 check `recovery`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PendingRecoveryError {
    /// Its entry breaks the recovery rules against the entry it would replace.
    #[error("the pending recovery breaks the recovery rules: {0}")]
    Rules(UpdateRejection),
    /// It was requested in an epoch after the head's.
    #[error("the pending recovery was requested in epoch {requested}, after the proof's epoch {head}")]
    RequestedLater {
        /// Its requested epoch.
        requested: u64,
        /// The head's epoch.
        head: u64,
    },
    /// Requested in the head's own epoch, its effective time is not that head's issue time
    /// plus the realm's window.
    #[error("the pending recovery takes effect at {got} ms, but its epoch's head says {expected} ms")]
    WrongEffectiveTime {
        /// Issue time plus window.
        expected: u64,
        /// What it says.
        got: u64,
    },
    /// The head's epoch is issued late enough for it to have become the entry: the replicas
    /// kept a matured recovery pending.
    #[error("the recovery took effect at {effective_ms} ms, before the head of epoch {epoch} ({issue_time_ms} ms), yet is still pending")]
    Overdue {
        /// When it took effect.
        effective_ms: u64,
        /// The head's epoch.
        epoch: u64,
        /// The head's issue time.
        issue_time_ms: u64,
    },
}

/// Checks what a client can of a pending recovery shown next to `current` in the tree of
/// `head`: the recovery rules, that it was requested by then, its effective time when it was
/// requested in that very epoch, and that it has not matured (it would be the entry).
pub fn check_pending_in_head(
    config: &RealmConfig,
    head: &crate::types::EpochHead,
    current: &Entry,
    pending: &PendingRecovery,
) -> Result<(), PendingRecoveryError> {
    check_recovery_entry(config, Some(current), &pending.signed).map_err(PendingRecoveryError::Rules)?;
    if pending.requested_epoch > head.epoch {
        return Err(PendingRecoveryError::RequestedLater { requested: pending.requested_epoch, head: head.epoch });
    }
    if pending.requested_epoch == head.epoch {
        // check_recovery_entry refused a realm without recovery, so there is a window.
        let expected = effective_ms(config, head.issue_time_ms).unwrap_or(u64::MAX);
        if pending.effective_ms != expected {
            return Err(PendingRecoveryError::WrongEffectiveTime { expected, got: pending.effective_ms });
        }
    }
    if pending.matures_in(head.epoch, head.issue_time_ms) {
        return Err(PendingRecoveryError::Overdue {
            effective_ms: pending.effective_ms,
            epoch: head.epoch,
            issue_time_ms: head.issue_time_ms,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::encoding::decode_canonical;
    use crate::keys::public_key_of;
    use crate::registration::RegistrationPolicy;
    use crate::types::Index;
    use crate::update::sign_entry;
    use crate::vrf::VrfSecretKey;
    use crate::Policy;
    use ed25519_dalek::SigningKey;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn config(window_ms: u64) -> RealmConfig {
        let vrf = VrfSecretKey::from_seed(&[4; 32]).public_key();
        RealmConfig::new("example.org", vrf, vec![public_key_of(&key(1))], vec![])
            .unwrap()
            .with_registration(RegistrationPolicy { recovery_window_ms: window_ms, ..RegistrationPolicy::open() })
            .unwrap()
    }

    fn entry(version: u64, owner: &SigningKey) -> Entry {
        Entry {
            index: Index([7; 32]),
            version,
            update_policy: Policy::single(public_key_of(owner)),
            profile_commitment: [9; 32],
        }
    }

    fn signed(version: u64, owner: &SigningKey, signers: &[&SigningKey]) -> SignedEntry {
        let entry = entry(version, owner);
        let signatures = sign_entry("example.org", &entry, signers);
        SignedEntry { entry, signatures }
    }

    #[test]
    fn the_recovery_rules_in_order() {
        let (lost, new) = (key(2), key(3));
        let current = entry(4, &lost);
        let good = signed(5, &new, &[&new]);
        let c = config(1_000);
        assert_eq!(check_recovery_entry(&c, Some(&current), &good), Ok(()));
        let recovery = |r| Err(UpdateRejection::Recovery(r));
        assert_eq!(
            check_recovery_entry(&config(0), Some(&current), &good),
            recovery(RecoveryRejection::RecoveryDisabled)
        );
        let mut v1 = c.clone();
        v1.registration = None;
        assert_eq!(check_recovery_entry(&v1, Some(&current), &good), recovery(RecoveryRejection::RecoveryDisabled));
        assert_eq!(check_recovery_entry(&c, None, &good), recovery(RecoveryRejection::RecoveryOfUnregistered));
        for version in [4, 6, u64::MAX] {
            assert_eq!(
                check_recovery_entry(&c, Some(&current), &signed(version, &new, &[&new])),
                recovery(RecoveryRejection::VersionNotNext { current: 4, got: version })
            );
        }
        let at_max = entry(u64::MAX, &lost);
        assert!(matches!(
            check_recovery_entry(&c, Some(&at_max), &good),
            Err(UpdateRejection::Recovery(RecoveryRejection::VersionNotNext { .. }))
        ));
        let mut elsewhere = good.clone();
        elsewhere.entry.index = Index([8; 32]);
        assert_eq!(check_recovery_entry(&c, Some(&current), &elsewhere), recovery(RecoveryRejection::IndexMismatch));
        // The lost key is not in the new policy: it may not sign, and cannot help.
        assert!(matches!(
            check_recovery_entry(&c, Some(&current), &signed(5, &new, &[&lost, &new])),
            Err(UpdateRejection::UnknownSigner { .. })
        ));
        assert_eq!(
            check_recovery_entry(&c, Some(&current), &signed(5, &new, &[])),
            Err(UpdateRejection::NewPolicyNotSatisfied)
        );
        let mut forged = good.clone();
        forged.signatures[0].signature.0[0] ^= 1;
        assert!(matches!(check_recovery_entry(&c, Some(&current), &forged), Err(UpdateRejection::BadSignature { .. })));
    }

    #[test]
    fn pending_records_round_trip_and_commit_to_every_byte() {
        let new = key(3);
        let pending = PendingRecovery { signed: signed(1, &new, &[&new]), requested_epoch: 9, effective_ms: 12_345 };
        let bytes = pending.encode();
        assert_eq!(decode_canonical::<PendingRecovery>(&bytes).unwrap(), pending);
        for cut in 0..bytes.len() {
            assert!(decode_canonical::<PendingRecovery>(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut zero = pending.clone();
        zero.requested_epoch = 0;
        assert!(decode_canonical::<PendingRecovery>(&zero.encode()).is_err(), "epochs start at 1");
        let current = entry(0, &key(2));
        let leaf = leaf_value(&current, Some(&pending));
        assert_ne!(leaf, current.hash(), "a pending recovery changes the leaf");
        assert_eq!(leaf_value(&current, None), current.hash(), "without one the leaf is the entry's hash");
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 1;
            if let Ok(other) = decode_canonical::<PendingRecovery>(&flipped) {
                assert_ne!(leaf_value(&current, Some(&other)), leaf, "byte {i}");
            }
        }
    }

    #[test]
    fn a_recovery_matures_in_a_later_epoch_issued_at_or_after_its_time() {
        let c = config(1_000);
        assert_eq!(effective_ms(&c, 5_000), Some(6_000));
        assert_eq!(effective_ms(&c, u64::MAX - 10), Some(u64::MAX), "saturates");
        assert_eq!(effective_ms(&config(0), 5_000), None);
        let p = PendingRecovery { signed: signed(1, &key(3), &[&key(3)]), requested_epoch: 4, effective_ms: 6_000 };
        assert!(!p.matures_in(5, 5_999));
        assert!(p.matures_in(5, 6_000));
        assert!(!p.matures_in(4, 6_000), "never in the epoch that requested it");
    }
}
