//! Chaos with real processes (issue 17 part 2): a realm of `keyraft` processes under
//! concurrent update load, with replicas and the verifier SIGKILLed and restarted on a seeded
//! schedule (and, where this process may mount, a disk that fills and one that turns
//! read-only), then checked: every acknowledged update in a verified lookup at its epoch and
//! in a verified history on every replica, heads byte-identical on every replica, signatures
//! where they must be, logs free of panics and alarms, the client-observed history checked by
//! [`crate::linearizability`], and no client ever saying the server misbehaved.
//!
//! The same seed gives the same schedule of faults (what is killed, for how long, how much
//! load comes between); what the processes do meanwhile depends on timing, as in production.

use crate::disk::{Disk, DiskKind};
use crate::linearizability::{Event, Read, Seen, Verdict};
use crate::{Realm, DEADLINE};
use ed25519_dalek::SigningKey;
use keyraft_client::{Client, ClientError, ClientOptions, LookupAnswer, LookupOptions, QUORUM_WAIT_MS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) mod checks;

/// The profile key every chaos update publishes: a tag naming the update (identity and
/// attempt), so that an answer shows which update wrote the version it shows.
pub const TAG_KEY: &str = "chaos";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub cycles: usize,
    pub seed: u64,
    /// Concurrent client tasks, each registering identities and updating them.
    pub writers: usize,
    /// Whether the schedule includes disk faults (a tmpfs that fills, an ext4 that turns
    /// read-only); skipped, and said so, where this process may not mount.
    pub disk_faults: bool,
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the leader; restart it `down_ms` later.
    KillLeader { down_ms: u64 },
    /// SIGKILL follower `which` (0 or 1, counting from the leader); restart it `down_ms` later.
    KillFollower { which: usize, down_ms: u64 },
    /// SIGKILL the leader and follower `which` at once, so that the quorum is lost; restart
    /// the follower `down_ms[0]` later and the old leader `down_ms[1]` after that.
    KillTwo { which: usize, down_ms: [u64; 2] },
    /// SIGKILL the verifier, let the realm ratify `backlog` more epochs, restart it, SIGKILL
    /// it again `kill_after_ms` into its catch-up, and restart it `down_ms` later.
    VerifierCatchUp { backlog: u64, kill_after_ms: u64, down_ms: u64 },
    /// SIGKILL the leader and the verifier together; restart both `down_ms` later.
    KillLeaderAndVerifier { down_ms: u64 },
    /// Move a replica (the leader or a follower) onto a small tmpfs, fill it under load, and
    /// give the space back once it stopped.
    DiskFull { leader: bool },
    /// Move a replica onto an ext4 image and make the file system fail read-only under load;
    /// repair it (`e2fsck`) once the replica stopped.
    DiskReadOnly { leader: bool },
}

/// A fault and how much load comes before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Acknowledged updates to wait for before the fault.
    pub acks_before: usize,
    pub fault: Fault,
}

/// The schedule of `options.cycles` faults for `options.seed`.
pub fn schedule(options: &Options) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    (0..options.cycles)
        .map(|_| {
            let acks_before = rng.gen_range(3..=15);
            let kinds = if options.disk_faults { 12 } else { 10 };
            let down = |rng: &mut StdRng| rng.gen_range(0..=3_000);
            let fault = match rng.gen_range(0..kinds) {
                0..=2 => Fault::KillLeader { down_ms: down(&mut rng) },
                3..=4 => Fault::KillFollower { which: rng.gen_range(0..2), down_ms: down(&mut rng) },
                // Half of the quorum losses outlast the clients' retries (10 s): their updates
                // fail without saying whether they were applied.
                5..=6 => Fault::KillTwo {
                    which: rng.gen_range(0..2),
                    down_ms: [
                        if rng.gen_bool(0.5) { rng.gen_range(0..=12_000) } else { down(&mut rng) },
                        down(&mut rng),
                    ],
                },
                7..=8 => Fault::VerifierCatchUp {
                    backlog: rng.gen_range(3..=20),
                    kill_after_ms: rng.gen_range(0..=500),
                    down_ms: down(&mut rng),
                },
                9 => Fault::KillLeaderAndVerifier { down_ms: down(&mut rng) },
                10 => Fault::DiskFull { leader: rng.gen_bool(0.5) },
                _ => Fault::DiskReadOnly { leader: rng.gen_bool(0.5) },
            };
            Step { acks_before, fault }
        })
        .collect()
}

/// What the clients did, as it happened.
#[derive(Debug)]
pub struct Recorder {
    /// Tokio's, which is the virtual clock under the simulation's paused time (and the host's
    /// elsewhere).
    start: tokio::time::Instant,
    /// The events, and the newest epoch an acknowledgement proved ratified: under one lock,
    /// so that a lookup that starts after an acknowledgement completed knows its epoch.
    log: Mutex<(Vec<Event>, u64)>,
    acks: AtomicUsize,
    /// Identities with an acknowledged registration (for the clients' lookups of each other's).
    users: Mutex<Vec<String>>,
    /// What re-sent copies of acknowledged updates were answered with, when the answer was
    /// not "a duplicate, in the epoch it was acknowledged in".
    anomalies: Mutex<Vec<String>>,
    /// Re-sent copies answered as duplicates.
    echoes: AtomicUsize,
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            log: Mutex::default(),
            acks: AtomicUsize::new(0),
            users: Mutex::default(),
            anomalies: Mutex::default(),
            echoes: AtomicUsize::new(0),
        }
    }

    /// When the run started.
    pub(crate) fn start_instant(&self) -> tokio::time::Instant {
        self.start
    }

    /// Milliseconds since the run started.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records `event`; an acknowledgement completes now, under the lock.
    fn push(&self, mut event: Event) {
        let mut log = self.log.lock().unwrap();
        if let Event::Ack { ratified, epoch, completed, .. } = &mut event {
            *completed = self.now();
            self.acks.fetch_add(1, Ordering::Relaxed);
            if *ratified {
                log.1 = log.1.max(*epoch);
            }
        }
        log.0.push(event);
    }

    /// A read starts: now, and the newest epoch known ratified.
    fn start_read(&self) -> (u64, u64) {
        let log = self.log.lock().unwrap();
        (self.now(), log.1)
    }

    pub fn acks(&self) -> usize {
        self.acks.load(Ordering::Relaxed)
    }

    /// Answers to re-sent copies that were not "a duplicate, in the acknowledged epoch".
    pub fn anomalies(&self) -> Vec<String> {
        self.anomalies.lock().unwrap().clone()
    }

    /// Re-sent copies answered as duplicates.
    pub fn echoes(&self) -> usize {
        self.echoes.load(Ordering::Relaxed)
    }

    pub fn events(&self) -> Vec<Event> {
        self.log.lock().unwrap().0.clone()
    }
}

/// What an answer shows of an identity.
pub fn seen(answer: &LookupAnswer) -> Option<Seen> {
    answer.lookup.entry.as_ref().map(|(entry, profile)| Seen {
        version: entry.version,
        tag: profile.keys.get(TAG_KEY).map_or_else(String::new, |t| String::from_utf8_lossy(t).into_owned()),
    })
}

/// A short name for a failure, to count them by kind.
pub(crate) fn failure_kind(e: &ClientError) -> String {
    if e.is_misbehavior() {
        return "ACCUSATION".to_owned();
    }
    match e {
        ClientError::Refused { code, .. } => format!("refused ({})", keyraft_client::code_in_words(*code)),
        ClientError::Unavailable(_) => "unavailable".to_owned(),
        ClientError::Stale(_) => "stale".to_owned(),
        ClientError::RateLimited { .. } => "rate limited".to_owned(),
        ClientError::Invalid(_) => "invalid".to_owned(),
        _ => "other".to_owned(),
    }
}

/// What a writer knows of the identity it updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Absent,
    Present,
    /// A call failed without saying whether its update was applied: look before writing.
    Unknown,
}

/// One client task: a writer (registers identities and updates them, and looks up and lists
/// others') or a reader bound to one replica.
pub(crate) struct Session {
    name: String,
    client: Client,
    rec: Arc<Recorder>,
    rng: StdRng,
    attempts: u64,
    /// Another client (bound elsewhere) through which copies of acknowledged updates are sent
    /// again: a duplicated message, which must be answered as a duplicate.
    echo: Option<Client>,
}

impl Session {
    /// A client task named `name` recording into `rec`, its choices seeded by `seed`.
    pub(crate) fn new(name: String, client: Client, rec: Arc<Recorder>, seed: u64) -> Self {
        Session { name, client, rec, rng: StdRng::seed_from_u64(seed), attempts: 0, echo: None }
    }

    /// Sends a copy of some acknowledged updates again through `client`.
    pub(crate) fn with_echo(mut self, client: Client) -> Self {
        self.echo = Some(client);
        self
    }

    /// Sends `prepared`, acknowledged in `epoch`, again through the echo client (one time in
    /// three): it must be answered as a duplicate in that epoch.
    async fn echo(&mut self, user: &str, prepared: &keyraft_client::PreparedUpdate, epoch: u64) {
        let Some(echo) = &self.echo else { return };
        if !self.rng.gen_ratio(1, 3) {
            return;
        }
        let invoked = self.rec.now();
        match echo.send_prepared(prepared, None, None).await {
            Ok(o) if o.duplicate && o.epoch == epoch => {
                self.rec.echoes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(o) => self.rec.anomalies.lock().unwrap().push(format!(
                "{}: a copy of {user}'s update acknowledged in epoch {epoch}, sent again, was answered as {} in epoch {}",
                self.name,
                if o.duplicate { "a duplicate" } else { "a new update" },
                o.epoch
            )),
            Err(e) => self.failed(user, "echo", invoked, &e),
        }
    }

    fn failed(&self, user: &str, what: &str, invoked: u64, e: &ClientError) {
        self.rec.push(Event::Failed {
            client: self.name.clone(),
            user: user.to_owned(),
            what: what.to_owned(),
            error: format!("{} [{}]", e, failure_kind(e)),
            accusation: e.is_misbehavior(),
            invoked,
            completed: self.rec.now(),
        });
    }

    /// A fresh lookup of `user`, recorded, asking for the newest epoch known ratified or (not
    /// `newest`) relying on the client's memory of epochs seen.
    async fn lookup(&self, user: &str, newest: bool) -> Option<Option<Seen>> {
        let (invoked, known) = self.rec.start_read();
        let min_epoch = newest.then_some(known);
        let options = LookupOptions { epoch: 0, min_epoch: min_epoch.unwrap_or(0), wait_ms: 3_000 };
        match self.client.lookup(user, options).await {
            Ok(answer) => {
                let seen = seen(&answer);
                self.rec.push(Event::Lookup {
                    client: self.name.clone(),
                    user: user.to_owned(),
                    read: Read::Fresh { min_epoch },
                    epoch: answer.lookup.epoch(),
                    seen: seen.clone(),
                    invoked,
                    completed: self.rec.now(),
                });
                Some(seen)
            }
            Err(e) => {
                self.failed(user, "lookup", invoked, &e);
                None
            }
        }
    }

    /// One update of `user` (a registration if it is absent), waiting for its epoch to be
    /// ratified; whether it was acknowledged.
    async fn write(&mut self, user: &str, owner: &SigningKey, known: &mut Known) -> bool {
        if *known == Known::Unknown {
            match self.lookup(user, false).await {
                Some(seen) => *known = if seen.is_some() { Known::Present } else { Known::Absent },
                None => return false,
            }
        }
        self.attempts += 1;
        let tag = format!("{}#{}", user, self.attempts);
        let keys = BTreeMap::from([(TAG_KEY.to_owned(), tag.clone().into_bytes())]);
        let builder = match known {
            Known::Absent => self.client.registration(user, owner),
            _ => self.client.change(user).signer(owner),
        };
        let invoked = self.rec.now();
        let prepared = match builder.keys(keys).profile_nonce(self.rng.gen()).prepare().await {
            Ok(p) => p,
            Err(e) => {
                self.failed(user, "prepare", invoked, &e);
                *known = Known::Unknown;
                return false;
            }
        };
        let version = prepared.update.signed.entry.version;
        let ack = |epoch, ratified| Event::Ack {
            client: self.name.clone(),
            user: user.to_owned(),
            version,
            tag: tag.clone(),
            epoch,
            ratified,
            invoked,
            completed: self.rec.now(),
        };
        match self.client.send_prepared(&prepared, None, Some(QUORUM_WAIT_MS)).await {
            Ok(outcome) => {
                self.rec.push(ack(outcome.epoch, outcome.proof.is_some()));
                self.echo(user, &prepared, outcome.epoch).await;
            }
            // The realm said "accepted in this epoch": as binding as an acknowledgement.
            Err(ClientError::NotRatifiedYet { epoch, .. } | ClientError::AppliedNotRecorded { epoch, .. }) => {
                self.rec.push(ack(epoch, false));
            }
            Err(e) => {
                self.failed(user, "update", invoked, &e);
                *known = Known::Unknown;
                return false;
            }
        }
        if *known == Known::Absent {
            self.rec.users.lock().unwrap().push(user.to_owned());
        }
        *known = Known::Present;
        true
    }

    /// Some identity with an acknowledged registration, if there is one yet.
    fn someone(&mut self) -> Option<String> {
        let users = self.rec.users.lock().unwrap();
        (!users.is_empty()).then(|| users[self.rng.gen_range(0..users.len())].clone())
    }

    /// A lookup of someone's identity asking for the newest epoch known ratified.
    async fn read_other(&mut self) {
        let Some(user) = self.someone() else { return };
        self.lookup(&user, true).await;
    }

    /// A verified history of someone's identity, each version recorded as an answer at the
    /// epoch it appeared in.
    async fn history_of_other(&mut self) {
        let Some(user) = self.someone() else { return };
        let invoked = self.rec.now();
        match self.client.full_history(&user, 100).await {
            Ok(versions) => {
                let completed = self.rec.now();
                for v in versions {
                    self.rec.push(Event::Lookup {
                        client: self.name.clone(),
                        user: user.clone(),
                        read: Read::AtEpoch,
                        epoch: v.answer.lookup.epoch(),
                        seen: seen(&v.answer),
                        invoked,
                        completed,
                    });
                }
            }
            Err(e) => self.failed(&user, "history", invoked, &e),
        }
    }

    /// A reader bound to one replica: fresh lookups relying on its own memory of epochs seen
    /// (what a lagging, restarted replica meets), now and then asking for the newest epoch
    /// known ratified, and histories; until `stop`.
    pub(crate) async fn read(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            match self.rng.gen_range(0..6) {
                0 => self.history_of_other().await,
                1 => self.read_other().await,
                _ => {
                    if let Some(user) = self.someone() {
                        self.lookup(&user, false).await;
                    }
                }
            }
            // Pacing, not waiting for anything: readers must leave the replicas some CPU.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn write_loop(mut self, k: usize, stop: Arc<AtomicBool>) {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let user = format!("w{k}-{n}@chaos.example");
            n += 1;
            // From the session's seed, as everything a simulated client draws.
            let owner = SigningKey::generate(&mut self.rng);
            let mut known = Known::Absent;
            let updates = self.rng.gen_range(1..=6);
            let mut done = 0;
            while done < updates && !stop.load(Ordering::Relaxed) {
                if self.write(&user, &owner, &mut known).await {
                    done += 1;
                } else {
                    // Pacing, not waiting for anything: a realm that is down answers at once.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                self.read_other().await;
                if self.rng.gen_ratio(1, 6) {
                    self.history_of_other().await;
                }
            }
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub cycles: usize,
    pub elapsed: Duration,
    pub verdict: Verdict,
    /// Per cycle: from the last restart to a healthy realm (a leader, every replica and the
    /// verifier past a new epoch, a new acknowledged update).
    pub recovery: Vec<Duration>,
    /// The longest time without an acknowledged update.
    pub longest_gap: Duration,
    /// The newest epoch at the end.
    pub epochs: u64,
    /// Failed calls by kind (transient ones are expected under faults).
    pub failures: BTreeMap<String, usize>,
    /// Broken invariants outside the client history: heads, signatures, logs, faults not
    /// handled as they must be.
    pub problems: Vec<String>,
    /// What happened that is worth knowing but breaks nothing.
    pub notes: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.verdict.ok() && self.problems.is_empty()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sorted = self.recovery.clone();
        sorted.sort();
        let ms = |d: Duration| d.as_millis();
        writeln!(f, "chaos report (seed {}): {}", self.seed, if self.ok() { "PASS" } else { "FAIL" })?;
        writeln!(f, "  cycles: {}, run time {} s, epochs: {}", self.cycles, self.elapsed.as_secs(), self.epochs)?;
        writeln!(
            f,
            "  acknowledged updates: {}, lost: {}, answers checked: {}",
            self.verdict.acked, self.verdict.lost, self.verdict.answers
        )?;
        writeln!(
            f,
            "  recovery (last restart to healthy): median {} ms, p90 {} ms, max {} ms; longest time without an acknowledgement: {} ms",
            ms(percentile(&sorted, 0.5)),
            ms(percentile(&sorted, 0.9)),
            ms(sorted.last().copied().unwrap_or_default()),
            ms(self.longest_gap)
        )?;
        writeln!(f, "  failed calls by kind: {:?}", self.failures)?;
        writeln!(
            f,
            "  history violations: {}, other problems: {}",
            self.verdict.violations.len(),
            self.problems.len()
        )?;
        // Once each: a client that retries meets the same violation again and again.
        let mut shown = std::collections::BTreeSet::new();
        for v in self.verdict.violations.iter().filter(|v| shown.insert(v.to_string())).take(30) {
            writeln!(f, "    violation: {v}")?;
        }
        for p in self.problems.iter().take(30) {
            writeln!(f, "    problem: {p}")?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}

/// A run in progress. `disks` is declared before `realm` so that the disks are unmounted
/// (lazily) before the realm's directory is removed.
struct Run {
    disks: Vec<Disk>,
    realm: Realm,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    recovery: Vec<Duration>,
    problems: Vec<String>,
    notes: Vec<String>,
    /// How many times each replica (by index) was expected to stop on a failed disk.
    disk_stops: [usize; 3],
    /// Verifier kills in the middle of a catch-up, and after it had caught up already.
    verifier_kills: [usize; 2],
}

/// Runs the chaos schedule for `options` and checks the outcome.
pub fn run(options: &Options) -> Report {
    run_steps(options, &schedule(options))
}

/// Runs `steps` (`options.cycles` is their number) and checks the outcome.
pub fn run_steps(options: &Options, steps: &[Step]) -> Report {
    let options = &Options { cycles: steps.len(), ..options.clone() };
    eprintln!("chaos: seed {} ({} cycles, {} writers); schedule:", options.seed, options.cycles, options.writers);
    for (n, s) in steps.iter().enumerate() {
        eprintln!("  cycle {}: after {} acknowledged updates, {:?}", n + 1, s.acks_before, s.fault);
    }
    let mut run = Run::start(options);
    for (n, step) in steps.iter().enumerate() {
        let before = run.rec.acks();
        run.poll("load before the fault", |r| (r.rec.acks() >= before + step.acks_before).then_some(()));
        let started = Instant::now();
        run.fault(step.fault);
        let recovered = run.wait_healthy();
        eprintln!(
            "chaos: cycle {} ({:?}) done in {} ms, healthy {} ms after the last restart; {} acknowledged so far",
            n + 1,
            step.fault,
            started.elapsed().as_millis(),
            recovered.as_millis(),
            run.rec.acks()
        );
        run.recovery.push(recovered);
    }
    run.finish(options)
}

impl Run {
    fn start(options: &Options) -> Run {
        let mut realm = Realm::start(|_| {});
        realm.start_verifier();
        let rec = Arc::new(Recorder::new());
        let stop = Arc::new(AtomicBool::new(false));
        let client = |name: String, endpoints: &[String], k: usize| {
            let _g = realm.runtime.enter();
            // The replica majority only: the verifier is killed on purpose, and its
            // ratifications are checked at the end.
            let client_options = ClientOptions { verifier_threshold: Some(0), ..ClientOptions::default() };
            let client = Client::with_options(&realm.realm_file(), endpoints, &client_options).expect("client");
            Session::new(name, client, rec.clone(), options.seed.wrapping_add(k as u64 + 1))
        };
        // Writers know every replica (as the realm file lists them); readers one each.
        let mut tasks: Vec<_> = (0..options.writers)
            .map(|k| realm.runtime.spawn(client(format!("writer-{k}"), &[], k).write_loop(k, stop.clone())))
            .collect();
        for i in 0..3 {
            let reader = client(format!("reader-{}", i + 1), &[realm.public_addr(i)], 100 + i);
            tasks.push(realm.runtime.spawn(reader.read(stop.clone())));
        }
        Run {
            disks: Vec::new(),
            realm,
            rec,
            stop,
            tasks,
            recovery: Vec::new(),
            problems: Vec::new(),
            notes: Vec::new(),
            disk_stops: [0; 3],
            verifier_kills: [0; 2],
        }
    }

    /// The fault's duration, not a wait for anything: the schedule says how long a process
    /// stays down.
    fn down_for(ms: u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }

    /// Polls `f` until it returns `Some`, as [`crate::wait_for`] does, but fails at once,
    /// with its last errors, if a replica or the verifier exits on its own meanwhile.
    pub(crate) fn poll<T>(&mut self, what: &str, mut f: impl FnMut(&Run) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.assert_alive();
            if let Some(v) = f(self) {
                return v;
            }
            assert!(Instant::now() < deadline, "chaos: timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails if a process this run started and did not stop has exited.
    fn assert_alive(&mut self) {
        let mut exited = Vec::new();
        for r in &mut self.realm.replicas {
            if let Some(status) = r.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                exited.push((format!("node-{}", r.id), status));
            }
        }
        for (n, c) in &mut self.realm.verifiers {
            if let Some(status) = c.try_wait().expect("try_wait") {
                exited.push((format!("verifier-{n}"), status));
            }
        }
        let Some((name, status)) = exited.first() else { return };
        let log = std::fs::read_to_string(self.realm.path().join(format!("logs/{name}.log"))).unwrap_or_default();
        let errors: Vec<&str> =
            log.lines().filter(|l| l.starts_with("error") || l.contains(" ERROR ")).rev().take(8).collect();
        panic!("chaos: {name} exited on its own ({status}); its last errors, newest first:\n{}", errors.join("\n"));
    }

    /// The leader's index, once every running replica agrees on it.
    fn leader(&mut self) -> usize {
        self.poll("a leader", |r| r.realm.leader())
    }

    fn fault(&mut self, fault: Fault) {
        let leader = self.leader();
        let follower = |which: usize| (leader + 1 + which) % 3;
        match fault {
            Fault::KillLeader { down_ms } => {
                self.realm.kill(leader);
                Self::down_for(down_ms);
                self.realm.start_replica(leader);
            }
            Fault::KillFollower { which, down_ms } => {
                self.realm.kill(follower(which));
                Self::down_for(down_ms);
                self.realm.start_replica(follower(which));
            }
            Fault::KillTwo { which, down_ms } => {
                self.realm.kill(leader);
                self.realm.kill(follower(which));
                Self::down_for(down_ms[0]);
                self.realm.start_replica(follower(which));
                Self::down_for(down_ms[1]);
                self.realm.start_replica(leader);
            }
            Fault::VerifierCatchUp { backlog, kill_after_ms, down_ms } => {
                self.verifier_catch_up(backlog, kill_after_ms, down_ms)
            }
            Fault::KillLeaderAndVerifier { down_ms } => {
                self.realm.kill(leader);
                self.realm.kill_verifier();
                Self::down_for(down_ms);
                self.realm.start_replica(leader);
                self.realm.start_verifier();
            }
            Fault::DiskFull { leader: on_leader } => {
                self.disk_fault(DiskKind::Tmpfs, if on_leader { leader } else { follower(0) });
            }
            Fault::DiskReadOnly { leader: on_leader } => {
                self.disk_fault(DiskKind::Ext4, if on_leader { leader } else { follower(0) });
            }
        }
    }

    /// The newest epoch the verifier has ratified and the newest the realm has, as the
    /// leader says.
    fn verifier_position(&self) -> Option<(u64, u64)> {
        let s = self.realm.status(self.realm.leader()?)?;
        Some((s.verifiers.first().map_or(0, |v| v.latest_ratified_epoch), s.ratified_epoch))
    }

    fn verifier_catch_up(&mut self, backlog: u64, kill_after_ms: u64, down_ms: u64) {
        self.realm.kill_verifier();
        let (at_kill, _) = self.poll("the verifier's position", Run::verifier_position);
        self.poll("epochs for the verifier to catch up on", |r| {
            r.verifier_position().filter(|(_, realm)| *realm >= at_kill + backlog).map(drop)
        });
        self.realm.start_verifier();
        Self::down_for(kill_after_ms);
        let (verifier, realm) = self.poll("the verifier's position", Run::verifier_position);
        self.realm.kill_verifier();
        self.verifier_kills[usize::from(verifier >= realm)] += 1;
        Self::down_for(down_ms);
        self.realm.start_verifier();
    }
}
