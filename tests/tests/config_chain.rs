//! Realm configuration changes across processes (docs/protocol.md section 2.8): a replica key
//! is rotated by a change proposed and signed offline with the admin CLI and submitted to the
//! cluster while a client keeps updating and looking up and a verifier runs; a change signed
//! by a minority is refused with a clear error; the verifier follows the change and keeps
//! ratifying; a client starting from the old realm file reaches the new configuration; a
//! proof of an epoch before the change still verifies with the configuration of its epoch.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::SigningKey;
use keyraft_client::LookupOptions;
use keyraft_core::lookup::verify_lookup_at;
use keyraft_core::{LookupProof, PublicKey};
use keyraft_tests::{serial, wait_for, Realm};
use std::collections::BTreeMap;

#[test]
fn a_replica_key_is_rotated_while_clients_and_a_verifier_run() {
    let _s = serial();
    let mut realm = Realm::start(|_| {});
    realm.start_verifier();
    let old_file = realm.realm_file();
    let old_config = old_file.config().unwrap();
    assert_eq!(old_config.generation, 0);
    let client = realm.client_requiring(0, 1);
    let alice = SigningKey::generate(&mut rand::rngs::OsRng);
    let user = "alice@example.com";
    let keys = BTreeMap::from([("pgp".to_owned(), b"alice-1".to_vec())]);
    realm.runtime.block_on(client.registration(user, &alice).keys(keys).wait_for_quorum().send()).unwrap();
    let before = realm.runtime.block_on(client.lookup(user, LookupOptions::default())).unwrap();
    let before_epoch = before.lookup.epoch();

    // The new key of node 1, and the change proposed offline.
    let seed: [u8; 32] = rand::random();
    keyraft_core::key_file::write_secret(&realm.path().join("keys/replica-1-next.key"), &seed).unwrap();
    let next = PublicKey::from_verifying_key(&SigningKey::from_bytes(&seed).verifying_key()).unwrap();
    let next_hex = hex::encode(next.as_bytes());
    let admin = |args: &[&str]| {
        let out = realm.run_cli(&[&["admin"], args].concat());
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, out) = admin(&[
        "realm",
        "propose",
        "--realm",
        "realm.json",
        "--out",
        "change.hex",
        "rotate-replica",
        "--node-id",
        "1",
        "--key",
        &next_hex,
    ]);
    assert!(ok, "{out}");
    let peer = realm.peer_addr(0);
    let submit =
        || admin(&["--peer", &peer, "--token-file", "keys/admin.token", "realm", "submit", "--change", "change.hex"]);

    // Signed by one replica of three: refused by the realm, saying why.
    let (ok, out) = admin(&["realm", "sign", "--change", "change.hex", "--key", "keys/replica-2.key"]);
    assert!(ok, "{out}");
    let (ok, out) = submit();
    assert!(!ok && out.contains("needs a majority of 2"), "{out}");

    // With a second signature, the change is accepted; the next head commits to it.
    let (ok, out) = admin(&["realm", "sign", "--change", "change.hex", "--key", "keys/replica-3.key"]);
    assert!(ok, "{out}");
    let (ok, out) = submit();
    assert!(ok && out.contains("generation 1"), "{out}");

    // The client, still on the old realm file, keeps updating and looking up; it follows the
    // chain once a proof's head commits to the new configuration. Every answer it accepts
    // carries a verifier's ratification, so the verifier followed the change too.
    let mut round = 1;
    let after = wait_for("a verified answer under the new configuration", || {
        round += 1;
        let keys = BTreeMap::from([("pgp".to_owned(), format!("alice-{round}").into_bytes())]);
        // Updates may be refused for a moment (one per identity per epoch); lookups decide.
        let _ = realm.runtime.block_on(client.change(user).signer(&alice).keys(keys).send());
        let answer = realm.runtime.block_on(client.lookup(user, LookupOptions::default())).ok()?;
        (client.config_chain().newest().generation == 1 && answer.lookup.head.config_hash != old_config.hash())
            .then_some(answer)
    });
    assert_eq!(after.lookup.ratified_by.len(), 1);
    let new_config = client.config_chain().newest().clone();
    assert_eq!(new_config.replica_key_of_node(1), Some(next));
    assert_eq!(after.lookup.head.config_hash, new_config.hash());

    // The proof from before the change still verifies at its epoch with the old realm file.
    let old_proof = LookupProof::from_bytes(&before.proof).unwrap();
    let trusted = old_file.client_realm().unwrap();
    verify_lookup_at(&trusted, user, &old_proof, before_epoch).unwrap();

    // A fresh client from the old realm file reaches the new configuration on its own.
    let fresh = realm.client_requiring(1, 1);
    let answer = realm.runtime.block_on(fresh.lookup(user, LookupOptions::default())).unwrap();
    assert_eq!(answer.lookup.head.config_hash, new_config.hash());
    assert_eq!(fresh.config_chain().configs().len(), 2);

    // The CLI saves the chain it followed in its state file (checked again when read).
    realm.cli_ok(&["lookup", user]);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(realm.path().join("client-state.json")).unwrap()).unwrap();
    let chains = state["config_chains"].as_object().expect("config_chains in the client state file");
    assert_eq!(chains.len(), 1, "{state}");
    assert_eq!(chains.values().next().unwrap().as_array().unwrap().len(), 1, "{state}");
    let again = realm.cli_ok(&["lookup", user]);
    assert!(again.contains(user), "{again}");

    // The operator's view: the chain from the old realm file, followed and checked.
    let (ok, out) = admin(&["realm", "show", "--realm", "realm.json"]);
    assert!(ok && out.contains("generation 1") && out.contains(&format!("replica node 1: {next}")), "{out}");

    // Replaying the change is refused.
    let (ok, out) = submit();
    assert!(ok && out.contains("already applied"), "{out}");
}

/// A version-1 realm upgrades to version 2 through a change: the replicas' majority signs it,
/// each node keeps signing with the key now bound to its id, and a client starting from the
/// version-1 realm file reaches the version-2 configuration.
#[test]
fn a_version_1_realm_upgrades_to_version_2_through_a_change() {
    let _s = serial();
    let realm = Realm::start_with(&["--protocol-version", "1", "--verifier-count", "0"], |_| {});
    let old_config = realm.realm_file().config().unwrap();
    assert_eq!(old_config.protocol_version(), 1);
    let client = realm.client(0);
    let alice = SigningKey::generate(&mut rand::rngs::OsRng);
    let user = "alice@example.com";
    realm.runtime.block_on(client.registration(user, &alice).wait_for_quorum().send()).unwrap();
    // Node N signs with keys/replica-N.key: the upgrade binds exactly that.
    let bindings: Vec<String> = (1..=3).map(|n| format!("{}={n}", realm.replica_key_hex(n))).collect();
    let mut change = vec!["upgrade-v2"];
    for b in &bindings {
        change.extend(["--node", b]);
    }
    let upgraded = realm.change_config("realm.json", &change, &[1, 3], 0);
    assert_eq!(upgraded, "realm-g1.json");
    let answer = wait_for("an answer under the version-2 configuration", || {
        let a = realm.runtime.block_on(client.lookup(user, LookupOptions::default())).ok()?;
        (client.config_chain().newest().protocol_version() == 2).then_some(a)
    });
    assert_eq!(answer.lookup.head.config_hash, client.config_chain().newest().hash());
    assert!(answer.lookup.entry.is_some(), "alice's id was canonical: her index did not move");
    // Every node still signs: the epoch after the upgrade gets all three signatures.
    let epoch = answer.lookup.epoch();
    wait_for("three signatures on a version-2 head", || {
        let _g = realm.runtime.enter();
        let mut c = keyraft_proto::pb::keyraft_client::KeyraftClient::new(realm.public_channel(0));
        let info = realm.runtime.block_on(c.get_epoch(keyraft_proto::pb::GetEpochRequest { epoch: epoch + 1 })).ok()?;
        (info.into_inner().replica_signatures.len() == 3).then_some(())
    });
}
