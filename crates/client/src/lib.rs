//! # keyraft-client
//!
//! Talks to a realm's replicas and verifies every answer with `keyraft_core` before
//! returning it: a lookup returns a [`Verified`] answer or an error saying whose fault it was.
//!
//! - [`Client::lookup`]: a verified answer about a user id;
//! - [`Client::register`] / [`Client::update`]: build an entry, sign it with the owner's key
//!   and submit it; the index comes from a verified lookup, so a server cannot make a client
//!   sign an entry for someone else's index;
//! - [`ClientError`] separates "the server misbehaved" from "try again" from "your request is
//!   wrong".
#![forbid(unsafe_code)]

use ed25519_dalek::SigningKey;
use keyraft_core::lookup::{verify_lookup, ClientRealm, Lookup, LookupProof, VerifyError};
use keyraft_core::{decode_canonical, Canonical, Entry, Policy, Profile, RealmFile, SignedEntry, Update, Verified};
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::{LookupRequest, UpdateRequest, UpdateResponse};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::transport::{Channel, Endpoint};

/// Deadline of one call, in milliseconds, on top of any server-side wait the call asks for.
pub const CALL_TIMEOUT_MS: u64 = 10_000;
/// How long `register` and `update` let the server wait for an epoch satisfying this client's
/// quorum, in milliseconds.
pub const QUORUM_WAIT_MS: u32 = 10_000;
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
}

/// What to ask a lookup for.
#[derive(Debug, Clone, Copy, Default)]
pub struct LookupOptions {
    /// A given epoch (0: the newest that satisfies the quorum).
    pub epoch: u64,
    /// The oldest acceptable epoch (0: any).
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

/// A client of one realm.
#[derive(Debug, Clone)]
pub struct Client {
    realm: ClientRealm,
    endpoints: Vec<(String, KeyraftClient<Channel>)>,
}

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn status_error(endpoint: &str, status: &tonic::Status) -> ClientError {
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

impl Client {
    /// A client for the realm in `file`, talking to its endpoints (or `endpoints` if given).
    pub fn new(file: &RealmFile, endpoints: &[String]) -> Result<Self, ClientError> {
        let realm = file.client_realm().map_err(|e| ClientError::Invalid(e.to_string()))?;
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
        Ok(Self { realm, endpoints: out })
    }

    /// What this client trusts.
    pub fn realm(&self) -> &ClientRealm {
        &self.realm
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

    /// Looks `user_id` up and verifies the answer.
    pub async fn lookup(&self, user_id: &str, options: LookupOptions) -> Result<LookupAnswer, ClientError> {
        let threshold =
            u32::try_from(self.realm.verifier_threshold).map_err(|_| ClientError::Invalid("threshold".into()))?;
        let request = LookupRequest {
            user_id: user_id.to_owned(),
            epoch: options.epoch,
            min_epoch: options.min_epoch,
            verifier_threshold: threshold,
            wait_ms: options.wait_ms,
        };
        let timeout = Duration::from_millis(CALL_TIMEOUT_MS + u64::from(options.wait_ms));
        let proof = self
            .each(|mut c| {
                let mut r = tonic::Request::new(request.clone());
                r.set_timeout(timeout);
                async move { c.lookup(r).await.map(|r| r.into_inner().proof) }
            })
            .await?;
        let decoded: LookupProof = decode_canonical(&proof).map_err(VerifyError::Malformed)?;
        let lookup = verify_lookup(&self.realm, user_id, &decoded, now_ms(), None)?;
        if options.epoch != 0 && lookup.epoch() != options.epoch {
            return Err(ClientError::Misbehaved(VerifyError::Malformed(keyraft_core::DecodeError::Invalid {
                what: "lookup proof",
                why: "answers from another epoch than the one asked for",
            })));
        }
        Ok(LookupAnswer { lookup, proof })
    }

    /// Submits a signed update. With `verifier_threshold`, waits for that quorum and returns
    /// the proof too.
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

    /// Registers `user_id` (version 0) owned by `owner`, publishing `keys`.
    pub async fn register(
        &self,
        user_id: &str,
        owner: &SigningKey,
        keys: BTreeMap<String, Vec<u8>>,
    ) -> Result<UpdateResponse, ClientError> {
        let current =
            self.lookup(user_id, LookupOptions { wait_ms: QUORUM_WAIT_MS, ..LookupOptions::default() }).await?;
        if current.lookup.entry.is_some() {
            return Err(ClientError::Invalid(format!("{user_id:?} is already registered; use update")));
        }
        let profile = new_profile(keys);
        let entry = Entry {
            index: current.lookup.index,
            version: 0,
            update_policy: Policy::single(public_key(owner)),
            profile_commitment: profile.commitment(),
        };
        let signatures = sign_entry(&self.realm.config.realm, &entry, &[owner]);
        self.submit(user_id, &Update { signed: SignedEntry { entry, signatures }, profile }, None, 0).await
    }

    /// Changes `user_id`'s keys to `keys`, signed by `signer` (who must satisfy the current
    /// policy). With `new_owner`, the policy becomes that key alone (it signs too).
    pub async fn update(
        &self,
        user_id: &str,
        signer: &SigningKey,
        new_owner: Option<&SigningKey>,
        keys: BTreeMap<String, Vec<u8>>,
    ) -> Result<UpdateResponse, ClientError> {
        let current =
            self.lookup(user_id, LookupOptions { wait_ms: QUORUM_WAIT_MS, ..LookupOptions::default() }).await?;
        let Some((entry, _)) = &current.lookup.entry else {
            return Err(ClientError::Invalid(format!("{user_id:?} is not registered; use register")));
        };
        let profile = new_profile(keys);
        let policy = match new_owner {
            Some(k) => Policy::single(public_key(k)),
            None => entry.update_policy.clone(),
        };
        let new_entry = Entry {
            index: current.lookup.index,
            version: entry.version + 1,
            update_policy: policy,
            profile_commitment: profile.commitment(),
        };
        let mut signers = vec![signer];
        if let Some(k) = new_owner {
            signers.push(k);
        }
        let signatures = sign_entry(&self.realm.config.realm, &new_entry, &signers);
        self.submit(user_id, &Update { signed: SignedEntry { entry: new_entry, signatures }, profile }, None, 0).await
    }
}
