//! What a third-party verifier recomputes: every published epoch's updates re-checked against
//! the entries they replace, the tree rebuilt, and the head recomputed byte for byte.
//!
//! A verifier sees no profiles and no user ids, only signed entries; it checks exactly the
//! rules that do not need them (versions, both policies, signatures, one update per index per
//! epoch) and that the replicas' head commits to the tree it rebuilt, chained to the previous
//! head. Any difference is a [`Mismatch`], with what was expected and what was received, for
//! evidence; a verifier signs only heads that passed ([`CheckedEpoch`]).
//!
//! Keyspaces (a verifier's own store): `t` the tree (as replicas store it), `c || index` the
//! current entry of each index, `p || index` the recovery pending for the index (protocol
//! version 2; empty in stores written before recoveries, so no format bump), `mverifier` the
//! last checked epoch, `mpending` the epoch being
//! written, `k || generation (u64)` each configuration change whose head was checked (the
//! chain, from `mconfig`, the first configuration), `mpending-config` a change received and
//! not yet in a checked head. (`k` and `mpending-config` are empty in stores written before
//! configuration changes existed, which read as before: no format bump.)
//!
//! Recoveries (docs/protocol.md section 6.3) are replayed by the replicas' rules: a streamed
//! recovery request is checked with [`check_recovery_entry`] and becomes pending (the leaf
//! commits to the entry and the pending record, effective the head's issue time plus the
//! window); an update of an index with a pending recovery cancels it; a pending recovery
//! becomes the entry in the first later epoch issued at or after its effective time. The
//! pending set is small and kept in memory. Its changes, and the entries recoveries install,
//! are written in the epoch's last batch, atomically with its head.
//!
//! An epoch is written in several batches, because sled's memory grows with the size of its
//! batches (an epoch of 10k updates in one batch per epoch held gigabytes): first `mpending`,
//! the epoch's number with the entry each of its updates replaces; then the new current
//! entries, at most [`ENTRY_WRITES_PER_BATCH_MAX`] per batch; last the tree, the head and the
//! removal of `mpending`, in one batch. A crash in between leaves `mpending`; opening the store
//! then puts the replaced entries back, so storage holds exactly the epochs up to `mverifier`
//! whatever the realm sends next.
//!
//! A committed epoch's batch is written by a writer thread while the next epoch is checked:
//! the next check reads the current entries it needs from memory until the batch is written,
//! and the tree pages from the page cache. [`VerifierState::flush`] waits for every batch and
//! makes them durable; a failed write fails every later call (the verifier stops, and on
//! restart resumes from what storage holds, a prefix of the committed epochs).

use crate::error::{corrupt, StateError};
use crate::head::{close_epoch_counted, ChainTip, ClosedEpoch};
use crate::tree;
use keyraft_core::config_change::check_config_change;
use keyraft_core::ed25519::VerifiedSignatures;
use keyraft_core::recovery::{self, check_recovery_entry, leaf_value, PendingRecovery};
use keyraft_core::types::entry_hash;
use keyraft_core::update::{check_signed_entry_memo, verify_signatures_batched, SIGNATURES_PER_BATCH_MAX};
use keyraft_core::{
    decode_canonical, Canonical, ConfigChangeError, Entry, EpochHead, Index, RealmConfig, SignedConfigChange,
    SignedEntry, UpdateRejection,
};
use keyraft_storage::{check_format_version, Batch, Migration, Storage, ThreadHandle, ThreadSpawner};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex};

/// Committed batches queued for the writer, at most: enough for an epoch of 20k updates, so
/// that committing one epoch rarely waits for the writer (each batch holds at most
/// [`ENTRY_WRITES_PER_BATCH_MAX`] entries, or an epoch's tree).
const BATCHES_QUEUED_MAX: usize = 16;

const CURRENT: u8 = b'c';
const PENDING: u8 = b'p';
const META: &[u8] = b"mverifier";
const META_CONFIG: &[u8] = b"mconfig";
const META_PENDING: &[u8] = b"mpending";
const CONFIG_CHANGE: u8 = b'k';
const META_PENDING_CONFIG: &[u8] = b"mpending-config";

fn config_change_key(generation: u64) -> Vec<u8> {
    let mut k = vec![CONFIG_CHANGE];
    k.extend_from_slice(&generation.to_be_bytes());
    k
}
/// The on-disk format of a verifier's store: 2 added `mpending` (a store of format 1 has none).
pub const VERIFIER_FORMAT_VERSION: u32 = 2;
const MIGRATIONS: &[Migration] = &[Migration { from: 1, to: 2, run: |_| Ok(()) }];
/// Current entries written per storage batch, at most.
pub const ENTRY_WRITES_PER_BATCH_MAX: usize = 2048;

/// `mpending`: the epoch being written and, for each index it updates, the entry it replaces:
/// `epoch (u64) || count (u32) || count x (index (32) || length (u32) || entry)`, length 0
/// meaning the index had no entry.
fn encode_pending(epoch: u64, replaced: &[(Index, Option<Entry>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + replaced.len() * 160);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&(replaced.len() as u32).to_be_bytes());
    for (index, entry) in replaced {
        out.extend_from_slice(&index.0);
        let bytes = entry.as_ref().map(Canonical::encode).unwrap_or_default();
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

type Pending = (u64, Vec<(Index, Option<Entry>)>);

fn decode_pending(bytes: &[u8]) -> Result<Pending, StateError> {
    let bad = || corrupt("the verifier's pending epoch record is malformed");
    let take = |at: &mut usize, n: usize| -> Result<&[u8], StateError> {
        let part = bytes.get(*at..at.checked_add(n).ok_or_else(bad)?).ok_or_else(bad)?;
        *at += n;
        Ok(part)
    };
    let mut at = 0;
    let epoch = u64::from_be_bytes(take(&mut at, 8)?.try_into().map_err(|_| bad())?);
    let count = u32::from_be_bytes(take(&mut at, 4)?.try_into().map_err(|_| bad())?) as usize;
    let mut replaced = Vec::with_capacity(count.min(bytes.len() / 36));
    for _ in 0..count {
        let index = Index(take(&mut at, 32)?.try_into().map_err(|_| bad())?);
        let len = u32::from_be_bytes(take(&mut at, 4)?.try_into().map_err(|_| bad())?) as usize;
        let entry = match len {
            0 => None,
            n => Some(
                decode_canonical::<Entry>(take(&mut at, n)?).map_err(|e| corrupt(format!("verifier entry: {e}")))?,
            ),
        };
        replaced.push((index, entry));
    }
    if at != bytes.len() {
        return Err(bad());
    }
    Ok((epoch, replaced))
}

/// Puts back the entries an epoch that was not finished replaced, and forgets it.
fn roll_back_pending(store: &dyn Storage, last_epoch: u64) -> Result<(), StateError> {
    let Some(bytes) = store.get(META_PENDING)? else { return Ok(()) };
    let (epoch, replaced) = decode_pending(&bytes)?;
    if epoch <= last_epoch {
        return Err(corrupt(format!("epoch {epoch} is both pending and written (last written: {last_epoch})")));
    }
    tracing::warn!(epoch, entries = replaced.len(), "rolling back an epoch whose writing was interrupted");
    for part in replaced.chunks(ENTRY_WRITES_PER_BATCH_MAX) {
        let mut b = Batch::new();
        for (index, entry) in part {
            match entry {
                Some(e) => b.put(current_key(index), e.encode()),
                None => b.delete(current_key(index)),
            }
        }
        store.write(b)?;
    }
    store.flush()?;
    let mut b = Batch::new();
    b.delete(META_PENDING);
    store.write(b)?;
    store.flush()?;
    Ok(())
}

fn pending_key(index: &Index) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.push(PENDING);
    k.extend_from_slice(&index.0);
    k
}

/// Refuses a head issued further ahead of the verifier's clock `now_ms` than the realm's
/// `skew_ms`: replicas that stamp heads in the future would end recovery windows early, so a
/// verifier ratifies no such head (its signature vouches for the window too).
pub fn check_issue_time(head: &EpochHead, now_ms: u64, skew_ms: u64) -> Result<(), Mismatch> {
    if head.issue_time_ms > now_ms.saturating_add(skew_ms) {
        return Err(Mismatch::IssueTimeAhead { epoch: head.epoch, issue_time_ms: head.issue_time_ms, now_ms, skew_ms });
    }
    Ok(())
}

fn current_key(index: &Index) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.push(CURRENT);
    k.extend_from_slice(&index.0);
    k
}

/// Why a published epoch was not ratified. Each variant carries what is needed to show the
/// fault to anyone offline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// Epochs must arrive in order, each once.
    #[error("expected epoch {expected}, received epoch {got}")]
    OutOfOrder {
        /// The next epoch this verifier needs.
        expected: u64,
        /// What arrived.
        got: u64,
    },
    /// The epoch's updates are not in strictly increasing index order (two updates of one
    /// identity in one epoch, or a reordered stream).
    #[error("updates of epoch {epoch} are not in strictly increasing index order at position {position}")]
    UnorderedUpdates {
        /// The epoch.
        epoch: u64,
        /// Where the order breaks.
        position: usize,
    },
    /// An update the replicas applied breaks the update rules.
    #[error("epoch {epoch}: the update of index {index} breaks the rules: {reason}")]
    UnauthorizedUpdate {
        /// The epoch.
        epoch: u64,
        /// The index (hex).
        index: String,
        /// The rule broken.
        reason: UpdateRejection,
    },
    /// A streamed entry is marked as a recovery request, but no entry of the epoch has its
    /// index.
    #[error("epoch {epoch}: index {index} is marked as a recovery request, but the epoch has no entry for it")]
    StrayRecoveryMark {
        /// The epoch.
        epoch: u64,
        /// The index (hex).
        index: String,
    },
    /// The head's issue time is before the previous head's: issue times count recovery
    /// windows, so they may never go back.
    #[error("epoch {epoch}: issued at {got} ms, before the previous head's {previous} ms")]
    IssueTimeBackwards {
        /// The epoch.
        epoch: u64,
        /// The previous head's issue time.
        previous: u64,
        /// This head's.
        got: u64,
    },
    /// The head's issue time is ahead of this verifier's clock by more than the realm's skew:
    /// ratifying it would let recovery windows end early.
    #[error("epoch {epoch}: issued at {issue_time_ms} ms, ahead of this verifier's clock ({now_ms} ms) by more than the skew of {skew_ms} ms")]
    IssueTimeAhead {
        /// The epoch.
        epoch: u64,
        /// The head's issue time.
        issue_time_ms: u64,
        /// The verifier's clock.
        now_ms: u64,
        /// The realm's allowed skew.
        skew_ms: u64,
    },
    /// The realm published a configuration change that does not follow from the
    /// configuration in force (or a second one before the first was in a head).
    #[error("configuration change to generation {generation}: {reason}")]
    ConfigChange {
        /// The generation the change claims to lead to.
        generation: u64,
        /// Why it was refused.
        reason: ConfigChangeError,
    },
    /// The head differs from the one recomputed.
    #[error("epoch {epoch}: the received head differs from the recomputed one")]
    HeadDiffers {
        /// The epoch.
        epoch: u64,
        /// The head this verifier computed.
        expected: Box<EpochHead>,
        /// The head received.
        got: Box<EpochHead>,
    },
}

/// A verifier's view of the realm.
#[derive(Debug)]
pub struct VerifierState<S: Storage> {
    store: Arc<S>,
    /// The configuration in force: the one the last checked head commits to (or the first).
    config: RealmConfig,
    /// A change received from the stream, which the next head must commit to.
    pending_config: Option<(SignedConfigChange, RealmConfig)>,
    /// Every configuration change followed so far, oldest first.
    chain: Vec<SignedConfigChange>,
    pages: tree::PageCache,
    last: Option<EpochHead>,
    writer: Writer,
    /// Current entries of committed epochs, until a flush confirms their batches written.
    unwritten: HashMap<Index, Entry>,
    /// The recoveries pending after the last committed epoch (the `p` keyspace, in memory).
    pending: BTreeMap<Index, PendingRecovery>,
}

/// The writer thread's queue and progress.
#[derive(Debug)]
struct Writer {
    tx: Option<std::sync::mpsc::SyncSender<Batch>>,
    thread: Option<ThreadHandle>,
    progress: Arc<(Mutex<WriterProgress>, Condvar)>,
    sent: u64,
}

#[derive(Debug, Default)]
struct WriterProgress {
    written: u64,
    failed: Option<String>,
}

impl Writer {
    fn start<S: Storage>(store: Arc<S>, threads: &ThreadSpawner) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(BATCHES_QUEUED_MAX);
        let progress: Arc<(Mutex<WriterProgress>, Condvar)> = Arc::default();
        let shared = progress.clone();
        let thread = threads.spawn("verifier-writer", move || {
            for batch in rx {
                let result = store.write(batch);
                let (lock, cvar) = &*shared;
                let mut p = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match result {
                    Ok(()) => p.written += 1,
                    Err(e) => {
                        p.failed = Some(e.to_string());
                        cvar.notify_all();
                        return;
                    }
                }
                cvar.notify_all();
            }
        });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "no writer thread: the verifier writes each epoch before checking the next");
                None
            }
        };
        Self { tx: thread.as_ref().map(|_| tx), thread, progress, sent: 0 }
    }

    fn failed(&self) -> Result<(), StateError> {
        let p = self.progress.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &p.failed {
            Some(e) => Err(corrupt(format!("the verifier's storage refused a write: {e}"))),
            None => Ok(()),
        }
    }

    /// Queues a batch, or writes it here when there is no writer thread.
    fn send<S: Storage>(&mut self, store: &S, batch: Batch) -> Result<(), StateError> {
        self.failed()?;
        match &self.tx {
            Some(tx) => {
                tx.send(batch).map_err(|_| corrupt("the verifier's writer thread stopped".to_owned()))?;
                self.sent += 1;
                Ok(())
            }
            None => Ok(store.write(batch)?),
        }
    }

    /// Waits until every queued batch is written.
    fn drain(&self) -> Result<(), StateError> {
        let (lock, cvar) = &*self.progress;
        let mut p = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while p.written < self.sent && p.failed.is_none() {
            p = cvar.wait(p).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        drop(p);
        self.failed()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue lets the thread finish the batches it has, then stop.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            if let Err(panic) = t.join() {
                tracing::error!(%panic, "the verifier's writer thread panicked");
            }
        }
    }
}

/// An epoch that passed every check, ready to be committed and signed.
#[derive(Debug)]
pub struct CheckedEpoch {
    head: EpochHead,
    /// The epoch's writes, in order: `mpending`, the current entries, then the tree and head.
    batches: Vec<Batch>,
    written: tree::WrittenPages,
    entries: Vec<(Index, Entry)>,
    /// Pending recoveries the epoch set (`Some`) or ended (`None`).
    pending: Vec<(Index, Option<PendingRecovery>)>,
}

impl CheckedEpoch {
    /// The head that was recomputed and matched.
    pub fn head(&self) -> &EpochHead {
        &self.head
    }

    /// The storage batches that commit the epoch, in order (tests simulate a crash between
    /// them).
    #[doc(hidden)]
    pub fn batches(&self) -> &[Batch] {
        &self.batches
    }
}

impl<S: Storage> VerifierState<S> {
    /// Opens (or creates) a verifier's state for `config`, writing on an operating-system
    /// thread.
    pub fn open(store: S, config: RealmConfig) -> Result<Self, StateError> {
        Self::open_with(store, config, &ThreadSpawner::default())
    }

    /// [`VerifierState::open`], starting the writer thread with `threads`. The thread is
    /// joined when the state is dropped.
    pub fn open_with(store: S, config: RealmConfig, threads: &ThreadSpawner) -> Result<Self, StateError> {
        check_format_version(&store, VERIFIER_FORMAT_VERSION, MIGRATIONS)?;
        let genesis = match store.get(META_CONFIG)? {
            None => {
                let mut b = Batch::new();
                b.put(META_CONFIG, config.encode());
                store.write(b)?;
                config.clone()
            }
            Some(stored) => decode_canonical::<RealmConfig>(&stored)
                .map_err(|e| corrupt(format!("verifier realm configuration: {e}")))?,
        };
        // The configured realm file may hold any configuration of the followed chain.
        let mut in_force = genesis;
        let mut known = vec![in_force.hash()];
        let mut chain = Vec::new();
        for item in store.scan_prefix(&[CONFIG_CHANGE]) {
            let (_, bytes) = item?;
            let change = SignedConfigChange::from_bytes(&bytes)
                .map_err(|e| corrupt(format!("verifier configuration change: {e}")))?;
            in_force = check_config_change(&in_force, &change)
                .map_err(|e| corrupt(format!("verifier configuration change: {e}")))?;
            known.push(in_force.hash());
            chain.push(change);
        }
        if !known.contains(&config.hash()) {
            return Err(StateError::ConfigMismatch(
                "the verifier's store belongs to another realm (its chain of configurations does not hold the configured one)"
                    .into(),
            ));
        }
        let pending_config = match store.get(META_PENDING_CONFIG)? {
            None => None,
            Some(bytes) => {
                let change = SignedConfigChange::from_bytes(&bytes)
                    .map_err(|e| corrupt(format!("verifier pending configuration change: {e}")))?;
                let next = check_config_change(&in_force, &change)
                    .map_err(|e| corrupt(format!("verifier pending configuration change: {e}")))?;
                Some((change, next))
            }
        };
        let config = in_force;
        let last = match store.get(META)? {
            None => None,
            Some(b) => Some(EpochHead::from_bytes(&b).map_err(|e| corrupt(format!("verifier head: {e}")))?),
        };
        roll_back_pending(&store, last.as_ref().map_or(0, |h| h.epoch))?;
        let mut pending = BTreeMap::new();
        for item in store.scan_prefix(&[PENDING]) {
            let (key, value) = item?;
            let index =
                key.get(1..33).and_then(|k| k.try_into().ok()).map(Index).ok_or_else(|| corrupt("pending key"))?;
            let record = decode_canonical::<PendingRecovery>(&value)
                .map_err(|e| corrupt(format!("verifier pending recovery: {e}")))?;
            pending.insert(index, record);
        }
        let store = Arc::new(store);
        let writer = Writer::start(store.clone(), threads);
        Ok(Self {
            store,
            config,
            pending_config,
            chain,
            pages: tree::PageCache::default(),
            last,
            writer,
            unwritten: HashMap::new(),
            pending,
        })
    }

    /// The configuration in force: the one the last checked head commits to.
    pub fn config(&self) -> &RealmConfig {
        &self.config
    }

    /// The configuration the next head must commit to: a received change's, or the one in
    /// force.
    pub fn next_config(&self) -> &RealmConfig {
        self.pending_config.as_ref().map_or(&self.config, |(_, c)| c)
    }

    /// The configuration changes followed, oldest first (a received one not yet in a head
    /// excluded).
    pub fn config_chain(&self) -> &[SignedConfigChange] {
        &self.chain
    }

    /// Takes a configuration change from the stream: checked against the configuration in
    /// force with the one core rule, and kept (durably) for the next head, which must commit
    /// to it. Receiving the change already held is not an error (a reconnected stream
    /// resends it).
    pub fn receive_config_change(&mut self, change: &SignedConfigChange) -> Result<&RealmConfig, VerifyFailure> {
        let generation = change.change.new_config.generation;
        if let Some((held, _)) = &self.pending_config {
            if held.change == change.change {
                return Ok(self.next_config());
            }
            return Err(Mismatch::ConfigChange {
                generation,
                reason: ConfigChangeError::GenerationNotNext {
                    expected: self.next_config().generation.saturating_add(1),
                    got: generation,
                },
            }
            .into());
        }
        let next = check_config_change(&self.config, change)
            .map_err(|reason| VerifyFailure::Mismatch(Mismatch::ConfigChange { generation, reason }))?;
        let mut b = Batch::new();
        b.put(META_PENDING_CONFIG, change.encode());
        self.writer.send(&*self.store, b)?;
        self.pending_config = Some((change.clone(), next));
        Ok(self.next_config())
    }

    /// Waits for every committed epoch's batch and flushes the store: committed epochs are
    /// durable when this returns.
    pub fn flush(&mut self) -> Result<(), StateError> {
        self.writer.drain()?;
        self.store.flush()?;
        self.unwritten.clear();
        Ok(())
    }

    fn current_entry(&self, index: &Index) -> Result<Option<Entry>, StateError> {
        if let Some(e) = self.unwritten.get(index) {
            return Ok(Some(e.clone()));
        }
        match self.store.get(&current_key(index))? {
            None => Ok(None),
            Some(b) => Ok(Some(decode_canonical::<Entry>(&b).map_err(|e| corrupt(format!("verifier entry: {e}")))?)),
        }
    }

    /// The last epoch checked and committed (0 before the first).
    pub fn last_epoch(&self) -> u64 {
        self.last.as_ref().map_or(0, |h| h.epoch)
    }

    /// The last committed head, if any.
    pub fn last_head(&self) -> Option<&EpochHead> {
        self.last.as_ref()
    }

    /// The store underneath (committed epochs may still be on their way to it: see
    /// [`VerifierState::flush`]).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The recoveries pending after the last committed epoch.
    pub fn pending_recoveries(&self) -> &BTreeMap<Index, PendingRecovery> {
        &self.pending
    }

    /// Re-checks `epoch`'s updates and recomputes its head; compares it with `head`.
    pub fn check_epoch(&self, updates: &[SignedEntry], head: &EpochHead) -> Result<CheckedEpoch, VerifyFailure> {
        self.check_epoch_with(updates, &[], head)
    }

    /// The checks of an epoch before its updates': the next epoch, issued no earlier than the
    /// last, its updates in strictly increasing index order, each recovery mark on one of them.
    /// Returns the epoch and the marked indexes.
    fn check_epoch_order(
        &self,
        updates: &[SignedEntry],
        recovery_requests: &[Index],
        head: &EpochHead,
    ) -> Result<(u64, BTreeSet<Index>), VerifyFailure> {
        let epoch = self.last_epoch() + 1;
        if head.epoch != epoch {
            return Err(Mismatch::OutOfOrder { expected: epoch, got: head.epoch }.into());
        }
        let previous = self.last.as_ref().map_or(0, |h| h.issue_time_ms);
        if head.issue_time_ms < previous {
            return Err(Mismatch::IssueTimeBackwards { epoch, previous, got: head.issue_time_ms }.into());
        }
        for position in 1..updates.len() {
            if updates[position - 1].entry.index >= updates[position].entry.index {
                return Err(Mismatch::UnorderedUpdates { epoch, position }.into());
            }
        }
        let recovery: BTreeSet<Index> = recovery_requests.iter().copied().collect();
        if let Some(stray) = recovery.iter().find(|i| updates.binary_search_by(|u| u.entry.index.cmp(i)).is_err()) {
            return Err(Mismatch::StrayRecoveryMark { epoch, index: hex::encode(stray.0) }.into());
        }
        Ok((epoch, recovery))
    }

    /// [`VerifierState::check_epoch`] for an epoch whose entries at `recovery_requests` (sorted
    /// indexes, protocol version 2) are recovery requests rather than updates.
    pub fn check_epoch_with(
        &self,
        updates: &[SignedEntry],
        recovery_requests: &[Index],
        head: &EpochHead,
    ) -> Result<CheckedEpoch, VerifyFailure> {
        let (epoch, recovery) = self.check_epoch_order(updates, recovery_requests, head)?;
        let config = self.next_config();
        let mut leaves = Vec::with_capacity(updates.len());
        // Signatures dominate catch-up: verify the updates' in batches first (about half the
        // cost of single checks), on every core; the checks below then find them verified.
        let signatures = VerifiedSignatures::new(updates.iter().map(|u| u.signatures.len()).sum::<usize>().max(1));
        let batched: Vec<&SignedEntry> = updates.iter().filter(|u| !recovery.contains(&u.entry.index)).collect();
        crate::parallel::for_each_slice(&batched, SIGNATURES_PER_BATCH_MAX, |slice| {
            verify_signatures_batched(&config.realm, slice, &signatures);
        });
        // Reading the entries replaced and checking the rules, each update independent of the
        // others: on every core too.
        let replaced = crate::parallel::try_map(updates, |_, update| {
            let current = self.current_entry(&update.entry.index).map_err(VerifyFailure::State)?;
            let checked = if recovery.contains(&update.entry.index) {
                check_recovery_entry(config, current.as_ref(), update)
            } else {
                check_signed_entry_memo(config, current.as_ref(), update, &signatures)
            };
            checked.map_err(|reason| {
                VerifyFailure::Mismatch(Mismatch::UnauthorizedUpdate {
                    epoch,
                    index: hex::encode(update.entry.index.0),
                    reason,
                })
            })?;
            Ok::<_, VerifyFailure>((update.entry.index, current))
        })
        .map_err(|(_, failure)| failure)?;
        let mut batches = Vec::with_capacity(2 + updates.len() / ENTRY_WRITES_PER_BATCH_MAX);
        let mut pending = Batch::new();
        pending.put(META_PENDING, encode_pending(epoch, &replaced));
        batches.push(pending);
        let mut entries = Vec::with_capacity(updates.len());
        let mut pending = Vec::new();
        for (part, replaced_part) in
            updates.chunks(ENTRY_WRITES_PER_BATCH_MAX).zip(replaced.chunks(ENTRY_WRITES_PER_BATCH_MAX))
        {
            let mut batch = Batch::new();
            for (update, (index, current)) in part.iter().zip(replaced_part) {
                if recovery.contains(index) {
                    // The entry stays; the leaf commits to it and the pending recovery.
                    let current = current.as_ref().ok_or_else(|| corrupt("a checked recovery without entry"))?;
                    let effective_ms = recovery::effective_ms(config, head.issue_time_ms)
                        .ok_or_else(|| corrupt("a checked recovery in a realm without recovery"))?;
                    let record = PendingRecovery { signed: update.clone(), requested_epoch: epoch, effective_ms };
                    leaves.push((*index, leaf_value(current, Some(&record))));
                    pending.push((*index, Some(record)));
                    continue;
                }
                if self.pending.contains_key(index) {
                    // The owner's veto.
                    pending.push((*index, None));
                }
                let bytes = update.entry.encode();
                leaves.push((*index, entry_hash(&bytes)));
                batch.put(current_key(index), bytes);
                entries.push((*index, update.entry.clone()));
            }
            batches.push(batch);
        }
        let mut batch = Batch::new();
        for (index, entry) in self.matured(updates, epoch, head.issue_time_ms) {
            let bytes = entry.encode();
            leaves.push((index, entry_hash(&bytes)));
            batch.put(current_key(&index), bytes);
            entries.push((index, entry));
            pending.push((index, None));
        }
        leaves.sort_by_key(|(index, _)| *index);
        for (index, record) in &pending {
            match record {
                Some(r) => batch.put(pending_key(index), r.encode()),
                None => batch.delete(pending_key(index)),
            }
        }
        // The leader's clock is not ours to check beyond the skew (the daemon's
        // `check_issue_time`); the head rule keeps heads from going back in time, exactly as
        // the replicas apply it.
        let tip = self.last.as_ref().map(ChainTip::of).unwrap_or_default();
        let ClosedEpoch { head: expected, written } = close_epoch_counted(
            &*self.store,
            &self.pages,
            config,
            &tip,
            &leaves,
            head.issue_time_ms,
            updates.len() as u64,
            &mut batch,
        )?;
        if expected != *head {
            return Err(
                Mismatch::HeadDiffers { epoch, expected: Box::new(expected), got: Box::new(head.clone()) }.into()
            );
        }
        batch.put(META, head.encode());
        batch.delete(META_PENDING);
        if let Some((change, next)) = &self.pending_config {
            // This head commits to the received change: it joins the chain with the epoch.
            batch.put(config_change_key(next.generation), change.encode());
            batch.delete(META_PENDING_CONFIG);
        }
        batches.push(batch);
        Ok(CheckedEpoch { head: expected, batches, written, entries, pending })
    }

    /// The entries of the recoveries whose window has passed by `epoch`'s issue time: they
    /// become the entry, unless the epoch updated their index (a veto or a replacement).
    fn matured(&self, updates: &[SignedEntry], epoch: u64, issue_time_ms: u64) -> Vec<(Index, Entry)> {
        let touched: BTreeSet<Index> = updates.iter().map(|u| u.entry.index).collect();
        self.pending
            .iter()
            .filter(|(index, record)| !touched.contains(index) && record.matures_in(epoch, issue_time_ms))
            .map(|(index, record)| (*index, record.signed.entry.clone()))
            .collect()
    }

    /// Commits a checked epoch: the next epoch can be checked at once, while the epoch's
    /// batch is written in the background (durable after [`VerifierState::flush`]).
    pub fn commit(&mut self, checked: CheckedEpoch) -> Result<(), StateError> {
        assert_eq!(checked.head.epoch, self.last_epoch() + 1, "checked epochs are committed in order");
        let CheckedEpoch { head, batches, written, entries, pending } = checked;
        for batch in batches {
            if let Err(e) = self.writer.send(&*self.store, batch) {
                self.pages.clear();
                return Err(e);
            }
        }
        // The pages and entries stay readable from memory until their batch is written;
        // a failed write stops this state for good (every later call fails).
        self.pages.commit(written);
        self.unwritten.extend(entries);
        for (index, record) in pending {
            match record {
                Some(r) => self.pending.insert(index, r),
                None => self.pending.remove(&index),
            };
        }
        if let Some((change, next)) = self.pending_config.take() {
            tracing::info!(
                epoch = head.epoch,
                generation = next.generation,
                "the realm's configuration changed with this epoch's head"
            );
            self.chain.push(change);
            self.config = next;
        }
        self.last = Some(head);
        Ok(())
    }
}

/// Why an epoch could not be checked: the realm misbehaved, or this verifier's storage failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyFailure {
    /// The realm published something wrong: evidence, do not sign.
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
    /// Local storage failed: stop, and retry after repair.
    #[error(transparent)]
    State(#[from] StateError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyraft_core::Policy;

    #[test]
    fn pending_records_round_trip_and_damaged_ones_are_refused() {
        let entry = Entry {
            index: Index([3; 32]),
            version: 4,
            update_policy: Policy::single(keyraft_core::keys::public_key_of(&ed25519_dalek::SigningKey::from_bytes(
                &[1; 32],
            ))),
            profile_commitment: [6; 32],
        };
        let replaced = vec![(Index([1; 32]), None), (Index([3; 32]), Some(entry))];
        let bytes = encode_pending(9, &replaced);
        let (epoch, back) = decode_pending(&bytes).unwrap();
        assert_eq!((epoch, back), (9, replaced));
        for cut in 0..bytes.len() {
            assert!(decode_pending(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_pending(&longer).is_err());
        // A count far beyond the bytes is refused without allocating for it.
        let mut huge = bytes[..8].to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_pending(&huge).is_err());
    }

    /// The writer thread is started through the given spawner and has ended once the state
    /// is dropped, its queued batches written.
    #[test]
    fn the_writer_thread_comes_from_the_spawner_and_is_joined_on_drop() {
        let threads = keyraft_storage::threads::CountedThreads::default();
        let config = crate::testing::realm_config("join.example");
        let mut v =
            VerifierState::open_with(keyraft_storage::MemoryStorage::new(), config, &threads.spawner()).unwrap();
        assert_eq!((threads.started(), threads.running()), (1, 1));
        let mut b = Batch::new();
        b.put(b"x", b"1".to_vec());
        let store = v.store.clone();
        v.writer.send(&*store, b).unwrap();
        drop(v);
        assert_eq!(threads.running(), 0, "the writer thread outlived its state");
        assert_eq!(store.get(b"x").unwrap(), Some(b"1".to_vec()), "a queued batch was lost on drop");
    }

    #[test]
    fn a_format_1_store_is_migrated() {
        let store = keyraft_storage::MemoryStorage::new();
        let mut b = Batch::new();
        b.put(keyraft_storage::format::FORMAT_VERSION_KEY, 1u32.to_be_bytes().to_vec());
        store.write(b).unwrap();
        let v = VerifierState::open(store.clone(), crate::testing::realm_config("migrate.example")).unwrap();
        assert_eq!(v.last_epoch(), 0);
        assert_eq!(store.get(keyraft_storage::format::FORMAT_VERSION_KEY).unwrap(), Some(2u32.to_be_bytes().to_vec()));
    }
}
