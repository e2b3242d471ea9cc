//! Complete histories (protocol version 2): every version is the previous one plus one, so a
//! client checks that a history leaves nothing out. A replica (a test-only fake relaying a
//! real realm's answers) that drops a version anywhere (in the middle, the newest, the
//! oldest, between two pages) is caught by the client library and by `keyraft history`, which
//! exits with the misbehaviour code; the honest history is reported complete.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_client::{Client, ClientError, ClientOptions};
use keyraft_proto::pb;
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_tests::fake::FakeReplica;
use keyraft_tests::{serial, Realm};
use std::collections::BTreeMap;

const ALICE: &str = "alice@example.com";

fn keys(value: &str) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([("pgp".to_owned(), value.as_bytes().to_vec())])
}

fn client(realm: &Realm, endpoint: &str) -> Client {
    let _g = realm.runtime.enter();
    Client::with_options(&realm.realm_file(), &[endpoint.to_owned()], &ClientOptions::default()).unwrap()
}

/// The honest first (and only) page of ALICE's history, from replica 1.
fn honest_page(realm: &Realm) -> pb::HistoryResponse {
    let _g = realm.runtime.enter();
    let mut grpc = KeyraftClient::new(realm.public_channel(0));
    let request = pb::HistoryRequest { user_id: ALICE.into(), page_size: 100, ..Default::default() };
    realm.runtime.block_on(grpc.history(request)).unwrap().into_inner()
}

/// A replica answering the first history page with `first` and any later page with `later`.
fn serving(realm: &Realm, first: pb::HistoryResponse, later: pb::HistoryResponse) -> String {
    FakeReplica::default()
        .history(move |r| Ok(if r.page_token.is_empty() { first.clone() } else { later.clone() }))
        .serve(realm)
}

fn left_out(e: &ClientError, what: &str) -> bool {
    e.is_misbehavior() && e.to_string().contains(what)
}

#[test]
fn a_history_with_a_version_left_out_is_misbehaviour_and_the_honest_one_is_complete() {
    let _s = serial();
    let realm = Realm::start_with(&["--verifier-count", "0"], |_| {});
    assert_eq!(realm.realm_file().protocol_version, 2);
    let honest = realm.client(0);
    let alice = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let mut epoch = realm.runtime.block_on(honest.register(ALICE, &alice, keys("a0"))).unwrap().epoch;
    for value in ["a1", "a2", "a3"] {
        realm.wait_ratified(0, epoch);
        epoch = realm.runtime.block_on(honest.update(ALICE, &alice, None, keys(value))).unwrap().epoch;
    }
    realm.wait_ratified(0, epoch);

    // The honest history, in one page and in pages of one, is the chain 3, 2, 1, 0.
    let all = realm.runtime.block_on(honest.full_history(ALICE, 1)).unwrap();
    assert_eq!(all.iter().map(|v| v.version).collect::<Vec<_>>(), [3, 2, 1, 0]);
    assert!(all.iter().all(|v| v.meets_threshold));
    let text = realm.cli_ok(&["history", "--all", "--page-size", "2", ALICE]);
    assert!(text.contains("complete: every version from the newest to version 0"), "{text}");
    let page = honest_page(&realm);
    assert_eq!(page.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [3, 2, 1, 0]);
    assert!(!page.current.is_empty() && page.next_page_token.is_empty());

    let without = |drop: &[u64]| pb::HistoryResponse {
        versions: page.versions.iter().filter(|v| !drop.contains(&v.version)).cloned().collect(),
        ..page.clone()
    };
    let empty = pb::HistoryResponse::default();
    let cases = [
        ("a version in the middle", serving(&realm, without(&[2]), empty.clone()), "history skips versions 2 to 2"),
        ("the newest version", serving(&realm, without(&[3]), empty.clone()), "the newest versions were left out"),
        ("the oldest version", serving(&realm, without(&[0]), empty.clone()), "the oldest versions were left out"),
        (
            "the proof of the current version",
            serving(&realm, pb::HistoryResponse { current: Vec::new(), ..page.clone() }, empty.clone()),
            "lacks the proof of the current version",
        ),
        (
            "a version between two pages",
            serving(
                &realm,
                pb::HistoryResponse { next_page_token: b"more".to_vec(), ..without(&[1, 0]) },
                pb::HistoryResponse { current: Vec::new(), ..without(&[3, 2, 1]) },
            ),
            "history skips versions 1 to 1",
        ),
    ];
    for (what, liar, message) in &cases {
        let e = realm.runtime.block_on(client(&realm, liar).full_history(ALICE, 100)).unwrap_err();
        assert!(left_out(&e, message), "{what} left out: {e}");
        let out = realm.cli(&["history", "--all", "--endpoint", liar, ALICE]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{what} left out: {stderr}");
        assert!(stderr.contains("misbehaved") && stderr.contains(message), "{what} left out: {stderr}");
    }
}
