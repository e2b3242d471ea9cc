//! STARTTLS to a relay, against the loopback sink offering it with certificates made for
//! these tests: mail goes only to a relay whose certificate is trusted and names the host.

use keyraft_core::identity::{canonical_user_id, CanonicalUserId, LocalPartRule};
use keyraft_server::registration::email::testing::{extract_code, SmtpSink};
use keyraft_server::registration::email::{
    generate_mac_key_file, EmailConfig, EmailConfigError, MailError, SmtpConfig,
};
use std::path::Path;
use std::time::Duration;

const REALM: &str = "example.org";
const UPDATE: [u8; 32] = [0x42; 32];
/// Generous: the sink answers at once, but the machine may be busy.
const MAIL_DEADLINE: Duration = Duration::from_secs(30);

fn alice() -> CanonicalUserId {
    canonical_user_id("alice@example.com", LocalPartRule::CaseInsensitive).expect("canonical")
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970");
    u64::try_from(since.as_millis()).expect("fits")
}

/// A STARTTLS config for `host` at the sink's port, trusting `ca_pem` if given.
fn config(dir: &Path, sink: &SmtpSink, host: &str, ca_pem: Option<&str>) -> EmailConfig {
    let mac_key_file = dir.join("email-mac.key");
    generate_mac_key_file(&mac_key_file).expect("generate the MAC key");
    let ca_file = ca_pem.map(|pem| {
        let path = dir.join("relay-ca.pem");
        std::fs::write(&path, pem).expect("write the CA file");
        path
    });
    let smtp = SmtpConfig {
        host: host.to_owned(),
        port: sink.addr().port(),
        from: "keyraft <noreply@example.org>".to_owned(),
        starttls: true,
        username: None,
        password_file: None,
        ca_file,
        timeout_ms: 10_000,
    };
    EmailConfig { mac_key_file, code_ttl_ms: 15 * 60 * 1000, smtp: Some(smtp), log_codes: false }
}

async fn send(config: &EmailConfig) -> Result<String, MailError> {
    let codes = config.codes(REALM).expect("codes");
    let mailer = config.mailer().expect("mailer");
    let issued = codes.issue(&alice(), &UPDATE, now_ms());
    mailer.send_code(REALM, &alice(), &issued).await?;
    Ok(issued.as_str().to_owned())
}

/// The error and its sources, for matching what TLS said.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text
}

#[tokio::test]
async fn a_trusted_relay_gets_the_mail_over_tls() {
    let sink = SmtpSink::start_with_starttls(RELAY_CERT.as_bytes(), RELAY_KEY.as_bytes()).await.expect("sink");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &sink, "127.0.0.1", Some(CA_CERT));
    let issued = send(&config).await.expect("mailed over STARTTLS");
    let mail = sink.wait_for_message("alice@example.com", MAIL_DEADLINE).await.expect("the mail arrives");
    assert!(mail.tls, "the mail came after STARTTLS");
    let code = extract_code(&mail.data).expect("a code in the mail");
    assert_eq!(code, issued);
    assert!(config.codes(REALM).expect("codes").check(&code, &alice(), &UPDATE, now_ms()).is_ok());
}

#[tokio::test]
async fn an_untrusted_certificate_gets_nothing() {
    let sink = SmtpSink::start_with_starttls(RELAY_CERT.as_bytes(), RELAY_KEY.as_bytes()).await.expect("sink");
    let dir = tempfile::tempdir().expect("tempdir");
    // No ca_file: only the built-in Mozilla roots, which never signed the test CA.
    let config = config(dir.path(), &sink, "127.0.0.1", None);
    let error = send(&config).await.expect_err("an untrusted relay");
    assert!(matches!(&error, MailError::Relay { .. }), "{error:?}");
    assert!(chain(&error).contains("UnknownIssuer"), "{}", chain(&error));
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn a_certificate_for_another_host_gets_nothing() {
    let sink = SmtpSink::start_with_starttls(OTHER_CERT.as_bytes(), OTHER_KEY.as_bytes()).await.expect("sink");
    let dir = tempfile::tempdir().expect("tempdir");
    // Trusted CA, but the certificate names relay.example, not 127.0.0.1.
    let config = config(dir.path(), &sink, "127.0.0.1", Some(CA_CERT));
    let error = send(&config).await.expect_err("a relay named otherwise");
    assert!(matches!(&error, MailError::Relay { .. }), "{error:?}");
    assert!(chain(&error).contains("certificate not valid for name"), "{}", chain(&error));
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn a_ca_file_that_is_not_pem_is_refused_at_load() {
    let sink = SmtpSink::start().await.expect("sink");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &sink, "127.0.0.1", Some("not a certificate"));
    let result = config.mailer();
    assert!(matches!(&result, Err(EmailConfigError::CaFile { .. })), "{result:?}");
}

// Made for these tests with openssl (P-256, valid until 2126); the private keys are public
// and trusted nowhere but here.

/// The test CA.
const CA_CERT: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBqDCCAU2gAwIBAgIUXvrIqxUoLRVCUq6l6dn43y6bCyswCgYIKoZIzj0EAwIw\n\
IDEeMBwGA1UEAwwVa2V5cmFmdCB0ZXN0IHJlbGF5IENBMCAXDTI2MTEzMDA5Mzcw\n\
MFoYDzIxMjYxMTA2MDkzNzAwWjAgMR4wHAYDVQQDDBVrZXlyYWZ0IHRlc3QgcmVs\n\
YXkgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATbqcuc1FppHnEIUCtNlPW8\n\
gTFeZXdA2txlm3V4hait57xoKa9BrSCM0oRWrpv2oiFACoCfpI3+TG75TSKXPjZ1\n\
o2MwYTAdBgNVHQ4EFgQU6SllYYSKXBZ6ixUBzS0RMF3NJWgwHwYDVR0jBBgwFoAU\n\
6SllYYSKXBZ6ixUBzS0RMF3NJWgwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8E\n\
BAMCAQYwCgYIKoZIzj0EAwIDSQAwRgIhALmd8YZC9QR4x08ZX87eCY8GsQNWWODD\n\
xn2N1rGE9AmwAiEAmIUavKBCWYpJcIw18z9RN+kXSjYaWWCoVugCBiS2QiM=\n\
-----END CERTIFICATE-----\n\
";

/// A relay certificate for localhost and 127.0.0.1, signed by the test CA.
const RELAY_CERT: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIB1DCCAXqgAwIBAgIUXCu1WX30YEbJ17UZRDp1Lb+kemMwCgYIKoZIzj0EAwIw\n\
IDEeMBwGA1UEAwwVa2V5cmFmdCB0ZXN0IHJlbGF5IENBMCAXDTI2MTEzMDA5Mzcw\n\
MFoYDzIxMjYxMTA2MDkzNzAwWjAdMRswGQYDVQQDDBJrZXlyYWZ0IHRlc3QgcmVs\n\
YXkwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQouuOfx5IGQzOXv3qHOX8TpqnA\n\
X0Rm4o8mNnyykhPOpTLSBLA978od5phBdWcVqs4S8Gap9/vyWiAc2pJ5AVXmo4GS\n\
MIGPMBoGA1UdEQQTMBGCCWxvY2FsaG9zdIcEfwAAATAMBgNVHRMBAf8EAjAAMA4G\n\
A1UdDwEB/wQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcDATAdBgNVHQ4EFgQU4mEx\n\
lPfoRT+8jHEuZ898l3xokKwwHwYDVR0jBBgwFoAU6SllYYSKXBZ6ixUBzS0RMF3N\n\
JWgwCgYIKoZIzj0EAwIDSAAwRQIgF352W7jCdkfu2M4jmKtpcAfSkqRIMmSFaFEd\n\
/cEgKoQCIQCv3qAyTdzP76ayZVXm3KMmRm6j7BAdRS9g4s4wduvEKg==\n\
-----END CERTIFICATE-----\n\
";

/// Its private key (PKCS#8).
const RELAY_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgiDfsJdceQJtt1/Sc\n\
3Iw8ofr3SK3E0Fz0yRPs+uYqRWChRANCAAQouuOfx5IGQzOXv3qHOX8TpqnAX0Rm\n\
4o8mNnyykhPOpTLSBLA978od5phBdWcVqs4S8Gap9/vyWiAc2pJ5AVXm\n\
-----END PRIVATE KEY-----\n\
";

/// A relay certificate for relay.example only, signed by the test CA.
const OTHER_CERT: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIB0TCCAXigAwIBAgIUXCu1WX30YEbJ17UZRDp1Lb+kemQwCgYIKoZIzj0EAwIw\n\
IDEeMBwGA1UEAwwVa2V5cmFmdCB0ZXN0IHJlbGF5IENBMCAXDTI2MTEzMDA5Mzcw\n\
MFoYDzIxMjYxMTA2MDkzNzAwWjAdMRswGQYDVQQDDBJrZXlyYWZ0IHRlc3QgcmVs\n\
YXkwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAReqyXPNwX/TiOhTAxBmKuUsuAP\n\
jriwDJEi4sgHTzZQU2uUqJ6Gn7neVsxI54onZGsmTyDcA1pSBVKuLs7fhwLko4GQ\n\
MIGNMBgGA1UdEQQRMA+CDXJlbGF5LmV4YW1wbGUwDAYDVR0TAQH/BAIwADAOBgNV\n\
HQ8BAf8EBAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUHAwEwHQYDVR0OBBYEFIJJL3Z9\n\
4boHckJj9xXqEJM3ptOfMB8GA1UdIwQYMBaAFOkpZWGEilwWeosVAc0tETBdzSVo\n\
MAoGCCqGSM49BAMCA0cAMEQCIGPa7oOOq24AbRRCXBR44dIRP4Qc1mAOssQmt5es\n\
96fjAiBlg8eDxhPUWYFswpK0Lv0KTA4T0lLBb1vp5sGFgUVUTw==\n\
-----END CERTIFICATE-----\n\
";

/// Its private key (PKCS#8).
const OTHER_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQghBX/4bF1JMxSqDcy\n\
POFswhlYy3iRqJNslPeNfYMx32OhRANCAAReqyXPNwX/TiOhTAxBmKuUsuAPjriw\n\
DJEi4sgHTzZQU2uUqJ6Gn7neVsxI54onZGsmTyDcA1pSBVKuLs7fhwLk\n\
-----END PRIVATE KEY-----\n\
";
