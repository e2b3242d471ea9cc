//! A replica's tasks: every task it spawns goes through one [`Tasks`], which names it, tracks
//! it until it ends, and hands it the replica's shutdown token. On shutdown the replica
//! cancels the token and waits for the tracker to empty, so no task outlives [`crate::run`];
//! a task still running at the deadline is named in the log.
//!
//! The tracker is injected ([`crate::server::run_with`]): a simulation running a whole realm
//! in one process passes its own and sees every task of every replica.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Spawns a replica's tasks. Clones share the token, the tracker and the names.
#[derive(Clone, Debug)]
pub struct Tasks {
    token: CancellationToken,
    tracker: TaskTracker,
    /// The tasks running, by name, for the log line of a shutdown that times out.
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

/// Counts a named task as running until dropped, which is when its future ends or is
/// dropped (aborted, or its runtime shut down).
struct Running {
    name: &'static str,
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        tracing::debug!(task = self.name, "task stopped");
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = running.get_mut(self.name) {
            *n -= 1;
            if *n == 0 {
                running.remove(self.name);
            }
        }
    }
}

impl Tasks {
    /// Tasks stopped by `token`, tracked by `tracker`.
    pub fn new(token: CancellationToken, tracker: TaskTracker) -> Self {
        Self { token, tracker, running: Arc::default() }
    }

    /// The token the tasks stop on.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Completes once the tasks are told to stop.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// Whether the tasks were told to stop.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Spawns `task`, named `name` in the log. Long-lived tasks select on [`Tasks::cancelled`].
    pub fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let running = self.count(name);
        self.tracker.spawn(async move {
            let _running = running;
            task.await
        })
    }

    /// `task`, counted as a task named `name` until it ends or is dropped, for a caller that
    /// spawns it itself (into a `JoinSet`, say).
    pub fn track<F: Future>(&self, name: &'static str, task: F) -> impl Future<Output = F::Output> {
        let running = self.count(name);
        self.tracker.track_future(async move {
            let _running = running;
            task.await
        })
    }

    fn count(&self, name: &'static str) -> Running {
        *self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(name).or_default() += 1;
        tracing::debug!(task = name, "task started");
        Running { name, running: self.running.clone() }
    }

    /// The names of the tasks running, with how many of each.
    pub fn running(&self) -> Vec<(&'static str, usize)> {
        let running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        running.iter().map(|(name, n)| (*name, *n)).collect()
    }

    /// Tells every task to stop, closes the tracker and waits up to `deadline` for every task
    /// to end. Returns false, after logging the tasks still running, if some did not.
    pub async fn stop(&self, deadline: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait()).await.is_ok() {
            return true;
        }
        let running = self.running();
        tracing::warn!(
            deadline_ms = deadline.as_millis() as u64,
            tasks = self.tracker.len(),
            ?running,
            "tasks still running after the shutdown deadline; leaving them to the runtime"
        );
        false
    }
}

/// hyper spawns a task per HTTP/2 stream (the request's handler) through its executor; going
/// through [`Tasks`] counts them among the replica's tasks.
impl<F> hyper::rt::Executor<F> for Tasks
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        drop(self.spawn("http2-stream", fut));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_cancels_and_waits_for_every_task() {
        let tasks = Tasks::new(CancellationToken::new(), TaskTracker::new());
        let (t1, t2) = (tasks.clone(), tasks.clone());
        drop(tasks.spawn("loop", async move { t1.cancelled().await }));
        drop(tasks.spawn("loop", async move { t2.cancelled().await }));
        drop(tasks.spawn("once", async {}));
        tokio::task::yield_now().await;
        assert_eq!(tasks.running(), vec![("loop", 2)]);
        assert!(tasks.stop(Duration::from_secs(5)).await);
        assert!(tasks.running().is_empty());
        assert!(tasks.is_cancelled());
    }

    #[tokio::test]
    async fn stop_gives_up_at_the_deadline_and_names_the_stragglers() {
        let tasks = Tasks::new(CancellationToken::new(), TaskTracker::new());
        let stuck = tasks.spawn("stuck", std::future::pending::<()>());
        assert!(!tasks.stop(Duration::from_millis(50)).await);
        assert_eq!(tasks.running(), vec![("stuck", 1)]);
        stuck.abort();
        let _ = stuck.await;
        assert!(tasks.running().is_empty(), "an aborted task still counted");
    }
}
