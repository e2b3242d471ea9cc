//! The bodies of keyraft's fuzz targets, in one place: `fuzz/fuzz_targets/<name>.rs` calls
//! them under libFuzzer (outside CI, `scripts/fuzz.sh`), and `tests/corpus.rs` replays every
//! file of `fuzz/corpus/<name>/` and `fuzz/regressions/<name>/` through them as an ordinary
//! test (CI). Every target must return on any input: a panic is a bug in the code under test
//! (bad input must be an `Err`). Where it is cheap, a target also checks that what it decoded
//! re-encodes to the same bytes. See docs/reliability.md, "Fuzzing".

use keyraft_core::config_change::ConfigChange;
use keyraft_core::recovery::PendingRecovery;
use keyraft_core::registration::Attestation;
use keyraft_core::tree::TreeProof;
use keyraft_core::{
    decode_canonical, verify_lookup, verify_lookup_at, Canonical, ClientRealm, Entry, EpochHead, LookupProof, Policy,
    Profile, RealmConfig, RealmFile, SignedConfigChange, SignedEntry, Update,
};
use keyraft_proto::pb;
use prost::Message as _;
use std::sync::OnceLock;

/// A target: its name (the directory of its corpus, the file under `fuzz/fuzz_targets/`) and
/// its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("lookup_proof", lookup_proof),
    ("update", update),
    ("signed_entry", signed_entry),
    ("entry", entry),
    ("profile", profile),
    ("policy", policy),
    ("epoch_head", epoch_head),
    ("realm_config", realm_config),
    ("config_change", config_change),
    ("signed_config_change", signed_config_change),
    ("pending_recovery", pending_recovery),
    ("tree_proof", tree_proof),
    ("attestation", attestation),
    ("verify_lookup", verify_lookup_target),
    ("log_entry", log_entry),
    ("verifier_frame", verifier_frame),
    ("realm_file", realm_file),
    ("node_config", node_config),
    ("snapshot", snapshot),
    ("backup", backup),
    ("raft_message", raft_message),
    ("key_file", key_file),
    ("gateway_update", gateway_update),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Decodes `data` as a `T`; if it decodes, it must re-encode to exactly `data` (the canonical
/// decoders promise it) and decode again to the same bytes.
fn canonical<T: Canonical>(data: &[u8]) -> Option<T> {
    let value = decode_canonical::<T>(data).ok()?;
    let again = value.encode();
    assert_eq!(again, data, "{}: a decoded value re-encodes differently", T::NAME);
    Some(value)
}

/// Canonical `LookupProof` bytes.
pub fn lookup_proof(data: &[u8]) {
    if canonical::<LookupProof>(data).is_some() {
        assert!(LookupProof::from_bytes(data).is_ok(), "from_bytes refuses what decode_canonical accepts");
    }
}

/// Canonical `Update` bytes.
pub fn update(data: &[u8]) {
    let _ = canonical::<Update>(data);
}

/// Canonical `SignedEntry` bytes.
pub fn signed_entry(data: &[u8]) {
    let _ = canonical::<SignedEntry>(data);
}

/// Canonical `Entry` bytes; a decoded entry's hash is computed too.
pub fn entry(data: &[u8]) {
    if let Some(e) = canonical::<Entry>(data) {
        let _ = e.hash();
    }
}

/// Canonical `Profile` bytes.
pub fn profile(data: &[u8]) {
    let _ = canonical::<Profile>(data);
}

/// Canonical `Policy` bytes.
pub fn policy(data: &[u8]) {
    let _ = canonical::<Policy>(data);
}

/// Canonical `EpochHead` bytes.
pub fn epoch_head(data: &[u8]) {
    if canonical::<EpochHead>(data).is_some() {
        assert!(EpochHead::from_bytes(data).is_ok(), "from_bytes refuses what decode_canonical accepts");
    }
}

/// Canonical `RealmConfig` bytes.
pub fn realm_config(data: &[u8]) {
    let _ = canonical::<RealmConfig>(data);
}

/// Canonical `ConfigChange` bytes.
pub fn config_change(data: &[u8]) {
    let _ = canonical::<ConfigChange>(data);
}

/// Canonical `SignedConfigChange` bytes.
pub fn signed_config_change(data: &[u8]) {
    if canonical::<SignedConfigChange>(data).is_some() {
        assert!(SignedConfigChange::from_bytes(data).is_ok(), "from_bytes refuses what decode_canonical accepts");
    }
}

/// Canonical `PendingRecovery` bytes.
pub fn pending_recovery(data: &[u8]) {
    let _ = canonical::<PendingRecovery>(data);
}

/// Canonical `TreeProof` bytes.
pub fn tree_proof(data: &[u8]) {
    let _ = canonical::<TreeProof>(data);
}

/// Canonical `Attestation` bytes.
pub fn attestation(data: &[u8]) {
    let _ = canonical::<Attestation>(data);
}

/// The realm of `docs/vectors/lookup-v1.json` (`main`), as its clients hold it.
fn realm_v1() -> &'static ClientRealm {
    static REALM: OnceLock<ClientRealm> = OnceLock::new();
    REALM.get_or_init(|| {
        #[allow(clippy::expect_used)]
        RealmFile::from_json(include_str!("../data/realm-v1.json"))
            .and_then(|f| f.client_realm())
            .expect("the vectors' realm file is valid")
    })
}

/// The realm of `docs/vectors/lookup-v2.json` (`main`, protocol version 2).
fn realm_v2() -> &'static ClientRealm {
    static REALM: OnceLock<ClientRealm> = OnceLock::new();
    REALM.get_or_init(|| {
        #[allow(clippy::expect_used)]
        RealmFile::from_json(include_str!("../data/realm-v2.json"))
            .and_then(|f| f.client_realm())
            .expect("the vectors' realm file is valid")
    })
}

/// The clock of the vectors' honest proofs (`now_ms` of `inclusion`).
const VECTORS_NOW_MS: u64 = 1_700_000_030_000;

/// A lookup proof (canonical bytes) verified against the vectors' realms, for the user id it
/// names and for another, at the vectors' clock and as a past proof of its own epoch.
pub fn verify_lookup_target(data: &[u8]) {
    let Ok(proof) = LookupProof::from_bytes(data) else { return };
    for realm in [realm_v1(), realm_v2()] {
        for user_id in [proof.user_id.as_str(), "alice@vectors.example"] {
            let present = verify_lookup(realm, user_id, &proof, VECTORS_NOW_MS, Some(1));
            if let Err(e) = &present {
                let _ = e.check();
                let _ = e.to_string();
            }
            let _ = verify_lookup_at(realm, user_id, &proof, proof.head.epoch);
        }
    }
}

/// A Raft log entry as stored and as sent between replicas (protobuf, then the canonical
/// payload); a decoded command re-encodes to an entry that decodes to the same command.
pub fn log_entry(data: &[u8]) {
    let Ok(command) = keyraft_proto::convert::decode_log_entry(data) else { return };
    let bytes = keyraft_proto::convert::encode_log_entry(&command);
    let again = keyraft_proto::convert::decode_log_entry(&bytes);
    assert!(matches!(&again, Ok(c) if *c == command), "a log entry does not survive re-encoding: {again:?}");
}

/// A `VerifierStream` frame as a verifier receives it: the protobuf, then every canonical
/// payload decoded the way the verifier decodes it (docs/protocol.md section 7.1).
pub fn verifier_frame(data: &[u8]) {
    use pb::verifier_frame::Frame;
    let Ok(frame) = pb::VerifierFrame::decode(data) else { return };
    match frame.frame {
        Some(Frame::Init(init)) => {
            let _ = keyraft_proto::convert::public_key("serving_replica", &init.serving_replica);
        }
        Some(Frame::Updates(u)) => {
            for (i, bytes) in u.signed_entries.iter().enumerate() {
                let _ = canonical::<SignedEntry>(bytes);
                let _ = u32::try_from(i).map(|i| u.recovery_requests.contains(&i));
            }
        }
        Some(Frame::Head(h) | Frame::Heartbeat(h)) => {
            let _ = canonical::<EpochHead>(&h.head);
            for s in &h.replica_signatures {
                let _ = keyraft_proto::convert::public_key("signer", &s.signer);
                let _ = keyraft_proto::convert::signature("signature", &s.signature);
            }
        }
        Some(Frame::ConfigChange(bytes)) => {
            let _ = canonical::<SignedConfigChange>(&bytes);
        }
        Some(Frame::CaughtUp(_)) | None => {}
    }
}

/// A realm file (JSON); a file that parses and checks is written back and read again to the
/// same file.
pub fn realm_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(file) = RealmFile::from_json(text) else { return };
    let config = file.config();
    let _ = file.client_realm();
    let again = RealmFile::from_json(&file.to_json());
    assert!(matches!(&again, Ok(f) if *f == file), "a realm file does not survive writing: {again:?}");
    if let Ok(config) = config {
        let bytes = config.encode();
        assert!(canonical::<RealmConfig>(&bytes).is_some(), "a realm file's configuration does not decode");
    }
}

/// A replica's node configuration (TOML), parsed and range-checked; one that passes is written
/// back (as `keyraft dev` rewrites configurations) and must parse and pass again.
pub fn node_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = keyraft_server::fuzzing::parse_node_config(text) else { return };
    let Ok(written) = keyraft_server::fuzzing::write_node_config(&config) else { return };
    let again = keyraft_server::fuzzing::parse_node_config(&written);
    assert!(again.is_ok(), "a node configuration does not survive writing: {again:?}\n{written}");
}

/// A snapshot file loaded into an empty memory store.
pub fn snapshot(data: &[u8]) {
    let store = keyraft_storage::MemoryStorage::new();
    let _ = keyraft_server::fuzzing::load_snapshot(data, &store);
}

/// The bytes of a backup file, checked end to end (`keyraft_server::fuzzing::check_backup`):
/// a file that passes has a header whose metadata and configuration decode.
pub fn backup(data: &[u8]) {
    if let Ok(header) = keyraft_server::fuzzing::check_backup(data) {
        assert_eq!(header.format, 1, "a backup of another format passed the check");
    }
}

/// A peer's Raft message: the `RaftMessage` envelope (protobuf), then its payload and the
/// bytes themselves as every kind of Raft request and response (postcard).
pub fn raft_message(data: &[u8]) {
    if let Ok(envelope) = keyraft_proto::peer::RaftMessage::decode(data) {
        let _ = keyraft_server::fuzzing::decode_raft_messages(&envelope.payload);
    }
    let _ = keyraft_server::fuzzing::decode_raft_messages(data);
}

/// A key file's text, read as a secret and as a public key, under a secret's name and a
/// public key's (`.pub`): a key read back from the text written for it is the same key.
pub fn key_file(data: &[u8]) {
    use keyraft_core::key_file::{classify_text, public_text, secret_text, Kind};
    let Ok(text) = std::str::from_utf8(data) else { return };
    for path in [std::path::Path::new("k.key"), std::path::Path::new("k.key.pub")] {
        for wanted in [Kind::Secret, Kind::Public] {
            let Ok(read) = classify_text(path, text, wanted) else { continue };
            let written = match wanted {
                Kind::Secret => secret_text(&read.key),
                Kind::Public => match keyraft_core::PublicKey::from_bytes(&read.key) {
                    Ok(key) => public_text(&key),
                    Err(_) => continue,
                },
            };
            let again = classify_text(path, &written, wanted).expect("a key file written by keyraft reads back");
            assert_eq!(again.key, read.key, "a key file read back to another key");
            assert!(!again.legacy, "a key file written by keyraft reads as legacy");
        }
    }
}

/// The JSON body of the HTTP gateway's update (`POST /v1/users/{id}`), turned into the gRPC
/// request the gateway sends on, then decoded as the public service decodes it.
pub fn gateway_update(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<keyraft_server::gateway::json::UpdateBody>(data) else { return };
    let Ok(request) = body.into_request() else { return };
    if let Ok(update) = keyraft_proto::convert::canonical::<Update>("update", &request.update) {
        assert_eq!(update.encode(), request.update, "an update from the gateway re-encodes differently");
    }
}
