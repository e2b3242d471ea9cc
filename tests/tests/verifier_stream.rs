//! `VerifierStream` against real replicas: framing, identical positions on every replica,
//! signed heads, resume by root, divergence refused, live epochs after `CaughtUp`, a stalled
//! reader closed with a reason, streams ended by a replica shutting down.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::SigningKey;
use keyraft_core::lookup::head_signing_message;
use keyraft_core::{decode_canonical, EpochHead, PublicKey, Signature, SignedEntry};
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::verifier_frame::Frame;
use keyraft_proto::pb::VerifierStreamRequest;
use keyraft_tests::{serial, wait_for, Realm, DEADLINE};
use std::collections::BTreeMap;
use tonic::Streaming;

/// One epoch as a verifier receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Epoch {
    updates: Vec<Vec<u8>>,
    head: Vec<u8>,
}

fn client(realm: &Realm, i: usize) -> KeyraftClient<tonic::transport::Channel> {
    let _g = realm.runtime.enter();
    KeyraftClient::new(realm.public_channel(i))
}

/// Reads frames until `until` epochs are complete (after `CaughtUp` when `until` is 0).
async fn read_epochs(
    stream: &mut Streaming<keyraft_proto::pb::VerifierFrame>,
    until: u64,
    fresh: bool,
) -> BTreeMap<u64, Epoch> {
    let mut epochs = BTreeMap::new();
    let mut pending: Option<(u64, Vec<Vec<u8>>, u32)> = None;
    let mut saw_init = !fresh;
    loop {
        let frame = tokio::time::timeout(DEADLINE, stream.message()).await.unwrap().unwrap().unwrap().frame.unwrap();
        match frame {
            Frame::Init(init) => {
                assert!(!saw_init, "one Init per stream, first");
                saw_init = true;
                assert_eq!(init.serving_replica.len(), 32);
                assert_eq!(init.oldest_replayable_epoch, 1);
            }
            Frame::Updates(u) => {
                assert!(saw_init);
                let (epoch, mut list, chunk) = pending.take().unwrap_or((u.epoch, Vec::new(), 0));
                assert_eq!((epoch, chunk), (u.epoch, u.chunk), "chunks arrive in order");
                list.extend(u.signed_entries);
                pending = Some((epoch, list, chunk + 1));
                if u.last_chunk {
                    let (epoch, list, _) = pending.take().unwrap();
                    epochs.insert(epoch, Epoch { updates: list, head: Vec::new() });
                }
            }
            Frame::Head(h) => {
                let head = EpochHead::from_bytes(&h.head).unwrap();
                let e = epochs.get_mut(&head.epoch).expect("a head follows its epoch's updates");
                assert!(e.head.is_empty());
                e.head = h.head.clone();
                assert_eq!(head.update_count as usize, e.updates.len());
                assert!(h.replica_signatures.len() >= 2, "a replica majority signs every streamed head");
                for s in &h.replica_signatures {
                    let key = PublicKey::from_slice(&s.signer).unwrap();
                    assert!(key.verify(&head_signing_message(&head), &Signature::from_slice(&s.signature).unwrap()));
                }
                if until != 0 && head.epoch >= until {
                    return epochs;
                }
            }
            Frame::CaughtUp(c) => {
                assert_eq!(Some(&c.epoch), epochs.keys().next_back().or(Some(&0)));
                if until == 0 {
                    return epochs;
                }
            }
            Frame::Heartbeat(_) => {}
            // This realm's configuration does not change (tests/tests/config_chain.rs does).
            Frame::ConfigChange(_) => panic!("no configuration change was made"),
        }
    }
}

#[test]
fn verifiers_stream_identical_signed_epochs_from_any_replica_and_resume_by_root() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let users = realm.client(0);
    for i in 0..12 {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let keys = BTreeMap::from([("pgp".to_owned(), format!("key-{i}").into_bytes())]);
        realm.runtime.block_on(users.register(&format!("v{i}@example.com"), &key, keys)).unwrap();
    }
    let target = realm.status(0).unwrap().last_epoch + 1;
    realm.wait_ratified(0, target);
    realm.wait_ratified(2, target);

    let (from0, from2) = realm.runtime.block_on(async {
        let mut a = client(&realm, 0)
            .verifier_stream(realm.signed_stream(VerifierStreamRequest::default()))
            .await
            .unwrap()
            .into_inner();
        let mut b = client(&realm, 2)
            .verifier_stream(
                realm.signed_stream(VerifierStreamRequest { max_frame_bytes: 65_536, ..Default::default() }),
            )
            .await
            .unwrap()
            .into_inner();
        (read_epochs(&mut a, target, true).await, read_epochs(&mut b, target, true).await)
    });
    assert_eq!(from0.keys().next(), Some(&1));
    assert_eq!(from0, from2, "positions and contents are identical on every replica");
    let updates: Vec<&Vec<u8>> = from0.values().flat_map(|e| e.updates.iter()).collect();
    assert!(updates.len() >= 12);
    let bytes: usize = updates.iter().map(|u| u.len()).sum();
    let per_update = bytes / updates.len();
    eprintln!("verifier stream: {per_update} bytes per update (signed entries)");
    assert!(per_update <= 300, "{per_update} bytes per update");
    for u in &updates {
        decode_canonical::<SignedEntry>(u).expect("canonical signed entries, no profiles");
    }

    // Resume after epoch 2 with its root: the stream starts at epoch 3.
    let head2 = EpochHead::from_bytes(&from0[&2].head).unwrap();
    realm.runtime.block_on(async {
        let req = VerifierStreamRequest {
            resume_epoch: 2,
            resume_root: head2.root.to_vec(),
            max_frame_bytes: 0,
            ..Default::default()
        };
        let mut s = client(&realm, 1).verifier_stream(realm.signed_stream(req)).await.unwrap().into_inner();
        let resumed = read_epochs(&mut s, target, true).await;
        assert_eq!(resumed.keys().next(), Some(&3));
        for (e, epoch) in &resumed {
            assert_eq!(Some(epoch), from0.get(e));
        }
        // A diverged root and a future epoch are refused, loudly.
        let mut bad = head2.root;
        bad[0] ^= 1;
        let req = VerifierStreamRequest {
            resume_epoch: 2,
            resume_root: bad.to_vec(),
            max_frame_bytes: 0,
            ..Default::default()
        };
        let e = client(&realm, 1).verifier_stream(realm.signed_stream(req)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
        assert!(e.message().contains("diverged"), "{e}");
        // The refusal is typed, for the verifier to act on without reading the words.
        assert_eq!(
            keyraft_proto::convert::Refusal::of(&e),
            Some(keyraft_proto::convert::Refusal::HistoryDiverged { epoch: 2 }),
            "{e}"
        );
        let req = VerifierStreamRequest {
            resume_epoch: 1_000_000,
            resume_root: vec![0; 32],
            max_frame_bytes: 0,
            ..Default::default()
        };
        let e = client(&realm, 1).verifier_stream(realm.signed_stream(req)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
        let req =
            VerifierStreamRequest { resume_epoch: 0, resume_root: vec![], max_frame_bytes: 10, ..Default::default() };
        let e = client(&realm, 1).verifier_stream(realm.signed_stream(req)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    });

    // Live: after CaughtUp, a new update arrives in a new epoch on the open stream.
    realm.runtime.block_on(async {
        let mut s = client(&realm, 1)
            .verifier_stream(realm.signed_stream(VerifierStreamRequest::default()))
            .await
            .unwrap()
            .into_inner();
        let caught_up = read_epochs(&mut s, 0, true).await;
        let last = *caught_up.keys().next_back().unwrap();
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let r = users.register("live@example.com", &key, BTreeMap::new()).await.unwrap();
        assert!(r.epoch > last);
        let live = read_epochs(&mut s, r.epoch, false).await;
        let epoch = &live[&r.epoch];
        assert!(epoch
            .updates
            .iter()
            .any(|u| decode_canonical::<SignedEntry>(u).unwrap().signatures[0].signer
                == keyraft_client::public_key(&key)));
    });
}

/// Registers `n` identities whose signed entries are as large as the format allows (a policy
/// of 16 keys, all of which sign): about 2.2 KB each in the verifier stream.
fn register_large_entries(realm: &Realm, n: usize) -> u64 {
    use keyraft_core::lookup::verify_lookup;
    use keyraft_core::{Canonical, Entry, LookupProof, Policy, Profile, Update};
    use keyraft_proto::pb::{LookupRequest, UpdateRequest};
    const TASKS: usize = 16;
    // The harness runs no verifier here: accept epochs a replica majority signed.
    let mut file = realm.realm_file();
    file.verifier_threshold = 0;
    let checker = file.client_realm().unwrap();
    let signers: Vec<SigningKey> = (0..16).map(|_| SigningKey::generate(&mut rand::rngs::OsRng)).collect();
    let policy = Policy::threshold(16, signers.iter().map(keyraft_core::keys::public_key_of).collect()).unwrap();
    let signers = std::sync::Arc::new(signers);
    realm.runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..TASKS {
            let (mut c, checker, policy, signers, name) =
                (client(realm, t % 3), checker.clone(), policy.clone(), signers.clone(), realm.name());
            tasks.spawn(async move {
                let mut newest = 0;
                for i in (t..n).step_by(TASKS) {
                    let user_id = format!("large-{i}@example.com");
                    let req = LookupRequest { user_id: user_id.clone(), wait_ms: 10_000, ..Default::default() };
                    let proof: LookupProof =
                        decode_canonical(&c.lookup(req).await.unwrap().into_inner().proof).unwrap();
                    let index =
                        verify_lookup(&checker, &user_id, &proof, keyraft_client::now_ms(), None).unwrap().index;
                    let profile = Profile { nonce: vec![7; 16], keys: BTreeMap::new() };
                    let entry = Entry {
                        index,
                        version: 0,
                        update_policy: policy.clone(),
                        profile_commitment: profile.commitment(),
                    };
                    let keys: Vec<&SigningKey> = signers.iter().collect();
                    let signatures = keyraft_core::update::sign_entry(&name, &entry, &keys);
                    let update = Update { signed: SignedEntry { entry, signatures }, profile };
                    let req = UpdateRequest {
                        user_id,
                        update: update.encode(),
                        verifier_threshold: None,
                        wait_ms: 0,
                        registration: None,
                        recovery: false,
                    };
                    newest = newest.max(c.update(req).await.unwrap().into_inner().epoch);
                }
                newest
            });
        }
        let mut newest = 0;
        while let Some(epoch) = tasks.join_next().await {
            newest = newest.max(epoch.unwrap());
        }
        newest
    })
}

/// Reads until the stream ends; returns the frames and signed-entry bytes read, and how it
/// ended.
async fn read_to_end(stream: &mut Streaming<keyraft_proto::pb::VerifierFrame>) -> (usize, usize, tonic::Status) {
    let (mut frames, mut bytes) = (0, 0);
    loop {
        match tokio::time::timeout(DEADLINE, stream.message()).await.expect("the stream ends") {
            Ok(Some(f)) => {
                frames += 1;
                if let Some(Frame::Updates(u)) = f.frame {
                    bytes += u.signed_entries.iter().map(Vec::len).sum::<usize>();
                }
            }
            Ok(None) => panic!("the stream ended without saying why after {frames} frames"),
            Err(status) => return (frames, bytes, status),
        }
    }
}

#[test]
fn a_verifier_stream_reader_that_stops_reading_is_closed_with_a_reason() {
    let _s = serial();
    let mut realm = Realm::start_with(&["--stream-stall-ms", "2000"], |_| {});
    // About 1.7 MB of signed entries: more than the stream's 8 frames of at most 64 KiB, the
    // encoder's buffer and the reader's 64 KiB HTTP/2 window hold together (at most about
    // 0.7 MB; measured about 0.3 MB, as short epochs make small frames).
    let newest = register_large_entries(&realm, 800);
    realm.wait_ratified(0, newest);

    let mut stalled = realm.runtime.block_on(async {
        let mut c = KeyraftClient::new(realm.small_window_channel(0));
        let req = VerifierStreamRequest { max_frame_bytes: 65_536, ..Default::default() };
        let mut s = c.verifier_stream(realm.signed_stream(req)).await.unwrap().into_inner();
        let first = tokio::time::timeout(DEADLINE, s.message()).await.unwrap().unwrap().unwrap();
        assert!(matches!(first.frame, Some(Frame::Init(_))));
        s
    });
    // The test stops reading; the replica must give up on it on its own.
    wait_for("replica 1 to close the stalled verifier stream", || {
        std::fs::read_to_string(realm.path().join("logs/node-1.log"))
            .is_ok_and(|l| l.contains("closing a verifier stream whose reader stalled"))
            .then_some(())
    });
    let (frames, bytes, status) = realm.runtime.block_on(read_to_end(&mut stalled));
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("stalled") && status.message().contains("2000 ms"), "{status}");
    eprintln!("the stalled reader had {frames} frames ({bytes} bytes of signed entries) buffered");

    // A replica shutting down ends its open streams with UNAVAILABLE instead of waiting for
    // them (its listener's graceful shutdown would).
    let mut open = realm.runtime.block_on(async {
        let mut s = client(&realm, 2)
            .verifier_stream(realm.signed_stream(VerifierStreamRequest::default()))
            .await
            .unwrap()
            .into_inner();
        read_epochs(&mut s, 0, true).await;
        s
    });
    assert!(realm.terminate(2).success());
    let (_, _, status) = realm.runtime.block_on(read_to_end(&mut open));
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    assert!(status.message().contains("shutting down"), "{status}");
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[test]
fn many_verifier_streams_that_do_not_read_hold_bounded_memory() {
    const STREAMS: usize = 64;
    let _s = serial();
    let realm = Realm::start(|_| {});
    // About 3.4 MB of signed entries: a replica holding all of it for each stream would need
    // over 200 MB for 64 readers; each stream may hold 8 frames of 64 KiB plus what its
    // reader's 64 KiB window lets through.
    let newest = register_large_entries(&realm, 1600);
    realm.wait_ratified(0, newest);
    let pid = realm.replicas[0].child.as_ref().unwrap().id();
    let before = rss_bytes(pid);
    let streams = realm.runtime.block_on(async {
        let mut streams = Vec::new();
        for _ in 0..STREAMS {
            // A connection each.
            let mut c = KeyraftClient::new(realm.small_window_channel(0));
            let req = VerifierStreamRequest { max_frame_bytes: 65_536, ..Default::default() };
            let mut s = c.verifier_stream(realm.signed_stream(req)).await.unwrap().into_inner();
            let first = tokio::time::timeout(DEADLINE, s.message()).await.unwrap().unwrap().unwrap();
            assert!(matches!(first.frame, Some(Frame::Init(_))));
            streams.push(s);
        }
        streams
    });
    // Two more epochs: every producer has long filled what it may buffer.
    realm.wait_ratified(0, realm.status(0).unwrap().ratified_epoch + 2);
    let after = rss_bytes(pid);
    let grown = after.saturating_sub(before);
    eprintln!("{STREAMS} stalled verifier streams: replica RSS {before} -> {after} bytes");
    assert!(grown < 96 * 1024 * 1024, "{STREAMS} readers that read nothing grew the replica by {grown} bytes");
    // The streams are still served: nothing was dropped for lack of memory.
    assert_eq!(realm.status(0).map(|s| s.has_leader), Some(true));
    drop(streams);
}

/// The stream is served to registered verifiers only (docs/protocol.md section 7.1): an
/// unsigned request, a key the realm does not list, a signature from outside the clock skew,
/// another realm's signature and a flipped signature are refused with their statuses; the
/// realm's verifier, signing now, reads.
#[test]
fn only_the_realms_verifiers_read_the_stream() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let secret = keyraft_core::key_file::read_secret(&realm.path().join("keys/verifier-1.key"), "key").unwrap();
    let verifier = SigningKey::from_bytes(&secret.key);
    let stranger = SigningKey::generate(&mut rand::rngs::OsRng);
    let now = keyraft_core::clock::system().now_ms();
    let skew = realm.realm_file().clock_skew_ms;
    let sign = |key: &SigningKey, realm_name: &str, time_ms: u64| {
        keyraft_proto::convert::sign_stream_request(VerifierStreamRequest::default(), key, realm_name, time_ms).unwrap()
    };
    let name = realm.name();
    let mut flipped = sign(&verifier, &name, now);
    flipped.access_signature[10] ^= 1;
    let refused = [
        ("unsigned", VerifierStreamRequest::default(), tonic::Code::Unauthenticated, "registered verifiers"),
        ("a stranger", sign(&stranger, &name, now), tonic::Code::PermissionDenied, "not a verifier key"),
        ("too old", sign(&verifier, &name, now - skew - 60_000), tonic::Code::Unauthenticated, "clock"),
        ("from the future", sign(&verifier, &name, now + skew + 60_000), tonic::Code::Unauthenticated, "clock"),
        ("another realm", sign(&verifier, "other.example", now), tonic::Code::Unauthenticated, "does not verify"),
        ("flipped", flipped, tonic::Code::Unauthenticated, "does not verify"),
    ];
    realm.runtime.block_on(async {
        for (what, req, code, says) in refused {
            let e = client(&realm, 0).verifier_stream(req).await.unwrap_err();
            assert_eq!(e.code(), code, "{what}: {e}");
            assert!(e.message().contains(says), "{what}: {e}");
        }
        let mut s = client(&realm, 0)
            .verifier_stream(realm.signed_stream(VerifierStreamRequest::default()))
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(DEADLINE, s.message()).await.unwrap().unwrap().unwrap();
        assert!(matches!(first.frame, Some(Frame::Init(_))));
    });
}
