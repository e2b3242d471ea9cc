//! Structured logs (issue 16 part 6): `--log-format json` writes one JSON object per line, and
//! every line logged while a request is handled carries its request id, the client's own
//! (`x-request-id`) or one the replica made, which the answer names too.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_proto::peer::StatusRequest;
use keyraft_tests::{serial, wait_for, Realm};

/// A status call on replica `i` with `x-request-id: id` (if given); the id the answer names.
fn status_with_id(realm: &Realm, i: usize, id: Option<&str>) -> String {
    let mut peer = realm.peer(i);
    let mut request = tonic::Request::new(StatusRequest {});
    if let Some(id) = id {
        request.metadata_mut().insert("x-request-id", id.parse().unwrap());
    }
    let response = realm.runtime.block_on(peer.status(request)).unwrap();
    response.metadata().get("x-request-id").expect("the answer names its request id").to_str().unwrap().to_owned()
}

fn log(realm: &Realm, id: u64) -> String {
    std::fs::read_to_string(realm.path().join(format!("logs/node-{id}.log"))).unwrap_or_default()
}

#[test]
fn json_logs_are_one_object_per_line_and_a_requests_lines_carry_its_id() {
    let _s = serial();
    let mut realm = Realm::create_with(&[], |_| {});
    // `keyraft dev` wrote text while it set the realm up: this run's lines only.
    std::fs::remove_file(realm.path().join("logs/node-1.log")).unwrap();
    realm.start_replica_with_env(0, &[("KEYRAFT_LOG_FORMAT", "json")]);
    realm.start_replica(1);
    realm.start_replica(2);
    realm.wait_leader();

    assert_eq!(status_with_id(&realm, 0, Some("ops-test-1")), "ops-test-1");
    let made = status_with_id(&realm, 0, None);
    assert!(!made.is_empty() && made != "ops-test-1", "{made}");
    // An id that is no plain text is replaced, never written into the log.
    let replaced = status_with_id(&realm, 0, Some("a\"b"));
    assert_ne!(replaced, "a\"b");

    // Every admin call is logged at info, inside its request's span.
    let line = wait_for("the admin call with its request id in node 1's JSON log", || {
        let text = log(&realm, 1);
        text.lines().find(|l| l.contains("admin call") && l.contains("ops-test-1")).map(str::to_owned)
    });
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["span"]["request_id"], "ops-test-1", "{line}");
    assert_eq!(entry["span"]["path"], "/keyraft.peer.v1.Peer/Status", "{line}");
    assert_eq!(entry["fields"]["message"], "admin call", "{line}");
    assert!(entry["level"].is_string() && entry["timestamp"].is_string(), "{line}");
    let text = log(&realm, 1);
    let mut lines = 0;
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.is_object(), "{l}");
        lines += 1;
    }
    assert!(lines >= 3, "{text}");
    assert!(!text.contains("a\"b") && !text.contains(r#"a\"b"#), "a client's raw id reached the log");

    // In text, the span is written before the message.
    status_with_id(&realm, 1, Some("ops-test-2"));
    wait_for("the admin call with its request id in node 2's text log", || {
        log(&realm, 2)
            .lines()
            .any(|l| l.contains("admin call") && l.contains("request{request_id=ops-test-2"))
            .then_some(())
    });
}
