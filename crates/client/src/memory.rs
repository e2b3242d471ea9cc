//! The client's memory of the newest epoch it has seen per realm (protocol check 8).
//!
//! A server that answers from an older epoch than one the client already verified is hiding
//! something (a key change, a revocation). The memory outlives the process when it has a
//! file: a JSON object written whole to a temporary file and renamed over the old one, so a
//! crash leaves either the old or the new contents, never a torn file. Writes happen only when
//! the newest epoch grows, at most once per epoch per client. Processes sharing a file merge
//! what they find in it before writing (no file lock: two writers racing may lose one update
//! of the newest epoch, never go below what both read).

use crate::ClientError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Version of the file format.
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileContents {
    version: u32,
    /// Realm name to the newest epoch seen.
    realms: BTreeMap<String, u64>,
}

/// The newest epoch seen per realm, optionally persisted.
#[derive(Debug, Default)]
pub struct EpochMemory {
    path: Option<PathBuf>,
    seen: Mutex<BTreeMap<String, u64>>,
}

fn read_file(path: &Path) -> Result<BTreeMap<String, u64>, ClientError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let contents: FileContents = serde_json::from_str(&text).map_err(|e| {
                ClientError::Invalid(format!(
                    "client state file {} is corrupt ({e}); it holds the newest epoch seen per realm: fix it or delete it to start over",
                    path.display()
                ))
            })?;
            if contents.version != FORMAT_VERSION {
                return Err(ClientError::Invalid(format!(
                    "client state file {} has format version {}, this client reads version {FORMAT_VERSION}",
                    path.display(),
                    contents.version
                )));
            }
            Ok(contents.realms)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(ClientError::Invalid(format!("reading client state file {}: {e}", path.display()))),
    }
}

impl EpochMemory {
    /// A memory that lives as long as the process.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// A memory kept in `path` (created on the first write, with its directory).
    pub fn open(path: &Path) -> Result<Self, ClientError> {
        let seen = read_file(path)?;
        Ok(Self { path: Some(path.to_owned()), seen: Mutex::new(seen) })
    }

    /// The newest epoch seen for `realm`.
    pub fn newest(&self, realm: &str) -> Option<u64> {
        self.lock().get(realm).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that a verified answer from `epoch` of `realm` was seen.
    pub fn observe(&self, realm: &str, epoch: u64) -> Result<(), ClientError> {
        let mut seen = self.lock();
        if seen.get(realm).is_some_and(|&e| e >= epoch) {
            return Ok(());
        }
        seen.insert(realm.to_owned(), epoch);
        let Some(path) = &self.path else { return Ok(()) };
        // Another process may share the file: keep the newest of both.
        for (r, e) in read_file(path)? {
            let mine = seen.entry(r).or_insert(e);
            *mine = (*mine).max(e);
        }
        write_atomically(path, &FileContents { version: FORMAT_VERSION, realms: seen.clone() })
    }
}

fn write_atomically(path: &Path, contents: &FileContents) -> Result<(), ClientError> {
    let fail = |e: std::io::Error| ClientError::Invalid(format!("writing client state file {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let json = serde_json::to_vec_pretty(contents).map_err(|e| ClientError::Invalid(e.to_string()))?;
    // Unique per writer: two clients of one process may share the file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let mut file = std::fs::File::create(&tmp).map_err(fail)?;
    file.write_all(&json).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn remembers_the_newest_epoch_across_instances() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let m = EpochMemory::open(&path).unwrap();
        assert_eq!(m.newest("dev"), None);
        m.observe("dev", 5).unwrap();
        m.observe("dev", 3).unwrap();
        m.observe("other", 1).unwrap();
        assert_eq!(m.newest("dev"), Some(5));
        let again = EpochMemory::open(&path).unwrap();
        assert_eq!(again.newest("dev"), Some(5));
        assert_eq!(again.newest("other"), Some(1));
        // Two writers: neither loses the other's newer epoch.
        let a = EpochMemory::open(&path).unwrap();
        let b = EpochMemory::open(&path).unwrap();
        a.observe("dev", 9).unwrap();
        b.observe("other", 4).unwrap();
        let merged = EpochMemory::open(&path).unwrap();
        assert_eq!(merged.newest("dev"), Some(9));
        assert_eq!(merged.newest("other"), Some(4));
    }

    #[test]
    fn a_corrupt_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = EpochMemory::open(&path).unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains("state.json"), "{err}");
        std::fs::write(&path, br#"{"version":7,"realms":{}}"#).unwrap();
        let err = EpochMemory::open(&path).unwrap_err().to_string();
        assert!(err.contains("format version 7"), "{err}");
    }
}
