//! The snapshot file: every key-value pair of the state, checked by a digest.
//!
//! Layout: the magic `keyraft-snapshot-v1\n`, then records `key_len u32 BE, key, value_len u32
//! BE, value` in key order, then the end marker `0xffffffff` and the SHA-256 of everything
//! before the marker. A truncated or altered file fails to load and nothing is installed.
//!
//! `current.json` in the snapshot directory names the current snapshot and its openraft
//! metadata; it is replaced by an atomic rename.

use crate::raft::runtime::SeedableRuntime;
use crate::raft::types::{LogId, NodeAddr, NodeId};
use crate::Error;
use keyraft_storage::{Batch, Direction, Storage};
use openraft::storage::SnapshotMeta;
use rand::Rng as _;
use sha2::{Digest as _, Sha256};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq as _;

/// openraft's snapshot metadata.
pub(crate) type Meta = SnapshotMeta<NodeId, NodeAddr>;

const MAGIC: &[u8] = b"keyraft-snapshot-v1\n";
const END: u32 = u32::MAX;
/// Bytes of one key or value in a snapshot record, at most. A snapshot comes from a peer and
/// its digest is checked only after every record is read, so a claimed length must be bounded
/// before it is trusted. Stored values are tree pages and chunks, updates and heads, all far
/// below this.
pub(crate) const SNAPSHOT_RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Records are loaded in batches of about this many bytes.
const LOAD_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A fresh snapshot id: the log position it covers and a random suffix (two snapshots of one
/// position, built before and after a restart, are told apart by it). The suffix is drawn
/// through openraft's runtime, which a simulation seeds, so a seed's snapshot ids (and the
/// files and log lines named after them) replay exactly too.
pub(crate) fn new_id(last: Option<&LogId>) -> String {
    let suffix: u64 = <SeedableRuntime as openraft::AsyncRuntime>::thread_rng().gen();
    match last {
        Some(l) => format!("{}-{}-{suffix:016x}", l.leader_id.term, l.index),
        None => format!("0-0-{suffix:016x}"),
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn len_u32(n: usize, what: &str, path: &Path) -> Result<u32, Error> {
    u32::try_from(n)
        .ok()
        .filter(|&n| n != END)
        .filter(|&n| n as usize <= SNAPSHOT_RECORD_BYTES_MAX)
        .ok_or_else(|| {
            Error::snapshot(
                path,
                format!("a stored {what} of {n} bytes is longer than SNAPSHOT_RECORD_BYTES_MAX = {SNAPSHOT_RECORD_BYTES_MAX} bytes"),
            )
        })
}

/// Writes every pair of `store` to `path` (synced before returning).
pub(crate) fn write(store: &dyn Storage, path: &Path) -> Result<(), Error> {
    let io = |e| Error::io("writing a snapshot", e);
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let mut w = HashingWriter { inner: BufWriter::with_capacity(1 << 20, file), hasher: Sha256::new() };
    w.write_all(MAGIC).map_err(io)?;
    for item in store.range(&[], None, Direction::Forward) {
        let (k, v) = item?;
        w.write_all(&len_u32(k.len(), "key", path)?.to_be_bytes()).map_err(io)?;
        w.write_all(&k).map_err(io)?;
        w.write_all(&len_u32(v.len(), "value", path)?.to_be_bytes()).map_err(io)?;
        w.write_all(&v).map_err(io)?;
    }
    let digest = w.hasher.finalize();
    let mut inner = w.inner;
    inner.write_all(&END.to_be_bytes()).map_err(io)?;
    inner.write_all(&digest).map_err(io)?;
    let file = inner.into_inner().map_err(|e| Error::io("writing a snapshot", e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

struct HashingReader<'a, R> {
    inner: R,
    hasher: Sha256,
    /// The file, named in every error: a snapshot may come from a peer or a damaged disk.
    path: &'a Path,
}

impl<R: Read> HashingReader<'_, R> {
    fn refused(&self, problem: String) -> Error {
        Error::snapshot(self.path, problem)
    }

    fn truncated(&self, what: &str, e: std::io::Error) -> Error {
        Error::Snapshot {
            file: self.path.to_owned(),
            problem: format!("the file is truncated in {what}"),
            source: Some(Box::new(e)),
        }
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), Error> {
        self.inner.read_exact(buf).map_err(|e| self.truncated(what, e))?;
        self.hasher.update(&*buf);
        Ok(())
    }

    /// A record's key or value of a claimed `len` bytes: refused past
    /// [`SNAPSHOT_RECORD_BYTES_MAX`] before any allocation, and read as the file provides it
    /// (a truncated file never costs more memory than it holds).
    fn record(&mut self, len: u32, what: &str) -> Result<Vec<u8>, Error> {
        let len = len as usize;
        if len > SNAPSHOT_RECORD_BYTES_MAX {
            return Err(self.refused(format!(
                "a record's {what} claims {len} bytes, more than SNAPSHOT_RECORD_BYTES_MAX = {SNAPSHOT_RECORD_BYTES_MAX} bytes \
                 (the sender or the disk is at fault)"
            )));
        }
        let mut buf = Vec::new();
        let read = (&mut self.inner).take(len as u64).read_to_end(&mut buf);
        let read = read.map_err(|e| self.truncated(what, e))?;
        if read != len {
            return Err(self.refused(format!("the file is truncated in a record's {what} ({read} of {len} bytes)")));
        }
        self.hasher.update(&buf);
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        let mut b = [0u8; 4];
        self.inner.read_exact(&mut b).map_err(|e| self.truncated(what, e))?;
        if u32::from_be_bytes(b) != END {
            self.hasher.update(b);
        }
        Ok(u32::from_be_bytes(b))
    }
}

/// Loads the snapshot at `path` into `store` (which should be empty), checking its digest. On
/// error `store` holds a partial state and must be discarded.
pub(crate) fn load(path: &Path, store: &dyn Storage) -> Result<u64, Error> {
    let file =
        std::fs::File::open(path).map_err(|e| Error::io(format!("opening the snapshot {}", path.display()), e))?;
    load_from(BufReader::with_capacity(1 << 20, file), path, store)
}

/// [`load`] from any reader (`path` only names the source in errors): the file loader, and
/// the fuzz target through [`crate::fuzzing`].
pub(crate) fn load_from(input: impl Read, path: &Path, store: &dyn Storage) -> Result<u64, Error> {
    let mut r = HashingReader { inner: input, hasher: Sha256::new(), path };
    let mut magic = vec![0u8; MAGIC.len()];
    r.exact(&mut magic, "the magic")?;
    if magic != MAGIC {
        return Err(r.refused("not a keyraft snapshot (bad magic)".into()));
    }
    let mut batch = Batch::new();
    let mut pairs = 0u64;
    loop {
        let klen = r.u32("a record's key length")?;
        if klen == END {
            break;
        }
        let k = r.record(klen, "key")?;
        let vlen = r.u32("a record's value length")?;
        if vlen == END {
            return Err(r.refused("a snapshot record has no value".into()));
        }
        let v = r.record(vlen, "value")?;
        batch.put(k, v);
        pairs += 1;
        if batch.approximate_bytes() >= LOAD_BATCH_BYTES {
            store.write(std::mem::take(&mut batch))?;
        }
    }
    let expected = r.hasher.clone().finalize();
    let mut digest = [0u8; 32];
    r.inner.read_exact(&mut digest).map_err(|e| r.truncated("the digest", e))?;
    if !bool::from(digest.ct_eq(expected.as_slice())) {
        return Err(r.refused("snapshot digest mismatch: the file is corrupt".into()));
    }
    let mut rest = Vec::new();
    r.inner.read_to_end(&mut rest).map_err(|e| Error::io(format!("reading the snapshot {}", path.display()), e))?;
    if !rest.is_empty() {
        return Err(r.refused(format!("{} bytes after the snapshot digest", rest.len())));
    }
    store.write(batch)?;
    Ok(pairs)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Current {
    meta: SnapshotMeta<NodeId, NodeAddr>,
    file: String,
    /// The last closed epoch in the snapshot (0 in files written before it was recorded).
    #[serde(default)]
    epoch: u64,
}

/// The current snapshot: its openraft metadata, its file and the last epoch it holds.
#[derive(Debug, Clone)]
pub(crate) struct CurrentSnapshot {
    pub meta: Meta,
    pub path: PathBuf,
    pub epoch: u64,
}

/// Records `path`, holding the state up to `epoch`, as the current snapshot and removes older
/// snapshot files.
pub(crate) fn set_current(
    dir: &Path,
    meta: &SnapshotMeta<NodeId, NodeAddr>,
    path: &Path,
    epoch: u64,
) -> Result<(), Error> {
    let io = |e| Error::io("recording the current snapshot", e);
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::snapshot(path, "the snapshot path has no file name".into()))?;
    let json =
        serde_json::to_vec_pretty(&Current { meta: meta.clone(), file: file.to_owned(), epoch }).map_err(|e| {
            Error::Snapshot {
                file: dir.join("current.json"),
                problem: "encoding the snapshot metadata".into(),
                source: Some(Box::new(e)),
            }
        })?;
    let tmp = dir.join("current.json.tmp");
    std::fs::write(&tmp, json).map_err(io)?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, dir.join("current.json")).map_err(io)?;
    for entry in std::fs::read_dir(dir).map_err(io)?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".snap") && name != file {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// The current snapshot, if any.
pub(crate) fn current(dir: &Path) -> Result<Option<CurrentSnapshot>, Error> {
    let bytes = match std::fs::read(dir.join("current.json")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading current.json", e)),
    };
    let current: Current = serde_json::from_slice(&bytes).map_err(|e| Error::Snapshot {
        file: dir.join("current.json"),
        problem: "the file is corrupt (the disk is at fault, or it was edited)".into(),
        source: Some(Box::new(e)),
    })?;
    Ok(Some(CurrentSnapshot { meta: current.meta, path: dir.join(current.file), epoch: current.epoch }))
}

/// Removes partially received snapshots.
pub(crate) fn remove_partial(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".part") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keyraft_storage::{dump_all, MemoryStorage};

    fn sample() -> MemoryStorage {
        let s = MemoryStorage::new();
        let mut b = Batch::new();
        for i in 0u32..500 {
            b.put(format!("key-{i:05}").into_bytes(), vec![i as u8; (i % 40) as usize]);
        }
        s.write(b).unwrap();
        s
    }

    #[test]
    fn round_trips_every_pair() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.snap");
        let src = sample();
        write(&src, &path).unwrap();
        let dst = MemoryStorage::new();
        assert_eq!(load(&path, &dst).unwrap(), 500);
        assert_eq!(dump_all(&src).unwrap(), dump_all(&dst).unwrap());
    }

    #[test]
    fn any_flipped_or_missing_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.snap");
        write(&sample(), &path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let bad = dir.path().join("bad.snap");
        for i in (0..good.len()).step_by(97).chain([good.len() - 1]) {
            let mut b = good.clone();
            b[i] ^= 0x20;
            std::fs::write(&bad, &b).unwrap();
            assert!(load(&bad, &MemoryStorage::new()).is_err(), "flipped byte {i} accepted");
        }
        for cut in [1, 33, good.len() / 2] {
            std::fs::write(&bad, &good[..good.len() - cut]).unwrap();
            assert!(load(&bad, &MemoryStorage::new()).is_err(), "truncation by {cut} accepted");
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&bad, &longer).unwrap();
        assert!(load(&bad, &MemoryStorage::new()).is_err());
    }

    /// A record claiming a length past the bound is refused before anything is allocated
    /// for it, naming the file and the bound; the digest cannot be checked first (it follows
    /// the records), so the length alone must decide.
    #[test]
    fn a_record_claiming_a_huge_length_is_refused_before_allocating_it() {
        let dir = tempfile::tempdir().unwrap();
        for (claim, field) in [(u32::MAX - 1, "key"), (SNAPSHOT_RECORD_BYTES_MAX as u32 + 1, "key")] {
            let path = dir.path().join("huge.snap");
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&claim.to_be_bytes());
            bytes.extend_from_slice(b"only a few bytes follow");
            std::fs::write(&path, &bytes).unwrap();
            let err = load(&path, &MemoryStorage::new()).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::Snapshot { .. }), "{text}");
            assert!(text.contains(&format!("{claim}")) && text.contains(field), "{text}");
            assert!(text.contains("huge.snap"), "the file is not named: {text}");
            assert!(text.contains(&SNAPSHOT_RECORD_BYTES_MAX.to_string()), "the bound is not named: {text}");
        }
        // A value past the bound is refused the same way.
        let path = dir.path().join("huge-value.snap");
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&3u32.to_be_bytes());
        bytes.extend_from_slice(b"key");
        bytes.extend_from_slice(&(u32::MAX - 1).to_be_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let text = load(&path, &MemoryStorage::new()).unwrap_err().to_string();
        assert!(text.contains("value") && text.contains("huge-value.snap"), "{text}");
    }

    /// A truncated record allocates only what the file holds, whatever length it claims.
    #[test]
    fn a_record_within_the_bound_but_truncated_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.snap");
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&(SNAPSHOT_RECORD_BYTES_MAX as u32).to_be_bytes());
        bytes.extend_from_slice(b"abc");
        std::fs::write(&path, &bytes).unwrap();
        let text = load(&path, &MemoryStorage::new()).unwrap_err().to_string();
        assert!(text.contains("truncated") && text.contains("short.snap"), "{text}");
    }
}
