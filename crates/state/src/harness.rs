//! A whole realm in one process: one state machine fed by an in-memory log, with the keys of
//! every replica, verifier and user derived from a seed. Tests use it to register, update,
//! cut epochs, sign, ratify, look up and verify without any network.

use crate::machine::{Effect, Outcome, StateMachine};
use crate::proposer::{ratify_head, sign_head};
use ed25519_dalek::{Signer as _, SigningKey};
use keyraft_core::keys::KeySignature;
use keyraft_core::lookup::{head_signing_message, ratification_message, ClientRealm, LookupProof};
use keyraft_core::registration::RegistrationPolicy;
use keyraft_core::types::vrf_input;
use keyraft_core::vrf::{VrfProof, VrfSecretKey};
use keyraft_core::{Canonical as _, Command, ConfigChange, LogPosition, SignedConfigChange};
use keyraft_core::{Entry, EpochHead, Index, Policy, Profile, RealmConfig, SignedEntry, Update};
use keyraft_epoch::StateError;
use keyraft_storage::{MemoryStorage, Storage};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

/// A deterministic key from a seed and a name.
pub fn derive_signing_key(seed: u64, name: &str) -> SigningKey {
    let mut h = Sha256::new();
    h.update(b"keyraft/test-key");
    h.update(seed.to_be_bytes());
    h.update(name.as_bytes());
    SigningKey::from_bytes(&h.finalize().into())
}

pub use keyraft_core::keys::public_key_of as public_key;
pub use keyraft_core::update::sign_entry;

/// A profile with a deterministic nonce (tests only: real clients use random nonces).
pub fn test_profile(nonce_seed: &str, keys: &[(&str, &[u8])]) -> Profile {
    let nonce = Sha256::digest(nonce_seed.as_bytes())[..16].to_vec();
    Profile { nonce, keys: keys.iter().map(|(a, k)| ((*a).to_owned(), k.to_vec())).collect() }
}

/// One realm, one state machine, one log.
#[derive(Debug)]
pub struct Harness {
    /// The state machine.
    pub machine: StateMachine<MemoryStorage>,
    /// Every command appended so far, in log order (position `i` has Raft index `i + 1`).
    pub log: Vec<Command>,
    /// The replicas' signing keys, in the realm's key order.
    pub replicas: Vec<SigningKey>,
    /// The verifiers' signing keys, in the realm's key order.
    pub verifiers: Vec<SigningKey>,
    /// The VRF secret key.
    pub vrf: VrfSecretKey,
    /// The client clock used for verification, in ms.
    pub now_ms: u64,
    /// The effects of the last appended command, as a server would publish them.
    pub last_effects: Vec<Effect>,
    /// The realm's first configuration (what a fresh replica starts from).
    pub genesis: RealmConfig,
}

impl Harness {
    /// A realm with `replicas` replicas and `verifiers` verifiers, keys derived from `seed`.
    pub fn new(realm: &str, replicas: usize, verifiers: usize, seed: u64) -> Self {
        Self::build(realm, replicas, verifiers, seed, None)
    }

    /// The same realm as [`Harness::new`] under protocol version 2, with `policy`.
    pub fn with_registration(
        realm: &str,
        replicas: usize,
        verifiers: usize,
        seed: u64,
        policy: RegistrationPolicy,
    ) -> Self {
        Self::build(realm, replicas, verifiers, seed, Some(policy))
    }

    fn build(realm: &str, replicas: usize, verifiers: usize, seed: u64, policy: Option<RegistrationPolicy>) -> Self {
        let mut replica_keys: Vec<SigningKey> =
            (0..replicas).map(|i| derive_signing_key(seed, &format!("replica-{i}"))).collect();
        let mut verifier_keys: Vec<SigningKey> =
            (0..verifiers).map(|i| derive_signing_key(seed, &format!("verifier-{i}"))).collect();
        replica_keys.sort_by_key(|k| k.verifying_key().to_bytes());
        verifier_keys.sort_by_key(|k| k.verifying_key().to_bytes());
        let vrf = VrfSecretKey::from_seed(&derive_signing_key(seed, "vrf").to_bytes());
        let config = RealmConfig::new(
            realm,
            vrf.public_key(),
            replica_keys.iter().map(public_key).collect(),
            verifier_keys.iter().map(public_key).collect(),
        )
        .expect("harness realm configuration is valid");
        let config = match policy {
            Some(policy) => config.with_registration(policy).expect("harness registration policy is valid"),
            None => config,
        };
        let genesis = config.clone();
        let machine = StateMachine::open(MemoryStorage::new(), config).expect("fresh memory store opens");
        Self {
            genesis,
            machine,
            log: Vec::new(),
            replicas: replica_keys,
            verifiers: verifier_keys,
            vrf,
            now_ms: 1_700_000_000_000,
            last_effects: Vec::new(),
        }
    }

    /// The realm configuration.
    pub fn config(&self) -> &RealmConfig {
        self.machine.config()
    }

    /// What a client of this realm trusts, requiring `verifier_threshold` ratifications.
    pub fn client_realm(&self, verifier_threshold: usize) -> ClientRealm {
        ClientRealm { config: self.config().clone(), verifier_threshold, epoch_ttl_ms: 60_000, clock_skew_ms: 5_000 }
    }

    /// The index of `user_id` and its VRF proof.
    pub fn index_of(&self, user_id: &str) -> (Index, VrfProof) {
        let proof =
            self.vrf.prove(&vrf_input(&self.config().realm, user_id)).expect("VRF prove succeeds on valid keys");
        let output = self
            .vrf
            .public_key()
            .verify(&vrf_input(&self.config().realm, user_id), &proof)
            .expect("own proof verifies");
        (Index::of_vrf_output(&output), proof)
    }

    /// Appends `command` to the log, applies it and makes it durable.
    pub fn append(&mut self, command: Command) -> Result<Outcome, StateError> {
        self.log.push(command.clone());
        let position = LogPosition { term: 1, index: self.log.len() as u64 };
        let (outcome, effects) = self.machine.apply(position, &command)?;
        self.machine.store().flush()?;
        self.last_effects = effects;
        Ok(outcome)
    }

    /// Builds a signed update of `user_id` to `version` with `policy`, signed by `signers`.
    pub fn make_update(
        &self,
        user_id: &str,
        version: u64,
        policy: Policy,
        profile: Profile,
        signers: &[&SigningKey],
    ) -> Update {
        let (index, _) = self.index_of(user_id);
        let entry = Entry { index, version, update_policy: policy, profile_commitment: profile.commitment() };
        let signatures = sign_entry(&self.config().realm, &entry, signers);
        Update { signed: SignedEntry { entry, signatures }, profile }
    }

    /// Registers `user_id` with a single-key policy of `owner`.
    pub fn register(
        &mut self,
        user_id: &str,
        owner: &SigningKey,
        keys: &[(&str, &[u8])],
    ) -> Result<Outcome, StateError> {
        let profile = test_profile(user_id, keys);
        let update = self.make_update(user_id, 0, Policy::single(public_key(owner)), profile, &[owner]);
        self.append(Command::Update(Box::new(update)))
    }

    /// Requests the recovery of `user_id` (which must have an entry) to a single-key policy of
    /// `new_owner`: the next version, signed by the new key only.
    pub fn recover(
        &mut self,
        user_id: &str,
        new_owner: &SigningKey,
        keys: &[(&str, &[u8])],
    ) -> Result<Outcome, StateError> {
        let update = self.make_recovery(user_id, new_owner, keys)?;
        self.append(Command::RecoveryRequest(Box::new(update)))
    }

    /// The recovery request [`Harness::recover`] appends.
    pub fn make_recovery(
        &self,
        user_id: &str,
        new_owner: &SigningKey,
        keys: &[(&str, &[u8])],
    ) -> Result<Update, StateError> {
        let (index, _) = self.index_of(user_id);
        let (_, current) = self
            .machine
            .latest_update(&index)?
            .ok_or_else(|| StateError::Corrupt(format!("{user_id} has no entry to recover")))?;
        let profile =
            test_profile(&format!("{user_id}/recovery/{}", hex::encode(public_key(new_owner).as_bytes())), keys);
        Ok(self.make_update(
            user_id,
            current.signed.entry.version + 1,
            Policy::single(public_key(new_owner)),
            profile,
            &[new_owner],
        ))
    }

    /// Closes the open epoch with the client clock as the leader's timestamp.
    pub fn cut_epoch(&mut self) -> Result<Outcome, StateError> {
        let epoch = self.machine.epoch_state().open_epoch();
        self.append(Command::EpochDelimiter { epoch, timestamp_ms: self.now_ms })
    }

    /// Has the first `count` replicas sign `epoch`'s head.
    pub fn sign(&mut self, epoch: u64, count: usize) -> Result<Vec<Outcome>, StateError> {
        let head = self.head(epoch)?;
        let commands: Vec<Command> =
            self.replicas.iter().take(count).map(|k| sign_head(k, &head).expect("harness keys are valid")).collect();
        commands.into_iter().map(|c| self.append(c)).collect()
    }

    /// Has verifier `i` ratify `epoch`'s head.
    pub fn ratify(&mut self, epoch: u64, i: usize) -> Result<Outcome, StateError> {
        let head = self.head(epoch)?;
        let command = ratify_head(&self.verifiers[i], &head).expect("harness keys are valid");
        self.append(command)
    }

    /// Cuts an epoch, has every replica sign it and every verifier ratify it.
    pub fn publish_epoch(&mut self) -> Result<EpochHead, StateError> {
        self.cut_epoch()?;
        let epoch = self.machine.epoch_state().last_epoch;
        self.sign(epoch, self.replicas.len())?;
        for i in 0..self.verifiers.len() {
            self.ratify(epoch, i)?;
        }
        self.head(epoch)
    }

    fn head(&self, epoch: u64) -> Result<EpochHead, StateError> {
        self.machine.head(epoch)?.ok_or_else(|| StateError::Corrupt(format!("no head for epoch {epoch}")))
    }

    /// Signs `proof`'s head afresh with every replica and verifier the proof's signatures name,
    /// for tests that tamper with a head and want only the tampering to be wrong with it.
    pub fn resign(&self, proof: &mut LookupProof) {
        let head_message = head_signing_message(&proof.head);
        for s in &mut proof.replica_signatures {
            s.signature =
                keyraft_core::Signature(self.replicas[usize::from(s.position)].sign(&head_message).to_bytes());
        }
        let ratification = ratification_message(&proof.head);
        for s in &mut proof.verifier_signatures {
            s.signature =
                keyraft_core::Signature(self.verifiers[usize::from(s.position)].sign(&ratification).to_bytes());
        }
    }

    /// A lookup proof for `user_id` at `epoch` (default: the last closed epoch) carrying up to
    /// `verifiers` ratifications.
    pub fn lookup_proof(&self, user_id: &str, epoch: Option<u64>, verifiers: usize) -> Result<LookupProof, StateError> {
        let epoch = epoch.unwrap_or(self.machine.epoch_state().last_epoch);
        let (index, vrf_proof) = self.index_of(user_id);
        let parts = self
            .machine
            .lookup_parts(&index, epoch, verifiers)?
            .ok_or_else(|| StateError::Corrupt(format!("no head for epoch {epoch}")))?;
        // A replica writes proofs from the stored bytes; every proof a test takes checks that
        // they are the decoded proof's canonical encoding.
        let written = parts.encode_proof(user_id, &vrf_proof);
        let proof = parts.into_proof(user_id, vrf_proof)?;
        if proof.encode() != written {
            return Err(StateError::Corrupt(format!(
                "the proof written from stored bytes differs from the decoded proof's encoding ({user_id}, epoch {epoch})"
            )));
        }
        Ok(proof)
    }

    /// A change from the configuration in force to `new_config` (its generation set to the
    /// next one), signed by `signers`.
    pub fn config_change(&self, mut new_config: RealmConfig, signers: &[&SigningKey]) -> SignedConfigChange {
        new_config.generation = self.config().generation + 1;
        let mut change = SignedConfigChange::unsigned(ConfigChange::new(self.config(), new_config));
        let message = change.change.signing_message();
        for key in signers {
            change.add_signature(KeySignature {
                signer: public_key(key),
                signature: keyraft_core::Signature(key.sign(&message).to_bytes()),
            });
        }
        change
    }

    /// The configuration in force with the replica key on `node_id` replaced by `new_key`'s
    /// (protocol version 2; generation unchanged, [`Harness::config_change`] sets it).
    pub fn rotated_config(&self, node_id: u64, new_key: &SigningKey) -> RealmConfig {
        let config = self.config();
        let bindings: Vec<(u64, keyraft_core::PublicKey)> = config
            .replica_node_ids
            .iter()
            .zip(&config.replica_keys)
            .map(|(id, key)| (*id, if *id == node_id { public_key(new_key) } else { *key }))
            .collect();
        let policy = config.registration.clone().expect("rotation needs a version-2 realm");
        RealmConfig::new(
            config.realm.clone(),
            config.vrf_public_key,
            bindings.iter().map(|(_, k)| *k).collect(),
            config.verifier_keys.clone(),
        )
        .and_then(|c| c.with_replica_node_ids(&bindings))
        .and_then(|c| c.with_registration(policy))
        .expect("rotated configuration is valid")
    }

    /// Has `keys` sign `epoch`'s head.
    pub fn sign_with(&mut self, epoch: u64, keys: &[&SigningKey]) -> Result<Vec<Outcome>, StateError> {
        let head = self.head(epoch)?;
        let commands: Vec<Command> =
            keys.iter().map(|k| sign_head(k, &head).expect("harness keys are valid")).collect();
        commands.into_iter().map(|c| self.append(c)).collect()
    }

    /// Replays this harness's log into a fresh state machine over `store`, from the realm's
    /// first configuration.
    pub fn replay_into<S: Storage>(&self, store: S) -> Result<StateMachine<S>, StateError> {
        let mut machine = StateMachine::open(store, self.genesis.clone())?;
        for (i, command) in self.log.iter().enumerate() {
            machine.apply(LogPosition { term: 1, index: i as u64 + 1 }, command)?;
        }
        Ok(machine)
    }
}

/// Profile keys as a map, for assertions.
pub fn profile_keys(profile: &Profile) -> &BTreeMap<String, Vec<u8>> {
    &profile.keys
}
