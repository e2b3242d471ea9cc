//! Entry points for the fuzz targets (`crates/fuzz-targets`, `fuzz/`): the node configuration
//! parser, the snapshot loader, the backup file check and the peer service's decoding of Raft
//! messages, which are otherwise reached only through files on disk and a running replica. Not an API: hidden from the documentation, kept only for fuzzing and the
//! corpus replay tests.

use crate::config::NodeConfig;
use crate::Error;
use keyraft_storage::Storage;
use std::path::Path;

/// Parses a node configuration's TOML text and checks every setting's range and relations, as
/// [`NodeConfig::load`] does before it reads the files the configuration names.
pub fn parse_node_config(text: &str) -> Result<NodeConfig, Error> {
    let config: NodeConfig = toml::from_str(text).map_err(|e| Error::config_because("fuzz input".to_owned(), e))?;
    config.check()?;
    Ok(config)
}

/// Writes a node configuration back as TOML.
pub fn write_node_config(config: &NodeConfig) -> Result<String, Error> {
    toml::to_string_pretty(config).map_err(|e| Error::config_because("writing the configuration".to_owned(), e))
}

/// Loads the bytes of a snapshot file into `store`, as a replica loads a snapshot it received
/// or restores one from disk; returns the number of key/value pairs.
pub fn load_snapshot(bytes: &[u8], store: &dyn Storage) -> Result<u64, Error> {
    crate::snapshot_file::load_from(bytes, Path::new("fuzz input"), store)
}

/// Writes `store` as a snapshot file's bytes (seeds for the loader's corpus).
pub fn write_snapshot(store: &dyn Storage, dir: &Path) -> Result<Vec<u8>, Error> {
    let path = dir.join("fuzz.snapshot");
    crate::snapshot_file::write(store, &path)?;
    std::fs::read(&path).map_err(|e| Error::io("reading the snapshot written", e))
}

/// Checks the bytes of a backup file as `keyraft backup check` and a restore do.
pub fn check_backup(bytes: &[u8]) -> Result<crate::backup::BackupHeader, crate::backup::BackupError> {
    let len = bytes.len() as u64;
    crate::backup::check_from(&mut std::io::Cursor::new(bytes), len, Path::new("fuzz input"))
}

/// Decodes `bytes` as each Raft message a peer sends (the requests the peer service decodes,
/// the responses the Raft network decodes), as postcard; how many kinds decoded.
pub fn decode_raft_messages(bytes: &[u8]) -> usize {
    use crate::raft::types::{NodeId, TypeConfig};
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
        VoteResponse,
    };
    let ok = |decoded: bool| usize::from(decoded);
    ok(postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(bytes).is_ok())
        + ok(postcard::from_bytes::<AppendEntriesResponse<NodeId>>(bytes).is_ok())
        + ok(postcard::from_bytes::<VoteRequest<NodeId>>(bytes).is_ok())
        + ok(postcard::from_bytes::<VoteResponse<NodeId>>(bytes).is_ok())
        + ok(postcard::from_bytes::<InstallSnapshotRequest<TypeConfig>>(bytes).is_ok())
        + ok(postcard::from_bytes::<InstallSnapshotResponse<NodeId>>(bytes).is_ok())
}

/// Encodes `message` as a peer sends it (seeds for the Raft message corpus).
pub fn encode_raft_message<T: serde::Serialize>(message: &T) -> Vec<u8> {
    postcard::to_allocvec(message).unwrap_or_default()
}

/// A few Raft messages as peers send them, by name (seeds for the Raft message corpus).
pub fn sample_raft_messages() -> Vec<(&'static str, Vec<u8>)> {
    use crate::raft::types::{NodeId, TypeConfig};
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
    use openraft::{CommittedLeaderId, LogId, Vote};
    let vote = Vote::<NodeId>::new(3, 1);
    let log_id = LogId::new(CommittedLeaderId::new(3, 1), 17);
    let append: AppendEntriesRequest<TypeConfig> =
        AppendEntriesRequest { vote, prev_log_id: Some(log_id), entries: vec![], leader_commit: Some(log_id) };
    vec![
        ("vote-request", encode_raft_message(&VoteRequest::new(vote, Some(log_id)))),
        ("vote-response", encode_raft_message(&VoteResponse::new(vote, Some(log_id), true))),
        ("append-entries", encode_raft_message(&append)),
        ("append-entries-success", encode_raft_message(&AppendEntriesResponse::<NodeId>::Success)),
    ]
}

/// openraft's metadata of an empty snapshot, as a backup's header holds it.
pub fn empty_snapshot_meta() -> serde_json::Value {
    let meta = openraft::SnapshotMeta::<crate::raft::types::NodeId, crate::raft::types::NodeAddr>::default();
    serde_json::to_value(meta).unwrap_or_default()
}
