//! The realm's configurations over time: the first one (`META_CONFIG`), each ratified change
//! with the first epoch whose head commits to it (`c` keyspace), and the change applied from
//! the log that waits for the open epoch to close (`META_PENDING_CONFIG`).

use crate::corrupt;
use crate::keys;
use keyraft_core::config_change::check_config_change;
use keyraft_core::{decode_canonical, Canonical, Digest, RealmConfig, SignedConfigChange};
use keyraft_epoch::StateError;
use keyraft_storage::{Batch, Storage};

/// A configuration change in a head: from `first_epoch` on, `config` is in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedChange {
    /// The first epoch whose head commits to `config`.
    pub first_epoch: u64,
    /// The change, with its signatures (what clients and verifiers re-check).
    pub change: SignedConfigChange,
    /// The configuration it leads to.
    pub config: RealmConfig,
}

/// The configuration history the state keeps in memory (it is small: one entry per change).
#[derive(Debug, Clone)]
pub(crate) struct ConfigHistory {
    pub(crate) genesis: RealmConfig,
    pub(crate) changes: Vec<AppliedChange>,
    pub(crate) pending: Option<(SignedConfigChange, RealmConfig)>,
}

/// How a step changes the configuration history, applied to memory at commit.
#[derive(Debug, Clone)]
pub(crate) enum ConfigUpdate {
    /// A change was applied from the log and waits for the open epoch to close.
    Pending(SignedConfigChange, RealmConfig),
    /// The open epoch closed: the pending change is in force from the next one.
    Committed(AppliedChange),
}

impl ConfigHistory {
    /// Reads the history, initialising a fresh store with `configured`, which must then be a
    /// first configuration (generation 0). The realm file of a replica with state may hold any
    /// configuration of the stored chain (an operator need not replace the file after each
    /// change); the newest stored one is in force.
    pub(crate) fn open<S: Storage>(store: &S, configured: &RealmConfig) -> Result<Self, StateError> {
        let genesis = match store.get(keys::META_CONFIG)? {
            // A fresh replica replays the log from its first entry (or installs a snapshot
            // holding the chain); replaying under a later configuration would make heads no
            // other replica makes.
            None if configured.generation > 0 => {
                return Err(StateError::ConfigMismatch(format!(
                    "the state is empty and the realm file holds generation {} of realm {:?}: a new replica \
                     starts from the realm's first realm file (generation 0) and follows the ratified changes \
                     from the log or a snapshot",
                    configured.generation, configured.realm
                )))
            }
            None => {
                let mut b = Batch::new();
                b.put(keys::META_CONFIG, configured.encode());
                store.write(b)?;
                configured.clone()
            }
            Some(stored) => decode_canonical::<RealmConfig>(&stored)
                .map_err(|e| corrupt(format!("stored realm configuration: {e}")))?,
        };
        let mut history = Self { genesis, changes: Vec::new(), pending: None };
        for item in store.scan_prefix(&[keys::CONFIG_CHANGE]) {
            let (_, value) = item?;
            if value.len() < 8 {
                return Err(corrupt("stored configuration change is too short"));
            }
            let first_epoch = keys::be_u64(&value[..8]).ok_or_else(|| corrupt("configuration change epoch"))?;
            let change = SignedConfigChange::from_bytes(&value[8..])
                .map_err(|e| corrupt(format!("stored configuration change: {e}")))?;
            // Re-checked on every open: a stored chain that does not verify is corrupt, and
            // serving it would make every client refuse the realm.
            let config = check_config_change(history.config(), &change)
                .map_err(|e| corrupt(format!("stored configuration change: {e}")))?;
            history.changes.push(AppliedChange { first_epoch, change, config });
        }
        if let Some(bytes) = store.get(keys::META_PENDING_CONFIG)? {
            let change = SignedConfigChange::from_bytes(&bytes)
                .map_err(|e| corrupt(format!("pending configuration change: {e}")))?;
            let config = check_config_change(history.config(), &change)
                .map_err(|e| corrupt(format!("pending configuration change: {e}")))?;
            history.pending = Some((change, config));
        }
        let hash = configured.hash();
        if !history.configs().any(|c| c.hash() == hash) {
            return Err(StateError::ConfigMismatch(format!(
                "stored realm {:?} (generation {}), configured {:?} (generation {}), which is not a configuration \
                 of the stored chain",
                history.config().realm,
                history.config().generation,
                configured.realm,
                configured.generation
            )));
        }
        Ok(history)
    }

    /// The configuration in force: the open epoch's (the first, or the newest change's).
    pub(crate) fn config(&self) -> &RealmConfig {
        self.changes.last().map_or(&self.genesis, |c| &c.config)
    }

    /// Every configuration, oldest first.
    pub(crate) fn configs(&self) -> impl Iterator<Item = &RealmConfig> {
        std::iter::once(&self.genesis).chain(self.changes.iter().map(|c| &c.config))
    }

    /// The configuration the head of `epoch` commits to (for an epoch without a head yet,
    /// the configuration in force).
    pub(crate) fn config_of_epoch(&self, epoch: u64) -> &RealmConfig {
        self.changes.iter().rev().find(|c| c.first_epoch <= epoch).map_or(&self.genesis, |c| &c.config)
    }

    /// The changes after the configuration whose hash is `from`, in order; `None` if no
    /// configuration of the chain has that hash.
    pub(crate) fn changes_after(&self, from: &Digest) -> Option<Vec<SignedConfigChange>> {
        let position = self.configs().position(|c| &c.hash() == from)?;
        Some(self.changes[position..].iter().map(|c| c.change.clone()).collect())
    }

    pub(crate) fn apply(&mut self, update: ConfigUpdate) {
        match update {
            ConfigUpdate::Pending(change, config) => self.pending = Some((change, config)),
            ConfigUpdate::Committed(applied) => {
                self.pending = None;
                self.changes.push(applied);
            }
        }
    }
}

/// The stored value of a change in a head.
pub(crate) fn encode_applied(first_epoch: u64, change: &SignedConfigChange) -> Vec<u8> {
    let mut out = first_epoch.to_be_bytes().to_vec();
    change.encode_into(&mut out);
    out
}
