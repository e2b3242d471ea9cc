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

use crate::error::Error;
use email::{EmailCodeError, EmailCodes, EmailConfig, MailError, Mailer};
use keyraft_core::clock::Clock;
use keyraft_core::identity::canonical_user_id;
use keyraft_core::registration::{verify_attestation, Attestation, Method, NamespaceRule, RegistrationPolicy};
use keyraft_core::{decode_canonical, RealmConfig, Verified};
use keyraft_proto::pb::registration::Proof;
use oidc::{Expected, OidcIssuerConfig, OidcIssuers, OidcRule, VerifiedIdToken};
use std::sync::Arc;
use tonic::Status;

/// A replica's settings for the registration methods that need more than the realm file:
/// `[registration]` in its configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationSettings {
    /// The `email` method: the MAC key the realm's replicas share and how codes are sent.
    /// Required when the realm allows `email` anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailConfig>,
    /// The `oidc` method: where each issuer's keys come from (`[[registration.oidc]]`), one
    /// entry per issuer the realm names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oidc: Vec<OidcIssuerConfig>,
}

impl RegistrationSettings {
    /// Resolves relative paths against the configuration file's directory.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        if let Some(email) = &mut self.email {
            email.resolve_paths(base);
        }
        for issuer in &mut self.oidc {
            if let Some(f) = &issuer.jwks_file {
                if f.is_relative() {
                    issuer.jwks_file = Some(base.join(f));
                }
            }
        }
    }
}

/// Why an identity may be registered: what passed.
#[derive(Debug)]
pub enum Admitted {
    /// The realm is of protocol version 1: anyone may register anything.
    Version1,
    /// The identity's namespace is open.
    Open,
    /// A registrar attested it.
    Registrar(Box<Verified<Attestation>>),
    /// An ID token from an issuer the namespace names.
    Oidc(Box<VerifiedIdToken>),
    /// A code mailed to the address.
    Email(Box<email::VerifiedEmailCode>),
}

impl Admitted {
    /// The method's name, for logs and metrics.
    pub fn method(&self) -> &'static str {
        match self {
            Self::Version1 => "version1",
            Self::Open => "open",
            Self::Registrar(_) => "registrar",
            Self::Oidc(_) => "oidc",
            Self::Email(_) => "email",
        }
    }
}

/// A policy in force may name e-mail codes although this replica started without their
/// settings (a configuration change added them): the operator's to fix, not the caller's.
fn email_unconfigured() -> Status {
    Status::unavailable(
        "the realm's registration policy allows e-mail codes, but this replica has no [registration.email] \
         settings (its operator adds them and restarts it); another replica may have them",
    )
}

/// A replica's registration checks: its methods' settings (e-mail relay, OIDC issuers'
/// keys), applied under the registration policy of the configuration in force, which each
/// check is given (a configuration change may replace the policy while the replica runs).
pub struct Registrations {
    realm: String,
    clock: Arc<dyn Clock>,
    /// How far apart the replica's and a proof issuer's clocks may be (the realm file's
    /// `clock_skew_ms`).
    skew_ms: u64,
    email: Option<(EmailCodes, Mailer)>,
    oidc: OidcIssuers,
}

impl std::fmt::Debug for Registrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrations")
            .field("realm", &self.realm)
            .field("email", &self.email.as_ref().map(|(_, m)| m.describe()))
            .finish_non_exhaustive()
    }
}

impl Registrations {
    /// The checks of `realm` with this replica's `settings`, judged by `clock` with `skew_ms`
    /// of tolerance. Every method the realm's policy names must be usable here: a replica
    /// that could not check a method the realm promises refuses to start.
    pub async fn open(
        realm: &RealmConfig,
        settings: &RegistrationSettings,
        clock: Arc<dyn Clock>,
        skew_ms: u64,
    ) -> Result<Self, Error> {
        let policy = realm.registration.clone();
        let methods: Vec<&Method> = policy.iter().flat_map(|p| p.rules.iter().flat_map(|r| r.methods.iter())).collect();
        let email = match &settings.email {
            Some(config) => {
                let codes = config.codes(&realm.realm).map_err(|e| Error::config_because("registration.email", e))?;
                let mailer = config.mailer().map_err(|e| Error::config_because("registration.email", e))?;
                tracing::info!(mailer = %mailer.describe(), "registration by e-mail code");
                Some((codes, mailer))
            }
            None if methods.iter().any(|m| matches!(m, Method::Email)) => {
                return Err(Error::config(
                    "the realm allows registration by e-mail code, but [registration.email] is not configured \
                     (the MAC key the replicas share, and an SMTP relay)",
                ))
            }
            None => None,
        };
        for m in &methods {
            if let Method::Oidc { issuer, .. } = m {
                if !settings.oidc.iter().any(|c| &c.issuer == issuer) {
                    return Err(Error::config(format!(
                        "the realm allows registration by ID tokens of issuer {issuer:?}, but no [[registration.oidc]] \
                         entry says where its keys are (jwks_file or jwks_url)"
                    )));
                }
            }
        }
        let oidc = OidcIssuers::open(&settings.oidc, clock.now_ms())
            .await
            .map_err(|e| Error::config_because("registration.oidc", e))?;
        match &policy {
            None => tracing::warn!(
                realm = %realm.realm,
                "protocol version 1: user ids are taken as typed and anyone may register any identity"
            ),
            Some(p) => {
                for rule in p.rules.iter().filter(|r| r.is_open()) {
                    tracing::info!(namespace = %rule.namespace, "registration is open (first come, first served) here");
                }
            }
        }
        Ok(Self { realm: realm.realm.clone(), clock, skew_ms, email, oidc })
    }

    /// Checks that `user_id` (canonical), which has no entry yet, may be registered with the
    /// update `update_id` under `policy` (the configuration in force's; none under protocol
    /// version 1), given the request's `proof`.
    pub async fn check(
        &self,
        policy: Option<&RegistrationPolicy>,
        user_id: &str,
        update_id: &[u8; 32],
        proof: Option<&Proof>,
    ) -> Result<Admitted, Status> {
        let Some(policy) = policy else { return Ok(Admitted::Version1) };
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
        let now_ms = self.clock.now_ms();
        match proof {
            Proof::RegistrarAttestation(bytes) => {
                require(rule, |m| matches!(m, Method::Registrar), "a registrar attestation")?;
                let attestation: Attestation = decode_canonical(bytes).map_err(|e| {
                    Status::invalid_argument(format!("registration.registrar_attestation: malformed: {e}"))
                })?;
                let verified =
                    verify_attestation(&self.realm, policy, &attestation, user_id, update_id, now_ms, self.skew_ms)
                        .map_err(|e| Status::permission_denied(format!("registration refused: {e}")))?;
                Ok(Admitted::Registrar(Box::new(verified)))
            }
            Proof::OidcIdToken(token) => {
                require(rule, |m| matches!(m, Method::Oidc { .. }), "an OIDC ID token")?;
                let expected = Expected { user_id, local_part_rule: policy.local_part_rule, update_id };
                // The namespace may name several issuers: the token is checked against each
                // (its `iss` picks one in practice); the error of the last is reported.
                let mut last = None;
                for m in &rule.methods {
                    if let Method::Oidc { issuer, audience, claim } = m {
                        let oidc_rule =
                            OidcRule { issuer: issuer.clone(), audience: audience.clone(), claim: claim.clone() };
                        match self.oidc.verify(token, &oidc_rule, &expected, now_ms, self.skew_ms).await {
                            Ok(verified) => return Ok(Admitted::Oidc(Box::new(verified))),
                            Err(e) => last = Some(e),
                        }
                    }
                }
                let e = last.ok_or_else(|| Status::internal("an oidc namespace without an oidc method"))?;
                Err(if e.is_malformed() {
                    Status::invalid_argument(format!("registration.oidc_id_token: {e}"))
                } else {
                    Status::permission_denied(format!("registration refused: ID token: {e}"))
                })
            }
            Proof::EmailCode(code) => {
                require(rule, |m| matches!(m, Method::Email), "an e-mail code")?;
                let (codes, _) = self.email.as_ref().ok_or_else(email_unconfigured)?;
                let id = canonical_user_id(user_id, policy.local_part_rule)
                    .map_err(|e| Status::invalid_argument(format!("user_id: {e}")))?;
                match codes.check(code, &id, update_id, now_ms) {
                    Ok(verified) => Ok(Admitted::Email(Box::new(verified))),
                    Err(e @ EmailCodeError::Malformed(_)) => {
                        Err(Status::invalid_argument(format!("registration.email_code: {e}")))
                    }
                    Err(e) => Err(Status::permission_denied(format!("registration refused: e-mail code: {e}"))),
                }
            }
        }
    }

    /// Checks that `user_id` (canonical, with an entry) may be recovered with the update
    /// `update_id`: the proof a first registration of it would need. Identities of an `open`
    /// namespace cannot be recovered (anyone could claim them), nor any under protocol
    /// version 1.
    pub async fn check_recovery(
        &self,
        policy: Option<&RegistrationPolicy>,
        user_id: &str,
        update_id: &[u8; 32],
        proof: Option<&Proof>,
    ) -> Result<Admitted, Status> {
        let Some(policy) = policy else {
            return Err(Status::failed_precondition(format!(
                "realm {:?} is of protocol version 1: it has no registration method to recover an identity with",
                self.realm
            )));
        };
        if policy.rule_for(user_id).is_some_and(NamespaceRule::is_open) {
            return Err(Status::permission_denied(format!(
                "recovery refused: {} ({user_id:?})",
                keyraft_core::recovery::RecoveryRejection::OpenNamespace
            )));
        }
        self.check(Some(policy), user_id, update_id, proof).await
    }

    /// Mails a code registering `user_id` (canonical, with no entry yet) with the update
    /// `update_id` under `policy` (the configuration in force's): the address and the code's
    /// expiry.
    pub async fn send_email_code(
        &self,
        policy: Option<&RegistrationPolicy>,
        user_id: &str,
        update_id: &[u8; 32],
    ) -> Result<(String, u64), Status> {
        let Some(policy) = policy else {
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
        let (codes, mailer) = self.email.as_ref().ok_or_else(email_unconfigured)?;
        let id = canonical_user_id(user_id, policy.local_part_rule)
            .map_err(|e| Status::invalid_argument(format!("user_id: {e}")))?;
        let code = codes.issue(&id, update_id, self.clock.now_ms());
        mailer.send_code(&self.realm, &id, &code).await.map_err(|e| match e {
            MailError::NotAnAddress { .. } => Status::invalid_argument(e.to_string()),
            MailError::Relay { .. } => Status::unavailable(format!("{e}; retry later")),
            other => Status::internal(other.to_string()),
        })?;
        Ok((id.into_string(), code.expires_at_ms()))
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
