//! Updates: an entry built on the identity's verified current entry, signed by its owners,
//! submitted (and resubmitted, the same bytes, while the answer is "try again"), optionally
//! waited for until this client's quorum ratified its epoch.

use crate::client::CALL_TIMEOUT_MS;
use crate::{public_key, sign_entry, Client, ClientError, LookupAnswer, LookupOptions, UpdateStatus};
use ed25519_dalek::SigningKey;
use keyraft_core::registration::Attestation;
use keyraft_core::{Canonical, Entry, Policy, Profile, SignedEntry, Update};
use keyraft_proto::pb::{self, SendEmailCodeRequest, UpdateRequest, UpdateResponse};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long an update waiting for the quorum lets the server wait, in milliseconds.
pub const QUORUM_WAIT_MS: u32 = 10_000;
/// Bytes of random nonce in profiles this client creates.
pub const PROFILE_NONCE_BYTES: usize = 32;
/// How long an update answered "try again" is resubmitted, the same bytes each time (an update
/// is idempotent: one applied meanwhile is answered as a duplicate), in milliseconds.
pub const UPDATE_RETRY_MS: u64 = 10_000;
/// First delay between two submissions of an update, in milliseconds (doubled each time).
const UPDATE_RETRY_DELAY_MS: u64 = 250;
/// Longest delay between two submissions of an update, in milliseconds.
const UPDATE_RETRY_DELAY_MAX_MS: u64 = 2_000;

/// The outcome of an update.
#[derive(Debug, Clone)]
pub struct UpdateOutcome {
    /// The update's id (for `GetUpdateStatus`).
    pub update_id: Vec<u8>,
    /// The epoch it appears in.
    pub epoch: u64,
    /// True when this exact update had already been applied.
    pub duplicate: bool,
    /// With [`UpdateBuilder::wait_for_quorum`]: the verified proof that the epoch holds the
    /// new entry, ratified by this client's quorum.
    pub proof: Option<LookupAnswer>,
    /// The profile keys of the entry the update replaced (empty for a registration).
    pub previous_keys: BTreeMap<String, Vec<u8>>,
    /// The profile keys the update published.
    pub keys: BTreeMap<String, Vec<u8>>,
}

/// The proof, sent with a registration, of the right to register the identity (in a realm of
/// protocol version 2 whose policy does not make its namespace open). Each is bound to one
/// update by its id: build the update first ([`UpdateBuilder::prepare`]), then get the proof
/// for [`PreparedUpdate::update_id`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationProof {
    /// An attestation signed by one of the realm's registrar keys.
    Attestation(Box<Attestation>),
    /// An OpenID Connect ID token whose `nonce` is [`PreparedUpdate::oidc_nonce`].
    OidcIdToken(String),
    /// The code a replica mailed ([`Client::send_email_code`]).
    EmailCode(String),
}

impl RegistrationProof {
    fn to_proto(&self) -> pb::Registration {
        use pb::registration::Proof;
        let proof = match self {
            Self::Attestation(a) => Proof::RegistrarAttestation(a.encode()),
            Self::OidcIdToken(t) => Proof::OidcIdToken(t.clone()),
            Self::EmailCode(c) => Proof::EmailCode(c.clone()),
        };
        pb::Registration { proof: Some(proof) }
    }
}

/// A signed update built on the identity's verified current entry and not sent yet: what a
/// registration proof is made for. It can be saved ([`Self::to_json`]) and sent later, by
/// this process or another, with [`Client::send_prepared`]; it stays valid while the
/// identity's entry does not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedUpdate {
    /// The realm.
    pub realm: String,
    /// The canonical user id.
    pub user_id: String,
    /// The signed update.
    pub update: Update,
    /// The profile keys of the entry it replaces (empty for a registration).
    pub previous_keys: BTreeMap<String, Vec<u8>>,
    /// A recovery request (docs/protocol.md section 6.3): signed by the new policy only, sent
    /// with a registration proof, the entry only after the realm's veto window.
    pub recovery: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PreparedFile {
    realm: String,
    user_id: String,
    update_id: String,
    oidc_nonce: String,
    update: String,
    previous_keys: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    recovery: bool,
}

impl PreparedUpdate {
    /// The update's id, which registration proofs bind.
    pub fn update_id(&self) -> [u8; 32] {
        self.update.id()
    }

    /// The `nonce` an OIDC ID token for this registration must carry: the update id in
    /// base64url without padding (docs/protocol.md section 6.1).
    pub fn oidc_nonce(&self) -> String {
        keyraft_core::registration::oidc_nonce(&self.update_id())
    }

    /// JSON for a file (it holds no secret: the update is signed, the keys are public).
    pub fn to_json(&self) -> String {
        let file = PreparedFile {
            realm: self.realm.clone(),
            user_id: self.user_id.clone(),
            update_id: hex::encode(self.update_id()),
            oidc_nonce: self.oidc_nonce(),
            update: hex::encode(self.update.encode()),
            previous_keys: self.previous_keys.iter().map(|(k, v)| (k.clone(), hex::encode(v))).collect(),
            recovery: self.recovery,
        };
        serde_json::to_string_pretty(&file).unwrap_or_default()
    }

    /// Reads [`Self::to_json`]'s output; the update must decode and its id match.
    pub fn from_json(json: &str) -> Result<Self, ClientError> {
        let bad = |why: String| ClientError::Invalid(format!("prepared update: {why}"));
        let file: PreparedFile = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        let bytes = hex::decode(&file.update).map_err(|e| bad(format!("update: {e}")))?;
        let update: Update = keyraft_core::decode_canonical(&bytes).map_err(|e| bad(format!("update: {e}")))?;
        if hex::encode(update.id()) != file.update_id {
            return Err(bad(format!("update_id {} is not the id of its update", file.update_id)));
        }
        let mut previous_keys = BTreeMap::new();
        for (k, v) in file.previous_keys {
            previous_keys.insert(k.clone(), hex::decode(v).map_err(|e| bad(format!("previous_keys.{k}: {e}")))?);
        }
        Ok(Self { realm: file.realm, user_id: file.user_id, update, previous_keys, recovery: file.recovery })
    }
}

/// How an update's profile keys are made.
#[derive(Debug, Clone)]
pub enum ProfileKeys {
    /// Exactly these keys: the current profile's are dropped.
    Replace(BTreeMap<String, Vec<u8>>),
    /// The current profile's keys (none for a registration), with `set` added or changed and
    /// `unset` removed.
    Edit {
        /// Keys to add or change.
        set: BTreeMap<String, Vec<u8>>,
        /// Keys to remove: each must be in the current profile and not in `set`.
        unset: BTreeSet<String>,
    },
}

impl Default for ProfileKeys {
    fn default() -> Self {
        Self::Replace(BTreeMap::new())
    }
}

impl ProfileKeys {
    /// The keys this makes from `current`. Unsetting a key `current` lacks, or setting and
    /// unsetting the same key, is the caller's mistake.
    pub fn apply(self, current: &BTreeMap<String, Vec<u8>>) -> Result<BTreeMap<String, Vec<u8>>, ClientError> {
        match self {
            Self::Replace(keys) => Ok(keys),
            Self::Edit { set, unset } => {
                let mut keys = current.clone();
                for app in &unset {
                    if set.contains_key(app) {
                        return Err(ClientError::Invalid(format!("profile key {app:?} is both set and unset")));
                    }
                    if keys.remove(app).is_none() {
                        let held: Vec<&str> = current.keys().map(String::as_str).collect();
                        return Err(ClientError::Invalid(format!(
                            "cannot unset profile key {app:?}: the current profile does not hold it (it holds: {})",
                            if held.is_empty() { "nothing".to_owned() } else { held.join(", ") }
                        )));
                    }
                }
                keys.extend(set);
                Ok(keys)
            }
        }
    }
}

/// A profile holding `keys` with a fresh random nonce.
pub fn new_profile(keys: BTreeMap<String, Vec<u8>>) -> Profile {
    let mut nonce = vec![0u8; PROFILE_NONCE_BYTES];
    rand::Rng::fill(&mut rand::thread_rng(), nonce.as_mut_slice());
    Profile { nonce, keys }
}

impl Client {
    /// Submits a signed update. With `verifier_threshold`, waits for that quorum and returns
    /// the raw response (its proof unverified: [`UpdateBuilder::send`] verifies it).
    pub async fn submit(
        &self,
        user_id: &str,
        update: &Update,
        registration: Option<&RegistrationProof>,
        verifier_threshold: Option<u32>,
        wait_ms: u32,
    ) -> Result<UpdateResponse, ClientError> {
        self.submit_as(user_id, update, registration, false, verifier_threshold, wait_ms).await
    }

    /// [`Client::submit`], as a recovery request when `recovery`.
    async fn submit_as(
        &self,
        user_id: &str,
        update: &Update,
        registration: Option<&RegistrationProof>,
        recovery: bool,
        verifier_threshold: Option<u32>,
        wait_ms: u32,
    ) -> Result<UpdateResponse, ClientError> {
        let request = UpdateRequest {
            user_id: user_id.to_owned(),
            update: update.encode(),
            verifier_threshold,
            wait_ms,
            registration: registration.map(RegistrationProof::to_proto),
            recovery,
        };
        let timeout = Duration::from_millis(CALL_TIMEOUT_MS + u64::from(wait_ms));
        self.each(
            |mut c| {
                let mut r = tonic::Request::new(request.clone());
                r.set_timeout(timeout);
                async move { c.update(r).await.map(tonic::Response::into_inner) }
            },
            Ok,
        )
        .await
    }

    /// Asks a replica to mail a code registering `prepared`'s identity (an e-mail address)
    /// with exactly that update: the address it was sent to, and when the code expires (ms
    /// since the Unix epoch). The code, typed back, goes in [`RegistrationProof::EmailCode`].
    pub async fn send_email_code(&self, prepared: &PreparedUpdate) -> Result<(String, u64), ClientError> {
        let request = SendEmailCodeRequest {
            user_id: prepared.user_id.clone(),
            update_id: prepared.update.id().to_vec(),
            recovery: prepared.recovery,
        };
        let response = self
            .each(
                |mut c| {
                    let mut r = tonic::Request::new(request.clone());
                    r.set_timeout(Duration::from_millis(CALL_TIMEOUT_MS));
                    async move { c.send_email_code(r).await.map(tonic::Response::into_inner) }
                },
                Ok,
            )
            .await?;
        Ok((response.address, response.expires_ms))
    }

    /// Registers `user_id` (version 0), owned by `owner` unless [`UpdateBuilder::policy`] says
    /// otherwise.
    pub fn registration(&self, user_id: &str, owner: &SigningKey) -> UpdateBuilder<'_> {
        UpdateBuilder::new(self, user_id, true).signer(owner)
    }

    /// Changes `user_id`'s entry (next version), keeping its policy unless told otherwise.
    pub fn change(&self, user_id: &str) -> UpdateBuilder<'_> {
        UpdateBuilder::new(self, user_id, false)
    }

    /// Recovers `user_id`, whose keys are lost, for `new_owner` (docs/protocol.md section
    /// 6.3): the next version, owned by `new_owner` unless [`UpdateBuilder::policy`] says
    /// otherwise, signed by the new policy only. Send it with the registration proof the
    /// identity's namespace asks for ([`UpdateBuilder::prepare`], then
    /// [`Client::send_prepared`]); it becomes the entry after the realm's veto window unless
    /// the current owner updates the identity first.
    pub fn recovery(&self, user_id: &str, new_owner: &SigningKey) -> UpdateBuilder<'_> {
        let mut b = UpdateBuilder::new(self, user_id, false).signer(new_owner);
        b.recovery = true;
        b
    }

    /// Requests the recovery of `user_id` for `new_owner`, publishing `keys`, with the
    /// registration `proof` (made for this exact update: see [`Client::recovery`] to prepare
    /// it first).
    pub async fn recover(
        &self,
        user_id: &str,
        new_owner: &SigningKey,
        keys: BTreeMap<String, Vec<u8>>,
        proof: Option<RegistrationProof>,
    ) -> Result<UpdateOutcome, ClientError> {
        let mut b = self.recovery(user_id, new_owner).keys(keys);
        if let Some(p) = proof {
            b = b.registration_proof(p);
        }
        b.send().await
    }

    /// Vetoes a pending recovery of `user_id`: the next version with the same policy and
    /// profile keys, signed by `signer` under the current policy. Any ordinary update cancels
    /// a pending recovery; this one changes nothing else.
    pub async fn veto(&self, user_id: &str, signer: &SigningKey) -> Result<UpdateOutcome, ClientError> {
        self.change(user_id)
            .signer(signer)
            .profile_keys(ProfileKeys::Edit { set: BTreeMap::new(), unset: BTreeSet::new() })
            .send()
            .await
    }

    /// Registers `user_id` owned by `owner`, publishing `keys`.
    pub async fn register(
        &self,
        user_id: &str,
        owner: &SigningKey,
        keys: BTreeMap<String, Vec<u8>>,
    ) -> Result<UpdateOutcome, ClientError> {
        self.registration(user_id, owner).keys(keys).send().await
    }

    /// Changes `user_id`'s keys to `keys`, signed by `signer` (who must satisfy the current
    /// policy). With `new_owner`, the policy becomes that key alone (it signs too).
    pub async fn update(
        &self,
        user_id: &str,
        signer: &SigningKey,
        new_owner: Option<&SigningKey>,
        keys: BTreeMap<String, Vec<u8>>,
    ) -> Result<UpdateOutcome, ClientError> {
        let mut b = self.change(user_id).signer(signer).keys(keys);
        if let Some(k) = new_owner {
            b = b.signer(k).policy(Policy::single(public_key(k)));
        }
        b.send().await
    }
}

/// Builds, signs and submits one update.
#[derive(Debug)]
pub struct UpdateBuilder<'a> {
    client: &'a Client,
    user_id: String,
    registration: bool,
    signers: Vec<SigningKey>,
    policy: Option<Policy>,
    keys: ProfileKeys,
    wait_for_quorum: bool,
    wait_ms: u32,
    proof: Option<RegistrationProof>,
    recovery: bool,
    nonce: Option<[u8; PROFILE_NONCE_BYTES]>,
}

impl<'a> UpdateBuilder<'a> {
    fn new(client: &'a Client, user_id: &str, registration: bool) -> Self {
        Self {
            recovery: false,
            client,
            user_id: user_id.to_owned(),
            registration,
            signers: Vec::new(),
            policy: None,
            keys: ProfileKeys::default(),
            wait_for_quorum: false,
            wait_ms: QUORUM_WAIT_MS,
            proof: None,
            nonce: None,
        }
    }

    /// Adds a signer: together the signers must satisfy the current policy (for a change) and
    /// the new one.
    #[must_use]
    pub fn signer(mut self, key: &SigningKey) -> Self {
        if !self.signers.iter().any(|k| k.verifying_key() == key.verifying_key()) {
            self.signers.push(key.clone());
        }
        self
    }

    /// The new update policy (default: unchanged; for a registration, the first signer alone).
    #[must_use]
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The profile's keys: exactly these (the current profile's are dropped).
    #[must_use]
    pub fn keys(mut self, keys: BTreeMap<String, Vec<u8>>) -> Self {
        self.keys = ProfileKeys::Replace(keys);
        self
    }

    /// How the profile's keys are made from the current profile's (the default replaces
    /// them with none).
    #[must_use]
    pub fn profile_keys(mut self, keys: ProfileKeys) -> Self {
        self.keys = keys;
        self
    }

    /// Waits until the update's epoch satisfies the client's quorum and returns its proof; an
    /// update accepted whose epoch does not within the wait is [`ClientError::NotRatifiedYet`].
    #[must_use]
    pub fn wait_for_quorum(mut self) -> Self {
        self.wait_for_quorum = true;
        self
    }

    /// How long [`Self::wait_for_quorum`] lets the server wait for the ratification, in
    /// milliseconds (default [`QUORUM_WAIT_MS`]; a server caps it at its `wait_ms_max`).
    #[must_use]
    pub fn wait_ms(mut self, wait_ms: u32) -> Self {
        self.wait_ms = wait_ms;
        self
    }

    /// The proof of the right to register the identity (for a registration in a realm that
    /// asks for one). Bound to one update, it is normally made for a [`PreparedUpdate`] and
    /// passed to [`Client::send_prepared`]; here it suits a proof that does not depend on
    /// the update, or a test.
    #[must_use]
    pub fn registration_proof(mut self, proof: RegistrationProof) -> Self {
        self.proof = Some(proof);
        self
    }

    /// The profile's nonce, instead of fresh random bytes. The nonce is what hides the
    /// profile in its commitment: it must be uniformly random and never used twice. This is
    /// for a simulation that draws it from its seed, so that a run replays byte for byte.
    #[must_use]
    pub fn profile_nonce(mut self, nonce: [u8; PROFILE_NONCE_BYTES]) -> Self {
        self.nonce = Some(nonce);
        self
    }

    /// Builds and signs the update without sending it. The entry builds on the identity's
    /// current entry, looked up at least as of this client's own last update of the identity
    /// (a registration or change made without waiting is found even before its epoch is
    /// ratified: the lookup waits for it).
    pub async fn prepare(&self) -> Result<PreparedUpdate, ClientError> {
        let client = self.client;
        let user_id = &client.canonical_user_id(&self.user_id)?;
        let Some(first) = self.signers.first() else {
            return Err(ClientError::Invalid("an update needs at least one signer".into()));
        };
        let own = client.checker.memory.own_update(&client.checker.memory_key, user_id);
        if let Some(epoch) = own {
            tracing::info!(user_id, epoch, "waiting for the epoch of this client's last update of the identity");
        }
        let options = LookupOptions { min_epoch: own.unwrap_or(0), wait_ms: QUORUM_WAIT_MS, epoch: 0 };
        let current = client.lookup(user_id, options).await.map_err(|e| match (own, e) {
            (Some(epoch), ClientError::Unavailable(why)) => ClientError::Unavailable(format!(
                "this client's last update of {user_id:?} is in epoch {epoch}, not yet ratified by its quorum: {why}"
            )),
            (_, e) => e,
        })?;
        let previous_keys = current.lookup.entry.as_ref().map(|(_, p)| p.keys.clone()).unwrap_or_default();
        let (version, policy) = match (&current.lookup.entry, self.registration) {
            (Some(_), true) => {
                return Err(ClientError::Invalid(format!("{user_id:?} is already registered; change it instead")))
            }
            (None, false) => {
                return Err(ClientError::Invalid(format!(
                    "{user_id:?} is not registered in epoch {}, the newest epoch ratified by this client's quorum; if it was registered a moment ago (by another client, or without waiting), its epoch is not ratified yet: retry in a few seconds (a registration that waits for its ratification avoids this)",
                    current.lookup.epoch()
                )))
            }
            (None, true) => (0, self.policy.clone().unwrap_or_else(|| Policy::single(public_key(first)))),
            // A recovery's policy is the new owner's: the current one's keys are what was lost.
            (Some((entry, _)), false) if self.recovery => {
                (entry.version + 1, self.policy.clone().unwrap_or_else(|| Policy::single(public_key(first))))
            }
            (Some((entry, _)), false) => {
                (entry.version + 1, self.policy.clone().unwrap_or_else(|| entry.update_policy.clone()))
            }
        };
        let keys = self.keys.clone().apply(&previous_keys)?;
        let profile = match self.nonce {
            Some(nonce) => Profile { nonce: nonce.to_vec(), keys },
            None => new_profile(keys),
        };
        let entry = Entry {
            index: current.lookup.index,
            version,
            update_policy: policy,
            profile_commitment: profile.commitment(),
        };
        let signers: Vec<&SigningKey> = self.signers.iter().collect();
        let signatures = sign_entry(&client.realm().config.realm, &entry, &signers);
        Ok(PreparedUpdate {
            realm: client.realm().config.realm.clone(),
            user_id: user_id.clone(),
            update: Update { signed: SignedEntry { entry, signatures }, profile },
            previous_keys,
            recovery: self.recovery,
        })
    }

    /// Signs and submits ([`Self::prepare`], then [`Client::send_prepared`]).
    pub async fn send(self) -> Result<UpdateOutcome, ClientError> {
        let prepared = self.prepare().await?;
        let wait = self.wait_for_quorum.then_some(self.wait_ms);
        self.client.send_prepared(&prepared, self.proof.as_ref(), wait).await
    }
}

impl Client {
    /// Sends a prepared update, with the proof of the right to register the identity when
    /// the realm asks for one; with `wait_for_quorum_ms`, waits (that long at most) until the
    /// update's epoch satisfies the client's quorum and returns its verified proof. An update
    /// answered "try again" may still have been applied: it is resubmitted, the same bytes,
    /// for up to [`UPDATE_RETRY_MS`], and one applied meanwhile is reported as a duplicate,
    /// never built anew.
    pub async fn send_prepared(
        &self,
        prepared: &PreparedUpdate,
        registration: Option<&RegistrationProof>,
        wait_for_quorum_ms: Option<u32>,
    ) -> Result<UpdateOutcome, ClientError> {
        let client = self;
        if prepared.realm != client.realm().config.realm {
            return Err(ClientError::Invalid(format!(
                "the prepared update is for realm {:?}, this client's realm is {:?}",
                prepared.realm,
                client.realm().config.realm
            )));
        }
        let user_id = &prepared.user_id;
        let update = &prepared.update;
        let (threshold, wait_ms) = match wait_for_quorum_ms {
            Some(ms) => (Some(client.threshold()), ms),
            None => (None, 0),
        };
        let started = tokio::time::Instant::now();
        let response =
            submit_until_answered(client, user_id, update, registration, prepared.recovery, threshold, wait_ms).await?;
        let proof = if wait_for_quorum_ms.is_some() {
            let answer = if response.proof.is_empty() {
                // Found applied by its status, without the proof the Update call returns: the
                // rest of the wait goes to a lookup of its epoch.
                let waited = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
                let at = LookupOptions { epoch: response.epoch, min_epoch: 0, wait_ms: wait_ms.saturating_sub(waited) };
                client.lookup(user_id, at).await.map_err(|e| match e {
                    // Not ratified within the wait, by the verifiers or yet by the replicas.
                    ClientError::Unavailable(_) | ClientError::Refused { code: tonic::Code::NotFound, .. } => {
                        not_ratified(client, update, response.epoch)
                    }
                    e => e,
                })?
            } else {
                let (proof, epoch) = (&response.proof, response.epoch);
                client.following_chain(|| async { client.accept_past(user_id, proof.clone(), epoch) }).await?
            };
            let shown = answer.lookup.entry.as_ref().map(|(e, _)| e);
            // A recovery request shows as the pending recovery (or, its window passed, as the
            // entry).
            let pending = answer.lookup.pending_recovery.as_ref().map(|p| &p.signed.entry);
            if shown != Some(&update.signed.entry) && !(prepared.recovery && pending == Some(&update.signed.entry)) {
                return Err(ClientError::Contradicted(format!(
                    "the update was acknowledged in epoch {}, but the proof of that epoch does not show it",
                    response.epoch
                )));
            }
            client
                .checker
                .observe(response.epoch)
                .map_err(|e| applied_not_recorded(e, &response.update_id, response.epoch))?;
            Some(answer)
        } else {
            client
                .checker
                .memory
                .record_own_update(&client.checker.memory_key, user_id, response.epoch)
                .map_err(|e| applied_not_recorded(e, &response.update_id, response.epoch))?;
            None
        };
        Ok(UpdateOutcome {
            update_id: response.update_id,
            epoch: response.epoch,
            duplicate: response.duplicate,
            proof,
            previous_keys: prepared.previous_keys.clone(),
            keys: update.profile.keys.clone(),
        })
    }
}

/// An applied update whose recording failed says it was applied: the caller must not think it
/// failed and submit another.
fn applied_not_recorded(e: ClientError, update_id: &[u8], epoch: u64) -> ClientError {
    match e {
        e @ ClientError::LocalState { .. } => {
            ClientError::AppliedNotRecorded { update_id: update_id.to_vec(), epoch, source: Box::new(e) }
        }
        other => other,
    }
}

fn not_ratified(client: &Client, update: &Update, epoch: u64) -> ClientError {
    ClientError::NotRatifiedYet { update_id: update.id().to_vec(), epoch, verifiers: client.realm().verifier_threshold }
}

/// Submits `update`, resubmitting the same bytes while the answer is "try again", for up to
/// [`UPDATE_RETRY_MS`] after the first such answer (a resubmission still running then is
/// dropped: the update is idempotent). A refusal after such an answer may mean the earlier
/// attempt was applied (and something after it): the update's status tells. An update that was
/// to wait for the verifiers (`threshold`) and was answered "try again" (the wait ran out, or
/// the answer was lost) is looked for first: applied, it is not resubmitted to wait once more.
async fn submit_until_answered(
    client: &Client,
    user_id: &str,
    update: &Update,
    registration: Option<&RegistrationProof>,
    recovery: bool,
    threshold: Option<u32>,
    wait_ms: u32,
) -> Result<UpdateResponse, ClientError> {
    let unanswered = |why: &str| {
        ClientError::Unavailable(format!(
            "{why}; the update (id {}) may still be applied: look {user_id:?} up before changing it again",
            hex::encode(update.id())
        ))
    };
    // Applied, it is answered without a proof: the caller waits for the ratification (for what
    // is left of its wait) by a lookup.
    let applied = || async {
        threshold?;
        match client.update_status(update).await {
            Ok(UpdateStatus::InEpoch(epoch)) => {
                Some(UpdateResponse { update_id: update.id().to_vec(), epoch, duplicate: false, proof: Vec::new() })
            }
            _ => None,
        }
    };
    let why = match client.submit_as(user_id, update, registration, recovery, threshold, wait_ms).await {
        Err(ClientError::Unavailable(why)) => why,
        other => return other,
    };
    if let Some(response) = applied().await {
        return Ok(response);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(UPDATE_RETRY_MS);
    let mut retry = 0u32;
    let mut last = why;
    loop {
        let delay = Duration::from_millis(keyraft_core::backoff::delay_ms(
            retry,
            UPDATE_RETRY_DELAY_MS,
            UPDATE_RETRY_DELAY_MAX_MS,
        ));
        retry = retry.saturating_add(1);
        if tokio::time::Instant::now() + delay >= deadline {
            return Err(unanswered(&last));
        }
        tracing::info!(user_id, error = %last, "update: try again; resubmitting the same update");
        tokio::time::sleep(delay).await;
        let attempt = client.submit_as(user_id, update, registration, recovery, threshold, wait_ms);
        match tokio::time::timeout_at(deadline, attempt).await {
            Err(_) => return Err(unanswered(&last)),
            Ok(Ok(response)) => return Ok(response),
            Ok(Err(ClientError::Unavailable(why))) => {
                if let Some(response) = applied().await {
                    return Ok(response);
                }
                last = why;
            }
            Ok(Err(refused @ ClientError::Refused { code: tonic::Code::FailedPrecondition, .. })) => {
                return match client.update_status(update).await {
                    Ok(UpdateStatus::InEpoch(epoch)) => Ok(UpdateResponse {
                        update_id: update.id().to_vec(),
                        epoch,
                        duplicate: true,
                        proof: Vec::new(),
                    }),
                    _ => Err(refused),
                };
            }
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_applied_update_that_could_not_be_recorded_says_it_was_applied() {
        let local = ClientError::LocalState {
            path: "/tmp/state.json".into(),
            action: "writing it",
            source: std::io::Error::other("disk full"),
        };
        let e = applied_not_recorded(local, &[0xab; 32], 7);
        let message = e.to_string();
        assert!(matches!(e, ClientError::AppliedNotRecorded { epoch: 7, .. }), "{e:?}");
        assert!(message.starts_with("the update was applied in epoch 7 (update id abab"), "{message}");
        assert!(message.contains("disk full"), "{message}");
        // Other failures keep their meaning.
        let other = applied_not_recorded(ClientError::Contradicted("x".into()), &[0xab; 32], 7);
        assert!(matches!(other, ClientError::Contradicted(_)));
    }
}
