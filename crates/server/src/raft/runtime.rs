//! openraft's async runtime: Tokio, except that the randomness openraft draws can come from
//! a seeded generator, so that a simulation replays the same elections.
//!
//! openraft 0.9 draws through `AsyncRuntime::thread_rng()`, an associated function without
//! a receiver: the seed cannot travel in a value, so it travels in a Tokio task-local that
//! [`with_seed`] sets around `Raft::new` and [`SeedableRuntime::spawn`] carries into every
//! task openraft spawns. In 0.9.25 the only draw is the election timeout, once, inside
//! `Raft::new`; later versions that draw in the core's tasks get the seed there too.

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};
use rand::rngs::{StdRng, ThreadRng};
use rand::{RngCore, SeedableRng};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

tokio::task_local! {
    /// The seeded generator of the Raft instance being built or run in this task.
    static RAFT_RNG: Arc<Mutex<StdRng>>;
}

/// Runs `build` (the future that creates a Raft instance) with openraft's random draws
/// taken from `seed`; with `None`, from the thread's generator, as openraft's own Tokio
/// runtime does.
pub async fn with_seed<F: Future>(seed: Option<u64>, build: F) -> F::Output {
    match seed {
        Some(seed) => RAFT_RNG.scope(Arc::new(Mutex::new(StdRng::seed_from_u64(seed))), build).await,
        None => build.await,
    }
}

/// One draw's generator: seeded in a [`with_seed`] scope, the thread's otherwise.
#[derive(Debug)]
pub enum RaftRng {
    /// Derived from the scope's seeded generator (which it advances); boxed, as a ChaCha
    /// state is a few hundred bytes and the thread's generator a pointer.
    Seeded(Box<StdRng>),
    /// The thread's generator (production).
    Thread(ThreadRng),
}

impl RngCore for RaftRng {
    fn next_u32(&mut self) -> u32 {
        match self {
            RaftRng::Seeded(r) => r.next_u32(),
            RaftRng::Thread(r) => r.next_u32(),
        }
    }

    fn next_u64(&mut self) -> u64 {
        match self {
            RaftRng::Seeded(r) => r.next_u64(),
            RaftRng::Thread(r) => r.next_u64(),
        }
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        match self {
            RaftRng::Seeded(r) => r.fill_bytes(dest),
            RaftRng::Thread(r) => r.fill_bytes(dest),
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        match self {
            RaftRng::Seeded(r) => r.try_fill_bytes(dest),
            RaftRng::Thread(r) => r.try_fill_bytes(dest),
        }
    }
}

/// Tokio, with seedable randomness. Everything but `spawn` and `thread_rng` is Tokio's.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeedableRuntime;

impl AsyncRuntime for SeedableRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = RaftRng;
    type OneshotSender<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        match RAFT_RNG.try_with(Arc::clone) {
            Ok(rng) => tokio::task::spawn(RAFT_RNG.scope(rng, future)),
            Err(_) => TokioRuntime::spawn(future),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        RAFT_RNG
            .try_with(|rng| {
                let seed = rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next_u64();
                RaftRng::Seeded(Box::new(StdRng::seed_from_u64(seed)))
            })
            .unwrap_or_else(|_| RaftRng::Thread(rand::thread_rng()))
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        TokioRuntime::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> openraft::Config {
        openraft::Config { election_timeout_min: 400, election_timeout_max: 600, ..Default::default() }
    }

    /// The election timeouts openraft would draw, `n` times, in a scope seeded with `seed`.
    async fn timeouts(seed: Option<u64>, n: usize) -> Vec<u64> {
        let config = config();
        with_seed(seed, async move { (0..n).map(|_| config.new_rand_election_timeout::<SeedableRuntime>()).collect() })
            .await
    }

    #[tokio::test]
    async fn the_same_seed_draws_the_same_election_timeouts() {
        let a = timeouts(Some(7), 16).await;
        assert_eq!(a, timeouts(Some(7), 16).await);
        assert_ne!(a, timeouts(Some(8), 16).await, "another seed, another sequence");
        assert!(a.iter().all(|t| (400..600).contains(t)), "{a:?}");
    }

    #[tokio::test]
    async fn without_a_seed_draws_stay_in_range() {
        let drawn = timeouts(None, 64).await;
        assert!(drawn.iter().all(|t| (400..600).contains(t)), "{drawn:?}");
    }

    #[tokio::test]
    async fn tasks_openraft_spawns_draw_from_the_same_seed() {
        let config = config();
        let in_task = with_seed(Some(7), async move {
            SeedableRuntime::spawn(async move { config.new_rand_election_timeout::<SeedableRuntime>() }).await
        })
        .await
        .unwrap();
        assert_eq!(in_task, timeouts(Some(7), 1).await[0]);
    }
}
