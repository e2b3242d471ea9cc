//! Test vectors: docs/vectors/lookup-v1.json holds realm files, epoch heads and lookup proofs
//! made from fixed keys, honest and tampered, each with the client's inputs (threshold, clock,
//! TTL, skew, rollback floor) and the verdict: accept, or the name of the check that must
//! refuse it (docs/vectors/README.md explains the fields). docs/vectors/lookup-v2.json does the
//! same for a realm of protocol version 2 with pending recoveries.
//!
//! This test checks that the reference code still makes exactly these bytes, and that the
//! reference verifier (keyraft-core, which replicas, verifiers and clients all call) gives
//! every expected verdict. Any change to an encoding, a hash or a signed message changes the
//! bytes, which must be a deliberate protocol decision (update docs/protocol.md in the same
//! commit). Regenerate with
//! `KEYRAFT_REGEN_FIXTURES=1 cargo test -p keyraft-state --test golden` and review the diff as
//! a compatibility change. `independent_verifier.rs` runs the same file through
//! scripts/verify_proof.py.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::Signer as _;
use keyraft_core::lookup::{head_signing_message, PositionalSignature};
use keyraft_core::tree::Terminal;
use keyraft_core::types::{entry_hash, profile_commitment};
use keyraft_core::vrf::VrfProof;
use keyraft_core::{
    verify_lookup, verify_lookup_at, Canonical, Command, EpochHead, LookupProof, Policy, RealmConfig, RealmFile,
    Signature,
};
use keyraft_state::harness::{derive_signing_key, public_key, test_profile, Harness};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SEED: u64 = 11;
const REALM: &str = "vectors.example";
const TTL_MS: u64 = 60_000;
const SKEW_MS: u64 = 5_000;
/// Every check name a vector may expect (docs/protocol.md section 5.1).
const CHECKS: &[&str] = &[
    "decode",
    "user_id",
    "vrf",
    "realm",
    "freshness",
    "quorum",
    "tree",
    "entry",
    "profile",
    "recovery",
    "rollback",
    "epoch",
];

fn path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/vectors").join(file)
}

fn user(name: &str) -> String {
    format!("{name}@{REALM}")
}

/// One vector: a proof and the client's inputs. Built honest, then tampered.
struct Vector {
    name: &'static str,
    description: &'static str,
    realm_file: &'static str,
    user_id: String,
    proof: Vec<u8>,
    /// `None`: checked as a statement about this past epoch (section 5.2), no clock.
    past_epoch: Option<u64>,
    now_ms: u64,
    verifier_threshold: usize,
    rollback_floor: Option<u64>,
    /// `None` to accept; else the check that must refuse it.
    check: Option<&'static str>,
}

/// `p` carrying `entry` and `profile` as raw bytes, with its leaf's value the hash of `entry`
/// and the head's root recomputed and re-signed: a tree the signers really signed, whose
/// entry or profile is not canonical, so that only the decoding rule (step 0) refuses it.
fn signed_carrying(h: &Harness, p: &LookupProof, entry: &[u8], profile: &[u8]) -> Vec<u8> {
    let mut p = p.clone();
    let index = p.entry.as_ref().unwrap().0.index;
    p.tree_proof.terminal = Terminal::Leaf { value: entry_hash(entry) };
    p.head.root = p.tree_proof.compute_root(&index).unwrap().0;
    h.resign(&mut p);
    p.entry = None;
    let mut bytes = p.encode();
    assert_eq!(bytes.pop(), Some(0), "an entry-less proof ends with its presence byte");
    let var = |b: &[u8]| [&u16::try_from(b.len()).unwrap().to_be_bytes()[..], b].concat();
    [bytes, vec![1], var(entry), var(profile)].concat()
}

fn terminal_kind(p: &LookupProof) -> &'static str {
    match p.tree_proof.terminal {
        Terminal::Empty => "empty",
        Terminal::Leaf { .. } => "leaf",
        Terminal::OtherLeaf { .. } => "other",
    }
}

/// The absence proof in `epoch` of the first user id `nobody-N` whose path ends in a terminal
/// of `kind`.
fn absent_user(h: &Harness, epoch: u64, kind: &str) -> LookupProof {
    (0..1000)
        .map(|i| h.lookup_proof(&user(&format!("nobody-{i}")), Some(epoch), 2).unwrap())
        .find(|p| terminal_kind(p) == kind)
        .expect("some absent user id ends in each kind of terminal")
}

struct Realm {
    h: Harness,
    heads: Vec<EpochHead>,
    files: BTreeMap<&'static str, RealmFile>,
}

fn realm() -> Realm {
    let mut h = Harness::new(REALM, 3, 2, SEED);
    let owners = ["alice", "bob", "carol", "dave", "erin", "frank"];
    for name in owners {
        let key = derive_signing_key(SEED, name);
        h.register(&user(name), &key, &[("mail", format!("{name}-mail-key-v0").as_bytes())]).unwrap();
    }
    let head1 = h.publish_epoch().unwrap();
    // Epoch 2, 30 s later: alice's second version, with a second profile key.
    h.now_ms += 30_000;
    let alice = derive_signing_key(SEED, "alice");
    let profile = test_profile("alice v1", &[("chat", b"alice-chat-key"), ("mail", b"alice-mail-key-v1")]);
    let update = h.make_update(&user("alice"), 1, Policy::single(public_key(&alice)), profile, &[&alice]);
    h.append(Command::Update(Box::new(update))).unwrap();
    let head2 = h.publish_epoch().unwrap();

    let endpoints = (1..=3).map(|i| format!("replica-{i}.{REALM}:7001")).collect::<Vec<_>>();
    let mut main = RealmFile::new(h.config(), TTL_MS, SKEW_MS, endpoints.clone());
    main.verifier_threshold = 1;
    // The same realm name and VRF key with a third verifier registered: every index is the
    // same, but the configuration hash (and so every head) differs.
    let c = h.config();
    let mut verifiers = c.verifier_keys.clone();
    verifiers.push(public_key(&derive_signing_key(SEED, "verifier-other")));
    let other = RealmConfig::new(c.realm.clone(), c.vrf_public_key, c.replica_keys.clone(), verifiers).unwrap();
    let mut other_file = RealmFile::new(&other, TTL_MS, SKEW_MS, endpoints);
    other_file.verifier_threshold = 1;
    Realm { h, heads: vec![head1, head2], files: BTreeMap::from([("main", main), ("other-config", other_file)]) }
}

/// The honest proofs the vectors are made from.
struct Proofs<'a> {
    h: &'a Harness,
    t1: u64,
    t2: u64,
    inclusion: LookupProof,
    inclusion1: LookupProof,
    absence: LookupProof,
    other_leaf: LookupProof,
}

impl Proofs<'_> {
    /// A vector checking `proof` as the current answer at epoch 2's issue time, requiring
    /// both verifiers.
    fn base(
        &self,
        name: &'static str,
        description: &'static str,
        proof: &LookupProof,
        check: Option<&'static str>,
    ) -> Vector {
        Vector {
            name,
            description,
            realm_file: "main",
            user_id: proof.user_id.clone(),
            proof: proof.encode(),
            past_epoch: None,
            now_ms: self.t2,
            verifier_threshold: 2,
            rollback_floor: None,
            check,
        }
    }

    /// The inclusion proof changed by `f`, refused by `check`.
    fn tampered(
        &self,
        name: &'static str,
        description: &'static str,
        check: &'static str,
        f: &dyn Fn(&mut LookupProof),
    ) -> Vector {
        let mut p = self.inclusion.clone();
        f(&mut p);
        self.base(name, description, &p, Some(check))
    }
}

fn vectors(r: &Realm) -> Vec<Vector> {
    let h = &r.h;
    let p = Proofs {
        h,
        t1: r.heads[0].issue_time_ms,
        t2: r.heads[1].issue_time_ms,
        inclusion: h.lookup_proof(&user("alice"), Some(2), 2).unwrap(),
        inclusion1: h.lookup_proof(&user("alice"), Some(1), 2).unwrap(),
        absence: absent_user(h, 2, "empty"),
        other_leaf: absent_user(h, 2, "other"),
    };
    [accepted(&p), refused_early(&p), refused_late(&p), refused_past(&p), refused_signed_non_canonical(&p)]
        .into_iter()
        .flatten()
        .collect()
}

fn accepted(p: &Proofs<'_>) -> Vec<Vector> {
    let (h, t2) = (p.h, p.t2);
    let (inclusion, inclusion1, absence, other_leaf) = (&p.inclusion, &p.inclusion1, &p.absence, &p.other_leaf);
    let alice = user("alice");
    let base = |name, description, proof: &LookupProof, check| p.base(name, description, proof, check);
    vec![
        base("inclusion", "alice's entry (version 1) in epoch 2, two verifiers required", inclusion, None),
        base("absence-empty", "an absent user id whose path ends in an empty subtree", absence, None),
        base("absence-other-leaf", "an absent user id whose path ends at another index's leaf", other_leaf, None),
        Vector {
            name: "no-verifier-required",
            description: "a proof without ratifications, for a client requiring none",
            verifier_threshold: 0,
            ..base("", "", &h.lookup_proof(&alice, Some(2), 0).unwrap(), None)
        },
        Vector {
            name: "ttl-edge",
            description: "the clock at exactly issue time + TTL: still fresh",
            now_ms: t2 + TTL_MS,
            ..base("", "", inclusion, None)
        },
        Vector {
            name: "skew-edge",
            description: "the clock at exactly issue time - skew: not yet from the future",
            now_ms: t2 - SKEW_MS,
            ..base("", "", inclusion, None)
        },
        Vector {
            name: "rollback-floor-equal",
            description: "the newest epoch seen is the proof's own epoch",
            rollback_floor: Some(2),
            ..base("", "", inclusion, None)
        },
        Vector {
            name: "past-epoch",
            description: "alice's entry (version 0) as a statement about epoch 1: no clock, no rollback floor",
            past_epoch: Some(1),
            ..base("", "", inclusion1, None)
        },
    ]
}

/// Vectors refused by the checks up to freshness.
fn refused_early(p: &Proofs<'_>) -> Vec<Vector> {
    let (h, t2) = (p.h, p.t2);
    let (inclusion, inclusion1) = (&p.inclusion, &p.inclusion1);
    let base = |name, description, proof: &LookupProof, check| p.base(name, description, proof, check);
    let tampered = |name, description, check, f: &dyn Fn(&mut LookupProof)| p.tampered(name, description, check, f);
    vec![
        Vector {
            name: "trailing-byte",
            description: "one zero byte appended to the inclusion proof",
            proof: [inclusion.encode(), vec![0]].concat(),
            ..base("", "", inclusion, Some("decode"))
        },
        Vector {
            name: "truncated",
            description: "the inclusion proof without its last byte",
            proof: inclusion.encode()[..inclusion.encode().len() - 1].to_vec(),
            ..base("", "", inclusion, Some("decode"))
        },
        tampered(
            "replica-position-twice",
            "replica signature positions not strictly increasing (the first one repeated)",
            "decode",
            &|p| p.replica_signatures.insert(1, p.replica_signatures[0]),
        ),
        tampered("head-epoch-0", "the head's epoch set to 0 and re-signed by every signer", "decode", &|p| {
            p.head.epoch = 0;
            h.resign(p);
        }),
        Vector {
            name: "epoch-1-previous-hash",
            description: "an epoch-1 head with a non-zero previous head hash, re-signed by every signer",
            past_epoch: Some(1),
            ..base(
                "",
                "",
                &{
                    let mut p = inclusion1.clone();
                    p.head.previous_head_hash[31] = 1;
                    h.resign(&mut p);
                    p
                },
                Some("decode"),
            )
        },
        Vector {
            name: "wrong-user-id",
            description: "alice's proof checked as an answer about bob",
            user_id: user("bob"),
            ..base("", "", inclusion, Some("user_id"))
        },
        tampered("vrf-proof-byte-flipped", "byte 40 (in c) of the VRF proof flipped", "vrf", &|p| {
            let mut pi = *p.vrf_proof.as_bytes();
            pi[40] ^= 0x01;
            p.vrf_proof = VrfProof::from_bytes(&pi).unwrap();
        }),
        Vector {
            name: "other-realm-config",
            description: "checked against a realm file with a third verifier: same name and VRF key, other config hash",
            realm_file: "other-config",
            ..base("", "", inclusion, Some("realm"))
        },
        Vector {
            name: "stale-clock",
            description: "the clock 1 ms past issue time + TTL",
            now_ms: t2 + TTL_MS + 1,
            ..base("", "", inclusion, Some("freshness"))
        },
        Vector {
            name: "head-from-future",
            description: "the clock 1 ms before issue time - skew",
            now_ms: t2 - SKEW_MS - 1,
            ..base("", "", inclusion, Some("freshness"))
        },
    ]
}

/// Vectors refused by the checks from quorum on.
fn refused_late(p: &Proofs<'_>) -> Vec<Vector> {
    let (h, t1) = (p.h, p.t1);
    let (inclusion, inclusion1, absence, other_leaf) = (&p.inclusion, &p.inclusion1, &p.absence, &p.other_leaf);
    let base = |name, description, proof: &LookupProof, check| p.base(name, description, proof, check);
    let tampered = |name, description, check, f: &dyn Fn(&mut LookupProof)| p.tampered(name, description, check, f);
    vec![
        tampered("too-few-replica-signatures", "one replica signature of three replicas", "quorum", &|p| {
            p.replica_signatures.truncate(1);
        }),
        tampered("bad-replica-signature", "byte 5 of the first replica signature flipped", "quorum", &|p| {
            p.replica_signatures[0].signature.0[5] ^= 0x01;
        }),
        tampered(
            "extra-bad-replica-signature",
            "a third replica signature that does not verify, though the other two are a majority",
            "quorum",
            &|p| {
                let have: Vec<u8> = p.replica_signatures.iter().map(|s| s.position).collect();
                let position = (0u8..3).find(|i| !have.contains(i)).unwrap();
                let mut signature =
                    Signature(h.replicas[usize::from(position)].sign(&head_signing_message(&p.head)).to_bytes());
                signature.0[5] ^= 0x01;
                p.replica_signatures.push(PositionalSignature { position, signature });
                p.replica_signatures.sort_by_key(|s| s.position);
            },
        ),
        tampered(
            "unknown-replica-position",
            "a replica signature at position 3 of a realm with 3 replicas",
            "quorum",
            &|p| {
                let signature = p.replica_signatures[0].signature;
                p.replica_signatures.push(PositionalSignature { position: 3, signature });
            },
        ),
        tampered("bad-verifier-signature", "byte 5 of the first verifier signature flipped", "quorum", &|p| {
            p.verifier_signatures[0].signature.0[5] ^= 0x01;
        }),
        tampered("too-few-verifier-signatures", "one verifier ratification, two required", "quorum", &|p| {
            p.verifier_signatures.truncate(1);
        }),
        tampered("tree-sibling-changed", "byte 0 of the first non-empty sibling flipped", "tree", &|p| {
            p.tree_proof.siblings.iter_mut().flatten().next().unwrap()[0] ^= 0x01;
        }),
        Vector {
            name: "other-leaf-value-changed",
            description: "byte 0 of the other leaf's value flipped in the other-leaf absence proof",
            ..base(
                "",
                "",
                &{
                    let mut p = other_leaf.clone();
                    if let Terminal::OtherLeaf { value, .. } = &mut p.tree_proof.terminal {
                        value[0] ^= 0x01;
                    }
                    p
                },
                Some("tree"),
            )
        },
        tampered("entry-changed", "the entry's version raised by one", "entry", &|p| {
            p.entry.as_mut().unwrap().0.version += 1;
        }),
        tampered("entry-missing", "the entry and profile removed from the inclusion proof", "entry", &|p| {
            p.entry = None;
        }),
        Vector {
            name: "entry-in-absence-proof",
            description: "alice's entry and profile attached to an absence proof",
            ..base(
                "",
                "",
                &{
                    let mut p = absence.clone();
                    p.entry = inclusion.entry.clone();
                    p
                },
                Some("entry"),
            )
        },
        tampered("profile-changed", "the last byte of the profile's mail key changed", "profile", &|p| {
            let key = p.entry.as_mut().unwrap().1.keys.get_mut("mail").unwrap();
            *key.last_mut().unwrap() ^= 0x01;
        }),
        Vector {
            name: "rollback-below-floor",
            description: "alice's epoch-1 proof, fresh at its own issue time, after epoch 2 was seen",
            now_ms: t1,
            rollback_floor: Some(2),
            ..base("", "", inclusion1, Some("rollback"))
        },
    ]
}

/// Vectors checked as statements about a past epoch (section 5.2) and refused.
fn refused_past(p: &Proofs<'_>) -> Vec<Vector> {
    let inclusion = &p.inclusion;
    let base = |name, description, proof: &LookupProof, check| p.base(name, description, proof, check);
    vec![
        Vector {
            name: "past-epoch-mismatch",
            description: "the epoch-2 proof checked as a statement about epoch 1",
            past_epoch: Some(1),
            ..base("", "", inclusion, Some("epoch"))
        },
        Vector {
            name: "past-epoch-mismatch-other-realm",
            description: "the epoch-2 proof checked as a statement about epoch 1 against another realm's file: \
                          the realm check comes before the epoch check",
            past_epoch: Some(1),
            realm_file: "other-config",
            ..base("", "", inclusion, Some("realm"))
        },
    ]
}

/// Vectors whose tree the signers really signed but whose entry or profile is not canonical:
/// refused while decoding (step 0), before any hash is compared.
fn refused_signed_non_canonical(p: &Proofs<'_>) -> Vec<Vector> {
    let (h, inclusion) = (p.h, &p.inclusion);
    let base = |name, description, proof: &LookupProof, check| p.base(name, description, proof, check);
    vec![
        Vector {
            name: "signed-entry-trailing-byte",
            description: "the entry with a zero byte appended inside its length, its hash put in the leaf, \
                          the root recomputed and re-signed by every signer",
            proof: {
                let (entry, profile) = inclusion.entry.as_ref().unwrap();
                signed_carrying(h, inclusion, &[entry.encode(), vec![0]].concat(), &profile.encode())
            },
            ..base("", "", inclusion, Some("decode"))
        },
        Vector {
            name: "signed-policy-threshold-0",
            description: "the entry's update policy with threshold 0, its hash put in the leaf, the root \
                          recomputed and re-signed by every signer",
            proof: {
                let (entry, profile) = inclusion.entry.as_ref().unwrap();
                let mut bytes = entry.encode();
                // A one-key policy ends `u16 threshold || u16 1 || 0x00 || u16 0`.
                let at = bytes.len() - 7;
                assert_eq!(bytes[at..], [0, 1, 0, 1, 0, 0, 0]);
                bytes[at + 1] = 0;
                signed_carrying(h, inclusion, &bytes, &profile.encode())
            },
            ..base("", "", inclusion, Some("decode"))
        },
        Vector {
            name: "signed-profile-unsorted",
            description: "the profile with its two app ids in descending order and the entry committing to \
                          it, its hash put in the leaf, the root recomputed and re-signed by every signer",
            proof: {
                let (entry, profile) = inclusion.entry.as_ref().unwrap();
                let var = |b: &[u8]| [&u16::try_from(b.len()).unwrap().to_be_bytes()[..], b].concat();
                let pairs: Vec<Vec<u8>> =
                    profile.keys.iter().rev().map(|(app, key)| [var(app.as_bytes()), var(key)].concat()).collect();
                assert_eq!(pairs.len(), 2);
                let unsorted = [var(&profile.nonce), 2u16.to_be_bytes().to_vec(), pairs.concat()].concat();
                let mut entry = entry.clone();
                entry.profile_commitment = profile_commitment(&unsorted);
                signed_carrying(h, inclusion, &entry.encode(), &unsorted)
            },
            ..base("", "", inclusion, Some("decode"))
        },
    ]
}

fn head_json(head: &EpochHead) -> Value {
    json!({
        "epoch": head.epoch,
        "hex": hex::encode(head.encode()),
        "hash": hex::encode(head.hash()),
        "realm": head.realm,
        "root": hex::encode(head.root),
        "previous_head_hash": hex::encode(head.previous_head_hash),
        "issue_time_ms": head.issue_time_ms,
        "update_count": head.update_count,
        "config_hash": hex::encode(head.config_hash),
    })
}

/// Realm files every reader must refuse, and the field its error names.
fn refused_realm_files(main: &RealmFile) -> Vec<Value> {
    let json_of = |f: &RealmFile| f.to_json();
    let mut unsorted = main.clone();
    unsorted.replica_keys.swap(1, 2);
    let mut duplicate = main.clone();
    duplicate.verifier_keys[1] = duplicate.verifier_keys[0].clone();
    let mut upper = main.clone();
    upper.replica_keys[0] = upper.replica_keys[0].to_uppercase();
    let mut threshold = main.clone();
    threshold.verifier_threshold = 3;
    let text = json_of(main);
    let cases = [
        ("unsorted-replica-keys", json_of(&unsorted), "replica_keys[2]"),
        ("duplicate-verifier-key", json_of(&duplicate), "verifier_keys[1]"),
        ("upper-case-hex", json_of(&upper), "replica_keys[0]"),
        ("unknown-field", text.replacen('{', "{\n  \"replica_key\": [],", 1), "replica_key"),
        ("duplicate-field", text.replacen('{', "{\n  \"clock_skew_ms\": 1,", 1), "clock_skew_ms"),
        ("misspelled-field", text.replacen("\"epoch_ttl_ms\"", "\"epoch_ttl\"", 1), "epoch_ttl"),
        ("missing-field", text.replacen(&format!("\"clock_skew_ms\": {SKEW_MS},"), "", 1), "clock_skew_ms"),
        ("threshold-above-verifiers", json_of(&threshold), "verifier_threshold"),
    ];
    cases.into_iter().map(|(name, json, field)| json!({ "name": name, "json": json, "field": field })).collect()
}

/// The vector file of `r`: its realm files and heads, `vectors`, and (for the version-1
/// file) the realm files every reader refuses.
fn document(r: &Realm, vectors: Vec<Vector>, format: &str) -> String {
    let files: serde_json::Map<String, Value> =
        r.files.iter().map(|(k, f)| ((*k).to_owned(), serde_json::from_str(&f.to_json()).unwrap())).collect();
    let configs: serde_json::Map<String, Value> = r
        .files
        .iter()
        .map(|(k, f)| {
            let c = f.config().unwrap();
            ((*k).to_owned(), json!({ "hex": hex::encode(c.encode()), "hash": hex::encode(c.hash()) }))
        })
        .collect();
    let vectors: Vec<Value> = vectors
        .into_iter()
        .map(|v| {
            let mut o = json!({
                "name": v.name,
                "description": v.description,
                "realm_file": v.realm_file,
                "user_id": v.user_id,
                "proof": hex::encode(&v.proof),
                "verifier_threshold": v.verifier_threshold,
                "expected": if v.check.is_some() { "reject" } else { "accept" },
            });
            let o = o.as_object_mut().unwrap();
            match v.past_epoch {
                Some(epoch) => {
                    o.insert("mode".into(), "past".into());
                    o.insert("past_epoch".into(), epoch.into());
                }
                None => {
                    o.insert("mode".into(), "current".into());
                    o.insert("now_ms".into(), v.now_ms.into());
                    o.insert("epoch_ttl_ms".into(), TTL_MS.into());
                    o.insert("clock_skew_ms".into(), SKEW_MS.into());
                    o.insert("rollback_floor".into(), v.rollback_floor.into());
                }
            }
            match v.check {
                Some(check) => {
                    o.insert("check".into(), check.into());
                }
                None => {
                    // What an accepting verifier learns, to compare with.
                    let proof = LookupProof::from_bytes(&v.proof).unwrap();
                    // The index of the canonical id the proof is about (the id asked may stand for it).
                    let (index, _) = r.h.index_of(&proof.user_id);
                    o.insert("epoch".into(), proof.head.epoch.into());
                    o.insert("index".into(), hex::encode(index.0).into());
                    o.insert("present".into(), proof.entry.is_some().into());
                    o.insert("version".into(), proof.entry.as_ref().map(|(e, _)| e.version).into());
                    let pending = proof.pending_recovery.as_ref().map(|p| p.signed.entry.version);
                    o.insert("pending_recovery_version".into(), pending.into());
                }
            }
            Value::Object(o.clone())
        })
        .collect();
    let mut doc = json!({
        "format": format,
        "generated_by": "crates/state/tests/golden.rs (KEYRAFT_REGEN_FIXTURES=1 regenerates)",
        "checks": CHECKS,
        "realm_files": files,
        "realm_configs": configs,
        "heads": r.heads.iter().map(head_json).collect::<Vec<_>>(),
        "vectors": vectors,
    });
    if r.files.contains_key("other-config") {
        doc["realm_files_refused"] = refused_realm_files(&r.files["main"]).into();
    }
    serde_json::to_string_pretty(&doc).unwrap() + "\n"
}

/// What the reference verifier says: `Ok(accepted fields)` or `Err(check name)`.
fn reference_verdict(files: &BTreeMap<String, RealmFile>, v: &Value) -> Result<Value, String> {
    let file = &files[v["realm_file"].as_str().unwrap()];
    let mut realm = file.client_realm().unwrap();
    realm.verifier_threshold = v["verifier_threshold"].as_u64().unwrap() as usize;
    let user_id = v["user_id"].as_str().unwrap();
    let bytes = hex::decode(v["proof"].as_str().unwrap()).unwrap();
    let proof = LookupProof::from_bytes(&bytes).map_err(|_| "decode".to_owned())?;
    let verified = match v["mode"].as_str().unwrap() {
        "past" => verify_lookup_at(&realm, user_id, &proof, v["past_epoch"].as_u64().unwrap()),
        _ => {
            realm.epoch_ttl_ms = v["epoch_ttl_ms"].as_u64().unwrap();
            realm.clock_skew_ms = v["clock_skew_ms"].as_u64().unwrap();
            verify_lookup(&realm, user_id, &proof, v["now_ms"].as_u64().unwrap(), v["rollback_floor"].as_u64())
        }
    }
    .map_err(|e| e.check().to_owned())?;
    let lookup = verified.into_inner();
    Ok(json!({
        "epoch": lookup.epoch(),
        "index": hex::encode(lookup.index.0),
        "present": lookup.entry.is_some(),
        "version": lookup.entry.as_ref().map(|(e, _)| e.version),
        "pending_recovery_version": lookup.pending_recovery.as_ref().map(|p| p.signed.entry.version),
    }))
}

#[test]
fn vectors_are_stable_and_the_reference_verifier_gives_every_verdict() {
    let r = realm();
    check_file("lookup-v1.json", &document(&r, vectors(&r), FORMAT_V1));
}

#[test]
fn version_2_vectors_are_stable_and_the_reference_verifier_gives_every_verdict() {
    let r = v2::realm();
    check_file("lookup-v2.json", &document(&r, v2::vectors(&r), v2::FORMAT));
}

const FORMAT_V1: &str = "keyraft lookup-proof test vectors, protocol version 1 (docs/vectors/README.md)";

/// The file is what the reference code makes (rewritten with `KEYRAFT_REGEN_FIXTURES`), and
/// the reference verifier reaches every verdict it holds.
fn check_file(file: &str, actual: &str) {
    if std::env::var_os("KEYRAFT_REGEN_FIXTURES").is_some() {
        std::fs::write(path(file), actual).unwrap();
    }
    let expected =
        std::fs::read_to_string(path(file)).expect("test vectors present (see this file's header to regenerate)");
    assert!(actual == expected, "protocol bytes changed: if deliberate, regenerate and update docs/protocol.md");

    let doc: Value = serde_json::from_str(&expected).unwrap();
    let mut files = BTreeMap::new();
    for (name, file) in doc["realm_files"].as_object().unwrap() {
        let file = RealmFile::from_json(&file.to_string()).unwrap();
        let config_hex = doc["realm_configs"][name]["hex"].as_str().unwrap();
        assert_eq!(hex::encode(file.config().unwrap().encode()), config_hex, "realm file {name}");
        files.insert(name.clone(), file);
    }
    let mut names = std::collections::BTreeSet::new();
    for v in doc["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        assert!(names.insert(name), "vector name {name} used twice");
        let got = reference_verdict(&files, v);
        match v["expected"].as_str().unwrap() {
            "accept" => {
                let got = got.unwrap_or_else(|check| panic!("{name}: refused by {check}, expected to verify"));
                for field in ["epoch", "index", "present", "version", "pending_recovery_version"] {
                    assert_eq!(got[field], v[field], "{name}: {field}");
                }
            }
            _ => {
                let check = v["check"].as_str().unwrap();
                assert!(CHECKS.contains(&check), "{name}: unknown check {check}");
                assert_eq!(got.err().as_deref(), Some(check), "{name}: the rejecting check");
            }
        }
    }
    for v in doc["realm_files_refused"].as_array().map_or(&[][..], Vec::as_slice) {
        let name = v["name"].as_str().unwrap();
        let field = v["field"].as_str().unwrap();
        let e = RealmFile::from_json(v["json"].as_str().unwrap()).err();
        let e = e.unwrap_or_else(|| panic!("realm file {name} accepted")).to_string();
        assert!(e.contains(field), "realm file {name}: error {e:?} does not name {field}");
    }
}

#[test]
fn every_check_has_a_refused_vector_and_both_terminals_of_absence_appear() {
    let r = realm();
    let doc: Value = serde_json::from_str(&document(&r, vectors(&r), FORMAT_V1)).unwrap();
    let vectors = doc["vectors"].as_array().unwrap();
    // `recovery` needs a realm of protocol version 2 (a pending recovery): lookup-v2.json.
    let v2 = v2::realm();
    let v2_doc: Value = serde_json::from_str(&document(&v2, v2::vectors(&v2), v2::FORMAT)).unwrap();
    for check in CHECKS.iter().filter(|c| **c != "recovery") {
        assert!(vectors.iter().any(|v| v["check"] == *check), "no vector refused by {check}");
    }
    assert!(v2_doc["vectors"].as_array().unwrap().iter().any(|v| v["check"] == "recovery"));
    let kinds: Vec<&str> = ["absence-empty", "absence-other-leaf"]
        .iter()
        .map(|n| {
            let v = vectors.iter().find(|v| v["name"] == *n).unwrap();
            let bytes = hex::decode(v["proof"].as_str().unwrap()).unwrap();
            terminal_kind(&LookupProof::from_bytes(&bytes).unwrap())
        })
        .collect();
    assert_eq!(kinds, ["empty", "other"]);
    assert_eq!(r.heads[0].previous_head_hash, [0; 32]);
    assert_eq!(r.heads[1].previous_head_hash, r.heads[0].hash());
}

/// docs/vectors/lookup-v2.json: a realm of protocol version 2 (a registration policy and a
/// recovery window), an identity with a pending recovery, and pending recoveries tampered
/// inside a tree the signers really signed, so that only the `recovery` check refuses them.
/// Every user id is canonical: the canonical id (docs/vectors/identity.json) is the client's
/// step before it asks, not part of a proof's check.
mod v2 {
    use super::{absent_user, Realm, Vector, SKEW_MS, TTL_MS};
    use keyraft_core::identity::LocalPartRule;
    use keyraft_core::recovery::{leaf_value, PendingRecovery};
    use keyraft_core::registration::{Method, NamespaceRule, RegistrationPolicy};
    use keyraft_core::tree::Terminal;
    use keyraft_core::update::sign_entry;
    use keyraft_core::{Canonical, Command, LookupProof, Policy, RealmFile};
    use keyraft_state::harness::{derive_signing_key, public_key, test_profile, Harness};
    use std::collections::BTreeMap;

    const SEED: u64 = 12;
    const REALM: &str = "vectors2.example";
    const WINDOW_MS: u64 = 3_600_000;
    pub(super) const FORMAT: &str =
        "keyraft lookup-proof test vectors, protocol version 2: pending recoveries (docs/vectors/README.md)";

    fn user(name: &str) -> String {
        format!("{name}@{REALM}")
    }

    /// Epoch 1: alice, bob and carol register. Epoch 2, 30 s later: alice's second version,
    /// and a recovery of bob to a new key, pending until epoch 2's issue time plus the window.
    pub(super) fn realm() -> Realm {
        let policy = RegistrationPolicy {
            local_part_rule: LocalPartRule::CaseInsensitive,
            registrar_keys: vec![public_key(&derive_signing_key(SEED, "registrar"))],
            rules: vec![
                NamespaceRule { namespace: format!("*@{REALM}"), methods: vec![Method::Registrar] },
                NamespaceRule { namespace: "*".into(), methods: vec![Method::Open] },
            ],
            recovery_window_ms: WINDOW_MS,
        };
        let mut h = Harness::with_registration(REALM, 3, 2, SEED, policy);
        for name in ["alice", "bob", "carol"] {
            let key = derive_signing_key(SEED, name);
            h.register(&user(name), &key, &[("mail", format!("{name}-mail-key-v0").as_bytes())]).unwrap();
        }
        let head1 = h.publish_epoch().unwrap();
        h.now_ms += 30_000;
        let alice = derive_signing_key(SEED, "alice");
        let profile = test_profile("alice v1", &[("mail", b"alice-mail-key-v1")]);
        let update = h.make_update(&user("alice"), 1, Policy::single(public_key(&alice)), profile, &[&alice]);
        h.append(Command::Update(Box::new(update))).unwrap();
        h.recover(&user("bob"), &derive_signing_key(SEED, "bob-new"), &[("mail", b"bob-mail-key-recovered")]).unwrap();
        let head2 = h.publish_epoch().unwrap();
        let endpoints = (1..=3).map(|i| format!("replica-{i}.{REALM}:7001")).collect::<Vec<_>>();
        let mut main = RealmFile::new(h.config(), TTL_MS, SKEW_MS, endpoints);
        main.verifier_threshold = 1;
        Realm { h, heads: vec![head1, head2], files: BTreeMap::from([("main", main)]) }
    }

    /// `proof` with its pending recovery replaced by `f`'s change of it, the leaf and root
    /// recomputed and the head re-signed: only the recovery rules can refuse it.
    fn with_pending(h: &Harness, proof: &LookupProof, f: &dyn Fn(&mut PendingRecovery)) -> LookupProof {
        let mut p = proof.clone();
        let mut pending = p.pending_recovery.clone().unwrap();
        f(&mut pending);
        let (entry, _) = p.entry.as_ref().unwrap();
        let index = entry.index;
        p.tree_proof.terminal = Terminal::Leaf { value: leaf_value(entry, Some(&pending)) };
        p.head.root = p.tree_proof.compute_root(&index).unwrap().0;
        p.pending_recovery = Some(pending);
        h.resign(&mut p);
        p
    }

    pub(super) fn vectors(r: &Realm) -> Vec<Vector> {
        let h = &r.h;
        let t2 = r.heads[1].issue_time_ms;
        let alice = h.lookup_proof(&user("alice"), Some(2), 2).unwrap();
        let bob = h.lookup_proof(&user("bob"), Some(2), 2).unwrap();
        assert!(bob.pending_recovery.is_some(), "bob's recovery is pending in epoch 2");
        let base = |name, description, user_id: &str, proof: &LookupProof, check| Vector {
            name,
            description,
            realm_file: "main",
            user_id: user_id.to_owned(),
            proof: proof.encode(),
            past_epoch: None,
            now_ms: t2,
            verifier_threshold: 2,
            rollback_floor: None,
            check,
        };
        let bob_id = user("bob");
        let bob_new = derive_signing_key(SEED, "bob-new");
        let pending = |name, description, f: &dyn Fn(&mut PendingRecovery)| {
            base(name, description, &bob_id, &with_pending(h, &bob, f), Some("recovery"))
        };
        let effective = bob.pending_recovery.as_ref().unwrap().effective_ms;
        let mut overdue = bob.clone();
        overdue.head.epoch = 3;
        overdue.head.previous_head_hash = r.heads[1].hash();
        overdue.head.issue_time_ms = effective;
        h.resign(&mut overdue);
        let mut hidden = bob.clone();
        hidden.pending_recovery = None;
        let absent = absent_user(h, 2, "empty");
        vec![
            base("v2-inclusion", "alice's entry (version 1) in epoch 2", &user("alice"), &alice, None),
            base("v2-absence", "an absent user id", &absent.user_id, &absent, None),
            base(
                "pending-recovery",
                "bob's entry (version 0) with a recovery to version 1 pending",
                &bob_id,
                &bob,
                None,
            ),
            Vector {
                name: "pending-recovery-past",
                description: "bob's pending recovery as a statement about epoch 2",
                past_epoch: Some(2),
                ..base("", "", &bob_id, &bob, None)
            },
            base(
                "v2-wrong-user-id",
                "alice's proof checked as an answer about carol",
                &user("carol"),
                &alice,
                Some("user_id"),
            ),
            base(
                "pending-recovery-hidden",
                "bob's proof without its pending recovery: the leaf commits to it",
                &bob_id,
                &hidden,
                Some("entry"),
            ),
            pending("pending-recovery-version-gap", "the recovery's entry at version 2 (re-signed by its key)", &|p| {
                p.signed.entry.version = 2;
                p.signed.signatures = sign_entry(REALM, &p.signed.entry, &[&bob_new]);
            }),
            pending("pending-recovery-old-key", "the recovery signed by bob's old key (not in its new policy)", &|p| {
                p.signed.signatures = sign_entry(REALM, &p.signed.entry, &[&derive_signing_key(SEED, "bob")])
            }),
            pending(
                "pending-recovery-effective-time",
                "the effective time 1 ms later than epoch 2's issue time plus the window",
                &|p| {
                    p.effective_ms += 1;
                },
            ),
            pending("pending-recovery-requested-later", "requested in epoch 3, after the proof's epoch 2", &|p| {
                p.requested_epoch = 3;
                p.effective_ms += 30_000;
            }),
            Vector {
                name: "pending-recovery-overdue",
                description:
                    "still pending in an epoch-3 head issued at its effective time (re-signed): it should be the entry",
                now_ms: effective,
                ..base("", "", &bob_id, &overdue, Some("recovery"))
            },
        ]
    }
}
