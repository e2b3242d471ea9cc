use super::*;
use keyraft_core::identity::{canonical_user_id, LocalPartRule};
use proptest::prelude::*;

const KEY: [u8; 32] = [0x11; 32];
const REALM: &str = "example.org";
const UPDATE: [u8; 32] = [0x22; 32];
const NOW_MS: u64 = 1_700_000_000_000;
const TTL_MS: u64 = 15 * 60 * 1000;

fn id(raw: &str) -> CanonicalUserId {
    canonical_user_id(raw, LocalPartRule::CaseInsensitive).expect("test ids are canonicalisable")
}

fn codes_with(key: [u8; 32], realm: &str) -> EmailCodes {
    EmailCodes::new(Zeroizing::new(key), realm, TTL_MS).expect("valid settings")
}

fn codes() -> EmailCodes {
    codes_with(KEY, REALM)
}

fn alice() -> CanonicalUserId {
    id("alice@example.com")
}

#[test]
fn an_issued_code_checks_for_its_identity_and_update() {
    let codes = codes();
    let code = codes.issue(&alice(), &UPDATE, NOW_MS);
    let verified = codes.check(code.as_str(), &alice(), &UPDATE, NOW_MS).expect("the code just issued");
    assert_eq!(verified.user_id(), &alice());
    assert_eq!(verified.update_id(), &UPDATE);
    assert_eq!(verified.expires_at_ms(), NOW_MS + TTL_MS);
    assert_eq!(code.expires_at_ms(), NOW_MS + TTL_MS);
}

#[test]
fn a_code_is_four_groups_of_four_crockford_symbols() {
    let code = codes().issue(&alice(), &UPDATE, NOW_MS);
    let text = code.as_str();
    assert_eq!(text.len(), 19, "{text}");
    for (i, c) in text.chars().enumerate() {
        if i % 5 == 4 {
            assert_eq!(c, '-', "{text}");
        } else {
            assert!(CROCKFORD.contains(&(c as u8)), "{text}: {c:?}");
        }
    }
    assert_eq!(extract_code(text).as_deref(), Some(text));
}

/// Pins the MAC message and the code layout of the module docs: key 0x11 * 32, realm
/// `example.org`, id `alice@example.com`, update id 0x22 * 32, issued at
/// 1_700_000_000_000 ms with a 15-minute lifetime (so expiry_ms 1_700_000_900_000). Checked
/// independently with Python's hmac; docs/protocol.md quotes this vector.
#[test]
fn the_code_layout_matches_the_documented_bytes() {
    let expiry_s: u64 = 1_700_000_900;
    let mut message = vec![21u8];
    message.extend_from_slice(b"keyraft/v1/email-code");
    message.extend_from_slice(&11u16.to_be_bytes());
    message.extend_from_slice(b"example.org");
    message.extend_from_slice(&17u16.to_be_bytes());
    message.extend_from_slice(b"alice@example.com");
    message.extend_from_slice(&UPDATE);
    message.extend_from_slice(&(expiry_s * 1000).to_be_bytes());
    let mut mac = <HmacSha256 as Mac>::new_from_slice(&KEY).expect("any key length");
    mac.update(&message);
    let mac: [u8; 32] = mac.finalize().into_bytes().into();

    let mut expected = [0u8; CODE_BYTES];
    expected[..5].copy_from_slice(&expiry_s.to_be_bytes()[3..]);
    expected[5..].copy_from_slice(&mac[..5]);

    let code = codes().issue(&alice(), &UPDATE, NOW_MS);
    assert_eq!(decode(code.as_str()), Ok(expected));
    assert_eq!(code.as_str(), "01JN-7X44-05T8-JXY5", "the pinned vector changed: update docs/protocol.md");
}

#[test]
fn a_code_is_valid_until_just_before_its_expiry() {
    let codes = codes();
    let code = codes.issue(&alice(), &UPDATE, NOW_MS);
    let expiry = code.expires_at_ms();
    assert!(codes.check(code.as_str(), &alice(), &UPDATE, expiry - 1).is_ok());
    assert_eq!(
        codes.check(code.as_str(), &alice(), &UPDATE, expiry),
        Err(EmailCodeError::Expired { expired_at_ms: expiry })
    );
    assert_eq!(
        codes.check(code.as_str(), &alice(), &UPDATE, expiry + 3_600_000),
        Err(EmailCodeError::Expired { expired_at_ms: expiry })
    );
}

#[test]
fn the_expiry_is_rounded_up_to_a_whole_second() {
    let code = codes().issue(&alice(), &UPDATE, NOW_MS + 1);
    assert_eq!(code.expires_at_ms(), NOW_MS + TTL_MS + 1000);
    let code = codes().issue(&alice(), &UPDATE, NOW_MS + 999);
    assert_eq!(code.expires_at_ms(), NOW_MS + TTL_MS + 1000);
}

#[test]
fn an_absurd_clock_gets_codes_at_the_last_representable_second() {
    let codes = codes();
    let code = codes.issue(&alice(), &UPDATE, u64::MAX);
    assert_eq!(code.expires_at_ms(), EXPIRY_S_MAX * 1000);
    assert!(matches!(codes.check(code.as_str(), &alice(), &UPDATE, u64::MAX), Err(EmailCodeError::Expired { .. })));
}

#[test]
fn a_code_for_anything_else_is_a_mismatch() {
    let code = codes().issue(&alice(), &UPDATE, NOW_MS);
    let code = code.as_str();
    let mismatch = Err(EmailCodeError::Mismatch);
    assert_eq!(codes().check(code, &id("bob@example.com"), &UPDATE, NOW_MS), mismatch, "another identity");
    assert_eq!(codes().check(code, &alice(), &[0x23; 32], NOW_MS), mismatch, "another update");
    assert_eq!(codes_with(KEY, "example.net").check(code, &alice(), &UPDATE, NOW_MS), mismatch, "another realm");
    assert_eq!(codes_with([0x12; 32], REALM).check(code, &alice(), &UPDATE, NOW_MS), mismatch, "another key");
}

#[test]
fn a_mismatched_code_is_not_called_expired() {
    let code = codes().issue(&alice(), &UPDATE, NOW_MS);
    let late = code.expires_at_ms() + 1;
    assert_eq!(codes().check(code.as_str(), &id("bob@example.com"), &UPDATE, late), Err(EmailCodeError::Mismatch));
}

#[test]
fn the_framing_keeps_realm_and_id_apart() {
    // Without length framing, realm "ab" with id "c@d.e" and realm "a" with id "bc@d.e"
    // would MAC the same bytes.
    let one = codes_with(KEY, "ab").issue(&id("c@d.example"), &UPDATE, NOW_MS);
    let two = codes_with(KEY, "a").issue(&id("bc@d.example"), &UPDATE, NOW_MS);
    assert_ne!(one.as_str(), two.as_str());
}

#[test]
fn codes_are_read_as_people_type_them() {
    let codes = codes();
    let code = codes.issue(&alice(), &UPDATE, NOW_MS);
    let typed = code.as_str();
    let variants = [
        typed.to_ascii_lowercase(),
        typed.replace('-', ""),
        typed.replace('-', " "),
        format!("  {}\t", typed.replace('-', " - ")),
        typed.replace('0', "O").replace('1', "I"),
        typed.replace('0', "o").replace('1', "l").to_ascii_lowercase(),
        typed.replace('1', "L"),
    ];
    for variant in variants {
        assert!(codes.check(&variant, &alice(), &UPDATE, NOW_MS).is_ok(), "{variant:?} for {typed}");
    }
}

#[test]
fn crockford_substitutions_read_as_digits() {
    assert_eq!(decode("OOOO-IIII-LLLL-oooo"), decode("0000-1111-1111-0000"));
    assert_eq!(decode("oiLl-0000-0000-0000"), decode("0111-0000-0000-0000"));
}

#[test]
fn malformed_codes_say_what_is_wrong() {
    let check = |code: &str| codes().check(code, &alice(), &UPDATE, NOW_MS);
    let malformed = |m: MalformedCode| Err(EmailCodeError::Malformed(m));
    assert_eq!(check(""), malformed(MalformedCode::Empty));
    assert_eq!(check(" - - "), malformed(MalformedCode::Empty));
    assert_eq!(check("ABCD-EFGH-JKMN-PQR"), malformed(MalformedCode::WrongLength { symbols: 15, expected: 16 }));
    assert_eq!(check("ABCD-EFGH-JKMN-PQRST"), malformed(MalformedCode::WrongLength { symbols: 17, expected: 16 }));
    assert_eq!(check("ABCD-EFGH-JKMN-PQRU"), malformed(MalformedCode::BadCharacter { character: 'U', position: 19 }));
    assert_eq!(check("AB!D-EFGH-JKMN-PQRS"), malformed(MalformedCode::BadCharacter { character: '!', position: 3 }));
    assert_eq!(check("ÄBCD-EFGH-JKMN-PQRS"), malformed(MalformedCode::BadCharacter { character: 'Ä', position: 1 }));
    let huge = "A".repeat(1_000_000);
    assert_eq!(
        check(&huge),
        malformed(MalformedCode::TooLong { input_bytes: 1_000_000, max_bytes: CODE_INPUT_BYTES_MAX })
    );
    assert_eq!(
        check(&"A".repeat(CODE_INPUT_BYTES_MAX)),
        malformed(MalformedCode::WrongLength { symbols: CODE_INPUT_BYTES_MAX, expected: 16 })
    );
}

#[test]
fn every_single_bit_flip_is_refused() {
    let codes = codes();
    let code = codes.issue(&alice(), &UPDATE, NOW_MS);
    let bytes = decode(code.as_str()).expect("an issued code parses");
    for bit in 0..(8 * CODE_BYTES) {
        let mut flipped = bytes;
        flipped[bit / 8] ^= 1 << (bit % 8);
        let text = encode(&flipped);
        let result = codes.check(&text, &alice(), &UPDATE, NOW_MS);
        assert_eq!(result, Err(EmailCodeError::Mismatch), "bit {bit}: {text}");
    }
}

#[test]
fn encoding_round_trips() {
    for bytes in [[0u8; CODE_BYTES], [0xff; CODE_BYTES], [0x5a; CODE_BYTES]] {
        assert_eq!(decode(&encode(&bytes)), Ok(bytes));
    }
    assert_eq!(encode(&[0u8; CODE_BYTES]), "0000-0000-0000-0000");
    assert_eq!(encode(&[0xff; CODE_BYTES]), "ZZZZ-ZZZZ-ZZZZ-ZZZZ");
}

proptest! {
    #[test]
    fn random_text_never_passes(text in "\\PC{0,80}") {
        let result = codes().check(&text, &alice(), &UPDATE, NOW_MS);
        prop_assert!(result.is_err(), "{text:?} passed");
    }

    #[test]
    fn random_well_formed_codes_never_pass(text in "[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{16}") {
        let result = codes().check(&text, &alice(), &UPDATE, NOW_MS);
        prop_assert!(result.is_err(), "{text:?} passed");
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let text = String::from_utf8_lossy(&bytes);
        prop_assert!(codes().check(&text, &alice(), &UPDATE, NOW_MS).is_err());
    }

    #[test]
    fn codes_for_random_updates_check_and_differ(update in any::<[u8; 32]>(), other in any::<[u8; 32]>()) {
        prop_assume!(update != other);
        let codes = codes();
        let code = codes.issue(&alice(), &update, NOW_MS);
        prop_assert!(codes.check(code.as_str(), &alice(), &update, NOW_MS).is_ok());
        prop_assert_eq!(codes.check(code.as_str(), &alice(), &other, NOW_MS), Err(EmailCodeError::Mismatch));
    }
}

#[test]
fn settings_out_of_range_are_refused() {
    let key = || Zeroizing::new(KEY);
    assert!(matches!(EmailCodes::new(key(), "", TTL_MS), Err(EmailConfigError::Realm { realm_bytes: 0 })));
    let long = "r".repeat(70_000);
    assert!(matches!(EmailCodes::new(key(), &long, TTL_MS), Err(EmailConfigError::Realm { realm_bytes: 70_000 })));
    assert!(matches!(
        EmailCodes::new(key(), REALM, CODE_TTL_MS_MIN - 1),
        Err(EmailConfigError::CodeTtl { code_ttl_ms: 59_999, .. })
    ));
    assert!(matches!(EmailCodes::new(key(), REALM, CODE_TTL_MS_MAX + 1), Err(EmailConfigError::CodeTtl { .. })));
    assert!(EmailCodes::new(key(), REALM, CODE_TTL_MS_MIN).is_ok());
    assert!(EmailCodes::new(key(), REALM, CODE_TTL_MS_MAX).is_ok());
}

#[test]
fn debug_output_leaves_the_key_out() {
    let shown = format!("{:?}", codes());
    assert!(shown.contains(REALM), "{shown}");
    assert!(!shown.contains("17, 17") && !shown.to_ascii_lowercase().contains("1111"), "{shown}");
}

#[test]
fn extract_code_finds_the_code_and_nothing_else() {
    assert_eq!(
        extract_code("Subject: x\r\n\r\nyour code:\r\n\r\n0CMJ-ZBRM-56HH-ST3W\r\n").as_deref(),
        Some("0CMJ-ZBRM-56HH-ST3W")
    );
    assert_eq!(extract_code("0CMJ-ZBRM-56HH-ST3W").as_deref(), Some("0CMJ-ZBRM-56HH-ST3W"));
    assert_eq!(extract_code("no code here"), None);
    assert_eq!(extract_code(""), None);
    assert_eq!(extract_code("X0CMJ-ZBRM-56HH-ST3W"), None, "part of a longer token");
    assert_eq!(extract_code("0CMJ-ZBRM-56HH-ST3WX"), None, "part of a longer token");
    assert_eq!(extract_code("0CMJ-ZBRM-56HH-ST3U"), None, "U is not a symbol");
    assert_eq!(extract_code("zoë 0CMJ-ZBRM-56HH-ST3W ë").as_deref(), Some("0CMJ-ZBRM-56HH-ST3W"));
}

#[test]
fn the_mail_names_realm_identity_code_and_expiry() {
    let code = codes().issue(&alice(), &UPDATE, NOW_MS);
    let mail = compose_code_mail(REALM, &alice(), &code);
    for text in [&mail.subject, &mail.body] {
        assert!(text.contains(REALM), "{text}");
        assert!(text.contains("alice@example.com"), "{text}");
    }
    assert!(mail.body.contains(&format!("\n{code}\n")), "the code on a line of its own: {}", mail.body);
    assert!(mail.body.contains("Tue, 14 Nov 2023 22:28:20 GMT"), "{}", mail.body);
    assert!(mail.body.contains("If you did not ask for this, ignore it"), "{}", mail.body);
    assert_eq!(extract_code(&mail.body).as_deref(), Some(code.as_str()));
}

/// A log line sink for the tracing subscriber.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_log_mailer_writes_the_code_and_address_at_warn() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let code = codes().issue(&alice(), &UPDATE, NOW_MS);
    Mailer::Log.send_code(REALM, &alice(), &code).await.expect("logging cannot fail");
    let log =
        String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_owned();
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("to=alice@example.com"), "{log}");
    assert!(log.contains(&format!("code={code}")), "{log}");
    assert!(log.contains("realm=\"example.org\""), "{log}");
    assert!(log.contains("log_codes"), "{log}");
}

mod config {
    use super::super::*;

    fn parse(text: &str) -> Result<EmailConfig, toml::de::Error> {
        toml::from_str(text)
    }

    fn smtp(host: &str, starttls: bool) -> SmtpConfig {
        SmtpConfig {
            host: host.to_owned(),
            port: 25,
            from: "keyraft <noreply@example.org>".to_owned(),
            starttls,
            username: None,
            password_file: None,
            ca_file: None,
            timeout_ms: 10_000,
        }
    }

    fn with(smtp: Option<SmtpConfig>, log_codes: bool) -> EmailConfig {
        EmailConfig { mac_key_file: "k".into(), code_ttl_ms: CODE_TTL_MS_DEFAULT, smtp, log_codes }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = parse("mac_key_file = \"k\"\n[smtp]\nhost = \"smtp.example.org\"\nfrom = \"a@example.org\"\n")
            .expect("a minimal config");
        assert_eq!(config.code_ttl_ms, 15 * 60 * 1000);
        assert!(!config.log_codes);
        let smtp = config.smtp.as_ref().expect("smtp set");
        assert_eq!((smtp.port, smtp.starttls, smtp.timeout_ms), (587, true, 10_000));
        assert_eq!((&smtp.username, &smtp.password_file, &smtp.ca_file), (&None, &None, &None));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let error = parse("mac_key_file = \"k\"\nlog_code = true\n").expect_err("a typo");
        assert!(error.to_string().contains("log_code"), "{error}");
        let error = parse("mac_key_file = \"k\"\n[smtp]\nhost = \"h\"\nfrom = \"a@b.c\"\ntls = true\n")
            .expect_err("a typo in smtp");
        assert!(error.to_string().contains("tls"), "{error}");
    }

    #[test]
    fn exactly_one_mailer() {
        assert!(matches!(with(None, false).validate(), Err(EmailConfigError::NoMailer)));
        assert!(matches!(with(Some(smtp("localhost", false)), true).validate(), Err(EmailConfigError::TwoMailers)));
        assert!(with(None, true).validate().is_ok());
        assert!(with(Some(smtp("smtp.example.org", true)), false).validate().is_ok());
    }

    #[test]
    fn plain_text_only_to_loopback() {
        for host in ["localhost", "LOCALHOST", "127.0.0.1", "127.3.2.1", "::1", "[::1]"] {
            assert!(with(Some(smtp(host, false)), false).validate().is_ok(), "{host}");
        }
        for host in ["smtp.example.org", "10.0.0.1", "192.168.1.1", "localhost.example.org", "::2"] {
            let result = with(Some(smtp(host, false)), false).validate();
            assert!(
                matches!(&result, Err(EmailConfigError::PlaintextRemoteRelay { host: h }) if h == host),
                "{host}: {result:?}"
            );
        }
    }

    #[test]
    fn relay_settings_are_checked() {
        let mut half = smtp("smtp.example.org", true);
        half.username = Some("u".into());
        assert!(matches!(
            with(Some(half.clone()), false).validate(),
            Err(EmailConfigError::HalfCredentials { set: "smtp.username" })
        ));
        half.username = None;
        half.password_file = Some("p".into());
        assert!(matches!(
            with(Some(half), false).validate(),
            Err(EmailConfigError::HalfCredentials { set: "smtp.password_file" })
        ));
        let mut bad_from = smtp("smtp.example.org", true);
        bad_from.from = "not a mailbox".into();
        let result = with(Some(bad_from), false).validate();
        assert!(matches!(&result, Err(EmailConfigError::From { from, .. }) if from == "not a mailbox"), "{result:?}");
        assert!(matches!(with(Some(smtp("", true)), false).validate(), Err(EmailConfigError::EmptyHost)));
        let mut ttl = with(None, true);
        ttl.code_ttl_ms = 0;
        assert!(matches!(ttl.validate(), Err(EmailConfigError::CodeTtl { code_ttl_ms: 0, .. })));
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let mut config = with(Some(smtp("localhost", false)), false);
        config.smtp.as_mut().expect("set").password_file = Some("p".into());
        config.smtp.as_mut().expect("set").ca_file = Some("/abs/ca.pem".into());
        config.resolve_paths(std::path::Path::new("/etc/keyraft"));
        assert_eq!(config.mac_key_file, std::path::PathBuf::from("/etc/keyraft/k"));
        let smtp = config.smtp.expect("set");
        assert_eq!(smtp.password_file, Some("/etc/keyraft/p".into()));
        assert_eq!(smtp.ca_file, Some("/abs/ca.pem".into()));
    }

    #[test]
    fn the_log_mailer_says_it_logs() {
        let mailer = with(None, true).mailer().expect("log mailer");
        assert!(matches!(mailer, Mailer::Log));
        assert!(mailer.describe().contains("WRITTEN TO THIS LOG"), "{}", mailer.describe());
    }
}

mod key_file {
    use super::super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_generated_key_is_owner_only_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("email-mac.key");
        generate_mac_key_file(&path).expect("generate");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let key = load_mac_key(&path).expect("load");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, format!("{MAC_KEY_HEADER}\n{}\n", hex::encode(&key[..])));

        let other = dir.path().join("other.key");
        generate_mac_key_file(&other).expect("generate");
        assert_ne!(*load_mac_key(&other).expect("load"), *key, "keys are random");
    }

    #[test]
    fn an_existing_file_is_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("email-mac.key");
        generate_mac_key_file(&path).expect("generate");
        let before = std::fs::read(&path).expect("read");
        let result = generate_mac_key_file(&path);
        assert!(
            matches!(&result, Err(EmailConfigError::Io { action: "writing", source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists),
            "{result:?}"
        );
        assert_eq!(std::fs::read(&path).expect("read"), before);
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("email-mac.key");
        generate_mac_key_file(&path).expect("generate");
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            set_mode(&path, mode);
            let result = load_mac_key(&path);
            assert!(
                matches!(&result, Err(EmailConfigError::OpenPermissions { setting: "mac_key_file", mode: m, .. }) if *m == mode),
                "{mode:o}: {result:?}"
            );
            let message = result.expect_err("refused").to_string();
            assert!(message.contains("chmod 600"), "{message}");
        }
        set_mode(&path, 0o400);
        assert!(load_mac_key(&path).is_ok());
    }

    #[test]
    fn malformed_key_files_say_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let hex64 = "ab".repeat(32);
        let cases = [
            (String::new(), "first line"),
            (format!("{hex64}\n"), "first line"),
            ("keyraft-ed25519-secret-v1\n".to_owned() + &hex64, "first line"),
            (format!("{MAC_KEY_HEADER}\n"), "not followed by the key"),
            (format!("{MAC_KEY_HEADER}\n{}\n", &hex64[..62]), "found 62 characters"),
            (format!("{MAC_KEY_HEADER}\n{}zz\n", &hex64[..62]), "not hex"),
            (format!("{MAC_KEY_HEADER}\n{hex64}\nmore\n"), "unexpected text"),
        ];
        for (text, why) in cases {
            let _ = std::fs::remove_file(&path);
            std::fs::write(&path, &text).expect("write");
            set_mode(&path, 0o600);
            let result = load_mac_key(&path);
            let message = result.expect_err(&text).to_string();
            assert!(message.contains("mac_key_file") && message.contains(why), "{text:?}: {message}");
        }
        std::fs::write(&path, format!("{MAC_KEY_HEADER}\n{hex64}\n")).expect("write");
        assert_eq!(*load_mac_key(&path).expect("well formed"), [0xab; 32]);
    }

    #[test]
    fn a_missing_key_file_names_the_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let result = load_mac_key(&dir.path().join("absent"));
        assert!(matches!(&result, Err(EmailConfigError::Io { setting: "mac_key_file", .. })), "{result:?}");
    }

    #[test]
    fn the_config_loads_its_codes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("email-mac.key");
        generate_mac_key_file(&path).expect("generate");
        let config = EmailConfig { mac_key_file: path, code_ttl_ms: 120_000, smtp: None, log_codes: true };
        let codes = config.codes("example.org").expect("codes");
        assert_eq!((codes.realm(), codes.code_ttl_ms()), ("example.org", 120_000));
    }
}
