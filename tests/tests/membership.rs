//! Membership changes as an operator makes them: a learner is reported caught up only once it
//! has applied what the leader had, and a learner that has not caught up is not promoted.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::SigningKey;
use keyraft_proto::peer::{ChangeVotersRequest, NodeSpec};
use keyraft_tests::{serial, wait_for, Realm};
use std::collections::BTreeMap;
use std::time::Duration;

fn keys(v: &str) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([("pgp".to_owned(), v.as_bytes().to_vec())])
}

fn owner() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

#[test]
fn add_learner_returns_once_the_learner_applied_what_the_leader_had() {
    let _s = serial();
    // One entry per AppendEntries: catching up takes one round trip per entry.
    let mut realm = Realm::start(|t| {
        let raft = t.entry("raft").or_insert(toml::Value::Table(Default::default())).as_table_mut().unwrap();
        raft.insert("max_payload_entries".into(), 1.into());
    });
    let leader = realm.wait_leader();
    let client = realm.client(leader);
    for n in 0..150 {
        realm.runtime.block_on(client.register(&format!("user-{n}@example.com"), &owner(), keys("k"))).unwrap();
    }
    realm.start_node_4();

    let at_call = realm.status(leader).unwrap().applied_index;
    let token = realm.path().join("keys/admin.token");
    let out = realm
        .command()
        .args(["admin", "--peer", &realm.peer_addr(leader), "--token-file", token.to_str().unwrap(), "add-learner"])
        .args(["--id", "4", "--peer-addr", &realm.peer_addr(3), "--public-addr", &realm.public_addr(3)])
        .output()
        .unwrap();
    let learner = realm.status(3).unwrap();
    assert!(out.status.success(), "add-learner: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        learner.applied_index >= at_call,
        "add-learner returned with the learner at applied index {} and the leader at {at_call} at the call: {}",
        learner.applied_index,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("caught up"));
}

#[test]
fn a_learner_that_has_not_caught_up_is_not_promoted_and_the_realm_keeps_committing() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let leader = realm.wait_leader();
    let leader_id = realm.replicas[leader].id;
    let rt = &realm.runtime;
    let mut peer = realm.peer(leader);
    // An address nothing listens on.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let spec = NodeSpec { id: 4, peer_addr: nowhere.clone(), public_addr: nowhere };
    let mut add = tonic::Request::new(spec);
    add.set_timeout(Duration::from_secs(3));
    let _ = rt.block_on(peer.add_learner(add));
    wait_for("node 4 to be a learner", || {
        realm.status(leader)?.nodes.iter().any(|n| n.id == 4 && !n.voter).then_some(())
    });

    // Voters {leader, 4} would need node 4 for every commit.
    let mut change = tonic::Request::new(ChangeVotersRequest { voters: vec![leader_id, 4] });
    change.set_timeout(Duration::from_secs(20));
    let e = rt.block_on(peer.change_voters(change)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("node 4 has not caught up") && e.message().contains("behind"), "{e}");

    // Nothing changed: the voters are the same and updates commit.
    let s = realm.status(leader).unwrap();
    let voters: Vec<u64> = s.nodes.iter().filter(|n| n.voter).map(|n| n.id).collect();
    assert_eq!(voters, vec![1, 2, 3]);
    rt.block_on(realm.client((leader + 1) % 3).register("alice@example.com", &owner(), keys("a"))).unwrap();
    let e = rt.block_on(peer.change_voters(ChangeVotersRequest { voters: vec![1, 2, 3, 5] })).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("node 5 is not a member"), "{e}");
}
