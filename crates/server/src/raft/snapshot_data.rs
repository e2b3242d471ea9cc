//! A snapshot file as openraft streams it: read in chunks to send it to a follower, written in
//! chunks as a follower receives it.
//!
//! In production the file is tokio's, whose reads, writes and seeks run on the blocking pool
//! so that a slow disk never stalls an async worker. A simulation on one thread in paused time
//! (`ThreadSpawner::none`) cannot have that: a blocking-pool thread finishes when the host
//! lets it, not when the seed says, so the order in which the file's chunks arrived among the
//! other tasks (and, through it, every later step of the run) changed from run to run. There
//! the file is read and written in place, on the simulation's one thread.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// A snapshot file being sent or received.
#[derive(Debug)]
pub struct SnapshotData(Kind);

#[derive(Debug)]
enum Kind {
    /// I/O on tokio's blocking pool.
    Pool(tokio::fs::File),
    /// I/O in place, on the polling thread; `seek` holds the result of a started seek until
    /// it is asked for (`AsyncSeek` splits a seek in two).
    InPlace { file: std::fs::File, seek: Option<std::io::Result<u64>> },
}

impl SnapshotData {
    /// Opens `path` for reading, in place if `in_place`.
    pub(crate) async fn open(path: &Path, in_place: bool) -> std::io::Result<Self> {
        if in_place {
            return Ok(Self(Kind::InPlace { file: std::fs::File::open(path)?, seek: None }));
        }
        Ok(Self(Kind::Pool(tokio::fs::File::open(path).await?)))
    }

    /// Creates `path`, which must not exist, for writing and reading back, in place if
    /// `in_place`.
    pub(crate) async fn create_new(path: &Path, in_place: bool) -> std::io::Result<Self> {
        if in_place {
            let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
            return Ok(Self(Kind::InPlace { file, seek: None }));
        }
        let file = tokio::fs::OpenOptions::new().read(true).write(true).create_new(true).open(path).await?;
        Ok(Self(Kind::Pool(file)))
    }

    /// The file, once every write handed to the pool has finished.
    pub(crate) async fn into_std(self) -> std::fs::File {
        match self.0 {
            Kind::Pool(file) => file.into_std().await,
            Kind::InPlace { file, .. } => file,
        }
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().0 {
            Kind::Pool(file) => Pin::new(file).poll_read(cx, buf),
            Kind::InPlace { file, .. } => {
                let n = file.read(buf.initialize_unfilled())?;
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().0 {
            Kind::Pool(file) => Pin::new(file).poll_write(cx, bytes),
            Kind::InPlace { file, .. } => Poll::Ready(file.write(bytes)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().0 {
            Kind::Pool(file) => Pin::new(file).poll_flush(cx),
            Kind::InPlace { file, .. } => Poll::Ready(file.flush()),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().0 {
            Kind::Pool(file) => Pin::new(file).poll_shutdown(cx),
            Kind::InPlace { file, .. } => Poll::Ready(file.flush()),
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        match &mut self.get_mut().0 {
            Kind::Pool(file) => Pin::new(file).start_seek(position),
            Kind::InPlace { file, seek } => {
                *seek = Some(file.seek(position));
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        match &mut self.get_mut().0 {
            Kind::Pool(file) => Pin::new(file).poll_complete(cx),
            // No seek started: tokio's contract answers the current position.
            Kind::InPlace { file, seek } => Poll::Ready(seek.take().unwrap_or_else(|| file.stream_position())),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

    /// Both kinds write, seek and read back the same bytes, as openraft uses them: chunks
    /// written at offsets into a new file, then read from an offset.
    #[tokio::test]
    async fn both_kinds_write_seek_and_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        for in_place in [false, true] {
            let path = dir.path().join(format!("s-{in_place}.part"));
            let mut data = SnapshotData::create_new(&path, in_place).await.unwrap();
            data.write_all(b"hello ").await.unwrap();
            data.seek(SeekFrom::Start(6)).await.unwrap();
            data.write_all(b"world").await.unwrap();
            data.flush().await.unwrap();
            assert!(SnapshotData::create_new(&path, in_place).await.is_err(), "create_new on an existing file");
            let mut std_file = data.into_std().await;
            let mut all = String::new();
            std_file.seek(SeekFrom::Start(0)).unwrap();
            std_file.read_to_string(&mut all).unwrap();
            assert_eq!(all, "hello world");

            let mut data = SnapshotData::open(&path, in_place).await.unwrap();
            assert_eq!(data.seek(SeekFrom::Start(6)).await.unwrap(), 6);
            assert_eq!(data.stream_position().await.unwrap(), 6);
            let mut rest = Vec::new();
            data.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"world");
        }
    }
}
