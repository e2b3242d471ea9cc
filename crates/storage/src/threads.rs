//! How the threads that write a store behind their owner's back (the Raft log's flusher, the
//! verifier's writer) are started and joined.
//!
//! Their owners start them through a [`ThreadSpawner`]: the operating system's threads by
//! default; a simulation that runs a whole realm in one process substitutes its own, so that
//! it knows every thread and decides when each runs. An owner keeps the [`ThreadHandle`] and
//! joins it when it closes: no such thread outlives its owner.

use std::fmt;
use std::sync::Arc;

/// What a thread runs.
pub type ThreadBody = Box<dyn FnOnce() + Send + 'static>;

type Spawn = dyn Fn(&str, ThreadBody) -> std::io::Result<ThreadHandle> + Send + Sync;

/// Starts named threads. Clones share the spawning function.
#[derive(Clone)]
pub struct ThreadSpawner {
    spawn: Arc<Spawn>,
    in_place: bool,
}

impl ThreadSpawner {
    /// A spawner that starts threads with `spawn(name, body)`.
    pub fn new(spawn: impl Fn(&str, ThreadBody) -> std::io::Result<ThreadHandle> + Send + Sync + 'static) -> Self {
        Self { spawn: Arc::new(spawn), in_place: false }
    }

    /// No threads at all: [`spawn`](Self::spawn) refuses, so owners do their background
    /// work in place, and [`in_place`](Self::in_place) tells them to run their blocking work
    /// (storage reads, scans) in place too rather than on the async runtime's blocking pool. A
    /// simulation on one thread in paused time runs this way: every step happens on its one
    /// thread, in an order its seed decides, and time never moves while work is under way.
    pub fn none() -> Self {
        let refuse = |name: &str, _body: ThreadBody| -> std::io::Result<ThreadHandle> {
            Err(std::io::Error::other(format!("this process starts no threads ({name} runs in place)")))
        };
        Self { spawn: Arc::new(refuse), in_place: true }
    }

    /// Whether blocking work runs in place, on the caller's thread ([`none`](Self::none)).
    pub fn in_place(&self) -> bool {
        self.in_place
    }

    /// Starts a thread named `name` running `body`.
    ///
    /// # Errors
    /// The spawning function's, such as the operating system refusing another thread.
    pub fn spawn(&self, name: &str, body: impl FnOnce() + Send + 'static) -> std::io::Result<ThreadHandle> {
        (self.spawn)(name, Box::new(body))
    }
}

impl Default for ThreadSpawner {
    /// The operating system's threads.
    fn default() -> Self {
        Self::new(|name, body| {
            let handle = std::thread::Builder::new().name(name.to_owned()).spawn(body)?;
            Ok(ThreadHandle::new(name, move || handle.join().map_err(|panic| panic_message(&*panic))))
        })
    }
}

impl fmt::Debug for ThreadSpawner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ThreadSpawner")
    }
}

type Join = Box<dyn FnOnce() -> Result<(), String> + Send + Sync>;

/// A started thread, joined with [`ThreadHandle::join`].
pub struct ThreadHandle {
    name: String,
    join: Join,
}

impl ThreadHandle {
    /// The handle of the thread `name`, which `join` waits for; `join` returns the panic's
    /// message if the thread panicked.
    pub fn new(name: &str, join: impl FnOnce() -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self { name: name.to_owned(), join: Box::new(join) }
    }

    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for the thread to end.
    ///
    /// # Errors
    /// The panic's message, if the thread panicked.
    pub fn join(self) -> Result<(), String> {
        (self.join)()
    }
}

impl fmt::Debug for ThreadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadHandle").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Operating-system threads, counted as they start and end: tests check with it that an owner
/// joins its threads.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone, Default)]
pub struct CountedThreads {
    started: Arc<std::sync::atomic::AtomicUsize>,
    ended: Arc<std::sync::atomic::AtomicUsize>,
}

#[cfg(any(test, feature = "testing"))]
impl CountedThreads {
    /// A spawner whose threads this counts.
    pub fn spawner(&self) -> ThreadSpawner {
        let (started, ended) = (self.started.clone(), self.ended.clone());
        ThreadSpawner::new(move |name, body| {
            started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let ended = ended.clone();
            ThreadSpawner::default().spawn(name, move || {
                // Counted even if the body panics.
                struct Ended(Arc<std::sync::atomic::AtomicUsize>);
                impl Drop for Ended {
                    fn drop(&mut self) {
                        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                let _ended = Ended(ended);
                body();
            })
        })
    }

    /// Threads started so far.
    pub fn started(&self) -> usize {
        self.started.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Threads started and not yet ended.
    pub fn running(&self) -> usize {
        let ended = self.ended.load(std::sync::atomic::Ordering::SeqCst);
        self.started().saturating_sub(ended)
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn the_default_spawner_runs_the_body_on_a_named_thread_and_join_waits_for_it() {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let handle = ThreadSpawner::default()
            .spawn("keyraft-test", move || {
                assert_eq!(std::thread::current().name(), Some("keyraft-test"));
                std::thread::sleep(std::time::Duration::from_millis(20));
                flag.store(true, Ordering::SeqCst);
            })
            .map_err(|e| e.to_string());
        assert_eq!(handle.as_ref().map(ThreadHandle::name), Ok("keyraft-test"));
        assert_eq!(handle.and_then(ThreadHandle::join), Ok(()));
        assert!(ran.load(Ordering::SeqCst), "join returned before the body ended");
    }

    #[test]
    fn none_refuses_every_thread_and_asks_for_work_in_place() {
        let none = ThreadSpawner::none();
        assert!(none.in_place());
        assert!(!ThreadSpawner::default().in_place());
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let refused = none.spawn("keyraft-test", move || flag.store(true, Ordering::SeqCst));
        assert!(refused.is_err_and(|e| e.to_string().contains("keyraft-test")));
        assert!(!ran.load(Ordering::SeqCst), "a refused body must not run");
    }

    #[test]
    fn a_panic_is_reported_by_join() {
        let handle = ThreadSpawner::default().spawn("keyraft-test-panic", || panic!("the disk is on fire"));
        assert_eq!(handle.map_err(|e| e.to_string()).and_then(ThreadHandle::join), Err("the disk is on fire".into()));
    }
}
