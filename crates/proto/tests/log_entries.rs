//! Log entries round-trip through their wire form; malformed ones are typed errors.
#![allow(missing_docs, clippy::unwrap_used)]

use ed25519_dalek::SigningKey;
use keyraft_core::{Command, Entry, Index, Policy, Profile, PublicKey, Signature, SignedEntry, Update};
use keyraft_proto::convert::{decode_log_entry, encode_log_entry, ConversionError};
use keyraft_proto::pb;
use proptest::prelude::*;
use prost::Message as _;
use std::collections::BTreeMap;

fn key(n: u8) -> PublicKey {
    PublicKey::from_verifying_key(&SigningKey::from_bytes(&[n; 32]).verifying_key()).unwrap()
}

fn commands() -> Vec<Command> {
    let profile = Profile { nonce: vec![1; 16], keys: BTreeMap::from([("mail".to_owned(), vec![9])]) };
    let entry = Entry {
        index: Index([3; 32]),
        version: 0,
        update_policy: Policy::single(key(1)),
        profile_commitment: profile.commitment(),
    };
    vec![
        Command::Update(Box::new(Update {
            signed: SignedEntry { entry: entry.clone(), signatures: vec![] },
            profile: profile.clone(),
        })),
        Command::RecoveryRequest(Box::new(Update { signed: SignedEntry { entry, signatures: vec![] }, profile })),
        Command::EpochDelimiter { epoch: 7, timestamp_ms: 1_700_000_000_000 },
        Command::ReplicaSignature { epoch: 7, signer: key(2), signature: Signature([5; 64]) },
        Command::VerifierSignature { epoch: 7, verifier: key(3), signature: Signature([6; 64]) },
    ]
}

#[test]
fn every_command_round_trips() {
    for c in commands() {
        assert_eq!(decode_log_entry(&encode_log_entry(&c)).unwrap(), c);
    }
}

#[test]
fn missing_and_malformed_fields_are_named() {
    assert_eq!(
        decode_log_entry(&pb::LogEntry { command: None }.encode_to_vec()),
        Err(ConversionError::Missing { field: "LogEntry.command" })
    );
    let short_key = pb::LogEntry {
        command: Some(pb::log_entry::Command::ReplicaSignature(pb::ReplicaSignature {
            epoch: 1,
            signer: vec![1; 31],
            signature: vec![0; 64],
        })),
    };
    assert!(matches!(
        decode_log_entry(&short_key.encode_to_vec()),
        Err(ConversionError::WrongLength { field: "ReplicaSignature.signer", expected: 32, got: 31 })
    ));
    let short_sig = pb::LogEntry {
        command: Some(pb::log_entry::Command::VerifierSignature(pb::VerifierSignature {
            epoch: 1,
            verifier: key(1).as_bytes().to_vec(),
            signature: vec![0; 63],
        })),
    };
    assert!(matches!(
        decode_log_entry(&short_sig.encode_to_vec()),
        Err(ConversionError::WrongLength { field: "VerifierSignature.signature", .. })
    ));
    let weak_key = pb::LogEntry {
        command: Some(pb::log_entry::Command::ReplicaSignature(pb::ReplicaSignature {
            epoch: 1,
            signer: vec![0; 32],
            signature: vec![0; 64],
        })),
    };
    assert!(matches!(decode_log_entry(&weak_key.encode_to_vec()), Err(ConversionError::Invalid { .. })));
    let empty_update = pb::LogEntry { command: Some(pb::log_entry::Command::Update(vec![])) };
    assert_eq!(
        decode_log_entry(&empty_update.encode_to_vec()),
        Err(ConversionError::Missing { field: "LogEntry.update" })
    );
    let bad_update = pb::LogEntry { command: Some(pb::log_entry::Command::Update(vec![1, 2, 3])) };
    let err = decode_log_entry(&bad_update.encode_to_vec()).unwrap_err();
    assert!(matches!(err, ConversionError::Invalid { field: "LogEntry.update", .. }));
    assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);
    assert!(matches!(decode_log_entry(&[0xff, 0xff, 0xff]), Err(ConversionError::Protobuf { .. })));
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_log_entry(&bytes);
    }

    #[test]
    fn mutated_entries_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>(), which in 0usize..4) {
        let mut bytes = encode_log_entry(&commands()[which]);
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = decode_log_entry(&bytes);
    }
}
