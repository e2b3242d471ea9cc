//! docs/protocol.md is enough to verify a proof: `scripts/verify_proof.py`, written from the
//! document alone in another language (no shared code, its own Ed25519 and ECVRF), reaches
//! the verdict of every test vector in docs/vectors/ (refusing each tampered one by the same
//! named check as the reference verifier), accepts the proofs this implementation makes and
//! rejects tampered ones.
#![allow(clippy::unwrap_used, missing_docs)]

use keyraft_core::identity::LocalPartRule;
use keyraft_core::lookup::verify_lookup_bytes;
use keyraft_core::registration::{Method, NamespaceRule, RegistrationPolicy};
use keyraft_core::tree::Terminal;
use keyraft_core::types::{entry_hash, profile_commitment};
use keyraft_core::{Canonical, ClientRealm, LookupProof, RealmConfig, RealmFile};
use keyraft_state::harness::{derive_signing_key, public_key, Harness};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/verify_proof.py")
}

fn run(h: &Harness, dir: &Path, user: &str, proof: &[u8], extra: &[&str]) -> (bool, String) {
    let config = dir.join("realm.hex");
    std::fs::write(&config, hex::encode(h.config().encode())).unwrap();
    let proof_file = dir.join("proof.bin");
    std::fs::write(&proof_file, proof).unwrap();
    let out = Command::new("python3")
        .arg(script())
        .arg(&config)
        .arg(&proof_file)
        .arg(user)
        .arg(h.now_ms.to_string())
        .args(extra)
        .output()
        .expect("python3 is needed to run the independent verifier (it is on every CI machine)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn an_implementation_from_the_spec_alone_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new("example.org", 3, 2, 21);
    let alice = derive_signing_key(21, "alice");
    h.register("alice@example.org", &alice, &[("mail", b"alice-key")]).unwrap();
    for i in 0..30 {
        h.register(&format!("u{i}@example.org"), &derive_signing_key(21, &format!("u{i}")), &[("mail", b"k")]).unwrap();
    }
    h.publish_epoch().unwrap();

    let present = h.lookup_proof("alice@example.org", None, 2).unwrap().encode();
    let (ok, out) = run(&h, dir.path(), "alice@example.org", &present, &["--verifier-threshold", "2"]);
    assert!(ok && out.contains("present"), "{out}");

    let absent = h.lookup_proof("nobody@example.org", None, 1).unwrap().encode();
    let (ok, out) = run(&h, dir.path(), "nobody@example.org", &absent, &["--verifier-threshold", "1"]);
    assert!(ok && out.contains("absent"), "{out}");

    // The same checks fail in the same places.
    let (ok, out) = run(&h, dir.path(), "nobody@example.org", &absent, &["--verifier-threshold", "2"]);
    assert!(!ok && out.contains("REJECTED (quorum)"), "{out}");
    let (ok, out) = run(&h, dir.path(), "bob@example.org", &present, &[]);
    assert!(!ok && out.contains("REJECTED (user_id)"), "{out}");
    let (ok, out) = run(&h, dir.path(), "alice@example.org", &present, &["--last-seen-epoch", "2"]);
    assert!(!ok && out.contains("REJECTED (rollback)"), "{out}");
    // The realm is checked, before the VRF: a proof from another realm is named as such.
    let mut other = Harness::new("other.org", 3, 2, 22);
    other.publish_epoch().unwrap();
    let foreign = other.lookup_proof("nobody@example.org", None, 2).unwrap().encode();
    let (ok, out) = run(&h, dir.path(), "nobody@example.org", &foreign, &[]);
    assert!(!ok && out.contains("REJECTED (realm): the proof is for a different realm"), "{out}");
    let mut bad_vrf = h.lookup_proof("alice@example.org", None, 2).unwrap();
    bad_vrf.user_id = "bob@example.org".into();
    let (ok, out) = run(&h, dir.path(), "bob@example.org", &bad_vrf.encode(), &[]);
    assert!(!ok && out.contains("REJECTED (vrf)"), "{out}");
    for at in [30, present.len() - 20, present.len() / 2] {
        let mut tampered = present.clone();
        tampered[at] ^= 1;
        let (ok, out) = run(&h, dir.path(), "alice@example.org", &tampered, &[]);
        assert!(!ok, "byte {at} flipped still verifies: {out}");
    }
}

/// One field of each vector in the generated (one field per line) vector file.
fn vector_fields(file: &str, field: &str) -> Vec<String> {
    let prefix = format!("\"{field}\": ");
    file.lines()
        .filter_map(|line| line.trim().strip_prefix(&prefix))
        .map(|value| value.trim_end_matches(',').trim_matches('"').to_owned())
        .collect()
}

/// docs/protocol.md section 1's Ed25519 rule, implemented in Python from the document, gives
/// the same verdict and reason as keyraft_core::ed25519 on every vector of
/// docs/vectors/ed25519.json (torsioned signatures accepted, each encoding rule refusing).
#[test]
fn the_independent_ed25519_agrees_on_every_vector() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let vectors_path = root.join("docs/vectors/ed25519.json");
    let out = Command::new("python3")
        .arg(root.join("scripts/verify_proof.py"))
        .arg("--ed25519-vectors")
        .arg(&vectors_path)
        .output()
        .expect("python3 is needed to run the independent verifier (it is on every CI machine)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));

    let file = std::fs::read_to_string(&vectors_path).unwrap();
    let (keys, messages, signatures) =
        (vector_fields(&file, "public_key"), vector_fields(&file, "message"), vector_fields(&file, "signature"));
    assert!(keys.len() > 20 && keys.len() == messages.len() && keys.len() == signatures.len());
    let python: Vec<&str> = stdout.lines().take(keys.len()).collect();
    for (i, ((key, message), signature)) in keys.iter().zip(&messages).zip(&signatures).enumerate() {
        let key: [u8; 32] = hex::decode(key).unwrap().try_into().unwrap();
        let signature = keyraft_core::Signature::from_slice(&hex::decode(signature).unwrap()).unwrap();
        let ours = match keyraft_core::ed25519::verify(&key, &hex::decode(message).unwrap(), &signature) {
            Ok(()) => format!("{i} accept"),
            Err(rejection) => format!("{i} reject {}", rejection.code()),
        };
        assert_eq!(python.get(i).copied(), Some(ours.as_str()), "vector {i}");
    }
}

/// The script's verdict on every vector of docs/vectors/lookup-v1.json and lookup-v2.json is
/// the file's (which the golden test checks is the reference verifier's): the same accepts
/// with the same epoch, index and presence, the same rejecting check names, the same refused
/// realm files.
#[test]
fn the_independent_verifier_agrees_on_every_vector() {
    agrees_on_every_vector("lookup-v1.json");
    agrees_on_every_vector("lookup-v2.json");
}

fn agrees_on_every_vector(file: &str) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/vectors").join(file);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let out = Command::new("python3")
        .arg(script())
        .arg("--vectors")
        .arg(&file)
        .output()
        .expect("python3 is needed to run the independent verifier (it is on every CI machine)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // "VECTOR <name>: accept epoch <e> <present|absent> index <hex>" or
    // "VECTOR <name>: reject <check>: <why>", and the same with "REALM-FILE".
    let verdicts: BTreeMap<(&str, &str), Vec<&str>> = stdout
        .lines()
        .filter_map(|l| {
            let (kind, rest) = l.split_once(' ')?;
            let (name, verdict) = rest.split_once(": ")?;
            Some(((kind, name), verdict.split([' ', ':']).filter(|w| !w.is_empty()).collect()))
        })
        .collect();
    let vectors = doc["vectors"].as_array().unwrap();
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let got = verdicts.get(&("VECTOR", name)).unwrap_or_else(|| panic!("no verdict on {name}:\n{report}"));
        if v["expected"] == "accept" {
            let present = if v["present"] == true { "present" } else { "absent" };
            let epoch = v["epoch"].to_string();
            let expected = ["accept", "epoch", &epoch, present, "index", v["index"].as_str().unwrap()];
            assert_eq!(got[..got.len().min(6)], expected, "{name}:\n{report}");
        } else {
            assert_eq!(got[..2], ["reject", v["check"].as_str().unwrap()], "{name}:\n{report}");
        }
    }
    let refused = doc["realm_files_refused"].as_array().map_or(&[][..], Vec::as_slice);
    for v in refused {
        let name = v["name"].as_str().unwrap();
        let got = verdicts.get(&("REALM-FILE", name)).unwrap_or_else(|| panic!("no verdict on {name}:\n{report}"));
        assert_eq!(got[..2], ["reject", v["field"].as_str().unwrap()], "realm file {name}:\n{report}");
    }
    assert_eq!(verdicts.len(), vectors.len() + refused.len(), "{report}");
    assert!(out.status.success() && stdout.contains("all vectors agree"), "{report}");
}

// ---- Entries and profiles inside a proof are decoded, not hashed as opaque bytes --------------
//
// docs/protocol.md step 0: the proof decodes canonically, the Entry (section 2.4, with its
// UpdatePolicy of 2.2) and the Profile (2.3) it carries included. A replica quorum signing a
// tree whose leaf is the hash of a non-canonical entry must not make the script accept what
// keyraft-core refuses: the proofs below are signed and their tree proofs lead to the signed
// root, so only the encoding is wrong with them, and both verifiers must refuse them by
// `decode`.

const SEED_NONCANONICAL: u64 = 23;

fn u16_be(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap().to_be_bytes()
}

fn var(bytes: &[u8]) -> Vec<u8> {
    [&u16_be(bytes.len())[..], bytes].concat()
}

/// A `Quorum` (section 2.2) over already encoded members.
fn quorum(threshold: u16, members: &[Vec<u8>]) -> Vec<u8> {
    [threshold.to_be_bytes().to_vec(), u16_be(members.len()).to_vec(), members.concat()].concat()
}

fn key_member(position: u16) -> Vec<u8> {
    [&[0u8][..], &position.to_be_bytes()].concat()
}

fn nested(quorum: Vec<u8>) -> Vec<u8> {
    [vec![1u8], quorum].concat()
}

/// A `Policy` (section 2.2) from raw keys, in the order given, and an encoded quorum.
fn policy(keys: &[[u8; 32]], quorum: Vec<u8>) -> Vec<u8> {
    [u16_be(keys.len()).to_vec(), keys.concat(), quorum].concat()
}

/// An `Entry` (section 2.4) of the proof's identity, committing to `profile`, with `policy`.
fn entry_bytes(p: &LookupProof, profile: &[u8], policy: Vec<u8>) -> Vec<u8> {
    let (entry, _) = p.entry.as_ref().unwrap();
    [&entry.index.0[..], &entry.version.to_be_bytes(), &profile_commitment(profile), &policy].concat()
}

/// `count` valid policy keys, sorted ascending.
fn sorted_keys(count: usize) -> Vec<[u8; 32]> {
    let mut keys: Vec<[u8; 32]> = (0..count)
        .map(|i| *public_key(&derive_signing_key(SEED_NONCANONICAL, &format!("policy-{i}"))).as_bytes())
        .collect();
    keys.sort();
    keys
}

/// A `Profile` (section 2.3) from a nonce and (app id, key) pairs in the order given.
fn profile_bytes(nonce: &[u8], keys: &[(&[u8], &[u8])]) -> Vec<u8> {
    let pairs: Vec<u8> = keys.iter().flat_map(|(app, key)| [var(app), var(key)].concat()).collect();
    [var(nonce), u16_be(keys.len()).to_vec(), pairs].concat()
}

/// `honest` with its leaf's value replaced by the hash of `entry`, the head's root recomputed
/// and re-signed by every signer, carrying `entry` and `profile` as raw bytes.
fn signed_proof_carrying(h: &Harness, honest: &LookupProof, entry: &[u8], profile: &[u8]) -> Vec<u8> {
    let mut p = honest.clone();
    let index = p.entry.as_ref().unwrap().0.index;
    p.tree_proof.terminal = Terminal::Leaf { value: entry_hash(entry) };
    p.head.root = p.tree_proof.compute_root(&index).unwrap().0;
    h.resign(&mut p);
    p.entry = None;
    let mut bytes = p.encode();
    assert_eq!(bytes.pop(), Some(0), "an entry-less proof ends with its presence byte");
    [bytes, vec![1], var(entry), var(profile)].concat()
}

/// Entries (with the honest profile) that keyraft-core's decoder refuses, by what is wrong.
fn noncanonical_entries(p: &LookupProof, profile: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let owner = *p.entry.as_ref().unwrap().0.update_policy.keys()[0].as_bytes();
    let one = |q: Vec<u8>| policy(&[owner], q);
    let [a, b] = <[[u8; 32]; 2]>::try_from(sorted_keys(2)).unwrap();
    let both = quorum(1, &[key_member(0), key_member(1)]);
    let mut non_canonical_key = [0xff; 32];
    non_canonical_key[0] = 0xf0;
    non_canonical_key[31] = 0x7f;
    let mut small_order_key = [0u8; 32];
    small_order_key[0] = 1;
    let deep = (0..4).fold(quorum(1, &[key_member(0)]), |q, _| quorum(1, &[nested(q)]));
    let honest = entry_bytes(p, profile, one(quorum(1, &[key_member(0)])));
    vec![
        ("trailing byte inside the entry", [honest.clone(), vec![0]].concat()),
        ("entry truncated by one byte", honest[..honest.len() - 1].to_vec()),
        ("policy threshold 0", entry_bytes(p, profile, one(quorum(0, &[key_member(0)])))),
        ("policy threshold above its member count", entry_bytes(p, profile, one(quorum(2, &[key_member(0)])))),
        (
            "nested threshold above its member count",
            entry_bytes(p, profile, policy(&[a, b], quorum(1, &[key_member(0), nested(quorum(2, &[key_member(1)]))]))),
        ),
        (
            "non-canonical policy key",
            entry_bytes(p, profile, policy(&[non_canonical_key], quorum(1, &[key_member(0)]))),
        ),
        ("small-order policy key", entry_bytes(p, profile, policy(&[small_order_key], quorum(1, &[key_member(0)])))),
        ("policy keys unsorted", entry_bytes(p, profile, policy(&[b, a], both.clone()))),
        ("policy key twice", entry_bytes(p, profile, policy(&[a, a], both))),
        ("no policy key", entry_bytes(p, profile, policy(&[], quorum(1, &[key_member(0)])))),
        ("17 policy keys", {
            let keys = sorted_keys(17);
            let members: Vec<Vec<u8>> = (0..17).map(key_member).collect();
            entry_bytes(p, profile, policy(&keys, quorum(1, &members)))
        }),
        ("policy key not referenced", entry_bytes(p, profile, policy(&[a, b], quorum(1, &[key_member(0)])))),
        ("key position out of range", entry_bytes(p, profile, one(quorum(1, &[key_member(1)])))),
        (
            "key position twice in one expression",
            entry_bytes(p, profile, one(quorum(1, &[key_member(0), key_member(0)]))),
        ),
        ("no quorum member", entry_bytes(p, profile, one(quorum(1, &[])))),
        ("unknown member tag", entry_bytes(p, profile, one(quorum(1, &[vec![2, 0, 0]])))),
        ("quorum nested 5 deep", entry_bytes(p, profile, one(deep))),
    ]
}

/// Profiles that keyraft-core's decoder refuses, by what is wrong.
fn noncanonical_profiles() -> Vec<(&'static str, Vec<u8>)> {
    let nonce = [7u8; 16];
    let many: Vec<(Vec<u8>, Vec<u8>)> = (0..33).map(|i| (format!("app{i:02}").into_bytes(), vec![1])).collect();
    let many: Vec<(&[u8], &[u8])> = many.iter().map(|(a, k)| (&a[..], &k[..])).collect();
    vec![
        ("profile app ids unsorted", profile_bytes(&nonce, &[(b"mail", b"k1"), (b"chat", b"k2")])),
        ("profile app id twice", profile_bytes(&nonce, &[(b"mail", b"k1"), (b"mail", b"k2")])),
        ("profile nonce of 15 bytes", profile_bytes(&nonce[..15], &[(b"mail", b"k1")])),
        ("profile app id with a space", profile_bytes(&nonce, &[(b"my mail", b"k1")])),
        ("empty profile key", profile_bytes(&nonce, &[(b"mail", b"")])),
        ("33 profile keys", profile_bytes(&nonce, &many)),
        ("trailing byte inside the profile", [profile_bytes(&nonce, &[(b"mail", b"k1")]), vec![0]].concat()),
    ]
}

#[test]
fn a_signed_proof_carrying_a_non_canonical_entry_or_profile_is_refused_by_decode_in_both() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new("example.org", 3, 2, SEED_NONCANONICAL);
    let user = "alice@example.org";
    let alice = derive_signing_key(SEED_NONCANONICAL, "alice");
    h.register(user, &alice, &[("mail", b"alice-key")]).unwrap();
    h.publish_epoch().unwrap();
    let honest = h.lookup_proof(user, None, 2).unwrap();
    let realm = h.client_realm(2);
    let profile = honest.entry.as_ref().unwrap().1.encode();
    let canonical_profile = profile_bytes(&[7; 16], &[(b"chat", b"k2"), (b"mail", b"k1")]);

    let verdicts = |entry: &[u8], profile: &[u8]| {
        let bytes = signed_proof_carrying(&h, &honest, entry, profile);
        let reference = match verify_lookup_bytes(&realm, user, &bytes, h.now_ms, None) {
            Ok(_) => "accept".to_owned(),
            Err(e) => e.check().to_owned(),
        };
        let (ok, out) = run(&h, dir.path(), user, &bytes, &["--verifier-threshold", "2"]);
        let script = if ok { "accept".to_owned() } else { out.split(['(', ')']).nth(1).unwrap_or(&out).to_owned() };
        (reference, script, out)
    };

    // The construction itself is sound: with canonical bytes both verifiers accept, so what
    // refuses the cases below is their encoding alone.
    let canonical_entry = entry_bytes(&honest, &profile, honest.entry.as_ref().unwrap().0.update_policy.encode());
    for (what, entry, profile) in [
        ("the honest entry", canonical_entry, profile.clone()),
        ("a canonical two-key profile", entry_bytes_for(&honest, &canonical_profile), canonical_profile.clone()),
    ] {
        let (reference, script, out) = verdicts(&entry, &profile);
        assert_eq!((reference.as_str(), script.as_str()), ("accept", "accept"), "{what}: {out}");
    }

    let cases = noncanonical_entries(&honest, &profile)
        .into_iter()
        .map(|(what, entry)| (what, entry, profile.clone()))
        .chain(noncanonical_profiles().into_iter().map(|(what, bad)| (what, entry_bytes_for(&honest, &bad), bad)));
    for (what, entry, profile) in cases {
        let (reference, script, out) = verdicts(&entry, &profile);
        assert_eq!(reference, "decode", "{what}: keyraft-core must refuse it while decoding");
        assert_eq!(script, "decode", "{what}: the script must refuse it by the same check:\n{out}");
        assert!(out.contains("REJECTED (decode)"), "{what}: {out}");
    }
}

/// The honest entry's policy, committing to `profile`.
fn entry_bytes_for(p: &LookupProof, profile: &[u8]) -> Vec<u8> {
    entry_bytes(p, profile, p.entry.as_ref().unwrap().0.update_policy.encode())
}

/// The script's `--decode-entry` / `--decode-profile` verdicts on the given hex strings.
fn script_decodes(mode: &str, inputs: &[Vec<u8>]) -> Vec<String> {
    let out = Command::new("python3")
        .arg(script())
        .arg(mode)
        .args(inputs.iter().map(hex::encode))
        .output()
        .expect("python3 is needed to run the independent verifier (it is on every CI machine)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = stdout.lines().map(|l| l.split(':').next().unwrap().to_owned()).collect();
    assert_eq!(lines.len(), inputs.len(), "one verdict per input:\n{stdout}");
    lines
}

/// `bytes`, every prefix of it, and `bytes` with each byte changed (low and high bit flipped).
fn mutations(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..=bytes.len()).map(|n| bytes[..n].to_vec()).collect();
    for i in 0..bytes.len() {
        for flip in [0x01, 0x80] {
            let mut b = bytes.to_vec();
            b[i] ^= flip;
            out.push(b);
        }
    }
    out.push([bytes, &[0]].concat());
    out
}

/// The script's Entry and Profile decoders (sections 2.2 to 2.4) accept exactly what
/// keyraft-core's accept, on the non-canonical cases above and on every truncation and
/// single-bit change of a nested two-key policy's entry and of a two-key profile.
#[test]
fn the_independent_entry_and_profile_decoders_agree_with_keyraft_core() {
    let mut h = Harness::new("example.org", 1, 0, SEED_NONCANONICAL);
    let user = "alice@example.org";
    h.register(user, &derive_signing_key(SEED_NONCANONICAL, "alice"), &[("mail", b"alice-key")]).unwrap();
    h.publish_epoch().unwrap();
    let honest = h.lookup_proof(user, None, 0).unwrap();
    let profile = profile_bytes(&[7; 16], &[(b"chat", b"k2"), (b"mail", b"k1")]);
    let [a, b] = <[[u8; 32]; 2]>::try_from(sorted_keys(2)).unwrap();
    let nested_policy =
        policy(&[a, b], quorum(2, &[key_member(1), nested(quorum(1, &[key_member(0), key_member(1)]))]));
    let entry = entry_bytes(&honest, &profile, nested_policy);
    assert!(keyraft_core::decode_canonical::<keyraft_core::Entry>(&entry).is_ok(), "the base entry is canonical");

    let entries: Vec<Vec<u8>> = noncanonical_entries(&honest, &profile)
        .into_iter()
        .map(|(_, e)| e)
        .chain(mutations(&entry).into_iter().filter(|e| e.len() <= 2048))
        .collect();
    let profiles: Vec<Vec<u8>> =
        noncanonical_profiles().into_iter().map(|(_, p)| p).chain(mutations(&profile)).collect();
    let verdict = |ok: bool| if ok { "accept" } else { "reject" };
    for (bytes, script) in entries.iter().zip(script_decodes("--decode-entry", &entries)) {
        let reference = verdict(keyraft_core::decode_canonical::<keyraft_core::Entry>(bytes).is_ok());
        assert_eq!(script, reference, "entry {}", hex::encode(bytes));
    }
    for (bytes, script) in profiles.iter().zip(script_decodes("--decode-profile", &profiles)) {
        let reference = verdict(keyraft_core::decode_canonical::<keyraft_core::Profile>(bytes).is_ok());
        assert_eq!(script, reference, "profile {}", hex::encode(bytes));
    }
    // Not vacuous: some changes keep the bytes canonical (the index, version, commitment, a
    // profile key's bytes), most do not.
    let accepted = entries.iter().filter(|e| keyraft_core::decode_canonical::<keyraft_core::Entry>(e).is_ok()).count();
    assert!(accepted > 100 && accepted < entries.len() - 100, "{accepted} of {}", entries.len());
}

// ---- Protocol version 2: the registration policy in the realm configuration -----------------
//
// docs/protocol.md sections 2.6 and 5.3: a version-2 realm file carries `protocol_version: 2`
// and a `registration` object; its RealmConfig starts with the byte 2 and ends with the
// policy, and config_hash covers it. The script reads such files and encodings by the same
// rules as keyraft-core, so it accepts the proofs of a version-2 realm, refuses them against
// the same keys under another policy, and refuses the same bad realm files.

const SEED_V2: u64 = 24;

/// A policy with every method kind (as crates/core/tests/registration.rs), two registrar keys.
fn every_method_policy() -> RegistrationPolicy {
    RegistrationPolicy {
        local_part_rule: LocalPartRule::CaseInsensitive,
        registrar_keys: (0..2).map(|i| public_key(&derive_signing_key(SEED_V2, &format!("registrar-{i}")))).collect(),
        rules: vec![
            NamespaceRule {
                namespace: "*@example.com".into(),
                methods: vec![
                    Method::Oidc {
                        issuer: "https://id.example.com".into(),
                        audience: "kr".into(),
                        claim: "email".into(),
                    },
                    Method::Email,
                    Method::Registrar,
                ],
            },
            NamespaceRule { namespace: "*".into(), methods: vec![Method::Open] },
        ],
        recovery_window_ms: 86_400_000,
    }
}

fn v2_harness() -> Harness {
    Harness::with_registration("example.com", 3, 2, SEED_V2, every_method_policy())
}

fn realm_file_json(config: &RealmConfig, verifier_threshold: usize) -> String {
    let mut file = RealmFile::new(config, 60_000, 5_000, vec!["127.0.0.1:7001".into()]);
    file.verifier_threshold = verifier_threshold;
    file.to_json()
}

/// Runs the script with `realm` (a realm file's text) as its realm; its exit status and output.
fn run_realm_file(dir: &Path, realm: &str, user: &str, proof: &[u8], now_ms: u64) -> (Option<i32>, String) {
    let realm_file = dir.join("realm.json");
    std::fs::write(&realm_file, realm).unwrap();
    let proof_file = dir.join("proof.bin");
    std::fs::write(&proof_file, proof).unwrap();
    let out = Command::new("python3")
        .arg(script())
        .arg(&realm_file)
        .arg(&proof_file)
        .arg(user)
        .arg(now_ms.to_string())
        .output()
        .expect("python3 is needed to run the independent verifier (it is on every CI machine)");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_independent_verifier_accepts_a_version_2_realm_and_binds_its_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = v2_harness();
    assert_eq!(h.config().protocol_version(), 2);
    let alice = derive_signing_key(SEED_V2, "alice");
    h.register("alice@example.com", &alice, &[("mail", b"alice-key")]).unwrap();
    for i in 0..10 {
        h.register(&format!("u{i}@example.com"), &derive_signing_key(SEED_V2, &format!("u{i}")), &[("mail", b"k")])
            .unwrap();
    }
    h.publish_epoch().unwrap();
    let realm = realm_file_json(h.config(), 2);
    let present = h.lookup_proof("alice@example.com", None, 2).unwrap().encode();
    let absent = h.lookup_proof("nobody@example.com", None, 2).unwrap().encode();
    for (user, proof, answer) in [("alice@example.com", &present, "present"), ("nobody@example.com", &absent, "absent")]
    {
        verify_lookup_bytes(&h.client_realm(2), user, proof, h.now_ms, None).unwrap();
        let (status, out) = run_realm_file(dir.path(), &realm, user, proof, h.now_ms);
        assert!(status == Some(0) && out.contains(answer), "{user} with the realm file: {out}");
        // The same realm given as its version-2 RealmConfig bytes.
        let (ok, out) = run(&h, dir.path(), user, proof, &["--verifier-threshold", "2"]);
        assert!(ok && out.contains(answer), "{user} with the config bytes: {out}");
    }

    // The policy is in config_hash: the same keys under version 1, or under another policy,
    // are another realm, for both verifiers.
    let v1 = Harness::new("example.com", 3, 2, SEED_V2);
    let open = Harness::with_registration("example.com", 3, 2, SEED_V2, RegistrationPolicy::open());
    assert_eq!(v1.config().replica_keys, h.config().replica_keys);
    for other in [v1.config(), open.config()] {
        let client =
            ClientRealm { config: other.clone(), verifier_threshold: 2, epoch_ttl_ms: 60_000, clock_skew_ms: 5_000 };
        let refused = verify_lookup_bytes(&client, "alice@example.com", &present, h.now_ms, None).unwrap_err();
        assert!(refused.to_string().contains("realm"), "{refused}");
        let (status, out) =
            run_realm_file(dir.path(), &realm_file_json(other, 2), "alice@example.com", &present, h.now_ms);
        assert!(
            status == Some(1) && out.contains("REJECTED (realm): the proof is for a different realm"),
            "version {}: {out}",
            other.protocol_version()
        );
    }
}

#[test]
fn bad_version_2_realm_files_are_refused_by_both_verifiers() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = v2_harness();
    h.publish_epoch().unwrap();
    let proof = h.lookup_proof("nobody@example.com", None, 0).unwrap().encode();
    let good: Value = serde_json::from_str(&realm_file_json(h.config(), 0)).unwrap();
    let (status, out) = run_realm_file(dir.path(), &good.to_string(), "nobody@example.com", &proof, h.now_ms);
    assert_eq!(status, Some(0), "the unchanged file is accepted: {out}");
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v.to_string()
    };
    let cases = [
        (
            "unknown method",
            edit(&|v| v["registration"]["namespaces"][1]["methods"] = serde_json::json!(["open", "sms"])),
            "registration.namespaces[1].methods[1]",
        ),
        (
            "unsorted registrar keys",
            edit(&|v| v["registration"]["registrar_keys"].as_array_mut().unwrap().reverse()),
            "registration.registrar_keys[1]",
        ),
        (
            "protocol_version 2 without registration",
            edit(&|v| {
                v.as_object_mut().unwrap().remove("registration");
            }),
            "registration",
        ),
        ("protocol_version 3", edit(&|v| v["protocol_version"] = 3.into()), "protocol_version"),
    ];
    for (what, json, field) in cases {
        assert!(RealmFile::from_json(&json).is_err(), "{what}: keyraft-core accepted it");
        let (status, out) = run_realm_file(dir.path(), &json, "nobody@example.com", &proof, h.now_ms);
        assert!(
            status == Some(2) && out.starts_with(&format!("REALM REFUSED: {field}: ")),
            "{what}: the script must refuse it naming {field}:\n{out}"
        );
    }
}

/// docs/vectors/realm-config-v2.json (generated and checked against keyraft-core by
/// crates/core/tests/realm_config_vectors.rs): the script reads every realm file to the same
/// config bytes and hash, and refuses every refused one naming the file's field.
#[test]
fn the_independent_verifier_agrees_on_the_realm_config_vectors() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/vectors/realm-config-v2.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let out = Command::new("python3")
        .arg(script())
        .arg("--check-realm-vectors")
        .arg(&file)
        .output()
        .expect("python3 is needed to run the independent verifier (it is on every CI machine)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    let accepted = doc["realm_files"].as_array().unwrap();
    let refused = doc["realm_files_refused"].as_array().unwrap();
    assert!(accepted.len() >= 3 && refused.len() >= 4, "{file:?}");
    for v in accepted {
        let expected = format!(
            "REALM-CONFIG {}: accept version {} hash {}",
            v["name"].as_str().unwrap(),
            v["protocol_version"],
            v["config_hash"].as_str().unwrap()
        );
        assert!(lines.contains(&expected.as_str()), "{expected}:\n{report}");
    }
    for v in refused {
        let expected = format!("REALM-FILE {}: reject {}: ", v["name"].as_str().unwrap(), v["field"].as_str().unwrap());
        assert!(lines.iter().any(|l| l.starts_with(&expected)), "{expected}:\n{report}");
    }
    assert_eq!(lines.len(), accepted.len() + refused.len() + 1, "{report}");
    assert!(out.status.success() && stdout.contains("all realm vectors agree"), "{report}");
}

/// The script's RealmConfig decoder (section 2.6, both versions) accepts exactly what
/// keyraft-core's accepts, on every truncation and single-bit change of a version-2
/// configuration with every method kind and of its version-1 counterpart.
#[test]
fn the_independent_realm_config_decoder_agrees_with_keyraft_core() {
    let two = v2_harness().config().encode();
    let one = Harness::new("example.com", 3, 2, SEED_V2).config().encode();
    assert_eq!((two[0], one[0]), (2, 0));
    let inputs: Vec<Vec<u8>> = mutations(&two).into_iter().chain(mutations(&one)).collect();
    let reference = |bytes: &[u8]| keyraft_core::decode_canonical::<RealmConfig>(bytes).is_ok();
    for (bytes, script) in inputs.iter().zip(script_decodes("--decode-realm-config", &inputs)) {
        assert_eq!(script, if reference(bytes) { "accept" } else { "reject" }, "realm config {}", hex::encode(bytes));
    }
    // Not vacuous: changes inside the namespaces, OIDC strings and version byte... some keep
    // the bytes a valid configuration, most do not.
    let accepted = inputs.iter().filter(|b| reference(b)).count();
    assert!(accepted > 20 && accepted < inputs.len() / 2, "{accepted} of {}", inputs.len());
}

/// Every node of `file` (a JSON value) replaced in turn by each value of `replacements`, every
/// field of every object removed in turn, and every array reversed, shortened and lengthened.
fn json_mutations(file: &Value) -> Vec<Value> {
    fn paths(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, c)| paths(c, format!("{at}/{k}"), out)),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, c)| paths(c, format!("{at}/{i}"), out)),
            _ => {}
        }
        out.push(at);
    }
    let mut all = Vec::new();
    paths(file, String::new(), &mut all);
    let replacements = serde_json::json!([null, true, 0, 2, 256, -1, 1.5, "", "open", "x", [], {}, ["open"]]);
    let mut out = Vec::new();
    for path in all.iter().filter(|p| !p.is_empty()) {
        for r in replacements.as_array().unwrap() {
            let mut v = file.clone();
            *v.pointer_mut(path).unwrap() = r.clone();
            out.push(v);
        }
        let mut v = file.clone();
        match v.pointer_mut(path).unwrap() {
            Value::Object(m) => {
                for k in m.keys().cloned().collect::<Vec<_>>() {
                    let mut w = file.clone();
                    w.pointer_mut(path).unwrap().as_object_mut().unwrap().remove(&k);
                    out.push(w);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                for change in [0, 1, 2] {
                    let mut w = file.clone();
                    let list = w.pointer_mut(path).unwrap().as_array_mut().unwrap();
                    match change {
                        0 => list.reverse(),
                        1 => drop(list.remove(0)),
                        _ => list.push(list[0].clone()),
                    }
                    out.push(w);
                }
            }
            _ => {}
        }
    }
    // The top level too.
    for k in file.as_object().unwrap().keys() {
        let mut w = file.clone();
        w.as_object_mut().unwrap().remove(k);
        out.push(w);
    }
    out
}

/// The script's realm-file reader (section 5.3) accepts exactly the files keyraft-core's
/// accepts, with the same RealmConfig bytes, on every single change (a value replaced by
/// another of any JSON type, a field removed, a list reordered, shortened or lengthened) of
/// a version-2 file with every method kind and a `tls` object.
#[test]
fn the_independent_realm_file_reader_agrees_with_keyraft_core() {
    let mut file: Value = serde_json::from_str(&realm_file_json(v2_harness().config(), 1)).unwrap();
    // The transport object too (its text is checked, not its certificates).
    file["tls"] = serde_json::json!({ "ca_pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n" });
    let texts: Vec<String> = json_mutations(&file).iter().map(Value::to_string).collect();
    let out = Command::new("python3")
        .arg(script())
        .arg("--read-realm-files")
        .args(&texts)
        .output()
        .expect("python3 is needed to run the independent verifier (it is on every CI machine)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), texts.len(), "one verdict per file:\n{stdout}");
    let mut accepted = 0;
    for (text, script) in texts.iter().zip(lines) {
        let reference = RealmFile::from_json(text).and_then(|f| f.config());
        match &reference {
            Ok(config) => {
                accepted += 1;
                assert_eq!(script, format!("accept {}", hex::encode(config.encode())), "{text}");
            }
            Err(e) => {
                assert!(script.starts_with("reject "), "keyraft-core refuses ({e}), the script: {script}\n{text}")
            }
        }
    }
    assert!(accepted > 20 && accepted < texts.len() / 2, "{accepted} of {}", texts.len());
}

/// Runs `verify_proof.py --history` over a realm file, the current proof and version proofs.
fn run_history(dir: &Path, config: &RealmConfig, user: &str, current: &[u8], versions: &[Vec<u8>]) -> (bool, String) {
    let realm = dir.join("history-realm.json");
    std::fs::write(&realm, realm_file_json(config, 1)).unwrap();
    let current_file = dir.join("current.proof");
    std::fs::write(&current_file, current).unwrap();
    let mut files = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let f = dir.join(format!("listed-{i}.proof"));
        std::fs::write(&f, v).unwrap();
        files.push(f);
    }
    let out = Command::new("python3")
        .arg(script())
        .arg("--history")
        .arg(&realm)
        .arg(user)
        .arg(&current_file)
        .args(&files)
        .output()
        .expect("python3 is needed to run the independent verifier");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_independent_verifier_checks_a_history_complete_and_catches_every_version_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = v2_harness();
    let user = "carol@example.com";
    let carol = derive_signing_key(SEED_V2, "carol");
    h.register(user, &carol, &[("mail", b"c0")]).unwrap();
    let mut epochs = vec![h.publish_epoch().unwrap().epoch];
    for version in 1..=3u64 {
        let profile = keyraft_state::harness::test_profile(&format!("c{version}"), &[("mail", b"c")]);
        let u = h.make_update(user, version, keyraft_core::Policy::single(public_key(&carol)), profile, &[&carol]);
        h.append(keyraft_core::Command::Update(Box::new(u))).unwrap();
        epochs.push(h.publish_epoch().unwrap().epoch);
    }
    // An epoch without a change, the listing's pin.
    let pinned = h.publish_epoch().unwrap().epoch;
    let current = h.lookup_proof(user, Some(pinned), 1).unwrap().encode();
    // Newest first; version 1's epoch proven by the replica majority alone (a verifier skipped
    // it): listed, and flagged.
    let proofs: Vec<Vec<u8>> = epochs
        .iter()
        .rev()
        .map(|e| h.lookup_proof(user, Some(*e), if *e == epochs[1] { 0 } else { 1 }).unwrap().encode())
        .collect();
    let (ok, out) = run_history(dir.path(), h.config(), user, &current, &proofs);
    assert!(ok && out.contains("versions 3 to 0, complete") && out.contains("threshold: [1]"), "{out}");

    let without = |i: usize| -> Vec<Vec<u8>> {
        proofs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| p.clone()).collect()
    };
    for (i, what) in [(0, "the current version"), (1, "versions 2 to 2 were left out"), (3, "not 0")] {
        let (ok, out) = run_history(dir.path(), h.config(), user, &current, &without(i));
        assert!(!ok && out.contains("REJECTED (history)") && out.contains(what), "version {} left out: {out}", 3 - i);
    }
    let mut reordered = proofs.clone();
    reordered.swap(0, 1);
    let (ok, out) = run_history(dir.path(), h.config(), user, &current, &reordered);
    assert!(!ok && out.contains("not newest-first"), "{out}");
    // A tampered version proof fails its own check, as a lookup would.
    let mut tampered = proofs.clone();
    let at = tampered[2].len() / 2;
    tampered[2][at] ^= 1;
    let (ok, out) = run_history(dir.path(), h.config(), user, &current, &tampered);
    assert!(!ok && out.contains("REJECTED ("), "{out}");
}

// docs/protocol.md sections 4, 5 and 6.3: a proof of an identity with a pending recovery
// carries it, its leaf commits to it, and the script checks the recovery rules as the client
// does.

#[test]
fn the_independent_verifier_checks_a_pending_recovery_as_keyraft_core_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = v2_harness();
    let alice = derive_signing_key(SEED_V2, "alice");
    h.register("alice@example.com", &alice, &[("mail", b"alice-key")]).unwrap();
    h.publish_epoch().unwrap();
    h.recover("alice@example.com", &derive_signing_key(SEED_V2, "alice-new"), &[("mail", b"new")]).unwrap();
    h.now_ms += 1_000;
    h.publish_epoch().unwrap();
    let proof = h.lookup_proof("alice@example.com", None, 2).unwrap();
    assert!(proof.pending_recovery.is_some());
    let bytes = proof.encode();
    verify_lookup_bytes(&h.client_realm(2), "alice@example.com", &bytes, h.now_ms, None).unwrap();
    let (ok, out) = run(&h, dir.path(), "alice@example.com", &bytes, &["--verifier-threshold", "2"]);
    assert!(ok && out.contains("present") && out.contains("RECOVERY PENDING: version 1"), "{out}");

    // Both refuse the same proofs by the same checks: without the pending recovery, with a
    // byte of it flipped, and kept pending past its time.
    let mut hidden = proof.clone();
    hidden.pending_recovery = None;
    let mut overdue = proof.clone();
    let effective = proof.pending_recovery.as_ref().unwrap().effective_ms;
    overdue.head.epoch = 3;
    overdue.head.previous_head_hash = [1; 32];
    overdue.head.issue_time_ms = effective;
    h.resign(&mut overdue);
    let mut cases = vec![("hidden", hidden.encode(), h.now_ms), ("overdue", overdue.encode(), effective)];
    for at in [bytes.len() - 1, bytes.len() - 9, bytes.len() - 20, bytes.len() - 100] {
        let mut flipped = bytes.clone();
        flipped[at] ^= 1;
        cases.push(("flipped", flipped, h.now_ms));
    }
    for (name, tampered, now_ms) in cases {
        h.now_ms = now_ms;
        let core = verify_lookup_bytes(&h.client_realm(2), "alice@example.com", &tampered, now_ms, None).unwrap_err();
        let (ok, out) = run(&h, dir.path(), "alice@example.com", &tampered, &["--verifier-threshold", "2"]);
        assert!(!ok && out.contains(&format!("REJECTED ({})", core.check())), "{name}: core says {core}; {out}");
    }
}
