//! The `email` method's mailers against a real SMTP conversation: lettre talking to the
//! loopback sink of `registration::email::testing`.

use keyraft_core::identity::{canonical_user_id, CanonicalUserId, LocalPartRule};
use keyraft_server::registration::email::testing::{extract_code, SmtpSink};
use keyraft_server::registration::email::{
    generate_mac_key_file, EmailCodeError, EmailCodes, EmailConfig, EmailConfigError, MailError, Mailer, SmtpConfig,
};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

const REALM: &str = "example.org";
const UPDATE: [u8; 32] = [0x42; 32];
/// Generous: the sink answers at once, but the machine may be busy.
const MAIL_DEADLINE: Duration = Duration::from_secs(30);

fn id(raw: &str) -> CanonicalUserId {
    canonical_user_id(raw, LocalPartRule::CaseInsensitive).expect("test ids are canonicalisable")
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970");
    u64::try_from(since.as_millis()).expect("fits")
}

fn smtp_to(sink: &SmtpSink, starttls: bool) -> SmtpConfig {
    SmtpConfig {
        host: "127.0.0.1".to_owned(),
        port: sink.addr().port(),
        from: "keyraft <noreply@example.org>".to_owned(),
        starttls,
        username: None,
        password_file: None,
        ca_file: None,
        timeout_ms: 10_000,
    }
}

/// A config with a fresh MAC key in `dir`.
fn config(dir: &Path, smtp: SmtpConfig) -> EmailConfig {
    let mac_key_file = dir.join("email-mac.key");
    if !mac_key_file.exists() {
        generate_mac_key_file(&mac_key_file).expect("generate the MAC key");
    }
    EmailConfig { mac_key_file, code_ttl_ms: 15 * 60 * 1000, smtp: Some(smtp), log_codes: false }
}

async fn mail_and_read_back(sink: &SmtpSink, mailer: &Mailer, codes: &EmailCodes, user: &CanonicalUserId) -> String {
    let issued = codes.issue(user, &UPDATE, now_ms());
    mailer.send_code(codes.realm(), user, &issued).await.expect("the sink accepts the mail");
    let mail = sink.wait_for_message(user.as_str(), MAIL_DEADLINE).await.expect("the mail arrives");
    assert_eq!(mail.from, "noreply@example.org");
    assert_eq!(mail.to, vec![user.as_str().to_owned()]);
    assert!(!mail.tls, "a sink without a certificate offers no STARTTLS");
    let code = extract_code(&mail.data).unwrap_or_else(|| panic!("no code in the mail:\n{}", mail.data));
    assert_eq!(code, issued.as_str());
    code
}

#[tokio::test]
async fn a_mailed_code_checks_on_any_replica_of_the_realm() {
    let sink = SmtpSink::start().await.expect("start the sink");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), smtp_to(&sink, false));
    let mailer = config.mailer().expect("mailer");
    let alice = id("Alice@Example.COM");
    let code = mail_and_read_back(&sink, &mailer, &config.codes(REALM).expect("codes"), &alice).await;

    // Another replica: same key file, its own EmailCodes, no state shared.
    let other_replica = config.codes(REALM).expect("codes");
    let verified = other_replica.check(&code, &alice, &UPDATE, now_ms()).expect("the mailed code");
    assert_eq!(verified.user_id(), &alice);
    assert_eq!(
        other_replica.check(&code, &alice, &[0x43; 32], now_ms()).expect_err("another update"),
        EmailCodeError::Mismatch
    );
}

#[tokio::test]
async fn the_mail_reads_as_documented() {
    let sink = SmtpSink::start().await.expect("start the sink");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), smtp_to(&sink, false));
    let mailer = config.mailer().expect("mailer");
    let alice = id("alice@example.com");
    mail_and_read_back(&sink, &mailer, &config.codes(REALM).expect("codes"), &alice).await;
    let data = sink.messages().pop().expect("one mail").data;
    assert!(data.contains("Subject: Your code to register alice@example.com in example.org"), "{data}");
    assert!(data.contains("From: keyraft <noreply@example.org>"), "{data}");
    assert!(data.contains("To: alice@example.com"), "{data}");
    assert!(data.contains("Content-Transfer-Encoding: quoted-printable"), "{data}");
    assert!(data.contains(" GMT (UTC)"), "{data}");
    assert!(data.contains("If you did not ask for this, ignore it"), "{data}");
}

#[tokio::test]
async fn a_non_ascii_address_gets_its_code() {
    let sink = SmtpSink::start().await.expect("start the sink");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), smtp_to(&sink, false));
    let mailer = config.mailer().expect("mailer");
    let zoe = id("Zoë@bücher.example");
    assert_eq!(zoe.as_str(), "zoë@xn--bcher-kva.example");
    let codes = config.codes(REALM).expect("codes");
    let code = mail_and_read_back(&sink, &mailer, &codes, &zoe).await;
    assert!(codes.check(&code, &zoe, &UPDATE, now_ms()).is_ok());
}

#[tokio::test]
async fn credentials_are_presented_to_the_relay() {
    let sink = SmtpSink::start().await.expect("start the sink");
    let dir = tempfile::tempdir().expect("tempdir");
    let password_file = dir.path().join("smtp.password");
    std::fs::write(&password_file, "s3cret\n").expect("write");
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut smtp = smtp_to(&sink, false);
    smtp.username = Some("keyraft-relay".to_owned());
    smtp.password_file = Some(password_file.clone());
    let config = config(dir.path(), smtp);
    let mailer = config.mailer().expect("mailer");
    let alice = id("alice@example.com");
    mail_and_read_back(&sink, &mailer, &config.codes(REALM).expect("codes"), &alice).await;
    assert_eq!(sink.messages().pop().expect("one mail").auth_user.as_deref(), Some("keyraft-relay"));

    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let result = config.mailer();
    assert!(
        matches!(&result, Err(EmailConfigError::OpenPermissions { setting: "smtp.password_file", .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn starttls_required_sends_nothing_to_a_relay_without_it() {
    let sink = SmtpSink::start().await.expect("start the sink");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), smtp_to(&sink, true));
    let mailer = config.mailer().expect("mailer");
    let alice = id("alice@example.com");
    let codes = config.codes(REALM).expect("codes");
    let result = mailer.send_code(REALM, &alice, &codes.issue(&alice, &UPDATE, now_ms())).await;
    let error = result.expect_err("the sink offers no STARTTLS");
    assert!(
        matches!(&error, MailError::Relay { relay, .. } if relay == &format!("127.0.0.1:{}", sink.addr().port())),
        "{error:?}"
    );
    assert!(error.to_string().contains("mail relay"), "{error}");
    assert!(sink.messages().is_empty(), "nothing is sent in the clear");
}

#[tokio::test]
async fn a_relay_that_is_down_is_a_relay_failure() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut smtp = SmtpConfig {
        host: "127.0.0.1".to_owned(),
        port: closed_port,
        from: "noreply@example.org".to_owned(),
        starttls: false,
        username: None,
        password_file: None,
        ca_file: None,
        timeout_ms: 10_000,
    };
    smtp.port = closed_port;
    let config = config(dir.path(), smtp);
    let mailer = config.mailer().expect("mailer");
    let alice = id("alice@example.com");
    let codes = config.codes(REALM).expect("codes");
    let result = mailer.send_code(REALM, &alice, &codes.issue(&alice, &UPDATE, now_ms())).await;
    assert!(matches!(result, Err(MailError::Relay { .. })), "{result:?}");
}

#[tokio::test]
async fn an_id_that_is_not_an_address_is_refused_before_the_relay() {
    let sink = SmtpSink::start().await.expect("start the sink");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), smtp_to(&sink, false));
    let mailer = config.mailer().expect("mailer");
    let handle = id("alice");
    let codes = config.codes(REALM).expect("codes");
    let result = mailer.send_code(REALM, &handle, &codes.issue(&handle, &UPDATE, now_ms())).await;
    assert!(matches!(&result, Err(MailError::NotAnAddress { user_id, .. }) if user_id == "alice"), "{result:?}");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn the_sink_keeps_each_mail_of_a_connection() {
    let sink = SmtpSink::start().await.expect("start the sink");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), smtp_to(&sink, false));
    let mailer = config.mailer().expect("mailer");
    let codes = config.codes(REALM).expect("codes");
    for who in ["a@example.com", "b@example.com", "c@example.com"] {
        mail_and_read_back(&sink, &mailer, &codes, &id(who)).await;
    }
    let to: Vec<_> = sink.messages().into_iter().flat_map(|m| m.to).collect();
    assert_eq!(to, ["a@example.com", "b@example.com", "c@example.com"]);
    assert!(sink.wait_for_message("nobody@example.com", Duration::from_millis(100)).await.is_none());
}

/// Reads one SMTP reply (its last line has a space after the code) and returns it whole.
async fn reply(reader: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    use tokio::io::AsyncBufReadExt as _;
    let mut whole = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(MAIL_DEADLINE, reader.read_line(&mut line))
            .await
            .expect("the sink answers")
            .expect("read");
        assert!(n > 0, "the sink closed the connection after {whole:?}");
        whole.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return whole;
        }
    }
}

#[tokio::test]
async fn the_sink_speaks_plain_smtp() {
    use tokio::io::AsyncWriteExt as _;
    let sink = SmtpSink::start().await.expect("start the sink");
    let stream = tokio::net::TcpStream::connect(sink.addr()).await.expect("connect");
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    assert!(reply(&mut reader).await.starts_with("220 "));
    let exchange = [
        ("HELO test\r\n", "250 "),
        ("NOOP\r\n", "250 "),
        ("RCPT TO:<early@example.com>\r\n", "503 "),
        ("DATA\r\n", "503 "),
        ("MAIL FROM:<dropped@example.org>\r\n", "250 "),
        ("RCPT TO:<dropped@example.com>\r\n", "250 "),
        ("RSET\r\n", "250 "),
        ("MAIL FROM:<sender@example.org> BODY=8BITMIME\r\n", "250 "),
        ("RCPT TO:<one@example.com>\r\n", "250 "),
        ("RCPT TO:<two@example.com>\r\n", "250 "),
        ("RCPT TO:nobrackets\r\n", "501 "),
        ("DATA\r\n", "354 "),
        ("Subject: hi\r\n\r\n..starts with a dot\r\nplain\r\n.\r\n", "250 "),
        ("VRFY someone\r\n", "502 "),
        ("QUIT\r\n", "221 "),
    ];
    for (send, expect) in exchange {
        write.write_all(send.as_bytes()).await.expect("write");
        let got = reply(&mut reader).await;
        assert!(got.starts_with(expect), "{send:?}: expected {expect:?}, got {got:?}");
    }
    let mails = sink.messages();
    assert_eq!(mails.len(), 1, "the RSET transaction is dropped: {mails:?}");
    assert_eq!(mails[0].from, "sender@example.org");
    assert_eq!(mails[0].to, ["one@example.com", "two@example.com"]);
    assert_eq!(mails[0].data, "Subject: hi\r\n\r\n.starts with a dot\r\nplain\r\n");
    assert_eq!(mails[0].auth_user, None);
}
