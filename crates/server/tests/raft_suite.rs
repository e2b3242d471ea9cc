//! openraft's storage conformance suite against our log store and state-machine store, on
//! the in-memory engine, on sled and on redb (as `storage.engine` configures them), and with
//! the log's flusher thread closed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_core::vrf::VrfSecretKey;
use keyraft_core::{PublicKey, RealmConfig};
use keyraft_server::config::{EngineKind, StorageSettings};
use keyraft_server::raft::log_store::LogStore;
use keyraft_server::raft::sm_store::{StateLocation, StateMachineStore};
use keyraft_server::raft::types::{NodeId, TypeConfig};
use keyraft_storage::{MemoryStorage, Storage};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use std::sync::Arc;

fn realm() -> RealmConfig {
    let key = |i: u8| {
        PublicKey::from_verifying_key(&ed25519_dalek::SigningKey::from_bytes(&[i; 32]).verifying_key()).unwrap()
    };
    RealmConfig::new("suite", VrfSecretKey::from_seed(&[9; 32]).public_key(), vec![key(1), key(2), key(3)], vec![])
        .unwrap()
}

struct Builder {
    /// A persistent engine; `None`: in memory.
    engine: Option<EngineKind>,
    /// Closes the log's flusher before handing the log out: every append then writes and
    /// flushes in place (what a log does after `LogStore::close`).
    flusher_closed: bool,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let (log, location): (Arc<dyn Storage>, StateLocation) = match self.engine {
            Some(engine) => {
                let settings = StorageSettings { engine, ..StorageSettings::default() };
                (
                    settings.log_engine().open(&dir.path().join("log")).unwrap(),
                    StateLocation::Dir { path: dir.path().join("state"), engine: settings.state_engine() },
                )
            }
            None => (Arc::new(MemoryStorage::new()), StateLocation::Memory(Default::default())),
        };
        let sm = StateMachineStore::open(location, dir.path().join("snapshots"), realm()).unwrap();
        let log = LogStore::new(log);
        if self.flusher_closed {
            log.close();
        }
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_suite_on_memory() {
    Suite::test_all(Builder { engine: None, flusher_closed: false }).unwrap();
}

#[test]
fn openraft_suite_on_sled() {
    Suite::test_all(Builder { engine: Some(EngineKind::Sled), flusher_closed: false }).unwrap();
}

#[test]
fn openraft_suite_on_redb() {
    Suite::test_all(Builder { engine: Some(EngineKind::Redb), flusher_closed: false }).unwrap();
}

#[test]
fn openraft_suite_with_the_log_flusher_closed() {
    Suite::test_all(Builder { engine: None, flusher_closed: true }).unwrap();
}
