//! Online backup and restore (issue 16 part 5): a backup taken from a follower while clients
//! register identities, restored into a new node's data directory; the node joins as a
//! learner from the backup's position, catches up, and serves the same proofs as the leader (on
//! redb, while the realm runs on sled).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::LookupRequest;
use keyraft_tests::{serial, wait_for, Realm};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The proof bytes replica `i` answers for `user` at `epoch`.
fn proof_at(realm: &Realm, i: usize, user: &str, epoch: u64) -> Vec<u8> {
    let mut client = KeyraftClient::new(realm.public_channel(i));
    let request = LookupRequest { user_id: user.to_owned(), epoch, ..Default::default() };
    realm.runtime.block_on(client.lookup(request)).unwrap().into_inner().proof
}

#[test]
fn a_backup_under_load_restores_into_a_learner_that_catches_up_with_identical_proofs() {
    let _s = serial();
    let mut realm = Realm::start(|_| {});
    let leader = realm.wait_leader();
    let follower = (leader + 1) % 3;

    // Load: registrations, one after another, until told to stop; the acknowledged ones kept.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let load = realm.runtime.spawn({
        let client = realm.client(leader);
        let (stop, acked) = (stop.clone(), acked.clone());
        async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let user = format!("load-{n}@example.com");
                let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
                if let Ok(r) = client.register(&user, &key, Default::default()).await {
                    acked.lock().unwrap().push((user, r.epoch));
                }
                n += 1;
            }
        }
    });
    let acked_count = || acked.lock().unwrap().len();
    wait_for("registrations under way", || (acked_count() >= 5).then_some(()));

    // The backup, from a follower, while the registrations go on.
    let backup = realm.path().join("realm.backup");
    let token = realm.path().join("keys/admin.token");
    let admin = ["admin", "--peer", &realm.peer_addr(follower), "--token-file", token.to_str().unwrap()];
    let out = realm.cli_ok(&[&admin[..], &["backup", "--out", backup.to_str().unwrap()]].concat());
    assert!(out.contains("backup of realm"), "{out}");
    let at_backup = acked_count();
    let checked = realm.cli_ok(&["restore", backup.to_str().unwrap(), "--check"]);
    assert!(checked.contains("a whole backup"), "{checked}");
    let backup_index: u64 =
        checked.split("Raft log index ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(backup_index > 0, "{checked}");

    // A damaged copy is refused, by --check and by a restore, which creates nothing.
    let damaged = realm.path().join("damaged.backup");
    let mut bytes = std::fs::read(&backup).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&damaged, &bytes).unwrap();
    let e = realm.cli_fails(&["restore", damaged.to_str().unwrap(), "--check"]);
    assert!(e.contains("SHA-256 does not match"), "{e}");
    let nowhere = realm.path().join("data/not-restored");
    let e = realm.cli_fails(&["restore", damaged.to_str().unwrap(), "--data-dir", nowhere.to_str().unwrap()]);
    assert!(e.contains("damaged"), "{e}");
    assert!(!nowhere.exists());

    // Registrations after the backup, which the new node must take from the log.
    wait_for("registrations after the backup", || (acked_count() >= at_backup + 5).then_some(()));
    stop.store(true, Ordering::Relaxed);
    realm.runtime.block_on(load).unwrap();
    let acked = acked.lock().unwrap().clone();

    // Restored into node 4's data directory, on the other engine (redb; the realm runs on
    // sled): a backup is engine-neutral, and replicas on different engines must reach
    // byte-identical state. A restore never overwrites.
    let data4 = realm.path().join("data/node-4");
    let out =
        realm.cli_ok(&["restore", backup.to_str().unwrap(), "--data-dir", data4.to_str().unwrap(), "--engine", "redb"]);
    assert!(out.contains("restored realm") && out.contains("storage.engine = \"redb\""), "{out}");
    let e = realm.cli_fails(&["restore", backup.to_str().unwrap(), "--data-dir", data4.to_str().unwrap()]);
    assert!(e.contains("must be new or empty"), "{e}");
    let node4 = realm.start_node_4_with(|t| {
        let mut storage = toml::Table::new();
        storage.insert("engine".into(), "redb".into());
        t.insert("storage".into(), toml::Value::Table(storage));
    });
    // Before it is added, node 4 holds the backup's state and no log before it.
    let s = wait_for("node 4 to answer", || realm.status(node4));
    assert_eq!((s.applied_index, s.purged_index), (backup_index, backup_index), "{s:?}");

    let out = realm.cli_ok(
        &[
            &admin[..],
            &[
                "add-learner",
                "--id",
                "4",
                "--peer-addr",
                &realm.peer_addr(node4),
                "--public-addr",
                &realm.public_addr(node4),
            ],
        ]
        .concat(),
    );
    assert!(out.contains("caught up"), "{out}");
    // Every acknowledged registration, proven by node 4 and identical to the leader's proof at
    // the epoch of the last one, once both have it ratified.
    let epoch = acked.iter().map(|(_, e)| *e).max().unwrap();
    realm.wait_ratified(leader, epoch);
    realm.wait_ratified(node4, epoch);
    let client4 = realm.client(node4);
    for (user, _) in &acked {
        assert_eq!(proof_at(&realm, node4, user, epoch), proof_at(&realm, leader, user, epoch), "{user}");
    }
    for (user, _) in [acked.first().unwrap(), &acked[at_backup.min(acked.len() - 1)], acked.last().unwrap()] {
        let answer = realm.runtime.block_on(client4.lookup(user, Default::default())).unwrap();
        assert!(answer.lookup.entry.is_some(), "{user} is registered on node 4");
    }
}
