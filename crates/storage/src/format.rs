//! The on-disk format version.
//!
//! The key `0x00 "format-version"` holds a big-endian `u32`. A store written by a newer build
//! is refused (it may mean something this build cannot read); an older one is migrated step by
//! step, each step's writes flushed before the version moves forward.

use crate::{Batch, Storage, StorageError};

/// The first key byte owned by this crate. Users of a store must use other first bytes.
pub const RESERVED_PREFIX: u8 = 0x00;

/// The key of the format version.
pub const FORMAT_VERSION_KEY: &[u8] = b"\x00format-version";

/// One migration step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The version it reads.
    pub from: u32,
    /// The version it produces.
    pub to: u32,
    /// Rewrites the data.
    pub run: fn(&dyn Storage) -> Result<(), StorageError>,
}

/// What [`check_format_version`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatOutcome {
    /// An empty store, now stamped with the current version.
    Initialized,
    /// Already at the current version.
    Current,
    /// Migrated.
    Migrated {
        /// The version found.
        from: u32,
        /// The current version.
        to: u32,
    },
}

fn read_version(store: &dyn Storage) -> Result<Option<u32>, StorageError> {
    match store.get(FORMAT_VERSION_KEY)? {
        None => Ok(None),
        Some(v) => {
            let bytes: [u8; 4] = v.as_slice().try_into().map_err(|_| StorageError::Corrupt {
                what: format!("format version is {} bytes, expected 4", v.len()),
            })?;
            Ok(Some(u32::from_be_bytes(bytes)))
        }
    }
}

fn write_version(store: &dyn Storage, version: u32) -> Result<(), StorageError> {
    let mut b = Batch::new();
    b.put(FORMAT_VERSION_KEY, version.to_be_bytes().to_vec());
    store.write(b)?;
    store.flush()
}

/// Checks the store's format version against `current`, stamping an empty store and running
/// `migrations` on an older one.
pub fn check_format_version(
    store: &dyn Storage,
    current: u32,
    migrations: &[Migration],
) -> Result<FormatOutcome, StorageError> {
    let Some(found) = read_version(store)? else {
        if store.first_in_range(&[], None)?.is_some() {
            return Err(StorageError::Corrupt { what: "store has data but no format version".into() });
        }
        write_version(store, current)?;
        return Ok(FormatOutcome::Initialized);
    };
    if found == current {
        return Ok(FormatOutcome::Current);
    }
    if found > current {
        return Err(StorageError::FormatTooNew { found, supported: current });
    }
    let mut version = found;
    while version < current {
        let step = migrations
            .iter()
            .find(|m| m.from == version && m.to > version && m.to <= current)
            .ok_or(StorageError::FormatTooOld { found, supported: current })?;
        (step.run)(store)?;
        store.flush()?;
        write_version(store, step.to)?;
        version = step.to;
    }
    Ok(FormatOutcome::Migrated { from: found, to: current })
}
