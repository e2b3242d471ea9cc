//! The invariants a simulation checks between any two of its steps, on what the replicas'
//! stores hold (read through each replica's memory engine, as a crash would leave it or
//! newer): one head per epoch across replicas and across time, chained; signatures that
//! verify over that head.

use super::realm::SimRealm;
use keyraft_core::lookup::{head_signing_message, ratification_message};
use keyraft_core::{EpochHead, PublicKey};
use std::collections::BTreeMap;

/// At most this many problems are kept: the first ones tell what broke.
const PROBLEMS_KEPT: usize = 20;

/// Every head any replica has stored, the first time it was seen.
#[derive(Debug, Default)]
pub struct Ledger {
    heads: BTreeMap<u64, (EpochHead, u64)>,
    /// Per replica id: the epochs whose heads were compared already.
    compared_through: BTreeMap<u64, u64>,
    pub problems: Vec<String>,
}

impl Ledger {
    /// The newest epoch seen and the hash of its head, which chains to every head before it:
    /// two runs of a seed that agree on it agree on every epoch, down to each head's issue
    /// time (the fingerprint of a replay).
    pub fn newest(&self) -> Option<(u64, [u8; 32])> {
        self.heads.last_key_value().map(|(epoch, (head, _))| (*epoch, head.hash()))
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < PROBLEMS_KEPT {
            self.problems.push(p);
        }
    }

    /// Compares every replica's new heads with the ledger, and records them.
    pub fn observe(&mut self, realm: &SimRealm) {
        for r in &realm.replicas {
            let Some(state) = r.state(&realm.config) else { continue };
            let last = state.epoch_state().last_epoch;
            let from = self.compared_through.get(&r.id).copied().unwrap_or(0);
            // A crash may have taken the replica back: what it stores again must match too.
            let from = from.min(last);
            for epoch in from + 1..=last {
                let head = match state.head(epoch) {
                    Ok(Some(h)) => h,
                    other => {
                        self.problem(format!(
                            "node-{} lacks the head of epoch {epoch} below its last {last}: {other:?}",
                            r.id
                        ));
                        break;
                    }
                };
                self.record(r.id, head);
            }
            self.compared_through.insert(r.id, last);
        }
    }

    fn record(&mut self, node: u64, head: EpochHead) {
        let epoch = head.epoch;
        if let Some((known, by)) = self.heads.get(&epoch) {
            if *known != head {
                let p = format!("epoch {epoch}: node-{node} stores a head other than the one node-{by} stored: {head:?} vs {known:?}");
                self.problem(p);
            }
            return;
        }
        if epoch > 1 {
            if let Some((previous, _)) = self.heads.get(&(epoch - 1)).cloned() {
                if head.previous_head_hash != previous.hash() {
                    self.problem(format!(
                        "epoch {epoch} (node-{node}): the head does not chain to epoch {}'s",
                        epoch - 1
                    ));
                }
                if head.issue_time_ms < previous.issue_time_ms {
                    self.problem(format!(
                        "epoch {epoch} (node-{node}): issued at {} ms, before epoch {} ({} ms)",
                        head.issue_time_ms,
                        epoch - 1,
                        previous.issue_time_ms
                    ));
                }
            }
        } else if head.previous_head_hash != [0; 32] {
            self.problem(format!("epoch 1 (node-{node}) chains to a previous head"));
        }
        self.heads.insert(epoch, (head, node));
    }

    /// At the end, with every replica stopped: each replica holds every epoch to `last`,
    /// every signature it stores verifies over the ledger's head by a key of the realm, and a
    /// majority of replicas and the verifier signed each.
    pub fn final_checks(&self, realm: &SimRealm, last: u64) -> Vec<String> {
        let mut problems = Vec::new();
        let replica_keys = &realm.config.replica_keys;
        let verifier_keys = &realm.config.verifier_keys;
        for r in &realm.replicas {
            let Some(state) = r.state(&realm.config) else {
                problems.push(format!("node-{}: its state does not open", r.id));
                continue;
            };
            if state.epoch_state().last_epoch < last {
                problems.push(format!(
                    "node-{} stores epochs to {} only, not {last}",
                    r.id,
                    state.epoch_state().last_epoch
                ));
            }
            for (epoch, (head, _)) in self.heads.range(..=last) {
                let mut check = |kind: &str,
                                 keys: &[PublicKey],
                                 message: &[u8],
                                 found: Vec<(PublicKey, keyraft_core::Signature)>| {
                    for (key, signature) in &found {
                        if !keys.contains(key) || keyraft_core::ed25519::verify(key, message, signature).is_err() {
                            problems
                                .push(format!("node-{} epoch {epoch}: a {kind} signature that does not verify", r.id));
                        }
                    }
                    found.len()
                };
                let replicas = check(
                    "replica",
                    replica_keys,
                    &head_signing_message(head),
                    state.replica_signatures(*epoch).unwrap_or_default(),
                );
                let verifiers = check(
                    "verifier",
                    verifier_keys,
                    &ratification_message(head),
                    state.verifier_signatures(*epoch).unwrap_or_default(),
                );
                if *epoch < last && (replicas * 2 <= replica_keys.len() || verifiers < verifier_keys.len()) {
                    problems.push(format!(
                        "node-{} epoch {epoch}: signed by {replicas} replicas and {verifiers} verifiers",
                        r.id
                    ));
                }
                if problems.len() >= PROBLEMS_KEPT {
                    return problems;
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(epoch: u64, previous: &Option<EpochHead>, issue_time_ms: u64, root: u8) -> EpochHead {
        EpochHead {
            realm: "sim.example".into(),
            epoch,
            root: [root; 32],
            previous_head_hash: previous.as_ref().map_or([0; 32], EpochHead::hash),
            issue_time_ms,
            update_count: 0,
            config_hash: [9; 32],
        }
    }

    #[test]
    fn the_ledger_reports_a_second_head_a_broken_chain_and_time_going_back() {
        let mut ledger = Ledger::default();
        let one = head(1, &None, 1_000, 1);
        let two = head(2, &Some(one.clone()), 1_100, 2);
        ledger.record(1, one.clone());
        ledger.record(2, one.clone());
        ledger.record(1, two.clone());
        assert!(ledger.problems.is_empty(), "{:?}", ledger.problems);

        // Another replica stores another head for epoch 2.
        ledger.record(3, head(2, &Some(one.clone()), 1_100, 7));
        // Epoch 3 names a head other than epoch 2's, and is issued before it.
        ledger.record(2, head(3, &Some(one), 1_050, 3));
        // Epoch 1 of another realm history.
        let mut stray = Ledger::default();
        stray.record(1, head(1, &Some(two), 1_000, 1));
        let all: Vec<&String> = ledger.problems.iter().chain(&stray.problems).collect();
        assert_eq!(all.len(), 4, "{all:?}");
        assert!(all[0].contains("epoch 2: node-3 stores a head other than the one node-1 stored"), "{}", all[0]);
        assert!(all[1].contains("does not chain to epoch 2's"), "{}", all[1]);
        assert!(all[2].contains("issued at 1050 ms, before epoch 2 (1100 ms)"), "{}", all[2]);
        assert!(all[3].contains("epoch 1 (node-1) chains to a previous head"), "{}", all[3]);
    }
}
