//! docs/vectors/identity.json: canonical user ids (docs/protocol.md, "Canonical user ids").
//!
//! Every case below carries the answer a reader of the specification would derive by hand;
//! the test checks that `keyraft_core::identity` gives it, that the file holds exactly these
//! cases, and that every vector in the file is reproduced. Regenerate the file with
//! `KEYRAFT_REGEN_FIXTURES=1 cargo test -p keyraft-core --test identity_vectors` and review
//! the diff as a protocol change.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_core::identity::{canonical_user_id, LocalPartRule, IDENTITY_UNICODE_VERSION};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Every error name a vector may give.
const ERRORS: &[&str] = &[
    "limits",
    "bidi_control",
    "control_character",
    "default_ignorable",
    "invalid_domain",
    "confusable_domain",
    "canonical_limits",
];

const CI: LocalPartRule = LocalPartRule::CaseInsensitive;
const CS: LocalPartRule = LocalPartRule::CaseSensitive;

/// (name, input, rule, expected canonical id or error name).
fn cases() -> Vec<(&'static str, String, LocalPartRule, Result<String, &'static str>)> {
    let s = |x: &str| x.to_owned();
    let ok = |x: &str| Ok(x.to_owned());
    vec![
        ("plain-nfc", s("zo\u{00EB}"), CI, ok("zo\u{00EB}")),
        ("plain-nfd-is-the-nfc-identity", s("zoe\u{0308}"), CI, ok("zo\u{00EB}")),
        ("plain-ids-keep-their-case", s("Zo\u{00EB}"), CI, ok("Zo\u{00EB}")),
        ("plain-kelvin-sign-is-k-under-nfc", s("\u{212A}elvin"), CI, ok("Kelvin")),
        ("email-case-insensitive", s("Alice@Example.com"), CI, ok("alice@example.com")),
        ("email-case-sensitive-local-part", s("Alice@Example.com"), CS, ok("Alice@example.com")),
        ("email-nfd-local-part", s("Zoe\u{0308}@Example.com"), CI, ok("zo\u{00EB}@example.com")),
        ("email-idna-domain", s("b\u{00FC}cher@B\u{00FC}cher.example"), CI, ok("b\u{00FC}cher@xn--bcher-kva.example")),
        ("email-idna-nontransitional-sharp-s", s("a@stra\u{00DF}e.de"), CI, ok("a@xn--strae-oqa.de")),
        (
            "email-fullwidth-domain",
            s("a@\u{FF25}\u{FF38}\u{FF21}\u{FF2D}\u{FF30}\u{FF2C}\u{FF25}.com"),
            CI,
            ok("a@example.com"),
        ),
        (
            "email-all-cyrillic-domain",
            s("\u{0418}\u{0432}\u{0430}\u{043D}@\u{041F}\u{0440}\u{0438}\u{043C}\u{0435}\u{0440}.\u{0440}\u{0444}"),
            CI,
            ok("\u{0438}\u{0432}\u{0430}\u{043D}@xn--e1afmkfd.xn--p1ai"),
        ),
        (
            "email-greek-final-sigma",
            s("\u{039F}\u{0394}\u{039F}\u{03A3}@example.gr"),
            CI,
            ok("\u{03BF}\u{03B4}\u{03BF}\u{03C2}@example.gr"),
        ),
        ("email-dotted-capital-i", s("\u{0130}@example.com"), CI, ok("i\u{0307}@example.com")),
        ("empty-local-part-is-a-plain-id", s("@Example.com"), CI, ok("@Example.com")),
        ("two-at-signs-is-a-plain-id", s("a@b@Example.com"), CI, ok("a@b@Example.com")),
        ("empty", s(""), CI, Err("limits")),
        ("too-long", "a".repeat(257), CI, Err("limits")),
        ("longest", "a".repeat(256), CI, Ok("a".repeat(256))),
        ("right-to-left-override", s("abcd\u{202E}moc.evil"), CI, Err("bidi_control")),
        ("right-to-left-mark-in-email", s("alice\u{200F}@example.com"), CI, Err("bidi_control")),
        ("arabic-letter-mark", s("a\u{061C}b"), CI, Err("bidi_control")),
        ("zero-width-joiner", s("ali\u{200D}ce@example.com"), CI, Err("default_ignorable")),
        ("zero-width-space", s("alice\u{200B}"), CI, Err("default_ignorable")),
        ("byte-order-mark", s("\u{FEFF}alice"), CI, Err("default_ignorable")),
        ("soft-hyphen", s("al\u{00AD}ice"), CI, Err("default_ignorable")),
        ("variation-selector", s("\u{2764}\u{FE0F}"), CI, Err("default_ignorable")),
        ("control-character", s("ali\u{0007}ce"), CI, Err("control_character")),
        ("c1-control-character", s("alice\u{0085}"), CI, Err("control_character")),
        ("cyrillic-a-in-latin-domain", s("alice@p\u{0430}ypal.com"), CI, Err("confusable_domain")),
        ("cyrillic-a-in-latin-domain-as-punycode", s("alice@xn--pypal-4ve.com"), CI, Err("confusable_domain")),
        ("domain-empty-label", s("alice@example..com"), CI, Err("invalid_domain")),
        ("domain-trailing-dot", s("alice@example.com."), CI, Err("invalid_domain")),
        ("domain-not-ldh", s("alice@exa_mple.com"), CI, Err("invalid_domain")),
        ("canonical-form-too-long", "\u{0958}".repeat(80), CI, Err("canonical_limits")),
    ]
}

fn path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/vectors/identity.json")
}

fn outcome(input: &str, rule: LocalPartRule) -> Result<String, &'static str> {
    canonical_user_id(input, rule).map(|c| c.into_string()).map_err(|e| e.name())
}

fn document() -> String {
    let vectors: Vec<Value> = cases()
        .into_iter()
        .map(|(name, input, rule, expected)| {
            let got = outcome(&input, rule);
            assert_eq!(got, expected, "{name}: the specification's answer");
            json!({
                "name": name,
                "input": input,
                "input_hex": hex::encode(input.as_bytes()),
                "rule": rule.name(),
                "canonical": got.as_ref().ok(),
                "canonical_hex": got.as_ref().ok().map(|c| hex::encode(c.as_bytes())),
                "error": got.err(),
            })
        })
        .collect();
    let (a, b, c) = IDENTITY_UNICODE_VERSION;
    let doc = json!({
        "format": "keyraft canonical user id test vectors, protocol version 2 (docs/vectors/README.md)",
        "generated_by": "crates/core/tests/identity_vectors.rs (KEYRAFT_REGEN_FIXTURES=1 regenerates)",
        "unicode_version": format!("{a}.{b}.{c}"),
        "errors": ERRORS,
        "vectors": vectors,
    });
    serde_json::to_string_pretty(&doc).unwrap() + "\n"
}

fn rule_named(name: &str) -> LocalPartRule {
    [CI, CS].into_iter().find(|r| r.name() == name).unwrap_or_else(|| panic!("unknown rule {name}"))
}

#[test]
fn identity_vectors_are_stable_and_every_one_is_reproduced() {
    let actual = document();
    if std::env::var_os("KEYRAFT_REGEN_FIXTURES").is_some() {
        std::fs::write(path(), &actual).unwrap();
    }
    let expected = std::fs::read_to_string(path()).expect("identity vectors present (see this file's header)");
    assert!(actual == expected, "canonical ids changed: if deliberate, regenerate and update docs/protocol.md");

    let doc: Value = serde_json::from_str(&expected).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for v in doc["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        assert!(names.insert(name), "vector name {name} used twice");
        let input = String::from_utf8(hex::decode(v["input_hex"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(v["input"].as_str(), Some(input.as_str()), "{name}: input and input_hex");
        let got = outcome(&input, rule_named(v["rule"].as_str().unwrap()));
        match v["error"].as_str() {
            Some(error) => {
                assert!(ERRORS.contains(&error), "{name}: unknown error {error}");
                assert_eq!(got, Err(error), "{name}");
            }
            None => {
                let canonical = v["canonical"].as_str().unwrap();
                assert_eq!(got.as_deref(), Ok(canonical), "{name}");
                assert_eq!(v["canonical_hex"].as_str(), Some(hex::encode(canonical).as_str()), "{name}");
            }
        }
    }
}

#[test]
fn visually_identical_pairs_are_one_identity_or_refused() {
    // The examples, as pairs: each pair is one identity.
    for (a, b) in [("zo\u{00EB}", "zoe\u{0308}"), ("Alice@Example.com", "alice@example.com")] {
        assert_eq!(outcome(a, CI), outcome(b, CI), "{a:?} and {b:?}");
    }
    // An id with a right-to-left override is refused, not a second identity.
    assert_eq!(outcome("alice\u{202E}", CI), Err("bidi_control"));
}
