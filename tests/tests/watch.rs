//! `Watch` against real replicas: the current value, heartbeats, changes, replay from an
//! epoch, request errors, the per-replica stream cap, a stalled reader closed with a reason,
//! a replica that has not reached `from_epoch`, an epoch the realm cannot reach, and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::SigningKey;
use keyraft_core::lookup::{verify_lookup, ClientRealm, Lookup};
use keyraft_core::{decode_canonical, LookupProof, Verified};
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::watch_event::Event;
use keyraft_proto::pb::{WatchEvent, WatchRequest};
use keyraft_server::service::EPOCHS_AHEAD_MAX;
use keyraft_tests::{serial, wait_for, Realm, DEADLINE};
use std::collections::BTreeMap;
use tonic::transport::Channel;
use tonic::Streaming;

const ALICE: &str = "alice@example.com";

fn keys(v: &str) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([("pgp".to_owned(), v.as_bytes().to_vec())])
}

fn owner() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// A raw gRPC client of replica `i`. With `small_windows`, HTTP/2 lets the server send only
/// 64 KiB ahead of what the test reads (hyper's client default is 2 MiB per stream), so a
/// test that stops reading soon stops the server's sender.
fn grpc(realm: &Realm, i: usize, small_windows: bool) -> KeyraftClient<Channel> {
    if small_windows {
        KeyraftClient::new(realm.small_window_channel(i))
    } else {
        KeyraftClient::new(realm.public_channel(i))
    }
}

fn watch_request(user_id: &str, verifier_threshold: u32, from_epoch: u64) -> WatchRequest {
    WatchRequest { user_id: user_id.to_owned(), verifier_threshold, from_epoch }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Changed,
    Heartbeat,
}

/// The next event, its proof verified. A live event is checked as fresh; a replayed one as of
/// its head's issue time (it proves the past, not the present).
async fn next(stream: &mut Streaming<WatchEvent>, realm: &ClientRealm, live: bool) -> (Kind, Verified<Lookup>) {
    let event = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("an event within the deadline")
        .expect("the stream is healthy")
        .expect("the stream is open")
        .event
        .expect("an event");
    let (kind, bytes) = match event {
        Event::Changed(b) => (Kind::Changed, b),
        Event::Heartbeat(b) => (Kind::Heartbeat, b),
    };
    let proof: LookupProof = decode_canonical(&bytes).expect("canonical lookup proof bytes");
    let now = if live { keyraft_client::now_ms() } else { proof.head.issue_time_ms };
    let verified = verify_lookup(realm, ALICE, &proof, now, None).expect("the event's proof verifies");
    (kind, verified)
}

fn version(v: &Verified<Lookup>) -> Option<u64> {
    v.entry.as_ref().map(|(e, _)| e.version)
}

/// What a client trusts, accepting epochs with `verifier_threshold` ratifications (the
/// harness starts no verifier unless a test asks for one).
fn trust(realm: &Realm, verifier_threshold: usize) -> (ClientRealm, keyraft_client::Client) {
    let mut file = realm.realm_file();
    file.verifier_threshold = verifier_threshold;
    let _g = realm.runtime.enter();
    let client = keyraft_client::Client::new(&file, &[realm.public_addr(0)]).unwrap();
    (file.client_realm().unwrap(), client)
}

/// Whether replica `node_id`'s log contains `needle`.
fn log_contains(realm: &Realm, node_id: u64, needle: &str) -> bool {
    std::fs::read_to_string(realm.path().join(format!("logs/node-{node_id}.log"))).is_ok_and(|l| l.contains(needle))
}

#[test]
fn watch_sends_the_current_value_then_heartbeats_and_every_change_with_proofs() {
    let _s = serial();
    let mut realm = Realm::start(|_| {});
    let (checker, users) = trust(&realm, 0);
    let alice = owner();

    // Before registration: the first event proves absence.
    realm.runtime.block_on(async {
        let mut w = grpc(&realm, 1, false).watch(watch_request(ALICE, 0, 0)).await.unwrap().into_inner();
        let (kind, first) = next(&mut w, &checker, true).await;
        assert_eq!(kind, Kind::Changed);
        assert_eq!(version(&first), None, "not registered yet");
    });

    let registered = realm.runtime.block_on(users.register(ALICE, &alice, keys("alice-1"))).unwrap().epoch;
    realm.wait_ratified(1, registered);
    let updated = realm.runtime.block_on(async {
        let mut w = grpc(&realm, 1, false).watch(watch_request(ALICE, 0, 0)).await.unwrap().into_inner();
        let (kind, first) = next(&mut w, &checker, true).await;
        assert_eq!(kind, Kind::Changed, "a stream from 0 starts with the current value");
        assert!(first.epoch() >= registered);
        assert_eq!(version(&first), Some(0));
        assert_eq!(first.entry.as_ref().unwrap().1.keys, keys("alice-1"));

        // Epochs pass without a change: heartbeats at increasing epochs, same entry.
        let mut epoch = first.epoch();
        for _ in 0..2 {
            let (kind, beat) = next(&mut w, &checker, true).await;
            assert_eq!(kind, Kind::Heartbeat);
            assert!(beat.epoch() > epoch, "epochs increase along a stream");
            assert_eq!(beat.entry, first.entry);
            epoch = beat.epoch();
        }

        // A change arrives as `changed`, proven at the epoch it landed in.
        let updated = users.update(ALICE, &alice, None, keys("alice-2")).await.unwrap().epoch;
        loop {
            let (kind, event) = next(&mut w, &checker, true).await;
            assert!(event.epoch() > epoch);
            epoch = event.epoch();
            if kind == Kind::Changed {
                assert_eq!(event.epoch(), updated);
                assert_eq!(version(&event), Some(1));
                assert_eq!(event.entry.as_ref().unwrap().1.keys, keys("alice-2"));
                break;
            }
            assert!(event.epoch() < updated, "a heartbeat at or after the update's epoch hid the change");
            assert_eq!(version(&event), Some(0));
        }
        let (kind, after) = next(&mut w, &checker, true).await;
        assert_eq!((kind, version(&after)), (Kind::Heartbeat, Some(1)));
        assert!(after.epoch() > updated);

        // From the epoch before the registration, on another replica: every change replayed
        // in order, each at its own epoch, then live heartbeats. (That replica may not have
        // ratified the update's epoch yet: then a heartbeat comes between the two changes.)
        let mut r = grpc(&realm, 2, false).watch(watch_request(ALICE, 0, registered - 1)).await.unwrap().into_inner();
        let (kind, replayed) = next(&mut r, &checker, false).await;
        assert_eq!((kind, replayed.epoch(), version(&replayed)), (Kind::Changed, registered, Some(0)));
        let replayed = loop {
            let (kind, event) = next(&mut r, &checker, false).await;
            if kind == Kind::Changed {
                break event;
            }
            assert!(event.epoch() > registered && event.epoch() < updated && version(&event) == Some(0));
        };
        assert_eq!((replayed.epoch(), version(&replayed)), (updated, Some(1)));
        let (kind, live) = next(&mut r, &checker, true).await;
        assert_eq!((kind, version(&live)), (Kind::Heartbeat, Some(1)));
        assert!(live.epoch() > updated);

        // From the update's epoch: nothing changed since, so the first event is a heartbeat.
        let mut r = grpc(&realm, 0, false).watch(watch_request(ALICE, 0, updated)).await.unwrap().into_inner();
        let (kind, first) = next(&mut r, &checker, true).await;
        assert_eq!((kind, version(&first)), (Kind::Heartbeat, Some(1)));
        assert!(first.epoch() > updated);

        // Malformed requests are refused before any stream starts, as Lookup refuses them.
        let mut c = grpc(&realm, 0, false);
        for (request, code, field) in [
            (watch_request("", 0, 0), tonic::Code::InvalidArgument, "user_id"),
            (watch_request("a\u{7}b", 0, 0), tonic::Code::InvalidArgument, "user_id"),
            (watch_request(&"x".repeat(257), 0, 0), tonic::Code::ResourceExhausted, "user_id"),
            (watch_request(ALICE, 2, 0), tonic::Code::InvalidArgument, "verifier_threshold"),
        ] {
            let e = c.watch(request).await.unwrap_err();
            assert_eq!(e.code(), code, "{e}");
            assert!(e.message().contains(field), "{e}");
        }
        updated
    });

    // With a verifier threshold, only ratified epochs count. A verifier started now ratifies
    // the realm's epochs in order, so the stream follows it: the value as of the newest epoch
    // it ratified, then each change as it ratifies the change's epoch, then heartbeats.
    realm.start_verifier();
    let (ratified, _) = trust(&realm, 1);
    realm.runtime.block_on(async {
        let mut w = grpc(&realm, 0, false).watch(watch_request(ALICE, 1, 0)).await.unwrap().into_inner();
        let (kind, first) = next(&mut w, &ratified, false).await;
        assert_eq!((kind, first.ratified_by.len()), (Kind::Changed, 1));
        let (mut epoch, mut current) = (first.epoch(), version(&first));
        while !(current == Some(1) && epoch > updated) {
            let (kind, event) = next(&mut w, &ratified, false).await;
            assert_eq!(event.ratified_by.len(), 1, "every event's epoch has the threshold's ratifications");
            assert!(event.epoch() > epoch);
            match kind {
                Kind::Changed => {
                    assert_ne!(version(&event), current, "a change shows a new value");
                    let expected = if event.epoch() == registered { Some(0) } else { Some(1) };
                    assert!(event.epoch() == registered || event.epoch() == updated, "{}", event.epoch());
                    assert_eq!(version(&event), expected);
                }
                Kind::Heartbeat => assert_eq!(version(&event), current, "a heartbeat shows the same value"),
            }
            (epoch, current) = (event.epoch(), version(&event));
        }
    });
}

/// A profile as large as a proof allows (three 4 KiB keys): every event is about 13 KB.
fn large_keys() -> BTreeMap<String, Vec<u8>> {
    (0..3).map(|i| (format!("app-{i}"), vec![b'k'; 4096])).collect()
}

#[test]
fn watch_streams_are_capped_and_end_with_a_reason_on_stall_lag_and_shutdown() {
    let _s = serial();
    let mut realm = Realm::start_with(&["--stream-stall-ms", "2000"], |t| {
        let limits = t.get_mut("limits").and_then(toml::Value::as_table_mut).expect("[limits]");
        limits.insert("watch_streams_max".into(), toml::Value::Integer(2));
        limits.insert("wait_ms_max".into(), toml::Value::Integer(3_000));
    });
    let (checker, users) = trust(&realm, 0);
    let registered = realm.runtime.block_on(users.register(ALICE, &owner(), large_keys())).unwrap().epoch;
    realm.wait_ratified(0, registered);

    // A reader that stops reading: the replica keeps sending heartbeats (one per epoch) until
    // the transport and the stream's buffer are full, then gives up after the stall limit.
    let mut stalled = realm.runtime.block_on(async {
        let mut w = grpc(&realm, 0, true).watch(watch_request(ALICE, 0, 0)).await.unwrap().into_inner();
        assert_eq!(next(&mut w, &checker, true).await.0, Kind::Changed);
        w
    });

    // The cap: the stalled stream and one more are served, a third is refused; closing one
    // frees its place.
    realm.runtime.block_on(async {
        let mut second = grpc(&realm, 0, false).watch(watch_request(ALICE, 0, 0)).await.unwrap().into_inner();
        assert_eq!(next(&mut second, &checker, true).await.0, Kind::Changed);
        let e = grpc(&realm, 0, false).watch(watch_request(ALICE, 0, 0)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
        assert!(e.message().contains("watch_streams_max"), "{e}");
        // Other replicas count their own streams.
        let mut elsewhere = grpc(&realm, 1, false).watch(watch_request(ALICE, 0, 0)).await.unwrap().into_inner();
        assert_eq!(next(&mut elsewhere, &checker, true).await.0, Kind::Changed);
        drop(second);
    });
    let mut third = wait_for("a closed stream to free its place", || {
        realm.runtime.block_on(async { grpc(&realm, 0, false).watch(watch_request(ALICE, 0, 0)).await.ok() })
    })
    .into_inner();
    realm.runtime.block_on(async { assert_eq!(next(&mut third, &checker, true).await.0, Kind::Changed) });
    drop(third);

    wait_for("replica 1 to close the stalled Watch", || {
        log_contains(&realm, 1, "closing a watch stream whose reader stalled").then_some(())
    });
    // Resuming, the reader gets what was buffered, then the reason.
    realm.runtime.block_on(async {
        let mut buffered = 0;
        let status = loop {
            match tokio::time::timeout(DEADLINE, stalled.message()).await.expect("the stream ends") {
                Ok(Some(_)) => buffered += 1,
                Ok(None) => panic!("the stream ended without saying why"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
        assert!(status.message().contains("stalled") && status.message().contains("2000 ms"), "{status}");
        eprintln!("the stalled reader had {buffered} events buffered");
    });

    // A replica behind `from_epoch` waits for it (here at most 3 s), then says it lags. The
    // realm cuts an epoch about every second when idle: it does not reach `EPOCHS_AHEAD_MAX`
    // epochs past its newest within those 3 s.
    let newest = realm.status(1).unwrap().last_epoch;
    realm.runtime.block_on(async {
        let from_epoch = newest + EPOCHS_AHEAD_MAX;
        let mut ahead = grpc(&realm, 1, false).watch(watch_request(ALICE, 0, from_epoch)).await.unwrap().into_inner();
        let status = tokio::time::timeout(DEADLINE, ahead.message()).await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        assert!(status.message().contains("ahead of this replica"), "{status}");
    });
    // Further epochs are refused at once, naming the newest epoch: the realm cannot reach them
    // within any wait (2^64-1 used to keep the stream waiting).
    realm.runtime.block_on(async {
        for from_epoch in [u64::MAX, newest + 1_000_000] {
            let started = std::time::Instant::now();
            let e = grpc(&realm, 1, false).watch(watch_request(ALICE, 0, from_epoch)).await.unwrap_err();
            assert!(started.elapsed() < std::time::Duration::from_secs(3), "took {:?}", started.elapsed());
            assert_eq!(e.code(), tonic::Code::OutOfRange, "{e}");
            assert!(e.message().contains("from_epoch") && e.message().contains("newest epoch"), "{e}");
        }
    });

    // A replica shutting down ends its streams with UNAVAILABLE (and does not wait for them).
    let mut open = realm.runtime.block_on(async {
        let mut w = grpc(&realm, 2, false).watch(watch_request(ALICE, 0, 0)).await.unwrap().into_inner();
        assert_eq!(next(&mut w, &checker, true).await.0, Kind::Changed);
        w
    });
    assert!(realm.terminate(2).success());
    realm.runtime.block_on(async {
        let status = loop {
            match tokio::time::timeout(DEADLINE, open.message()).await.expect("the stream ends") {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended without saying why"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        assert!(status.message().contains("shutting down"), "{status}");
    });
}
