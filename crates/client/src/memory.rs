//! The client's memory of the newest epoch it has seen per realm (protocol check 8), and of
//! the epochs of its own updates not seen ratified yet.
//!
//! Epochs are remembered per verifier quorum: an epoch seen with a quorum of `t` verifiers
//! proves nothing about when `t + 1` verifiers will have ratified it, so a lookup requiring
//! `t` takes as its floor the newest epoch seen under any quorum of `t` or more (those epochs
//! have `t` ratifications for good: ratifications only accumulate). A lookup made without the
//! verifiers thus never turns a later lookup requiring them into a failure, and an answer
//! older than an epoch seen under the same or a higher quorum is still a rollback.
//!
//! A server that answers from an older epoch than one the client already verified is hiding
//! something (a key change, a revocation). An update made without waiting for its
//! ratification is applied in an epoch the client has not seen yet: the next update of the
//! same identity must build on it, so it waits for that epoch. The memory outlives the process when it has a
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

/// Version of the file format (2 added `own_updates`, 3 `by_quorum`; versions 1 and 2 are
/// read, their epochs taken as seen under the realm file's quorum).
const FORMAT_VERSION: u32 = 4;

/// Own updates remembered per realm, at most (the oldest epochs are forgotten first).
pub const OWN_UPDATES_MAX: usize = 1_000;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileContents {
    version: u32,
    /// Realm name to the newest epoch seen, under any quorum.
    realms: BTreeMap<String, u64>,
    /// Realm name to verifier quorum to the newest epoch seen under it.
    #[serde(default)]
    by_quorum: BTreeMap<String, BTreeMap<usize, u64>>,
    /// Realm name to identity to the epoch of this client's last update of it, while that
    /// epoch is newer than the newest seen.
    #[serde(default)]
    own_updates: BTreeMap<String, BTreeMap<String, u64>>,
    /// Realm name to the configuration changes followed from its realm file's configuration
    /// (hex `SignedConfigChange`s, in order; format 4). Checked again when read: the file
    /// saves the fetching, it is not trusted.
    #[serde(default)]
    config_chains: BTreeMap<String, Vec<String>>,
}

impl FileContents {
    /// Keeps the newest of both.
    fn merge(&mut self, other: FileContents) {
        for (r, e) in other.realms {
            let mine = self.realms.entry(r).or_insert(e);
            *mine = (*mine).max(e);
        }
        for (r, quorums) in other.by_quorum {
            let mine = self.by_quorum.entry(r).or_default();
            for (t, e) in quorums {
                let epoch = mine.entry(t).or_insert(e);
                *epoch = (*epoch).max(e);
            }
        }
        for (r, chain) in other.config_chains {
            // Chains from one configuration never fork (each change names the one before), so
            // the longer one extends the shorter.
            let mine = self.config_chains.entry(r).or_default();
            if chain.len() > mine.len() {
                *mine = chain;
            }
        }
        for (r, users) in other.own_updates {
            let mine = self.own_updates.entry(r).or_default();
            for (u, e) in users {
                let epoch = mine.entry(u).or_insert(e);
                *epoch = (*epoch).max(e);
            }
        }
        self.forget_seen();
    }

    /// Forgets own updates in epochs already seen (every later lookup asks for those), and
    /// the oldest beyond [`OWN_UPDATES_MAX`].
    fn forget_seen(&mut self) {
        for (realm, users) in &mut self.own_updates {
            let seen = self.realms.get(realm).copied().unwrap_or(0);
            users.retain(|_, e| *e > seen);
            while users.len() > OWN_UPDATES_MAX {
                let oldest = users.iter().min_by_key(|(_, e)| **e).map(|(u, _)| u.clone());
                if let Some(u) = oldest {
                    users.remove(&u);
                }
            }
        }
        self.own_updates.retain(|_, users| !users.is_empty());
    }
}

/// The newest epoch seen per realm and the epochs of own updates, optionally persisted.
#[derive(Debug, Default)]
pub struct EpochMemory {
    path: Option<PathBuf>,
    seen: Mutex<FileContents>,
}

fn read_file(path: &Path) -> Result<FileContents, ClientError> {
    let local = |action, source| ClientError::LocalState { path: path.to_owned(), action, source };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let contents: FileContents =
                serde_json::from_str(&text).map_err(|e| local("reading it: it is corrupt", e.into()))?;
            if !(1..=FORMAT_VERSION).contains(&contents.version) {
                let unknown =
                    format!("format version {}, this client reads versions 1 to {FORMAT_VERSION}", contents.version);
                return Err(local("reading it", std::io::Error::new(std::io::ErrorKind::InvalidData, unknown)));
            }
            Ok(contents)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileContents::default()),
        Err(e) => Err(local("reading it", e)),
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

    /// The newest epoch seen for `realm`, under any quorum.
    pub fn newest(&self, realm: &str) -> Option<u64> {
        self.lock().realms.get(realm).copied()
    }

    /// The rollback floor of a lookup requiring `threshold` verifiers: the newest epoch of
    /// `realm` seen under a quorum of `threshold` or more.
    pub fn floor(&self, realm: &str, threshold: usize) -> Option<u64> {
        self.lock().by_quorum.get(realm)?.range(threshold..).map(|(_, e)| *e).max()
    }

    /// Takes the epoch a memory written before quorums were told apart (format 1 or 2) holds
    /// for `realm` as seen under `threshold` (the realm file's quorum, which such clients
    /// used unless told otherwise). Nothing is written until the next epoch is observed.
    pub fn adopt_unquorumed(&self, realm: &str, threshold: usize) {
        let mut seen = self.lock();
        let Some(&epoch) = seen.realms.get(realm) else { return };
        if !seen.by_quorum.contains_key(realm) {
            seen.by_quorum.entry(realm.to_owned()).or_default().insert(threshold, epoch);
        }
    }

    /// The epoch of this client's last update of `user_id` in `realm`, if newer than the
    /// newest epoch seen.
    pub fn own_update(&self, realm: &str, user_id: &str) -> Option<u64> {
        let seen = self.lock();
        let newest = seen.realms.get(realm).copied().unwrap_or(0);
        seen.own_updates.get(realm)?.get(user_id).copied().filter(|&e| e > newest)
    }

    /// The configuration changes followed for `realm` (canonical bytes, in order), as saved;
    /// the caller checks them again. An entry that is not hex is skipped with the rest.
    pub fn config_changes(&self, realm: &str) -> Vec<Vec<u8>> {
        let seen = self.lock();
        let Some(chain) = seen.config_chains.get(realm) else { return Vec::new() };
        chain.iter().map_while(|c| hex::decode(c).ok()).collect()
    }

    /// Saves the configuration changes followed for `realm`, if more than saved.
    pub fn record_config_changes(&self, realm: &str, changes: &[Vec<u8>]) -> Result<(), ClientError> {
        let mut seen = self.lock();
        if seen.config_chains.get(realm).is_some_and(|c| c.len() >= changes.len()) {
            return Ok(());
        }
        seen.config_chains.insert(realm.to_owned(), changes.iter().map(hex::encode).collect());
        self.save(&mut seen)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FileContents> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that a verified answer from `epoch` of `realm` was seen, with `threshold`
    /// verifier ratifications required.
    pub fn observe(&self, realm: &str, threshold: usize, epoch: u64) -> Result<(), ClientError> {
        let mut seen = self.lock();
        let quorum = seen.by_quorum.entry(realm.to_owned()).or_default().entry(threshold).or_insert(0);
        if *quorum >= epoch {
            return Ok(());
        }
        *quorum = epoch;
        let newest = seen.realms.entry(realm.to_owned()).or_insert(epoch);
        *newest = (*newest).max(epoch);
        self.save(&mut seen)
    }

    /// Records that this client's update of `user_id` was applied in `epoch` of `realm`.
    pub fn record_own_update(&self, realm: &str, user_id: &str, epoch: u64) -> Result<(), ClientError> {
        let mut seen = self.lock();
        if seen.realms.get(realm).is_some_and(|&e| e >= epoch) {
            return Ok(());
        }
        let users = seen.own_updates.entry(realm.to_owned()).or_default();
        if users.get(user_id).is_some_and(|&e| e >= epoch) {
            return Ok(());
        }
        users.insert(user_id.to_owned(), epoch);
        self.save(&mut seen)
    }

    fn save(&self, seen: &mut FileContents) -> Result<(), ClientError> {
        seen.forget_seen();
        let Some(path) = &self.path else { return Ok(()) };
        // Another process may share the file: keep the newest of both.
        seen.merge(read_file(path)?);
        seen.version = FORMAT_VERSION;
        write_atomically(path, seen)
    }
}

fn write_atomically(path: &Path, contents: &FileContents) -> Result<(), ClientError> {
    let local = |action| move |source| ClientError::LocalState { path: path.to_owned(), action, source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(local("creating its directory"))?;
    }
    let json = serde_json::to_vec_pretty(contents).map_err(|e| local("writing it")(e.into()))?;
    // Unique per writer: two clients of one process may share the file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let mut file = std::fs::File::create(&tmp).map_err(local("writing it"))?;
    file.write_all(&json).map_err(local("writing it"))?;
    file.sync_all().map_err(local("writing it"))?;
    std::fs::rename(&tmp, path).map_err(local("replacing it"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keeps_the_longest_configuration_chain_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let m = EpochMemory::open(&path).unwrap();
        assert!(m.config_changes("dev").is_empty());
        m.record_config_changes("dev", &[vec![1, 2], vec![3]]).unwrap();
        // A shorter chain (another process that followed less) does not replace it.
        let other = EpochMemory::open(&path).unwrap();
        other.record_config_changes("dev", &[vec![1, 2]]).unwrap();
        other.observe("dev", 1, 9).unwrap();
        let again = EpochMemory::open(&path).unwrap();
        assert_eq!(again.config_changes("dev"), vec![vec![1, 2], vec![3]]);
        assert_eq!(again.newest("dev"), Some(9));
        assert!(again.config_changes("other").is_empty());
    }

    #[test]
    fn remembers_the_newest_epoch_across_instances() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let m = EpochMemory::open(&path).unwrap();
        assert_eq!(m.newest("dev"), None);
        m.observe("dev", 1, 5).unwrap();
        m.observe("dev", 1, 3).unwrap();
        m.observe("other", 1, 1).unwrap();
        assert_eq!(m.newest("dev"), Some(5));
        let again = EpochMemory::open(&path).unwrap();
        assert_eq!(again.newest("dev"), Some(5));
        assert_eq!(again.newest("other"), Some(1));
        // Two writers: neither loses the other's newer epoch.
        let a = EpochMemory::open(&path).unwrap();
        let b = EpochMemory::open(&path).unwrap();
        a.observe("dev", 1, 9).unwrap();
        b.observe("other", 1, 4).unwrap();
        let merged = EpochMemory::open(&path).unwrap();
        assert_eq!(merged.newest("dev"), Some(9));
        assert_eq!(merged.newest("other"), Some(4));
    }

    #[test]
    fn each_quorum_has_the_floor_of_the_epochs_seen_under_it_or_a_higher_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let m = EpochMemory::open(&path).unwrap();
        m.observe("dev", 2, 5).unwrap();
        m.observe("dev", 0, 9).unwrap();
        m.observe("dev", 1, 7).unwrap();
        // Epoch 9 was seen without verifiers: no floor for quorums of 1 or 2.
        assert_eq!(m.floor("dev", 0), Some(9));
        assert_eq!(m.floor("dev", 1), Some(7));
        assert_eq!(m.floor("dev", 2), Some(5));
        assert_eq!(m.floor("dev", 3), None);
        assert_eq!(m.newest("dev"), Some(9));
        let again = EpochMemory::open(&path).unwrap();
        assert_eq!((again.floor("dev", 0), again.floor("dev", 1), again.floor("dev", 2)), (Some(9), Some(7), Some(5)));
    }

    #[test]
    fn epochs_remembered_before_quorums_were_told_apart_count_for_the_realm_files_quorum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, br#"{"version":2,"realms":{"dev":4}}"#).unwrap();
        let m = EpochMemory::open(&path).unwrap();
        assert_eq!(m.floor("dev", 1), None);
        m.adopt_unquorumed("dev", 1);
        assert_eq!((m.floor("dev", 0), m.floor("dev", 1), m.floor("dev", 2)), (Some(4), Some(4), None));
        m.observe("dev", 0, 6).unwrap();
        let again = EpochMemory::open(&path).unwrap();
        again.adopt_unquorumed("dev", 1);
        assert_eq!((again.floor("dev", 0), again.floor("dev", 1)), (Some(6), Some(4)));
    }

    #[test]
    fn a_corrupt_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = EpochMemory::open(&path).unwrap_err();
        assert!(matches!(&err, ClientError::LocalState { path: p, .. } if *p == path), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("corrupt") && err.contains("state.json") && err.contains("this machine"), "{err}");
        std::fs::write(&path, br#"{"version":7,"realms":{}}"#).unwrap();
        let err = EpochMemory::open(&path).unwrap_err();
        assert!(matches!(&err, ClientError::LocalState { .. }), "{err:?}");
        assert!(err.to_string().contains("format version 7"), "{err}");
    }

    /// A state file the disk will not read or write is this machine's fault, with the OS error
    /// kept: never reported as the caller's invalid request, nor as the server's misbehaviour.
    #[test]
    fn a_state_file_that_cannot_be_read_or_written_is_the_local_disks_fault() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, b"a file, not a directory").unwrap();
        let local = |e: &ClientError| match e {
            ClientError::LocalState { path, action, source } => Some((path.clone(), *action, source.kind())),
            _ => None,
        };

        // Unreadable: its path runs through a file.
        let unreadable = blocker.join("state.json");
        let err = EpochMemory::open(&unreadable).unwrap_err();
        let (path, action, _) = local(&err).unwrap_or_else(|| panic!("not a local state error: {err:?}"));
        assert_eq!((path, action), (unreadable.clone(), "reading it"));
        assert!(!err.is_misbehavior() && !err.try_elsewhere());
        assert!(std::error::Error::source(&err).is_some(), "the io::Error is kept as the source");

        // Unwritable: its directory cannot be created.
        let unwritable = blocker.join("sub/state.json");
        let err = write_atomically(&unwritable, &FileContents::default()).unwrap_err();
        let (path, action, _) = local(&err).unwrap_or_else(|| panic!("not a local state error: {err:?}"));
        assert_eq!((path, action), (unwritable, "creating its directory"));

        // A file that goes bad under a running client fails its next write the same way.
        let path = dir.path().join("later/state.json");
        let m = EpochMemory::open(&path).unwrap();
        std::fs::write(dir.path().join("later"), b"now a file").unwrap();
        let err = m.observe("dev", 1, 5).unwrap_err();
        assert!(local(&err).is_some(), "{err:?}");
        assert!(err.to_string().contains("not the realm"), "{err}");
    }

    #[test]
    fn remembers_own_updates_until_their_epoch_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, br#"{"version":1,"realms":{"dev":4}}"#).unwrap();
        let m = EpochMemory::open(&path).unwrap();
        m.record_own_update("dev", "alice", 3).unwrap();
        assert_eq!(m.own_update("dev", "alice"), None, "epoch 3 was already seen");
        m.record_own_update("dev", "alice", 7).unwrap();
        m.record_own_update("dev", "bob", 9).unwrap();
        let again = EpochMemory::open(&path).unwrap();
        assert_eq!(again.own_update("dev", "alice"), Some(7));
        assert_eq!(again.own_update("other", "alice"), None);
        again.observe("dev", 1, 8).unwrap();
        let after = EpochMemory::open(&path).unwrap();
        assert_eq!(after.own_update("dev", "alice"), None);
        assert_eq!(after.own_update("dev", "bob"), Some(9));
        assert_eq!(after.newest("dev"), Some(8));
    }
}
