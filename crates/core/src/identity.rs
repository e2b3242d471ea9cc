//! Canonical user ids: one identity for each visually identical spelling.
//!
//! The VRF index is computed over the user id's bytes, so `zoë` typed as one code point
//! (NFC) and as `o` + combining diaeresis (NFD), or `Alice@Example.com` and
//! `alice@example.com`, would otherwise be distinct identities with distinct keys. Client and
//! edge both call [`canonical_user_id`] before the VRF, so they agree byte for byte
//! (docs/protocol.md, "Canonical user ids"; protocol version 2, not yet in force).
//!
//! The steps, in this order (each refusal has its own [`IdentityError`] variant):
//! 1. **limits**: the raw id is 1 to 256 bytes of UTF-8 ([`validate_user_id_length`], the
//!    same rule as [`validate_user_id`]);
//! 2. **refused code points**, scanning the raw id from its first character: a bidi control
//!    (U+061C, U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069), a control character
//!    (category Cc), or any other Default_Ignorable_Code_Point (zero-width space and joiners,
//!    U+FEFF, soft hyphen, variation selectors, ...). Checked before normalisation, so the
//!    position named is the one the user typed;
//! 3. **NFC**: Unicode Normalization Form C;
//! 4. **e-mail form**: an id with exactly one `@` and something on each side is an e-mail
//!    address. Its domain goes through IDNA UTS 46 ToASCII (nontransitional, STD3 rules,
//!    CheckHyphens, CheckBidi, CheckJoiners, VerifyDnsLength), which lowercases it and turns
//!    non-ASCII labels into punycode, and is refused if that fails. Its local part, under
//!    [`LocalPartRule::CaseInsensitive`], becomes the full Unicode lowercase of its NFC form,
//!    then NFC again. Ids that are not in e-mail form are not case-folded: `Zoë` and `zoë`
//!    are two identities, as today;
//! 5. **confusable domain**: each label of the domain, in its Unicode form (punycode
//!    decoded), must be ASCII, single-script, or a UTS 39 "highly restrictive" mix (Latin
//!    with Han and Japanese kana, Han with Bopomofo, or Hangul); Latin mixed with Cyrillic in
//!    one label is refused, an all-Cyrillic label is accepted;
//! 6. **limits again**: the result passes [`validate_user_id`] (NFC and lowercasing can make
//!    an id longer, punycode can make a domain longer).
//!
//! Steps 4 and 5 apply to e-mail-form ids only. The output is a fixed point: the canonical
//! id of a canonical id is itself.

use crate::encoding::DecodeError;
use crate::types::{validate_user_id, validate_user_id_length};
use icu_properties::props::DefaultIgnorableCodePoint;
use icu_properties::CodePointSetData;
use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use std::fmt;
use thiserror::Error;
use unicode_normalization::UnicodeNormalization;
use unicode_security::{RestrictionLevel, RestrictionLevelDetection};

/// The Unicode version of the normalisation, IDNA mapping, Default_Ignorable_Code_Point and
/// script data this module uses (all four crates agree; a test checks the ones they expose).
pub const IDENTITY_UNICODE_VERSION: (u8, u8, u8) = (18, 0, 0);

/// How the local part of an e-mail-form id (before the `@`) is compared: a per-realm rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LocalPartRule {
    /// `Alice@example.com` is `alice@example.com` (the default; what almost every mail
    /// system does in practice).
    #[default]
    CaseInsensitive,
    /// The local part is kept as typed (after NFC), as RFC 5321 allows.
    CaseSensitive,
}

impl LocalPartRule {
    /// The rule's name in docs/vectors/identity.json and the realm configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::CaseInsensitive => "case_insensitive",
            Self::CaseSensitive => "case_sensitive",
        }
    }
}

/// A user id in canonical form. Only [`canonical_user_id`] makes one, so holding one is the
/// proof that the steps ran.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CanonicalUserId(String);

impl CanonicalUserId {
    /// The canonical id, the bytes the VRF input is made of.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The canonical id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for CanonicalUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A code point, shown as `U+XXXX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodePoint(pub char);

impl fmt::Display for CodePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "U+{:04X}", u32::from(self.0))
    }
}

/// Why a user id has no canonical form. Every variant is the fault of whoever typed or sent
/// the id: retrying it unchanged gives the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Step 1: the raw id is empty or longer than 256 bytes.
    #[error("user id is refused: {0}")]
    Limits(#[source] DecodeError),
    /// Step 2: a bidi control, which can make the id display as another one.
    #[error("user id has a {name} ({code_point}) at character {position}")]
    BidiControl {
        /// What the control is, for example "right-to-left override".
        name: &'static str,
        /// The code point.
        code_point: CodePoint,
        /// Its position in the raw id, in characters (code points) from 1.
        position: usize,
    },
    /// Step 2: a control character (category Cc).
    #[error("user id has a control character ({code_point}) at character {position}")]
    ControlCharacter {
        /// The code point.
        code_point: CodePoint,
        /// Its position in the raw id, in characters (code points) from 1.
        position: usize,
    },
    /// Step 2: an invisible (default-ignorable) code point such as a zero-width joiner or a
    /// soft hyphen, which would make two ids that display the same distinct.
    #[error("user id has an invisible (default-ignorable) code point ({code_point}) at character {position}")]
    DefaultIgnorable {
        /// The code point.
        code_point: CodePoint,
        /// Its position in the raw id, in characters (code points) from 1.
        position: usize,
    },
    /// Step 4: the domain of an e-mail-form id is not a valid IDNA domain name.
    #[error(
        "user id's domain {domain:?} is not a valid domain name (IDNA UTS 46 with STD3 rules: letters, digits and \
         inner hyphens, labels of 1 to 63 bytes, no empty label or trailing dot)"
    )]
    InvalidDomain {
        /// The domain as typed (after NFC).
        domain: String,
    },
    /// Step 5: a domain label mixes scripts in a way that can imitate another domain.
    #[error(
        "user id's domain label {label:?} {why} (UTS 39 restriction level {level:?}; a label must be ASCII, a \
         single script, or highly restrictive)"
    )]
    ConfusableDomain {
        /// The label, in Unicode.
        label: String,
        /// What is wrong with it, in words.
        why: &'static str,
        /// The UTS 39 restriction level it reached.
        level: RestrictionLevel,
    },
    /// Step 6: the canonical form no longer fits the limits (it grew past 256 bytes).
    #[error("user id's canonical form is refused: {0}")]
    CanonicalLimits(#[source] DecodeError),
}

impl IdentityError {
    /// The stable name of the refusal, as in docs/vectors/identity.json.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Limits(_) => "limits",
            Self::BidiControl { .. } => "bidi_control",
            Self::ControlCharacter { .. } => "control_character",
            Self::DefaultIgnorable { .. } => "default_ignorable",
            Self::InvalidDomain { .. } => "invalid_domain",
            Self::ConfusableDomain { .. } => "confusable_domain",
            Self::CanonicalLimits(_) => "canonical_limits",
        }
    }
}

/// The bidi controls of step 2, with the names errors give them.
fn bidi_control_name(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{061C}' => "Arabic letter mark",
        '\u{200E}' => "left-to-right mark",
        '\u{200F}' => "right-to-left mark",
        '\u{202A}' => "left-to-right embedding",
        '\u{202B}' => "right-to-left embedding",
        '\u{202C}' => "pop directional formatting",
        '\u{202D}' => "left-to-right override",
        '\u{202E}' => "right-to-left override",
        '\u{2066}' => "left-to-right isolate",
        '\u{2067}' => "right-to-left isolate",
        '\u{2068}' => "first strong isolate",
        '\u{2069}' => "pop directional isolate",
        _ => return None,
    })
}

/// Whether step 2 refuses `c` (any of its three rules).
pub fn is_refused_code_point(c: char) -> bool {
    refused_code_point(c, 1).is_some()
}

fn refused_code_point(c: char, position: usize) -> Option<IdentityError> {
    let code_point = CodePoint(c);
    if let Some(name) = bidi_control_name(c) {
        return Some(IdentityError::BidiControl { name, code_point, position });
    }
    if c.is_control() {
        return Some(IdentityError::ControlCharacter { code_point, position });
    }
    if CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c) {
        return Some(IdentityError::DefaultIgnorable { code_point, position });
    }
    None
}

/// The canonical form of `raw` under the realm's local-part rule, or why it has none. See the
/// module documentation for the steps.
pub fn canonical_user_id(raw: &str, rule: LocalPartRule) -> Result<CanonicalUserId, IdentityError> {
    // Step 1.
    validate_user_id_length(raw).map_err(IdentityError::Limits)?;
    // Step 2.
    if let Some(refusal) = raw.chars().enumerate().find_map(|(i, c)| refused_code_point(c, i + 1)) {
        return Err(refusal);
    }
    // Step 3.
    let nfc: String = raw.nfc().collect();
    // Steps 4 and 5.
    let canonical = match email_parts(&nfc) {
        None => nfc,
        Some((local, domain)) => {
            let local = match rule {
                LocalPartRule::CaseInsensitive => local.to_lowercase().nfc().collect(),
                LocalPartRule::CaseSensitive => local.to_owned(),
            };
            let domain = canonical_domain(domain)?;
            format!("{local}@{domain}")
        }
    };
    // Step 6.
    validate_user_id(&canonical).map_err(IdentityError::CanonicalLimits)?;
    Ok(CanonicalUserId(canonical))
}

/// Step 4's test: exactly one `@`, with something on each side.
fn email_parts(id: &str) -> Option<(&str, &str)> {
    let (local, domain) = id.split_once('@')?;
    (!local.is_empty() && !domain.is_empty() && !domain.contains('@')).then_some((local, domain))
}

/// Steps 4 (domain half) and 5: the ASCII form of `domain`, each label checked in its
/// Unicode form.
fn canonical_domain(domain: &str) -> Result<String, IdentityError> {
    let invalid = || IdentityError::InvalidDomain { domain: domain.to_owned() };
    let uts46 = Uts46::new();
    let ascii = uts46
        .to_ascii(domain.as_bytes(), AsciiDenyList::STD3, Hyphens::Check, DnsLength::Verify)
        .map_err(|_| invalid())?
        .into_owned();
    // Decoding the ASCII form (rather than checking the input) also checks labels the user
    // typed as punycode: `xn--pypal-4ve` is the mixed-script `pаypal`.
    let (unicode, decoded) = uts46.to_unicode(ascii.as_bytes(), AsciiDenyList::STD3, Hyphens::Check);
    decoded.map_err(|_| invalid())?;
    for label in unicode.split('.') {
        let level = label.detect_restriction_level();
        if level > RestrictionLevel::HighlyRestrictive {
            let why = if level == RestrictionLevel::Unrestricted {
                "has a character outside the UTS 39 identifier profile (a symbol, or a restricted script)"
            } else {
                "mixes scripts in a way that can imitate another domain"
            };
            return Err(IdentityError::ConfusableDomain { label: label.to_owned(), why, level });
        }
    }
    // UTS 46 output is lowercase already; this keeps the rule visible and costs nothing.
    Ok(ascii.to_ascii_lowercase())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(raw: &str) -> Result<String, &'static str> {
        canonical_user_id(raw, LocalPartRule::default()).map(CanonicalUserId::into_string).map_err(|e| e.name())
    }

    #[test]
    fn data_tables_are_of_the_documented_unicode_version() {
        let v = IDENTITY_UNICODE_VERSION;
        assert_eq!(unicode_normalization::UNICODE_VERSION, v);
        assert_eq!(unicode_security::UNICODE_VERSION, (u64::from(v.0), u64::from(v.1), u64::from(v.2)));
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = canonical_user_id("abcd\u{202E}moc.evil", LocalPartRule::default()).unwrap_err();
        assert_eq!(e.to_string(), "user id has a right-to-left override (U+202E) at character 5");
        let e = canonical_user_id("a\u{200D}b", LocalPartRule::default()).unwrap_err();
        assert_eq!(e.to_string(), "user id has an invisible (default-ignorable) code point (U+200D) at character 2");
        let e = canonical_user_id("ab\u{7}", LocalPartRule::default()).unwrap_err();
        assert_eq!(e.to_string(), "user id has a control character (U+0007) at character 3");
    }

    #[test]
    fn every_bidi_control_and_the_named_invisibles_are_refused() {
        for c in ['\u{061C}', '\u{200E}', '\u{200F}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}']
            .into_iter()
            .chain('\u{202A}'..='\u{202E}')
        {
            assert_eq!(canon(&format!("a{c}b")), Err("bidi_control"), "{}", CodePoint(c));
        }
        for c in ['\u{200B}', '\u{200C}', '\u{200D}', '\u{FEFF}', '\u{00AD}', '\u{FE0F}', '\u{E0100}', '\u{2060}'] {
            assert_eq!(canon(&format!("a{c}b")), Err("default_ignorable"), "{}", CodePoint(c));
        }
        for c in ['\u{0}', '\u{1F}', '\u{7F}', '\u{85}', '\u{9F}'] {
            assert_eq!(canon(&format!("a{c}b")), Err("control_character"), "{}", CodePoint(c));
        }
    }

    #[test]
    fn step_six_refuses_an_id_that_grows_past_the_limit() {
        // U+0958 DEVANAGARI LETTER QA is a composition exclusion: NFC turns its 3 bytes into 6.
        let raw = "\u{0958}".repeat(80);
        assert_eq!(raw.len(), 240);
        assert_eq!(canon(&raw), Err("canonical_limits"));
    }

    #[test]
    fn punycode_typed_by_the_user_is_checked_in_its_unicode_form() {
        let ascii = canon("x@p\u{0430}ypal.com");
        assert_eq!(ascii, Err("confusable_domain"));
        let typed = idna::domain_to_ascii("p\u{0430}ypal.com").unwrap();
        assert_eq!(canon(&format!("x@{typed}")), Err("confusable_domain"));
    }

    #[test]
    fn domains_that_are_not_dns_names_are_refused() {
        for domain in ["example..com", "example.com.", "-example.com", "ex ample.com", "[127.0.0.1]", "ab--cd.com"] {
            assert_eq!(canon(&format!("a@{domain}")), Err("invalid_domain"), "{domain}");
        }
        assert_eq!(canon("a@my-host.example"), Ok("a@my-host.example".to_owned()));
    }

    #[test]
    fn highly_restrictive_mixes_are_accepted() {
        // Latin with Japanese is UTS 39 "highly restrictive".
        assert!(canon("a@abcひらがな.jp").is_ok());
        assert_eq!(canon("a@ab\u{03B1}.gr"), Err("confusable_domain"));
        let e = canonical_user_id("a@\u{2665}.com", LocalPartRule::default()).unwrap_err();
        assert!(e.to_string().contains("outside the UTS 39 identifier profile"), "{e}");
        let e = canonical_user_id("a@p\u{0430}ypal.com", LocalPartRule::default()).unwrap_err();
        assert!(e.to_string().contains("mixes scripts"), "{e}");
    }

    #[test]
    fn default_ignorable_code_points_are_the_ones_the_specification_lists() {
        // docs/protocol.md section 3.1, step 2, lists the ranges; the data must not drift from it.
        let listed: &[(u32, u32)] = &[
            (0x00AD, 0x00AD),
            (0x034F, 0x034F),
            (0x061C, 0x061C),
            (0x115F, 0x1160),
            (0x17B4, 0x17B5),
            (0x180B, 0x180F),
            (0x200B, 0x200F),
            (0x202A, 0x202E),
            (0x2060, 0x206F),
            (0x3164, 0x3164),
            (0xFE00, 0xFE0F),
            (0xFEFF, 0xFEFF),
            (0xFFA0, 0xFFA0),
            (0xFFF0, 0xFFF8),
            (0x1BCA0, 0x1BCA3),
            (0x1D173, 0x1D17A),
            (0xE0000, 0xE0FFF),
        ];
        let set = CodePointSetData::new::<DefaultIgnorableCodePoint>();
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            let cp = u32::from(c);
            let in_list = listed.iter().any(|&(lo, hi)| (lo..=hi).contains(&cp));
            assert_eq!(set.contains(c), in_list, "{}", CodePoint(c));
        }
    }

    #[test]
    fn domain_labels_are_checked_one_by_one() {
        assert_eq!(canon("a@\u{0431}\u{044E}\u{0440}\u{043E}.com"), Ok("a@xn--90a0af9c.com".to_owned()));
    }

    fn arbitrary_id() -> impl Strategy<Value = String> {
        // Mix plain characters, '@' and the awkward ones so the e-mail path is exercised.
        let ch = prop_oneof![
            4 => any::<char>(),
            3 => prop::sample::select(vec!['a', 'Z', '@', '.', '-', 'ß', 'İ', 'Σ', 'ς', 'é', '\u{0301}', '\u{0430}', 'x', 'n']),
            1 => prop::sample::select(vec!['\u{202E}', '\u{200D}', '\u{00AD}', '\u{0958}', '\u{1E9E}', '\u{212A}']),
        ];
        prop::collection::vec(ch, 0..40).prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn canonical_ids_are_fixed_points_free_of_refused_code_points(raw in arbitrary_id()) {
            for rule in [LocalPartRule::CaseInsensitive, LocalPartRule::CaseSensitive] {
                if let Ok(c) = canonical_user_id(&raw, rule) {
                    prop_assert!(!c.as_str().chars().any(is_refused_code_point), "{:?}", c);
                    let again = canonical_user_id(c.as_str(), rule);
                    prop_assert_eq!(again.as_ref(), Ok(&c), "{:?} -> {:?}", raw, c);
                }
            }
        }

        #[test]
        fn email_domains_are_fixed_points(local in "[a-zA-Z0-9ÄÖÜäöüß.]{1,10}", domain in "[a-zA-Z0-9äöüßбюро\u{0430}-]{1,12}\\.(com|de|рф)") {
            let raw = format!("{local}@{domain}");
            if let Ok(c) = canonical_user_id(&raw, LocalPartRule::CaseInsensitive) {
                prop_assert_eq!(canonical_user_id(c.as_str(), LocalPartRule::CaseInsensitive), Ok(c));
            }
        }
    }
}
