//! An identity's history: every version, newest first, each proven at the epoch it
//! appeared in, and (under protocol version 2) proven complete.
//!
//! Completeness rests on two things a replica cannot forge: the first page carries a proof of
//! the identity at the epoch the listing is pinned to (so the newest version cannot be left
//! out), and consecutive versions must pass the realm's version rule, the one replicas and
//! verifiers apply to every update ([`keyraft_core::update::check_version`]): under version 2
//! each version is the previous one plus one, so a version left out is a gap, and the last page
//! must end at version 0. Under protocol version 1 versions only increase, so a history can
//! only be checked for order, not for gaps.

use crate::client::CALL_TIMEOUT_MS;
use crate::error::verify_classified;
use crate::lookup::decode_proof;
use crate::{Client, ClientError, LookupAnswer};
use keyraft_core::lookup::{verify_lookup_at, ClientRealm};
use keyraft_core::update::check_version;
use keyraft_core::Entry;
use keyraft_proto::pb::HistoryRequest;
use std::time::Duration;

/// One version in a history page.
#[derive(Debug, Clone)]
pub struct HistoryVersion {
    /// The entry's version.
    pub version: u64,
    /// The identity at the epoch the version appeared in, verified there.
    pub answer: LookupAnswer,
    /// Whether the epoch has the verifier ratifications this client requires. A version in an
    /// epoch that lacks them (one a verifier skipped, or from before a verifier joined) is
    /// listed with the replica majority's proof alone, so that the history has no gap.
    pub meets_threshold: bool,
}

/// A page of an identity's history, newest first, each version proven at its epoch.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The versions, newest first.
    pub versions: Vec<HistoryVersion>,
    /// First page only: the identity at the epoch the listing is pinned to, whose version is
    /// the newest listed (or which shows the identity absent, with nothing listed).
    pub current: Option<LookupAnswer>,
    /// The replica (its endpoint address) that answered the page.
    pub endpoint: String,
    /// The token of the next (older) page, empty at the end.
    pub next_page_token: Vec<u8>,
}

impl HistoryPage {
    /// The oldest version listed.
    pub fn oldest(&self) -> Option<&HistoryVersion> {
        self.versions.last()
    }

    /// Checks that this page continues `newer`, the page before it: its first version is the
    /// one the realm's version rule allows before `newer`'s last. A gap between pages is
    /// misbehaviour as much as one inside a page.
    pub fn check_continues(&self, newer: &HistoryPage, realm: &ClientRealm) -> Result<(), ClientError> {
        let (Some(older), Some(newer)) = (self.versions.first(), newer.oldest()) else {
            return Err(ClientError::Contradicted("a history page that is not the last lists no versions".to_owned()));
        };
        check_link(realm, newer, older)
    }
}

/// The entry a verified history version shows.
fn entry_of(v: &HistoryVersion) -> Result<&Entry, ClientError> {
    v.answer.lookup.entry.as_ref().map(|(e, _)| e).ok_or_else(|| {
        ClientError::Contradicted(format!(
            "history lists version {} in epoch {}, but the proof of that epoch shows no entry",
            v.version,
            v.answer.lookup.epoch()
        ))
    })
}

/// `older` may come right before `newer` in a history: an older epoch, and a version the
/// realm's version rule allows right before `newer`'s (under protocol version 2, exactly one
/// less).
fn check_link(realm: &ClientRealm, newer: &HistoryVersion, older: &HistoryVersion) -> Result<(), ClientError> {
    let (newer_epoch, older_epoch) = (newer.answer.lookup.epoch(), older.answer.lookup.epoch());
    if older.version >= newer.version || older_epoch >= newer_epoch {
        return Err(ClientError::Contradicted(format!(
            "history is not newest-first: version {} in epoch {older_epoch} follows version {} in epoch {newer_epoch}",
            older.version, newer.version
        )));
    }
    check_version(&realm.config, Some(entry_of(older)?), entry_of(newer)?).map_err(|rule| {
        ClientError::Contradicted(format!(
            "history skips versions {} to {}: version {} (epoch {newer_epoch}) follows version {} (epoch {older_epoch}), but {rule}; versions were left out",
            older.version + 1,
            newer.version - 1,
            newer.version,
            older.version
        ))
    })
}

impl Client {
    /// One page of `user_id`'s versions, newest first (`page_token` empty for the first page),
    /// each proven at the epoch it appeared in. Within the page, consecutive versions are
    /// checked against the realm's version rule; the first page is checked to start at the
    /// newest version and the last to end at version 0 (under protocol version 2, where every
    /// version is the previous plus one). Between pages, [`HistoryPage::check_continues`];
    /// [`Client::full_history`] does all of it.
    pub async fn history(&self, user_id: &str, page_size: u32, page_token: &[u8]) -> Result<HistoryPage, ClientError> {
        let user_id = &self.canonical_user_id(user_id)?;
        let request = HistoryRequest {
            user_id: user_id.to_owned(),
            page_size,
            page_token: page_token.to_vec(),
            verifier_threshold: self.threshold(),
        };
        let first_page = page_token.is_empty();
        self.following_chain(|| {
            self.each_from(
                |mut c| {
                    let mut r = tonic::Request::new(request.clone());
                    r.set_timeout(Duration::from_millis(CALL_TIMEOUT_MS));
                    async move { c.history(r).await.map(tonic::Response::into_inner) }
                },
                |endpoint, response| self.accept_history(user_id, endpoint, response, first_page),
            )
        })
        .await
    }

    /// Every version of `user_id`, newest first, checked as one unbroken chain from the newest
    /// version to version 0 (protocol version 2), fetched `page_size` at a time.
    pub async fn full_history(&self, user_id: &str, page_size: u32) -> Result<Vec<HistoryVersion>, ClientError> {
        let mut versions: Vec<HistoryVersion> = Vec::new();
        let mut token = Vec::new();
        let mut previous: Option<HistoryPage> = None;
        loop {
            let page = self.history(user_id, page_size, &token).await?;
            if let Some(newer) = &previous {
                page.check_continues(newer, self.realm())?;
            }
            token = page.next_page_token.clone();
            versions.extend(page.versions.iter().cloned());
            if token.is_empty() {
                return Ok(versions);
            }
            previous = Some(page);
        }
    }

    /// Verifies a history page.
    fn accept_history(
        &self,
        user_id: &str,
        endpoint: &str,
        response: keyraft_proto::pb::HistoryResponse,
        first_page: bool,
    ) -> Result<HistoryPage, ClientError> {
        let realm = self.realm();
        // The version in force at the pinned epoch, proven with this client's quorum: a
        // lacking ratification is "try another replica", as for a lookup.
        let current = match (first_page, response.current.is_empty()) {
            (true, true) => {
                return Err(ClientError::Contradicted(
                    "the first history page lacks the proof of the current version".to_owned(),
                ))
            }
            (true, false) => Some(self.accept_past_own_epoch(user_id, response.current)?),
            (false, _) => None,
        };
        let mut versions: Vec<HistoryVersion> = Vec::with_capacity(response.versions.len());
        for v in response.versions {
            let (answer, meets_threshold) = self.accept_listed(user_id, v.proof, v.epoch)?;
            let listed = HistoryVersion { version: v.version, answer, meets_threshold };
            let shown = entry_of(&listed)?.version;
            if shown != v.version {
                return Err(ClientError::Contradicted(format!(
                    "history lists version {} in epoch {}, but the proof of that epoch shows version {shown}",
                    v.version, v.epoch
                )));
            }
            if let Some(newer) = versions.last() {
                check_link(realm, newer, &listed)?;
            }
            versions.push(HistoryVersion {
                answer: LookupAnswer { endpoint: Some(endpoint.to_owned()), ..listed.answer },
                ..listed
            });
        }
        if let Some(current) = &current {
            let current_version = current.lookup.entry.as_ref().map(|(e, _)| e.version);
            match (current_version, versions.first()) {
                (None, None) => {}
                (Some(c), Some(newest))
                    if c == newest.version && newest.answer.lookup.epoch() <= current.lookup.epoch() => {}
                (c, newest) => {
                    return Err(ClientError::Contradicted(format!(
                        "history starts at {}, but at epoch {} the identity has {}: the newest versions were left out",
                        newest.map_or("no version".into(), |v| format!("version {}", v.version)),
                        current.lookup.epoch(),
                        c.map_or("no entry".into(), |c| format!("version {c}")),
                    )))
                }
            }
        }
        // The last page must reach the first version the rule allows (version 0 under protocol
        // version 2).
        if response.next_page_token.is_empty() {
            if let Some(oldest) = versions.last() {
                check_version(&realm.config, None, entry_of(oldest)?).map_err(|rule| {
                    ClientError::Contradicted(format!(
                        "history ends at version {} (epoch {}), but {rule}: the oldest versions were left out",
                        oldest.version,
                        oldest.answer.lookup.epoch()
                    ))
                })?;
            }
        }
        Ok(HistoryPage { versions, current, next_page_token: response.next_page_token, endpoint: endpoint.to_owned() })
    }

    /// Verifies the proof of a listed version at `epoch` with the replica majority alone, and
    /// says whether it also has this client's verifier ratifications.
    fn accept_listed(&self, user_id: &str, proof: Vec<u8>, epoch: u64) -> Result<(LookupAnswer, bool), ClientError> {
        let decoded = decode_proof(&proof)?;
        let realm = self.realm();
        let lenient = ClientRealm { verifier_threshold: 0, ..realm.clone() };
        let lookup = verify_classified(&lenient, epoch, |r| verify_lookup_at(r, user_id, &decoded, epoch))?;
        let meets_threshold = lookup.ratified_by.len() >= realm.verifier_threshold;
        Ok((LookupAnswer { lookup, proof, endpoint: None, newest_epoch_hint: None }, meets_threshold))
    }

    /// Verifies a proof as a statement about its own epoch, with this client's quorum.
    fn accept_past_own_epoch(&self, user_id: &str, proof: Vec<u8>) -> Result<LookupAnswer, ClientError> {
        let epoch = decode_proof(&proof)?.head.epoch;
        self.accept_past(user_id, proof, epoch)
    }
}
