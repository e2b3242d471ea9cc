//! The `email` registration method: a code mailed to the address, presented with the
//! registration.
//!
//! A replica mails a code to the canonical e-mail-form user id; the user presents it with the
//! update that registers the identity. Any replica of the realm can check a code another one
//! mailed, and no replica keeps state: the code carries its own expiry and a MAC over what it
//! is for, under a key the realm's replicas share (`mac_key_file`).
//!
//! # The MAC
//!
//! HMAC-SHA256 under the 32-byte MAC key, over this message (all lengths in bytes, integers
//! big-endian):
//!
//! ```text
//! u8(21) || "keyraft/v1/email-code"      domain separation: 0x15 then the 21 ASCII bytes
//! u16be(len realm) || realm              the realm name, UTF-8
//! u16be(len id)    || id                 the canonical user id, UTF-8
//! update_id                              32 bytes: the id of the exact update being registered
//! u64be(expiry_ms)                       the code's expiry, Unix milliseconds (a whole second)
//! ```
//!
//! Binding the update id means a code mailed for one key cannot register another: whoever
//! reads the mail can only complete the registration that asked for it.
//!
//! # The code
//!
//! Ten bytes, written as 16 Crockford base32 symbols in groups of four
//! (`XXXX-XXXX-XXXX-XXXX`):
//!
//! ```text
//! expiry_s[5]     the expiry in Unix seconds, 40 bits big-endian (expiry_ms = expiry_s * 1000)
//! tag[5]          the first 5 bytes of the MAC above
//! ```
//!
//! A code is read case-insensitively; `-` and whitespace are ignored, `O` is read as `0`, and
//! `I` and `L` as `1` (Crockford's rules; `U` is refused). A code is valid while
//! `now_ms < expiry_ms`: at its expiry it is expired. The tag is checked (in constant time)
//! before the expiry, so "expired" is only ever said of a code this realm issued.
//!
//! The tag is 40 bits: a guess succeeds with probability 2^-40. The Update rate limits (per
//! client address and per identity) bound the guesses within a code's lifetime to a few
//! thousand, so guessing succeeds with a probability under 10^-8; a longer tag would only make
//! the code longer to type.
//!
//! # Single use
//!
//! A code is single-use per update id without any state: it can only register the update it
//! names, and once that update is applied the identity exists, and an existing identity takes
//! no registrations (changes need its own update policy). Presenting the code again registers
//! nothing. Replicas keep no record of codes issued or used.
//!
//! # Configuration
//!
//! ```toml
//! mac_key_file = "keys/email-mac.key"  # 0600; `generate_mac_key_file` writes one
//! code_ttl_ms = 900000                  # 15 minutes, the default
//! [smtp]                                # or `log_codes = true` (development only), not both
//! host = "smtp.example.com"
//! port = 587                            # the default
//! from = "keyraft <noreply@example.com>"
//! starttls = true                       # the default; `false` is accepted for a loopback relay only
//! username = "keyraft"                  # optional, with password_file
//! password_file = "keys/smtp.password"  # 0600
//! ca_file = "keys/relay-ca.pem"         # optional: a private CA for the relay's certificate
//! timeout_ms = 10000                    # the default
//! ```
//!
//! Errors of the configuration name the setting at fault by its name in this section.
//! Relays are reached on their submission port with STARTTLS (rustls, the Mozilla roots
//! built in plus `ca_file`); implicit TLS (port 465) is not offered.

#[doc(hidden)]
#[path = "email_sink.rs"]
pub mod testing;

#[path = "email_mailer.rs"]
mod mailer;

pub use mailer::{compose_code_mail, CodeMail, MailError, Mailer};

use hmac::{Hmac, Mac};
use keyraft_core::identity::CanonicalUserId;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The domain separation string at the start of every MAC message.
pub const CODE_DOMAIN: &str = "keyraft/v1/email-code";
/// Lifetime of a code when `code_ttl_ms` is not set: 15 minutes.
pub const CODE_TTL_MS_DEFAULT: u64 = 15 * 60 * 1000;
/// Shortest `code_ttl_ms` accepted: a minute, time to read a mail.
pub const CODE_TTL_MS_MIN: u64 = 60 * 1000;
/// Longest `code_ttl_ms` accepted: a day. Longer-lived codes give guessing more time.
pub const CODE_TTL_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Symbols in a code, separators not counted.
pub const CODE_SYMBOLS: usize = 16;
/// Longest code input read, in bytes; longer input is refused before it is parsed.
pub const CODE_INPUT_BYTES_MAX: usize = 64;
/// The first line of a MAC key file.
pub const MAC_KEY_HEADER: &str = "keyraft-email-mac-v1";

const EXPIRY_BYTES: usize = 5;
const TAG_BYTES: usize = 5;
const CODE_BYTES: usize = EXPIRY_BYTES + TAG_BYTES;
/// Seconds that fit in the code's 40-bit expiry field.
const EXPIRY_S_MAX: u64 = (1 << (8 * EXPIRY_BYTES)) - 1;
/// Crockford's base32 alphabet: no I, L, O or U.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

type HmacSha256 = Hmac<Sha256>;

/// Issues and checks the e-mail codes of one realm.
pub struct EmailCodes {
    /// Wiped when dropped. The HMAC state made from it for each code is not (the `hmac`
    /// crate does not wipe), and lives only for the call.
    mac_key: Zeroizing<[u8; 32]>,
    realm: String,
    code_ttl_ms: u64,
}

impl fmt::Debug for EmailCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailCodes")
            .field("realm", &self.realm)
            .field("code_ttl_ms", &self.code_ttl_ms)
            .finish_non_exhaustive()
    }
}

/// A code just issued, to be mailed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailCode {
    code: String,
    expires_at_ms: u64,
}

impl EmailCode {
    /// The code as the user types it, `XXXX-XXXX-XXXX-XXXX`.
    pub fn as_str(&self) -> &str {
        &self.code
    }

    /// When it expires, Unix milliseconds (a whole second).
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }
}

impl fmt::Display for EmailCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code)
    }
}

/// A code that passed [`EmailCodes::check`]: only `check` makes one, so holding one is the
/// proof that the mailbox of `user_id` asked to register `update_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEmailCode {
    user_id: CanonicalUserId,
    update_id: [u8; 32],
    expires_at_ms: u64,
}

impl VerifiedEmailCode {
    /// The identity whose mailbox received the code.
    pub fn user_id(&self) -> &CanonicalUserId {
        &self.user_id
    }

    /// The update the code registers.
    pub fn update_id(&self) -> &[u8; 32] {
        &self.update_id
    }

    /// When the code expires, Unix milliseconds.
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }
}

/// Why a presented code was refused. Every variant is the presenter's fault (the lead maps
/// them to INVALID_ARGUMENT or PERMISSION_DENIED); retrying the same code gives the same
/// answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmailCodeError {
    /// The text is not a code at all.
    #[error("the e-mail code is malformed: {0}")]
    Malformed(#[from] MalformedCode),
    /// A code this realm issued for this identity and update, past its expiry.
    #[error("the e-mail code expired at {} UTC; ask for a new one", httpdate_utc(*expired_at_ms))]
    Expired {
        /// When it expired, Unix milliseconds.
        expired_at_ms: u64,
    },
    /// The code is well formed but not one this realm issued for this identity and update:
    /// mistyped, or mailed for another identity, update or realm. Which of these is not said,
    /// so that the answer tells a guesser nothing.
    #[error("the e-mail code is not valid for this identity and update (mistyped, or mailed for another one)")]
    Mismatch,
}

/// What is wrong with the text of a code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedCode {
    /// No symbols at all.
    #[error("it is empty (expected {CODE_SYMBOLS} symbols such as ABCD-EFGH-JKMN-PQRS)")]
    Empty,
    /// Longer than any code could be, even with separators.
    #[error("it is {input_bytes} bytes long, more than {max_bytes}")]
    TooLong {
        /// Its length.
        input_bytes: usize,
        /// [`CODE_INPUT_BYTES_MAX`].
        max_bytes: usize,
    },
    /// A character that is neither a Crockford base32 symbol nor a separator.
    #[error("character {position} ({character:?}) is not a code symbol (digits and letters but U; `-` and spaces are ignored)")]
    BadCharacter {
        /// The character.
        character: char,
        /// Its position, in characters from 1.
        position: usize,
    },
    /// The wrong number of symbols.
    #[error("it has {symbols} symbols, expected {expected}")]
    WrongLength {
        /// Symbols found, separators not counted.
        symbols: usize,
        /// [`CODE_SYMBOLS`].
        expected: usize,
    },
}

/// Why the `email` method's configuration or its key files were refused: the operator's to
/// fix. Settings are named as in the `email` section.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmailConfigError {
    /// Neither `smtp` nor `log_codes`: codes would go nowhere.
    #[error("email: set either [smtp] (a mail relay) or log_codes = true (development only); neither is set")]
    NoMailer,
    /// Both `smtp` and `log_codes`.
    #[error("email: set either [smtp] or log_codes = true, not both")]
    TwoMailers,
    /// `code_ttl_ms` out of range.
    #[error("email: code_ttl_ms = {code_ttl_ms} is out of range ({min_ms} to {max_ms})")]
    CodeTtl {
        /// The setting.
        code_ttl_ms: u64,
        /// [`CODE_TTL_MS_MIN`].
        min_ms: u64,
        /// [`CODE_TTL_MS_MAX`].
        max_ms: u64,
    },
    /// The realm name cannot be framed in the MAC message.
    #[error("email: the realm name is {realm_bytes} bytes; it must be 1 to 65535")]
    Realm {
        /// Its length.
        realm_bytes: usize,
    },
    /// A secret file that others than its owner may read or write.
    #[error("email: {setting} {path} may be read or written by others (mode {mode:o}); run `chmod 600 {path}`")]
    OpenPermissions {
        /// `mac_key_file` or `smtp.password_file`.
        setting: &'static str,
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A MAC key file that is not one.
    #[error("email: mac_key_file {path} is not an e-mail MAC key file: {why}")]
    MalformedMacKey {
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// A file could not be read or written.
    #[error("email: {action} {setting} {path}: {source}")]
    Io {
        /// "reading" or "writing".
        action: &'static str,
        /// The setting that names the file.
        setting: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Plain text to a relay that is not on this host: mail and credentials would cross the
    /// network unencrypted.
    #[error("email: smtp.starttls = false is accepted for a loopback relay only (localhost, 127.0.0.0/8, ::1); {host} is not one: set starttls = true")]
    PlaintextRemoteRelay {
        /// `smtp.host`.
        host: String,
    },
    /// `smtp.username` without `smtp.password_file`, or the other way round.
    #[error("email: smtp.username and smtp.password_file go together; only {set} is set")]
    HalfCredentials {
        /// The one that is set.
        set: &'static str,
    },
    /// A password file with no password in it.
    #[error("email: smtp.password_file {path} is empty")]
    EmptyPassword {
        /// The file.
        path: String,
    },
    /// `smtp.host` is empty.
    #[error("email: smtp.host is empty")]
    EmptyHost,
    /// `smtp.from` is not a mailbox.
    #[error("email: smtp.from = {from:?} is not a mailbox such as \"keyraft <noreply@example.com>\": {reason}")]
    From {
        /// The setting.
        from: String,
        /// Why it was refused.
        reason: String,
    },
    /// `smtp.ca_file` holds no usable certificate.
    #[error("email: smtp.ca_file {path} is not a PEM certificate: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// The TLS settings for the relay could not be built.
    #[error("email: TLS for smtp.host {host}: {reason}")]
    Tls {
        /// `smtp.host`.
        host: String,
        /// Why.
        reason: String,
    },
}

/// The `email` method's settings (see the module docs for an example).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The MAC key shared by the realm's replicas: [`MAC_KEY_HEADER`] then 64 hex digits,
    /// readable by its owner only.
    pub mac_key_file: PathBuf,
    /// How long a code is valid, in milliseconds ([`CODE_TTL_MS_MIN`] to
    /// [`CODE_TTL_MS_MAX`]; default [`CODE_TTL_MS_DEFAULT`], 15 minutes).
    #[serde(default = "default_code_ttl_ms")]
    pub code_ttl_ms: u64,
    /// The mail relay codes are sent through.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    /// Write codes to the log (WARN) instead of mailing them: for `keyraft dev` only, where
    /// the log is the developer's. Exactly one of `smtp` and `log_codes` must be set.
    #[serde(default)]
    pub log_codes: bool,
}

/// A mail relay (SMTP submission).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// The relay's host name (also the name its TLS certificate must carry).
    pub host: String,
    /// The relay's port (default 587, submission).
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// The sender, a mailbox such as `keyraft <noreply@example.com>`.
    pub from: String,
    /// Upgrade the connection with STARTTLS before anything else is sent, and fail if the
    /// relay does not offer it (default true). `false` is accepted only for a relay on
    /// loopback.
    #[serde(default = "default_true")]
    pub starttls: bool,
    /// The user name to authenticate with, if the relay wants one (with `password_file`).
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password (one line), readable by its owner only.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for the relay, in addition to the Mozilla
    /// roots built in (for a relay with a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long one SMTP command may take, in milliseconds (default 10000).
    #[serde(default = "default_smtp_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_code_ttl_ms() -> u64 {
    CODE_TTL_MS_DEFAULT
}

fn default_smtp_port() -> u16 {
    587
}

fn default_true() -> bool {
    true
}

fn default_smtp_timeout_ms() -> u64 {
    10_000
}

fn resolve(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

impl EmailConfig {
    /// Makes the relative paths relative to `base` (the configuration file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.mac_key_file);
        if let Some(smtp) = &mut self.smtp {
            if let Some(p) = &mut smtp.password_file {
                resolve(base, p);
            }
            if let Some(p) = &mut smtp.ca_file {
                resolve(base, p);
            }
        }
    }

    /// Checks the settings that need no file: one mailer, the code lifetime, and the relay's
    /// settings.
    pub fn validate(&self) -> Result<(), EmailConfigError> {
        if !(CODE_TTL_MS_MIN..=CODE_TTL_MS_MAX).contains(&self.code_ttl_ms) {
            return Err(EmailConfigError::CodeTtl {
                code_ttl_ms: self.code_ttl_ms,
                min_ms: CODE_TTL_MS_MIN,
                max_ms: CODE_TTL_MS_MAX,
            });
        }
        match (&self.smtp, self.log_codes) {
            (None, false) => Err(EmailConfigError::NoMailer),
            (Some(_), true) => Err(EmailConfigError::TwoMailers),
            (Some(smtp), false) => smtp.validate(),
            (None, true) => Ok(()),
        }
    }

    /// Loads the MAC key and makes the realm's [`EmailCodes`].
    pub fn codes(&self, realm: &str) -> Result<EmailCodes, EmailConfigError> {
        self.validate()?;
        EmailCodes::new(load_mac_key(&self.mac_key_file)?, realm, self.code_ttl_ms)
    }

    /// Makes the mailer: the SMTP relay's transport (reading its password and CA files), or
    /// the log.
    pub fn mailer(&self) -> Result<Mailer, EmailConfigError> {
        self.validate()?;
        Mailer::from_config(self)
    }
}

impl SmtpConfig {
    fn validate(&self) -> Result<(), EmailConfigError> {
        if self.host.is_empty() {
            return Err(EmailConfigError::EmptyHost);
        }
        if !self.starttls && !is_loopback_host(&self.host) {
            return Err(EmailConfigError::PlaintextRemoteRelay { host: self.host.clone() });
        }
        match (&self.username, &self.password_file) {
            (Some(_), None) => return Err(EmailConfigError::HalfCredentials { set: "smtp.username" }),
            (None, Some(_)) => return Err(EmailConfigError::HalfCredentials { set: "smtp.password_file" }),
            _ => {}
        }
        self.from
            .parse::<lettre::message::Mailbox>()
            .map_err(|e| EmailConfigError::From { from: self.from.clone(), reason: e.to_string() })?;
        Ok(())
    }
}

/// `localhost`, or an address in 127.0.0.0/8 or `::1` (brackets allowed).
fn is_loopback_host(host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl EmailCodes {
    /// The codes of `realm` under `mac_key`, valid for `code_ttl_ms` once issued.
    pub fn new(mac_key: Zeroizing<[u8; 32]>, realm: &str, code_ttl_ms: u64) -> Result<Self, EmailConfigError> {
        if realm.is_empty() || realm.len() > usize::from(u16::MAX) {
            return Err(EmailConfigError::Realm { realm_bytes: realm.len() });
        }
        if !(CODE_TTL_MS_MIN..=CODE_TTL_MS_MAX).contains(&code_ttl_ms) {
            return Err(EmailConfigError::CodeTtl { code_ttl_ms, min_ms: CODE_TTL_MS_MIN, max_ms: CODE_TTL_MS_MAX });
        }
        Ok(Self { mac_key, realm: realm.to_owned(), code_ttl_ms })
    }

    /// The realm the codes are for.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// How long a code is valid, in milliseconds.
    pub fn code_ttl_ms(&self) -> u64 {
        self.code_ttl_ms
    }

    /// A code for `user_id` to register `update_id`, valid from `now_ms` for `code_ttl_ms`
    /// rounded up to a whole second (the code carries its expiry in seconds). A clock past
    /// the year 36000 gets codes expiring at the last second the code can carry.
    pub fn issue(&self, user_id: &CanonicalUserId, update_id: &[u8; 32], now_ms: u64) -> EmailCode {
        let expiry_s = now_ms.saturating_add(self.code_ttl_ms).div_ceil(1000).min(EXPIRY_S_MAX);
        let tag = self.tag(user_id, update_id, expiry_s);
        let mut bytes = [0u8; CODE_BYTES];
        bytes[..EXPIRY_BYTES].copy_from_slice(&expiry_s.to_be_bytes()[8 - EXPIRY_BYTES..]);
        bytes[EXPIRY_BYTES..].copy_from_slice(&tag);
        EmailCode { code: encode(&bytes), expires_at_ms: expiry_s * 1000 }
    }

    /// Checks a code presented for `user_id` and `update_id` at `now_ms`: its form, then its
    /// tag (in constant time), then its expiry.
    pub fn check(
        &self,
        code: &str,
        user_id: &CanonicalUserId,
        update_id: &[u8; 32],
        now_ms: u64,
    ) -> Result<VerifiedEmailCode, EmailCodeError> {
        let bytes = decode(code)?;
        let mut expiry = [0u8; 8];
        expiry[8 - EXPIRY_BYTES..].copy_from_slice(&bytes[..EXPIRY_BYTES]);
        let expiry_s = u64::from_be_bytes(expiry);
        let tag = self.tag(user_id, update_id, expiry_s);
        if !bool::from(tag.ct_eq(&bytes[EXPIRY_BYTES..])) {
            return Err(EmailCodeError::Mismatch);
        }
        let expires_at_ms = expiry_s * 1000;
        if now_ms >= expires_at_ms {
            return Err(EmailCodeError::Expired { expired_at_ms: expires_at_ms });
        }
        Ok(VerifiedEmailCode { user_id: user_id.clone(), update_id: *update_id, expires_at_ms })
    }

    /// The first [`TAG_BYTES`] of the MAC (module docs, "The MAC").
    fn tag(&self, user_id: &CanonicalUserId, update_id: &[u8; 32], expiry_s: u64) -> [u8; TAG_BYTES] {
        let mac = mac_message(&self.mac_key, &self.realm, user_id.as_str(), update_id, expiry_s * 1000);
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&mac[..TAG_BYTES]);
        tag
    }
}

/// HMAC-SHA256 over the framed message of the module docs. `realm` was checked to fit a
/// u16 length by [`EmailCodes::new`]; canonical user ids are at most 256 bytes.
fn mac_message(key: &[u8; 32], realm: &str, user_id: &str, update_id: &[u8; 32], expiry_ms: u64) -> [u8; 32] {
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(&[CODE_DOMAIN.len() as u8]);
    mac.update(CODE_DOMAIN.as_bytes());
    for field in [realm.as_bytes(), user_id.as_bytes()] {
        let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
        mac.update(&len.to_be_bytes());
        mac.update(field);
    }
    mac.update(update_id);
    mac.update(&expiry_ms.to_be_bytes());
    mac.finalize().into_bytes().into()
}

/// Ten bytes as 16 Crockford symbols in groups of four.
fn encode(bytes: &[u8; CODE_BYTES]) -> String {
    let mut value = 0u128;
    for b in bytes {
        value = (value << 8) | u128::from(*b);
    }
    let mut out = String::with_capacity(CODE_SYMBOLS + 3);
    for i in 0..CODE_SYMBOLS {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        let symbol = (value >> (5 * (CODE_SYMBOLS - 1 - i))) & 31;
        out.push(char::from(CROCKFORD[symbol as usize]));
    }
    out
}

/// The value of one Crockford symbol, read case-insensitively with O as 0 and I, L as 1.
fn symbol_value(c: char) -> Option<u8> {
    let c = match c.to_ascii_uppercase() {
        'O' => '0',
        'I' | 'L' => '1',
        other => other,
    };
    CROCKFORD.iter().position(|&s| char::from(s) == c).map(|v| v as u8)
}

/// Parses a code as typed (module docs, "The code").
fn decode(code: &str) -> Result<[u8; CODE_BYTES], MalformedCode> {
    if code.len() > CODE_INPUT_BYTES_MAX {
        return Err(MalformedCode::TooLong { input_bytes: code.len(), max_bytes: CODE_INPUT_BYTES_MAX });
    }
    let mut value = 0u128;
    let mut symbols = 0usize;
    for (i, c) in code.chars().enumerate() {
        if c == '-' || c.is_whitespace() {
            continue;
        }
        let v = symbol_value(c).ok_or(MalformedCode::BadCharacter { character: c, position: i + 1 })?;
        symbols += 1;
        // Past 16 symbols the value is only shifted, never read: the length check refuses it.
        value = (value << 5) | u128::from(v);
    }
    if symbols == 0 {
        return Err(MalformedCode::Empty);
    }
    if symbols != CODE_SYMBOLS {
        return Err(MalformedCode::WrongLength { symbols, expected: CODE_SYMBOLS });
    }
    let mut bytes = [0u8; CODE_BYTES];
    bytes.copy_from_slice(&value.to_be_bytes()[16 - CODE_BYTES..]);
    Ok(bytes)
}

/// The first code in a mail's text (its raw SMTP data is fine: the body is sent
/// quoted-printable and the code sits on a short line of its own, so it is never encoded or
/// wrapped). For tests and tools that read the mail.
pub fn extract_code(mail_data: &str) -> Option<String> {
    let bytes = mail_data.as_bytes();
    let len = CODE_SYMBOLS + 3;
    let is_symbol = |b: u8| CROCKFORD.contains(&b);
    (0..bytes.len().saturating_sub(len - 1)).find_map(|start| {
        let window = &bytes[start..start + len];
        let shaped = window.iter().enumerate().all(|(i, &b)| if i % 5 == 4 { b == b'-' } else { is_symbol(b) });
        let before_ok = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let after_ok = bytes.get(start + len).is_none_or(|b| !b.is_ascii_alphanumeric());
        (shaped && before_ok && after_ok).then(|| String::from_utf8_lossy(window).into_owned())
    })
}

/// Unix milliseconds as an RFC 7231 date in UTC (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(crate) fn httpdate_utc(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(unix_ms));
    t.map_or_else(|| format!("{unix_ms} ms after 1970"), httpdate::fmt_http_date)
}

/// Reads a MAC key file: [`MAC_KEY_HEADER`], then 64 hex digits, readable by its owner only.
pub fn load_mac_key(path: &Path) -> Result<Zeroizing<[u8; 32]>, EmailConfigError> {
    let shown = path.display().to_string();
    check_owner_only(path, "mac_key_file")?;
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| EmailConfigError::Io {
        action: "reading",
        setting: "mac_key_file",
        path: shown.clone(),
        source,
    })?);
    let malformed = |why: &str| EmailConfigError::MalformedMacKey { path: shown.clone(), why: why.to_owned() };
    let mut lines = text.trim_end().lines().map(str::trim_end);
    if lines.next() != Some(MAC_KEY_HEADER) {
        return Err(malformed(&format!("the first line is not {MAC_KEY_HEADER:?}")));
    }
    let hex_line = lines.next().ok_or_else(|| malformed("the header is not followed by the key"))?;
    if lines.next().is_some() {
        return Err(malformed("unexpected text after the key"));
    }
    if hex_line.len() != 64 {
        return Err(malformed(&format!("expected 64 hex digits (32 bytes), found {} characters", hex_line.len())));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_line, &mut key[..]).map_err(|e| malformed(&format!("the key is not hex: {e}")))?;
    Ok(key)
}

/// Refuses a secret file whose mode lets anyone but its owner read or write it (the rule of
/// every secret file, [`keyraft_core::key_file::check_owner_only`]).
pub(crate) fn check_owner_only(path: &Path, setting: &'static str) -> Result<(), EmailConfigError> {
    use keyraft_core::key_file::KeyFileError;
    keyraft_core::key_file::check_owner_only(path, setting).map_err(|e| match e {
        KeyFileError::Exposed { path, mode, .. } => EmailConfigError::OpenPermissions { setting, path, mode },
        KeyFileError::Io { source, .. } => {
            EmailConfigError::Io { action: "reading", setting, path: path.display().to_string(), source }
        }
        other => EmailConfigError::MalformedMacKey { path: path.display().to_string(), why: other.to_string() },
    })
}

/// Writes a new MAC key file with a random key, readable by its owner only (0600). An
/// existing file is never overwritten: it may hold the key every replica of the realm uses.
pub fn generate_mac_key_file(path: &Path) -> Result<(), EmailConfigError> {
    use rand::RngCore as _;
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut key[..]);
    let text = Zeroizing::new(format!("{MAC_KEY_HEADER}\n{}\n", hex::encode(&key[..])));
    let io = |source| EmailConfigError::Io {
        action: "writing",
        setting: "mac_key_file",
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).map_err(io)?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(io)
}

#[cfg(test)]
#[path = "email_tests.rs"]
mod tests;
