//! A replica's configuration file (`node.toml`).
//!
//! ```toml
//! node_id = 1
//! data_dir = "data/node-1"
//! public_listen = "127.0.0.1:7001"   # clients and verifiers; port 0 lets the OS choose
//! peer_listen = "127.0.0.1:7101"     # Raft and admin
//! metrics_listen = "127.0.0.1:7201"  # optional: /metrics, /healthz, /readyz (plain HTTP, no credential)
//! realm_file = "realm.json"
//! vrf_secret_key_file = "keys/vrf.key"
//! signing_key_file = "keys/replica-1.key"
//! next_signing_key_files = ["keys/replica-1-next.key"]   # optional: see below
//! cluster_token_file = "keys/cluster.token"
//! admin_token_file = "keys/admin.token"        # optional: without it, no admin calls
//!
//! [tls]                 # required: the files, or `plaintext = true` (development only)
//! cert_file = "tls/node-1.crt"
//! key_file = "tls/node-1.key"
//! ca_file = "tls/ca.crt"
//!
//! [epochs]
//! min_epoch_interval_ms = 1000
//! max_epoch_interval_ms = 10000
//!
//! [[voters]]            # the initial voters, used by `--init` only
//! id = 1
//! peer_addr = "127.0.0.1:7101"
//! public_addr = "127.0.0.1:7001"
//! ```
//!
//! Relative paths are relative to the configuration file's directory. Every section but the
//! first block has defaults; see [`RaftSettings`] and [`Limits`].

use crate::rate_limits::AddressRange;
use crate::server::PUBLIC_MESSAGE_BYTES_MAX;
use crate::Error;
use ed25519_dalek::SigningKey;
use keyraft_core::vrf::VrfSecretKey;
use keyraft_core::{RealmConfig, RealmFile};
use keyraft_storage::{DiskEngine, RedbOptions, SledOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's Raft id (unique in the cluster, never reused for a wiped node).
    pub node_id: u64,
    /// Where the log, the state and the snapshots live.
    pub data_dir: PathBuf,
    /// Listen address of the public service.
    pub public_listen: String,
    /// Listen address of the peer service.
    pub peer_listen: String,
    /// Listen address of the metrics listener (plain HTTP: `/metrics`, `/healthz`, `/readyz`); none
    /// without it. Keep it on a private network: it takes no credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// The realm file (its `realm`, `vrf_public_key`, `replica_keys` and `verifier_keys`).
    pub realm_file: PathBuf,
    /// The VRF secret key (64 hex digits), shared by the realm's replicas.
    pub vrf_secret_key_file: PathBuf,
    /// This replica's Ed25519 head-signing key (64 hex digits); its public key must be one of
    /// the realm's replica keys.
    pub signing_key_file: PathBuf,
    /// Further head-signing keys this node holds, for a key rotation: the key a configuration
    /// change binds to this node id (docs/protocol.md section 2.8). The node signs each head
    /// with the key its node id is bound to in the configuration that head commits to.
    #[serde(default)]
    pub next_signing_key_files: Vec<PathBuf>,
    /// A secret shared by the cluster's nodes, required on the peer port for Raft messages.
    pub cluster_token_file: PathBuf,
    /// The operators' credential for admin calls on the peer port (status, init, add-learner,
    /// change-voters, realm submit), distinct from the cluster token: holding one does not
    /// give the other's powers. Without it this node takes no admin calls.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// TLS on both listeners and to peers (`[tls]`, required: see [`TlsSettings`]).
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// Epoch timing.
    #[serde(default)]
    pub epochs: EpochSettings,
    /// Raft timing and log compaction.
    #[serde(default)]
    pub raft: RaftSettings,
    /// Request limits.
    #[serde(default)]
    pub limits: Limits,
    /// Storage tuning.
    #[serde(default)]
    pub storage: StorageSettings,
    /// The initial voters, for `--init`.
    #[serde(default)]
    pub voters: Vec<VoterSpec>,
    /// The registration methods' settings (`[registration]`): the e-mail code key and relay,
    /// the OIDC issuers' keys.
    #[serde(default)]
    pub registration: crate::registration::RegistrationSettings,
}

/// `[tls]`: the node's certificate and key and the realm's CA (`crate::tls`), or an explicit
/// `plaintext = true`. A node configuration without `[tls]` is refused: serving plaintext is a
/// choice the operator writes down, never a default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The node's certificate chain (PEM), issued by `ca_file`, valid for `node-<id>.<realm>`
    /// and the names clients use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM), readable by its owner only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The realm's CA (PEM): peers' certificates must be issued by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Serve both listeners and dial peers without TLS: tokens and lookups cross the network
    /// in clear. For a development realm on one machine only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plaintext: bool,
}

impl TlsSettings {
    /// The explicit plaintext setting.
    pub fn plaintext() -> Self {
        Self { plaintext: true, ..Self::default() }
    }
}

/// Epoch timing.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EpochSettings {
    /// An epoch with pending updates is cut once this much time passed since the last one.
    pub min_epoch_interval_ms: u64,
    /// An epoch is cut after this long even without updates.
    pub max_epoch_interval_ms: u64,
    /// First retry delay of a failed proposal.
    pub proposal_retry_ms: u64,
    /// Retry delay cap.
    pub proposal_retry_max_ms: u64,
}

impl Default for EpochSettings {
    fn default() -> Self {
        Self {
            min_epoch_interval_ms: 1_000,
            max_epoch_interval_ms: 10_000,
            proposal_retry_ms: 50,
            proposal_retry_max_ms: 2_000,
        }
    }
}

/// Raft timing and log compaction.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// Leader heartbeat period. Followers check for a silent leader every 1.5 heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Election timeout range: each node draws its timeout `t` from `[min, max)` once at
    /// start. A follower that has heard from a leader honours that leader's lease for
    /// `election_timeout_max_ms` first (openraft 0.9), so it calls an election once the leader
    /// has been silent for `election_timeout_max_ms + t`: 1.0-1.2 s with the defaults.
    pub election_timeout_min_ms: u64,
    /// See `election_timeout_min_ms`.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept below the snapshot, for followers slightly behind.
    pub entries_kept_after_snapshot: u64,
    /// Deadline of one snapshot chunk transfer.
    pub install_snapshot_timeout_ms: u64,
    /// Entries per AppendEntries message (each entry is a batch of up to 1 MiB of commands, and
    /// a peer message holds at most 64 MiB).
    pub max_payload_entries: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 600,
            snapshot_after_entries: 100_000,
            entries_kept_after_snapshot: 5_000,
            install_snapshot_timeout_ms: 10_000,
            max_payload_entries: 32,
        }
    }
}

/// Shortest stall limit: below it, a reader on a slow link would be closed while the
/// frames it is receiving are still in flight.
pub const STALL_MS_MIN: u64 = 1_000;

/// Request and stream limits (`[limits]`).
///
/// ```toml
/// [limits]
/// request_bytes_max = 65536
/// wait_ms_max = 30000
/// forward_timeout_ms = 10000
/// concurrency_per_connection = 256
/// verifier_stream_stall_ms = 60000
/// watch_stall_ms = 60000
/// watch_streams_max = 10000
/// verifier_streams_max = 64
/// handshake_ms = 10000
/// idle_ms = 120000
/// connections_per_address_max = 1000
/// connections_max = 10000
/// streams_per_connection_max = 100
/// # Rate limits of the public service (crate::rate_limits); a rate of 0 turns its limit off.
/// rate_exempt_addresses = []                     # e.g. ["10.1.0.0/16", "192.0.2.7"]
/// rate_updates_per_address_per_minute = 600
/// rate_updates_per_address_burst = 100
/// rate_updates_per_identity_per_minute = 12
/// rate_updates_per_identity_burst = 10
/// rate_registrations_per_address_per_hour = 20
/// rate_registrations_per_address_burst = 10
/// rate_lookups_distinct_per_address_per_minute = 300
/// rate_lookups_distinct_per_address_burst = 1000
/// rate_email_codes_per_address_per_hour = 20
/// rate_email_codes_per_address_burst = 5
/// rate_email_codes_per_identity_per_hour = 6
/// rate_email_codes_per_identity_burst = 3
/// rate_keys_max = 100000
/// ```
///
/// The connection limits apply to the public and the peer listener alike, each counting its
/// own connections. The rate limits are per replica: a client spreading its requests over
/// the realm's replicas gets each replica's rate. Each is a token bucket: `_burst` requests at
/// once, then one more each period divided by the rate. A client address is an IPv4 address or
/// an IPv6 /64.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest public request accepted, in bytes.
    pub request_bytes_max: usize,
    /// Longest a request may wait (for an epoch, a quorum), in milliseconds. A `Watch` whose
    /// `from_epoch` is ahead of this replica waits this long for it too.
    pub wait_ms_max: u64,
    /// Deadline of a forwarded request to the leader, in milliseconds.
    pub forward_timeout_ms: u64,
    /// Concurrent requests per public connection.
    pub concurrency_per_connection: usize,
    /// A `VerifierStream` reader that accepts no frame for this long, in milliseconds, is
    /// closed with RESOURCE_EXHAUSTED: its buffered frames hold a replica's memory, and a
    /// verifier resumes from its last verified epoch anyway.
    pub verifier_stream_stall_ms: u64,
    /// A `Watch` reader that accepts no event for this long, in milliseconds, is closed with
    /// RESOURCE_EXHAUSTED (it reopens the stream from the last epoch it received).
    pub watch_stall_ms: u64,
    /// Concurrent `Watch` streams this replica serves; more are refused with
    /// RESOURCE_EXHAUSTED. Each holds a task and a few buffered proofs (at most 32 KiB each).
    pub watch_streams_max: usize,
    /// Concurrent `VerifierStream`s this replica serves; more are refused with
    /// RESOURCE_EXHAUSTED. Each holds a task and up to 8 frames of the reader's
    /// `max_frame_bytes` (1 MiB by default).
    pub verifier_streams_max: usize,
    /// A connection that has not finished its handshake (the client's HTTP/2 connection
    /// preface) this long after it was accepted is closed, in milliseconds.
    pub handshake_ms: u64,
    /// A connection with no open request for this long is closed (HTTP/2 GOAWAY), in
    /// milliseconds; clients reconnect when they need to.
    pub idle_ms: u64,
    /// Open connections per remote IP address, per listener; more are closed at once.
    pub connections_per_address_max: usize,
    /// Open connections per listener; more are closed at once. Each holds a file descriptor.
    pub connections_max: usize,
    /// Concurrent HTTP/2 streams (requests) per connection, announced to the client.
    pub streams_per_connection_max: u32,
    /// Storage reads of listings and streams (`History`, `ListEpochs`, `VerifierStream`
    /// epochs, `Watch` catch-up) running at once on blocking threads; more wait their turn.
    /// Lookups read in place and never wait behind them. Default: half the host's cores, at
    /// least 1, so that listings never take every core from lookups.
    pub storage_reads_max: usize,
    /// Client addresses, or networks in CIDR form (`10.1.0.0/16`), that no rate limit applies
    /// to, not even per identity: trusted frontends that enforce their own limits, load
    /// generators. Load tests run against a realm configured for them.
    pub rate_exempt_addresses: Vec<AddressRange>,
    /// Updates per client address, per minute. Default 600 (10 per second): people update
    /// their keys rarely, but an address may be a NAT of many people; one address cannot take
    /// more than a small share of a replica's few thousand updates per second.
    pub rate_updates_per_address_per_minute: u32,
    /// Updates per client address at once. Default 100: a client registering a household's or
    /// a small team's keys in one go.
    pub rate_updates_per_address_burst: u32,
    /// Updates of one identity (its VRF index), from any address, per minute. Default 12 (one
    /// every 5 s): an identity changes its key a few times a year; many addresses hammering
    /// one identity (guessing a registration code, flooding its history) share this bucket.
    /// While it is drained the owner's own updates wait too, hence not lower.
    pub rate_updates_per_identity_per_minute: u32,
    /// Updates of one identity at once. Default 10: an owner's retries after failed attempts.
    pub rate_updates_per_identity_burst: u32,
    /// Registration attempts (updates of an identity without an entry, failed ones included)
    /// per client address, per hour. Default 20: a household or an office registering its
    /// people; guessing registration codes from one address gets 20 tries an hour.
    pub rate_registrations_per_address_per_hour: u32,
    /// Registration attempts per client address at once. Default 10.
    pub rate_registrations_per_address_burst: u32,
    /// Lookups of user ids the client address has not asked for recently (its last 256), per
    /// minute. Default 300 (5 per second): re-checking one's contacts costs nothing, while
    /// enumerating user ids through the VRF drops from about 1,300 per second per replica to 5.
    pub rate_lookups_distinct_per_address_per_minute: u32,
    /// New user ids looked up per client address at once. Default 1000: a new device checking
    /// an address book.
    pub rate_lookups_distinct_per_address_burst: u32,
    /// E-mail code requests per client address, per hour. Default 20: each sends a mail.
    pub rate_email_codes_per_address_per_hour: u32,
    /// E-mail code requests per client address at once. Default 5.
    pub rate_email_codes_per_address_burst: u32,
    /// E-mail code requests for one identity (its mailbox), from any address, per hour.
    /// Default 6: a person asking again because mail was slow; more is mail bombing.
    pub rate_email_codes_per_identity_per_hour: u32,
    /// E-mail code requests for one identity at once. Default 3.
    pub rate_email_codes_per_identity_burst: u32,
    /// Keys (client addresses, identities) each rate limit remembers. When a new key finds the
    /// table full, the half closest to a full bucket is forgotten. Default 100000: about 100
    /// bytes each, at most about 10 MB per limit under an attack from many addresses.
    pub rate_keys_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_bytes_max: 64 * 1024,
            wait_ms_max: 30_000,
            forward_timeout_ms: 10_000,
            concurrency_per_connection: 256,
            verifier_stream_stall_ms: 60_000,
            watch_stall_ms: 60_000,
            watch_streams_max: 10_000,
            verifier_streams_max: 64,
            handshake_ms: 10_000,
            idle_ms: 120_000,
            connections_per_address_max: 1_000,
            connections_max: 10_000,
            streams_per_connection_max: 100,
            storage_reads_max: std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            rate_exempt_addresses: Vec::new(),
            rate_updates_per_address_per_minute: 600,
            rate_updates_per_address_burst: 100,
            rate_updates_per_identity_per_minute: 12,
            rate_updates_per_identity_burst: 10,
            rate_registrations_per_address_per_hour: 20,
            rate_registrations_per_address_burst: 10,
            rate_lookups_distinct_per_address_per_minute: 300,
            rate_lookups_distinct_per_address_burst: 1_000,
            rate_email_codes_per_address_per_hour: 20,
            rate_email_codes_per_address_burst: 5,
            rate_email_codes_per_identity_per_hour: 6,
            rate_email_codes_per_identity_burst: 3,
            rate_keys_max: 100_000,
        }
    }
}

/// The persistent engine of a node's Raft log and state (`storage.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// sled 0.34 (the default; see docs/decisions.md for why).
    #[default]
    Sled,
    /// redb 2.
    Redb,
}

impl EngineKind {
    /// The name a configuration gives it.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Sled => "sled",
            EngineKind::Redb => "redb",
        }
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sled" => Ok(EngineKind::Sled),
            "redb" => Ok(EngineKind::Redb),
            other => Err(format!("unknown storage engine {other:?}: sled or redb")),
        }
    }
}

/// Storage (`[storage]`).
///
/// ```toml
/// [storage]
/// engine = "sled"          # or "redb"; a data directory keeps the engine that created it
/// state_cache_bytes = 134217728
/// log_cache_bytes = 33554432
/// retention_epochs = 0
/// ```
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// The engine under the Raft log and the state.
    pub engine: EngineKind,
    /// The engine's cache for the state, in bytes.
    pub state_cache_bytes: u64,
    /// The engine's cache for the Raft log, in bytes.
    pub log_cache_bytes: u64,
    /// Keep the trees of only the newest this many epochs (0: keep every epoch's tree, the
    /// default). Lookups, histories and watches that need an older tree are refused with
    /// FAILED_PRECONDITION; heads, signatures and updates are all kept.
    pub retention_epochs: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            engine: EngineKind::Sled,
            state_cache_bytes: 128 * 1024 * 1024,
            log_cache_bytes: 32 * 1024 * 1024,
            retention_epochs: 0,
        }
    }
}

impl StorageSettings {
    /// The engine and settings of the Raft log.
    pub fn log_engine(&self) -> DiskEngine {
        match self.engine {
            // Purged entries would stay in a value log forever.
            EngineKind::Sled => {
                DiskEngine::Sled(SledOptions { cache_capacity_bytes: self.log_cache_bytes, value_log_min_bytes: None })
            }
            // Flushed at every group commit and kept small behind snapshots: a full repair
            // after a crash is quick, and a quick-repair commit would cost a second fsync each.
            EngineKind::Redb => DiskEngine::Redb(RedbOptions {
                cache_capacity_bytes: self.log_cache_bytes,
                quick_repair: false,
                ..RedbOptions::default()
            }),
        }
    }

    /// The engine and settings of the state.
    pub fn state_engine(&self) -> DiskEngine {
        match self.engine {
            EngineKind::Sled => {
                DiskEngine::Sled(SledOptions { cache_capacity_bytes: self.state_cache_bytes, ..SledOptions::default() })
            }
            EngineKind::Redb => {
                DiskEngine::Redb(RedbOptions { cache_capacity_bytes: self.state_cache_bytes, ..RedbOptions::default() })
            }
        }
    }
}

/// The fewest epochs a retention setting keeps: a lookup answers from the newest epoch its
/// verifier threshold allows, which trails the newest closed one by the verifiers' lag.
pub const RETENTION_EPOCHS_MIN: u64 = 2;

/// One initial voter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VoterSpec {
    /// Raft node id.
    pub id: u64,
    /// Its peer address.
    pub peer_addr: String,
    /// Its public address.
    pub public_addr: String,
}

pub use keyraft_core::key_file::Secret;

/// A configuration with its secrets loaded and checked (`Debug` shows none of them).
#[derive(Debug)]
pub struct Loaded {
    /// The file's settings, with paths resolved.
    pub config: NodeConfig,
    /// The realm.
    pub realm: RealmConfig,
    /// The VRF secret key.
    pub vrf: VrfSecretKey,
    /// This replica's head-signing key.
    pub signing_key: SigningKey,
    /// Its further head-signing keys (`next_signing_key_files`).
    pub next_signing_keys: Vec<SigningKey>,
    /// The cluster token.
    pub cluster_token: Secret<String>,
    /// The admin token, if admin calls are taken.
    pub admin_token: Option<Secret<String>>,
    /// TLS, or `None` for plaintext.
    pub tls: Option<crate::tls::NodeTls>,
    /// The realm file's `clock_skew_ms`: how far apart clocks may be when registration proofs
    /// (attestations, ID tokens) are judged.
    pub realm_clock_skew_ms: u64,
    /// The clock, storage engine, network and randomness to run with: production's unless
    /// a simulation or a test replaces them.
    pub seams: crate::seams::Seams,
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// Reads a secret key file ([`keyraft_core::key_file`]); `what` names the setting that
/// needs it. A legacy (headerless) file is accepted with a warning to migrate it.
pub fn read_secret32(path: &Path, what: &str) -> Result<keyraft_core::key_file::SecretSeed, Error> {
    let read =
        keyraft_core::key_file::read_secret(path, what).map_err(|e| Error::config_because(what.to_owned(), e))?;
    if read.legacy {
        tracing::warn!("{}", keyraft_core::key_file::legacy_warning(path, what));
    }
    Ok(read.key)
}

impl NodeConfig {
    /// Reads and checks `path`, loading the keys it names.
    pub fn load(path: &Path) -> Result<Loaded, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let mut config: NodeConfig =
            toml::from_str(&text).map_err(|e| Error::config_because(path.display().to_string(), e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = resolve(base, &config.data_dir);
        config.realm_file = resolve(base, &config.realm_file);
        config.vrf_secret_key_file = resolve(base, &config.vrf_secret_key_file);
        config.signing_key_file = resolve(base, &config.signing_key_file);
        config.next_signing_key_files = config.next_signing_key_files.iter().map(|p| resolve(base, p)).collect();
        config.cluster_token_file = resolve(base, &config.cluster_token_file);
        config.admin_token_file = config.admin_token_file.as_ref().map(|p| resolve(base, p));
        config.registration.resolve_paths(base);
        if let Some(tls) = &mut config.tls {
            for p in [&mut tls.cert_file, &mut tls.key_file, &mut tls.ca_file].into_iter().flatten() {
                *p = resolve(base, p);
            }
        }
        config.check()?;

        let realm_json = std::fs::read_to_string(&config.realm_file)
            .map_err(|e| Error::io(format!("reading the realm file {}", config.realm_file.display()), e))?;
        let realm_file = RealmFile::from_json(&realm_json)
            .map_err(|e| Error::config_because(config.realm_file.display().to_string(), e))?;
        let realm =
            realm_file.config().map_err(|e| Error::config_because(config.realm_file.display().to_string(), e))?;
        let vrf = VrfSecretKey::from_seed(&*read_secret32(&config.vrf_secret_key_file, "vrf_secret_key_file")?);
        if vrf.public_key() != realm.vrf_public_key {
            return Err(Error::config(format!(
                "the VRF secret key {} does not match the realm's vrf_public_key",
                config.vrf_secret_key_file.display()
            )));
        }
        let signing_key = SigningKey::from_bytes(&*read_secret32(&config.signing_key_file, "signing_key_file")?);
        let next_signing_keys = config
            .next_signing_key_files
            .iter()
            .map(|p| read_secret32(p, "next_signing_key_files").map(|k| SigningKey::from_bytes(&k)))
            .collect::<Result<Vec<_>, _>>()?;
        // Whether these keys sign is decided per configuration, once the state says which
        // one is in force: a node may start before the change that binds its key is in a
        // head (a replacement node, a rotation), so a key the realm file does not know is no
        // error here (the signature proposer says why this node does not sign).
        for key in std::iter::once(&signing_key).chain(&next_signing_keys) {
            keyraft_core::PublicKey::from_verifying_key(&key.verifying_key())
                .map_err(|e| Error::config_because("signing key", e))?;
        }
        let cluster_token = read_token(&config.cluster_token_file, "cluster_token_file")?;
        let admin_token = config.admin_token_file.as_deref().map(|p| read_token(p, "admin_token_file")).transpose()?;
        if admin_token.as_ref().is_some_and(|a| **a == *cluster_token) {
            return Err(Error::config(
                "admin_token_file holds the cluster token: the admin credential must be another secret (a replica \
                 must not be able to act as an operator, nor an operator as a replica)",
            ));
        }
        let tls_settings = config.tls.as_ref().ok_or_else(|| {
            Error::config(
                "[tls] is missing: give cert_file, key_file and ca_file (docs/operations.md, \"Certificates\"), or \
                 plaintext = true to serve without TLS (development only)",
            )
        })?;
        let tls = match crate::tls::TlsFiles::from_settings(tls_settings)? {
            Some(files) => Some(crate::tls::NodeTls::load(files, config.node_id, &realm.realm)?),
            None => {
                tracing::warn!(
                    "[tls] plaintext = true: this node serves and dials without TLS; tokens and lookups cross the \
                     network in clear (development only)"
                );
                None
            }
        };
        Ok(Loaded {
            config,
            realm,
            vrf,
            signing_key,
            next_signing_keys,
            cluster_token,
            admin_token,
            tls,
            realm_clock_skew_ms: realm_file.clock_skew_ms,
            seams: crate::seams::Seams::default(),
        })
    }

    /// Checks every setting against its range (a message names the key), then the relations
    /// between settings.
    pub(crate) fn check(&self) -> Result<(), Error> {
        let (e, r, l, s) = (self.epochs, self.raft, &self.limits, self.storage);
        for (key, value, min, max) in [
            ("node_id", self.node_id, 1, u64::MAX),
            ("epochs.min_epoch_interval_ms", e.min_epoch_interval_ms, 10, HOUR_MS),
            ("epochs.max_epoch_interval_ms", e.max_epoch_interval_ms, 10, DAY_MS),
            ("epochs.proposal_retry_ms", e.proposal_retry_ms, 1, MINUTE_MS),
            ("epochs.proposal_retry_max_ms", e.proposal_retry_max_ms, 1, 10 * MINUTE_MS),
            ("raft.heartbeat_interval_ms", r.heartbeat_interval_ms, 10, MINUTE_MS),
            ("raft.election_timeout_min_ms", r.election_timeout_min_ms, 30, 10 * MINUTE_MS),
            ("raft.election_timeout_max_ms", r.election_timeout_max_ms, 30, 10 * MINUTE_MS),
            ("raft.snapshot_after_entries", r.snapshot_after_entries, 1, 1_000_000_000),
            ("raft.entries_kept_after_snapshot", r.entries_kept_after_snapshot, 0, 1_000_000_000),
            ("raft.install_snapshot_timeout_ms", r.install_snapshot_timeout_ms, 100, HOUR_MS),
            ("raft.max_payload_entries", r.max_payload_entries, 1, PAYLOAD_ENTRIES_MAX),
            ("limits.request_bytes_max", l.request_bytes_max as u64, 1024, PUBLIC_MESSAGE_BYTES_MAX as u64),
            ("limits.wait_ms_max", l.wait_ms_max, 1, 10 * MINUTE_MS),
            ("limits.forward_timeout_ms", l.forward_timeout_ms, 100, 10 * MINUTE_MS),
            ("limits.concurrency_per_connection", l.concurrency_per_connection as u64, 1, 100_000),
            ("limits.verifier_stream_stall_ms", l.verifier_stream_stall_ms, STALL_MS_MIN, HOUR_MS),
            ("limits.watch_stall_ms", l.watch_stall_ms, STALL_MS_MIN, HOUR_MS),
            ("limits.watch_streams_max", l.watch_streams_max as u64, 1, 1_000_000),
            ("limits.verifier_streams_max", l.verifier_streams_max as u64, 1, 1_000_000),
            ("limits.handshake_ms", l.handshake_ms, 100, 10 * MINUTE_MS),
            ("limits.idle_ms", l.idle_ms, 1_000, DAY_MS),
            ("limits.connections_per_address_max", l.connections_per_address_max as u64, 1, 10_000_000),
            ("limits.connections_max", l.connections_max as u64, 1, 10_000_000),
            ("limits.streams_per_connection_max", u64::from(l.streams_per_connection_max), 1, 1_000_000),
            ("limits.storage_reads_max", l.storage_reads_max as u64, 1, STORAGE_READS_MAX),
            ("limits.rate_keys_max", l.rate_keys_max as u64, 1_000, 100_000_000),
            ("storage.state_cache_bytes", s.state_cache_bytes, MIB, 1 << 40),
            ("storage.log_cache_bytes", s.log_cache_bytes, MIB, 1 << 40),
        ] {
            check_range(key, value, min, max)?;
        }
        if s.retention_epochs != 0 {
            check_range("storage.retention_epochs", s.retention_epochs, RETENTION_EPOCHS_MIN, u64::MAX)?;
        }
        for (key, rate, burst_key, burst) in l.rate_settings() {
            check_range(key, u64::from(rate), 0, RATE_MAX)?;
            // A rate of 0 turns the limit off; a burst of 0 with a rate would refuse everything.
            if rate > 0 {
                check_range(burst_key, u64::from(burst), 1, RATE_MAX)?;
            }
        }
        for (key, value, other, bound) in [
            (
                "epochs.max_epoch_interval_ms",
                e.max_epoch_interval_ms,
                "epochs.min_epoch_interval_ms",
                e.min_epoch_interval_ms,
            ),
            ("epochs.proposal_retry_max_ms", e.proposal_retry_max_ms, "epochs.proposal_retry_ms", e.proposal_retry_ms),
        ] {
            if value < bound {
                return Err(Error::config(format!("{key} = {value}: must be at least {other} ({bound})")));
            }
        }
        // A follower must miss at least two heartbeats before it calls an election.
        if r.election_timeout_min_ms <= r.heartbeat_interval_ms.saturating_mul(2) {
            return Err(Error::config(format!(
                "raft.election_timeout_min_ms = {}: must be more than twice raft.heartbeat_interval_ms ({})",
                r.election_timeout_min_ms, r.heartbeat_interval_ms
            )));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(Error::config(format!(
                "raft.election_timeout_max_ms = {}: must be more than raft.election_timeout_min_ms ({})",
                r.election_timeout_max_ms, r.election_timeout_min_ms
            )));
        }
        Ok(())
    }
}

impl Limits {
    /// Each rate limit's keys and settings: (rate key, rate, burst key, burst).
    fn rate_settings(&self) -> [(&'static str, u32, &'static str, u32); 6] {
        [
            (
                "limits.rate_updates_per_address_per_minute",
                self.rate_updates_per_address_per_minute,
                "limits.rate_updates_per_address_burst",
                self.rate_updates_per_address_burst,
            ),
            (
                "limits.rate_updates_per_identity_per_minute",
                self.rate_updates_per_identity_per_minute,
                "limits.rate_updates_per_identity_burst",
                self.rate_updates_per_identity_burst,
            ),
            (
                "limits.rate_registrations_per_address_per_hour",
                self.rate_registrations_per_address_per_hour,
                "limits.rate_registrations_per_address_burst",
                self.rate_registrations_per_address_burst,
            ),
            (
                "limits.rate_lookups_distinct_per_address_per_minute",
                self.rate_lookups_distinct_per_address_per_minute,
                "limits.rate_lookups_distinct_per_address_burst",
                self.rate_lookups_distinct_per_address_burst,
            ),
            (
                "limits.rate_email_codes_per_address_per_hour",
                self.rate_email_codes_per_address_per_hour,
                "limits.rate_email_codes_per_address_burst",
                self.rate_email_codes_per_address_burst,
            ),
            (
                "limits.rate_email_codes_per_identity_per_hour",
                self.rate_email_codes_per_identity_per_hour,
                "limits.rate_email_codes_per_identity_burst",
                self.rate_email_codes_per_identity_burst,
            ),
        ]
    }
}

/// Largest rate (per minute or per hour) and burst of a rate limit.
const RATE_MAX: u64 = 1_000_000;
const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;
const MIB: u64 = 1024 * 1024;
/// tokio's blocking pool has 512 threads: concurrent storage reads must leave some of them to
/// the apply path and the log.
const STORAGE_READS_MAX: u64 = 256;
/// Entries per AppendEntries message, at most: each entry is a batch of about 1 MiB of
/// commands (a little more: the batch closes once it passes 1 MiB) and a peer message holds at
/// most 64 MiB.
const PAYLOAD_ENTRIES_MAX: u64 = 48;

/// `key = value` must lie in `min..=max`.
fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), Error> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Error::config(format!("{key} = {value}: must be between {min} and {max}")))
    }
}

/// Tokens go into an HTTP header: printable ASCII, long enough to guess hard.
pub fn check_token(token: &str) -> Result<(), Error> {
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::config("a token must be at least 16 printable ASCII characters"));
    }
    Ok(())
}

/// Reads a token file (owner-only, at least 16 printable characters); `setting` names it.
fn read_token(path: &Path, setting: &str) -> Result<Secret<String>, Error> {
    keyraft_core::key_file::check_owner_only(path, setting)
        .map_err(|e| Error::config_because(setting.to_owned(), e))?;
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {setting} {}", path.display()), e))?,
    );
    let token = Secret::new(text.trim().to_owned());
    check_token(&token).map_err(|e| Error::config(format!("{setting} {}: {e}", path.display())))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        NodeConfig {
            node_id: 1,
            data_dir: "data".into(),
            public_listen: "127.0.0.1:0".into(),
            peer_listen: "127.0.0.1:0".into(),
            metrics_listen: None,
            realm_file: "realm.json".into(),
            vrf_secret_key_file: "vrf.key".into(),
            signing_key_file: "replica.key".into(),
            next_signing_key_files: vec![],
            cluster_token_file: "cluster.token".into(),
            admin_token_file: None,
            tls: Some(TlsSettings::plaintext()),
            epochs: EpochSettings::default(),
            raft: RaftSettings::default(),
            limits: Limits::default(),
            storage: StorageSettings::default(),
            voters: vec![],
            registration: Default::default(),
        }
    }

    /// The check's message for `config` after `edit`, which must name `key`.
    #[track_caller]
    fn refused(key: &str, edit: impl FnOnce(&mut NodeConfig)) -> String {
        let mut c = config();
        edit(&mut c);
        let message = c.check().expect_err(key).to_string();
        assert!(message.contains(key), "{key}: {message}");
        message
    }

    #[test]
    fn defaults_pass() {
        config().check().unwrap();
    }

    #[test]
    fn each_key_out_of_range_is_refused_by_name() {
        let m = refused("raft.heartbeat_interval_ms", |c| c.raft.heartbeat_interval_ms = 0);
        assert!(m.contains("raft.heartbeat_interval_ms = 0: must be between 10 and 60000"), "{m}");
        refused("node_id", |c| c.node_id = 0);
        refused("epochs.min_epoch_interval_ms", |c| c.epochs.min_epoch_interval_ms = 0);
        refused("epochs.max_epoch_interval_ms", |c| c.epochs.max_epoch_interval_ms = 0);
        refused("epochs.max_epoch_interval_ms", |c| c.epochs.max_epoch_interval_ms = u64::MAX);
        refused("epochs.proposal_retry_ms", |c| c.epochs.proposal_retry_ms = 0);
        refused("epochs.proposal_retry_max_ms", |c| c.epochs.proposal_retry_max_ms = i64::MAX as u64);
        refused("raft.heartbeat_interval_ms", |c| c.raft.heartbeat_interval_ms = i64::MAX as u64);
        refused("raft.election_timeout_min_ms", |c| c.raft.election_timeout_min_ms = 0);
        refused("raft.election_timeout_max_ms", |c| c.raft.election_timeout_max_ms = u64::MAX);
        refused("raft.snapshot_after_entries", |c| c.raft.snapshot_after_entries = 0);
        refused("raft.entries_kept_after_snapshot", |c| c.raft.entries_kept_after_snapshot = u64::MAX);
        refused("raft.install_snapshot_timeout_ms", |c| c.raft.install_snapshot_timeout_ms = 0);
        refused("raft.max_payload_entries", |c| c.raft.max_payload_entries = 0);
        refused("raft.max_payload_entries", |c| c.raft.max_payload_entries = 1000);
        refused("limits.request_bytes_max", |c| c.limits.request_bytes_max = 0);
        refused("limits.request_bytes_max", |c| c.limits.request_bytes_max = 100 << 20);
        refused("limits.wait_ms_max", |c| c.limits.wait_ms_max = 0);
        refused("limits.wait_ms_max", |c| c.limits.wait_ms_max = i64::MAX as u64);
        refused("limits.forward_timeout_ms", |c| c.limits.forward_timeout_ms = 0);
        refused("limits.concurrency_per_connection", |c| c.limits.concurrency_per_connection = 0);
        refused("limits.verifier_stream_stall_ms", |c| c.limits.verifier_stream_stall_ms = 10);
        refused("limits.watch_stall_ms", |c| c.limits.watch_stall_ms = u64::MAX);
        refused("limits.watch_streams_max", |c| c.limits.watch_streams_max = 0);
        refused("limits.storage_reads_max", |c| c.limits.storage_reads_max = 0);
        refused("limits.storage_reads_max", |c| c.limits.storage_reads_max = 10_000);
        refused("limits.rate_keys_max", |c| c.limits.rate_keys_max = 0);
        refused("limits.rate_updates_per_address_per_minute", |c| {
            c.limits.rate_updates_per_address_per_minute = u32::MAX
        });
        refused("limits.rate_updates_per_address_burst", |c| c.limits.rate_updates_per_address_burst = 0);
        refused("limits.rate_updates_per_identity_burst", |c| c.limits.rate_updates_per_identity_burst = 0);
        refused("limits.rate_registrations_per_address_burst", |c| c.limits.rate_registrations_per_address_burst = 0);
        refused("limits.rate_lookups_distinct_per_address_burst", |c| {
            c.limits.rate_lookups_distinct_per_address_burst = 0;
        });
        refused("limits.rate_email_codes_per_address_burst", |c| c.limits.rate_email_codes_per_address_burst = 0);
        refused("limits.rate_email_codes_per_identity_per_hour", |c| {
            c.limits.rate_email_codes_per_identity_per_hour = 2_000_000;
        });
        refused("storage.state_cache_bytes", |c| c.storage.state_cache_bytes = 0);
        refused("storage.log_cache_bytes", |c| c.storage.log_cache_bytes = u64::MAX);
        refused("storage.retention_epochs", |c| c.storage.retention_epochs = 1);
    }

    #[test]
    fn related_keys_are_refused_by_name() {
        let m = refused("epochs.max_epoch_interval_ms", |c| {
            c.epochs.min_epoch_interval_ms = 5_000;
            c.epochs.max_epoch_interval_ms = 1_000;
        });
        assert!(m.contains("epochs.min_epoch_interval_ms (5000)"), "{m}");
        refused("epochs.proposal_retry_max_ms", |c| {
            c.epochs.proposal_retry_ms = 500;
            c.epochs.proposal_retry_max_ms = 100;
        });
        let m = refused("raft.election_timeout_min_ms", |c| c.raft.election_timeout_min_ms = 200);
        assert!(m.contains("raft.heartbeat_interval_ms (100)"), "{m}");
        refused("raft.election_timeout_max_ms", |c| c.raft.election_timeout_max_ms = c.raft.election_timeout_min_ms);
    }

    #[test]
    fn bounds_themselves_pass() {
        let mut c = config();
        c.raft.heartbeat_interval_ms = 10;
        c.raft.election_timeout_min_ms = 30;
        c.raft.election_timeout_max_ms = 31;
        c.epochs.min_epoch_interval_ms = 10;
        c.epochs.max_epoch_interval_ms = 10;
        c.limits.request_bytes_max = PUBLIC_MESSAGE_BYTES_MAX;
        c.limits.verifier_stream_stall_ms = STALL_MS_MIN;
        c.raft.snapshot_after_entries = 1;
        c.raft.entries_kept_after_snapshot = 0;
        c.check().unwrap();
    }

    #[test]
    fn a_rate_of_zero_turns_its_limit_off_whatever_its_burst() {
        let mut c = config();
        c.limits.rate_updates_per_address_per_minute = 0;
        c.limits.rate_updates_per_address_burst = 0;
        c.check().unwrap();
    }

    #[test]
    fn rate_settings_read_from_toml_and_bad_exempt_addresses_are_refused_by_name() {
        let base = "node_id = 1\ndata_dir = \"d\"\npublic_listen = \"x\"\npeer_listen = \"y\"\n\
                    realm_file = \"r\"\nvrf_secret_key_file = \"v\"\nsigning_key_file = \"s\"\n\
                    cluster_token_file = \"t\"\n[limits]\n";
        let parsed: NodeConfig = toml::from_str(&format!(
            "{base}rate_exempt_addresses = [\"127.0.0.1\", \"10.1.0.0/16\", \"::1\"]\nrate_updates_per_identity_burst = 3\n"
        ))
        .unwrap();
        assert_eq!(parsed.limits.rate_exempt_addresses.len(), 3);
        assert_eq!(parsed.limits.rate_updates_per_identity_burst, 3);
        assert_eq!(
            parsed.limits.rate_updates_per_address_per_minute,
            Limits::default().rate_updates_per_address_per_minute
        );
        // Written back as written: `keyraft dev` rewrites configurations.
        let again: NodeConfig = toml::from_str(&toml::to_string_pretty(&parsed).unwrap()).unwrap();
        assert_eq!(again.limits.rate_exempt_addresses, parsed.limits.rate_exempt_addresses);
        for (bad, says) in
            [("10.1.0.1/16", "bits set after its /16"), ("10.0.0.0/33", "0 to 32"), ("localhost", "not an IP")]
        {
            let e = toml::from_str::<NodeConfig>(&format!("{base}rate_exempt_addresses = [\"{bad}\"]\n")).unwrap_err();
            let m = e.to_string();
            assert!(m.contains("rate_exempt_addresses") && m.contains(says), "{bad}: {m}");
        }
    }

    #[test]
    fn the_storage_engine_reads_from_toml_by_name_and_an_unknown_one_is_refused() {
        let base = "node_id = 1\ndata_dir = \"d\"\npublic_listen = \"x\"\npeer_listen = \"y\"\n\
                    realm_file = \"r\"\nvrf_secret_key_file = \"v\"\nsigning_key_file = \"s\"\n\
                    cluster_token_file = \"t\"\n";
        let default: NodeConfig = toml::from_str(base).unwrap();
        assert_eq!(default.storage.engine, EngineKind::Sled);
        assert_eq!(default.storage.state_engine().name(), "sled");
        let redb: NodeConfig = toml::from_str(&format!("{base}[storage]\nengine = \"redb\"\n")).unwrap();
        assert_eq!(redb.storage.engine, EngineKind::Redb);
        assert_eq!((redb.storage.log_engine().name(), redb.storage.state_engine().name()), ("redb", "redb"));
        let again: NodeConfig = toml::from_str(&toml::to_string_pretty(&redb).unwrap()).unwrap();
        assert_eq!(again.storage.engine, EngineKind::Redb);
        let m =
            toml::from_str::<NodeConfig>(&format!("{base}[storage]\nengine = \"rocksdb\"\n")).unwrap_err().to_string();
        assert!(m.contains("engine") && m.contains("sled") && m.contains("redb"), "{m}");
        assert_eq!("redb".parse::<EngineKind>(), Ok(EngineKind::Redb));
        assert!("Sled".parse::<EngineKind>().unwrap_err().contains("sled or redb"));
    }
}
