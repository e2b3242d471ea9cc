//! Entry points for the fuzz targets (`crates/fuzz-targets`, `fuzz/`): the node configuration
//! parser and the snapshot loader, which are otherwise reached only through files on disk and
//! a running replica. Not an API: hidden from the documentation, kept only for fuzzing and the
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
