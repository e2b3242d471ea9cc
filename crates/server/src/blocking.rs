//! Work that blocks a thread (storage reads and writes, epoch closes), kept off the runtime's
//! async workers so that it never stalls the lookups and heartbeats sharing them.

use keyraft_storage::ThreadSpawner;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tonic::Status;

/// Runs `f`, which blocks, in place. On a multi-threaded runtime the worker's other tasks are
/// handed to another thread first; on a current-thread runtime (an embedding test or tool)
/// there is no other thread to hand them to, and `f` simply runs (`block_in_place` would
/// panic there).
pub(crate) fn in_place<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Storage reads run on tokio's blocking threads, at most `limits.storage_reads_max` at once:
/// a burst of large listings queues here instead of occupying every blocking thread or every
/// async worker.
#[derive(Clone, Debug)]
pub(crate) struct Readers {
    permits: Arc<Semaphore>,
    /// Reads run on the caller's thread (`ThreadSpawner::none`: a simulation on one thread).
    in_place: bool,
}

impl Readers {
    /// At most `reads_max` reads at once, on tokio's blocking threads, or in place where
    /// `threads` starts none.
    pub(crate) fn new(reads_max: usize, threads: &ThreadSpawner) -> Self {
        Self { permits: Arc::new(Semaphore::new(reads_max.max(1))), in_place: threads.in_place() }
    }

    /// Runs `read` on a blocking thread once a permit is free. A caller that goes away while
    /// waiting for a permit costs nothing; one that goes away during the read lets it finish
    /// (a read is bounded by its page size).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("this replica is shutting down"))?;
        if self.in_place {
            let _permit = permit;
            return read();
        }
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            read()
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "a storage read task failed");
            Status::internal(format!("this replica failed to read its state: the read task failed: {e}"))
        })?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    /// Reads beyond the limit wait for a permit: never more than `reads_max` run at once,
    /// and all of them finish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_reads_max_reads_run_at_once() {
        let readers = Readers::new(2, &ThreadSpawner::default());
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        // The first two reads wait for each other, so two surely run at once at some point;
        // the others never block, so the one that waits first always gets its partner.
        let both = Arc::new(Barrier::new(2));
        let mut reads = Vec::new();
        for i in 0..8 {
            let (readers, running, peak, both) = (readers.clone(), running.clone(), peak.clone(), both.clone());
            reads.push(tokio::spawn(async move {
                readers
                    .run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        if i < 2 {
                            both.wait();
                        }
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(i)
                    })
                    .await
            }));
        }
        let mut done = Vec::new();
        for r in reads {
            done.push(r.await.unwrap().unwrap());
        }
        assert_eq!(done, (0..8).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn in_place_runs_without_a_runtime_and_on_a_current_thread_one() {
        assert_eq!(in_place(|| 1), 1);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(rt.block_on(async { in_place(|| 2) }), 2);
    }
}
