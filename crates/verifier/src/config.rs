//! The verifier's configuration file and why a verifier stops.

use ed25519_dalek::SigningKey;
use keyraft_epoch::StateError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The verifier's configuration file (`verifier.toml`); relative paths are relative to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the verifier keeps its state, evidence and `HALTED` marker.
    pub data_dir: PathBuf,
    /// The realm file; this verifier's public key must be one of its `verifier_keys`.
    pub realm_file: PathBuf,
    /// The verifier's Ed25519 signing key (64 hex digits).
    pub signing_key_file: PathBuf,
    /// Replica public addresses to stream from (default: the realm file's endpoints).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Listen address of the metrics listener (plain HTTP: `/metrics`, `/healthz`); none
    /// without it. The bound address is written to `<data_dir>/listen.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Keep the trees of only the newest this many verified epochs (0: all of them, the
    /// default; otherwise at least 2). A verifier reads only its newest tree: old ones serve
    /// no one but an operator investigating, so a bounded disk costs nothing else.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retention_epochs: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why the verifier stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration or a key file is wrong.
    #[error("configuration error: {0}")]
    Config(String),
    /// A previous mismatch halted ratification; an operator must look at the evidence.
    #[error("ratification is halted: {0}")]
    Halted(String),
    /// The realm published something that does not verify; evidence was written.
    #[error("the realm misbehaved at epoch {epoch}: {reason}; evidence in {evidence}")]
    Misbehaved {
        /// The epoch.
        epoch: u64,
        /// What was wrong.
        reason: String,
        /// The evidence file.
        evidence: String,
    },
    /// This verifier's own storage failed or holds what it cannot accept: its disk or data
    /// directory is at fault, not the realm. Once repaired, a restart resumes from what the
    /// storage holds.
    #[error("this verifier's local state failed (its own storage is at fault, not the realm): {0}")]
    State(#[from] StateError),
    /// The data directory could not be created: the operator's configuration or disk.
    #[error("cannot create the verifier's data directory {}: {source}", path.display())]
    DataDir {
        /// The directory (`data_dir`).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The task pushing ratifications stopped while epochs still needed pushing: a fault of
    /// this verifier (it panicked), not of the realm.
    #[error("this verifier's ratification push task stopped")]
    PushTaskStopped,
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

pub(crate) fn read_key(path: &Path) -> Result<SigningKey, Error> {
    let needed_by = "signing_key_file";
    let read = keyraft_core::key_file::read_secret(path, needed_by).map_err(|e| Error::Config(e.to_string()))?;
    if read.legacy {
        tracing::warn!("{}", keyraft_core::key_file::legacy_warning(path, needed_by));
    }
    Ok(SigningKey::from_bytes(&read.key))
}

impl Config {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))?;
        let mut c: Config = toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        c.data_dir = resolve(base, &c.data_dir);
        c.realm_file = resolve(base, &c.realm_file);
        c.signing_key_file = resolve(base, &c.signing_key_file);
        if c.retention_epochs == 1 {
            return Err(Error::Config(format!(
                "{}: retention_epochs = 1: must be 0 (keep every tree) or at least 2",
                path.display()
            )));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyraft_epoch::verifier::VerifierState;

    /// A local storage failure keeps its cause, for the operator to act on (item 8 of issue
    /// 12: it used to be flattened into a string).
    #[test]
    fn local_state_errors_keep_their_source() {
        let store = keyraft_storage::MemoryStorage::new();
        let first = keyraft_epoch::testing::realm_config("one.example");
        VerifierState::open(store.clone(), first).expect("a fresh store opens");
        let refused = VerifierState::open(store, keyraft_epoch::testing::realm_config("two.example"))
            .err()
            .map(Error::from)
            .expect("a store of another realm is refused");
        assert!(refused.to_string().contains("not the realm"), "{refused}");
        let source = std::error::Error::source(&refused).expect("the cause is kept");
        assert!(matches!(source.downcast_ref::<StateError>(), Some(StateError::ConfigMismatch(_))), "{source:?}");
    }
}
