//! Lookups: today's value of an identity, verified as fresh and not older than any epoch
//! seen, or its value at a given past epoch.

use crate::client::CALL_TIMEOUT_MS;
use crate::{Client, ClientError};
use keyraft_core::lookup::{Lookup, LookupProof, VerifyError};
use keyraft_core::{decode_canonical, EpochHead, SignedConfigChange, Verified};
use keyraft_proto::convert::LookupReply;
use keyraft_proto::pb::{GetConfigChainRequest, GetEpochRequest, LookupRequest};
use std::time::Duration;

/// How long a replica may wait to reach the newest epoch this client has seen, in
/// milliseconds: an honest replica one epoch behind catches up well within this.
pub const LAG_WAIT_MS: u32 = 3_000;

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

pub(crate) fn decode_proof(bytes: &[u8]) -> Result<LookupProof, ClientError> {
    Ok(decode_canonical(bytes).map_err(VerifyError::Malformed)?)
}

impl Client {
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
    /// epoch seen before), or with `options.epoch` the value in that epoch. An answer whose
    /// head commits to a configuration this client has not followed to makes it fetch the
    /// realm's configuration changes, follow them from the one it trusts, and ask again.
    pub async fn lookup(&self, user_id: &str, options: LookupOptions) -> Result<LookupAnswer, ClientError> {
        self.following_chain(|| self.lookup_once(user_id, options)).await
    }

    /// Runs `verified` (a call whose answers this client verifies); when it fails on a head
    /// committing to a configuration this client has not followed to, follows the realm's
    /// configuration changes from the one it trusts and runs it once more. Every call that
    /// verifies proofs goes through here, so a client with an old realm file reaches the
    /// configuration in force whichever call meets it first.
    pub(crate) async fn following_chain<T, F, Fut>(&self, mut verified: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let _ = self.checker.take_unknown_config();
        match verified().await {
            Err(e) if self.checker.take_unknown_config().is_some() => {
                tracing::info!(error = %e, "an answer commits to a realm configuration this client does not know: following the realm's configuration changes");
                match self.follow_config_chain().await {
                    Ok(()) => verified().await,
                    // No replica proved a chain to the head's configuration: the answer is
                    // refused for what it is (a head of an unknown configuration).
                    Err(chain) if !chain.is_misbehavior() => {
                        tracing::warn!(error = %chain, "no configuration chain to the answer's configuration");
                        Err(e)
                    }
                    Err(chain) => Err(chain),
                }
            }
            other => other,
        }
    }

    /// Fetches the configuration changes after the newest configuration this client
    /// followed, and follows them with the core rule.
    pub async fn follow_config_chain(&self) -> Result<(), ClientError> {
        let from = self.checker.config_chain().newest().hash().to_vec();
        let changes = self
            .each(
                |mut c| {
                    let mut r = tonic::Request::new(GetConfigChainRequest { from_config_hash: from.clone() });
                    r.set_timeout(Duration::from_millis(CALL_TIMEOUT_MS));
                    async move { c.get_config_chain(r).await.map(|r| r.into_inner()) }
                },
                |reply| {
                    reply
                        .changes
                        .iter()
                        .map(|b| {
                            SignedConfigChange::from_bytes(b).map_err(|e| {
                                ClientError::Contradicted(format!("an undecodable configuration change: {e}"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                },
            )
            .await?;
        self.checker.follow_config_changes(&changes)
    }

    async fn lookup_once(&self, user_id: &str, options: LookupOptions) -> Result<LookupAnswer, ClientError> {
        let user_id = &self.canonical_user_id(user_id)?;
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
}
