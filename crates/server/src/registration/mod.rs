//! Registration methods: who may claim an identity that has no entry yet.
//!
//! The realm configuration names, for each namespace (a glob on the canonical user id), the
//! methods that may register a new identity there (docs/protocol.md section 6). Each method
//! is checked here, at every replica's edge, before the update is proposed; the proof of
//! registration is not kept, so verifiers cannot check it (see the trust model in
//! docs/protocol.md).
//!
//! The checks for an update of an identity with no entry, in order:
//! 1. under protocol version 1 nothing is checked (first come, first served);
//! 2. the first namespace rule matching the canonical id decides; none matching refuses;
//! 3. a namespace allowing `open` admits any registration (a proof sent along is ignored);
//! 4. otherwise the request must carry a proof of a method the namespace allows, and it must
//!    pass that method's check against this exact update (its update id).

pub mod email;
pub mod oidc;

use keyraft_core::clock::Clock;
use keyraft_core::registration::{verify_attestation, Attestation, Method, NamespaceRule, RegistrationPolicy};
use keyraft_core::{decode_canonical, RealmConfig, Verified};
use keyraft_proto::pb::registration::Proof;
use std::sync::Arc;
use tonic::Status;

/// Why an identity may be registered: what passed.
#[derive(Debug)]
pub enum Admitted {
    /// The realm is of protocol version 1: anyone may register anything.
    Version1,
    /// The identity's namespace is open.
    Open,
    /// A registrar attested it.
    Registrar(Box<Verified<Attestation>>),
}

impl Admitted {
    /// The method's name, for logs and metrics.
    pub fn method(&self) -> &'static str {
        match self {
            Self::Version1 => "version1",
            Self::Open => "open",
            Self::Registrar(_) => "registrar",
        }
    }
}

/// A replica's registration checks.
#[derive(Debug)]
pub struct Registrations {
    realm: String,
    policy: Option<RegistrationPolicy>,
    clock: Arc<dyn Clock>,
    /// How far apart the replica's and a proof issuer's clocks may be (the realm file's
    /// `clock_skew_ms`).
    skew_ms: u64,
}

impl Registrations {
    /// The checks of `realm`, judged by `clock` with `skew_ms` of tolerance.
    pub fn new(realm: &RealmConfig, clock: Arc<dyn Clock>, skew_ms: u64) -> Self {
        Self { realm: realm.realm.clone(), policy: realm.registration.clone(), clock, skew_ms }
    }

    /// Checks that `user_id` (canonical), which has no entry yet, may be registered with the
    /// update `update_id`, given the request's `proof`.
    pub fn check(&self, user_id: &str, update_id: &[u8; 32], proof: Option<&Proof>) -> Result<Admitted, Status> {
        let Some(policy) = &self.policy else { return Ok(Admitted::Version1) };
        let Some(rule) = policy.rule_for(user_id) else {
            return Err(Status::permission_denied(format!(
                "registration of {user_id:?} is closed: no namespace of realm {:?} admits it",
                self.realm
            )));
        };
        if rule.is_open() {
            return Ok(Admitted::Open);
        }
        let Some(proof) = proof else {
            return Err(Status::permission_denied(format!(
                "registering {user_id:?} needs a proof of the right to it (namespace {:?} allows: {}); \
                 the request carries none",
                rule.namespace,
                allowed(rule)
            )));
        };
        match proof {
            Proof::RegistrarAttestation(bytes) => {
                require(rule, |m| matches!(m, Method::Registrar), "a registrar attestation")?;
                let attestation: Attestation = decode_canonical(bytes).map_err(|e| {
                    Status::invalid_argument(format!("registration.registrar_attestation: malformed: {e}"))
                })?;
                let verified = verify_attestation(
                    &self.realm,
                    policy,
                    &attestation,
                    user_id,
                    update_id,
                    self.clock.now_ms(),
                    self.skew_ms,
                )
                .map_err(|e| Status::permission_denied(format!("registration refused: {e}")))?;
                Ok(Admitted::Registrar(Box::new(verified)))
            }
            Proof::OidcIdToken(_) => {
                require(rule, |m| matches!(m, Method::Oidc { .. }), "an OIDC ID token")?;
                Err(Status::failed_precondition("this replica cannot check OIDC ID tokens"))
            }
            Proof::EmailCode(_) => {
                require(rule, |m| matches!(m, Method::Email), "an e-mail code")?;
                Err(Status::failed_precondition("this replica cannot check e-mail codes"))
            }
        }
    }
}

impl Registrations {
    /// Mails a code registering `user_id` (canonical, with no entry yet) with the update
    /// `update_id`: the address and the code's expiry.
    pub async fn send_email_code(&self, user_id: &str, update_id: &[u8; 32]) -> Result<(String, u64), Status> {
        let Some(policy) = &self.policy else {
            return Err(Status::failed_precondition(format!(
                "realm {:?} is of protocol version 1: registration needs no code",
                self.realm
            )));
        };
        let rule = policy.rule_for(user_id).ok_or_else(|| {
            Status::failed_precondition(format!(
                "registration of {user_id:?} is closed: no namespace of realm {:?} admits it",
                self.realm
            ))
        })?;
        if !rule.methods.contains(&Method::Email) {
            return Err(Status::failed_precondition(format!(
                "namespace {:?} does not register identities by e-mail code (it allows: {})",
                rule.namespace,
                allowed(rule)
            )));
        }
        let _ = update_id;
        Err(Status::failed_precondition("this replica cannot send e-mail codes"))
    }
}

/// The methods a rule allows, for messages.
fn allowed(rule: &NamespaceRule) -> String {
    rule.methods.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn require(rule: &NamespaceRule, is: impl Fn(&Method) -> bool, what: &str) -> Result<(), Status> {
    if rule.methods.iter().any(is) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "the request proves the registration with {what}, which namespace {:?} does not accept (it allows: {})",
            rule.namespace,
            allowed(rule)
        )))
    }
}
