//! Online backup and restore of a replica's state.
//!
//! **Backup** (`keyraft admin backup`, the peer service's admin call `Backup`): the replica
//! builds a Raft snapshot (apply pauses while the state is dumped, as for every snapshot, so
//! the dump is the state at one log position), then streams it: a header (realm, epoch, log
//! position, openraft's metadata, size), the snapshot file in chunks of
//! [`BACKUP_CHUNK_BYTES`], and a trailer with the SHA-256 of the bytes sent. One backup runs at
//! a time per replica; updates go on meanwhile.
//!
//! **The backup file** ([`receive`] writes it, atomically):
//!
//! ```text
//! "keyraft-backup-v1\n"
//! the snapshot file (BackupHeader.snapshot_bytes bytes; itself closed by its own SHA-256)
//! BackupHeader as JSON
//! u32 big-endian: the JSON's length
//! 32 bytes: SHA-256 of every byte before these 32
//! ```
//!
//! **Restore** (`keyraft restore FILE --data-dir D`, [`restore`]): checks the file's digest,
//! then installs the snapshot into a new data directory exactly as a replica installs one it
//! received from its leader (the snapshot's own digest checked again, the state opened with
//! the realm's genesis configuration from the header). The directory holds no Raft log and no
//! vote: started as a new node id and added as a learner, the node takes the log from the
//! snapshot's position on (or a newer snapshot) and catches up.

use crate::config::EngineKind;
use crate::node::Node;
use crate::raft::sm_store::{StateLocation, StateMachineStore};
use crate::snapshot_file::{self, Meta};
use keyraft_core::{decode_canonical, Canonical as _, RealmConfig};
use keyraft_proto::peer::{backup_chunk::Part, BackupChunk, BackupHeader as WireHeader, BackupTrailer};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

/// The first bytes of a backup file.
pub const BACKUP_MAGIC: &[u8] = b"keyraft-backup-v1\n";
/// Bytes of snapshot per streamed chunk, at most.
pub const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;
/// How long a backup waits for its snapshot to be built.
pub const BACKUP_SNAPSHOT_WAIT_MS: u64 = 300_000;
/// The JSON header's size, at most (it holds the membership and the realm configuration).
const HEADER_BYTES_MAX: usize = 4 * 1024 * 1024;
/// The footer after the header: its length and the digest.
const FOOTER_FIXED_BYTES: usize = 4 + 32;

/// What a backup file says about itself (the JSON near its end).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackupHeader {
    /// 1.
    pub format: u32,
    /// The realm's name.
    pub realm: String,
    /// The replica that made the backup.
    pub node_id: u64,
    /// The last closed epoch in the snapshot.
    pub epoch: u64,
    /// The Raft log index the snapshot covers (0 for an empty state).
    pub last_log_index: u64,
    /// The term of that log entry.
    pub last_log_term: u64,
    /// openraft's snapshot metadata, as the replica stored it.
    pub snapshot_meta: serde_json::Value,
    /// Length of the snapshot file in the backup.
    pub snapshot_bytes: u64,
    /// SHA-256 of the snapshot file, hex.
    pub snapshot_sha256: String,
    /// The realm's genesis configuration, canonical `RealmConfig` bytes in hex.
    pub realm_config: String,
}

impl BackupHeader {
    fn meta(&self) -> Result<Meta, String> {
        serde_json::from_value(self.snapshot_meta.clone()).map_err(|e| format!("snapshot_meta: {e}"))
    }

    fn config(&self) -> Result<RealmConfig, String> {
        let bytes = hex::decode(&self.realm_config).map_err(|e| format!("realm_config: {e}"))?;
        decode_canonical::<RealmConfig>(&bytes).map_err(|e| format!("realm_config: {e}"))
    }
}

/// A backup or restore that failed, and whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The replica refused or failed the call.
    #[error("the replica refused the backup: {}: {}", .0.code(), .0.message())]
    Call(Status),
    /// The replica's stream broke its own rules (a defect or corruption on its side or on
    /// the way).
    #[error("the replica's backup stream is unusable: {0}")]
    Stream(String),
    /// A backup file is not one, is damaged or truncated.
    #[error("{}: not a usable backup: {problem}", file.display())]
    File {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// This machine's disk: a file or directory could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The target data directory is not empty.
    #[error("{}: the data directory must be new or empty (a restore never overwrites a replica's data)", .0.display())]
    NotEmpty(PathBuf),
    /// Installing the snapshot failed.
    #[error("installing the snapshot: {0}")]
    Install(#[from] crate::Error),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let context = context.into();
    move |source| BackupError::Io { context, source }
}

/// The stream of a backup call.
pub(crate) type BackupStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<BackupChunk, Status>> + Send>>;

/// One backup at a time per replica: the flag is down again when the stream ends.
#[derive(Debug, Default, Clone)]
pub(crate) struct BackupSlot(Arc<AtomicBool>);

struct Taken(Arc<AtomicBool>);

impl Drop for Taken {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl BackupSlot {
    fn take(&self) -> Result<Taken, Status> {
        if self.0.swap(true, Ordering::AcqRel) {
            return Err(Status::resource_exhausted("a backup of this replica is already running; retry once it ends"));
        }
        Ok(Taken(self.0.clone()))
    }
}

/// Serves a backup call: builds a snapshot covering everything `node` has applied, then
/// streams it (see the module's documentation).
pub(crate) async fn serve(node: &Node, snapshot_dir: &Path, slot: &BackupSlot) -> Result<BackupStream, Status> {
    let taken = slot.take()?;
    let target = node.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
    node.raft.trigger().snapshot().await.map_err(|e| Status::unavailable(format!("raft stopped: {e}")))?;
    let mut metrics = node.raft.metrics();
    let built = tokio::time::timeout(
        Duration::from_millis(BACKUP_SNAPSHOT_WAIT_MS),
        metrics.wait_for(|m| m.snapshot.is_some_and(|s| s.index >= target)),
    )
    .await;
    match built {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return Err(Status::unavailable("raft stopped while the snapshot was built")),
        Err(_) => {
            return Err(Status::deadline_exceeded(format!(
                "no snapshot up to log index {target} within {BACKUP_SNAPSHOT_WAIT_MS} ms (see this replica's log)"
            )))
        }
    }
    let current = snapshot_file::current(snapshot_dir)
        .map_err(|e| Status::internal(format!("reading the current snapshot: {e}")))?
        .ok_or_else(|| Status::internal("a snapshot was built but none is recorded as current"))?;
    // Opened now: a newer snapshot may replace the file, and an open file stays readable.
    let file = std::fs::File::open(&current.path)
        .map_err(|e| Status::internal(format!("opening snapshot {}: {e}", current.path.display())))?;
    let snapshot_bytes = file.metadata().map_err(|e| Status::internal(format!("snapshot size: {e}")))?.len();
    let header = WireHeader {
        realm: node.realm.realm.clone(),
        node_id: node.id,
        snapshot_meta: serde_json::to_vec(&current.meta).map_err(|e| Status::internal(e.to_string()))?,
        epoch: current.epoch,
        snapshot_bytes,
        realm_config: node.realm.encode(),
    };
    tracing::info!(
        epoch = current.epoch,
        last_log = ?current.meta.last_log_id,
        snapshot_bytes,
        "streaming a backup"
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<BackupChunk, Status>>(4);
    tokio::task::spawn_blocking(move || {
        let _taken = taken;
        send_file(file, header, &tx);
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// Sends the header, the file in chunks and the trailer; stops when the reader is gone.
fn send_file(mut file: std::fs::File, header: WireHeader, tx: &tokio::sync::mpsc::Sender<Result<BackupChunk, Status>>) {
    let send = |part: Part| tx.blocking_send(Ok(BackupChunk { part: Some(part) })).is_ok();
    if !send(Part::Header(header)) {
        return;
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BACKUP_CHUNK_BYTES];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(format!("reading the snapshot: {e}"))));
                return;
            }
        };
        hasher.update(&buf[..n]);
        if !send(Part::Data(buf[..n].to_vec())) {
            tracing::info!("the backup's reader left before the end");
            return;
        }
    }
    send(Part::Trailer(BackupTrailer { snapshot_sha256: hasher.finalize().to_vec() }));
}

/// Writes the backup streamed by `chunks` to `out` (through a temporary file beside it,
/// synced, then renamed: `out` is whole or absent) and returns its header.
pub async fn receive<S>(chunks: S, out: &Path) -> Result<BackupHeader, BackupError>
where
    S: tokio_stream::Stream<Item = Result<BackupChunk, Status>> + Unpin,
{
    let tmp = out.with_extension("partial");
    let received = receive_into(chunks, &tmp, out).await;
    if received.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    received
}

async fn receive_into<S>(mut chunks: S, tmp: &Path, out: &Path) -> Result<BackupHeader, BackupError>
where
    S: tokio_stream::Stream<Item = Result<BackupChunk, Status>> + Unpin,
{
    use tokio_stream::StreamExt as _;
    let bad = |why: &str| BackupError::Stream(why.to_owned());
    let first = chunks.next().await.ok_or_else(|| bad("it ended before its header"))?.map_err(BackupError::Call)?;
    let Some(Part::Header(wire)) = first.part else { return Err(bad("it did not start with its header")) };
    let meta: Meta =
        serde_json::from_slice(&wire.snapshot_meta).map_err(|e| BackupError::Stream(format!("snapshot_meta: {e}")))?;
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(tmp).map_err(io(format!("creating {}", tmp.display())))?);
    let write = |file: &mut std::io::BufWriter<std::fs::File>, bytes: &[u8], whole: &mut Sha256| {
        whole.update(bytes);
        file.write_all(bytes).map_err(io(format!("writing {}", tmp.display())))
    };
    let mut whole = Sha256::new();
    let mut snapshot = Sha256::new();
    let mut received = 0u64;
    write(&mut file, BACKUP_MAGIC, &mut whole)?;
    let trailer = loop {
        let chunk =
            chunks.next().await.ok_or_else(|| bad("it ended before its trailer"))?.map_err(BackupError::Call)?;
        match chunk.part {
            Some(Part::Data(data)) => {
                received += data.len() as u64;
                if received > wire.snapshot_bytes {
                    return Err(BackupError::Stream(format!("more than the {} bytes announced", wire.snapshot_bytes)));
                }
                snapshot.update(&data);
                write(&mut file, &data, &mut whole)?;
            }
            Some(Part::Trailer(trailer)) => break trailer,
            Some(Part::Header(_)) | None => return Err(bad("a second header, or an empty chunk")),
        }
    };
    let digest = snapshot.finalize();
    if received != wire.snapshot_bytes || trailer.snapshot_sha256 != digest.as_slice() {
        return Err(BackupError::Stream(format!(
            "{received} bytes received of {} announced, or their SHA-256 differs from the trailer's",
            wire.snapshot_bytes
        )));
    }
    let header = BackupHeader {
        format: 1,
        realm: wire.realm,
        node_id: wire.node_id,
        epoch: wire.epoch,
        last_log_index: meta.last_log_id.map_or(0, |l| l.index),
        last_log_term: meta.last_log_id.map_or(0, |l| l.leader_id.term),
        snapshot_meta: serde_json::to_value(&meta).map_err(|e| BackupError::Stream(e.to_string()))?,
        snapshot_bytes: received,
        snapshot_sha256: hex::encode(digest),
        realm_config: hex::encode(&wire.realm_config),
    };
    header.config().map_err(BackupError::Stream)?;
    let json = serde_json::to_vec(&header).map_err(|e| BackupError::Stream(e.to_string()))?;
    write(&mut file, &json, &mut whole)?;
    let len = u32::try_from(json.len()).map_err(|_| bad("a header over 4 GiB"))?;
    write(&mut file, &len.to_be_bytes(), &mut whole)?;
    file.write_all(&whole.finalize()).map_err(io(format!("writing {}", tmp.display())))?;
    let file = file
        .into_inner()
        .map_err(|e| BackupError::Io { context: format!("writing {}", tmp.display()), source: e.into_error() })?;
    file.sync_all().map_err(io(format!("syncing {}", tmp.display())))?;
    std::fs::rename(tmp, out).map_err(io(format!("renaming {} to {}", tmp.display(), out.display())))?;
    Ok(header)
}

/// Checks backup file `path` end to end (its digest, then its header) and returns the header.
pub fn check(path: &Path) -> Result<BackupHeader, BackupError> {
    let mut file = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let len = file.metadata().map_err(io(format!("reading {}", path.display())))?.len();
    check_from(&mut file, len, path)
}

/// [`check`] of the `len` bytes of `file`, named `path` in errors.
pub(crate) fn check_from(file: &mut (impl Read + Seek), len: u64, path: &Path) -> Result<BackupHeader, BackupError> {
    let damaged = |problem: String| BackupError::File { file: path.to_owned(), problem };
    let fixed = (BACKUP_MAGIC.len() + FOOTER_FIXED_BYTES) as u64;
    if len < fixed {
        return Err(damaged(format!("{len} bytes, too short for a backup")));
    }
    let mut magic = vec![0u8; BACKUP_MAGIC.len()];
    file.read_exact(&mut magic).map_err(io(format!("reading {}", path.display())))?;
    if magic != BACKUP_MAGIC {
        return Err(damaged("it does not start with \"keyraft-backup-v1\"".into()));
    }
    // The digest over everything before the last 32 bytes.
    file.seek(SeekFrom::Start(0)).map_err(io(format!("reading {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut limited = (&mut *file).take(len - 32);
    std::io::copy(&mut limited, &mut hasher).map_err(io(format!("reading {}", path.display())))?;
    let mut stored = [0u8; 32];
    file.read_exact(&mut stored).map_err(io(format!("reading {}", path.display())))?;
    if hasher.finalize().as_slice() != stored {
        return Err(damaged("its SHA-256 does not match: the file is damaged or truncated".into()));
    }
    file.seek(SeekFrom::Start(len - FOOTER_FIXED_BYTES as u64)).map_err(io(format!("reading {}", path.display())))?;
    let mut len_bytes = [0u8; 4];
    file.read_exact(&mut len_bytes).map_err(io(format!("reading {}", path.display())))?;
    let json_len = u32::from_be_bytes(len_bytes) as usize;
    if json_len > HEADER_BYTES_MAX || json_len as u64 > len - fixed {
        return Err(damaged(format!("a header of {json_len} bytes")));
    }
    file.seek(SeekFrom::Start(len - (FOOTER_FIXED_BYTES + json_len) as u64))
        .map_err(io(format!("reading {}", path.display())))?;
    let mut json = vec![0u8; json_len];
    file.read_exact(&mut json).map_err(io(format!("reading {}", path.display())))?;
    let header: BackupHeader = serde_json::from_slice(&json).map_err(|e| damaged(format!("its header: {e}")))?;
    if header.format != 1 {
        return Err(damaged(format!("format {} (this build reads format 1)", header.format)));
    }
    if header.snapshot_bytes != len - fixed - json_len as u64 {
        return Err(damaged("its header's snapshot_bytes does not match the file's length".into()));
    }
    header.meta().map_err(damaged)?;
    header.config().map_err(damaged)?;
    Ok(header)
}

/// Creates the data directory `data_dir` (new or empty) from backup file `path`: the state
/// and the current snapshot, as a replica has them after installing a snapshot from its
/// leader, in databases of `engine` (the new node's `storage.engine`). Returns the backup's
/// header.
pub fn restore(path: &Path, data_dir: &Path, engine: EngineKind) -> Result<BackupHeader, BackupError> {
    let header = check(path)?;
    let damaged = |problem: String| BackupError::File { file: path.to_owned(), problem };
    let meta = header.meta().map_err(damaged)?;
    let config = header.config().map_err(damaged)?;
    if let Ok(mut entries) = std::fs::read_dir(data_dir) {
        if entries.next().is_some() {
            return Err(BackupError::NotEmpty(data_dir.to_owned()));
        }
    }
    std::fs::create_dir_all(data_dir).map_err(io(format!("creating {}", data_dir.display())))?;
    let installed = install(path, data_dir, &header, &meta, config, engine);
    if installed.is_err() {
        // The directory was empty: leave it so, not half restored.
        for made in ["state", "snapshots"] {
            let _ = std::fs::remove_dir_all(data_dir.join(made));
        }
    }
    installed.map(|()| header)
}

/// Installs the snapshot of backup `path` (described by `header` and `meta`) into the empty
/// `data_dir`.
fn install(
    path: &Path,
    data_dir: &Path,
    header: &BackupHeader,
    meta: &Meta,
    config: RealmConfig,
    engine: EngineKind,
) -> Result<(), BackupError> {
    let damaged = |problem: String| BackupError::File { file: path.to_owned(), problem };
    let snapshots = data_dir.join("snapshots");
    let storage = crate::config::StorageSettings { engine, ..crate::config::StorageSettings::default() };
    let location = StateLocation::Dir { path: data_dir.join("state"), engine: storage.state_engine() };
    let mut store = StateMachineStore::open(location, snapshots.clone(), config)?;
    // The snapshot's bytes, out of the backup, as a received snapshot would be.
    let part = snapshots.join("restore.part");
    {
        let mut from = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
        from.seek(SeekFrom::Start(BACKUP_MAGIC.len() as u64)).map_err(io(format!("reading {}", path.display())))?;
        let mut to = std::fs::File::create(&part).map_err(io(format!("creating {}", part.display())))?;
        let copied = std::io::copy(&mut from.take(header.snapshot_bytes), &mut to)
            .map_err(io(format!("copying the snapshot to {}", part.display())))?;
        if copied != header.snapshot_bytes {
            return Err(damaged("it is shorter than its header says".into()));
        }
    }
    let mut received = std::fs::File::open(&part).map_err(io(format!("opening {}", part.display())))?;
    store.install(meta, &mut received)?;
    drop(received);
    let _ = std::fs::remove_file(&part);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_that_breaks_its_rules_writes_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("b.backup");
        let wire = WireHeader {
            snapshot_meta: serde_json::to_vec(&Meta::default()).unwrap(),
            snapshot_bytes: 3,
            ..Default::default()
        };
        let chunk = |part| Ok(BackupChunk { part: Some(part) });
        // Data before the header.
        let e = receive(tokio_stream::iter(vec![chunk(Part::Data(vec![1]))]), &out).await.unwrap_err();
        assert!(e.to_string().contains("did not start with its header"), "{e}");
        // Cut short: no trailer.
        let e = receive(
            tokio_stream::iter(vec![chunk(Part::Header(wire.clone())), chunk(Part::Data(vec![1, 2, 3]))]),
            &out,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("before its trailer"), "{e}");
        // A trailer whose digest differs.
        let parts = vec![
            chunk(Part::Header(wire)),
            chunk(Part::Data(vec![1, 2, 3])),
            chunk(Part::Trailer(BackupTrailer { snapshot_sha256: vec![0; 32] })),
        ];
        let e = receive(tokio_stream::iter(parts), &out).await.unwrap_err();
        assert!(e.to_string().contains("SHA-256"), "{e}");
        assert!(!out.exists());
        assert!(!out.with_extension("partial").exists(), "no partial file is left");
    }
}
