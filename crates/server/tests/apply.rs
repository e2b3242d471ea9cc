//! The state-machine store applies Raft entries that each carry several commands: the same
//! state as applying the commands one by one, identical on replay, and nothing applied twice.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_proto::convert::encode_log_entry;
use keyraft_server::raft::sm_store::{StateLocation, StateMachineStore};
use keyraft_server::raft::types::{ApplyResponse, CommandRefused, Entry, LogCommands, TypeConfig};
use keyraft_state::harness::{derive_signing_key, Harness};
use keyraft_state::Outcome;
use keyraft_storage::dump_all;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId};

fn harness_log() -> Harness {
    let mut h = Harness::new("apply.example", 3, 1, 5);
    for i in 0..20 {
        let key = derive_signing_key(5, &format!("user{i}"));
        h.register(&format!("user{i}@apply.example"), &key, &[("pgp", b"k")]).unwrap();
        if i % 6 == 5 {
            h.now_ms += 1000;
            h.publish_epoch().unwrap();
        }
    }
    h
}

fn entries(h: &Harness, per_entry: usize) -> Vec<Entry> {
    h.log
        .chunks(per_entry)
        .enumerate()
        .map(|(i, chunk)| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
            payload: EntryPayload::Normal(LogCommands(chunk.iter().map(encode_log_entry).collect())),
        })
        .collect()
}

/// State keys only: the applied positions and openraft's records differ by construction.
fn state_of(store: &StateMachineStore) -> Vec<(Vec<u8>, Vec<u8>)> {
    let shared = store.shared();
    let machine = shared.read();
    dump_all(machine.store())
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !k.starts_with(b"mapplied") && !k.starts_with(b"xraft"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_entries_reach_the_state_of_single_commands_and_replay_changes_nothing() {
    let h = harness_log();
    let reference: Vec<_> =
        dump_all(h.machine.store()).unwrap().into_iter().filter(|(k, _)| !k.starts_with(b"mapplied")).collect();
    // (commands per entry, deferred writes at which an apply call writes them mid-call)
    for (per_entry, deferred_max) in [(1, 2048), (3, 2048), (7, 2048), (1000, 2048), (1, 1), (3, 5), (7, 40)] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateMachineStore::open(
            StateLocation::Memory(Default::default()),
            dir.path().join("snap"),
            h.config().clone(),
        )
        .unwrap();
        store.set_deferred_writes_max(deferred_max);
        let entries = entries(&h, per_entry);
        // Apply in irregular groups of entries, as openraft does.
        let mut responses = Vec::new();
        for group in entries.chunks(2) {
            responses.extend(RaftStateMachine::<TypeConfig>::apply(&mut store, group.to_vec()).await.unwrap());
        }
        let commands: Vec<ApplyResponse> = responses.into_iter().flat_map(|r| r.0).collect();
        assert_eq!(commands.len(), h.log.len());
        assert!(commands
            .iter()
            .all(|r| !matches!(r, ApplyResponse::Refused(_) | ApplyResponse::Applied(Outcome::AlreadyApplied))));
        assert_eq!(state_of(&store), reference, "{per_entry} commands per entry, {deferred_max} deferred writes");
        // Replaying the whole log (as after a crash before openraft's applied id was stored)
        // applies nothing twice.
        let replay = RaftStateMachine::<TypeConfig>::apply(&mut store, entries.clone()).await.unwrap();
        assert!(replay.iter().flat_map(|r| r.0.iter()).all(|r| *r == ApplyResponse::Applied(Outcome::AlreadyApplied)));
        assert_eq!(state_of(&store), reference);
        let (applied, _) = RaftStateMachine::<TypeConfig>::applied_state(&mut store).await.unwrap();
        assert_eq!(applied.unwrap().index, entries.len() as u64);
    }
}

/// A replica embedded in a current-thread runtime (a test, a tool) applies epoch closes too:
/// handing the worker's other tasks away is an optimisation, never a panic.
#[tokio::test(flavor = "current_thread")]
async fn applying_an_epoch_close_on_a_current_thread_runtime_works() {
    let h = harness_log();
    let dir = tempfile::tempdir().unwrap();
    let mut store =
        StateMachineStore::open(StateLocation::Memory(Default::default()), dir.path().join("snap"), h.config().clone())
            .unwrap();
    let entries = entries(&h, 1);
    let responses = RaftStateMachine::<TypeConfig>::apply(&mut store, entries.clone()).await.unwrap();
    assert!(responses
        .iter()
        .flat_map(|r| r.0.iter())
        .any(|r| matches!(r, ApplyResponse::Applied(Outcome::EpochClosed(_)))));
    // A snapshot is built and its file written on the same runtime.
    let mut builder = RaftStateMachine::<TypeConfig>::get_snapshot_builder(&mut store).await;
    let snapshot = openraft::RaftSnapshotBuilder::<TypeConfig>::build_snapshot(&mut builder).await.unwrap();
    assert_eq!(snapshot.meta.last_log_id.unwrap().index, entries.len() as u64);
}

/// The step's effects reach their channels once the apply call's writes are in storage: a
/// consumer woken by "epoch E closed" or "epoch E ratified" finds E in the state, and a call
/// that only stages updates wakes the epoch proposer's channel and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_are_published_after_their_writes_to_their_own_channels() {
    let h = harness_log();
    let dir = tempfile::tempdir().unwrap();
    let mut store =
        StateMachineStore::open(StateLocation::Memory(Default::default()), dir.path().join("snap"), h.config().clone())
            .unwrap();
    let shared = store.shared();
    let effects = shared.effects();
    let (mut closed, mut ratified, signatures, mut pending) = (
        effects.subscribe_closed(),
        effects.subscribe_ratified(),
        effects.subscribe_signatures(),
        effects.subscribe_pending(),
    );
    let entries = entries(&h, 1);
    // The first entry is a registration: it stages an update and nothing else.
    RaftStateMachine::<TypeConfig>::apply(&mut store, entries[..1].to_vec()).await.unwrap();
    assert!(pending.has_changed().unwrap());
    assert!(!closed.has_changed().unwrap() && !ratified.has_changed().unwrap() && !signatures.has_changed().unwrap());
    pending.mark_unchanged();

    RaftStateMachine::<TypeConfig>::apply(&mut store, entries[1..].to_vec()).await.unwrap();
    let expected = h.machine.epoch_state();
    assert!(expected.last_epoch >= 3, "the log closes several epochs");
    assert_eq!(*closed.borrow_and_update(), expected.last_epoch);
    assert_eq!(*ratified.borrow_and_update(), expected.ratified_epoch);
    assert!(signatures.has_changed().unwrap());
    assert_eq!(shared.applied().epoch_state, expected);
    assert_eq!(shared.applied().raft_index, entries.len() as u64);
    let machine = shared.read();
    assert!(machine.head(expected.last_epoch).unwrap().is_some(), "the closed epoch is readable once announced");
}

/// A command that does not decode is refused with a typed reason, the same on every replica,
/// and the entry's other commands still apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_command_is_refused_with_its_reason() {
    let h = harness_log();
    let dir = tempfile::tempdir().unwrap();
    let mut store =
        StateMachineStore::open(StateLocation::Memory(Default::default()), dir.path().join("snap"), h.config().clone())
            .unwrap();
    let good = encode_log_entry(&h.log[0]);
    let entry = Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Normal(LogCommands(vec![vec![0xff, 0x01], good])),
    };
    let responses = RaftStateMachine::<TypeConfig>::apply(&mut store, vec![entry]).await.unwrap();
    let responses = &responses[0].0;
    assert!(matches!(&responses[0], ApplyResponse::Refused(CommandRefused::Undecodable { .. })), "{responses:?}");
    assert!(matches!(&responses[1], ApplyResponse::Applied(Outcome::UpdateAccepted { .. })), "{responses:?}");
}
