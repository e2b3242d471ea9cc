//! A client of one realm: its endpoints, the order it asks them in (those that failed recently
//! last), and the failover of one call across them.

use crate::error::{network_cause, status_error, status_in_words};
use crate::{ClientError, ClientOptions, ProofChecker};
use keyraft_core::clock::{Clock, SystemClock};
use keyraft_core::lookup::ClientRealm;
use keyraft_core::RealmFile;
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::transport::{ChannelOptions, Channels};
use std::sync::{Arc, Mutex};
use std::time::Duration;
// Tokio's clock, which is the host's except in a simulation in paused time.
use tokio::time::Instant;
use tonic::transport::Channel;

/// Deadline of one call, in milliseconds, on top of any server-side wait the call asks for.
pub const CALL_TIMEOUT_MS: u64 = 10_000;
/// How long a replica gets to accept a connection, in milliseconds.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// How long a replica that answered "try again", stale or not ratified yet is asked after the
/// others, in milliseconds.
pub const ENDPOINT_DEMOTION_MS: u64 = 30_000;

/// A client of one realm.
#[derive(Debug, Clone)]
pub struct Client {
    /// What it trusts and remembers.
    pub(crate) checker: Arc<ProofChecker>,
    pub(crate) endpoints: Vec<(String, KeyraftClient<Channel>)>,
    /// Per endpoint, until when it is asked after the others (it answered stale, not ratified
    /// yet or "try again"); shared by the clones of this client.
    demoted: Arc<Mutex<Vec<Option<Instant>>>>,
}

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemClock.now_ms()
}

/// How a client's channels connect by default.
pub fn client_channel_options() -> ChannelOptions {
    ChannelOptions { connect_timeout_ms: Some(CONNECT_TIMEOUT_MS), tcp_nodelay: true, keep_alive: None }
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
        let channels = match &options.channels {
            Some(channels) => channels.clone(),
            None => Channels::new(client_channel_options()).with_tls(
                keyraft_proto::tls::TlsClient::for_realm(file)
                    .map_err(|e| ClientError::Invalid(format!("realm file: {e}")))?,
            ),
        };
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

    /// The id `user_id` stands for in this client's realm: its canonical form under protocol
    /// version 2 (docs/protocol.md section 3.1), the id as given under version 1. The replicas
    /// compute the same with the same function; an id with no canonical form is the caller's
    /// mistake.
    pub fn canonical_user_id(&self, user_id: &str) -> Result<String, ClientError> {
        // The newest configuration followed: after an upgrade to version 2, ids are canonical.
        let chain = self.checker.config_chain();
        chain.newest().canonical_user_id(user_id).map_err(|e| ClientError::Invalid(e.to_string()))
    }

    /// The realm configurations this client followed from its realm file's (docs/protocol.md
    /// section 2.8); [`Client::lookup`] follows newer ones when a proof needs them.
    pub fn config_chain(&self) -> keyraft_core::Verified<keyraft_core::ConfigChain> {
        self.checker.config_chain()
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
    pub(crate) async fn each<R, T, F, Fut>(
        &self,
        call: F,
        accept: impl Fn(R) -> Result<T, ClientError>,
    ) -> Result<T, ClientError>
    where
        F: Fn(KeyraftClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<R, tonic::Status>>,
    {
        self.each_from(call, |_, r| accept(r)).await
    }

    /// [`Self::each`], with `accept` told which endpoint answered (to report it).
    pub(crate) async fn each_from<R, T, F, Fut>(
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
}
