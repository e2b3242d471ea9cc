//! A realm in this process: replicas run by `keyraft_server::run_with` with the simulation's
//! seams (a memory engine per replica, a clock per replica, the simulated network, a seeded
//! openraft), the verifier by `keyraft_verifier::run_seamed`, and clients built on the same
//! network. Crashes keep only what each replica had flushed.

use super::net::{self, Host, SimNet};
use ed25519_dalek::SigningKey;
use keyraft_client::{Client, ClientOptions};
use keyraft_core::clock::Clock;
use keyraft_core::registration::RegistrationPolicy;
use keyraft_core::vrf::VrfSecretKey;
use keyraft_core::{RealmConfig, RealmFile};
use keyraft_proto::peer::{StatusReply, StatusRequest};
use keyraft_proto::transport::Channels;
use keyraft_server::acceptor::{Listener, MemoryListener};
use keyraft_server::config::{EpochSettings, Limits, RaftSettings, Secret, StorageSettings, TlsSettings, VoterSpec};
use keyraft_server::peer_client::peer_channels;
use keyraft_server::raft::network::PeerNetwork;
use keyraft_server::{Listeners, Loaded, MemoryEngine, NodeConfig, Seams, StorageEngine};
use keyraft_state::harness::derive_signing_key;
use keyraft_state::StateMachine;
use keyraft_storage::MemoryStorage;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const TOKEN: &str = "simulation-cluster-token-0123456789abcdef";
/// The realm file's clock skew: clock faults stay within it (a replica further off is
/// misconfigured, not faulty).
pub const CLOCK_SKEW_MS: u64 = 5_000;
const EPOCH_TTL_MS: u64 = 60_000;

/// Where every simulated clock starts: 2026-01-01T00:00:00Z.
const SIM_EPOCH_MS: u64 = 1_767_225_600_000;

/// A clock of the simulation: tokio's (virtual, under paused time) from [`SIM_EPOCH_MS`] at
/// the realm's start, moved by an offset the simulation sets (skew and jumps).
#[derive(Debug)]
pub struct SimClock {
    origin: tokio::time::Instant,
    offset_ms: AtomicI64,
}

impl SimClock {
    /// A clock reading [`SIM_EPOCH_MS`] at `origin`.
    pub fn new(origin: tokio::time::Instant) -> Self {
        Self { origin, offset_ms: AtomicI64::new(0) }
    }

    /// Sets the offset from the realm's time (a jump when it changes at once).
    pub fn set_offset(&self, ms: i64) {
        self.offset_ms.store(ms, Ordering::SeqCst);
    }

    pub fn offset(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let since = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        SIM_EPOCH_MS.saturating_add(since).saturating_add_signed(self.offset())
    }
}

type Task<E> = (CancellationToken, JoinHandle<Result<(), E>>);

/// One replica: its stores outlive its runs.
pub struct Replica {
    pub id: u64,
    /// Its data directory (snapshots, `listen.json`) for the current run: each run after a
    /// crash gets a copy of the previous run's, taken at the crash, because the crashed run
    /// goes on for a moment and must not write into what the next run finds.
    dir: PathBuf,
    runs: u64,
    /// The stores as the running process sees them.
    pub engine: MemoryEngine,
    pub clock: Arc<SimClock>,
    key: SigningKey,
    running: Option<Task<keyraft_server::Error>>,
}

impl Replica {
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Its state as a crash would leave it now (what its current generation has flushed), in
    /// a copy: opening a store may write to it, and the replica's own store must see no
    /// writer but the replica.
    pub fn state(&self, realm: &RealmConfig) -> Option<StateMachine<MemoryStorage>> {
        let state = &self.engine.state;
        StateMachine::open(state.generation(state.current()).crash(), realm.clone()).ok()
    }
}

/// Timings short enough for many seeds, long enough for 2 cores.
pub fn epoch_settings() -> EpochSettings {
    EpochSettings {
        min_epoch_interval_ms: 100,
        max_epoch_interval_ms: 500,
        proposal_retry_ms: 20,
        proposal_retry_max_ms: 500,
    }
}

/// Snapshots every few hundred entries, so that restarted replicas install them.
pub fn raft_settings() -> RaftSettings {
    RaftSettings { snapshot_after_entries: 300, entries_kept_after_snapshot: 50, ..RaftSettings::default() }
}

pub struct SimRealm {
    pub net: SimNet,
    pub dir: tempfile::TempDir,
    pub config: RealmConfig,
    pub realm_file: PathBuf,
    file: RealmFile,
    vrf: VrfSecretKey,
    pub replicas: Vec<Replica>,
    verifier: Option<Task<keyraft_verifier::Error>>,
    /// The verifier's state: in memory, kept across its restarts as a crash leaves it.
    verifier_store: keyraft_storage::MemoryStorage,
    verifier_starts: u64,
    /// Runs of replicas and the verifier that ended in an error or a panic.
    pub exits: Vec<String>,
    seed: u64,
    /// On one thread in paused time: no threads of its own.
    paused: bool,
    starts: u64,
    /// When the realm's time began: every clock of the simulation counts from it.
    origin: tokio::time::Instant,
}

impl SimRealm {
    /// `replicas` replicas and one verifier, keys derived from `seed`; nothing started.
    pub fn new(seed: u64, replicas: usize, paused: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let origin = tokio::time::Instant::now();
        let vrf = VrfSecretKey::from_seed(&derive_signing_key(seed, "vrf").to_bytes());
        let keys: Vec<SigningKey> = (1..=replicas).map(|n| derive_signing_key(seed, &format!("replica-{n}"))).collect();
        let publics: Vec<_> = keys.iter().map(keyraft_core::keys::public_key_of).collect();
        let verifier = derive_signing_key(seed, "verifier-1");
        let bindings: Vec<(u64, _)> = (1..).zip(publics.iter().copied()).collect();
        let config = RealmConfig::new(
            "sim.example",
            vrf.public_key(),
            publics,
            vec![keyraft_core::keys::public_key_of(&verifier)],
        )
        .and_then(|c| c.with_replica_node_ids(&bindings))
        .and_then(|c| c.with_registration(RegistrationPolicy::open()))
        .expect("realm configuration");
        let endpoints = (1..=replicas as u64).map(net::public_addr).collect();
        let file = RealmFile::new(&config, EPOCH_TTL_MS, CLOCK_SKEW_MS, endpoints);
        let realm_file = dir.path().join("realm.json");
        std::fs::write(&realm_file, file.to_json()).expect("realm file");
        let key_file = dir.path().join("verifier.key");
        std::fs::write(&key_file, hex::encode(verifier.to_bytes())).expect("verifier key");
        std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod 600");
        let replicas = (1..)
            .zip(keys)
            .map(|(id, key)| Replica {
                id,
                dir: dir.path().join(format!("node-{id}")).join("run-0"),
                runs: 0,
                engine: MemoryEngine::default(),
                clock: Arc::new(SimClock::new(origin)),
                key,
                running: None,
            })
            .collect();
        Self {
            net: SimNet::new(seed),
            dir,
            config,
            realm_file,
            file,
            vrf,
            replicas,
            verifier: None,
            verifier_store: keyraft_storage::MemoryStorage::new(),
            verifier_starts: 0,
            exits: Vec::new(),
            seed,
            paused,
            starts: 0,
            origin,
        }
    }

    fn loaded(&self, i: usize) -> Loaded {
        let r = &self.replicas[i];
        let voters = self
            .replicas
            .iter()
            .map(|v| VoterSpec { id: v.id, peer_addr: net::peer_addr(v.id), public_addr: net::public_addr(v.id) })
            .collect();
        let config = NodeConfig {
            node_id: r.id,
            data_dir: r.dir.clone(),
            public_listen: "127.0.0.1:0".into(),
            peer_listen: "127.0.0.1:0".into(),
            metrics_listen: None,
            // Read by `NodeConfig::load` only; `run_with` takes the loaded keys.
            realm_file: "unused".into(),
            vrf_secret_key_file: "unused".into(),
            signing_key_file: "unused".into(),
            next_signing_key_files: vec![],
            cluster_token_file: "unused".into(),
            admin_token_file: None,
            tls: Some(TlsSettings::plaintext()),
            epochs: epoch_settings(),
            raft: raft_settings(),
            // Every simulated client comes from loopback: exempt it, as `keyraft dev` does.
            limits: Limits {
                rate_exempt_addresses: vec!["127.0.0.0/8".parse().expect("loopback range")],
                ..Limits::default()
            },
            storage: StorageSettings::default(),
            voters,
            registration: Default::default(),
        };
        Loaded {
            config,
            realm: self.config.clone(),
            vrf: self.vrf.clone(),
            signing_key: r.key.clone(),
            next_signing_keys: vec![],
            cluster_token: Secret::new(TOKEN.to_owned()),
            admin_token: None,
            tls: None,
            realm_clock_skew_ms: CLOCK_SKEW_MS,
            seams: Seams {
                clock: r.clock.clone(),
                storage: StorageEngine::Memory(r.engine.clone()),
                network: Some(self.net.connector(Host::Replica(r.id))),
                raft_seed: Some(self.seed ^ (u64::from(u32::MAX) * r.id) ^ self.starts),
            },
        }
    }

    /// Starts replica `i`; `init` makes it initialise the realm with every replica a voter.
    pub async fn start(&mut self, i: usize, init: bool) {
        assert!(!self.replicas[i].is_running(), "node-{} runs already", self.replicas[i].id);
        self.starts += 1;
        let loaded = self.loaded(i);
        let id = u16::try_from(self.replicas[i].id).expect("a small node id");
        let (public_listener, public) = MemoryListener::new(SocketAddr::from(([127, 0, 0, 1], 10_000 + 10 * id + 1)));
        let (peer_listener, peer) = MemoryListener::new(SocketAddr::from(([127, 0, 0, 1], 10_000 + 10 * id + 2)));
        let listeners = Listeners {
            public: Listener::Memory(public_listener),
            peer: Listener::Memory(peer_listener),
            metrics: None,
        };
        let stop = CancellationToken::new();
        // In paused time, no threads of its own and no blocking pool: the Raft log flushes and
        // storage reads run in place, on the simulation's one thread, instead of on threads
        // that paused time would not wait for and whose timing no seed decides.
        let threads = if self.paused {
            keyraft_storage::ThreadSpawner::none()
        } else {
            keyraft_storage::ThreadSpawner::default()
        };
        let token = stop.clone();
        let task = tokio::spawn(async move {
            keyraft_server::run_with(loaded, listeners, init, token, TaskTracker::new(), &threads).await
        });
        let r = &mut self.replicas[i];
        self.net.up(r.id, public, peer);
        r.running = Some((stop, task));
    }

    /// Crashes replica `i`: from this instant nothing it sends arrives, and it restarts with
    /// only what its stores had flushed. Returns once its run has ended.
    pub async fn crash(&mut self, i: usize) {
        let r = &mut self.replicas[i];
        let Some((stop, task)) = r.running.take() else { return };
        self.net.down(r.id);
        let survived = r.engine.crash();
        r.runs += 1;
        let next = r.dir.with_file_name(format!("run-{}", r.runs));
        copy_dir(&r.dir, &next).unwrap_or_else(|e| panic!("copying node-{}'s data directory: {e}", r.id));
        r.dir = next;
        stop.cancel();
        // Its run goes on writing into the old handle while it stops: discarded.
        let _ = task.await;
        r.engine = survived;
    }

    /// A replica whose run ended on its own (a Raft core that stopped, a panic), if any.
    pub fn exited(&mut self) -> Option<String> {
        for r in &mut self.replicas {
            if r.running.as_ref().is_some_and(|(_, t)| t.is_finished()) {
                return Some(format!("node-{} stopped on its own", r.id));
            }
        }
        None
    }

    /// Stops every replica and the verifier gracefully.
    pub async fn stop_all(&mut self) {
        self.stop_verifier().await;
        for r in &mut self.replicas {
            if let Some((stop, task)) = r.running.take() {
                stop.cancel();
                match task.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => self.exits.push(format!("node-{}: {e}", r.id)),
                    Err(e) => self.exits.push(format!("node-{} panicked: {e}", r.id)),
                }
            }
        }
    }

    pub fn start_verifier(&mut self) {
        assert!(self.verifier.is_none(), "the verifier runs already");
        let config = keyraft_verifier::Config {
            data_dir: self.dir.path().join("verifier"),
            realm_file: self.realm_file.clone(),
            signing_key_file: self.dir.path().join("verifier.key"),
            endpoints: vec![],
            metrics_listen: None,
            retention_epochs: 0,
        };
        // What the last run left flushed: its stop flushes, so nothing verified is lost.
        self.verifier_store = self.verifier_store.crash();
        self.verifier_starts += 1;
        let seams = keyraft_verifier::Seams {
            clock: Arc::new(SimClock::new(self.origin)),
            network: Some(self.net.connector(Host::Verifier)),
            storage: Some(self.verifier_store.clone()),
            rng_seed: Some(self.seed ^ 0x7E51_F1E5 ^ self.verifier_starts),
        };
        let stop = CancellationToken::new();
        let token = stop.clone();
        // In paused time its writes run in place (see `start`).
        let threads = if self.paused {
            keyraft_storage::ThreadSpawner::none()
        } else {
            keyraft_storage::ThreadSpawner::default()
        };
        let task = tokio::spawn(async move {
            keyraft_verifier::run_seamed(config, token, TaskTracker::new(), &threads, seams).await
        });
        self.verifier = Some((stop, task));
    }

    /// Stops the verifier (its durable progress stays); a run that had ended on its own is
    /// recorded in `exits`.
    pub async fn stop_verifier(&mut self) {
        let Some((stop, task)) = self.verifier.take() else { return };
        self.net.cut_from(Host::Verifier);
        stop.cancel();
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.exits.push(format!("verifier: {e}")),
            Err(e) => self.exits.push(format!("verifier panicked: {e}")),
        }
    }

    /// Whether the verifier's run ended on its own (it halts only on misbehaviour).
    pub fn verifier_ended(&self) -> bool {
        self.verifier.as_ref().is_some_and(|(_, t)| t.is_finished())
    }

    /// The verifier's data directory.
    pub fn verifier_dir(&self) -> PathBuf {
        self.dir.path().join("verifier")
    }

    /// A client dialling through the simulated network as `host`, knowing `endpoints`
    /// (every replica if empty), requiring `verifiers` ratifications.
    pub fn client(&self, host: Host, endpoints: &[String], verifiers: usize) -> Client {
        let options = ClientOptions {
            verifier_threshold: Some(verifiers),
            channels: Some(Channels::default().with_connector(self.net.connector(host))),
            clock: Some(Arc::new(SimClock::new(self.origin))),
            ..ClientOptions::default()
        };
        Client::with_options(&self.file, endpoints, &options).expect("client")
    }

    /// Replica `i`'s status, asked past the simulated network (an operator's view).
    pub async fn status(&self, i: usize) -> Option<StatusReply> {
        let r = &self.replicas[i];
        if !r.is_running() {
            return None;
        }
        let network = PeerNetwork::new(
            TOKEN,
            peer_channels(None).with_connector(self.net.connector(Host::Operator)),
            &self.config.realm,
        );
        let mut client = network.client_for(r.id, &net::peer_addr(r.id)).ok()?;
        let mut request = tonic::Request::new(StatusRequest {});
        request.set_timeout(Duration::from_secs(2));
        client.status(request).await.ok().map(tonic::Response::into_inner)
    }

    /// The leader's index, once every running replica agrees on it and it says it leads.
    pub async fn leader(&self) -> Option<usize> {
        let mut leader_id = None;
        for (i, r) in self.replicas.iter().enumerate() {
            if !r.is_running() {
                continue;
            }
            let s = self.status(i).await?;
            if !s.has_leader || leader_id.is_some_and(|l| l != s.leader_id) {
                return None;
            }
            leader_id = Some(s.leader_id);
        }
        let i = self.replicas.iter().position(|r| Some(r.id) == leader_id && r.is_running())?;
        (self.status(i).await?.role == "leader").then_some(i)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Copies directory `from` into a new directory `to`, as a crash leaves it: files that vanish
/// meanwhile (a temporary file renamed) are skipped.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let entries = match std::fs::read_dir(from) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let copied = match entry.file_type()? {
            t if t.is_dir() => copy_dir(&entry.path(), &target),
            _ => std::fs::copy(entry.path(), &target).map(drop),
        };
        match copied {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}
