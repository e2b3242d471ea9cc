//! docs/vectors/realm-config-v2.json: realm files of protocol version 2 with their canonical
//! `RealmConfig` bytes and `config_hash` (docs/protocol.md sections 2.6 and 5.3), and realm
//! files every reader must refuse, with the field the refusal names.
//!
//! The test checks that `keyraft_core` reads every accepted file to exactly the bytes and hash
//! of the file, decodes those bytes back to the same configuration, and refuses every refused
//! file; `crates/state/tests/independent_verifier.rs` holds `scripts/verify_proof.py
//! --check-realm-vectors` to the same file. Regenerate it with
//! `KEYRAFT_REGEN_FIXTURES=1 cargo test -p keyraft-core --test realm_config_vectors` and review
//! the diff as a protocol change.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_core::identity::LocalPartRule;
use keyraft_core::registration::{Method, NamespaceRule, RegistrationPolicy};
use keyraft_core::vrf::VrfSecretKey;
use keyraft_core::{decode_canonical, Canonical, PublicKey, RealmConfig, RealmFile};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn key(n: u8) -> PublicKey {
    PublicKey::from_verifying_key(&ed25519_dalek::SigningKey::from_bytes(&[n; 32]).verifying_key()).unwrap()
}

fn v1() -> RealmConfig {
    let vrf = VrfSecretKey::from_seed(&[4; 32]).public_key();
    RealmConfig::new("example.org", vrf, vec![key(1), key(2), key(3)], vec![key(5)]).unwrap()
}

fn oidc(issuer: &str, audience: &str, claim: &str) -> Method {
    Method::Oidc { issuer: issuer.into(), audience: audience.into(), claim: claim.into() }
}

/// Every method kind, two OIDC issuers (one with its own claim) and a catch-all rule.
fn every_method() -> RegistrationPolicy {
    RegistrationPolicy {
        local_part_rule: LocalPartRule::CaseInsensitive,
        registrar_keys: vec![key(8), key(9)],
        rules: vec![
            NamespaceRule {
                namespace: "*@example.com".into(),
                methods: vec![
                    Method::Registrar,
                    Method::Email,
                    oidc("https://accounts.example.com", "keyraft", "email"),
                    oidc("https://id.example.net", "kr", "preferred_username"),
                ],
            },
            NamespaceRule { namespace: "*".into(), methods: vec![Method::Open] },
        ],
        recovery_window_ms: 3_600_000,
    }
}

/// Case-sensitive local parts, no open rule (an id no rule matches is closed), a non-ASCII
/// namespace and a namespace that is one exact id.
fn closed_case_sensitive() -> RegistrationPolicy {
    RegistrationPolicy {
        local_part_rule: LocalPartRule::CaseSensitive,
        registrar_keys: vec![key(8)],
        rules: vec![
            NamespaceRule { namespace: "root@example.org".into(), methods: vec![Method::Registrar] },
            NamespaceRule { namespace: "*@example.org".into(), methods: vec![Method::Email] },
            NamespaceRule { namespace: "zo\u{eb}*".into(), methods: vec![Method::Registrar, Method::Email] },
        ],
        // Recovery disabled.
        recovery_window_ms: 0,
    }
}

fn file_of(config: &RealmConfig) -> Value {
    serde_json::from_str(&RealmFile::new(config, 60_000, 5_000, vec!["127.0.0.1:7001".into()]).to_json()).unwrap()
}

/// (name, description, realm file) of the files every reader accepts.
fn accepted() -> Vec<(&'static str, &'static str, Value)> {
    let every = file_of(&v1().with_registration(every_method()).unwrap());
    let mut any_order = every.clone();
    let methods = any_order["registration"]["namespaces"][0]["methods"].as_array_mut().unwrap();
    methods.reverse();
    // The default claim may be left out.
    let default_claim = methods.iter_mut().find(|m| m["oidc"]["claim"] == "email").unwrap();
    default_claim["oidc"].as_object_mut().unwrap().remove("claim");
    vec![
        ("version-1", "the keys of every vector below, protocol version 1 (no protocol_version field)", file_of(&v1())),
        ("open", "anyone may register any id (the policy of the realms `keyraft dev` creates)", {
            file_of(&v1().with_registration(RegistrationPolicy::open()).unwrap())
        }),
        ("every-method", "every method kind, two OIDC issuers, then a catch-all open rule", every),
        (
            "methods-in-any-order",
            "every-method with its first rule's methods listed in another order and the default claim left out: the same configuration",
            any_order,
        ),
        (
            "generation-and-node-ids",
            "the open realm at generation 7, its replicas on nodes 3, 1 and 2 (not in key order): what a chain of configuration changes leads to",
            file_of(&{
                let mut c = v1()
                    .with_replica_node_ids(&[(3, key(1)), (1, key(2)), (2, key(3))])
                    .unwrap()
                    .with_registration(RegistrationPolicy::open())
                    .unwrap();
                c.generation = 7;
                c
            }),
        ),
        (
            "closed-case-sensitive",
            "case-sensitive local parts, registrar and e-mail rules, no open rule, a non-ASCII namespace",
            file_of(&v1().with_registration(closed_case_sensitive()).unwrap()),
        ),
    ]
}

/// A change to a realm file: set the value at a JSON pointer (`null` removes the field).
type Change = (&'static str, Value);

/// (name, description, change, the field a refusal names): changes of registrar keys and of
/// the protocol version.
fn refused_keys_and_versions() -> Vec<(&'static str, &'static str, Change, &'static str)> {
    let base = file_of(&v1().with_registration(every_method()).unwrap());
    let registrar = |i: usize| base["registration"]["registrar_keys"][i].clone();
    let mut many_keys: Vec<String> = (10..43).map(|n| hex::encode(key(n).as_bytes())).collect();
    many_keys.sort();
    let keys = "/registration/registrar_keys";
    vec![
        (
            "registrar-keys-unsorted",
            "registrar keys in descending order",
            (keys, json!([registrar(1), registrar(0)])),
            "registration.registrar_keys[1]",
        ),
        (
            "registrar-key-twice",
            "a registrar key listed twice",
            (keys, json!([registrar(0), registrar(0)])),
            "registration.registrar_keys[1]",
        ),
        (
            "registrar-key-upper-case",
            "a registrar key in upper-case hex",
            (keys, json!([registrar(0).as_str().unwrap().to_uppercase(), registrar(1)])),
            "registration.registrar_keys[0]",
        ),
        (
            "registrar-key-is-a-replica-key",
            "a registrar key that is also a replica key",
            (keys, json!([hex::encode(key(1).as_bytes())])),
            "registration.registrar_keys[0]",
        ),
        (
            "33-registrar-keys",
            "one registrar key more than the limit",
            (keys, json!(many_keys)),
            "registration.registrar_keys",
        ),
        (
            "registrar-without-registrar-keys",
            "a rule allowing registrar in a realm with no registrar key",
            (keys, json!([])),
            "registration.namespaces[0].methods[0]",
        ),
        (
            "version-2-without-registration",
            "protocol_version 2 and no registration object",
            ("/registration", Value::Null),
            "registration",
        ),
        (
            "registration-under-version-1",
            "a registration object without protocol_version (so version 1)",
            ("/protocol_version", Value::Null),
            "registration",
        ),
        (
            "protocol-version-3",
            "a version this protocol does not define",
            ("/protocol_version", json!(3)),
            "protocol_version",
        ),
        (
            "protocol-version-as-a-string",
            "\"2\" is not the integer 2",
            ("/protocol_version", json!("2")),
            "protocol_version",
        ),
        (
            "local-part-rule-unknown",
            "a local-part rule that does not exist",
            ("/registration/local_part_rule", json!("loose")),
            "registration.local_part_rule",
        ),
        (
            "unknown-registration-field",
            "a misspelled registrar_keys",
            ("/registration/registrar_key", json!([])),
            "registration.registrar_key",
        ),
        ("no-namespace", "a policy with no rule", ("/registration/namespaces", json!([])), "registration.namespaces"),
    ]
}

/// (name, description, change, the field a refusal names): changes of the replicas' node ids
/// and of the generation.
fn refused_replicas() -> Vec<(&'static str, &'static str, Change, &'static str)> {
    let base = file_of(&v1().with_registration(every_method()).unwrap());
    let replica = |i: usize| base["replicas"][i].clone();
    let key_of = |i: usize| base["replicas"][i]["key"].clone();
    vec![
        (
            "replica-keys-under-version-2",
            "a version-2 file listing replica_keys besides replicas",
            ("/replica_keys", json!([key_of(0), key_of(1), key_of(2)])),
            "replica_keys",
        ),
        ("replicas-missing", "a version-2 file without replicas", ("/replicas", Value::Null), "replicas"),
        (
            "replicas-unsorted",
            "replicas not sorted by key",
            ("/replicas", json!([replica(1), replica(0), replica(2)])),
            "replicas[1]",
        ),
        (
            "replica-node-id-twice",
            "two replicas bound to one node id",
            ("/replicas", json!([replica(0), {"node_id": replica(0)["node_id"], "key": key_of(1)}, replica(2)])),
            "replicas[1].node_id",
        ),
        (
            "replica-node-id-zero",
            "node ids start at 1",
            ("/replicas", json!([{"node_id": 0, "key": key_of(0)}, replica(1), replica(2)])),
            "replicas[0].node_id",
        ),
        (
            "replica-without-node-id",
            "a replica without its node id",
            ("/replicas", json!([{"key": key_of(0)}, replica(1), replica(2)])),
            "replicas[0].node_id",
        ),
        (
            "replica-as-an-array",
            "a replica written as [node_id, key]",
            ("/replicas", json!([[1, key_of(0)], replica(1), replica(2)])),
            "replicas[0]",
        ),
        (
            "replica-unknown-field",
            "a field a replica does not have",
            ("/replicas", json!([{"node_id": 1, "key": key_of(0), "name": "a"}, replica(1), replica(2)])),
            "replicas[0].name",
        ),
        ("generation-as-a-string", "\"1\" is not the integer 1", ("/generation", json!("1")), "generation"),
        ("generation-negative", "generations are unsigned", ("/generation", json!(-1)), "generation"),
    ]
}

/// (name, description, change, the field a refusal names): changes of namespace rules.
fn refused_rules() -> Vec<(&'static str, &'static str, Change, &'static str)> {
    let nine_methods: Vec<Value> = ["open", "registrar", "email"]
        .into_iter()
        .map(Value::from)
        .chain((0..6).map(|i| json!({"oidc": {"issuer": format!("https://id{i}.example"), "audience": "kr"}})))
        .collect();
    let methods = "/registration/namespaces/1/methods";
    let namespace = "/registration/namespaces/1/namespace";
    let oidc = |fields: Value| json!([{ "oidc": fields }]);
    vec![
        (
            "unknown-method",
            "a method no version defines",
            (methods, json!(["open", "sms"])),
            "registration.namespaces[1].methods[1]",
        ),
        (
            "oidc-as-a-string",
            "oidc needs its issuer and audience",
            (methods, json!(["oidc"])),
            "registration.namespaces[1].methods[0]",
        ),
        (
            "method-twice",
            "open listed twice in one rule",
            (methods, json!(["open", "open"])),
            "registration.namespaces[1].methods[1]",
        ),
        (
            "oidc-twice",
            "one OIDC method twice, once with the default claim left out",
            (
                methods,
                json!([
                    {"oidc": {"issuer": "https://id.example", "audience": "kr"}},
                    {"oidc": {"issuer": "https://id.example", "audience": "kr", "claim": "email"}},
                ]),
            ),
            "registration.namespaces[1].methods[1]",
        ),
        (
            "nine-methods",
            "one method more than the limit",
            (methods, json!(nine_methods)),
            "registration.namespaces[1].methods",
        ),
        ("no-method", "a rule with no method", (methods, json!([])), "registration.namespaces[1].methods"),
        (
            "upper-case-domain",
            "a namespace with an upper-case letter after its last @",
            ("/registration/namespaces/0/namespace", json!("*@Example.com")),
            "registration.namespaces[0].namespace",
        ),
        ("empty-namespace", "a namespace of 0 bytes", (namespace, json!("")), "registration.namespaces[1].namespace"),
        (
            "namespace-257-bytes",
            "a namespace one byte over the limit",
            (namespace, json!(format!("*{}", "\u{e9}".repeat(128)))),
            "registration.namespaces[1].namespace",
        ),
        (
            "namespace-control-character",
            "a namespace holding a tab",
            (namespace, json!("*\t")),
            "registration.namespaces[1].namespace",
        ),
        (
            "unknown-namespace-field",
            "a field a namespace rule does not have",
            ("/registration/namespaces/1/priority", json!(1)),
            "registration.namespaces[1].priority",
        ),
        (
            "unknown-oidc-field",
            "a field OIDC does not have",
            (methods, oidc(json!({"issuer": "https://id.example", "audience": "kr", "scope": "openid"}))),
            "registration.namespaces[1].methods[0].oidc.scope",
        ),
        (
            "oidc-without-audience",
            "OIDC needs an audience",
            (methods, oidc(json!({"issuer": "https://id.example"}))),
            "registration.namespaces[1].methods[0].oidc.audience",
        ),
        (
            "oidc-empty-issuer",
            "an issuer of 0 bytes",
            (methods, oidc(json!({"issuer": "", "audience": "kr"}))),
            "registration.namespaces[1].methods[0].oidc.issuer",
        ),
        (
            "oidc-claim-65-bytes",
            "a claim name one byte over the limit",
            (methods, oidc(json!({"issuer": "https://id.example", "audience": "kr", "claim": "c".repeat(65)}))),
            "registration.namespaces[1].methods[0].oidc.claim",
        ),
    ]
}

/// Recovery windows that are not a whole number of ms from 0 to 2^64 - 1.
fn refused_recovery_windows() -> Vec<(&'static str, &'static str, Change, &'static str)> {
    vec![
        (
            "negative-recovery-window",
            "a recovery window below 0",
            ("/registration/recovery_window_ms", json!(-1)),
            "registration.recovery_window_ms",
        ),
        (
            "recovery-window-as-text",
            "a recovery window written with a unit",
            ("/registration/recovery_window_ms", json!("24h")),
            "registration.recovery_window_ms",
        ),
        (
            "fractional-recovery-window",
            "a recovery window that is not a whole number of ms",
            ("/registration/recovery_window_ms", json!(1.5)),
            "registration.recovery_window_ms",
        ),
    ]
}

/// The every-method file with `change` made.
fn changed(change: &Change) -> Value {
    let mut file = file_of(&v1().with_registration(every_method()).unwrap());
    let (pointer, value) = change;
    let (parent, field) = pointer.rsplit_once('/').unwrap();
    let object = file.pointer_mut(parent).and_then(Value::as_object_mut).unwrap();
    if value.is_null() {
        assert!(object.remove(field).is_some(), "{pointer} is in the file");
    } else {
        object.insert(field.to_owned(), value.clone());
    }
    file
}

/// (name, description, realm file, the field a refusal names) of the files every reader refuses.
fn refused() -> Vec<(&'static str, &'static str, Value, &'static str)> {
    refused_keys_and_versions()
        .into_iter()
        .chain(refused_rules())
        .chain(refused_recovery_windows())
        .chain(refused_replicas())
        .map(|(name, description, change, field)| (name, description, changed(&change), field))
        .collect()
}

fn path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/vectors/realm-config-v2.json")
}

fn read(json: &str) -> Result<RealmConfig, String> {
    RealmFile::from_json(json).and_then(|f| f.config()).map_err(|e| e.to_string())
}

fn document() -> String {
    let realm_files: Vec<Value> = accepted()
        .into_iter()
        .map(|(name, description, file)| {
            let config = read(&file.to_string()).unwrap_or_else(|e| panic!("{name}: {e}"));
            json!({
                "name": name,
                "description": description,
                "realm_file": file,
                "protocol_version": config.protocol_version(),
                "config_hex": hex::encode(config.encode()),
                "config_hash": hex::encode(config.hash()),
            })
        })
        .collect();
    let refused: Vec<Value> = refused()
        .into_iter()
        .map(|(name, description, file, field)| {
            json!({ "name": name, "description": description, "json": file.to_string(), "field": field })
        })
        .collect();
    let doc = json!({
        "format": "keyraft realm configuration test vectors, protocol versions 1 and 2 (docs/vectors/README.md)",
        "generated_by": "crates/core/tests/realm_config_vectors.rs (KEYRAFT_REGEN_FIXTURES=1 regenerates)",
        "realm_files": realm_files,
        "realm_files_refused": refused,
    });
    serde_json::to_string_pretty(&doc).unwrap() + "\n"
}

#[test]
fn realm_config_vectors_are_stable_and_every_one_is_reproduced() {
    let actual = document();
    if std::env::var_os("KEYRAFT_REGEN_FIXTURES").is_some() {
        std::fs::write(path(), &actual).unwrap();
    }
    let expected = std::fs::read_to_string(path()).expect("realm config vectors present (see this file's header)");
    assert!(actual == expected, "realm configurations changed: if deliberate, regenerate and update docs/protocol.md");

    let doc: Value = serde_json::from_str(&expected).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for v in doc["realm_files"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        assert!(names.insert(name.to_owned()), "vector name {name} used twice");
        let config = read(&v["realm_file"].to_string()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let bytes = hex::decode(v["config_hex"].as_str().unwrap()).unwrap();
        assert_eq!(config.encode(), bytes, "{name}: config bytes");
        assert_eq!(hex::encode(config.hash()), v["config_hash"].as_str().unwrap(), "{name}: config hash");
        assert_eq!(u64::from(config.protocol_version()), v["protocol_version"].as_u64().unwrap(), "{name}");
        assert_eq!(decode_canonical::<RealmConfig>(&bytes).unwrap(), config, "{name}: the bytes decode back");
        assert_eq!(bytes[0], if config.protocol_version() == 2 { 2 } else { 0 }, "{name}: the first byte");
    }
    for v in doc["realm_files_refused"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        assert!(names.insert(name.to_owned()), "vector name {name} used twice");
        let json = v["json"].as_str().unwrap();
        assert!(read(json).is_err(), "{name}: accepted {json}");
    }
}

/// The file's claims hold: listing methods in another order (and leaving out the default
/// claim) is the same configuration, and each version-2 configuration is the version-1 one
/// with a version byte before it and the policy after it.
#[test]
fn the_vectors_show_what_they_say() {
    let configs: Vec<(&str, RealmConfig)> =
        accepted().into_iter().map(|(name, _, file)| (name, read(&file.to_string()).unwrap())).collect();
    let of = |name: &str| &configs.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(of("methods-in-any-order"), of("every-method"));
    let one = of("version-1").encode();
    for (name, config) in &configs {
        if *name != "version-1" {
            let two = config.encode();
            assert_eq!((two[0], &two[1..=one.len()]), (2, &one[..]), "{name}");
        }
    }
    // Not vacuous: the refused files are refused because of the one change each makes.
    assert!(read(&file_of(&v1().with_registration(every_method()).unwrap()).to_string()).is_ok());
}
