//! What a client trusts and remembers, and the rules it verifies proofs by, with or without
//! replicas to ask: [`Client`](crate::Client) verifies the answers it fetches with a
//! [`ProofChecker`], and `keyraft verify-proof` verifies a saved proof with one, offline and
//! against the same epoch memory.

use crate::error::verify_classified;
use crate::lookup::decode_proof;
use crate::{ClientError, ClientOptions, EpochMemory, LookupAnswer};
use keyraft_core::clock::{self, Clock};
use keyraft_core::config_change::extend_chain;
use keyraft_core::lookup::{verify_lookup, verify_lookup_at, ClientRealm, LookupProof};
use keyraft_core::{follow_chain, ConfigChain, Digest, RealmFile, SignedConfigChange, Verified};
use std::sync::{Arc, Mutex, PoisonError};

/// A realm's keys with this client's quorum and freshness rules, and its memory of the
/// newest epoch seen (protocol step 8).
#[derive(Debug)]
pub struct ProofChecker {
    pub(crate) realm: ClientRealm,
    pub(crate) memory: EpochMemory,
    /// The realm's name and configuration hash: two realms of the same name (a dev realm
    /// made afresh) keep separate epoch memories.
    pub(crate) memory_key: String,
    /// What freshness is judged by.
    clock: Arc<dyn Clock>,
    /// The realm's configurations this client followed from its realm file's, through
    /// majority-signed changes (docs/protocol.md section 2.8): a proof is checked with the
    /// one its head commits to.
    chain: Mutex<Verified<ConfigChain>>,
    /// A configuration a proof's head committed to that the chain does not hold (yet): the
    /// client fetches the changes after its newest configuration and tries again.
    unknown_config: Mutex<Option<Digest>>,
}

impl ProofChecker {
    /// A checker for the realm in `file` with `options` applied, remembering epochs in
    /// `options.state_file` (or for this process only).
    pub fn new(file: &RealmFile, options: &ClientOptions) -> Result<Self, ClientError> {
        let mut realm = file.client_realm().map_err(|e| ClientError::Invalid(e.to_string()))?;
        options.apply(&mut realm)?;
        let memory = match &options.state_file {
            Some(path) => EpochMemory::open(path)?,
            None => EpochMemory::in_memory(),
        };
        let memory_key = format!("{}/{}", realm.config.realm, hex::encode(&realm.config.hash()[..8]));
        memory.adopt_unquorumed(&memory_key, file.verifier_threshold);
        let clock = options.clock.clone().unwrap_or_else(clock::system);
        let chain = saved_chain(&realm, &memory, &memory_key)?;
        Ok(Self { realm, memory, memory_key, clock, chain: Mutex::new(chain), unknown_config: Mutex::new(None) })
    }

    /// The time by this checker's clock, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// What this client trusts.
    pub fn realm(&self) -> &ClientRealm {
        &self.realm
    }

    /// The configurations followed so far (the realm file's first).
    pub fn config_chain(&self) -> Verified<ConfigChain> {
        self.chain.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Follows `changes` (the realm's answer to `GetConfigChain` from the newest configuration
    /// followed) with the core rule; a change that does not follow is the realm's fault.
    pub fn follow_config_changes(&self, changes: &[SignedConfigChange]) -> Result<(), ClientError> {
        let mut chain = self.chain.lock().unwrap_or_else(PoisonError::into_inner);
        let longer = extend_chain(&chain, changes)
            .map_err(|e| ClientError::Contradicted(format!("the realm's chain of configurations: {e}")))?;
        *chain = longer;
        // Saved, so that a restarted client starts from the newest configuration it followed.
        let bytes: Vec<Vec<u8>> = chain.changes().iter().map(keyraft_core::Canonical::encode).collect();
        self.memory.record_config_changes(&self.memory_key, &bytes)
    }

    /// Takes the configuration hash a proof committed to that the chain did not hold.
    pub(crate) fn take_unknown_config(&self) -> Option<Digest> {
        self.unknown_config.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// What this client trusts for `proof`: its rules with the configuration of the chain the
    /// head commits to. A head of this realm's name committing to a configuration the chain
    /// lacks is noted (see [`Self::take_unknown_config`]) and checked against the realm
    /// file's, which refuses it as another realm's until the chain is followed further.
    fn realm_for(&self, proof: &LookupProof) -> ClientRealm {
        let chain = self.chain.lock().unwrap_or_else(PoisonError::into_inner);
        match chain.client_realm(&self.realm, &proof.head.config_hash) {
            Some(realm) => realm,
            None => {
                if proof.head.realm == self.realm.config.realm {
                    *self.unknown_config.lock().unwrap_or_else(PoisonError::into_inner) = Some(proof.head.config_hash);
                }
                self.realm.clone()
            }
        }
    }

    /// The newest epoch this client has verified for its realm with at least its verifier
    /// quorum: the floor of its rollback check (an epoch seen only under a lower quorum may
    /// not have this client's ratifications yet, so it sets no floor here).
    pub fn newest_epoch_seen(&self) -> Option<u64> {
        self.memory.floor(&self.memory_key, self.realm.verifier_threshold)
    }

    /// Remembers that `epoch` was verified with this client's quorum.
    pub(crate) fn observe(&self, epoch: u64) -> Result<(), ClientError> {
        self.memory.observe(&self.memory_key, self.realm.verifier_threshold, epoch)
    }

    /// Verifies `proof` as the current answer about `user_id` at the clock `now_ms`: every
    /// step, the rollback step against `last_seen` (the newest epoch seen when the caller
    /// asked, usually [`Self::newest_epoch_seen`]), then remembers its epoch.
    pub fn accept_current(
        &self,
        user_id: &str,
        proof: Vec<u8>,
        now_ms: u64,
        last_seen: Option<u64>,
    ) -> Result<LookupAnswer, ClientError> {
        let decoded = decode_proof(&proof)?;
        let lookup = verify_classified(&self.realm_for(&decoded), decoded.head.epoch, |realm| {
            verify_lookup(realm, user_id, &decoded, now_ms, last_seen)
        })?;
        self.observe(lookup.epoch())?;
        Ok(LookupAnswer { lookup, proof, endpoint: None, newest_epoch_hint: None })
    }

    /// Verifies `proof` as a statement about the past `epoch`: every step but freshness and
    /// rollback, which are about the present; the epoch memory is left as it is.
    pub fn accept_past(&self, user_id: &str, proof: Vec<u8>, epoch: u64) -> Result<LookupAnswer, ClientError> {
        let decoded = decode_proof(&proof)?;
        let lookup = verify_classified(&self.realm_for(&decoded), decoded.head.epoch, |realm| {
            verify_lookup_at(realm, user_id, &decoded, epoch)
        })?;
        Ok(LookupAnswer { lookup, proof, endpoint: None, newest_epoch_hint: None })
    }

    /// Verifies `proof` as an answer that was current at the clock `at_ms` (freshness
    /// checked as of then): every step but rollback, which is about the present; the epoch
    /// memory is left as it is. Like [`Self::accept_past`], it says nothing about today.
    pub fn accept_as_of(&self, user_id: &str, proof: Vec<u8>, at_ms: u64) -> Result<LookupAnswer, ClientError> {
        let decoded = decode_proof(&proof)?;
        let lookup = verify_classified(&self.realm_for(&decoded), decoded.head.epoch, |realm| {
            verify_lookup(realm, user_id, &decoded, at_ms, None)
        })?;
        Ok(LookupAnswer { lookup, proof, endpoint: None, newest_epoch_hint: None })
    }
}

/// The chain of configurations saved in the client's state file for this realm, followed again
/// from the realm file's configuration with the core rule. The state file is local and saves
/// the fetching, it is not trusted: a saved chain that does not follow is dropped (the client
/// fetches the chain anew when it meets a newer configuration).
fn saved_chain(realm: &ClientRealm, memory: &EpochMemory, key: &str) -> Result<Verified<ConfigChain>, ClientError> {
    let saved: Result<Vec<SignedConfigChange>, _> =
        memory.config_changes(key).iter().map(|b| SignedConfigChange::from_bytes(b)).collect();
    match saved.map_err(|e| e.to_string()).and_then(|c| follow_chain(&realm.config, &c).map_err(|e| e.to_string())) {
        Ok(chain) => Ok(chain),
        Err(why) => {
            tracing::warn!(error = %why, "the configuration chain saved in the client state file does not follow; ignoring it");
            follow_chain(&realm.config, &[]).map_err(|e| ClientError::Invalid(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keyraft_core::clock::ManualClock;

    fn file() -> RealmFile {
        let vrf = keyraft_core::vrf::VrfSecretKey::from_seed(&[1; 32]).public_key();
        let replica = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
        RealmFile {
            realm: "clock.example".into(),
            vrf_public_key: hex::encode(vrf.as_bytes()),
            replica_keys: vec![hex::encode(replica.verifying_key().as_bytes())],
            replicas: None,
            generation: None,
            verifier_keys: vec![],
            verifier_threshold: 0,
            epoch_ttl_ms: 60_000,
            clock_skew_ms: 5_000,
            endpoints: vec![],
            protocol_version: 1,
            registration: None,
            tls: None,
        }
    }

    #[test]
    fn freshness_is_judged_by_the_configured_clock() {
        let clock = ManualClock::new(42);
        let options = ClientOptions { clock: Some(Arc::new(clock.clone())), ..ClientOptions::default() };
        let checker = ProofChecker::new(&file(), &options).unwrap();
        assert_eq!(checker.now_ms(), 42);
        clock.advance(8);
        assert_eq!(checker.now_ms(), 50);
        let host = ProofChecker::new(&file(), &ClientOptions::default()).unwrap();
        assert!(host.now_ms() > 1_577_836_800_000, "the host's clock by default");
    }
}
