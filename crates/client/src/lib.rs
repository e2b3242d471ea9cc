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
//!   wrong". An answer that proves nothing false but is of no use (too old for the TTL, an
//!   epoch not ratified by the verifiers the client requires yet, "try again") sends the client
//!   to the next replica, and the replica is asked last for [`ENDPOINT_DEMOTION_MS`].
//!
//! What a client accepts is its [`ClientRealm`]: the realm file's keys plus a quorum (the
//! replica majority, always, and a verifier threshold), an epoch TTL and a clock skew, each
//! of which [`ClientOptions`] may tighten or relax. The client remembers the newest epoch it
//! has verified per realm ([`EpochMemory`], optionally in a file) and rejects answers from
//! older epochs: a rollback. [`ProofChecker`] holds these rules and the memory; it verifies
//! saved proofs offline the same way.
#![forbid(unsafe_code)]

mod checker;
mod memory;
mod watch;

pub use checker::ProofChecker;
pub use memory::{EpochMemory, OWN_UPDATES_MAX};
pub use watch::{Watch, WatchUpdate, WATCH_RECONNECT_ROUNDS_MAX};

use ed25519_dalek::SigningKey;
use keyraft_core::clock::{Clock, SystemClock};
use keyraft_core::lookup::{ClientRealm, Lookup, LookupProof, VerifyError};
use keyraft_core::{
    decode_canonical, Canonical, Entry, EpochHead, Policy, Profile, RealmFile, SignedEntry, Update, Verified,
};
use keyraft_proto::convert::LookupReply;
use keyraft_proto::pb::get_update_status_response::State;
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::{
    GetEpochRequest, GetUpdateStatusRequest, HistoryRequest, LookupRequest, UpdateRequest, UpdateResponse,
};
use keyraft_proto::transport::{ChannelOptions, Channels};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Deadline of one call, in milliseconds, on top of any server-side wait the call asks for.
pub const CALL_TIMEOUT_MS: u64 = 10_000;
/// How long a replica gets to accept a connection, in milliseconds.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// How long an update waiting for the quorum lets the server wait, in milliseconds.
pub const QUORUM_WAIT_MS: u32 = 10_000;
/// How long a replica may wait to reach the newest epoch this client has seen, in
/// milliseconds: an honest replica one epoch behind catches up well within this.
pub const LAG_WAIT_MS: u32 = 3_000;
/// Bytes of random nonce in profiles this client creates.
pub const PROFILE_NONCE_BYTES: usize = 32;
/// How long a replica that answered "try again", stale or not ratified yet is asked after the
/// others, in milliseconds.
pub const ENDPOINT_DEMOTION_MS: u64 = 30_000;
/// How long an update answered "try again" is resubmitted, the same bytes each time (an update
/// is idempotent: one applied meanwhile is answered as a duplicate), in milliseconds.
pub const UPDATE_RETRY_MS: u64 = 10_000;
/// First delay between two submissions of an update, in milliseconds (doubled each time).
const UPDATE_RETRY_DELAY_MS: u64 = 250;
/// Longest delay between two submissions of an update, in milliseconds.
const UPDATE_RETRY_DELAY_MAX_MS: u64 = 2_000;

/// What went wrong, by whose fault.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The caller's input or configuration is wrong; retrying will not help.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The server refused the request as it stands (a version or policy conflict, an unknown
    /// epoch); the message says why.
    #[error("refused by the server ({}): {message}", code_in_words(*code))]
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
    /// An update that was to wait for its ratification is in an epoch, which did not reach the
    /// verifier ratifications this client requires within the wait: it was accepted and stays
    /// applied (its status says where; a lookup proves it once ratified). Do not resubmit it.
    #[error(
        "accepted in epoch {epoch}; not yet ratified by {verifiers} verifier{} (update id {}): look it up later",
        if *verifiers == 1 { "" } else { "s" },
        hex::encode(update_id)
    )]
    NotRatifiedYet {
        /// The update's id.
        update_id: Vec<u8>,
        /// The epoch it is in.
        epoch: u64,
        /// How many verifier ratifications this client requires.
        verifiers: usize,
    },
}

impl ClientError {
    /// Whether the server, not the network or the caller, is at fault: keep the evidence.
    pub fn is_misbehavior(&self) -> bool {
        matches!(self, Self::Misbehaved(_) | Self::Contradicted(_))
    }

    /// Whether another replica may answer usefully: "try again", a stale answer, an epoch not
    /// ratified yet, an epoch beyond the replica's newest, or an answer older than one already
    /// seen (a lagging or lying replica; reported if no replica does better).
    pub(crate) fn try_elsewhere(&self) -> bool {
        // OUT_OF_RANGE: the epoch asked for is beyond the replica's newest; a replica far
        // behind (a full disk, a partition) says so about epochs its peers have.
        matches!(
            self,
            Self::Unavailable(_)
                | Self::Stale(_)
                | Self::Misbehaved(VerifyError::Rollback { .. })
                | Self::Refused { code: tonic::Code::OutOfRange, .. }
        )
    }

    /// Which error of several to report: the most telling one.
    fn weight(&self) -> u8 {
        match self {
            Self::Misbehaved(_) | Self::Contradicted(_) => 3,
            Self::Stale(_) => 2,
            _ => 1,
        }
    }
}

/// The one classification of a proof that does not verify. A head older than the TTL is
/// stale and a head lacking the verifier ratifications the client requires is not ratified
/// yet: neither proves a signed statement false, so both are worth retrying (later, on another
/// replica, or for an older epoch). Anything else in the proof that fails, even with the
/// ratifications missing, proves the replica wrong.
pub(crate) fn verify_classified<T>(
    realm: &ClientRealm,
    epoch: u64,
    verify: impl Fn(&ClientRealm) -> Result<T, VerifyError>,
) -> Result<T, ClientError> {
    let classify = |e: VerifyError| match e {
        VerifyError::HeadExpired { .. } => ClientError::Stale(e),
        e => ClientError::Misbehaved(e),
    };
    match verify(realm) {
        Ok(v) => Ok(v),
        Err(VerifyError::VerifierQuorumMissing { have, need }) => {
            let lenient = ClientRealm { verifier_threshold: have, ..realm.clone() };
            match verify(&lenient) {
                Err(e) => Err(classify(e)),
                Ok(_) => Err(ClientError::Unavailable(format!(
                    "epoch {epoch} is not ratified yet: it has {have} of the {need} verifier ratifications this client requires (retry later or on another replica, or ask for an older epoch)"
                ))),
            }
        }
        Err(e) => Err(classify(e)),
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
    /// The replica (its endpoint address) whose answer this is (`None`: a proof verified
    /// offline).
    pub endpoint: Option<String>,
    /// The newest keyserver-ratified epoch that replica said it holds: an unauthenticated hint
    /// (the proof alone is trusted), for telling the user that the answer's epoch is behind
    /// the realm's (`None`: not said).
    pub newest_epoch_hint: Option<u64>,
}

impl LookupAnswer {
    /// Epochs newer than this answer's that the answering replica says exist (its hint), when
    /// there are any: the quorum this client requires has not ratified them yet.
    pub fn newer_epochs_hint(&self) -> Option<u64> {
        self.newest_epoch_hint.filter(|&newest| newest > self.lookup.epoch())
    }
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
    /// The clock freshness is judged by (`None`: the host's).
    pub clock: Option<Arc<dyn Clock>>,
    /// How to reach the endpoints (`None`: TCP with [`client_channel_options`]).
    pub channels: Option<Channels>,
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
    /// The profile keys of the entry the update replaced (empty for a registration).
    pub previous_keys: BTreeMap<String, Vec<u8>>,
    /// The profile keys the update published.
    pub keys: BTreeMap<String, Vec<u8>>,
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

/// Where an update is, as a replica reports it ([`Client::update_status`]; not a proof: a
/// lookup proves it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateStatus {
    /// The replica does not know it (never received, or rejected long ago).
    Unknown,
    /// Received and not applied yet.
    Pending,
    /// Applied in this epoch.
    InEpoch(u64),
    /// Refused.
    Rejected {
        /// Why.
        reason: String,
        /// Whether resubmitting it later may succeed.
        retryable: bool,
    },
}

/// A page of an identity's history, newest first, each version proven at its epoch.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// `(version, answer)`: each answer is verified at the epoch the version appeared in.
    pub versions: Vec<(u64, LookupAnswer)>,
    /// The replica (its endpoint address) that answered the page.
    pub endpoint: String,
    /// The token of the next (older) page, empty at the end.
    pub next_page_token: Vec<u8>,
}

/// A client of one realm.
#[derive(Debug, Clone)]
pub struct Client {
    /// What it trusts and remembers.
    checker: Arc<ProofChecker>,
    pub(crate) endpoints: Vec<(String, KeyraftClient<Channel>)>,
    /// Per endpoint, until when it is asked after the others (it answered stale, not ratified
    /// yet or "try again"); shared by the clones of this client.
    demoted: Arc<Mutex<Vec<Option<Instant>>>>,
}

/// The host's time in milliseconds since the Unix epoch (a [`Client`] reads the clock in
/// its [`ClientOptions`]).
pub fn now_ms() -> u64 {
    SystemClock.now_ms()
}

/// How a client's channels connect by default.
pub fn client_channel_options() -> ChannelOptions {
    ChannelOptions { connect_timeout_ms: Some(CONNECT_TIMEOUT_MS), tcp_nodelay: true, keep_alive: None }
}

pub(crate) fn status_error(endpoint: &str, status: &tonic::Status) -> ClientError {
    use tonic::Code;
    let message = format!("{endpoint}: {}", status_in_words(status));
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal
        | Code::Aborted => ClientError::Unavailable(message),
        code => ClientError::Refused { code, message: format!("{endpoint}: {}", status.message()) },
    }
}

/// A gRPC status code in words, for messages: "failed precondition", "unavailable".
pub fn code_in_words(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "not implemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Why a call failed on the way to or from the server, in words, when the network (not the
/// server) ended it: "connection refused", "timed out after 2 s" (connecting), "no answer
/// within the call's deadline".
pub fn network_cause(status: &tonic::Status) -> Option<String> {
    use std::error::Error as _;
    let mut cause = status.source();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                // The only timeout below a call's own deadline is the connect timeout.
                std::io::ErrorKind::TimedOut => {
                    format!("timed out after {} s", CONNECT_TIMEOUT_MS.div_ceil(1_000))
                }
                _ => io.to_string(),
            });
        }
        if c.downcast_ref::<tonic::TimeoutExpired>().is_some() {
            return Some("no answer within the call's deadline".to_owned());
        }
        cause = c.source();
    }
    None
}

/// A status in words, never tonic's `Debug` structures: the network cause when the call never
/// got an answer ("connection refused"), else "<code in words>: <message>".
pub fn status_in_words(status: &tonic::Status) -> String {
    if let Some(cause) = network_cause(status) {
        return cause;
    }
    match status.message() {
        "" => code_in_words(status.code()).to_owned(),
        message => format!("{}: {message}", code_in_words(status.code())),
    }
}

/// The endpoints a call tried, each with why it gave no usable answer, for the error that
/// reports them all (not only the last).
#[derive(Debug)]
pub(crate) struct Tried {
    /// `(endpoint, why)`, in the order tried.
    causes: Vec<(String, String)>,
    /// Whether every endpoint failed in the network (refused the connection, timed out), none
    /// answering.
    all_unreachable: bool,
}

impl Tried {
    pub(crate) fn new() -> Self {
        Self { causes: Vec::new(), all_unreachable: true }
    }

    /// Records why `endpoint` gave no usable answer: `status` when the call failed, else the
    /// error its answer gave.
    pub(crate) fn record(&mut self, endpoint: &str, error: &ClientError, status: Option<&tonic::Status>) {
        let why = match (status, error) {
            (Some(status), _) => {
                // A status the replica sent (not the network's) is an answer.
                self.all_unreachable &= network_cause(status).is_some();
                status_in_words(status)
            }
            (None, ClientError::Unavailable(m)) => {
                self.all_unreachable = false;
                // Its message already names the endpoint.
                m.strip_prefix(&format!("{endpoint}: ")).unwrap_or(m).to_owned()
            }
            (None, e) => {
                self.all_unreachable = false;
                e.to_string()
            }
        };
        self.causes.push((endpoint.to_owned(), why));
    }

    /// The error to report: `most_telling`, except that "try again" lists every endpoint tried
    /// and why.
    pub(crate) fn error(self, most_telling: Option<ClientError>) -> ClientError {
        match most_telling {
            Some(ClientError::Unavailable(_)) | None => {
                if self.causes.is_empty() {
                    return ClientError::Unavailable("no endpoint tried".into());
                }
                let list: Vec<String> = self.causes.iter().map(|(e, why)| format!("{e} ({why})")).collect();
                let what =
                    if self.all_unreachable { "could not reach the realm" } else { "no replica gave a usable answer" };
                ClientError::Unavailable(format!("{what}: tried {}", list.join(", ")))
            }
            Some(e) => e,
        }
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

pub(crate) fn decode_proof(bytes: &[u8]) -> Result<LookupProof, ClientError> {
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
        let checker = ProofChecker::new(file, options)?;
        let list = if endpoints.is_empty() { &file.endpoints } else { endpoints };
        if list.is_empty() {
            return Err(ClientError::Invalid("no endpoints: the realm file lists none and none were given".into()));
        }
        let channels = options.channels.clone().unwrap_or_else(|| Channels::new(client_channel_options()));
        let mut out = Vec::new();
        for addr in list {
            let channel = channels.lazy(addr).map_err(|e| ClientError::Invalid(format!("endpoint: {e}")))?;
            out.push((addr.clone(), KeyraftClient::new(channel)));
        }
        let demoted = Arc::new(Mutex::new(vec![None; out.len()]));
        Ok(Self { checker: Arc::new(checker), endpoints: out, demoted })
    }

    fn demotions(&self) -> std::sync::MutexGuard<'_, Vec<Option<Instant>>> {
        self.demoted.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The endpoints' indexes in the order to ask them: those that failed recently last.
    pub(crate) fn endpoint_order(&self) -> Vec<usize> {
        let now = Instant::now();
        let demoted = self.demotions();
        let (mut order, mut last): (Vec<usize>, Vec<usize>) =
            (0..self.endpoints.len()).partition(|&i| demoted[i].is_none_or(|until| until <= now));
        order.append(&mut last);
        order
    }

    /// Asks endpoint `i` after the others for [`ENDPOINT_DEMOTION_MS`].
    pub(crate) fn demote(&self, i: usize) {
        self.demotions()[i] = Some(Instant::now() + Duration::from_millis(ENDPOINT_DEMOTION_MS));
    }

    fn promote(&self, i: usize) {
        self.demotions()[i] = None;
    }

    /// What this client trusts.
    pub fn realm(&self) -> &ClientRealm {
        self.checker.realm()
    }

    /// The newest epoch this client has verified for its realm.
    pub fn newest_epoch_seen(&self) -> Option<u64> {
        self.checker.newest_epoch_seen()
    }

    pub(crate) fn threshold(&self) -> u32 {
        // Bounded by the number of registered verifiers, itself at most VERIFIERS_MAX.
        u32::try_from(self.realm().verifier_threshold).unwrap_or(u32::MAX)
    }

    /// Calls the endpoints in turn, preferred ones first, until one's answer passes
    /// `accept`: an error another replica may not give ([`ClientError::try_elsewhere`]) moves
    /// on to the next one and demotes this one; any other error is returned at once.
    async fn each<R, T, F, Fut>(&self, call: F, accept: impl Fn(R) -> Result<T, ClientError>) -> Result<T, ClientError>
    where
        F: Fn(KeyraftClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<R, tonic::Status>>,
    {
        self.each_from(call, |_, r| accept(r)).await
    }

    /// [`Self::each`], with `accept` told which endpoint answered (to report it).
    async fn each_from<R, T, F, Fut>(
        &self,
        call: F,
        accept: impl Fn(&str, R) -> Result<T, ClientError>,
    ) -> Result<T, ClientError>
    where
        F: Fn(KeyraftClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<R, tonic::Status>>,
    {
        let mut last: Option<ClientError> = None;
        let mut tried = Tried::new();
        for i in self.endpoint_order() {
            let (addr, client) = &self.endpoints[i];
            let (result, status) = match call(client.clone()).await {
                Ok(r) => (
                    accept(addr, r).map_err(|e| match e {
                        ClientError::Unavailable(why) => ClientError::Unavailable(format!("{addr}: {why}")),
                        e => e,
                    }),
                    None,
                ),
                Err(status) => (Err(status_error(addr, &status)), Some(status)),
            };
            match result {
                Ok(v) => {
                    self.promote(i);
                    return Ok(v);
                }
                Err(e) if e.try_elsewhere() => {
                    tracing::debug!(endpoint = %addr, error = %e, "trying the next endpoint");
                    tried.record(addr, &e, status.as_ref());
                    self.demote(i);
                    if last.as_ref().is_none_or(|l| e.weight() >= l.weight()) {
                        last = Some(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(tried.error(last))
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
        self.checker.accept_current(user_id, proof, self.checker.now_ms(), last_seen)
    }

    /// Verifies a proof about a past `epoch`.
    pub(crate) fn accept_past(&self, user_id: &str, proof: Vec<u8>, epoch: u64) -> Result<LookupAnswer, ClientError> {
        self.checker.accept_past(user_id, proof, epoch)
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
        self.each_from(
            |mut c| {
                let mut r = tonic::Request::new(request.clone());
                r.set_timeout(timeout);
                async move { c.lookup(r).await.map(|r| LookupReply::from(r.into_inner())) }
            },
            |endpoint, reply| {
                let from = |answer: LookupAnswer| LookupAnswer {
                    endpoint: Some(endpoint.to_owned()),
                    newest_epoch_hint: reply.newest_epoch_hint,
                    ..answer
                };
                if options.epoch != 0 {
                    return self.accept_past(user_id, reply.proof.clone(), options.epoch).map(from);
                }
                let answer = self.accept_fresh(user_id, reply.proof.clone(), last_seen)?;
                if answer.lookup.epoch() < options.min_epoch {
                    return Err(ClientError::Contradicted(format!(
                        "asked for epoch {} or newer, got an answer from epoch {}",
                        options.min_epoch,
                        answer.lookup.epoch()
                    )));
                }
                Ok(from(answer))
            },
        )
        .await
    }

    /// Refuses `epoch` when no replica has reached it (nor has this client seen it): a call
    /// waiting for it would wait for an epoch that may never come. When no replica answers,
    /// the call itself reports that.
    pub(crate) async fn check_epoch_reachable(&self, epoch: u64) -> Result<(), ClientError> {
        if self.newest_epoch_seen().is_some_and(|seen| seen >= epoch) {
            return Ok(());
        }
        let mut newest = None;
        for i in self.endpoint_order() {
            let (addr, c) = &self.endpoints[i];
            let mut r = tonic::Request::new(GetEpochRequest { epoch: 0 });
            r.set_timeout(Duration::from_millis(CALL_TIMEOUT_MS));
            let replica_newest = match c.clone().get_epoch(r).await {
                Ok(info) => match EpochHead::from_bytes(&info.into_inner().head) {
                    Ok(head) => head.epoch,
                    Err(e) => {
                        tracing::debug!(endpoint = %addr, error = %e, "an undecodable head");
                        continue;
                    }
                },
                Err(status) if status.code() == tonic::Code::NotFound => 0,
                Err(status) => {
                    tracing::debug!(endpoint = %addr, error = %status, "newest epoch unknown");
                    continue;
                }
            };
            if replica_newest >= epoch {
                return Ok(());
            }
            newest = newest.max(Some(replica_newest));
        }
        match newest {
            Some(newest) => Err(ClientError::Invalid(format!(
                "epoch {epoch} is beyond the newest epoch of realm {:?} ({newest}): it does not exist yet",
                self.realm().config.realm
            ))),
            None => Ok(()),
        }
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
        self.each_from(
            |mut c| {
                let mut r = tonic::Request::new(request.clone());
                r.set_timeout(Duration::from_millis(CALL_TIMEOUT_MS));
                async move { c.history(r).await.map(tonic::Response::into_inner) }
            },
            |endpoint, response| self.accept_history(user_id, endpoint, response),
        )
        .await
    }

    /// Verifies a history page.
    fn accept_history(
        &self,
        user_id: &str,
        endpoint: &str,
        response: keyraft_proto::pb::HistoryResponse,
    ) -> Result<HistoryPage, ClientError> {
        let mut versions = Vec::with_capacity(response.versions.len());
        let mut previous: Option<(u64, u64)> = None;
        for v in response.versions {
            let answer =
                LookupAnswer { endpoint: Some(endpoint.to_owned()), ..self.accept_past(user_id, v.proof, v.epoch)? };
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
        Ok(HistoryPage { versions, next_page_token: response.next_page_token, endpoint: endpoint.to_owned() })
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

    /// Where `update` is, as the first replica that answers reports it.
    pub async fn update_status(&self, update: &Update) -> Result<UpdateStatus, ClientError> {
        let request = GetUpdateStatusRequest {
            update_id: update.id().to_vec(),
            index: update.signed.entry.index.0.to_vec(),
            version: update.signed.entry.version,
        };
        self.update_status_request(request).await
    }

    /// Where the update with id `update_id` is, as the first replica that answers reports it.
    /// A replica finds an applied update by its identity's index: with `user_id`, the index is
    /// learnt from a verified lookup (so this client's quorum must have ratified a fresh
    /// epoch); without, only pending and rejected updates are found, and an applied one is
    /// [`UpdateStatus::Unknown`].
    pub async fn update_status_by_id(
        &self,
        update_id: &[u8],
        user_id: Option<&str>,
    ) -> Result<UpdateStatus, ClientError> {
        if update_id.len() != 32 {
            return Err(ClientError::Invalid(format!("an update id is 32 bytes, not {}", update_id.len())));
        }
        let index = match user_id {
            Some(u) => self.lookup(u, LookupOptions::default()).await?.lookup.index.0.to_vec(),
            None => Vec::new(),
        };
        let request = GetUpdateStatusRequest { update_id: update_id.to_vec(), index, version: 0 };
        self.update_status_request(request).await
    }

    async fn update_status_request(&self, request: GetUpdateStatusRequest) -> Result<UpdateStatus, ClientError> {
        self.each(
            |mut c| {
                let mut r = tonic::Request::new(request.clone());
                r.set_timeout(Duration::from_millis(CALL_TIMEOUT_MS));
                async move { c.get_update_status(r).await.map(tonic::Response::into_inner) }
            },
            |r| {
                Ok(match r.state() {
                    State::Pending => UpdateStatus::Pending,
                    State::InEpoch => UpdateStatus::InEpoch(r.epoch),
                    State::Rejected => UpdateStatus::Rejected { reason: r.reason, retryable: r.retryable },
                    State::Unknown | State::Unspecified => UpdateStatus::Unknown,
                })
            },
        )
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
    keys: ProfileKeys,
    wait_for_quorum: bool,
    wait_ms: u32,
}

impl<'a> UpdateBuilder<'a> {
    fn new(client: &'a Client, user_id: &str, registration: bool) -> Self {
        Self {
            client,
            user_id: user_id.to_owned(),
            registration,
            signers: Vec::new(),
            policy: None,
            keys: ProfileKeys::default(),
            wait_for_quorum: false,
            wait_ms: QUORUM_WAIT_MS,
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

    /// Signs and submits. The entry builds on the identity's current entry, looked up at
    /// least as of this client's own last update of the identity (a registration or change
    /// made without waiting is found even before its epoch is ratified: the lookup waits for
    /// it). An update answered "try again" may still have been applied: it is resubmitted,
    /// the same bytes, for up to [`UPDATE_RETRY_MS`], and one applied meanwhile is reported
    /// as a duplicate, never built anew.
    pub async fn send(self) -> Result<UpdateOutcome, ClientError> {
        let client = self.client;
        let user_id = &self.user_id;
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
            (None, true) => (0, self.policy.unwrap_or_else(|| Policy::single(public_key(first)))),
            (Some((entry, _)), false) => {
                (entry.version + 1, self.policy.unwrap_or_else(|| entry.update_policy.clone()))
            }
        };
        let keys = self.keys.apply(&previous_keys)?;
        let profile = new_profile(keys.clone());
        let entry = Entry {
            index: current.lookup.index,
            version,
            update_policy: policy,
            profile_commitment: profile.commitment(),
        };
        let signers: Vec<&SigningKey> = self.signers.iter().collect();
        let signatures = sign_entry(&client.realm().config.realm, &entry, &signers);
        let update = Update { signed: SignedEntry { entry, signatures }, profile };
        let (threshold, wait_ms) =
            if self.wait_for_quorum { (Some(client.threshold()), self.wait_ms) } else { (None, 0) };
        let started = tokio::time::Instant::now();
        let response = submit_until_answered(client, user_id, &update, threshold, wait_ms).await?;
        let proof = if self.wait_for_quorum {
            let answer = if response.proof.is_empty() {
                // Found applied by its status, without the proof the Update call returns: the
                // rest of the wait goes to a lookup of its epoch.
                let waited = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
                let at = LookupOptions { epoch: response.epoch, min_epoch: 0, wait_ms: wait_ms.saturating_sub(waited) };
                client.lookup(user_id, at).await.map_err(|e| match e {
                    // Not ratified within the wait, by the verifiers or yet by the replicas.
                    ClientError::Unavailable(_) | ClientError::Refused { code: tonic::Code::NotFound, .. } => {
                        not_ratified(client, &update, response.epoch)
                    }
                    e => e,
                })?
            } else {
                client.accept_past(user_id, response.proof, response.epoch)?
            };
            let shown = answer.lookup.entry.as_ref().map(|(e, _)| e);
            if shown != Some(&update.signed.entry) {
                return Err(ClientError::Contradicted(format!(
                    "the update was acknowledged in epoch {}, but the proof of that epoch does not show it",
                    response.epoch
                )));
            }
            client.checker.observe(response.epoch)?;
            Some(answer)
        } else {
            client.checker.memory.record_own_update(&client.checker.memory_key, user_id, response.epoch)?;
            None
        };
        Ok(UpdateOutcome {
            update_id: response.update_id,
            epoch: response.epoch,
            duplicate: response.duplicate,
            proof,
            previous_keys,
            keys,
        })
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
    let why = match client.submit(user_id, update, threshold, wait_ms).await {
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
        let attempt = client.submit(user_id, update, threshold, wait_ms);
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
