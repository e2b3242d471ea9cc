//! # keyraft-client
//!
//! Talks to a realm's replicas and verifies every answer with `keyraft_core` before
//! returning it: a lookup returns a [`Verified`] answer or an error saying whose fault it was.
//!
//! - [`Client::lookup`]: a verified answer about a user id, today or at a given epoch;
//! - [`Client::registration`] / [`Client::change`]: builders that make an entry, sign it with
//!   the owner's keys and submit it, optionally waiting until the client's quorum ratified it;
//!   the index comes from a verified lookup, so a server cannot make a client sign an entry
//!   for someone else's index;
//! - [`Client::history`]: every version of an identity, each proven at its epoch;
//! - [`Client::watch`]: the current value, then every change, with proofs;
//! - [`ClientError`] separates "the server misbehaved" from "try again" from "your request is
//!   wrong".
//!
//! What a client accepts is its [`ClientRealm`]: the realm file's keys plus a quorum (the
//! replica majority, always, and a verifier threshold), an epoch TTL and a clock skew, each
//! of which [`ClientOptions`] may tighten or relax. The client remembers the newest epoch it
//! has verified per realm ([`EpochMemory`], optionally in a file) and rejects answers from
//! older epochs: a rollback.
#![forbid(unsafe_code)]

mod memory;
mod watch;

pub use memory::EpochMemory;
pub use watch::{Watch, WatchUpdate, WATCH_RECONNECT_ROUNDS_MAX};

use ed25519_dalek::SigningKey;
use keyraft_core::lookup::{verify_lookup, verify_lookup_at, ClientRealm, Lookup, LookupProof, VerifyError};
use keyraft_core::{decode_canonical, Canonical, Entry, Policy, Profile, RealmFile, SignedEntry, Update, Verified};
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::{HistoryRequest, LookupRequest, UpdateRequest, UpdateResponse};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::transport::{Channel, Endpoint};

/// Deadline of one call, in milliseconds, on top of any server-side wait the call asks for.
pub const CALL_TIMEOUT_MS: u64 = 10_000;
/// How long an update waiting for the quorum lets the server wait, in milliseconds.
pub const QUORUM_WAIT_MS: u32 = 10_000;
/// How long a replica may wait to reach the newest epoch this client has seen, in
/// milliseconds: an honest replica one epoch behind catches up well within this.
pub const LAG_WAIT_MS: u32 = 3_000;
/// Bytes of random nonce in profiles this client creates.
pub const PROFILE_NONCE_BYTES: usize = 32;

/// What went wrong, by whose fault.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The caller's input or configuration is wrong; retrying will not help.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The server refused the request as it stands (a version or policy conflict, an unknown
    /// epoch); the message says why.
    #[error("refused by the server ({code:?}): {message}")]
    Refused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's explanation.
        message: String,
    },
    /// No replica answered usefully; try again later.
    #[error("try again: {0}")]
    Unavailable(String),
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
}

impl ClientError {
    /// Whether the server, not the network or the caller, is at fault: keep the evidence.
    pub fn is_misbehavior(&self) -> bool {
        matches!(self, Self::Misbehaved(_) | Self::Contradicted(_))
    }
}

/// What to ask a lookup for.
#[derive(Debug, Clone, Copy, Default)]
pub struct LookupOptions {
    /// A given past epoch, verified as a statement about that epoch (0: the newest epoch that
    /// satisfies the quorum, verified as fresh).
    pub epoch: u64,
    /// The oldest acceptable epoch (0: any not older than the newest already seen).
    pub min_epoch: u64,
    /// How long the server may wait for `min_epoch` or the quorum.
    pub wait_ms: u32,
}

/// A verified lookup with the proof bytes it came from (to save or show).
#[derive(Debug, Clone)]
pub struct LookupAnswer {
    /// The verified answer.
    pub lookup: Verified<Lookup>,
    /// The canonical proof bytes.
    pub proof: Vec<u8>,
}

/// What a client accepts, on top of the realm file. `None` keeps the realm file's value.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// How many registered verifiers must have ratified an answer's epoch (the replica
    /// majority is always required).
    pub verifier_threshold: Option<usize>,
    /// The oldest head accepted, as an age in milliseconds.
    pub epoch_ttl_ms: Option<u64>,
    /// How far ahead of this client's clock a head may be, in milliseconds.
    pub clock_skew_ms: Option<u64>,
    /// Where to remember the newest epoch seen per realm (`None`: for this process only).
    pub state_file: Option<PathBuf>,
}

impl ClientOptions {
    /// Applies the quorum and freshness options to `realm` (for code that verifies proofs
    /// without a [`Client`], such as offline verification).
    pub fn apply(&self, realm: &mut ClientRealm) -> Result<(), ClientError> {
        if let Some(t) = self.verifier_threshold {
            let registered = realm.config.verifier_keys.len();
            if t > registered {
                return Err(ClientError::Invalid(format!(
                    "verifier threshold {t} exceeds the {registered} verifiers registered in realm {:?}",
                    realm.config.realm
                )));
            }
            realm.verifier_threshold = t;
        }
        if let Some(ttl) = self.epoch_ttl_ms {
            realm.epoch_ttl_ms = ttl;
        }
        if let Some(skew) = self.clock_skew_ms {
            realm.clock_skew_ms = skew;
        }
        Ok(())
    }
}

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
}

/// A page of an identity's history, newest first, each version proven at its epoch.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// `(version, answer)`: each answer is verified at the epoch the version appeared in.
    pub versions: Vec<(u64, LookupAnswer)>,
    /// The token of the next (older) page, empty at the end.
    pub next_page_token: Vec<u8>,
}

/// A client of one realm.
#[derive(Debug, Clone)]
pub struct Client {
    realm: ClientRealm,
    pub(crate) endpoints: Vec<(String, KeyraftClient<Channel>)>,
    memory: Arc<EpochMemory>,
    /// The realm's name and configuration hash: two realms of the same name (a dev realm
    /// made afresh) keep separate epoch memories.
    memory_key: String,
}

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(crate) fn status_error(endpoint: &str, status: &tonic::Status) -> ClientError {
    use tonic::Code;
    let message = format!("{endpoint}: {}", status.message());
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal
        | Code::Aborted => ClientError::Unavailable(message),
        code => ClientError::Refused { code, message },
    }
}

pub use keyraft_core::keys::public_key_of as public_key;
pub use keyraft_core::update::sign_entry;

/// A profile holding `keys` with a fresh random nonce.
pub fn new_profile(keys: BTreeMap<String, Vec<u8>>) -> Profile {
    let mut nonce = vec![0u8; PROFILE_NONCE_BYTES];
    rand::Rng::fill(&mut rand::thread_rng(), nonce.as_mut_slice());
    Profile { nonce, keys }
}

fn decode_proof(bytes: &[u8]) -> Result<LookupProof, ClientError> {
    Ok(decode_canonical(bytes).map_err(VerifyError::Malformed)?)
}

impl Client {
    /// A client for the realm in `file` with the realm file's quorum and freshness rules,
    /// talking to its endpoints (or `endpoints` if given), remembering epochs in memory only.
    pub fn new(file: &RealmFile, endpoints: &[String]) -> Result<Self, ClientError> {
        Self::with_options(file, endpoints, &ClientOptions::default())
    }

    /// A client with its own quorum, freshness rules and state file.
    pub fn with_options(file: &RealmFile, endpoints: &[String], options: &ClientOptions) -> Result<Self, ClientError> {
        let mut realm = file.client_realm().map_err(|e| ClientError::Invalid(e.to_string()))?;
        options.apply(&mut realm)?;
        let memory = match &options.state_file {
            Some(path) => EpochMemory::open(path)?,
            None => EpochMemory::in_memory(),
        };
        let list = if endpoints.is_empty() { &file.endpoints } else { endpoints };
        if list.is_empty() {
            return Err(ClientError::Invalid("no endpoints: the realm file lists none and none were given".into()));
        }
        let mut out = Vec::new();
        for addr in list {
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| ClientError::Invalid(format!("endpoint {addr:?}: {e}")))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true);
            out.push((addr.clone(), KeyraftClient::new(endpoint.connect_lazy())));
        }
        let memory_key = format!("{}/{}", realm.config.realm, hex::encode(&realm.config.hash()[..8]));
        Ok(Self { realm, endpoints: out, memory: Arc::new(memory), memory_key })
    }

    /// What this client trusts.
    pub fn realm(&self) -> &ClientRealm {
        &self.realm
    }

    /// The newest epoch this client has verified for its realm.
    pub fn newest_epoch_seen(&self) -> Option<u64> {
        self.memory.newest(&self.memory_key)
    }

    pub(crate) fn threshold(&self) -> u32 {
        // Bounded by the number of registered verifiers, itself at most VERIFIERS_MAX.
        u32::try_from(self.realm.verifier_threshold).unwrap_or(u32::MAX)
    }

    /// Tries each endpoint in turn while the answer is "try again".
    async fn each<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(KeyraftClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut last = ClientError::Unavailable("no endpoint tried".into());
        for (addr, client) in &self.endpoints {
            match call(client.clone()).await {
                Ok(v) => return Ok(v),
                Err(status) => {
                    let e = status_error(addr, &status);
                    if !matches!(e, ClientError::Unavailable(_)) {
                        return Err(e);
                    }
                    tracing::debug!(endpoint = %addr, error = %e, "trying the next endpoint");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Verifies a proof that must be fresh and not older than `last_seen` (the newest epoch
    /// this client had seen when it asked, which is what it asked the replica for: a newer
    /// epoch seen meanwhile by another call is no reason to doubt this answer), remembering
    /// its epoch.
    pub(crate) fn accept_fresh(
        &self,
        user_id: &str,
        proof: Vec<u8>,
        last_seen: Option<u64>,
    ) -> Result<LookupAnswer, ClientError> {
        let decoded = decode_proof(&proof)?;
        let lookup = verify_lookup(&self.realm, user_id, &decoded, now_ms(), last_seen).map_err(|e| match e {
            VerifyError::HeadExpired { .. } => ClientError::Stale(e),
            e => ClientError::Misbehaved(e),
        })?;
        self.memory.observe(&self.memory_key, lookup.epoch())?;
        Ok(LookupAnswer { lookup, proof })
    }

    /// Verifies a proof about a past `epoch`.
    pub(crate) fn accept_past(&self, user_id: &str, proof: Vec<u8>, epoch: u64) -> Result<LookupAnswer, ClientError> {
        let decoded = decode_proof(&proof)?;
        let lookup = verify_lookup_at(&self.realm, user_id, &decoded, epoch)?;
        Ok(LookupAnswer { lookup, proof })
    }

    /// Looks `user_id` up and verifies the answer: today's value (fresh, not older than any
    /// epoch seen before), or with `options.epoch` the value in that epoch.
    pub async fn lookup(&self, user_id: &str, options: LookupOptions) -> Result<LookupAnswer, ClientError> {
        let last_seen = self.newest_epoch_seen();
        let seen = last_seen.unwrap_or(0);
        let (min_epoch, wait_ms) = if options.epoch == 0 && seen > options.min_epoch {
            (seen, options.wait_ms.max(LAG_WAIT_MS))
        } else {
            (options.min_epoch, options.wait_ms)
        };
        let request = LookupRequest {
            user_id: user_id.to_owned(),
            epoch: options.epoch,
            min_epoch,
            verifier_threshold: self.threshold(),
            wait_ms,
        };
        let timeout = Duration::from_millis(CALL_TIMEOUT_MS + u64::from(wait_ms));
        let proof = self
            .each(|mut c| {
                let mut r = tonic::Request::new(request.clone());
                r.set_timeout(timeout);
                async move { c.lookup(r).await.map(|r| r.into_inner().proof) }
            })
            .await?;
        if options.epoch != 0 {
            return self.accept_past(user_id, proof, options.epoch);
        }
        let answer = self.accept_fresh(user_id, proof, last_seen)?;
        if answer.lookup.epoch() < options.min_epoch {
            return Err(ClientError::Contradicted(format!(
                "asked for epoch {} or newer, got an answer from epoch {}",
                options.min_epoch,
                answer.lookup.epoch()
            )));
        }
        Ok(answer)
    }

    /// One page of `user_id`'s versions, newest first (`page_token` empty for the first page),
    /// each proven at the epoch it appeared in. Each listed version is proven; that none is
    /// missing is not (versions only have to increase): compare with what a watch saw, or with
    /// lookups at the epochs in between.
    pub async fn history(&self, user_id: &str, page_size: u32, page_token: &[u8]) -> Result<HistoryPage, ClientError> {
        let request = HistoryRequest {
            user_id: user_id.to_owned(),
            page_size,
            page_token: page_token.to_vec(),
            verifier_threshold: self.threshold(),
        };
        let response = self
            .each(|mut c| {
                let mut r = tonic::Request::new(request.clone());
                r.set_timeout(Duration::from_millis(CALL_TIMEOUT_MS));
                async move { c.history(r).await.map(tonic::Response::into_inner) }
            })
            .await?;
        let mut versions = Vec::with_capacity(response.versions.len());
        let mut previous: Option<(u64, u64)> = None;
        for v in response.versions {
            let answer = self.accept_past(user_id, v.proof, v.epoch)?;
            match &answer.lookup.entry {
                Some((entry, _)) if entry.version == v.version => {}
                _ => {
                    return Err(ClientError::Contradicted(format!(
                        "history lists version {} in epoch {}, but the proof of that epoch shows {}",
                        v.version,
                        v.epoch,
                        answer
                            .lookup
                            .entry
                            .as_ref()
                            .map_or("no entry".into(), |(e, _)| format!("version {}", e.version))
                    )))
                }
            }
            if let Some((version, epoch)) = previous {
                if v.version >= version || v.epoch >= epoch {
                    return Err(ClientError::Contradicted(format!(
                        "history is not newest-first: version {} in epoch {} follows version {version} in epoch {epoch}",
                        v.version, v.epoch
                    )));
                }
            }
            previous = Some((v.version, v.epoch));
            versions.push((v.version, answer));
        }
        Ok(HistoryPage { versions, next_page_token: response.next_page_token })
    }

    /// Watches `user_id`: the current value, then every change, and heartbeats proving it
    /// unchanged. With `from_epoch`, starts with the changes after that epoch (the caller knows
    /// the value at `from_epoch`; the first event is not compared with it).
    pub async fn watch(&self, user_id: &str, from_epoch: u64) -> Result<Watch, ClientError> {
        Watch::open(self.clone(), user_id.to_owned(), from_epoch).await
    }

    /// Submits a signed update. With `verifier_threshold`, waits for that quorum and returns
    /// the raw response (its proof unverified: [`UpdateBuilder::send`] verifies it).
    pub async fn submit(
        &self,
        user_id: &str,
        update: &Update,
        verifier_threshold: Option<u32>,
        wait_ms: u32,
    ) -> Result<UpdateResponse, ClientError> {
        let request =
            UpdateRequest { user_id: user_id.to_owned(), update: update.encode(), verifier_threshold, wait_ms };
        let timeout = Duration::from_millis(CALL_TIMEOUT_MS + u64::from(wait_ms));
        self.each(|mut c| {
            let mut r = tonic::Request::new(request.clone());
            r.set_timeout(timeout);
            async move { c.update(r).await.map(tonic::Response::into_inner) }
        })
        .await
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
    keys: BTreeMap<String, Vec<u8>>,
    wait_for_quorum: bool,
}

impl<'a> UpdateBuilder<'a> {
    fn new(client: &'a Client, user_id: &str, registration: bool) -> Self {
        Self {
            client,
            user_id: user_id.to_owned(),
            registration,
            signers: Vec::new(),
            policy: None,
            keys: BTreeMap::new(),
            wait_for_quorum: false,
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

    /// The profile's keys.
    #[must_use]
    pub fn keys(mut self, keys: BTreeMap<String, Vec<u8>>) -> Self {
        self.keys = keys;
        self
    }

    /// Waits until the update's epoch satisfies the client's quorum and returns its proof.
    #[must_use]
    pub fn wait_for_quorum(mut self) -> Self {
        self.wait_for_quorum = true;
        self
    }

    /// Signs and submits.
    pub async fn send(self) -> Result<UpdateOutcome, ClientError> {
        let client = self.client;
        let user_id = &self.user_id;
        let Some(first) = self.signers.first() else {
            return Err(ClientError::Invalid("an update needs at least one signer".into()));
        };
        let current =
            client.lookup(user_id, LookupOptions { wait_ms: QUORUM_WAIT_MS, ..LookupOptions::default() }).await?;
        let (version, policy) = match (&current.lookup.entry, self.registration) {
            (Some(_), true) => {
                return Err(ClientError::Invalid(format!("{user_id:?} is already registered; change it instead")))
            }
            (None, false) => return Err(ClientError::Invalid(format!("{user_id:?} is not registered; register it"))),
            (None, true) => (0, self.policy.unwrap_or_else(|| Policy::single(public_key(first)))),
            (Some((entry, _)), false) => {
                (entry.version + 1, self.policy.unwrap_or_else(|| entry.update_policy.clone()))
            }
        };
        let profile = new_profile(self.keys);
        let entry = Entry {
            index: current.lookup.index,
            version,
            update_policy: policy,
            profile_commitment: profile.commitment(),
        };
        let signers: Vec<&SigningKey> = self.signers.iter().collect();
        let signatures = sign_entry(&client.realm.config.realm, &entry, &signers);
        let update = Update { signed: SignedEntry { entry, signatures }, profile };
        let (threshold, wait_ms) =
            if self.wait_for_quorum { (Some(client.threshold()), QUORUM_WAIT_MS) } else { (None, 0) };
        let response = client.submit(user_id, &update, threshold, wait_ms).await?;
        let proof = if self.wait_for_quorum {
            let answer = client.accept_past(user_id, response.proof, response.epoch)?;
            let shown = answer.lookup.entry.as_ref().map(|(e, _)| e);
            if shown != Some(&update.signed.entry) {
                return Err(ClientError::Contradicted(format!(
                    "the update was acknowledged in epoch {}, but the proof of that epoch does not show it",
                    response.epoch
                )));
            }
            client.memory.observe(&client.memory_key, response.epoch)?;
            Some(answer)
        } else {
            None
        };
        Ok(UpdateOutcome { update_id: response.update_id, epoch: response.epoch, duplicate: response.duplicate, proof })
    }
}
