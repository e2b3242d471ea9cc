//! Rate limits against real replicas (issue 13, section 3): a client over its updates or its
//! lookups (and histories) of new user ids is refused with RESOURCE_EXHAUSTED and `retry-after-ms`, the client
//! library and the CLI say it is the caller's rate, and a retry after the wait succeeds.
//!
//! `keyraft dev` exempts loopback from the rate limits (its realms serve tests and load
//! generators); this realm takes the exemption away and sets small limits.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::SigningKey;
use keyraft_client::ClientError;
use keyraft_proto::pb;
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_tests::{serial, Realm};
use std::collections::BTreeMap;
use std::time::Duration;

/// One token every 10 s: the test's calls between two refills take far less.
const PER_MINUTE: i64 = 6;
/// Attempts before a limit must have been hit (its burst, plus the refills slow calls earn).
const ATTEMPTS_MAX: usize = 20;

fn limits(t: &mut toml::Table) -> &mut toml::Table {
    t.get_mut("limits").and_then(toml::Value::as_table_mut).expect("[limits]")
}

fn set(t: &mut toml::Table, key: &str, value: i64) {
    limits(t).insert(key.into(), toml::Value::Integer(value));
}

/// The milliseconds a refusal says to wait, checking that it is the rate limit `key`.
fn retry_after_ms(status: &tonic::Status, key: &str) -> u64 {
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(key) && status.message().contains("not a server fault"), "{status:?}");
    assert_eq!(status.metadata().get("rate-limit").unwrap(), key);
    let ms: u64 = status.metadata().get("retry-after-ms").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=10_000).contains(&ms), "{ms}");
    ms
}

#[test]
fn a_rate_limited_client_is_told_how_long_to_wait_and_then_succeeds() {
    let _s = serial();
    let realm = Realm::start(|t| {
        limits(t).insert("rate_exempt_addresses".into(), toml::Value::Array(vec![]));
        set(t, "rate_updates_per_address_per_minute", PER_MINUTE);
        set(t, "rate_updates_per_address_burst", 2);
        set(t, "rate_lookups_distinct_per_address_per_minute", PER_MINUTE);
        set(t, "rate_lookups_distinct_per_address_burst", 5);
    });
    let users = realm.client(0);
    let owner = SigningKey::generate(&mut rand::rngs::OsRng);
    let keys = BTreeMap::from([("pgp".to_owned(), b"a key".to_vec())]);

    // Updates: the client library reports the caller's rate, with the wait.
    let register = |user: &str| realm.runtime.block_on(users.register(user, &owner, keys.clone()));
    let (user, wait_ms) = (0..ATTEMPTS_MAX)
        .find_map(|n| {
            let user = format!("user{n}@example.com");
            match register(&user) {
                Ok(_) => None,
                Err(ClientError::RateLimited { message, retry_after_ms }) => {
                    assert!(message.contains("limits.rate_updates_per_address_per_minute"), "{message}");
                    Some((user, retry_after_ms))
                }
                Err(e) => panic!("{user}: {e}"),
            }
        })
        .expect("the update limit is hit");
    assert!((1..=10_000).contains(&wait_ms), "{wait_ms}");
    // The wait the replica names is the one to wait: no polling.
    std::thread::sleep(Duration::from_millis(wait_ms));
    let registered = register(&user).expect("a registration after the wait");
    realm.wait_ratified(0, registered.epoch);

    // Lookups of new user ids: RESOURCE_EXHAUSTED with the metadata; ids already asked for
    // stay free.
    let _g = realm.runtime.enter();
    let channel = realm.public_channel(0);
    let mut raw = KeyraftClient::new(channel.clone());
    let mut lookup = |user: &str| {
        realm.runtime.block_on(raw.lookup(pb::LookupRequest { user_id: user.into(), ..Default::default() }))
    };
    let key = "limits.rate_lookups_distinct_per_address_per_minute";
    let (new_id, wait_ms) = (0..ATTEMPTS_MAX)
        .find_map(|n| {
            let id = format!("stranger{n}@example.com");
            match lookup(&id) {
                Ok(_) => None,
                Err(status) => Some((id, retry_after_ms(&status, key))),
            }
        })
        .expect("the distinct-lookup limit is hit");
    lookup(&user).expect("a user id this address looked up recently is free");
    // History by user id reveals the index too: it shares the bucket.
    let history = |user: &str| {
        let request = pb::HistoryRequest { user_id: user.into(), ..Default::default() };
        realm.runtime.block_on(KeyraftClient::new(channel.clone()).history(request))
    };
    retry_after_ms(&history("another-stranger@example.com").unwrap_err(), key);
    history(&user).expect("a history of a user id this address looked up recently is free");
    std::thread::sleep(Duration::from_millis(wait_ms));
    lookup(&new_id).expect("a lookup after the wait");

    // The CLI says so, exit code 1 (the bucket is empty again).
    let out = realm.run_cli(&[
        "lookup",
        "--realm",
        "realm.json",
        "--endpoint",
        &realm.public_addr(0),
        "--verifiers",
        "0",
        "one-more-stranger@example.com",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rate limited (the caller's rate, not a server fault; retry in") && stderr.contains(key),
        "{stderr}"
    );
}
