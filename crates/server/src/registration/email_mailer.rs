//! Sending a code: through an SMTP relay, or to the log of a development realm.

use super::{check_owner_only, httpdate_utc, EmailCode, EmailConfig, EmailConfigError, SmtpConfig};
use keyraft_core::identity::CanonicalUserId;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use std::fmt;
use std::time::Duration;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::CertificateDer;
use zeroize::Zeroizing;

/// Where codes go.
#[derive(Clone)]
#[non_exhaustive]
pub enum Mailer {
    /// Mailed through an SMTP relay.
    Smtp {
        /// The connection settings, built once (boxed: it is most of the enum's size).
        transport: Box<AsyncSmtpTransport<Tokio1Executor>>,
        /// The sender.
        from: Mailbox,
        /// `host:port`, for messages.
        relay: String,
        /// Whether the connection is upgraded with STARTTLS.
        starttls: bool,
    },
    /// Written to the log at WARN, with the address: the development realm's explicit flag
    /// (`log_codes = true`). Anyone who reads the log can register any identity.
    Log,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Why a code could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailError {
    /// The canonical user id is not an address mail can be sent to (the requester's fault:
    /// the namespace allows `email` for ids that are not e-mail addresses, or the address is
    /// not one SMTP can carry).
    #[error("the user id {user_id} is not an e-mail address a code can be mailed to: {reason}")]
    NotAnAddress {
        /// The id.
        user_id: String,
        /// Why.
        reason: String,
    },
    /// The mail could not be put together: this replica's fault, not the requester's.
    #[error("the code's mail to {user_id} could not be composed: {reason}")]
    Compose {
        /// The id.
        user_id: String,
        /// What lettre said.
        reason: String,
    },
    /// The relay could not be reached, refused the mail, or failed midway (the lead answers
    /// UNAVAILABLE: asking again later may work).
    #[error("the mail relay {relay} failed; the code was not sent")]
    Relay {
        /// `host:port`.
        relay: String,
        /// What the relay or the connection said.
        #[source]
        source: lettre::transport::smtp::Error,
    },
}

/// A code's mail, before it is addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeMail {
    /// The subject line.
    pub subject: String,
    /// The text body (lines end in `\n`; the transport sends CRLF).
    pub body: String,
}

/// The mail for `code`: it names the realm, the identity, the code and its expiry in UTC,
/// and tells whoever did not ask for it to ignore it. The code sits alone on its line, so it
/// survives quoted-printable encoding as typed ([`super::extract_code`] finds it).
pub fn compose_code_mail(realm: &str, user_id: &CanonicalUserId, code: &EmailCode) -> CodeMail {
    CodeMail {
        subject: format!("Your code to register {user_id} in {realm}"),
        body: format!(
            "Someone asked the keyserver of the realm {realm} to register a key for the identity\n\
             {user_id}.\n\
             \n\
             To complete the registration, give this code with it:\n\
             \n\
             {code}\n\
             \n\
             The code is valid until {expiry} (UTC), and only for the key it was asked for.\n\
             \n\
             If you did not ask for this, ignore it: without the code, nobody can register a\n\
             key for you with this message.\n",
            expiry = httpdate_utc(code.expires_at_ms()),
        ),
    }
}

impl Mailer {
    /// Builds the mailer `config` names (it was validated by [`EmailConfig::mailer`]).
    pub(super) fn from_config(config: &EmailConfig) -> Result<Self, EmailConfigError> {
        match &config.smtp {
            Some(smtp) => Self::smtp(smtp),
            None => Ok(Self::Log),
        }
    }

    fn smtp(config: &SmtpConfig) -> Result<Self, EmailConfigError> {
        let from: Mailbox = config.from.parse().map_err(|e: lettre::address::AddressError| EmailConfigError::From {
            from: config.from.clone(),
            reason: e.to_string(),
        })?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.as_str())
            .port(config.port)
            .timeout(Some(Duration::from_millis(config.timeout_ms)));
        if config.starttls {
            builder = builder.tls(Tls::Required(tls_parameters(config)?));
        }
        if let (Some(username), Some(password_file)) = (&config.username, &config.password_file) {
            builder = builder.credentials(Credentials::new(username.clone(), read_password(password_file)?));
        }
        Ok(Self::Smtp {
            transport: Box::new(builder.build()),
            from,
            relay: format!("{}:{}", config.host, config.port),
            starttls: config.starttls,
        })
    }

    /// One line for the replica's start-up log: where codes go.
    pub fn describe(&self) -> String {
        match self {
            Self::Smtp { relay, starttls: true, .. } => {
                format!("e-mail codes are mailed through the relay {relay} (STARTTLS required)")
            }
            Self::Smtp { relay, starttls: false, .. } => {
                format!("e-mail codes are mailed through the loopback relay {relay} (no TLS)")
            }
            Self::Log => "e-mail codes are WRITTEN TO THIS LOG, not mailed (log_codes = true): \
                          anyone who reads the log can register any identity; for development only"
                .to_owned(),
        }
    }

    /// Sends `code` for `user_id` of `realm` to the address `user_id`.
    pub async fn send_code(&self, realm: &str, user_id: &CanonicalUserId, code: &EmailCode) -> Result<(), MailError> {
        let mail = compose_code_mail(realm, user_id, code);
        match self {
            Self::Log => {
                tracing::warn!(
                    realm,
                    to = %user_id,
                    code = %code,
                    expires = %httpdate_utc(code.expires_at_ms()),
                    "e-mail registration code, written to the log because log_codes = true"
                );
                Ok(())
            }
            Self::Smtp { transport, from, relay, .. } => {
                let not_an_address =
                    |reason: String| MailError::NotAnAddress { user_id: user_id.as_str().to_owned(), reason };
                let to: Mailbox = user_id
                    .as_str()
                    .parse()
                    .map_err(|e: lettre::address::AddressError| not_an_address(e.to_string()))?;
                // Quoted-printable keeps the code's line as typed whatever the rest holds
                // (a non-ASCII identity would otherwise make lettre pick base64).
                let compose = |reason: String| MailError::Compose { user_id: user_id.as_str().to_owned(), reason };
                let body = Body::new_with_encoding(mail.body, ContentTransferEncoding::QuotedPrintable)
                    .map_err(|_| compose("the body cannot be quoted-printable".to_owned()))?;
                let message = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject(mail.subject)
                    .header(ContentType::TEXT_PLAIN)
                    .body(body)
                    .map_err(|e| compose(e.to_string()))?;
                transport
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(|source| MailError::Relay { relay: relay.clone(), source })
            }
        }
    }
}

fn tls_parameters(config: &SmtpConfig) -> Result<TlsParameters, EmailConfigError> {
    let tls_error =
        |e: lettre::transport::smtp::Error| EmailConfigError::Tls { host: config.host.clone(), reason: e.to_string() };
    let mut builder = TlsParameters::builder(config.host.clone());
    if let Some(ca_file) = &config.ca_file {
        let shown = ca_file.display().to_string();
        let pem = std::fs::read(ca_file).map_err(|source| EmailConfigError::Io {
            action: "reading",
            setting: "smtp.ca_file",
            path: shown.clone(),
            source,
        })?;
        // lettre takes a file without a certificate in it as an empty list: count them here.
        match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
            Ok(list) if list.is_empty() => {
                let reason = "it holds no CERTIFICATE block".to_owned();
                return Err(EmailConfigError::CaFile { path: shown, reason });
            }
            Ok(_) => {}
            Err(e) => return Err(EmailConfigError::CaFile { path: shown, reason: e.to_string() }),
        }
        let certificate =
            Certificate::from_pem(&pem).map_err(|e| EmailConfigError::CaFile { path: shown, reason: e.to_string() })?;
        builder = builder.add_root_certificate(certificate);
    }
    builder.build().map_err(tls_error)
}

/// Reads the relay password: the file's first line, from a file only its owner can read.
fn read_password(path: &std::path::Path) -> Result<String, EmailConfigError> {
    check_owner_only(path, "smtp.password_file")?;
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| EmailConfigError::Io {
        action: "reading",
        setting: "smtp.password_file",
        path: path.display().to_string(),
        source,
    })?);
    let password = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if password.is_empty() {
        return Err(EmailConfigError::EmptyPassword { path: path.display().to_string() });
    }
    // lettre keeps its own copy for the transport's lifetime, unwiped.
    Ok(password.to_owned())
}
