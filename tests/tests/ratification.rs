//! `PushRatification` against a running realm: only a registered verifier's valid signature
//! over the stored head of an existing, keyserver-ratified epoch is proposed; everything else
//! gets a status saying what is wrong, resubmission is idempotent, and a ratification of a
//! far-future epoch changes nothing lookups see.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::{Signer as _, SigningKey};
use keyraft_core::lookup::ratification_message;
use keyraft_core::{Canonical, EpochHead};
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::{GetEpochRequest, LookupRequest, PushRatificationRequest};
use keyraft_tests::{serial, Realm};
use tonic::Code;

fn request(key: &SigningKey, head: &EpochHead) -> PushRatificationRequest {
    PushRatificationRequest {
        epoch: head.epoch,
        verifier: key.verifying_key().to_bytes().to_vec(),
        signature: key.sign(&ratification_message(head)).to_bytes().to_vec(),
        head: head.encode(),
    }
}

#[test]
fn ratifications_are_checked_before_they_reach_the_log() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    // Asked of replica 2 below, which must hold the epoch.
    let epoch = realm.wait_ratified(1, 2).ratified_epoch;
    let verifier = SigningKey::from_bytes(
        &keyraft_server::config::read_secret32(&realm.path().join("keys/verifier-1.key"), "key").unwrap(),
    );
    let _g = realm.runtime.enter();
    let mut c = KeyraftClient::new(realm.public_channel(1));
    let rt = &realm.runtime;
    let info = rt.block_on(c.get_epoch(GetEpochRequest { epoch })).unwrap().into_inner();
    let head = EpochHead::from_bytes(&info.head).unwrap();
    let push = |c: &mut KeyraftClient<_>, r: PushRatificationRequest| rt.block_on(c.push_ratification(r));

    // An unregistered key.
    let stranger = SigningKey::generate(&mut rand::rngs::OsRng);
    let e = push(&mut c, request(&stranger, &head)).unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    // A signature that does not verify.
    let mut bad = request(&verifier, &head);
    bad.signature[10] ^= 1;
    let e = push(&mut c, bad).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("signature"), "{e}");
    // A head other than the realm's, validly signed: the verifier's recomputation diverged.
    let mut other = head.clone();
    other.root[0] ^= 1;
    let e = push(&mut c, request(&verifier, &other)).unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("differs"), "{e}");
    // The request's epoch and the head's disagree.
    let mut mismatched = request(&verifier, &head);
    mismatched.epoch += 1;
    let e = push(&mut c, mismatched).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    // Malformed fields name themselves.
    let mut short = request(&verifier, &head);
    short.verifier.truncate(31);
    let e = push(&mut c, short).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("verifier"), "{e}");

    // A far-future epoch: refused, and lookups requiring a verifier still find nothing.
    let mut future = head.clone();
    future.epoch = 1_000_000;
    let e = push(&mut c, request(&verifier, &future)).unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let lookup = |c: &mut KeyraftClient<_>| {
        rt.block_on(c.lookup(LookupRequest {
            user_id: "nobody@example.com".into(),
            verifier_threshold: 1,
            ..Default::default()
        }))
    };
    let e = lookup(&mut c).unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "no epoch is ratified by a verifier yet: {e}");

    // The honest ratification is accepted once; again, it is a duplicate.
    assert!(!push(&mut c, request(&verifier, &head)).unwrap().into_inner().duplicate);
    assert!(push(&mut c, request(&verifier, &head)).unwrap().into_inner().duplicate);
    let proof = lookup(&mut c).unwrap().into_inner().proof;
    let proof = keyraft_core::LookupProof::from_bytes(&proof).unwrap();
    assert_eq!(proof.head.epoch, epoch, "lookups requiring a verifier use the epoch it ratified");
    assert_eq!(proof.verifier_signatures.len(), 1);
}
