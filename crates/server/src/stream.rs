//! The server-streaming RPCs' shared plumbing (`Watch`, `VerifierStream`): a stream fed by
//! its own task through a bounded channel, a reader that stalls is dropped with an explicit
//! error, a limit on open streams of each kind, and the replica's shutdown.

use crate::node::Node;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;

/// A server stream fed by its own task through a bounded channel: the items, then an
/// explicit RESOURCE_EXHAUSTED if the task gave up on a stalled reader (a silent end would
/// look like a clean close to the reader).
pub struct BoundedStream<T> {
    rx: mpsc::Receiver<Result<T, Status>>,
    stalled: Arc<AtomicBool>,
    stall_message: String,
    finished: bool,
}

impl<T> tokio_stream::Stream for BoundedStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(None) => {
                self.finished = true;
                if self.stalled.load(Ordering::Acquire) {
                    return Poll::Ready(Some(Err(Status::resource_exhausted(self.stall_message.clone()))));
                }
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

/// The task's end of a [`BoundedStream`].
pub(crate) struct StallSender<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    stalled: Arc<AtomicBool>,
    stall_ms: u64,
    what: &'static str,
}

/// The reader is gone: it disconnected, or it stalled and was dropped.
#[derive(Debug)]
pub(crate) struct ReaderGone;

/// A channel of at most `buffered_max` items whose reader is dropped when it accepts none
/// for `stall_ms`; `what` names the stream in the log and in the reader's error, `resume`
/// tells the reader how to continue.
pub(crate) fn bounded<T>(
    what: &'static str,
    buffered_max: usize,
    stall_ms: u64,
    resume: &str,
) -> (StallSender<T>, BoundedStream<T>) {
    let (tx, rx) = mpsc::channel(buffered_max.max(1));
    let stalled = Arc::new(AtomicBool::new(false));
    let stall_message = format!(
        "{what} stream closed by the server: the reader stalled, accepting nothing for {stall_ms} ms \
         (limit set by the replica's operator); {resume}"
    );
    (
        StallSender { tx, stalled: stalled.clone(), stall_ms, what },
        BoundedStream { rx, stalled, stall_message, finished: false },
    )
}

impl<T> StallSender<T> {
    /// Queues `item`, waiting at most the stall limit for room.
    pub(crate) async fn send(&self, item: T) -> Result<(), ReaderGone> {
        match self.tx.send_timeout(Ok(item), Duration::from_millis(self.stall_ms)).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                self.stalled.store(true, Ordering::Release);
                tracing::info!(stall_ms = self.stall_ms, "closing a {} stream whose reader stalled", self.what);
                Err(ReaderGone)
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(ReaderGone),
        }
    }

    /// Ends the stream with `status`, unless the reader is gone or stalled (it then gets the
    /// stall error, or nothing).
    pub(crate) async fn fail(&self, status: Status) {
        let _ = self.tx.send_timeout(Err(status), Duration::from_millis(self.stall_ms)).await;
    }

    /// Completes once the reader is gone.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// One stream of a kind a replica serves a limited number of at once; uncounted when dropped
/// (when the stream's task ends).
pub(crate) struct StreamSlot {
    open: Arc<AtomicUsize>,
}

impl StreamSlot {
    /// Counts a stream against `max` open ones, refusing it with RESOURCE_EXHAUSTED at the
    /// limit; `what` names the streams and their limit for the refusal, and says what to do.
    pub(crate) fn take(open: &Arc<AtomicUsize>, max: usize, what: &str) -> Result<Self, Status> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| Status::resource_exhausted(format!("this replica already serves {max} {what}")))?;
        Ok(Self { open: open.clone() })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Completes once this replica is stopping: its streams end first, so that open streams never
/// hold up its shutdown (the public listener waits for them to end).
pub(crate) async fn replica_stopped(node: &Node) {
    node.tasks.cancelled().await;
}
