//! What a client accepts on top of its realm file: its own verifier quorum, freshness rules
//! and state file.

use crate::ClientError;
use keyraft_core::clock::Clock;
use keyraft_core::lookup::ClientRealm;
use keyraft_proto::transport::Channels;
use std::path::PathBuf;
use std::sync::Arc;

/// What a client accepts, on top of the realm file. `None` keeps the realm file's value.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// How many registered verifiers must have ratified an answer's epoch (the replica
    /// majority is always required).
    pub verifier_threshold: Option<usize>,
    /// The oldest head accepted, as an age in milliseconds.
    pub epoch_ttl_ms: Option<u64>,
    /// How far ahead of this client's clock a head may be, in milliseconds.
    pub clock_skew_ms: Option<u64>,
    /// Where to remember the newest epoch seen per realm (`None`: for this process only).
    pub state_file: Option<PathBuf>,
    /// The clock freshness is judged by (`None`: the host's).
    pub clock: Option<Arc<dyn Clock>>,
    /// How to reach the endpoints (`None`: TCP with [`crate::client_channel_options`]).
    pub channels: Option<Channels>,
}

impl ClientOptions {
    /// Applies the quorum and freshness options to `realm` (for code that verifies proofs
    /// without a [`Client`], such as offline verification).
    pub fn apply(&self, realm: &mut ClientRealm) -> Result<(), ClientError> {
        if let Some(t) = self.verifier_threshold {
            let registered = realm.config.verifier_keys.len();
            if t > registered {
                return Err(ClientError::Invalid(format!(
                    "verifier threshold {t} exceeds the {registered} verifiers registered in realm {:?}",
                    realm.config.realm
                )));
            }
            realm.verifier_threshold = t;
        }
        if let Some(ttl) = self.epoch_ttl_ms {
            realm.epoch_ttl_ms = ttl;
        }
        if let Some(skew) = self.clock_skew_ms {
            realm.clock_skew_ms = skew;
        }
        Ok(())
    }
}
