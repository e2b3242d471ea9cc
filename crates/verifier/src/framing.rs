//! Reading a replica's `VerifierStream` frames ahead of the one being checked.

use tokio::sync::mpsc;

/// Frames received ahead of the one being checked, at most (each at most a few MiB).
const FRAMES_AHEAD_MAX: usize = 16;

/// The frames of a stream, received by their own task: the next epoch arrives while this one
/// is checked, instead of waiting in the replica's buffers.
pub(crate) struct ReadAhead {
    pub(crate) rx: mpsc::Receiver<Result<Option<keyraft_proto::pb::VerifierFrame>, tonic::Status>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the read-ahead task in `tasks`; it ends with the stream, or when the [`ReadAhead`] is
/// dropped.
pub(crate) fn read_ahead(
    mut stream: tonic::Streaming<keyraft_proto::pb::VerifierFrame>,
    tasks: &tokio_util::task::TaskTracker,
) -> ReadAhead {
    let (tx, rx) = mpsc::channel(FRAMES_AHEAD_MAX);
    let task = tasks.spawn(async move {
        loop {
            let item = stream.message().await;
            let last = !matches!(item, Ok(Some(_)));
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    });
    ReadAhead { rx, task }
}
