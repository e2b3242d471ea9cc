//! Key files: the one place their formats are read and written (CLI, replicas, verifiers and
//! `keyraft dev` all come here).
//!
//! A secret key file and a public key file say what they are on their first line, so neither
//! can be taken for the other: a public key accepted as a secret would make an identity anyone
//! can control, and a secret accepted as a public key would be published in the directory.
//!
//! ```text
//! keyraft-ed25519-secret-v1        keyraft-ed25519-public-v1
//! <64 hex digits: the seed>        <64 hex digits: the public key>
//! ```
//!
//! Files written before these formats hold the 64 hex digits alone (both kinds). Such a
//! legacy file is ambiguous, so the file name decides: one whose name ends in `.pub` (what
//! `keyraft keygen` wrote) is only ever a public key, any other only ever a secret key.

use crate::keys::PublicKey;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// A secret key file's 32 bytes: wiped from memory when dropped, never shown by `Debug`.
pub type SecretSeed = Secret<[u8; 32]>;

/// A secret value (a key's bytes, a token): wiped from memory when dropped, and never shown by
/// `Debug` (a secret in a log or an error message is a secret given away). `Deref` gives the
/// value to the code that uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T: zeroize::Zeroize>(Zeroizing<T>);

impl<T: zeroize::Zeroize> Secret<T> {
    /// Wraps `value` (a copy the caller keeps is its own to wipe).
    pub fn new(value: T) -> Self {
        Self(Zeroizing::new(value))
    }
}

impl<T: zeroize::Zeroize> std::ops::Deref for Secret<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: zeroize::Zeroize> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// First line of a secret key file.
pub const SECRET_HEADER: &str = "keyraft-ed25519-secret-v1";
/// First line of a public key file.
pub const PUBLIC_HEADER: &str = "keyraft-ed25519-public-v1";
/// File name suffix marking a legacy (headerless) file as a public key.
pub const PUBLIC_SUFFIX: &str = ".pub";

/// The two kinds of key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An Ed25519 seed (32 bytes).
    Secret,
    /// An Ed25519 public key (32 bytes).
    Public,
}

impl Kind {
    /// "secret" or "public".
    pub fn name(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Public => "public",
        }
    }
}

/// A key read from a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read<T> {
    /// The key.
    pub key: T,
    /// The file is in the headerless form of earlier versions (callers warn: `keyraft key
    /// migrate FILE` rewrites it).
    pub legacy: bool,
}

/// Why a key file was refused. Every message names the file and, where the caller gave it,
/// the option or setting that needed the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file holds the other kind of key.
    #[error(
        "{path} is a {found} key file{how}; {needed_by} needs a {wanted} key file (made by `keyraft keygen`)",
        found = found.name(),
        wanted = wanted.name(),
        how = if *legacy { LEGACY_BY_NAME } else { "" }
    )]
    WrongKind {
        /// The file.
        path: String,
        /// What reads it (an option such as `--key`, or a configuration setting).
        needed_by: String,
        /// What it holds.
        found: Kind,
        /// What was needed.
        wanted: Kind,
        /// The file has no header: its kind was taken from its name.
        legacy: bool,
    },
    /// A secret key file that others than its owner may read or write (unix permissions).
    #[error(
        "{path} ({needed_by}) is a secret file that others can {access} (mode {mode:04o}); a secret file must be \
         readable by its owner only: `chmod 600 {path}`"
    )]
    Exposed {
        /// The file.
        path: String,
        /// What reads it.
        needed_by: String,
        /// The file's permission bits.
        mode: u32,
        /// "read", "write" or "read and write".
        access: &'static str,
    },
    /// The file cannot be parsed.
    #[error("{path} ({needed_by}) is not a keyraft key file: {why}")]
    Malformed {
        /// The file.
        path: String,
        /// What reads it.
        needed_by: String,
        /// What is wrong.
        why: String,
    },
    /// The public key is not a valid Ed25519 key.
    #[error("{path} ({needed_by}): {source}")]
    InvalidKey {
        /// The file.
        path: String,
        /// What reads it.
        needed_by: String,
        /// Why the key is invalid.
        source: crate::DecodeError,
    },
    /// Reading or writing failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// "reading" or "writing".
        action: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// How a headerless file's kind was decided, for the messages.
const LEGACY_BY_NAME: &str =
    " (an earlier keyraft's file without a type header: only a name ending in `.pub` makes it public)";

/// What a file's text says it is, before the caller's expectation is applied.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Typed(Kind, [u8; 32]),
    Legacy([u8; 32]),
}

fn hex32(line: &str) -> Result<[u8; 32], String> {
    if line.len() != 64 {
        return Err(format!("expected 64 hex digits (32 bytes), found {} characters", line.len()));
    }
    let bytes = hex::decode(line).map_err(|e| format!("the key is not hex: {e}"))?;
    bytes.try_into().map_err(|_| "expected 32 bytes".to_owned())
}

/// Parses a file's text: a header line and a hex line (a final newline and trailing spaces
/// allowed, nothing else), or the legacy hex line alone.
fn parse(text: &str) -> Result<Parsed, String> {
    let mut lines = text.trim_end().lines().map(str::trim_end);
    let first = lines.next().ok_or("the file is empty")?;
    let kind = match first {
        SECRET_HEADER => Kind::Secret,
        PUBLIC_HEADER => Kind::Public,
        other if other.starts_with("keyraft-") => {
            return Err(format!(
                "unknown header {other:?} (expected {SECRET_HEADER:?} or {PUBLIC_HEADER:?}; a newer keyraft?)"
            ));
        }
        other => {
            if lines.next().is_some() {
                return Err(format!("no {SECRET_HEADER:?} or {PUBLIC_HEADER:?} header line"));
            }
            return hex32(other.trim_start()).map(Parsed::Legacy).map_err(|e| {
                format!("no {SECRET_HEADER:?} or {PUBLIC_HEADER:?} header line, and not a legacy key file ({e})")
            });
        }
    };
    let key = lines.next().ok_or("the header is not followed by the key")?;
    let key = hex32(key)?;
    if lines.next().is_some() {
        return Err("unexpected text after the key".to_owned());
    }
    Ok(Parsed::Typed(kind, key))
}

fn is_pub_name(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().ends_with(PUBLIC_SUFFIX))
}

/// Classifies `text`, read from `path`, as a key of kind `wanted`.
fn classify(path: &Path, text: &str, wanted: Kind, needed_by: &str) -> Result<Read<[u8; 32]>, KeyFileError> {
    let shown = path.display().to_string();
    let parsed =
        parse(text).map_err(|why| KeyFileError::Malformed { path: shown.clone(), needed_by: needed_by.into(), why })?;
    let (found, key, legacy) = match parsed {
        Parsed::Typed(kind, key) => (kind, key, false),
        Parsed::Legacy(key) => (if is_pub_name(path) { Kind::Public } else { Kind::Secret }, key, true),
    };
    if found != wanted {
        return Err(KeyFileError::WrongKind { path: shown, needed_by: needed_by.into(), found, wanted, legacy });
    }
    Ok(Read { key, legacy })
}

/// Classifies a key file's `text` as if read from `path`: what [`read_secret`] and
/// [`read_public`] do after reading the file. For the fuzz targets; not an API.
#[doc(hidden)]
pub fn classify_text(path: &Path, text: &str, wanted: Kind) -> Result<Read<[u8; 32]>, KeyFileError> {
    classify(path, text, wanted, "fuzz input")
}

fn read_text(path: &Path) -> Result<String, KeyFileError> {
    std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        action: "reading",
        path: path.display().to_string(),
        source,
    })
}

/// Reads a secret key file (an Ed25519 seed, also used as the VRF seed). `needed_by` names
/// what wants it, for the error message. A file that others than its owner can read or write
/// is refused (as ssh refuses such a private key): the key may already be someone else's.
pub fn read_secret(path: &Path, needed_by: &str) -> Result<Read<SecretSeed>, KeyFileError> {
    let text = Zeroizing::new(read_text(path)?);
    // The kind first: a public key file given for a secret one is that mistake, whatever its
    // permissions.
    let read = classify(path, &text, Kind::Secret, needed_by)?;
    check_owner_only(path, needed_by)?;
    Ok(Read { key: SecretSeed::new(read.key), legacy: read.legacy })
}

/// Refuses a secret file whose permissions let the group or others read or write it. Any
/// secret file (key, cluster token, MAC key) is checked with this one rule.
pub fn check_owner_only(path: &Path, needed_by: &str) -> Result<(), KeyFileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)
            .map_err(|source| KeyFileError::Io { action: "reading", path: path.display().to_string(), source })?
            .permissions()
            .mode()
            & 0o777;
        let (read, write) = (mode & 0o044 != 0, mode & 0o022 != 0);
        let access = match (read, write) {
            (true, true) => "read and write",
            (true, false) => "read",
            (false, true) => "write",
            (false, false) => return Ok(()),
        };
        Err(KeyFileError::Exposed { path: path.display().to_string(), needed_by: needed_by.into(), mode, access })
    }
    #[cfg(not(unix))]
    {
        let _ = (path, needed_by);
        Ok(())
    }
}

/// Reads a public key file and validates the key.
pub fn read_public(path: &Path, needed_by: &str) -> Result<Read<PublicKey>, KeyFileError> {
    let read = classify(path, &read_text(path)?, Kind::Public, needed_by)?;
    let key = PublicKey::from_bytes(&read.key).map_err(|source| KeyFileError::InvalidKey {
        path: path.display().to_string(),
        needed_by: needed_by.into(),
        source,
    })?;
    Ok(Read { key, legacy: read.legacy })
}

/// The warning callers log when [`Read::legacy`] is set.
pub fn legacy_warning(path: &Path, needed_by: &str) -> String {
    format!(
        "{} ({needed_by}) has no key type header (written by an earlier keyraft); `keyraft key migrate {}` rewrites it",
        path.display(),
        path.display()
    )
}

/// The text of a secret key file.
pub fn secret_text(seed: &[u8; 32]) -> String {
    format!("{SECRET_HEADER}\n{}\n", hex::encode(seed))
}

/// The text of a public key file.
pub fn public_text(key: &PublicKey) -> String {
    format!("{PUBLIC_HEADER}\n{}\n", hex::encode(key.as_bytes()))
}

fn io_write(path: &Path, source: std::io::Error) -> KeyFileError {
    KeyFileError::Io { action: "writing", path: path.display().to_string(), source }
}

/// Writes a new secret key file, readable by its owner only; an existing file is never
/// overwritten (it may be the only copy of a key).
pub fn write_secret(path: &Path, seed: &[u8; 32]) -> Result<(), KeyFileError> {
    write_new(path, &secret_text(seed), true)
}

/// Writes a new file of other secret text (a cluster token), readable by its owner only; an
/// existing file is never overwritten.
pub fn write_secret_text(path: &Path, text: &str) -> Result<(), KeyFileError> {
    write_new(path, text, true)
}

/// Writes a new public key file (an existing file is not overwritten).
pub fn write_public(path: &Path, key: &PublicKey) -> Result<(), KeyFileError> {
    write_new(path, &public_text(key), false)
}

fn write_new(path: &Path, text: &str, owner_only: bool) -> Result<(), KeyFileError> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(if owner_only { 0o600 } else { 0o644 });
    #[cfg(not(unix))]
    let _ = owner_only;
    let mut f = options.open(path).map_err(|e| io_write(path, e))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| io_write(path, e))
}

/// The public key file name `keyraft keygen` writes next to secret key file `path`.
pub fn public_path_for(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(PUBLIC_SUFFIX);
    PathBuf::from(name)
}

/// What [`migrate`] did to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Migrated {
    /// It was rewritten in the typed form of this kind.
    Rewritten(Kind),
    /// It was already in the typed form of this kind.
    AlreadyTyped(Kind),
}

/// Rewrites a legacy key file in the typed form, keeping the key, its kind (by the legacy
/// rule: `.pub` names are public) and its permissions. The new text goes to a temporary file
/// renamed over the old one, so a crash leaves one or the other whole.
pub fn migrate(path: &Path) -> Result<Migrated, KeyFileError> {
    let text = read_text(path)?;
    let parsed = parse(&text).map_err(|why| KeyFileError::Malformed {
        path: path.display().to_string(),
        needed_by: "keyraft key migrate".into(),
        why,
    })?;
    let (kind, new_text) = match parsed {
        Parsed::Typed(kind, _) => return Ok(Migrated::AlreadyTyped(kind)),
        // A public key is validated before it is rewritten as one.
        Parsed::Legacy(_) if is_pub_name(path) => {
            (Kind::Public, public_text(&read_public(path, "keyraft key migrate")?.key))
        }
        Parsed::Legacy(key) => (Kind::Secret, secret_text(&key)),
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".migrating");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, &new_text, kind == Kind::Secret)?;
    let permissions = std::fs::metadata(path).map_err(|e| io_write(path, e))?.permissions();
    std::fs::set_permissions(&tmp, permissions).map_err(|e| io_write(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_write(path, e))?;
    Ok(Migrated::Rewritten(kind))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HEX: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

    fn check(name: &str, text: &str, wanted: Kind) -> Result<Read<[u8; 32]>, String> {
        classify(Path::new(name), text, wanted, "--key").map_err(|e| e.to_string())
    }

    #[test]
    fn typed_files_are_read_as_their_kind_only() {
        let secret = format!("{SECRET_HEADER}\n{HEX}\n");
        let public = format!("{PUBLIC_HEADER}\n{HEX}\n");
        let key: [u8; 32] = hex::decode(HEX).unwrap().try_into().unwrap();
        assert_eq!(check("a.key", &secret, Kind::Secret).unwrap(), Read { key, legacy: false });
        // The header decides, whatever the name says.
        assert_eq!(check("a.key.pub", &public, Kind::Public).unwrap(), Read { key, legacy: false });
        assert_eq!(check("a", &public.replace('\n', "\r\n"), Kind::Public).unwrap().key, key);
        let err = check("a.key.pub", &public, Kind::Secret).unwrap_err();
        assert_eq!(err, "a.key.pub is a public key file; --key needs a secret key file (made by `keyraft keygen`)");
        let err = check("a.pub", &secret, Kind::Public).unwrap_err();
        assert!(err.starts_with("a.pub is a secret key file; --key needs a public key file"), "{err}");
    }

    #[test]
    fn legacy_files_are_public_when_named_pub_and_secret_otherwise() {
        let legacy = format!("{HEX}\n");
        assert!(check("old.key", &legacy, Kind::Secret).unwrap().legacy);
        assert!(check("old.key.pub", &legacy, Kind::Public).unwrap().legacy);
        assert!(check("old.key.pub", &legacy, Kind::Secret).unwrap_err().contains("is a public key file"));
        let err = check("old.key", &legacy, Kind::Public).unwrap_err();
        assert!(
            err.starts_with("old.key is a secret key file (an earlier keyraft's file without a type header"),
            "{err}"
        );
        assert!(err.ends_with("; --key needs a public key file (made by `keyraft keygen`)"), "{err}");
    }

    #[test]
    fn malformed_files_are_refused_with_the_reason() {
        let cases = [
            ("", "the file is empty"),
            ("\n\n", "the file is empty"),
            (&format!("keyraft-ed25519-secret-v2\n{HEX}\n") as &str, "unknown header"),
            (&format!("keyraft-x25519-public-v1\n{HEX}\n"), "unknown header"),
            (&format!("{SECRET_HEADER}\n"), "not followed by the key"),
            (&format!("{SECRET_HEADER}\n{}\n", &HEX[..62]), "found 62 characters"),
            (&format!("{SECRET_HEADER}\n{HEX}00\n"), "found 66 characters"),
            (&format!("{SECRET_HEADER}\n{}zz\n", &HEX[..62]), "not hex"),
            (&format!("{SECRET_HEADER}\n{HEX}\nextra\n"), "unexpected text after the key"),
            (&format!("{SECRET_HEADER}\n{HEX}\n{HEX}\n"), "unexpected text after the key"),
            (&format!(" {SECRET_HEADER}\n{HEX}\n"), "no \"keyraft-ed25519-secret-v1\""),
            (&format!("{HEX}\n{HEX}\n"), "no \"keyraft-ed25519-secret-v1\""),
            (&HEX[..60], "not a legacy key file (expected 64 hex digits"),
            ("-----BEGIN PRIVATE KEY-----", "not a legacy key file"),
        ];
        for (text, want) in cases {
            let err = check("k.key", text, Kind::Secret).unwrap_err();
            assert!(err.starts_with("k.key (--key) is not a keyraft key file: "), "{text:?}: {err}");
            assert!(err.contains(want), "{text:?}: {err} (wanted {want:?})");
        }
    }

    #[test]
    #[cfg(unix)]
    fn a_secret_others_can_read_or_write_is_refused_and_debug_shows_no_secret() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("keyraft-key-perms-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let seed: [u8; 32] = hex::decode(HEX).unwrap().try_into().unwrap();
        let path = dir.join("a.key");
        write_secret(&path, &seed).unwrap();
        for (mode, access) in [(0o640, "read"), (0o604, "read"), (0o620, "write"), (0o666, "read and write")] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_secret(&path, "signing_key_file").unwrap_err();
            assert!(
                matches!(err, KeyFileError::Exposed { mode: m, access: a, .. } if m == mode && a == access),
                "{err}"
            );
            let text = err.to_string();
            assert!(
                text.contains("signing_key_file") && text.contains(&format!("chmod 600 {}", path.display())),
                "{text}"
            );
            assert!(!text.contains(HEX), "{text}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        let read = read_secret(&path, "signing_key_file").unwrap();
        assert_eq!(*read.key, seed);
        let shown = format!("{read:?} {:?}", Secret::new("a token".to_owned()));
        assert!(!shown.contains(HEX) && !shown.contains(&HEX[..8]) && !shown.contains("a token"), "{shown}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn written_files_read_back_and_migrate_keeps_the_key() {
        let dir = std::env::temp_dir().join(format!("keyraft-key-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let seed: [u8; 32] = hex::decode(HEX).unwrap().try_into().unwrap();
        let public =
            PublicKey::from_verifying_key(&ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key()).unwrap();
        let secret_path = dir.join("a.key");
        write_secret(&secret_path, &seed).unwrap();
        assert!(write_secret(&secret_path, &seed).is_err(), "an existing key file is never overwritten");
        write_public(&public_path_for(&secret_path), &public).unwrap();
        assert_eq!(read_secret(&secret_path, "--key").unwrap(), Read { key: SecretSeed::new(seed), legacy: false });
        assert_eq!(read_public(&dir.join("a.key.pub"), "--policy-key").unwrap().key.as_bytes(), public.as_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&secret_path).unwrap().permissions().mode() & 0o777, 0o600);
        }

        let old_secret = dir.join("old.key");
        let old_public = dir.join("old.key.pub");
        std::fs::write(&old_secret, format!("{HEX}\n")).unwrap();
        std::fs::write(&old_public, format!("{}\n", hex::encode(public.as_bytes()))).unwrap();
        assert_eq!(migrate(&old_secret).unwrap(), Migrated::Rewritten(Kind::Secret));
        assert_eq!(migrate(&old_public).unwrap(), Migrated::Rewritten(Kind::Public));
        assert_eq!(migrate(&old_secret).unwrap(), Migrated::AlreadyTyped(Kind::Secret));
        assert_eq!(std::fs::read_to_string(&old_secret).unwrap(), secret_text(&seed));
        assert_eq!(std::fs::read_to_string(&old_public).unwrap(), public_text(&public));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
