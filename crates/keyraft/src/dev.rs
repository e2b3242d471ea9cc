//! `keyraft dev`: a complete local realm with one command.
//!
//! Under one directory (default `./keyraft-dev`): keys generated on first start and reused
//! after, one configuration per replica, each replica's sled data, a realm file for clients
//! and each replica's log. The replicas run as three `keyraft server` processes. On first
//! start the listeners' ports are chosen (by the OS with `--base-port 0`), written into the
//! configurations, and the cluster is initialised; later starts reuse everything.
//! A replica or verifier that exits is restarted (after a delay that grows while it keeps
//! exiting, logged); ctrl-c or SIGTERM of `keyraft dev` stops them all gracefully.

use keyraft_core::key_file::write_secret;
use keyraft_core::registration::{Method, NamespaceRule, RegistrationPolicy};
use keyraft_core::vrf::VrfSecretKey;
use keyraft_core::{RealmConfig, RealmFile};
use keyraft_proto::transport::Channels;
use keyraft_server::config::{EpochSettings, Limits, NodeConfig, RaftSettings, TlsSettings, VoterSpec};
use keyraft_server::peer_client::connect_lazy;
use keyraft_server::registration::email::{generate_mac_key_file, EmailConfig, SmtpConfig, CODE_TTL_MS_DEFAULT};
use keyraft_server::registration::oidc::OidcIssuerConfig;
use keyraft_server::registration::RegistrationSettings;
use keyraft_server::Listening;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// How long replicas get to start listening and to elect a leader.
const START_TIMEOUT_MS: u64 = 60_000;
/// How long replicas get to stop after SIGTERM before they are killed.
const STOP_TIMEOUT_MS: u64 = 15_000;

/// Options of `keyraft dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// The realm's directory (created on first start, reused after).
    #[arg(long, default_value = "keyraft-dev")]
    pub dir: PathBuf,
    /// Public ports are base+1..base+3, peer ports base+101..base+103, metrics ports (HTTP
    /// probes) base+201..base+203, verifiers' metrics ports base+301..; 0 lets the OS choose
    /// (first start only; the chosen replica ports are kept).
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// Number of replicas (first start only).
    #[arg(long, default_value_t = 3)]
    pub replicas: u64,
    /// Epoch intervals in milliseconds (first start only).
    #[arg(long, default_value_t = 500)]
    pub min_epoch_interval_ms: u64,
    /// Epoch intervals in milliseconds (first start only).
    #[arg(long, default_value_t = 5_000)]
    pub max_epoch_interval_ms: u64,
    /// How many third-party verifier processes to run (first start only). With one or more,
    /// the realm file's `verifier_threshold` is 1: clients accept only epochs a verifier
    /// ratified. (Not the clients' `--verifiers`, the ratifications they require.)
    #[arg(long, default_value_t = 1)]
    pub verifier_count: usize,
    /// Start, initialise, print the summary and stop (for scripts and tests).
    #[arg(long)]
    pub exit_when_ready: bool,
    /// Close verifier-stream and Watch readers that accept nothing for this many milliseconds
    /// (`verifier_stream_stall_ms` and `watch_stall_ms`; first start only; default 60000).
    #[arg(long)]
    pub stream_stall_ms: Option<u64>,
    /// The realm's protocol version (first start only): 2 (canonical user ids, a
    /// registration policy) or 1 (raw ids, first come, first served; for testing upgrades).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub protocol_version: u8,
    /// Who may register identities (first start only): NAMESPACE=METHOD[,METHOD...], repeat
    /// for several namespaces, the first matching decides. Methods: `open`, `registrar`,
    /// `email`, `oidc` (with `--oidc-issuer` and `--oidc-audience`). Default: `*=open`, first
    /// come, first served, which the summary says.
    #[arg(long = "registration", value_name = "NAMESPACE=METHODS")]
    pub registration: Vec<String>,
    /// A registrar's public key (hex, or a `.pub` file from `keyraft keygen`) for the
    /// `registrar` method; repeat for several (first start only).
    #[arg(long = "registrar-key", value_name = "KEY")]
    pub registrar_keys: Vec<String>,
    /// The veto window of recoveries, in milliseconds (first start only; default a day; 0
    /// disables recovery): how long a recovery waits for its owner's veto.
    #[arg(long)]
    pub recovery_window_ms: Option<u64>,
    /// For the `email` method: write registration codes to the replicas' logs
    /// (`keyraft-dev/logs/node-N.log`) instead of mailing them (first start only; the summary
    /// says so).
    #[arg(long, conflicts_with = "smtp_relay")]
    pub email_codes_to_log: bool,
    /// For the `email` method: mail codes through this SMTP relay (HOST:PORT; plaintext,
    /// loopback only; first start only).
    #[arg(long, value_name = "HOST:PORT")]
    pub smtp_relay: Option<String>,
    /// For the `oidc` method: the ID tokens' issuer (first start only).
    #[arg(long, requires = "oidc_audience")]
    pub oidc_issuer: Option<String>,
    /// For the `oidc` method: the audience (client id) the tokens must name.
    #[arg(long, requires = "oidc_issuer")]
    pub oidc_audience: Option<String>,
    /// For the `oidc` method: the issuer's JWKS file (re-read when it changes).
    #[arg(long, requires = "oidc_issuer", conflicts_with = "oidc_jwks_url")]
    pub oidc_jwks_file: Option<PathBuf>,
    /// For the `oidc` method: the issuer's JWKS URL.
    #[arg(long, requires = "oidc_issuer")]
    pub oidc_jwks_url: Option<String>,
    /// Keep the production rate limits (`[limits]` `rate_*`) for loopback clients too (first
    /// start only). Without it the replicas exempt loopback (`rate_exempt_addresses`): a dev
    /// realm's clients are the developer, its tests and `keyraft bench`, and load tests run
    /// against a realm configured for them.
    #[arg(long)]
    pub rate_limits: bool,
    /// Serve without TLS (first start only): tokens and lookups cross loopback in clear, and
    /// the summary says so. Without it the realm gets its own CA under DIR/tls, a certificate
    /// per node (mutual TLS between replicas) and one for the operator.
    #[arg(long)]
    pub plaintext: bool,
    /// The storage engine of the replicas (`[storage] engine`; first start only): sled, the
    /// default, or redb.
    #[arg(long, default_value = "sled")]
    pub engine: keyraft_server::config::EngineKind,
}

/// Where `keyraft dev` keeps the realm's CA and certificates.
pub const TLS_DIR: &str = "tls";
/// The names each dev node's certificate is valid for besides `node-<id>.<realm>`: the
/// loopback addresses clients dial.
const DEV_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The replicas' `[registration]` settings from `--email-codes-to-log`, `--smtp-relay` and
/// `--oidc-*`; writes the e-mail MAC key the replicas share when e-mail codes are on.
fn registration_settings(args: &DevArgs, dir: &Path) -> Result<RegistrationSettings, Box<dyn std::error::Error>> {
    let mut settings = RegistrationSettings::default();
    if args.email_codes_to_log || args.smtp_relay.is_some() {
        let key = dir.join("keys/email-mac.key");
        generate_mac_key_file(&key)?;
        let smtp = match &args.smtp_relay {
            Some(relay) => {
                let (host, port) = relay
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                    .ok_or_else(|| format!("--smtp-relay {relay:?}: expected HOST:PORT"))?;
                Some(SmtpConfig {
                    host,
                    port,
                    from: "keyraft-dev@localhost".into(),
                    starttls: false,
                    username: None,
                    password_file: None,
                    ca_file: None,
                    timeout_ms: 10_000,
                })
            }
            None => None,
        };
        settings.email = Some(EmailConfig {
            mac_key_file: "keys/email-mac.key".into(),
            code_ttl_ms: CODE_TTL_MS_DEFAULT,
            smtp,
            log_codes: args.email_codes_to_log,
        });
    }
    if let Some(issuer) = &args.oidc_issuer {
        let mut config = match (&args.oidc_jwks_file, &args.oidc_jwks_url) {
            (Some(file), _) => OidcIssuerConfig::file(issuer.clone(), std::path::absolute(file)?),
            (None, Some(url)) => OidcIssuerConfig::url(issuer.clone(), url.clone()),
            (None, None) => return Err("--oidc-issuer needs --oidc-jwks-file or --oidc-jwks-url".into()),
        };
        // Tests replace the file and expect the new keys soon.
        config.min_refetch_ms = config.min_refetch_ms.min(1_000);
        settings.oidc.push(config);
    }
    Ok(settings)
}

/// The realm's registration policy from `--registration` and `--registrar-key`.
fn registration_policy(args: &DevArgs) -> Result<RegistrationPolicy, Box<dyn std::error::Error>> {
    let oidc = args.oidc_issuer.as_deref().zip(args.oidc_audience.as_deref());
    registration_policy_from(&args.registration, &args.registrar_keys, args.recovery_window_ms, oidc)
}

/// A registration policy from `--registration NAMESPACE=METHODS` specs, `--registrar-key`
/// keys, a recovery window and the OIDC issuer and audience (`keyraft dev`,
/// `keyraft cluster-config`): open to all when `specs` is empty.
pub(crate) fn registration_policy_from(
    specs: &[String],
    registrar_keys: &[String],
    recovery_window_ms: Option<u64>,
    oidc: Option<(&str, &str)>,
) -> Result<RegistrationPolicy, Box<dyn std::error::Error>> {
    let mut policy = RegistrationPolicy::open();
    policy.registrar_keys = registrar_keys
        .iter()
        .map(|k| crate::client_cmd::public_key_arg(k, "--registrar-key"))
        .collect::<Result<_, _>>()?;
    if let Some(window) = recovery_window_ms {
        policy.recovery_window_ms = window;
    }
    if specs.is_empty() {
        return Ok(policy);
    }
    policy.rules.clear();
    for spec in specs {
        let (namespace, methods) = spec
            .split_once('=')
            .ok_or_else(|| format!("--registration {spec:?}: expected NAMESPACE=METHOD[,METHOD...]"))?;
        let methods = methods
            .split(',')
            .map(|m| match m.trim() {
                "open" => Ok(Method::Open),
                "registrar" => Ok(Method::Registrar),
                "email" => Ok(Method::Email),
                "oidc" => match oidc {
                    Some((issuer, audience)) => Ok(Method::Oidc {
                        issuer: issuer.to_owned(),
                        audience: audience.to_owned(),
                        claim: keyraft_core::registration::OIDC_CLAIM_DEFAULT.to_owned(),
                    }),
                    None => Err(format!("--registration {spec:?}: `oidc` needs --oidc-issuer and --oidc-audience")),
                },
                other => {
                    Err(format!("--registration {spec:?}: unknown method {other:?} (open, registrar, email, oidc)"))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        policy.rules.push(NamespaceRule { namespace: namespace.to_owned(), methods });
    }
    Ok(policy)
}

fn node_config_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}.toml"))
}

fn verifier_config_path(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("verifier-{n}.toml"))
}

fn port(base: u16, offset: u16) -> Result<u16, String> {
    if base == 0 {
        return Ok(0);
    }
    base.checked_add(offset).ok_or_else(|| format!("--base-port {base} is too high"))
}

/// 32 random bytes (a key seed, a token).
pub(crate) fn random32() -> [u8; 32] {
    rand::Rng::gen(&mut rand::rngs::OsRng)
}

/// A new token (the cluster token, the admin token): 64 hex digits and a newline.
pub(crate) fn new_token() -> String {
    format!("{}\n", hex::encode(random32()))
}

/// The public key of an Ed25519 seed.
pub(crate) fn public_key_of(seed: &[u8; 32]) -> keyraft_core::PublicKey {
    keyraft_client::public_key(&ed25519_dalek::SigningKey::from_bytes(seed))
}

/// A realm's configuration: replica `n` (from 1) of `replica_keys` is bound to node id `n`
/// in protocol version 2 (with `registration`); version 1 without it.
pub(crate) fn realm_config(
    name: String,
    vrf_seed: &[u8; 32],
    replica_keys: Vec<keyraft_core::PublicKey>,
    verifier_keys: Vec<keyraft_core::PublicKey>,
    registration: Option<RegistrationPolicy>,
) -> Result<RealmConfig, Box<dyn std::error::Error>> {
    // Node `id` signs with keys/replica-{id}.key: version 2 binds the key to the node id.
    let bindings: Vec<(u64, keyraft_core::PublicKey)> = (1..).zip(replica_keys.iter().copied()).collect();
    let config = RealmConfig::new(name, VrfSecretKey::from_seed(vrf_seed).public_key(), replica_keys, verifier_keys)?;
    Ok(match registration {
        Some(policy) => config.with_replica_node_ids(&bindings)?.with_registration(policy)?,
        None => config,
    })
}

/// The realm file clients, replicas and verifiers read: a minute's TTL, 5 s of clock skew,
/// the replicas' public addresses, and the verifiers' ratification required when there are
/// any.
pub(crate) fn realm_file(config: &RealmConfig, endpoints: Vec<String>) -> RealmFile {
    let mut realm = RealmFile::new(config, 60_000, 5_000, endpoints);
    realm.verifier_threshold = config.verifier_keys.len().min(1);
    realm
}

/// Verifier `n`'s configuration, its paths relative to the file: `realm.json`,
/// `keys/verifier-<n>.key`, and `data_dir`.
pub(crate) fn verifier_config(n: usize, data_dir: PathBuf, metrics_listen: Option<String>) -> keyraft_verifier::Config {
    keyraft_verifier::Config {
        data_dir,
        realm_file: "realm.json".into(),
        signing_key_file: format!("keys/verifier-{n}.key").into(),
        endpoints: vec![],
        metrics_listen,
        retention_epochs: 0,
    }
}

/// Where a node listens.
pub(crate) struct NodeListen {
    /// The public listener.
    pub public: String,
    /// The peer listener.
    pub peer: String,
    /// The metrics listener.
    pub metrics: Option<String>,
}

/// What every node of a realm shares in its configuration.
pub(crate) struct NodeSettings {
    /// The `[[voters]]` (`--init`).
    pub voters: Vec<VoterSpec>,
    /// `[tls]` plaintext, or each node's certificate under `tls/`.
    pub plaintext: bool,
    /// `[epochs]`.
    pub epochs: EpochSettings,
    /// `[limits]`.
    pub limits: Limits,
    /// `[registration]`.
    pub registration: RegistrationSettings,
    /// `[storage] engine`.
    pub engine: keyraft_server::config::EngineKind,
}

/// Node `id`'s configuration, its paths relative to the file: `realm.json`, `keys/vrf.key`,
/// `keys/replica-<id>.key`, `keys/cluster.token`, `keys/admin.token`, `tls/` and `data_dir`.
pub(crate) fn node_config(id: u64, data_dir: PathBuf, listen: NodeListen, shared: &NodeSettings) -> NodeConfig {
    NodeConfig {
        node_id: id,
        data_dir,
        public_listen: listen.public,
        peer_listen: listen.peer,
        metrics_listen: listen.metrics,
        realm_file: "realm.json".into(),
        vrf_secret_key_file: "keys/vrf.key".into(),
        signing_key_file: format!("keys/replica-{id}.key").into(),
        next_signing_key_files: vec![],
        cluster_token_file: "keys/cluster.token".into(),
        admin_token_file: Some("keys/admin.token".into()),
        tls: Some(if shared.plaintext { TlsSettings::plaintext() } else { node_tls(id) }),
        epochs: shared.epochs,
        raft: RaftSettings::default(),
        limits: shared.limits.clone(),
        storage: keyraft_server::config::StorageSettings { engine: shared.engine, ..Default::default() },
        voters: shared.voters.clone(),
        registration: shared.registration.clone(),
    }
}

/// Creates keys, realm file and configurations.
fn create(args: &DevArgs) -> CmdResult {
    let dir = &args.dir;
    std::fs::create_dir_all(dir.join("keys"))?;
    // Secret keys live here: whatever checkout the directory is created in, `git add -A`
    // must not commit them.
    std::fs::write(dir.join(".gitignore"), "# written by keyraft dev: secret keys live here\n*\n")?;
    let vrf_seed = random32();
    write_secret(&dir.join("keys/vrf.key"), &vrf_seed)?;
    keyraft_core::key_file::write_secret_text(&dir.join("keys/cluster.token"), &new_token())?;
    // The operators' credential, another secret than the replicas' (docs/operations.md).
    keyraft_core::key_file::write_secret_text(&dir.join("keys/admin.token"), &new_token())?;
    let mut replica_keys = Vec::new();
    for id in 1..=args.replicas {
        let seed = random32();
        write_secret(&dir.join(format!("keys/replica-{id}.key")), &seed)?;
        replica_keys.push(public_key_of(&seed));
    }
    let mut verifier_keys = Vec::new();
    for n in 1..=args.verifier_count {
        let seed = random32();
        write_secret(&dir.join(format!("keys/verifier-{n}.key")), &seed)?;
        verifier_keys.push(public_key_of(&seed));
        let metrics =
            format!("127.0.0.1:{}", port(args.base_port, 300 + u16::try_from(n).map_err(|_| "too many verifiers")?)?);
        let verifier = verifier_config(n, format!("data/verifier-{n}").into(), Some(metrics));
        std::fs::write(verifier_config_path(dir, n), toml::to_string_pretty(&verifier)?)?;
    }
    // A name of its own, so that proofs from two dev realms are told apart by name.
    let name = format!("dev-{}", hex::encode(rand::Rng::gen::<[u8; 4]>(&mut rand::rngs::OsRng)));
    let registration = if args.protocol_version == 2 {
        Some(registration_policy(args)?)
    } else if !args.registration.is_empty() || !args.registrar_keys.is_empty() || args.recovery_window_ms.is_some() {
        return Err("--registration, --registrar-key and --recovery-window-ms need --protocol-version 2".into());
    } else {
        None
    };
    let config = realm_config(name, &vrf_seed, replica_keys, verifier_keys, registration)?;
    let registration_settings = registration_settings(args, dir)?;
    let mut voters = Vec::new();
    for id in 1..=args.replicas {
        let offset = u16::try_from(id).map_err(|_| "too many replicas")?;
        voters.push(VoterSpec {
            id,
            peer_addr: format!("127.0.0.1:{}", port(args.base_port, 100 + offset)?),
            public_addr: format!("127.0.0.1:{}", port(args.base_port, offset)?),
        });
    }
    let mut realm = realm_file(&config, voters.iter().map(|v| v.public_addr.clone()).collect());
    if !args.plaintext {
        let tls_dir = dir.join(TLS_DIR);
        let hosts: Vec<String> = DEV_HOSTS.iter().map(|h| (*h).to_owned()).collect();
        let nodes: Vec<NodeCert> =
            voters.iter().map(|v| NodeCert { id: v.id, dir: tls_dir.clone(), hosts: hosts.clone() }).collect();
        let validity = crate::certs::Validity::days(crate::certs::CERT_VALID_DAYS);
        realm.tls = Some(create_tls(&tls_dir, &config.realm, &nodes, &tls_dir, validity)?);
    }
    std::fs::write(dir.join("realm.json"), realm.to_json())?;
    let shared = NodeSettings {
        voters: voters.clone(),
        plaintext: args.plaintext,
        epochs: EpochSettings {
            min_epoch_interval_ms: args.min_epoch_interval_ms,
            max_epoch_interval_ms: args.max_epoch_interval_ms,
            ..EpochSettings::default()
        },
        limits: dev_limits(args)?,
        registration: registration_settings,
        engine: args.engine,
    };
    for v in &voters {
        let metrics =
            format!("127.0.0.1:{}", port(args.base_port, 200 + u16::try_from(v.id).map_err(|_| "too many replicas")?)?);
        let listen = NodeListen { public: v.public_addr.clone(), peer: v.peer_addr.clone(), metrics: Some(metrics) };
        let node = node_config(v.id, PathBuf::from(format!("data/node-{}", v.id)), listen, &shared);
        std::fs::write(node_config_path(dir, v.id), toml::to_string_pretty(&node)?)?;
    }
    Ok(())
}

/// A node certificate to issue: node `id`'s, into `dir`, also valid for `hosts`.
pub(crate) struct NodeCert {
    /// The node id.
    pub id: u64,
    /// Where `node-<id>.crt` and `.key` go (and a copy of the CA certificate).
    pub dir: PathBuf,
    /// The host names and addresses clients and peers dial it by.
    pub hosts: Vec<String>,
}

/// Makes the realm's CA in `ca_dir`, a certificate per node (each in its `dir`) and one for
/// the operator (`admin.crt` in `admin_dir`); every directory also gets the CA certificate.
/// Returns the realm file's `tls` (the CA certificate).
pub(crate) fn create_tls(
    ca_dir: &Path,
    realm: &str,
    nodes: &[NodeCert],
    admin_dir: &Path,
    validity: crate::certs::Validity,
) -> Result<keyraft_core::realm_file::TlsFile, Box<dyn std::error::Error>> {
    let ca = crate::certs::RealmCa::create(ca_dir, realm, validity)?;
    let ca_cert = ca_dir.join(crate::certs::CA_CERT_FILE);
    let copy_ca = |dir: &Path| -> std::io::Result<()> {
        if dir != ca_dir {
            std::fs::create_dir_all(dir)?;
            std::fs::copy(&ca_cert, dir.join(crate::certs::CA_CERT_FILE))?;
        }
        Ok(())
    };
    for node in nodes {
        ca.issue_node(&node.dir, node.id, &node.hosts, validity)?;
        copy_ca(&node.dir)?;
    }
    ca.issue_admin(admin_dir, None, validity)?;
    copy_ca(admin_dir)?;
    let ca_pem = std::fs::read_to_string(&ca_cert)?;
    Ok(keyraft_core::realm_file::TlsFile { ca_pem })
}

/// Node `id`'s `[tls]`: its certificate from DIR/tls.
fn node_tls(id: u64) -> TlsSettings {
    TlsSettings {
        cert_file: Some(format!("{TLS_DIR}/node-{id}.crt").into()),
        key_file: Some(format!("{TLS_DIR}/node-{id}.key").into()),
        ca_file: Some(format!("{TLS_DIR}/{}", crate::certs::CA_CERT_FILE).into()),
        plaintext: false,
    }
}

/// The replicas' `[limits]`: the defaults, with `--stream-stall-ms` and loopback exempt from
/// the rate limits unless `--rate-limits`.
fn dev_limits(args: &DevArgs) -> Result<Limits, Box<dyn std::error::Error>> {
    let exempt = if args.rate_limits { vec![] } else { vec!["127.0.0.0/8".parse()?, "::1".parse()?] };
    Ok(limits(args.stream_stall_ms, exempt))
}

/// `[limits]`: the defaults, with the stream stall limits (`verifier_stream_stall_ms`,
/// `watch_stall_ms`) and the addresses exempt from rate limits.
pub(crate) fn limits(
    stream_stall_ms: Option<u64>,
    rate_exempt: Vec<keyraft_server::rate_limits::AddressRange>,
) -> Limits {
    let mut limits = Limits::default();
    if let Some(ms) = stream_stall_ms {
        limits.verifier_stream_stall_ms = ms;
        limits.watch_stall_ms = ms;
    }
    limits.rate_exempt_addresses = rate_exempt;
    limits
}

fn spawn(dir: &Path, id: u64) -> Result<Child, Box<dyn std::error::Error>> {
    spawn_process(dir, "server", &node_config_path(dir, id), &format!("node-{id}"))
}

fn spawn_process(dir: &Path, what: &str, config: &Path, name: &str) -> Result<Child, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir.join("logs"))?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("logs/{name}.log")))?;
    let child = Command::new(std::env::current_exe()?)
        .arg(what)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok(child)
}

fn wait_listening(dir: &Path, id: u64, children: &mut [Child]) -> Result<Listening, Box<dyn std::error::Error>> {
    let path = dir.join(format!("data/node-{id}/listen.json"));
    let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
    while Instant::now() < deadline {
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(l) = serde_json::from_slice::<Listening>(&bytes) {
                return Ok(l);
            }
        }
        for c in children.iter_mut() {
            if let Some(status) = c.try_wait()? {
                return Err(format!("a replica exited during start-up ({status}); see {}/logs", dir.display()).into());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("replica {id} did not start listening; see {}/logs/node-{id}.log", dir.display()).into())
}

/// Rewrites configurations and the realm file with the ports the OS chose.
fn pin_ports(dir: &Path, listening: &[Listening]) -> CmdResult {
    let voters: Vec<VoterSpec> = listening
        .iter()
        .map(|l| VoterSpec {
            id: l.node_id,
            peer_addr: l.peer_addr.to_string(),
            public_addr: l.public_addr.to_string(),
        })
        .collect();
    for l in listening {
        let path = node_config_path(dir, l.node_id);
        let mut node: NodeConfig = toml::from_str(&std::fs::read_to_string(&path)?)?;
        node.public_listen = l.public_addr.to_string();
        node.peer_listen = l.peer_addr.to_string();
        if let Some(metrics) = l.metrics_addr {
            node.metrics_listen = Some(metrics.to_string());
        }
        node.voters = voters.clone();
        std::fs::write(&path, toml::to_string_pretty(&node)?)?;
    }
    let realm_path = dir.join("realm.json");
    let mut realm = RealmFile::from_json(&std::fs::read_to_string(&realm_path)?)?;
    realm.endpoints = voters.iter().map(|v| v.public_addr.clone()).collect();
    std::fs::write(realm_path, realm.to_json())?;
    Ok(())
}

fn stop(children: &mut [Child]) {
    for c in children.iter() {
        if let Ok(pid) = i32::try_from(c.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_millis(STOP_TIMEOUT_MS);
    for c in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// `keyraft dev`.
pub fn run(args: &DevArgs, out: &mut dyn Write) -> CmdResult {
    let first_start = !args.dir.join("realm.json").exists();
    if first_start {
        create(args)?;
    }
    let dir = std::fs::canonicalize(&args.dir)?;
    let realm = RealmFile::from_json(&std::fs::read_to_string(dir.join("realm.json"))?)?;
    let ids: Vec<u64> = (1..=realm.config()?.replica_keys.len() as u64).collect();
    let mut children = Vec::new();
    for id in &ids {
        // Stale address files would let us read the previous run's ports.
        let _ = std::fs::remove_file(dir.join(format!("data/node-{id}/listen.json")));
        children.push(spawn(&dir, *id)?);
    }
    let result = (|| -> CmdResult {
        let mut listening = Vec::new();
        for id in &ids {
            listening.push(wait_listening(&dir, *id, &mut children)?);
        }
        // A directory made before admin tokens existed has none: its nodes take status calls
        // with the cluster token, and only status is asked of them after the first start.
        let admin = dir.join("keys/admin.token");
        let token_file = if admin.exists() { admin } else { dir.join("keys/cluster.token") };
        let token = std::fs::read_to_string(token_file)?.trim().to_owned();
        let channels = dev_admin_channels(&dir)?;
        if first_start {
            pin_ports(&dir, &listening)?;
            let voters = listening
                .iter()
                .map(|l| keyraft_proto::peer::NodeSpec {
                    id: l.node_id,
                    peer_addr: l.peer_addr.to_string(),
                    public_addr: l.public_addr.to_string(),
                })
                .collect();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut c = connect_lazy(&channels, &listening[0].peer_addr.to_string(), &token)?;
                c.init(keyraft_proto::peer::InitRequest { voters }).await?;
                Ok::<(), Box<dyn std::error::Error>>(())
            })?;
        }
        wait_ratified(&listening[0], &channels, &token, &mut children)?;
        // The verifier reads the realm file's endpoints, final once the ports are pinned.
        if !args.exit_when_ready {
            for n in 1..=realm.verifier_keys.len() {
                let config = verifier_config_path(&dir, n);
                if config.exists() {
                    children.push(spawn_process(&dir, "verifier", &config, &format!("verifier-{n}"))?);
                }
            }
        }
        summary(&dir, &realm, &listening, out)?;
        Ok(())
    })();
    if let Err(e) = result {
        stop(&mut children);
        return Err(e);
    }
    if args.exit_when_ready {
        stop(&mut children);
        return Ok(());
    }
    let mut supervised = supervise(&dir, &ids, realm.verifier_keys.len(), children);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let restart_exited = async {
            loop {
                for p in &mut supervised {
                    p.check(Instant::now(), out);
                }
                tokio::time::sleep(Duration::from_millis(SUPERVISE_POLL_MS)).await;
            }
        };
        tokio::select! {
            () = crate::server_cmd::shutdown_signal() => {}
            () = restart_exited => {}
        }
    });
    writeln!(out, "stopping the replicas and verifiers...")?;
    let mut children: Vec<Child> = supervised.into_iter().filter_map(|p| p.child).collect();
    stop(&mut children);
    Ok(())
}

/// How often exited processes are looked for, in milliseconds.
const SUPERVISE_POLL_MS: u64 = 200;
/// First delay before an exited process is restarted, in milliseconds; doubled on each
/// restart that follows a short run, up to [`RESTART_DELAY_MAX_MS`].
const RESTART_DELAY_MIN_MS: u64 = 500;
/// Longest delay before an exited process is restarted, in milliseconds.
const RESTART_DELAY_MAX_MS: u64 = 30_000;
/// A process that ran this long before exiting is restarted after the shortest delay again.
const RUN_RESETS_DELAY_MS: u64 = 60_000;

/// A replica or verifier process that `keyraft dev` restarts when it exits: a realm for
/// trying things must survive a crash (or a kill) of one of its parts, as a supervised
/// deployment does; only ctrl-c or SIGTERM of `keyraft dev` stops it.
struct Supervised {
    what: &'static str,
    config: PathBuf,
    name: String,
    dir: PathBuf,
    child: Option<Child>,
    started: Instant,
    restart_at: Option<Instant>,
    delay_ms: u64,
    /// A verifier that halted on evidence must not be restarted: it refuses to start until
    /// an operator has looked (docs/operations.md).
    halted_file: Option<PathBuf>,
}

fn supervise(dir: &Path, ids: &[u64], verifiers: usize, children: Vec<Child>) -> Vec<Supervised> {
    let mut specs: Vec<(&'static str, PathBuf, String, Option<PathBuf>)> =
        ids.iter().map(|id| ("server", node_config_path(dir, *id), format!("node-{id}"), None)).collect();
    for n in 1..=verifiers {
        let config = verifier_config_path(dir, n);
        if config.exists() {
            let halted = dir.join(format!("data/verifier-{n}/HALTED"));
            specs.push(("verifier", config, format!("verifier-{n}"), Some(halted)));
        }
    }
    debug_assert_eq!(specs.len(), children.len(), "one child per replica and verifier, in that order");
    specs
        .into_iter()
        .zip(children)
        .map(|((what, config, name, halted_file), child)| Supervised {
            what,
            config,
            name,
            dir: dir.to_owned(),
            child: Some(child),
            started: Instant::now(),
            restart_at: None,
            delay_ms: RESTART_DELAY_MIN_MS,
            halted_file,
        })
        .collect()
}

impl Supervised {
    /// Notices an exit and schedules a restart, or restarts when its time has come.
    fn check(&mut self, now: Instant, out: &mut dyn Write) {
        let log = format!("{}/logs/{}.log", self.dir.display(), self.name);
        if let Some(child) = &mut self.child {
            let Ok(Some(status)) = child.try_wait() else { return };
            self.child = None;
            if self.halted_file.as_ref().is_some_and(|f| f.exists()) {
                let _ = writeln!(
                    out,
                    "{} stopped: it HALTED on evidence that the realm misbehaved; not restarting it (see {log})",
                    self.name
                );
                return;
            }
            if now.duration_since(self.started) >= Duration::from_millis(RUN_RESETS_DELAY_MS) {
                self.delay_ms = RESTART_DELAY_MIN_MS;
            }
            let _ =
                writeln!(out, "{} exited ({status}); restarting it in {} ms (log: {log})", self.name, self.delay_ms);
            self.restart_at = Some(now + Duration::from_millis(self.delay_ms));
            self.delay_ms = (self.delay_ms * 2).min(RESTART_DELAY_MAX_MS);
            return;
        }
        if self.restart_at.is_some_and(|at| now >= at) {
            self.restart_at = None;
            match spawn_process(&self.dir, self.what, &self.config, &self.name) {
                Ok(child) => {
                    self.child = Some(child);
                    self.started = now;
                    let _ = writeln!(out, "{} restarted", self.name);
                }
                Err(e) => {
                    let _ = writeln!(out, "restarting {} failed: {e}; trying again in {} ms", self.name, self.delay_ms);
                    self.restart_at = Some(now + Duration::from_millis(self.delay_ms));
                    self.delay_ms = (self.delay_ms * 2).min(RESTART_DELAY_MAX_MS);
                }
            }
        }
    }
}

/// How `keyraft dev` calls its nodes as their operator: with the operator certificate it
/// wrote, or in plaintext for a realm made with `--plaintext`.
fn dev_admin_channels(dir: &Path) -> Result<Channels, Box<dyn std::error::Error>> {
    let tls_dir = dir.join(TLS_DIR);
    let tls = tls_dir.join("admin.crt").exists().then_some(tls_dir);
    Ok(crate::admin::admin_channels(tls.as_deref())?)
}

/// Waits until a leader exists and the first epoch is keyserver-ratified.
fn wait_ratified(first: &Listening, channels: &Channels, token: &str, children: &mut [Child]) -> CmdResult {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _entered = rt.enter();
    let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
    let mut client = connect_lazy(channels, &first.peer_addr.to_string(), token)?;
    while Instant::now() < deadline {
        if let Ok(s) = rt.block_on(client.status(keyraft_proto::peer::StatusRequest {})) {
            let s = s.into_inner();
            if s.has_leader && s.ratified_epoch >= 1 {
                return Ok(());
            }
        }
        for c in children.iter_mut() {
            if let Some(status) = c.try_wait()? {
                return Err(format!("a replica exited during start-up ({status})").into());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("the realm did not ratify its first epoch in time; see the logs".into())
}

fn summary(dir: &Path, realm: &RealmFile, listening: &[Listening], out: &mut dyn Write) -> CmdResult {
    let d = dir.display();
    writeln!(out, "keyraft dev realm \"{}\" is up: {} replicas, data under {d}", realm.realm, listening.len())?;
    for l in listening {
        let metrics = l.metrics_addr.map(|a| format!("  metrics {a}")).unwrap_or_default();
        writeln!(
            out,
            "  replica {}: public {}  peer {}{metrics}  (log: {d}/logs/node-{}.log)",
            l.node_id, l.public_addr, l.peer_addr, l.node_id
        )?;
    }
    for n in 1..=realm.verifier_keys.len() {
        if verifier_config_path(dir, n).exists() {
            writeln!(out, "  verifier {n}: recomputes and ratifies every epoch (log: {d}/logs/verifier-{n}.log)")?;
        }
    }
    match realm.config()?.registration {
        None => writeln!(
            out,
            "  protocol version 1: user ids are taken as typed and anyone may register any identity (first come, first served)"
        )?,
        Some(policy) => {
            for rule in &policy.rules {
                let methods: Vec<String> = rule.methods.iter().map(ToString::to_string).collect();
                let open = if rule.is_open() { " (OPEN: first come, first served)" } else { "" };
                writeln!(out, "  registration of {:?}: {}{open}", rule.namespace, methods.join(", "))?;
            }
            match policy.recovery_window_ms {
                0 => writeln!(out, "  recovery: disabled (a window of 0)")?,
                w => writeln!(
                    out,
                    "  recovery: through the registration method, after a veto window of {}",
                    keyraft_core::human::duration(w)
                )?,
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(node_config_path(dir, 1)) {
        if let Ok(node) = toml::from_str::<NodeConfig>(&text) {
            if node.registration.email.as_ref().is_some_and(|e| e.log_codes) {
                writeln!(
                    out,
                    "  e-mail registration codes are written to the replicas' logs ({d}/logs/node-N.log), not mailed"
                )?;
            }
        }
    }
    match &realm.tls {
        Some(_) => writeln!(
            out,
            "  TLS: on; clients trust the realm's CA ({d}/{TLS_DIR}/ca.crt, in the realm file); replicas authenticate \
             each other with mutual TLS; operators use {d}/{TLS_DIR}/admin.crt"
        )?,
        None => writeln!(
            out,
            "  TLS: OFF (--plaintext): tokens and lookups cross loopback in clear; for development on this machine only"
        )?,
    }
    if realm.verifier_threshold > 0 {
        writeln!(
            out,
            "  clients accept an epoch once a replica majority signed it and {} ratified it (a client command's `--verifiers N` requires N ratifications instead)",
            crate::client_cmd::count(realm.verifier_threshold as u64, "verifier")
        )?;
    }
    let exe = "keyraft";
    writeln!(out)?;
    writeln!(out, "Try it (in another terminal; `cargo run --release -p keyraft --` stands for {exe}):")?;
    writeln!(out, "  {exe} keygen --out alice.key")?;
    writeln!(
        out,
        "  {exe} register --realm {d}/realm.json --user alice@example.com --key alice.key --set pgp=my-key --wait"
    )?;
    writeln!(out, "  {exe} lookup --realm {d}/realm.json alice@example.com")?;
    writeln!(out, "  {exe} lookup --realm {d}/realm.json alice@example.com --json --save-proof alice.proof")?;
    writeln!(out, "  {exe} verify-proof --realm {d}/realm.json alice.proof")?;
    writeln!(
        out,
        "  {exe} update --realm {d}/realm.json --user alice@example.com --key alice.key --set pgp=new --wait"
    )?;
    writeln!(out, "  {exe} history --realm {d}/realm.json alice@example.com")?;
    writeln!(out, "  {exe} watch --realm {d}/realm.json alice@example.com")?;
    let tls_dir = dir.join(TLS_DIR);
    let tls_flag =
        if tls_dir.join("admin.crt").exists() { format!(" --tls-dir {}", tls_dir.display()) } else { String::new() };
    writeln!(
        out,
        "  {exe} admin --peer {}{tls_flag} --token-file {d}/keys/admin.token status",
        listening[0].peer_addr
    )?;
    writeln!(out, "  {exe} bench --realm {d}/realm.json")?;
    writeln!(out)?;
    writeln!(out, "ctrl-c stops the realm; running `{exe} dev` again restarts it with the same keys and data.")?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn args(rate_limits: bool) -> DevArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            dev: DevArgs,
        }
        let mut argv = vec!["keyraft-dev", "--dir", "unused", "--stream-stall-ms", "2000"];
        if rate_limits {
            argv.push("--rate-limits");
        }
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().dev
    }

    #[test]
    fn a_dev_realm_exempts_loopback_from_rate_limits_unless_asked_to_keep_them() {
        let exempt =
            |l: &Limits, ip: &str| l.rate_exempt_addresses.iter().any(|r| r.contains(ip.parse::<IpAddr>().unwrap()));
        let dev = dev_limits(&args(false)).unwrap();
        assert!(exempt(&dev, "127.0.0.1") && exempt(&dev, "127.0.0.2") && exempt(&dev, "::1"));
        assert!(!exempt(&dev, "192.0.2.1"));
        assert_eq!(dev.watch_stall_ms, 2_000);
        let kept = dev_limits(&args(true)).unwrap();
        assert!(!exempt(&kept, "127.0.0.1"));
        assert_eq!(kept.rate_updates_per_address_per_minute, Limits::default().rate_updates_per_address_per_minute);
    }
}
