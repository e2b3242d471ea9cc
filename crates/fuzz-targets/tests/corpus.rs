//! Replays every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` through its
//! target (what CI runs instead of fuzzing): a panic fails the test. With
//! `KEYRAFT_REGEN_FUZZ_SEEDS=1` the `seeds` test first rewrites the `seed-*` files of the
//! corpora from the test vectors (docs/vectors), the replica's own writers and a few
//! hand-written configurations.
#![allow(clippy::unwrap_used, missing_docs)]

use keyraft_core::config_change::ConfigChange;
use keyraft_core::registration::Attestation;
use keyraft_core::{Canonical, Command, KeySignature, PublicKey, Signature, SignedConfigChange, SignedEntry, Update};
use keyraft_fuzz_targets::{target, TARGETS};
use keyraft_proto::pb::{self, verifier_frame::Frame};
use prost::Message as _;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = read.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    out.sort();
    out
}

#[test]
fn every_corpus_file_replays_without_a_panic() {
    let mut total = 0;
    for (name, run) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no seeds");
        for path in corpus.iter().chain(&files(&fuzz_dir().join("regressions").join(name))) {
            let data = std::fs::read(path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "target {name} panicked on {}", path.display());
            total += 1;
        }
    }
    // Every directory names a target (a renamed target must take its corpus along).
    for kind in ["corpus", "regressions"] {
        for dir in std::fs::read_dir(fuzz_dir().join(kind)).into_iter().flatten() {
            let name = dir.unwrap().file_name().into_string().unwrap();
            assert!(target(&name).is_some(), "fuzz/{kind}/{name} is no target");
        }
    }
    assert!(total >= TARGETS.len());
}

/// The seeds, by target: the vectors' bytes and their parts.
#[allow(clippy::too_many_lines)]
fn seed_inputs() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/vectors");
    for v in ["v1", "v2"] {
        let text = std::fs::read_to_string(root.join(format!("lookup-{v}.json"))).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        for (name, file) in json["realm_files"].as_object().unwrap() {
            out.push(("realm_file", format!("{v}-{name}.json"), serde_json::to_vec_pretty(file).unwrap()));
        }
        for refused in json["realm_files_refused"].as_array().into_iter().flatten().take(4) {
            let name = refused["name"].as_str().unwrap();
            out.push(("realm_file", format!("{v}-refused-{name}.json"), refused["json"].as_str().unwrap().into()));
        }
        for (name, config) in json["realm_configs"].as_object().unwrap() {
            out.push(("realm_config", format!("{v}-{name}"), hex::decode(config["hex"].as_str().unwrap()).unwrap()));
        }
        for (i, head) in json["heads"].as_array().unwrap().iter().enumerate().take(3) {
            out.push(("epoch_head", format!("{v}-{i}"), hex::decode(head["hex"].as_str().unwrap()).unwrap()));
        }
        for vector in json["vectors"].as_array().unwrap() {
            let name = vector["name"].as_str().unwrap();
            let bytes = hex::decode(vector["proof"].as_str().unwrap()).unwrap();
            if matches!(
                name,
                "inclusion"
                    | "absence-other-leaf"
                    | "truncated"
                    | "trailing-byte"
                    | "tree-sibling-changed"
                    | "v2-inclusion"
                    | "pending-recovery"
            ) {
                out.push(("lookup_proof", format!("{v}-{name}"), bytes.clone()));
                out.push(("verify_lookup", format!("{v}-{name}"), bytes.clone()));
            }
            let Ok(proof) = keyraft_core::LookupProof::from_bytes(&bytes) else { continue };
            if !matches!(name, "inclusion" | "absence-other-leaf" | "pending-recovery") {
                continue;
            }
            out.push(("tree_proof", format!("{v}-{name}"), proof.tree_proof.encode()));
            if let Some((entry, profile)) = &proof.entry {
                out.push(("entry", format!("{v}-{name}"), entry.encode()));
                out.push(("profile", format!("{v}-{name}"), profile.encode()));
                out.push(("policy", format!("{v}-{name}"), entry.update_policy.encode()));
            }
            if let Some(recovery) = &proof.pending_recovery {
                out.push(("pending_recovery", format!("{v}-{name}"), recovery.encode()));
                out.push(("signed_entry", format!("{v}-{name}"), recovery.signed.encode()));
            }
            let Some((entry, profile)) = proof.entry.clone() else { continue };
            let signed = SignedEntry {
                entry,
                signatures: vec![KeySignature { signer: realm_key(&json), signature: Signature([7; 64]) }],
            };
            let update = Update { signed: signed.clone(), profile };
            out.push(("signed_entry", format!("{v}-{name}-made"), signed.encode()));
            out.push(("update", format!("{v}-{name}"), update.encode()));
            let log = |c: &Command| keyraft_proto::convert::encode_log_entry(c);
            out.push(("log_entry", format!("{v}-{name}-update"), log(&Command::Update(Box::new(update.clone())))));
            out.push((
                "log_entry",
                format!("{v}-{name}-delimiter"),
                log(&Command::EpochDelimiter { epoch: 3, timestamp_ms: 1_700_000_000_000 }),
            ));
            let frame = |f: Frame| pb::VerifierFrame { frame: Some(f) }.encode_to_vec();
            out.push((
                "verifier_frame",
                format!("{v}-{name}-updates"),
                frame(Frame::Updates(pb::verifier_frame::EpochUpdates {
                    epoch: proof.head.epoch,
                    chunk: 0,
                    signed_entries: vec![signed.encode()],
                    last_chunk: true,
                    recovery_requests: vec![],
                })),
            ));
            out.push((
                "verifier_frame",
                format!("{v}-{name}-head"),
                frame(Frame::Head(pb::verifier_frame::SignedHead {
                    head: proof.head.encode(),
                    replica_signatures: vec![pb::KeySignature {
                        signer: realm_key(&json).as_bytes().to_vec(),
                        signature: vec![7; 64],
                    }],
                })),
            ));
        }
        let config =
            keyraft_core::RealmFile::from_json(&json["realm_files"]["main"].to_string()).unwrap().config().unwrap();
        let mut next = config.clone();
        next.generation += 1;
        let change = ConfigChange::new(&config, next);
        out.push(("config_change", v.to_owned(), change.encode()));
        let signed = SignedConfigChange {
            change,
            signatures: vec![KeySignature { signer: realm_key(&json), signature: Signature([9; 64]) }],
        };
        out.push(("signed_config_change", v.to_owned(), signed.encode()));
        let command = Command::ConfigChange(Box::new(signed.clone()));
        out.push(("log_entry", format!("{v}-config-change"), keyraft_proto::convert::encode_log_entry(&command)));
        let frame = pb::VerifierFrame { frame: Some(Frame::ConfigChange(signed.encode())) }.encode_to_vec();
        out.push(("verifier_frame", format!("{v}-config-change"), frame));
        let attestation = Attestation {
            registrar_key: realm_key(&json),
            user_id: "alice@vectors.example".into(),
            update_id: [3; 32],
            expires_ms: 1_700_000_090_000,
            signature: Signature([5; 64]),
        };
        out.push(("attestation", v.to_owned(), attestation.encode()));
    }
    let init = pb::VerifierFrame {
        frame: Some(Frame::Init(pb::verifier_frame::Init {
            serving_replica: vec![1; 32],
            head_epoch: 9,
            oldest_replayable_epoch: 1,
        })),
    };
    out.push(("verifier_frame", "init".into(), init.encode_to_vec()));
    for (name, text) in NODE_CONFIGS {
        out.push(("node_config", (*name).into(), text.as_bytes().to_vec()));
    }
    let store = keyraft_storage::MemoryStorage::new();
    let dir = tempfile::tempdir().unwrap();
    out.push(("snapshot", "empty".into(), keyraft_server::fuzzing::write_snapshot(&store, dir.path()).unwrap()));
    let mut batch = keyraft_storage::Batch::new();
    batch.put(b"a".to_vec(), b"1".to_vec());
    batch.put(b"state/bob".to_vec(), vec![0; 40]);
    keyraft_storage::Storage::write(&store, batch).unwrap();
    let snapshot = keyraft_server::fuzzing::write_snapshot(&store, dir.path()).unwrap();
    out.push(("snapshot", "two-pairs".into(), snapshot.clone()));
    out.push(("backup", "two-pairs".into(), backup_file(&snapshot, &realm_config_of_vectors())));
    for (name, bytes) in keyraft_server::fuzzing::sample_raft_messages() {
        let envelope = keyraft_proto::peer::RaftMessage { target: 2, payload: bytes.clone() };
        out.push(("raft_message", format!("{name}-envelope"), envelope.encode_to_vec()));
        out.push(("raft_message", name.into(), bytes));
    }
    let seed = [0x42; 32];
    let public = keyraft_core::keys::public_key_of(&ed25519_dalek::SigningKey::from_bytes(&seed));
    out.push(("key_file", "secret".into(), keyraft_core::key_file::secret_text(&seed).into_bytes()));
    out.push(("key_file", "public".into(), keyraft_core::key_file::public_text(&public).into_bytes()));
    out.push(("key_file", "legacy".into(), format!("{}\n", hex::encode(seed)).into_bytes()));
    for (name, update) in
        out.iter().filter(|(t, _, _)| *t == "update").map(|(_, n, b)| (n.clone(), b.clone())).collect::<Vec<_>>()
    {
        let body = serde_json::json!({
            "user_id": "alice@vectors.example",
            "update": base64_std(&update),
            "wait_ms": 1000,
            "registration": { "email_code": "123456" },
        });
        out.push(("gateway_update", name, serde_json::to_vec_pretty(&body).unwrap()));
    }
    out
}

fn base64_std(bytes: &[u8]) -> String {
    keyraft_server::gateway::json::base64(bytes)
}

/// A backup file of `snapshot` (the layout of docs/operations.md, "Backups").
fn backup_file(snapshot: &[u8], realm_config: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    let header = keyraft_server::backup::BackupHeader {
        format: 1,
        realm: "vectors.example".into(),
        node_id: 1,
        epoch: 0,
        last_log_index: 0,
        last_log_term: 0,
        snapshot_meta: keyraft_server::fuzzing::empty_snapshot_meta(),
        snapshot_bytes: snapshot.len() as u64,
        snapshot_sha256: hex::encode(sha2::Sha256::digest(snapshot)),
        realm_config: hex::encode(realm_config),
    };
    let json = serde_json::to_vec(&header).unwrap();
    let mut out = keyraft_server::backup::BACKUP_MAGIC.to_vec();
    out.extend_from_slice(snapshot);
    out.extend_from_slice(&json);
    out.extend_from_slice(&u32::try_from(json.len()).unwrap().to_be_bytes());
    let digest = sha2::Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// The canonical bytes of the first realm configuration of the v2 vectors.
fn realm_config_of_vectors() -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/vectors");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("lookup-v2.json")).unwrap()).unwrap();
    let (_, config) = json["realm_configs"].as_object().unwrap().iter().next().unwrap();
    hex::decode(config["hex"].as_str().unwrap()).unwrap()
}

/// The first replica key of a vectors file's `main` realm.
fn realm_key(json: &serde_json::Value) -> PublicKey {
    let file = keyraft_core::RealmFile::from_json(&json["realm_files"]["main"].to_string()).unwrap();
    file.config().unwrap().replica_keys[0]
}

const NODE_CONFIGS: &[(&str, &str)] = &[
    (
        "documented",
        "node_id = 1\ndata_dir = \"data/node-1\"\npublic_listen = \"127.0.0.1:7001\"\npeer_listen = \"127.0.0.1:7101\"\n\
         metrics_listen = \"127.0.0.1:7201\"\nrealm_file = \"realm.json\"\nvrf_secret_key_file = \"keys/vrf.key\"\n\
         signing_key_file = \"keys/replica-1.key\"\nnext_signing_key_files = [\"keys/replica-1-next.key\"]\n\
         cluster_token_file = \"keys/cluster.token\"\nadmin_token_file = \"keys/admin.token\"\n\n[tls]\n\
         cert_file = \"tls/node-1.crt\"\nkey_file = \"tls/node-1.key\"\nca_file = \"tls/ca.crt\"\n\n[epochs]\n\
         min_epoch_interval_ms = 1000\nmax_epoch_interval_ms = 10000\n\n[[voters]]\nid = 1\n\
         peer_addr = \"127.0.0.1:7101\"\npublic_addr = \"127.0.0.1:7001\"\n",
    ),
    (
        "limits",
        "node_id = 1\ndata_dir = \"d\"\npublic_listen = \"x\"\npeer_listen = \"y\"\nrealm_file = \"r\"\n\
         vrf_secret_key_file = \"v\"\nsigning_key_file = \"s\"\ncluster_token_file = \"t\"\n[tls]\nplaintext = true\n\
         [limits]\nrate_exempt_addresses = [\"127.0.0.1\", \"10.1.0.0/16\", \"::1\"]\n\
         rate_updates_per_identity_burst = 3\n",
    ),
];

#[test]
fn write_seeds() {
    if std::env::var_os("KEYRAFT_REGEN_FUZZ_SEEDS").is_none() {
        return;
    }
    for (target, name, bytes) in seed_inputs() {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}

/// The seeds are what they claim: the snapshots load, the honest proofs verify (a target fed
/// only refusals would explore little past the first check).
#[test]
fn the_seeds_are_valid_inputs() {
    let corpus = fuzz_dir().join("corpus");
    let backup = std::fs::read(corpus.join("backup/seed-two-pairs")).unwrap();
    let header = keyraft_server::fuzzing::check_backup(&backup).unwrap();
    assert!(header.snapshot_bytes > 0);
    let mut damaged = backup.clone();
    damaged[30] ^= 1;
    assert!(keyraft_server::fuzzing::check_backup(&damaged).is_err());
    for name in ["vote-request", "append-entries", "append-entries-success"] {
        let bytes = std::fs::read(corpus.join("raft_message").join(format!("seed-{name}"))).unwrap();
        assert!(keyraft_server::fuzzing::decode_raft_messages(&bytes) >= 1, "{name}");
    }
    let snapshot = std::fs::read(corpus.join("snapshot/seed-two-pairs")).unwrap();
    let store = keyraft_storage::MemoryStorage::new();
    assert_eq!(keyraft_server::fuzzing::load_snapshot(&snapshot, &store).unwrap(), 2);
    let mut truncated = snapshot.clone();
    truncated.pop();
    let store = keyraft_storage::MemoryStorage::new();
    assert!(keyraft_server::fuzzing::load_snapshot(&truncated, &store).is_err());
    for name in ["v1-inclusion", "v1-absence-other-leaf"] {
        let bytes = std::fs::read(corpus.join("lookup_proof").join(format!("seed-{name}"))).unwrap();
        assert!(keyraft_core::LookupProof::from_bytes(&bytes).is_ok(), "{name}");
    }
    let text = std::fs::read_to_string(corpus.join("node_config/seed-documented")).unwrap();
    keyraft_server::fuzzing::parse_node_config(&text).unwrap();
}
