//! The public gRPC service (`keyraft.v1.Keyraft`): every replica answers from its applied
//! state; updates are validated here, at the edge, and then proposed through the leader.
//!
//! Error statuses follow `proto/keyraft/v1/keyraft.proto`: INVALID_ARGUMENT for malformed
//! input (naming the field), FAILED_PRECONDITION for conflicts with the state,
//! RESOURCE_EXHAUSTED over a size or rate limit (a rate limit adds `retry-after-ms`,
//! [`crate::rate_limits`]), UNAVAILABLE (with a `leader-hint`) when no leader is known or a
//! retry will help, DEADLINE_EXCEEDED when a wait runs out.

use crate::node::{Node, ProposeError};
use crate::outcome::{self, rejection_status, Taken};
use crate::page_token::{Cursor, Listing, PageTokens};
use crate::raft::types::ApplyResponse;
use crate::rate_limits::RateLimits;
use crate::registration::Registrations;
use crate::update_status::UpdateTracker;
use crate::vrf_cache::VrfCache;
use keyraft_core::limits::{UPDATE_BYTES_MAX, USER_ID_BYTES_MAX};
use keyraft_core::lookup::ratification_message;
use keyraft_core::recovery::check_recovery;
use keyraft_core::update::check_update_memo;
use keyraft_core::vrf::VrfProof;
use keyraft_core::{Canonical, Command, Digest, EpochHead, Index, Update};
use keyraft_proto::convert::{canonical, public_key, signature, LookupReply};
use keyraft_proto::pb::keyraft_server::Keyraft;
use keyraft_proto::pb::{self, get_update_status_response::State};
use keyraft_state::Outcome;
use prost::Message as _;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Default page size of list calls.
pub const PAGE_SIZE_DEFAULT: u32 = 100;
/// Largest page size of list calls.
pub const PAGE_SIZE_MAX: u32 = 1000;
pub use crate::read::EPOCHS_AHEAD_MAX;

/// The public service of one replica.
#[derive(Clone)]
pub struct PublicService {
    node: Arc<Node>,
    vrf_cache: Arc<VrfCache>,
    updates: UpdateTracker,
    tokens: PageTokens,
    /// Open `Watch` streams, against `limits.watch_streams_max`.
    watch_streams: Arc<std::sync::atomic::AtomicUsize>,
    /// Open `VerifierStream`s, against `limits.verifier_streams_max`.
    verifier_streams: Arc<std::sync::atomic::AtomicUsize>,
    /// Who may register an identity.
    registrations: Arc<Registrations>,
    /// Abuse limits per client address and per identity (`limits.rate_*`).
    pub(crate) rate_limits: Arc<RateLimits>,
    /// The clock a verifier's signed stream request is judged by, and the realm's clock skew.
    clock: Arc<dyn keyraft_core::clock::Clock>,
    skew_ms: u64,
}

impl std::fmt::Debug for PublicService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicService").field("node", &self.node.id).finish()
    }
}

fn propose_status(node: &Node, e: ProposeError) -> Status {
    let mut status = match &e {
        ProposeError::NoLeader => Status::unavailable(e.to_string()),
        ProposeError::Forward { .. } => Status::unavailable(format!(
            "{e}; the update may have been applied: query GetUpdateStatus or resubmit it (resubmission is idempotent)"
        )),
        ProposeError::Fatal(_) => Status::unavailable(e.to_string()),
    };
    if let Some((_, addr)) = node.leader() {
        if let Ok(v) = addr.public_addr.parse() {
            status.metadata_mut().insert("leader-hint", v);
        }
    }
    status
}

fn check_size(len: usize, max: usize, what: &str) -> Result<(), Status> {
    if len > max {
        return Err(Status::resource_exhausted(format!("{what} is {len} bytes; the limit is {max} bytes")));
    }
    Ok(())
}

fn page_size(requested: u32) -> Result<usize, Status> {
    match requested {
        0 => Ok(PAGE_SIZE_DEFAULT as usize),
        n if n <= PAGE_SIZE_MAX => Ok(n as usize),
        n => Err(Status::invalid_argument(format!("page_size {n} is above the maximum of {PAGE_SIZE_MAX}"))),
    }
}

/// A listing pinned to an epoch this replica has not reached: it lags the replica that issued
/// the token.
fn lagging(pinned: u64, newest: u64) -> Status {
    Status::unavailable(format!(
        "page_token: the listing is pinned to epoch {pinned}, which this replica has not reached (newest {newest}); \
         it lags: retry, or ask another replica"
    ))
}

impl PublicService {
    /// The counters of open `Watch` and `VerifierStream` streams, for the metrics.
    pub fn stream_counters(&self) -> [(&'static str, Arc<std::sync::atomic::AtomicUsize>); 2] {
        [("watch", self.watch_streams.clone()), ("verifier", self.verifier_streams.clone())]
    }

    /// The service of `node`, admitting registrations by `registrations`, refusing requests
    /// over `rate_limits`, and judging verifiers' signed stream requests by `clock` with the
    /// realm's `skew_ms`.
    pub fn new(
        node: Arc<Node>,
        registrations: Arc<Registrations>,
        rate_limits: RateLimits,
        clock: Arc<dyn keyraft_core::clock::Clock>,
        skew_ms: u64,
    ) -> Self {
        let tokens = node.page_tokens();
        Self {
            rate_limits: Arc::new(rate_limits),
            node,
            vrf_cache: Arc::default(),
            updates: UpdateTracker::default(),
            tokens,
            watch_streams: Arc::default(),
            verifier_streams: Arc::default(),
            registrations,
            clock,
            skew_ms,
        }
    }

    /// The id `user_id` stands for in the realm, the one its index and proofs are about: its
    /// canonical form under protocol version 2 (docs/protocol.md section 3.1), the id as given
    /// under version 1. The client computes the same with the same function.
    pub(crate) fn check_user_id(&self, user_id: &str) -> Result<String, Status> {
        check_size(user_id.len(), USER_ID_BYTES_MAX, "user_id")?;
        self.node
            .with_config(|c| c.canonical_user_id(user_id))
            .map_err(|e| Status::invalid_argument(format!("user_id: {e}")))
    }

    /// The user id's index and VRF proof (cached: proving costs about 130 us).
    pub(crate) fn index_of(&self, user_id: &str) -> Result<(Index, VrfProof), Status> {
        self.vrf_cache.get_or_prove(user_id, || self.node.vrf_index(user_id))
    }

    pub(crate) fn check_threshold(&self, threshold: u32) -> Result<usize, Status> {
        let n = self.node.with_config(|c| c.verifier_keys.len());
        if threshold as usize > n {
            return Err(Status::invalid_argument(format!(
                "verifier_threshold {threshold} exceeds the {n} verifiers registered in the realm"
            )));
        }
        Ok(threshold as usize)
    }

    /// The answer when no epoch at or after `min_epoch` satisfies `threshold`: the realm is
    /// not there yet, which is no misbehaviour. DEADLINE_EXCEEDED once a wait of `waited_ms`
    /// ran out; UNAVAILABLE (retry) for a call that does not wait, or while nothing is
    /// keyserver-ratified.
    fn not_ratified_yet(&self, min_epoch: u64, threshold: usize, waited_ms: Option<u64>) -> Status {
        let newest = self.node.read.ratified_epoch();
        if newest == 0 {
            return Status::unavailable("the realm has no keyserver-ratified epoch yet; retry shortly");
        }
        let what = format!(
            "not ratified yet: no epoch at or after {min_epoch} has {threshold} verifier ratifications \
             (the newest keyserver-ratified epoch is {newest}; verifiers ratify after it)"
        );
        match waited_ms {
            Some(ms) => Status::deadline_exceeded(format!("{what}; waited {ms} ms")),
            None => Status::unavailable(format!("{what}; retry later")),
        }
    }
}

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Keyraft for PublicService {
    async fn lookup(&self, request: Request<pb::LookupRequest>) -> Result<Response<pb::LookupResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let req = request.into_inner();
        let user_id = self.check_user_id(&req.user_id)?;
        self.rate_limits.check_lookup(peer, &user_id)?;
        let threshold = self.check_threshold(req.verifier_threshold)?;
        let (index, vrf_proof) = self.index_of(&user_id)?;
        let wait_ms = u64::from(req.wait_ms);
        self.node.read.check_reachable(req.epoch, "epoch")?;
        self.node.read.check_reachable(req.min_epoch, "min_epoch")?;
        let epoch = if req.epoch != 0 {
            if req.min_epoch > req.epoch {
                return Err(Status::invalid_argument("min_epoch is above the requested epoch"));
            }
            let e = req.epoch;
            match self.node.read.wait_for(wait_ms, |s| Ok(s.satisfies(e, threshold)?.then_some(e))).await? {
                Some(e) => e,
                None => {
                    let newest = self.node.read.ratified_epoch();
                    return Err(if e > newest {
                        Status::not_found(format!("epoch {e} is not keyserver-ratified yet (newest is {newest})"))
                    } else {
                        Status::deadline_exceeded(format!(
                            "epoch {e} does not have {threshold} verifier ratifications (waited {wait_ms} ms)"
                        ))
                    });
                }
            }
        } else {
            match self.node.read.wait_for(wait_ms, |s| s.newest_satisfying(req.min_epoch, threshold)).await? {
                Some(e) => e,
                None => return Err(self.not_ratified_yet(req.min_epoch, threshold, Some(wait_ms))),
            }
        };
        let proof = self.node.read.proof(&user_id, index, vrf_proof, epoch, threshold)?;
        // Lets a client say its quorum's newest epoch is behind the realm's (its verifiers lag).
        let newest = self.node.read.ratified_epoch();
        Ok(Response::new(LookupReply { proof, newest_epoch_hint: Some(newest.max(epoch)) }.into()))
    }

    async fn update(&self, request: Request<pb::UpdateRequest>) -> Result<Response<pb::UpdateResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let req = request.into_inner();
        check_size(req.encoded_len(), self.node.limits.request_bytes_max, "the request")?;
        check_size(req.update.len(), UPDATE_BYTES_MAX, "update")?;
        let user_id = self.check_user_id(&req.user_id)?;
        let update: Update = canonical("update", &req.update).map_err(|e| e.to_status())?;
        let threshold = req.verifier_threshold.map(|t| self.check_threshold(t)).transpose()?;
        let (index, vrf_proof) = self.index_of(&user_id)?;
        if update.signed.entry.index != index {
            return Err(Status::invalid_argument(
                "update: the entry's index is not the VRF index of user_id (look the user id up first to learn it)",
            ));
        }
        let id = update.id();
        let current = self.node.read.latest_update(&index)?;
        // Before any check of the update: failed attempts count too.
        // A recovery claims an identity as a registration does: limited as one.
        self.rate_limits.check_update(peer, &index, current.is_none() || req.recovery)?;
        let duplicate_epoch = {
            match &current {
                Some((epoch, stored)) if stored.id() == id => Some(*epoch),
                _ => {
                    // Rejections that do not depend on the open epoch are final here; the
                    // step re-checks everything against the state the update is applied to.
                    // Under the configuration in force (the realm file may be older).
                    let config = self.node.config();
                    let current_entry = current.as_ref().map(|(_, u)| &u.signed.entry);
                    let checked = if req.recovery {
                        check_recovery(&config, current_entry, &update)
                    } else {
                        // Signatures verified here are not verified again when applied.
                        check_update_memo(&config, current_entry, &update, &self.node.shared.signatures)
                    };
                    if let Err(reason) = checked {
                        self.updates.rejected(id, &reason);
                        return Err(rejection_status(&reason));
                    }
                    if req.recovery {
                        // The same proof as a first registration of the identity.
                        let proof = req.registration.as_ref().and_then(|r| r.proof.as_ref());
                        let policy = config.registration.as_ref();
                        let admitted = self.registrations.check_recovery(policy, &user_id, &id, proof).await?;
                        tracing::debug!(method = admitted.method(), "recovery admitted");
                    } else if current.is_none() {
                        let proof = req.registration.as_ref().and_then(|r| r.proof.as_ref());
                        // User ids stay out of logs: the state keeps none at rest, logs must not either.
                        let policy = config.registration.as_ref();
                        let admitted = self.registrations.check(policy, &user_id, &id, proof).await?;
                        tracing::debug!(method = admitted.method(), "registration admitted");
                    }
                    None
                }
            }
        };
        let (epoch, duplicate) = match duplicate_epoch {
            Some(e) => (e, true),
            None => {
                let result = {
                    let _proposing = self.updates.proposing(id);
                    let command = if req.recovery {
                        Command::RecoveryRequest(Box::new(update))
                    } else {
                        Command::Update(Box::new(update))
                    };
                    self.node.propose(&command).await
                };
                let response = result.map_err(|e| propose_status(&self.node, e))?;
                if let ApplyResponse::Applied(Outcome::UpdateRejected { reason, .. }) = &response {
                    self.updates.rejected(id, reason);
                }
                match outcome::answer(response)? {
                    Taken::Update { epoch, duplicate } => (epoch, duplicate),
                    other => return Err(Status::internal(format!("the log answered an update with {other:?}"))),
                }
            }
        };
        let mut proof = Vec::new();
        if let Some(t) = threshold {
            let wait_ms = u64::from(req.wait_ms);
            if self.node.read.wait_for(wait_ms, |s| Ok(s.satisfies(epoch, t)?.then_some(()))).await?.is_none() {
                return Err(Status::deadline_exceeded(format!(
                    "the update is in epoch {epoch}, which did not reach {t} verifier ratifications within {wait_ms} ms; look it up later"
                )));
            }
            proof = self.node.read.proof(&user_id, index, vrf_proof, epoch, t)?;
        }
        Ok(Response::new(pb::UpdateResponse { update_id: id.to_vec(), epoch, duplicate, proof }))
    }

    async fn send_email_code(
        &self,
        request: Request<pb::SendEmailCodeRequest>,
    ) -> Result<Response<pb::SendEmailCodeResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let req = request.into_inner();
        let user_id = self.check_user_id(&req.user_id)?;
        // Mail bombing: per address and per identity, before anything is sent.
        self.rate_limits.check_email_code(peer, &user_id)?;
        let update_id: [u8; 32] = req.update_id.as_slice().try_into().map_err(|_| {
            Status::invalid_argument(format!("update_id must be 32 bytes, got {}", req.update_id.len()))
        })?;
        let (index, _) = self.index_of(&user_id)?;
        // A registered identity takes a code only for a recovery (docs/protocol.md section 6.3),
        // where the realm allows one.
        let config = self.node.config();
        let recovery = req.recovery && keyraft_core::recovery::recovery_window_ms(&config).is_some();
        if !recovery && self.node.read.latest_update(&index)?.is_some() {
            return Err(Status::failed_precondition(format!(
                "{user_id:?} is already registered: its updates need its update policy's signatures, not a code \
                 (a code recovers it only with a recovery request, in a realm that allows recovery)"
            )));
        }
        let (address, expires_ms) =
            self.registrations.send_email_code(config.registration.as_ref(), &user_id, &update_id).await?;
        Ok(Response::new(pb::SendEmailCodeResponse { address, expires_ms }))
    }

    async fn get_update_status(
        &self,
        request: Request<pb::GetUpdateStatusRequest>,
    ) -> Result<Response<pb::GetUpdateStatusResponse>, Status> {
        let req = request.into_inner();
        let id: [u8; 32] = req.update_id.as_slice().try_into().map_err(|_| {
            Status::invalid_argument(format!("update_id must be 32 bytes, got {}", req.update_id.len()))
        })?;
        let answer = |state: State, epoch: u64, reason: String, retryable: bool| {
            Ok(Response::new(pb::GetUpdateStatusResponse { state: state as i32, epoch, reason, retryable }))
        };
        // An update in an epoch is IN_EPOCH even while a handler still waits for its proposal
        // (forwarded to a leader that applied it first).
        if !req.index.is_empty() {
            let index: [u8; 32] =
                req.index.as_slice().try_into().map_err(|_| {
                    Status::invalid_argument(format!("index must be 32 bytes, got {}", req.index.len()))
                })?;
            let history = self.node.read.blocking(move |read| read.history(&Index(index), u64::MAX, 1_000)).await?;
            if let Some((epoch, _)) = history.iter().find(|(_, u)| u.id() == id) {
                return answer(State::InEpoch, *epoch, String::new(), false);
            }
        }
        if self.updates.is_proposing(&id) {
            return answer(State::Pending, 0, String::new(), false);
        }
        if let Some(rejection) = self.updates.rejection(&id) {
            return answer(State::Rejected, 0, rejection.reason, rejection.retryable);
        }
        answer(State::Unknown, 0, String::new(), false)
    }

    async fn get_epoch(&self, request: Request<pb::GetEpochRequest>) -> Result<Response<pb::EpochInfo>, Status> {
        let mut epoch = request.into_inner().epoch;
        if epoch == 0 {
            epoch = self.node.read.last_epoch();
            if epoch == 0 {
                return Err(Status::not_found("the realm has no epoch yet"));
            }
        }
        self.node
            .read
            .epoch_info(epoch)?
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("epoch {epoch} does not exist")))
    }

    async fn list_epochs(
        &self,
        request: Request<pb::ListEpochsRequest>,
    ) -> Result<Response<pb::ListEpochsResponse>, Status> {
        let req = request.into_inner();
        let size = page_size(req.page_size)?;
        let newest = self.node.read.last_epoch();
        let cursor = match self.tokens.open(Listing::Epochs, &req.page_token)? {
            Some(c) if c.pinned > newest => return Err(lagging(c.pinned, newest)),
            Some(c) => c,
            None => Cursor { position: req.start_epoch.max(1), pinned: newest },
        };
        // A page reads at most `size` epochs, whatever the request says (every epoch up to the
        // newest exists, so none is skipped).
        let last = cursor.pinned.min(cursor.position.saturating_add(size as u64 - 1));
        let first = cursor.position;
        let epochs = self
            .node
            .read
            .blocking(move |read| {
                let mut epochs = Vec::new();
                for epoch in first..=last {
                    if let Some(info) = read.epoch_info(epoch)? {
                        epochs.push(info);
                    }
                }
                Ok(epochs)
            })
            .await?;
        let next_page_token = if last < cursor.pinned {
            self.tokens.issue(Listing::Epochs, Cursor { position: last + 1, pinned: cursor.pinned })
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::ListEpochsResponse { epochs, next_page_token }))
    }

    async fn history(&self, request: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let req = request.into_inner();
        let user_id = self.check_user_id(&req.user_id)?;
        // Its answer holds the user id's index too: the same VRF oracle as a lookup.
        self.rate_limits.check_lookup(peer, &user_id)?;
        let size = page_size(req.page_size)?;
        let threshold = self.check_threshold(req.verifier_threshold)?;
        let (index, vrf_proof) = self.index_of(&user_id)?;
        let listing = Listing::History(index);
        // A listing is pinned to the newest epoch satisfying the threshold, as a lookup
        // answers from: a newer one could not be proven with the ratifications asked for.
        let cursor = match self.tokens.open(listing, &req.page_token)? {
            Some(c) => {
                let ratified = self.node.read.ratified_epoch();
                if c.pinned > ratified {
                    return Err(lagging(c.pinned, ratified));
                }
                c
            }
            None => match self.node.read.newest_satisfying(0, threshold)? {
                Some(newest) => Cursor { position: newest + 1, pinned: newest },
                None => return Err(self.not_ratified_yet(0, threshold, None)),
            },
        };
        let before = cursor.position.min(cursor.pinned.saturating_add(1));
        let first_page = req.page_token.is_empty();
        let pinned = cursor.pinned;

        let (epochs, versions, current) = self
            .node
            .read
            .blocking(move |read| {
                let history = read.history(&index, before, size + 1)?;
                let mut versions = Vec::new();
                for (epoch, update) in history.iter().take(size) {
                    // A version in an epoch lacking the threshold (one a verifier skipped, or
                    // one before a verifier joined) is still listed, proven by the replica
                    // majority alone: leaving it out would be a gap in the history, which
                    // clients of protocol version 2 take for misbehaviour. They flag it.
                    let proven_with = if read.satisfies(*epoch, threshold)? { threshold } else { 0 };
                    let proof = read.proof(&user_id, index, vrf_proof, *epoch, proven_with)?;
                    versions.push(pb::HistoryVersion { version: update.signed.entry.version, epoch: *epoch, proof });
                }
                let current =
                    if first_page { read.proof(&user_id, index, vrf_proof, pinned, threshold)? } else { Vec::new() };
                Ok((history.into_iter().map(|(epoch, _)| epoch).collect::<Vec<u64>>(), versions, current))
            })
            .await?;
        // More than `size` were read: the next page lists those before the last one scanned.
        let next_page_token = match epochs.get(size - 1) {
            Some(last) if epochs.len() > size => {
                self.tokens.issue(listing, Cursor { position: *last, pinned: cursor.pinned })
            }
            _ => Vec::new(),
        };
        Ok(Response::new(pb::HistoryResponse { versions, next_page_token, current }))
    }

    type WatchStream = BoxStream<pb::WatchEvent>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let req = request.into_inner();
        let user_id = self.check_user_id(&req.user_id)?;
        // Its answer holds the user id's index too: the same VRF oracle as a lookup.
        self.rate_limits.check_lookup(peer, &user_id)?;
        let threshold = self.check_threshold(req.verifier_threshold)?;
        let (index, vrf_proof) = self.index_of(&user_id)?;
        let target = crate::watch::Target { user_id, index, vrf_proof, threshold, from_epoch: req.from_epoch };
        let stream = crate::watch::start(self.node.clone(), target, &self.watch_streams)?;
        Ok(Response::new(Box::pin(stream)))
    }

    type VerifierStreamStream = crate::verifier_stream::FrameStream;

    async fn verifier_stream(
        &self,
        request: Request<pb::VerifierStreamRequest>,
    ) -> Result<Response<Self::VerifierStreamStream>, Status> {
        let req = request.get_ref();
        // Registered verifiers only (docs/protocol.md section 7.1): the stream links every
        // update of an identity through its owner keys.
        if req.verifier_key.is_empty() && req.access_signature.is_empty() {
            return Err(Status::unauthenticated(
                "the verifier stream is served to the realm's registered verifiers: sign the request with a verifier \
                 key (verifier_key, access_time_ms, access_signature; docs/protocol.md section 7.1)",
            ));
        }
        let access = keyraft_proto::convert::stream_access(req).map_err(|e| e.to_status())?;
        let config = self.node.config();
        keyraft_core::verifier_access::check_stream_access(&config, &access, self.clock.now_ms(), self.skew_ms)
            .map_err(|e| match e {
                keyraft_core::verifier_access::StreamAccessError::NotAVerifier(_) => {
                    Status::permission_denied(e.to_string())
                }
                _ => Status::unauthenticated(e.to_string()),
            })?;
        tracing::debug!(verifier = %access.verifier, "verifier stream opened");
        crate::verifier_stream::start(self.node.clone(), req, &self.verifier_streams).map(Response::new)
    }

    async fn get_config_chain(
        &self,
        request: Request<pb::GetConfigChainRequest>,
    ) -> Result<Response<pb::GetConfigChainResponse>, Status> {
        let from: Digest = request.into_inner().from_config_hash.as_slice().try_into().map_err(|_| {
            Status::invalid_argument("from_config_hash: expected the 32 bytes of a configuration's config_hash")
        })?;
        let changes = self.node.read.config_changes_after(&from).ok_or_else(|| {
            Status::not_found(format!(
                "from_config_hash: configuration {} was never this realm's (check the realm file)",
                hex::encode(&from[..8])
            ))
        })?;
        Ok(Response::new(pb::GetConfigChainResponse { changes: changes.iter().map(Canonical::encode).collect() }))
    }

    async fn push_ratification(
        &self,
        request: Request<pb::PushRatificationRequest>,
    ) -> Result<Response<pb::PushRatificationResponse>, Status> {
        let req = request.into_inner();
        let verifier = public_key("verifier", &req.verifier).map_err(|e| e.to_status())?;
        let signature = signature("signature", &req.signature).map_err(|e| e.to_status())?;
        let head: EpochHead = canonical("head", &req.head).map_err(|e| e.to_status())?;
        // Registered in the configuration the epoch's head commits to.
        if !self.node.read.config_of_epoch(req.epoch).verifier_keys.contains(&verifier) {
            return Err(Status::permission_denied(format!(
                "verifier: this key is not a verifier registered in the realm's configuration of epoch {}",
                req.epoch
            )));
        }
        if head.epoch != req.epoch {
            return Err(Status::invalid_argument(format!(
                "head is for epoch {}, the request says {}",
                head.epoch, req.epoch
            )));
        }
        let read = &self.node.read;
        let Some(stored) = read.head(req.epoch)? else {
            return Err(Status::not_found(format!("epoch {} does not exist", req.epoch)));
        };
        if req.epoch > read.ratified_epoch() {
            // This replica may only lag: the verifier should retry, here or elsewhere.
            return Err(Status::unavailable(format!(
                "epoch {} is not keyserver-ratified on this replica yet; retry",
                req.epoch
            )));
        }
        if stored != head {
            return Err(Status::failed_precondition(format!(
                "head: differs from this realm's head of epoch {}; your recomputation diverged",
                req.epoch
            )));
        }
        if !verifier.verify(&ratification_message(&head), &signature) {
            return Err(Status::invalid_argument("signature: does not verify over the head"));
        }
        if read.verifier_signatures(req.epoch)?.iter().any(|(k, _)| *k == verifier) {
            return Ok(Response::new(pb::PushRatificationResponse { duplicate: true }));
        }
        let command = Command::VerifierSignature { epoch: req.epoch, verifier, signature };
        let response = self.node.propose(&command).await.map_err(|e| propose_status(&self.node, e))?;
        match outcome::answer(response)? {
            Taken::Signature { duplicate, .. } => Ok(Response::new(pb::PushRatificationResponse { duplicate })),
            other => Err(Status::internal(format!("the log answered a ratification with {other:?}"))),
        }
    }
}
