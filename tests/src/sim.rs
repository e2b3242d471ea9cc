//! Simulation of a whole realm in one process under seeded faults (issue 17 part 1): 3 or 5
//! replicas run by the real server code (`keyraft_server::run_with`) on the seams of
//! `keyraft_server::Seams` (memory engines that lose unflushed writes in a crash, a clock per
//! replica, a seeded openraft), a verifier (`keyraft_verifier::run_seamed`), and clients of
//! the client library, every connection through the simulated network of [`net`].
//!
//! A seed decides the schedule: which faults, on whom, for how long, how much load comes
//! between them; and the network's jitter and loss, openraft's election timeouts, the
//! clients' choices. Faults:
//! - crashes of the leader, a follower, or two replicas (quorum lost), losing what each had
//!   not flushed, and restarts;
//! - partitions: the leader or a follower isolated (connections refused, or a black hole
//!   where nothing passes or closes), a minority and a majority side with the leader on
//!   either, one direction only (asymmetric), the verifier cut off;
//! - a lossy network: delays, jitter (reordering across connections) and lost chunks that
//!   cut connections, so calls are retried and messages arrive twice;
//! - clocks: a replica's clock skewed or jumping forward or back (within the realm's skew);
//! - the verifier stopped and restarted in the middle of its work.
//!
//! Checked continuously ([`monitor`]): every head a replica stores is the one every other
//! replica stores for its epoch (a head once stored never changes, through crashes too); the
//! head chain is unbroken; every replica and verifier signature stored verifies over that
//! head (so no key signed two heads for one epoch); the verifier never halts. At the end:
//! every acknowledged update is found by verified lookups at its epoch and verified
//! histories on every replica with the verifier's ratification, the client-observed history
//! passes [`crate::linearizability`], and no client ever said the server misbehaved.
//!
//! No socket: connections are in-memory pipes handed to in-memory listeners, every clock
//! reads tokio's time, the verifier keeps its state in memory too, and every random draw
//! (openraft's election timeouts, the verifier's retry jitter, the clients' keys and profile
//! nonces) comes from the seed. By default the realm runs on one thread in paused time
//! (tokio's `start_paused`): time stands still while any task can run and jumps to the next
//! timer when none can, so waiting costs no wall time, and a task that never waits stops the
//! simulated clock (a busy loop: the seed fails after [`SEED_WALL_MAX`] of wall time). The
//! replicas and the verifier start no thread and run their blocking work in place
//! (`ThreadSpawner::none`), and tokio's generator, which orders `select!`'s branches, is
//! seeded: a seed replays exactly, and its report's fingerprint (the newest head's hash, the
//! acknowledged updates, the simulated time) shows it. `KEYRAFT_SIM_PAUSED=0` runs it in real
//! time on two workers instead, where threads race as in production and a seed replays its
//! schedule but not its interleaving (docs/reliability.md, "Simulation").

pub mod logs;
pub mod monitor;
pub mod net;
pub mod realm;

use crate::chaos::{checks, Recorder, Session};
use crate::linearizability::{check, Verdict};
use monitor::Ledger;
use net::{Blocked, Host, Quality};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use realm::SimRealm;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
// Tokio's clock: the simulation runs in paused time, which jumps ahead whenever every task waits.
use tokio::time::Instant;

/// Longest wait for a realm to recover from a fault, or for load to arrive.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// One simulation run.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// 3 or 5.
    pub replicas: usize,
    pub faults: usize,
    pub writers: usize,
    /// One thread in paused time, where a seed replays exactly (see the module's
    /// documentation); otherwise real time on two workers.
    pub paused: bool,
}

impl Options {
    /// The defaults for `seed`: 3 or 5 replicas as the seed decides, 5 faults, 3 writers,
    /// paused time unless `KEYRAFT_SIM_PAUSED=0` ([`paused_time`]).
    pub fn for_seed(seed: u64) -> Self {
        let replicas = if StdRng::seed_from_u64(seed).gen_ratio(1, 4) { 5 } else { 3 };
        Self { seed, replicas, faults: 5, writers: 3, paused: paused_time() }
    }
}

/// Which replica a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Leader,
    /// The `n`th follower (modulo their number).
    Follower(usize),
}

/// One fault, as the schedule draws it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The target crashes and restarts `down_ms` later.
    Crash { target: Target, down_ms: u64 },
    /// The leader and a follower crash together (quorum lost with 3 replicas); they restart
    /// one after the other.
    CrashTwo { which: usize, down_ms: [u64; 2] },
    /// The target is cut off from every other replica for `for_ms`.
    Isolate { target: Target, how: Blocked, for_ms: u64 },
    /// The replicas split into a minority and a majority, the leader on the minority side
    /// or not.
    Split { leader_in_minority: bool, how: Blocked, for_ms: u64 },
    /// The leader cannot reach a follower (`leader_out`) or a follower cannot reach the
    /// leader; the other direction works.
    OneWay { which: usize, leader_out: bool, for_ms: u64 },
    /// Every connection delayed, jittered and lossy for `for_ms`.
    Lossy { quality: Quality, for_ms: u64 },
    /// A replica's clock moves by `by_ms` at once and stays there.
    ClockJump { target: Target, by_ms: i64 },
    /// The verifier stops for `down_ms`, then resumes.
    RestartVerifier { down_ms: u64 },
    /// The verifier cannot reach any replica for `for_ms`.
    IsolateVerifier { for_ms: u64 },
}

/// A fault and how much load comes before it.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub acks_before: usize,
    pub fault: Fault,
}

fn blocked(rng: &mut StdRng) -> Blocked {
    if rng.gen_bool(0.5) {
        Blocked::Refuse
    } else {
        Blocked::BlackHole
    }
}

fn target(rng: &mut StdRng) -> Target {
    if rng.gen_bool(0.4) {
        Target::Leader
    } else {
        Target::Follower(rng.gen_range(0..4))
    }
}

/// The faults of `options.seed`.
pub fn schedule(options: &Options) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    (0..options.faults)
        .map(|_| {
            let acks_before = rng.gen_range(1..=6);
            let fault = match rng.gen_range(0..12) {
                0 | 1 => Fault::Crash { target: target(&mut rng), down_ms: rng.gen_range(100..2_000) },
                2 => Fault::CrashTwo {
                    which: rng.gen_range(0..4),
                    down_ms: [rng.gen_range(200..3_000), rng.gen_range(100..1_000)],
                },
                3 | 4 => Fault::Isolate {
                    target: target(&mut rng),
                    how: blocked(&mut rng),
                    for_ms: rng.gen_range(500..4_000),
                },
                5 => Fault::Split {
                    leader_in_minority: rng.gen_bool(0.5),
                    how: blocked(&mut rng),
                    for_ms: rng.gen_range(500..4_000),
                },
                6 => Fault::OneWay {
                    which: rng.gen_range(0..4),
                    leader_out: rng.gen_bool(0.5),
                    for_ms: rng.gen_range(500..4_000),
                },
                7 => Fault::Lossy {
                    quality: Quality {
                        delay_ms: rng.gen_range(0..30),
                        jitter_ms: rng.gen_range(0..50),
                        loss_per_10k: rng.gen_range(0..30),
                    },
                    for_ms: rng.gen_range(1_000..4_000),
                },
                8 | 9 => {
                    let skew = i64::try_from(realm::CLOCK_SKEW_MS / 2).unwrap_or(0);
                    Fault::ClockJump { target: target(&mut rng), by_ms: rng.gen_range(-skew..=skew) }
                }
                10 => Fault::RestartVerifier { down_ms: rng.gen_range(100..2_000) },
                _ => Fault::IsolateVerifier { for_ms: rng.gen_range(500..3_000) },
            };
            Step { acks_before, fault }
        })
        .collect()
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub replicas: usize,
    pub steps: Vec<Step>,
    /// Simulated time.
    pub elapsed: Duration,
    /// Wall time.
    pub wall: Duration,
    pub verdict: Verdict,
    /// From the end of each fault to a realm that ratifies again.
    pub recovery: Vec<Duration>,
    pub epochs: u64,
    pub problems: Vec<String>,
    /// Copies of acknowledged updates sent again and answered as duplicates.
    pub echoes: usize,
    /// The clients' failed calls, by kind (transient ones are expected under faults).
    pub failures: std::collections::BTreeMap<String, usize>,
    /// What a replay must reproduce: the newest epoch's head hash (which chains to every
    /// earlier head), the acknowledged updates and the simulated time, hashed.
    pub fingerprint: String,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.verdict.ok()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulation seed {}: {} replicas, {} faults, {} epochs, {:.1} s simulated in {:.1} s; {} acknowledged, {} lost, {} sent twice; fingerprint {}; {}",
            self.seed,
            self.replicas,
            self.steps.len(),
            self.epochs,
            self.elapsed.as_secs_f64(),
            self.wall.as_secs_f64(),
            self.verdict.acked,
            self.verdict.lost,
            self.echoes,
            self.fingerprint,
            if self.ok() { "ok" } else { "FAILED" }
        )?;
        if !self.ok() {
            for s in &self.steps {
                writeln!(f, "  after {} acks: {:?}", s.acks_before, s.fault)?;
            }
            for p in &self.problems {
                writeln!(f, "  problem: {p}")?;
            }
            writeln!(f, "  failed client calls: {:?}", self.failures)?;
            for v in self.verdict.violations.iter().take(30) {
                writeln!(f, "  violation: {v}")?;
            }
            writeln!(f, "  replay: scripts/simulate.sh --seed {}", self.seed)?;
        }
        Ok(())
    }
}

/// Runs the simulation of `options` on a runtime of its own. `KEYRAFT_SIM_LOG` (a tracing
/// filter such as `info` or `keyraft_server=debug`) prints every replica's log to stderr
/// ([`logs`]).
pub fn run(options: &Options) -> Report {
    logs::capture();
    let mark = logs::mark();
    let seed = options.seed;
    let steps = schedule(options);
    let options = options.clone();
    let (done, report) = std::sync::mpsc::channel();
    let wall = std::time::Instant::now();
    std::thread::Builder::new()
        .name(format!("simulation-{seed}"))
        .spawn(move || {
            // Paused time on one thread, seeded: an exact replay. Or real time on two workers,
            // as in production.
            let mut builder = if options.paused {
                let mut b = tokio::runtime::Builder::new_current_thread();
                b.start_paused(true);
                b
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(2);
                b
            };
            builder.enable_all();
            seed_runtime(&mut builder, seed);
            let runtime = builder.build().expect("tokio runtime");
            let report = runtime.block_on(Sim::run(&options, steps));
            runtime.shutdown_timeout(Duration::from_secs(5));
            let _ = done.send(report);
        })
        .expect("the simulation's thread");
    let mut report = match report.recv_timeout(SEED_WALL_MAX) {
        Ok(report) => report,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
            "simulation seed {seed}: no end after {} s of wall time: simulated time stands still while a task \
             runs without ever waiting (a busy loop); replay: scripts/simulate.sh --seed {seed}",
            SEED_WALL_MAX.as_secs()
        ),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("simulation seed {seed} panicked (above); replay: scripts/simulate.sh --seed {seed}")
        }
    };
    report.wall = wall.elapsed();
    // Alarms and panics in what the replicas and the verifier logged.
    let alarms = logs::alarms_since(mark, checks::ALARMS);
    report.problems.extend(alarms.iter().take(20).map(|l| format!("log: {l}")));
    report
}

/// Seeds the runtime's random number generator, from which `select!` draws the order in
/// which it polls its branches: with it, one thread and paused time, a seed replays the same
/// interleaving. The generator is tokio's unstable API, compiled in by `.cargo/config.toml`.
#[cfg(tokio_unstable)]
fn seed_runtime(builder: &mut tokio::runtime::Builder, seed: u64) {
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
}

/// Without `--cfg tokio_unstable` (a RUSTFLAGS that replaced `.cargo/config.toml`'s) the
/// branch order of `select!` is not seeded, and a seed replays its faults but not every
/// interleaving.
#[cfg(not(tokio_unstable))]
fn seed_runtime(_builder: &mut tokio::runtime::Builder, seed: u64) {
    eprintln!("simulation seed {seed}: tokio's generator is not seeded (built without --cfg tokio_unstable)");
}

/// Whether to run in paused time on one thread, the default: a seed replays exactly, takes a
/// third of the wall time, and a task that never waits stops the clock (which found the
/// signature proposer's busy loop). `KEYRAFT_SIM_PAUSED=0` runs in real time on two workers,
/// where threads race as in production but a seed replays only its schedule.
pub fn paused_time() -> bool {
    std::env::var("KEYRAFT_SIM_PAUSED").map_or(true, |v| v != "0")
}

/// The wall time a seed may take. Under paused time one takes seconds; one that takes this
/// long has a task that never waits, and simulated time cannot move on.
const SEED_WALL_MAX: Duration = Duration::from_secs(300);

/// One poll of a condition.
type Polled<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Option<T>> + Send + 'a>>;

struct Sim {
    realm: SimRealm,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ledger: Ledger,
    /// When the ledger last read the replicas' stores.
    observed: Instant,
    rng: StdRng,
}

/// How often the invariants are checked on the replicas' stores while the simulation waits.
const OBSERVE_EVERY: Duration = Duration::from_millis(250);

impl Sim {
    async fn run(options: &Options, steps: Vec<Step>) -> Report {
        let started = Instant::now();
        let mut sim = Sim::start(options).await;
        let mut recovery = Vec::new();
        let mut problems = Vec::new();
        for step in &steps {
            let want = sim.rec.acks() + step.acks_before;
            if let Err(p) = sim
                .poll("load before the fault", |s| {
                    let done = s.rec.acks() >= want;
                    Box::pin(async move { done.then_some(()) })
                })
                .await
            {
                problems.push(p);
                break;
            }
            if let Err(p) = sim.fault(step.fault).await {
                problems.push(p);
                break;
            }
            let healed = Instant::now();
            match sim.healthy().await {
                Ok(()) => recovery.push(healed.elapsed()),
                Err(p) => {
                    problems.push(format!("after {:?}: {p}", step.fault));
                    break;
                }
            }
        }
        let echoes = sim.rec.echoes();
        let (verdict, epochs, mut end, failures, newest) = sim.finish().await;
        problems.append(&mut end);
        let elapsed = started.elapsed();
        let fingerprint = {
            use sha2::Digest as _;
            let mut h = sha2::Sha256::new();
            let (epoch, hash) = newest.unwrap_or_default();
            h.update(epoch.to_le_bytes());
            h.update(hash);
            h.update((verdict.acked as u64).to_le_bytes());
            h.update((elapsed.as_nanos() as u64).to_le_bytes());
            hex::encode(&h.finalize()[..8])
        };
        Report {
            seed: options.seed,
            replicas: options.replicas,
            steps,
            elapsed,
            wall: Duration::ZERO,
            verdict,
            recovery,
            epochs,
            problems,
            echoes,
            failures,
            fingerprint,
        }
    }

    async fn start(options: &Options) -> Sim {
        let mut realm = SimRealm::new(options.seed, options.replicas, options.paused);
        for i in 0..options.replicas {
            realm.start(i, i == 0).await;
        }
        realm.start_verifier();
        let rec = Arc::new(Recorder::new());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for k in 0..options.writers {
            // The replica majority only: the verifier is stopped on purpose, and its
            // ratifications are checked at the end.
            let client = realm.client(Host::Client(k), &[], 0);
            // Copies of its updates go again through one replica, named by the seed: duplicated
            // messages, as a client retrying elsewhere sends them.
            let id = realm.replicas[(options.seed as usize + k) % options.replicas].id;
            let echo = realm.client(Host::Client(50 + k), &[net::public_addr(id)], 0);
            let seed = options.seed.wrapping_add(k as u64 + 1);
            let session = Session::new(format!("writer-{k}"), client, rec.clone(), seed).with_echo(echo);
            tasks.push(tokio::spawn(session.write_loop(k, stop.clone())));
        }
        for (i, r) in realm.replicas.iter().enumerate() {
            let client = realm.client(Host::Client(100 + i), &[net::public_addr(r.id)], 0);
            let session = Session::new(
                format!("reader-{}", r.id),
                client,
                rec.clone(),
                options.seed.wrapping_add(100 + i as u64),
            );
            tasks.push(tokio::spawn(session.read(stop.clone())));
        }
        Sim {
            realm,
            rec,
            stop,
            tasks,
            ledger: Ledger::default(),
            observed: Instant::now(),
            rng: StdRng::seed_from_u64(options.seed ^ 0x5EED),
        }
    }

    /// Polls `f` until it returns `Some`, checking the invariants between polls; fails with
    /// what went wrong if an invariant breaks, a replica or the verifier stops on its own,
    /// or [`DEADLINE`] passes.
    async fn poll<T, F>(&mut self, what: &str, f: F) -> Result<T, String>
    where
        F: for<'a> Fn(&'a Sim) -> Polled<'a, T>,
    {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.observed.elapsed() >= OBSERVE_EVERY {
                self.ledger.observe(&self.realm);
                self.observed = Instant::now();
            }
            if let Some(p) = self.ledger.problems.first() {
                return Err(p.clone());
            }
            if let Some(why) = self.realm.exited() {
                return Err(why);
            }
            if self.realm.verifier_ended() {
                return Err("the verifier stopped on its own".into());
            }
            if let Some(v) = f(self).await {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(format!("timed out waiting for {what}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The fault's duration, watching the invariants meanwhile.
    async fn hold(&mut self, ms: u64) -> Result<(), String> {
        let until = Instant::now() + Duration::from_millis(ms);
        self.poll("the fault's end", |_| Box::pin(async move { (Instant::now() >= until).then_some(()) })).await
    }

    async fn leader(&mut self) -> Result<usize, String> {
        self.poll("a leader", |s| Box::pin(s.realm.leader())).await
    }

    fn follower(&self, leader: usize, which: usize) -> usize {
        let n = self.realm.replicas.len();
        (leader + 1 + which % (n - 1)) % n
    }

    fn pick(&self, leader: usize, target: Target) -> usize {
        match target {
            Target::Leader => leader,
            Target::Follower(k) => self.follower(leader, k),
        }
    }

    fn hosts(&self, indexes: impl IntoIterator<Item = usize>) -> Vec<Host> {
        indexes.into_iter().map(|i| Host::Replica(self.realm.replicas[i].id)).collect()
    }

    async fn fault(&mut self, fault: Fault) -> Result<(), String> {
        let leader = self.leader().await?;
        let n = self.realm.replicas.len();
        match fault {
            Fault::Crash { target, down_ms } => {
                let i = self.pick(leader, target);
                self.realm.crash(i).await;
                self.hold(down_ms).await?;
                self.realm.start(i, false).await;
            }
            Fault::CrashTwo { which, down_ms } => {
                let other = self.follower(leader, which);
                self.realm.crash(leader).await;
                self.realm.crash(other).await;
                self.hold(down_ms[0]).await?;
                self.realm.start(other, false).await;
                self.hold(down_ms[1]).await?;
                self.realm.start(leader, false).await;
            }
            Fault::Isolate { target, how, for_ms } => {
                let i = self.pick(leader, target);
                let rest = self.hosts((0..n).filter(|j| *j != i));
                self.realm.net.partition(&self.hosts([i]), &rest, how);
                self.hold(for_ms).await?;
                self.realm.net.heal();
            }
            Fault::Split { leader_in_minority, how, for_ms } => {
                let minority = (n - 1) / 2;
                let mut side: Vec<usize> = (0..n).filter(|j| *j != leader).collect();
                // Shuffled by the seed, so the sides differ from run to run.
                for k in (1..side.len()).rev() {
                    side.swap(k, self.rng.gen_range(0..=k));
                }
                let mut small: Vec<usize> = side.drain(..minority - usize::from(leader_in_minority)).collect();
                if leader_in_minority {
                    small.push(leader);
                } else {
                    side.push(leader);
                }
                self.realm.net.partition(&self.hosts(small), &self.hosts(side), how);
                self.hold(for_ms).await?;
                self.realm.net.heal();
            }
            Fault::OneWay { which, leader_out, for_ms } => {
                let (l, f) =
                    (Host::Replica(self.realm.replicas[leader].id), self.hosts([self.follower(leader, which)])[0]);
                let (from, to) = if leader_out { (l, f) } else { (f, l) };
                let how = self.blocked_kind();
                self.realm.net.block(from, to, how);
                self.hold(for_ms).await?;
                self.realm.net.heal();
            }
            Fault::Lossy { quality, for_ms } => {
                self.realm.net.set_quality(quality);
                self.hold(for_ms).await?;
                self.realm.net.set_quality(Quality::default());
            }
            Fault::ClockJump { target, by_ms } => {
                let clock = &self.realm.replicas[self.pick(leader, target)].clock;
                let skew = i64::try_from(realm::CLOCK_SKEW_MS / 2).unwrap_or(0);
                clock.set_offset((clock.offset() + by_ms).clamp(-skew, skew));
            }
            Fault::RestartVerifier { down_ms } => {
                self.realm.stop_verifier().await;
                self.hold(down_ms).await?;
                self.realm.start_verifier();
            }
            Fault::IsolateVerifier { for_ms } => {
                let replicas = self.hosts(0..n);
                let how = self.blocked_kind();
                self.realm.net.partition(&[Host::Verifier], &replicas, how);
                self.hold(for_ms).await?;
                self.realm.net.heal();
            }
        }
        Ok(())
    }

    fn blocked_kind(&mut self) -> Blocked {
        blocked(&mut self.rng)
    }

    /// The newest epoch the verifier ratified and the realm's newest ratified epoch, as the
    /// leader says.
    async fn verifier_position(&self) -> Option<(u64, u64)> {
        let s = self.realm.status(self.realm.leader().await?).await?;
        Some((s.verifiers.first().map_or(0, |v| v.latest_ratified_epoch), s.ratified_epoch))
    }

    /// Waits until every replica and the verifier ratified an epoch cut after now, and a new
    /// update was acknowledged.
    async fn healthy(&mut self) -> Result<(), String> {
        let acks = self.rec.acks();
        self.settled().await?;
        self.poll("a new acknowledged update", |s| {
            let done = s.rec.acks() > acks;
            Box::pin(async move { done.then_some(()) })
        })
        .await
    }

    /// Stops the load, lets the realm settle, reads every acknowledged update back on every
    /// replica, stops everything and checks the stores once more.
    #[allow(clippy::type_complexity)] // the parts of a report, taken apart at once by `run`
    async fn finish(
        mut self,
    ) -> (Verdict, u64, Vec<String>, std::collections::BTreeMap<String, usize>, Option<(u64, [u8; 32])>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        self.realm.net.heal();
        self.realm.net.set_quality(Quality::default());
        let mut problems = Vec::new();
        let mut events = self.rec.events();
        let settled = self.settled().await;
        let last = match settled {
            Ok(last) => {
                let epochs_of = Arc::new(checks::acked_epochs(&self.rec));
                for (i, r) in self.realm.replicas.iter().enumerate() {
                    let client = self.realm.client(Host::Client(200 + i), &[net::public_addr(r.id)], 1);
                    events.extend(
                        checks::final_reads(
                            client,
                            format!("final-node-{}", r.id),
                            epochs_of.clone(),
                            self.rec.start_instant(),
                            last,
                        )
                        .await,
                    );
                }
                last
            }
            Err(p) => {
                problems.push(format!("at the end: {p}"));
                0
            }
        };
        self.realm.stop_all().await;
        self.ledger.observe(&self.realm);
        problems.extend(self.ledger.problems.iter().cloned());
        problems.extend(self.ledger.final_checks(&self.realm, last));
        problems.extend(self.realm.exits.iter().cloned());
        if self.realm.verifier_dir().join("HALTED").exists() {
            problems.push("the verifier halted".into());
        }
        problems.extend(self.rec.anomalies());
        let verdict = check(&events);
        let mut failures = std::collections::BTreeMap::new();
        for e in &events {
            if let crate::linearizability::Event::Failed { what, error, .. } = e {
                let kind = error.rsplit_once('[').map_or(error.as_str(), |(_, k)| k.trim_end_matches(']'));
                *failures.entry(format!("{what}: {kind}")).or_default() += 1;
            }
        }
        (verdict, last, problems, failures, self.ledger.newest())
    }

    /// Waits until every replica and the verifier ratified the same newest epoch; that epoch.
    async fn settled(&mut self) -> Result<u64, String> {
        let leader = self.leader().await?;
        let target = self.poll("the leader's status", |s| Box::pin(s.realm.status(leader))).await?.last_epoch + 1;
        for i in 0..self.realm.replicas.len() {
            self.poll(&format!("node-{} to ratify epoch {target}", i + 1), |s| {
                Box::pin(async move { (s.realm.status(i).await?.ratified_epoch >= target).then_some(()) })
            })
            .await?;
        }
        self.poll(&format!("the verifier to ratify epoch {target}"), |s| {
            Box::pin(async move { s.verifier_position().await.filter(|(v, _)| *v >= target).map(drop) })
        })
        .await?;
        Ok(target)
    }
}
