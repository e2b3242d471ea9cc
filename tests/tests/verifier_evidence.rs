//! A verifier fed a tampered epoch (through a test-only stream source that relays a real
//! replica's stream and alters one update, or replaces a head with another one signed by the
//! replica majority: compromised replicas) writes evidence, halts, and signs nothing more.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::verifier_frame::Frame;
use keyraft_proto::pb::{self, VerifierFrame};
use keyraft_tests::fake::{BoxStream, FakeReplica};
use keyraft_tests::{edit_config, keyraft_bin, serial, wait_for, Realm};
use tonic::Status;

/// What the test-only source alters.
#[derive(Clone)]
enum Tamper {
    /// One byte of the epoch's first update (inside its last signature).
    Update,
    /// The epoch's root, re-signed with these replica keys (a majority): a head the replicas
    /// "signed" that the updates do not produce.
    Head(Vec<ed25519_dalek::SigningKey>),
    /// `CaughtUp` replaced by a heartbeat carrying the last head with another root and the
    /// original signatures, which no longer verify: a contradiction nobody signed.
    UnsignedHeartbeat,
}

fn resign(head_bytes: &[u8], keys: &[ed25519_dalek::SigningKey]) -> pb::verifier_frame::SignedHead {
    use ed25519_dalek::Signer as _;
    let mut head = keyraft_core::EpochHead::from_bytes(head_bytes).unwrap();
    head.root[0] ^= 0x01;
    let message = keyraft_core::lookup::head_signing_message(&head);
    pb::verifier_frame::SignedHead {
        head: keyraft_core::Canonical::encode(&head),
        replica_signatures: keys
            .iter()
            .map(|k| pb::KeySignature {
                signer: k.verifying_key().to_bytes().to_vec(),
                signature: k.sign(&message).to_bytes().to_vec(),
            })
            .collect(),
    }
}

/// A stream source that relays `upstream`'s verifier stream, altering epoch `tamper_epoch`
/// as `tamper` says.
fn tampering_source(realm: &Realm, upstream: String, tamper_epoch: u64, tamper: Tamper) -> String {
    let channels = realm.channels();
    FakeReplica::default()
        .verifier_stream(move |request| {
            let (upstream, tamper) = (upstream.clone(), tamper.clone());
            let channel = channels.lazy(&upstream).map_err(|e| Status::unavailable(e.to_string()));
            async move {
                let mut up = KeyraftClient::new(channel?);
                let stream = up.verifier_stream(request).await?.into_inner();
                let mut tampered = false;
                let mut last_head: Option<pb::verifier_frame::SignedHead> = None;
                let relayed = tokio_stream::StreamExt::map(stream, move |item| {
                    let mut frame = item?;
                    if let Some(Frame::Head(h)) = &frame.frame {
                        last_head = Some(h.clone());
                    }
                    match (&tamper, &mut frame.frame) {
                        (Tamper::UnsignedHeartbeat, Some(Frame::CaughtUp(_))) => {
                            let mut h = last_head.clone().expect("a head before CaughtUp");
                            let mut head = keyraft_core::EpochHead::from_bytes(&h.head).unwrap();
                            head.root[0] ^= 0x01;
                            h.head = keyraft_core::Canonical::encode(&head);
                            frame.frame = Some(Frame::Heartbeat(h));
                        }
                        (Tamper::Update, Some(Frame::Updates(u)))
                            if u.epoch == tamper_epoch && !tampered && !u.signed_entries.is_empty() =>
                        {
                            let entry = &mut u.signed_entries[0];
                            let last = entry.len() - 1;
                            entry[last] ^= 0x01; // inside the last signature
                            tampered = true;
                        }
                        (Tamper::Head(keys), Some(Frame::Head(h))) => {
                            let epoch = keyraft_core::EpochHead::from_bytes(&h.head).unwrap().epoch;
                            if epoch == tamper_epoch {
                                *h = resign(&h.head, keys);
                            }
                        }
                        _ => {}
                    }
                    Ok(frame)
                });
                Ok(Box::pin(relayed) as BoxStream<VerifierFrame>)
            }
        })
        .serve(realm)
}

#[test]
fn a_tampered_update_makes_the_verifier_write_evidence_and_halt() {
    let record = run_against_tampering_source(|_| Tamper::Update);
    assert!(record["reason"].as_str().unwrap().contains("breaks the rules"), "{record}");
    assert!(!record["updates"].as_array().unwrap().is_empty());
}

#[test]
fn a_head_signed_by_the_replica_majority_that_the_updates_do_not_produce_is_evidence() {
    let record = run_against_tampering_source(|realm| {
        let keys = (1..=2)
            .map(|n| {
                let path = realm.path().join(format!("keys/replica-{n}.key"));
                ed25519_dalek::SigningKey::from_bytes(&keyraft_server::config::read_secret32(&path, "key").unwrap())
            })
            .collect();
        Tamper::Head(keys)
    });
    // Both heads are in the file: the signed one received and the one the updates produce.
    let received = hex::decode(record["received_head"].as_str().unwrap()).unwrap();
    let expected = hex::decode(record["expected_head"].as_str().unwrap()).unwrap();
    let received = keyraft_core::EpochHead::from_bytes(&received).unwrap();
    let expected = keyraft_core::EpochHead::from_bytes(&expected).unwrap();
    assert_eq!(received.epoch, expected.epoch);
    assert_ne!(received.root, expected.root);
    assert_eq!(record["received_replica_signatures"].as_array().unwrap().len(), 2);
}

#[test]
fn a_contradicting_heartbeat_nobody_signed_is_not_evidence() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let users = realm.client(0);
    for i in 0..3 {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        realm.runtime.block_on(users.register(&format!("h{i}@example.com"), &key, Default::default())).unwrap();
    }
    let caught_up_at = realm.status(0).unwrap().ratified_epoch;
    let source = tampering_source(&realm, realm.public_addr(0), 0, Tamper::UnsignedHeartbeat);
    let config = realm.path().join("verifier-1.toml");
    edit_config(&config, &|t: &mut toml::Table| {
        t.insert("endpoints".into(), toml::Value::Array(vec![source.clone().into()]));
    });
    let log_path = realm.path().join("logs/verifier-heartbeat.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = std::process::Command::new(keyraft_bin())
        .args(["verifier", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info,keyraft_verifier=debug")
        .stderr(log)
        .spawn()
        .unwrap();
    let mut realm = realm;
    realm.verifiers.insert(1, child);
    // It goes on verifying epochs after the forged heartbeat (the source does not relay
    // ratifications, so the log says so), and never halts.
    let wanted = format!("epoch verified epoch={}", caught_up_at + 2);
    wait_for("epochs verified after the forged heartbeat", || {
        let running = realm.verifiers.get_mut(&1).unwrap().try_wait().unwrap().is_none();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(running, "the verifier stopped: {log}");
        log.contains(&wanted).then_some(())
    });
    assert!(!realm.path().join("data/verifier-1/HALTED").exists());
}

/// Registers users, points a verifier at a source that alters the first epoch holding
/// updates, checks that it halts with evidence and refuses to restart; returns the evidence.
fn run_against_tampering_source(tamper: impl Fn(&Realm) -> Tamper) -> serde_json::Value {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let users = realm.client(0);
    for i in 0..6 {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        realm.runtime.block_on(users.register(&format!("e{i}@example.com"), &key, Default::default())).unwrap();
    }
    // The epoch to tamper with holds at least one update.
    let tamper_epoch = (1..=realm.status(0).unwrap().ratified_epoch)
        .find(|e| {
            let _g = realm.runtime.enter();
            let mut c = KeyraftClient::new(realm.public_channel(0));
            let info = realm.runtime.block_on(c.get_epoch(pb::GetEpochRequest { epoch: *e })).unwrap().into_inner();
            keyraft_core::EpochHead::from_bytes(&info.head).unwrap().update_count > 0
        })
        .expect("an epoch with updates");

    let source = tampering_source(&realm, realm.public_addr(0), tamper_epoch, tamper(&realm));

    let config = realm.path().join("verifier-1.toml");
    let data = realm.path().join("data/verifier-1");
    edit_config(&config, &|t: &mut toml::Table| {
        t.insert("endpoints".into(), toml::Value::Array(vec![source.clone().into()]));
    });
    let mut child = std::process::Command::new(keyraft_bin())
        .args(["verifier", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for("the verifier to stop on the tampered epoch", || child.try_wait().unwrap());
    assert!(!status.success(), "a verifier that found a lie exits with an error");
    let evidence = data.join(format!("evidence/epoch-{tamper_epoch}.json"));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&evidence).unwrap()).unwrap();
    assert_eq!(record["epoch"], tamper_epoch);
    assert!(record["received_head"].is_string());
    assert!(data.join("HALTED").exists());
    // Restarted, it refuses to run until an operator removes HALTED.
    let out = std::process::Command::new(keyraft_bin()).args(["verifier", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("halted"), "{}", String::from_utf8_lossy(&out.stderr));
    // It signed nothing from the tampered epoch on.
    let _g = realm.runtime.enter();
    let mut c = KeyraftClient::new(realm.public_channel(0));
    let info = realm.runtime.block_on(c.get_epoch(pb::GetEpochRequest { epoch: tamper_epoch })).unwrap().into_inner();
    assert!(info.verifier_signatures.is_empty(), "the verifier ratified the epoch it found tampered");
    record
}
