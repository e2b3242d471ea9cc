//! The snapshot file: every key-value pair of the state, checked by a digest.
//!
//! Layout: the magic `keyraft-snapshot-v1\n`, then records `key_len u32 BE, key, value_len u32
//! BE, value` in key order, then the end marker `0xffffffff` and the SHA-256 of everything
//! before the marker. A truncated or altered file fails to load and nothing is installed.
//!
//! `current.json` in the snapshot directory names the current snapshot and its openraft
//! metadata; it is replaced by an atomic rename.

use crate::raft::types::{LogId, NodeAddr, NodeId};
use crate::Error;
use keyraft_storage::{Batch, Direction, Storage};
use openraft::storage::SnapshotMeta;
use sha2::{Digest as _, Sha256};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// openraft's snapshot metadata.
pub(crate) type Meta = SnapshotMeta<NodeId, NodeAddr>;

const MAGIC: &[u8] = b"keyraft-snapshot-v1\n";
const END: u32 = u32::MAX;
/// Records are loaded in batches of about this many bytes.
const LOAD_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A fresh snapshot id: the log position it covers and a random suffix.
pub(crate) fn new_id(last: Option<&LogId>) -> String {
    let suffix: u64 = rand::random();
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

fn len_u32(n: usize, what: &str) -> Result<u32, Error> {
    u32::try_from(n)
        .ok()
        .filter(|&n| n != END)
        .ok_or_else(|| Error::Snapshot(format!("{what} of {n} bytes is too long")))
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
        w.write_all(&len_u32(k.len(), "key")?.to_be_bytes()).map_err(io)?;
        w.write_all(&k).map_err(io)?;
        w.write_all(&len_u32(v.len(), "value")?.to_be_bytes()).map_err(io)?;
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

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        self.inner.read_exact(buf).map_err(|e| Error::Snapshot(format!("snapshot file is truncated: {e}")))?;
        self.hasher.update(&*buf);
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, Error> {
        let mut b = [0u8; 4];
        self.inner.read_exact(&mut b).map_err(|e| Error::Snapshot(format!("snapshot file is truncated: {e}")))?;
        if u32::from_be_bytes(b) != END {
            self.hasher.update(b);
        }
        Ok(u32::from_be_bytes(b))
    }
}

/// Loads the snapshot at `path` into `store` (which should be empty), checking its digest. On
/// error `store` holds a partial state and must be discarded.
pub(crate) fn load(path: &Path, store: &dyn Storage) -> Result<u64, Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("opening a snapshot", e))?;
    let mut r = HashingReader { inner: BufReader::with_capacity(1 << 20, file), hasher: Sha256::new() };
    let mut magic = vec![0u8; MAGIC.len()];
    r.exact(&mut magic)?;
    if magic != MAGIC {
        return Err(Error::Snapshot("not a keyraft snapshot (bad magic)".into()));
    }
    let mut batch = Batch::new();
    let mut pairs = 0u64;
    loop {
        let klen = r.u32()?;
        if klen == END {
            break;
        }
        let mut k = vec![0u8; klen as usize];
        r.exact(&mut k)?;
        let vlen = r.u32()?;
        if vlen == END {
            return Err(Error::Snapshot("snapshot record has no value".into()));
        }
        let mut v = vec![0u8; vlen as usize];
        r.exact(&mut v)?;
        batch.put(k, v);
        pairs += 1;
        if batch.approximate_bytes() >= LOAD_BATCH_BYTES {
            store.write(std::mem::take(&mut batch))?;
        }
    }
    let expected = r.hasher.finalize();
    let mut digest = [0u8; 32];
    r.inner.read_exact(&mut digest).map_err(|e| Error::Snapshot(format!("snapshot digest is truncated: {e}")))?;
    if digest[..] != expected[..] {
        return Err(Error::Snapshot("snapshot digest mismatch: the file is corrupt".into()));
    }
    let mut rest = Vec::new();
    r.inner.read_to_end(&mut rest).map_err(|e| Error::io("reading a snapshot", e))?;
    if !rest.is_empty() {
        return Err(Error::Snapshot(format!("{} bytes after the snapshot digest", rest.len())));
    }
    store.write(batch)?;
    Ok(pairs)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Current {
    meta: SnapshotMeta<NodeId, NodeAddr>,
    file: String,
}

/// Records `path` as the current snapshot and removes older snapshot files.
pub(crate) fn set_current(dir: &Path, meta: &SnapshotMeta<NodeId, NodeAddr>, path: &Path) -> Result<(), Error> {
    let io = |e| Error::io("recording the current snapshot", e);
    let file = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| Error::Snapshot("bad snapshot path".into()))?;
    let json = serde_json::to_vec_pretty(&Current { meta: meta.clone(), file: file.to_owned() })
        .map_err(|e| Error::Snapshot(e.to_string()))?;
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

/// The current snapshot's metadata and file, if any.
pub(crate) fn current(dir: &Path) -> Result<Option<(Meta, PathBuf)>, Error> {
    let bytes = match std::fs::read(dir.join("current.json")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading current.json", e)),
    };
    let current: Current =
        serde_json::from_slice(&bytes).map_err(|e| Error::Snapshot(format!("current.json is corrupt: {e}")))?;
    Ok(Some((current.meta, dir.join(current.file))))
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
}
