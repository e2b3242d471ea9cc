//! The public gRPC service (`keyraft.v1.Keyraft`): every replica answers from its applied
//! state; updates are validated here, at the edge, and then proposed through the leader.
//!
//! Error statuses follow `proto/keyraft/v1/keyraft.proto`: INVALID_ARGUMENT for malformed
//! input (naming the field), FAILED_PRECONDITION for conflicts with the state,
//! RESOURCE_EXHAUSTED over a size limit, UNAVAILABLE (with a `leader-hint`) when no leader is
//! known or a retry will help, DEADLINE_EXCEEDED when a wait runs out.

use crate::node::{Node, ProposeError};
use crate::raft::types::ApplyResponse;
use keyraft_core::limits::{UPDATE_BYTES_MAX, USER_ID_BYTES_MAX};
use keyraft_core::lookup::ratification_message;
use keyraft_core::types::{validate_user_id, vrf_input};
use keyraft_core::update::check_update;
use keyraft_core::vrf::VrfProof;
use keyraft_core::{Canonical, Command, EpochHead, Index, PublicKey, Signature, Update, UpdateRejection};
use keyraft_proto::convert::{canonical, public_key, signature};
use keyraft_proto::pb::keyraft_server::Keyraft;
use keyraft_proto::pb::{self, get_update_status_response::State};
use keyraft_state::StateError;
use prost::Message as _;
use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// Default page size of list calls.
pub const PAGE_SIZE_DEFAULT: u32 = 100;
/// Largest page size of list calls.
pub const PAGE_SIZE_MAX: u32 = 1000;
/// How many VRF results are cached (a lookup's VRF proof costs about 130 us).
const VRF_CACHE_ENTRIES_MAX: usize = 100_000;
/// How many recent rejections `GetUpdateStatus` remembers.
const REJECTIONS_REMEMBERED_MAX: usize = 10_000;
/// How far back a lookup searches for an epoch satisfying its verifier threshold.
const QUORUM_SEARCH_EPOCHS_MAX: u64 = 256;
const PAGE_TOKEN_VERSION: u8 = 1;

/// Recent rejections by update id (reason, retryable), oldest first in the queue.
type Rejections = (HashMap<[u8; 32], (String, bool)>, VecDeque<[u8; 32]>);

/// The public service of one replica.
#[derive(Clone)]
pub struct PublicService {
    node: Arc<Node>,
    vrf_cache: Arc<Mutex<HashMap<String, (Index, VrfProof)>>>,
    pending: Arc<Mutex<HashSet<[u8; 32]>>>,
    rejections: Arc<Mutex<Rejections>>,
    /// Open `Watch` streams, against `limits.watch_streams_max`.
    pub(crate) watch_streams: Arc<std::sync::atomic::AtomicUsize>,
    /// Open `VerifierStream`s, against `limits.verifier_streams_max`.
    verifier_streams: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for PublicService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicService").field("node", &self.node.id).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn internal(e: StateError) -> Status {
    tracing::error!(error = %e, "state read failed");
    Status::internal(format!("this replica failed to read its state: {e}"))
}

fn rejection_status(reason: &UpdateRejection) -> Status {
    if reason.is_retryable() {
        Status::unavailable(format!("update refused for now, retry later: {reason}"))
    } else {
        Status::failed_precondition(format!("update refused: {reason}"))
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

/// Page tokens: version, the next position and the epoch the listing is pinned to.
fn encode_token(next: u64, pinned: u64) -> Vec<u8> {
    let mut t = vec![PAGE_TOKEN_VERSION];
    t.extend_from_slice(&next.to_be_bytes());
    t.extend_from_slice(&pinned.to_be_bytes());
    t
}

fn decode_token(token: &[u8]) -> Result<Option<(u64, u64)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() != 17 || token[0] != PAGE_TOKEN_VERSION {
        return Err(Status::invalid_argument("page_token is not a token this server issued"));
    }
    let next = u64::from_be_bytes(token[1..9].try_into().map_err(|_| Status::invalid_argument("page_token"))?);
    let pinned = u64::from_be_bytes(token[9..17].try_into().map_err(|_| Status::invalid_argument("page_token"))?);
    Ok(Some((next, pinned)))
}

fn key_signatures(sigs: Vec<(PublicKey, Signature)>) -> Vec<pb::KeySignature> {
    sigs.into_iter().map(|(k, s)| pb::KeySignature { signer: k.as_bytes().to_vec(), signature: s.0.to_vec() }).collect()
}

impl PublicService {
    /// The service of `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            vrf_cache: Arc::default(),
            pending: Arc::default(),
            rejections: Arc::default(),
            watch_streams: Arc::default(),
            verifier_streams: Arc::default(),
        }
    }

    pub(crate) fn check_user_id(user_id: &str) -> Result<(), Status> {
        check_size(user_id.len(), USER_ID_BYTES_MAX, "user_id")?;
        validate_user_id(user_id).map_err(|e| Status::invalid_argument(format!("user_id: {e}")))
    }

    /// The user id's index and VRF proof (cached: proving costs about 130 us).
    pub(crate) fn index_of(&self, user_id: &str) -> Result<(Index, VrfProof), Status> {
        if let Some(hit) = lock(&self.vrf_cache).get(user_id) {
            return Ok(*hit);
        }
        let (proof, output) = self
            .node
            .vrf
            .prove_with_output(&vrf_input(&self.node.realm.realm, user_id))
            .map_err(|e| Status::internal(format!("VRF: {e}")))?;
        let mut index = [0u8; 32];
        index.copy_from_slice(&output.as_bytes()[..32]);
        let result = (Index(index), proof);
        let mut cache = lock(&self.vrf_cache);
        if cache.len() >= VRF_CACHE_ENTRIES_MAX {
            cache.clear();
        }
        cache.insert(user_id.to_owned(), result);
        Ok(result)
    }

    pub(crate) fn check_threshold(&self, threshold: u32) -> Result<usize, Status> {
        let n = self.node.realm.verifier_keys.len();
        if threshold as usize > n {
            return Err(Status::invalid_argument(format!(
                "verifier_threshold {threshold} exceeds the {n} verifiers registered in the realm"
            )));
        }
        Ok(threshold as usize)
    }

    /// Whether `epoch` is keyserver-ratified and has `threshold` verifier ratifications.
    pub(crate) fn satisfies(&self, epoch: u64, threshold: usize) -> Result<bool, Status> {
        let m = self.node.shared.read();
        if epoch == 0 || epoch > m.epoch_state().ratified_epoch {
            return Ok(false);
        }
        Ok(threshold == 0 || m.verifier_signatures(epoch).map_err(internal)?.len() >= threshold)
    }

    /// The newest epoch at or after `min_epoch` satisfying `threshold`, if any.
    pub(crate) fn newest_satisfying(&self, min_epoch: u64, threshold: usize) -> Result<Option<u64>, Status> {
        let ratified = self.node.shared.applied().epoch_state.ratified_epoch;
        let lowest = min_epoch.max(1).max(ratified.saturating_sub(QUORUM_SEARCH_EPOCHS_MAX));
        let mut e = ratified;
        while e >= lowest && e > 0 {
            if self.satisfies(e, threshold)? {
                return Ok(Some(e));
            }
            e -= 1;
        }
        Ok(None)
    }

    /// Waits (up to `wait_ms`) until `probe`, which looks at epochs and their signatures
    /// only, returns something; woken when those change, not on every update.
    async fn wait_for<T>(
        &self,
        wait_ms: u64,
        mut probe: impl FnMut(&Self) -> Result<Option<T>, Status>,
    ) -> Result<Option<T>, Status> {
        let deadline = Instant::now() + Duration::from_millis(wait_ms.min(self.node.limits.wait_ms_max));
        let mut changes = self.node.shared.subscribe_epochs();
        loop {
            changes.borrow_and_update();
            if let Some(v) = probe(self)? {
                return Ok(Some(v));
            }
            match tokio::time::timeout_at(deadline.into(), changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Status::unavailable("this replica is shutting down")),
                Err(_) => return Ok(None),
            }
        }
    }

    pub(crate) fn proof(
        &self,
        user_id: &str,
        index: Index,
        vrf_proof: VrfProof,
        epoch: u64,
        threshold: usize,
    ) -> Result<Vec<u8>, Status> {
        let parts = self
            .node
            .shared
            .read()
            .lookup_parts(&index, epoch, threshold)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("epoch {epoch} has no head")))?;
        Ok(parts.into_proof(user_id, vrf_proof).encode())
    }

    fn remember_rejection(&self, id: [u8; 32], reason: String, retryable: bool) {
        let mut guard = lock(&self.rejections);
        let (map, order) = &mut *guard;
        if map.insert(id, (reason, retryable)).is_none() {
            order.push_back(id);
        }
        while order.len() > REJECTIONS_REMEMBERED_MAX {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    fn epoch_info(&self, epoch: u64) -> Result<Option<pb::EpochInfo>, Status> {
        let m = self.node.shared.read();
        let Some(head) = m.head(epoch).map_err(internal)? else { return Ok(None) };
        Ok(Some(pb::EpochInfo {
            head: head.encode(),
            replica_signatures: key_signatures(m.replica_signatures(epoch).map_err(internal)?),
            verifier_signatures: key_signatures(m.verifier_signatures(epoch).map_err(internal)?),
        }))
    }
}

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Keyraft for PublicService {
    async fn lookup(&self, request: Request<pb::LookupRequest>) -> Result<Response<pb::LookupResponse>, Status> {
        let req = request.into_inner();
        Self::check_user_id(&req.user_id)?;
        let threshold = self.check_threshold(req.verifier_threshold)?;
        let (index, vrf_proof) = self.index_of(&req.user_id)?;
        let wait_ms = u64::from(req.wait_ms);
        let epoch = if req.epoch != 0 {
            if req.min_epoch > req.epoch {
                return Err(Status::invalid_argument("min_epoch is above the requested epoch"));
            }
            let e = req.epoch;
            match self.wait_for(wait_ms, |s| Ok(s.satisfies(e, threshold)?.then_some(e))).await? {
                Some(e) => e,
                None => {
                    let newest = self.node.shared.applied().epoch_state.ratified_epoch;
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
            match self.wait_for(wait_ms, |s| s.newest_satisfying(req.min_epoch, threshold)).await? {
                Some(e) => e,
                None => {
                    let newest = self.node.shared.applied().epoch_state.ratified_epoch;
                    if newest == 0 {
                        return Err(Status::unavailable(
                            "the realm has no keyserver-ratified epoch yet; retry shortly",
                        ));
                    }
                    return Err(Status::deadline_exceeded(format!(
                        "no epoch at or after {} with {threshold} verifier ratifications (newest ratified epoch is {newest}, waited {wait_ms} ms)",
                        req.min_epoch
                    )));
                }
            }
        };
        let proof = self.proof(&req.user_id, index, vrf_proof, epoch, threshold)?;
        Ok(Response::new(pb::LookupResponse { proof }))
    }

    async fn update(&self, request: Request<pb::UpdateRequest>) -> Result<Response<pb::UpdateResponse>, Status> {
        let req = request.into_inner();
        check_size(req.encoded_len(), self.node.limits.request_bytes_max, "the request")?;
        check_size(req.update.len(), UPDATE_BYTES_MAX, "update")?;
        Self::check_user_id(&req.user_id)?;
        let update: Update = canonical("update", &req.update).map_err(|e| e.to_status())?;
        let threshold = req.verifier_threshold.map(|t| self.check_threshold(t)).transpose()?;
        let (index, vrf_proof) = self.index_of(&req.user_id)?;
        if update.signed.entry.index != index {
            return Err(Status::invalid_argument(
                "update: the entry's index is not the VRF index of user_id (look the user id up first to learn it)",
            ));
        }
        let id = update.id();
        let duplicate_epoch = {
            let m = self.node.shared.read();
            let current = m.latest_update(&index).map_err(internal)?;
            match &current {
                Some((epoch, stored)) if stored.id() == id => Some(*epoch),
                _ => {
                    // Rejections that do not depend on the open epoch are final here; the
                    // step re-checks everything against the state the update is applied to.
                    if let Err(reason) =
                        check_update(&self.node.realm.realm, current.as_ref().map(|(_, u)| &u.signed.entry), &update)
                    {
                        self.remember_rejection(id, reason.to_string(), reason.is_retryable());
                        return Err(rejection_status(&reason));
                    }
                    None
                }
            }
        };
        let (epoch, duplicate) = match duplicate_epoch {
            Some(e) => (e, true),
            None => {
                lock(&self.pending).insert(id);
                let result = self.node.propose(&Command::Update(Box::new(update))).await;
                lock(&self.pending).remove(&id);
                match result.map_err(|e| propose_status(&self.node, e))? {
                    ApplyResponse::UpdateAccepted { epoch, .. } => (epoch, false),
                    ApplyResponse::UpdateDuplicate { epoch, .. } => (epoch, true),
                    ApplyResponse::UpdateRejected { reason, retryable, .. } => {
                        self.remember_rejection(id, reason.clone(), retryable);
                        return Err(if retryable {
                            Status::unavailable(format!("update refused for now, retry later: {reason}"))
                        } else {
                            Status::failed_precondition(format!("update refused: {reason}"))
                        });
                    }
                    other => return Err(Status::internal(format!("unexpected apply result for an update: {other:?}"))),
                }
            }
        };
        let mut proof = Vec::new();
        if let Some(t) = threshold {
            let wait_ms = u64::from(req.wait_ms);
            if self.wait_for(wait_ms, |s| Ok(s.satisfies(epoch, t)?.then_some(()))).await?.is_none() {
                return Err(Status::deadline_exceeded(format!(
                    "the update is in epoch {epoch}, which did not reach {t} verifier ratifications within {wait_ms} ms; look it up later"
                )));
            }
            proof = self.proof(&req.user_id, index, vrf_proof, epoch, t)?;
        }
        Ok(Response::new(pb::UpdateResponse { update_id: id.to_vec(), epoch, duplicate, proof }))
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
        if lock(&self.pending).contains(&id) {
            return answer(State::Pending, 0, String::new(), false);
        }
        if !req.index.is_empty() {
            let index: [u8; 32] =
                req.index.as_slice().try_into().map_err(|_| {
                    Status::invalid_argument(format!("index must be 32 bytes, got {}", req.index.len()))
                })?;
            let history = self.node.shared.read().update_history(&Index(index), u64::MAX, 1_000).map_err(internal)?;
            if let Some((epoch, _)) = history.iter().find(|(_, u)| u.id() == id) {
                return answer(State::InEpoch, *epoch, String::new(), false);
            }
        }
        if let Some((reason, retryable)) = lock(&self.rejections).0.get(&id).cloned() {
            return answer(State::Rejected, 0, reason, retryable);
        }
        answer(State::Unknown, 0, String::new(), false)
    }

    async fn get_epoch(&self, request: Request<pb::GetEpochRequest>) -> Result<Response<pb::EpochInfo>, Status> {
        let mut epoch = request.into_inner().epoch;
        if epoch == 0 {
            epoch = self.node.shared.applied().epoch_state.last_epoch;
            if epoch == 0 {
                return Err(Status::not_found("the realm has no epoch yet"));
            }
        }
        self.epoch_info(epoch)?
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("epoch {epoch} does not exist")))
    }

    async fn list_epochs(
        &self,
        request: Request<pb::ListEpochsRequest>,
    ) -> Result<Response<pb::ListEpochsResponse>, Status> {
        let req = request.into_inner();
        let size = page_size(req.page_size)?;
        let (start, pinned) = match decode_token(&req.page_token)? {
            Some(t) => t,
            None => (req.start_epoch.max(1), self.node.shared.applied().epoch_state.last_epoch),
        };
        let mut epochs = Vec::new();
        let mut e = start;
        while e <= pinned && epochs.len() < size {
            if let Some(info) = self.epoch_info(e)? {
                epochs.push(info);
            }
            e += 1;
        }
        let next_page_token = if e <= pinned { encode_token(e, pinned) } else { Vec::new() };
        Ok(Response::new(pb::ListEpochsResponse { epochs, next_page_token }))
    }

    async fn history(&self, request: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        let req = request.into_inner();
        Self::check_user_id(&req.user_id)?;
        let size = page_size(req.page_size)?;
        let threshold = self.check_threshold(req.verifier_threshold)?;
        let (index, vrf_proof) = self.index_of(&req.user_id)?;
        let (before, pinned) = match decode_token(&req.page_token)? {
            Some(t) => t,
            None => {
                let ratified = self.node.shared.applied().epoch_state.ratified_epoch;
                (ratified.saturating_add(1), ratified)
            }
        };
        let history = self
            .node
            .shared
            .read()
            .update_history(&index, before.min(pinned.saturating_add(1)), size + 1)
            .map_err(internal)?;
        let mut versions = Vec::new();
        for (epoch, update) in history.iter().take(size) {
            let proof = self.proof(&req.user_id, index, vrf_proof, *epoch, threshold)?;
            versions.push(pb::HistoryVersion { version: update.signed.entry.version, epoch: *epoch, proof });
        }
        let next_page_token = match (history.len() > size, versions.last()) {
            (true, Some(last)) => encode_token(last.epoch, pinned),
            _ => Vec::new(),
        };
        Ok(Response::new(pb::HistoryResponse { versions, next_page_token }))
    }

    type WatchStream = BoxStream<pb::WatchEvent>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        Self::check_user_id(&req.user_id)?;
        let threshold = self.check_threshold(req.verifier_threshold)?;
        let (index, vrf_proof) = self.index_of(&req.user_id)?;
        let target =
            crate::watch::Target { user_id: req.user_id, index, vrf_proof, threshold, from_epoch: req.from_epoch };
        let stream = crate::watch::start(self.clone(), self.node.clone(), target)?;
        Ok(Response::new(Box::pin(stream)))
    }

    type VerifierStreamStream = crate::verifier_stream::FrameStream;

    async fn verifier_stream(
        &self,
        request: Request<pb::VerifierStreamRequest>,
    ) -> Result<Response<Self::VerifierStreamStream>, Status> {
        crate::verifier_stream::start(self.node.clone(), request.get_ref(), &self.verifier_streams).map(Response::new)
    }

    async fn push_ratification(
        &self,
        request: Request<pb::PushRatificationRequest>,
    ) -> Result<Response<pb::PushRatificationResponse>, Status> {
        let req = request.into_inner();
        let verifier = public_key("verifier", &req.verifier).map_err(|e| e.to_status())?;
        let signature = signature("signature", &req.signature).map_err(|e| e.to_status())?;
        let head: EpochHead = canonical("head", &req.head).map_err(|e| e.to_status())?;
        if !self.node.realm.verifier_keys.contains(&verifier) {
            return Err(Status::permission_denied("verifier: this key is not a verifier registered in the realm"));
        }
        if head.epoch != req.epoch {
            return Err(Status::invalid_argument(format!(
                "head is for epoch {}, the request says {}",
                head.epoch, req.epoch
            )));
        }
        {
            let m = self.node.shared.read();
            let Some(stored) = m.head(req.epoch).map_err(internal)? else {
                return Err(Status::not_found(format!("epoch {} does not exist", req.epoch)));
            };
            if req.epoch > m.epoch_state().ratified_epoch {
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
            if m.verifier_signatures(req.epoch).map_err(internal)?.iter().any(|(k, _)| *k == verifier) {
                return Ok(Response::new(pb::PushRatificationResponse { duplicate: true }));
            }
        }
        let command = Command::VerifierSignature { epoch: req.epoch, verifier, signature };
        match self.node.propose(&command).await.map_err(|e| propose_status(&self.node, e))? {
            ApplyResponse::SignatureStored { .. } => {
                Ok(Response::new(pb::PushRatificationResponse { duplicate: false }))
            }
            ApplyResponse::Ignored(_) => Ok(Response::new(pb::PushRatificationResponse { duplicate: true })),
            other => Err(Status::failed_precondition(format!("ratification refused: {other:?}"))),
        }
    }
}
