//! `keyraft cluster-config`: every file a realm's replicas, verifiers and operator need, for
//! hosts that are not loopback (containers, separate machines).
//!
//! One directory per process, each holding only what that process needs (its configuration,
//! the realm file, its keys and certificates), so that each can be mounted into its own
//! container or copied to its own machine:
//!
//! ```text
//! OUT/realm.json              the realm file: the replicas' public addresses as given (--replica)
//! OUT/realm-published.json    with --published: the same realm, at the published addresses
//! OUT/ca/ca.crt, ca.key       the realm's CA (keep the key offline; `keyraft tls node --dir OUT/ca`)
//! OUT/node-N/node.toml        replica N: realm.json, keys/{vrf.key,replica-N.key,cluster.token,
//!                             admin.token}, tls/{ca.crt,node-N.crt,node-N.key}
//! OUT/verifier-N/verifier.toml  verifier N: realm.json, keys/verifier-N.key
//! OUT/operator/               admin.token and tls/{ca.crt,admin.crt,admin.key} for `keyraft admin`
//! ```
//!
//! The configurations are those `keyraft dev` writes (the same functions make them), with the
//! listeners on `--listen-host` (every interface by default) and the data under `--data-dir`.
//! Secret files are owner-only (0600); an existing OUT is refused.

use crate::dev::{NodeCert, NodeListen, NodeSettings};
use keyraft_core::key_file::{write_secret, write_secret_text};
use keyraft_server::config::{EpochSettings, VoterSpec};
use keyraft_server::rate_limits::AddressRange;
use keyraft_server::registration::RegistrationSettings;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// The realm file listing the published addresses (`--published`).
pub const PUBLISHED_REALM_FILE: &str = "realm-published.json";

/// Options of `keyraft cluster-config`.
#[derive(Debug, clap::Args)]
pub struct ClusterConfigArgs {
    /// The directory to write; refused if it exists.
    #[arg(long)]
    pub out: PathBuf,
    /// The realm's name: usable in DNS names (node certificates are `node-<id>.<realm>`).
    #[arg(long)]
    pub realm_name: String,
    /// A replica as ID=HOST: HOST (a DNS name or an IP address) is what its peers, the
    /// verifiers and clients on its network dial, and its certificate is valid for. Repeat for
    /// each replica, with ids 1 to N (N = 3 or 5 for a majority that survives failures).
    #[arg(long = "replica", value_name = "ID=HOST", required = true)]
    pub replicas: Vec<String>,
    /// How many verifiers (third-party, ratifying every epoch); with one or more the realm
    /// file requires one ratification.
    #[arg(long, default_value_t = 1)]
    pub verifiers: usize,
    /// Another address clients reach replica ID's public listener at, as ID=HOST:PORT (a port
    /// published by docker, a load balancer): repeat per replica; writes realm-published.json
    /// with these endpoints and adds HOST to the replica's certificate.
    #[arg(long = "published", value_name = "ID=HOST:PORT")]
    pub published: Vec<String>,
    /// The replicas' and verifiers' listen address (their listeners bind HOST:PORT).
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_host: String,
    /// The replicas' public port (clients, verifiers).
    #[arg(long, default_value_t = 7001)]
    pub public_port: u16,
    /// The replicas' peer port (Raft, admin).
    #[arg(long, default_value_t = 7101)]
    pub peer_port: u16,
    /// The replicas' metrics port (plain HTTP: /metrics, /healthz, /readyz; no credential:
    /// keep it on a private network).
    #[arg(long, default_value_t = 7201)]
    pub metrics_port: u16,
    /// The verifiers' metrics port (/metrics, /healthz).
    #[arg(long, default_value_t = 7301)]
    pub verifier_metrics_port: u16,
    /// Each process's data directory (relative paths are relative to its configuration
    /// file; the default suits a container with a volume at /data).
    #[arg(long, default_value = "/data")]
    pub data_dir: PathBuf,
    /// Shortest time between epochs, in milliseconds (default: the replicas' default).
    #[arg(long)]
    pub min_epoch_interval_ms: Option<u64>,
    /// Longest time between epochs, in milliseconds (default: the replicas' default).
    #[arg(long)]
    pub max_epoch_interval_ms: Option<u64>,
    /// An address or CIDR range exempt from the replicas' rate limits (a load generator, a
    /// gateway's address); repeat for several.
    #[arg(long = "rate-exempt", value_name = "ADDRESS|CIDR")]
    pub rate_exempt: Vec<String>,
    /// Who may register identities: NAMESPACE=METHOD[,METHOD...] with methods `open` and
    /// `registrar`; repeat for several namespaces, the first matching decides. Default:
    /// `*=open`, first come, first served. (`email` and `oidc` need a `[registration]`
    /// section per replica: see docs/operations.md.)
    #[arg(long = "registration", value_name = "NAMESPACE=METHODS")]
    pub registration: Vec<String>,
    /// A registrar's public key (hex, or a `.pub` file from `keyraft keygen`); repeat.
    #[arg(long = "registrar-key", value_name = "KEY")]
    pub registrar_keys: Vec<String>,
    /// The veto window of recoveries, in milliseconds (default a day; 0 disables recovery).
    #[arg(long)]
    pub recovery_window_ms: Option<u64>,
    /// How long the node and operator certificates are valid, in days (the CA: ten years).
    #[arg(long, default_value_t = crate::certs::CERT_VALID_DAYS)]
    pub cert_days: i64,
    /// Give the node and verifier directories to this numeric UID:GID (the user a container
    /// runs as; needs the privilege to chown). The operator and CA directories stay the
    /// caller's.
    #[arg(long, value_name = "UID:GID")]
    pub owner: Option<String>,
}

/// `HOST:PORT`, bracketing an IPv6 address.
fn host_port(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{host}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// A DNS name or an IP address that can go into a certificate and an endpoint.
fn check_host(host: &str, what: &str) -> Result<(), String> {
    let dns_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if host.parse::<IpAddr>().is_ok() || dns_ok {
        Ok(())
    } else {
        Err(format!("{what}: {host:?} is neither an IP address nor a DNS name"))
    }
}

/// `ID=VALUE` as (id, value).
fn id_value<'a>(spec: &'a str, flag: &str, form: &str) -> Result<(u64, &'a str), String> {
    let (id, value) = spec.split_once('=').ok_or_else(|| format!("{flag} {spec:?}: expected {form}"))?;
    let id = id.trim().parse::<u64>().map_err(|_| format!("{flag} {spec:?}: the id must be a number"))?;
    Ok((id, value.trim()))
}

/// One replica as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Replica {
    id: u64,
    host: String,
    /// Its `--published` address, if any: (host, HOST:PORT).
    published: Option<(String, String)>,
}

/// The replicas of `--replica` and `--published`, sorted by id; ids must be 1 to N.
fn replicas(args: &ClusterConfigArgs) -> Result<Vec<Replica>, String> {
    let mut replicas = Vec::new();
    for spec in &args.replicas {
        let (id, host) = id_value(spec, "--replica", "ID=HOST")?;
        check_host(host, &format!("--replica {spec:?}"))?;
        replicas.push(Replica { id, host: host.to_owned(), published: None });
    }
    replicas.sort_by_key(|r| r.id);
    for (expected, r) in (1..).zip(&replicas) {
        if r.id != expected {
            return Err(format!(
                "--replica: the ids must be 1 to {} (each once); got {:?}",
                replicas.len(),
                replicas.iter().map(|r| r.id).collect::<Vec<_>>()
            ));
        }
    }
    for spec in &args.published {
        let (id, addr) = id_value(spec, "--published", "ID=HOST:PORT")?;
        let (host, port) =
            addr.rsplit_once(':').ok_or_else(|| format!("--published {spec:?}: expected ID=HOST:PORT"))?;
        port.parse::<u16>().map_err(|_| format!("--published {spec:?}: {port:?} is not a port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        check_host(host, &format!("--published {spec:?}"))?;
        let replica = replicas
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| format!("--published {spec:?}: there is no --replica {id}"))?;
        if replica.published.is_some() {
            return Err(format!("--published: replica {id} is given twice"));
        }
        replica.published = Some((host.to_owned(), addr.to_owned()));
    }
    if !args.published.is_empty() && replicas.iter().any(|r| r.published.is_none()) {
        return Err("--published: give one for every replica (clients of realm-published.json dial only those)".into());
    }
    Ok(replicas)
}

/// `--owner UID:GID`.
fn owner(spec: &str) -> Result<(u32, u32), String> {
    let bad = || format!("--owner {spec:?}: expected numeric UID:GID");
    let (uid, gid) = spec.split_once(':').ok_or_else(bad)?;
    Ok((uid.parse().map_err(|_| bad())?, gid.parse().map_err(|_| bad())?))
}

/// Gives `path` and everything under it to `uid:gid`.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> CmdResult {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| format!("--owner: chown {uid}:{gid} {}: {e}", path.display()))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Writes the realm file `realm` to `path` (readable by all: it holds no secret).
fn write_realm(path: &Path, realm: &keyraft_core::RealmFile) -> CmdResult {
    std::fs::write(path, realm.to_json()).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// What the command line asks for, checked before anything is written.
struct Plan {
    replicas: Vec<Replica>,
    owner: Option<(u32, u32)>,
    policy: keyraft_core::registration::RegistrationPolicy,
    shared: NodeSettings,
}

/// Checks the command line: the replicas, the realm name, the rate exemptions, the
/// registration policy and the epoch intervals.
fn plan(args: &ClusterConfigArgs) -> Result<Plan, Box<dyn std::error::Error>> {
    let replicas = replicas(args)?;
    let owner = args.owner.as_deref().map(owner).transpose()?;
    if check_host(&args.realm_name, "--realm-name").is_err() {
        let name = &args.realm_name;
        return Err(format!("--realm-name {name:?}: must be usable in DNS names (letters, digits, '-', '.')").into());
    }
    let rate_exempt = args
        .rate_exempt
        .iter()
        .map(|a| a.parse::<AddressRange>().map_err(|e| format!("--rate-exempt {a:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(spec) = args.registration.iter().find(|s| s.contains("email") || s.contains("oidc")) {
        return Err(format!(
            "--registration {spec:?}: cluster-config makes `open` and `registrar` realms; `email` and `oidc` need \
             each replica's [registration] settings (docs/operations.md, \"Registration\")"
        )
        .into());
    }
    let policy =
        crate::dev::registration_policy_from(&args.registration, &args.registrar_keys, args.recovery_window_ms, None)?;
    let defaults = EpochSettings::default();
    let epochs = EpochSettings {
        min_epoch_interval_ms: args.min_epoch_interval_ms.unwrap_or(defaults.min_epoch_interval_ms),
        max_epoch_interval_ms: args.max_epoch_interval_ms.unwrap_or(defaults.max_epoch_interval_ms),
        ..defaults
    };
    let voters = replicas
        .iter()
        .map(|r| VoterSpec {
            id: r.id,
            peer_addr: host_port(&r.host, args.peer_port),
            public_addr: host_port(&r.host, args.public_port),
        })
        .collect();
    let shared = NodeSettings {
        voters,
        plaintext: false,
        epochs,
        limits: crate::dev::limits(None, rate_exempt),
        registration: RegistrationSettings::default(),
        engine: keyraft_server::config::EngineKind::default(),
    };
    Ok(Plan { replicas, owner, policy, shared })
}

fn node_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}"))
}

fn verifier_dir(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("verifier-{n}"))
}

/// The public halves of the realm's keys, and the VRF seed its configuration is made from.
struct RealmKeys {
    vrf_seed: [u8; 32],
    replicas: Vec<keyraft_core::PublicKey>,
    verifiers: Vec<keyraft_core::PublicKey>,
}

/// Writes the secrets, each where it is needed: the VRF key and the tokens to every replica
/// (the admin token to the operator too), each signing key to its owner.
fn write_keys(dir: &Path, replicas: &[Replica], verifiers: usize) -> Result<RealmKeys, Box<dyn std::error::Error>> {
    let vrf_seed = crate::dev::random32();
    let cluster_token = crate::dev::new_token();
    let admin_token = crate::dev::new_token();
    let mut replica_keys = Vec::new();
    for r in replicas {
        let keys = node_dir(dir, r.id).join("keys");
        std::fs::create_dir_all(&keys)?;
        write_secret(&keys.join("vrf.key"), &vrf_seed)?;
        write_secret_text(&keys.join("cluster.token"), &cluster_token)?;
        write_secret_text(&keys.join("admin.token"), &admin_token)?;
        let seed = crate::dev::random32();
        write_secret(&keys.join(format!("replica-{}.key", r.id)), &seed)?;
        replica_keys.push(crate::dev::public_key_of(&seed));
    }
    std::fs::create_dir_all(dir.join("operator"))?;
    write_secret_text(&dir.join("operator/admin.token"), &admin_token)?;
    let mut verifier_keys = Vec::new();
    for n in 1..=verifiers {
        let keys = verifier_dir(dir, n).join("keys");
        std::fs::create_dir_all(&keys)?;
        let seed = crate::dev::random32();
        write_secret(&keys.join(format!("verifier-{n}.key")), &seed)?;
        verifier_keys.push(crate::dev::public_key_of(&seed));
    }
    Ok(RealmKeys { vrf_seed, replicas: replica_keys, verifiers: verifier_keys })
}

/// `keyraft cluster-config`.
pub fn run(args: &ClusterConfigArgs, out: &mut dyn Write) -> CmdResult {
    let Plan { replicas, owner, policy, shared } = plan(args)?;
    let dir = &args.out;
    if dir.exists() {
        return Err(
            format!("{} exists: cluster-config writes a new directory and overwrites nothing", dir.display()).into()
        );
    }
    std::fs::create_dir_all(dir)?;
    // Secret keys live here: whatever checkout the directory is created in, `git add -A`
    // must not commit them.
    std::fs::write(dir.join(".gitignore"), "# written by keyraft cluster-config: secret keys live here\n*\n")?;
    let keys = write_keys(dir, &replicas, args.verifiers)?;
    let config =
        crate::dev::realm_config(args.realm_name.clone(), &keys.vrf_seed, keys.replicas, keys.verifiers, Some(policy))?;

    let nodes: Vec<NodeCert> = replicas
        .iter()
        .map(|r| {
            let mut hosts = vec![r.host.clone()];
            if let Some((published, _)) = &r.published {
                if !hosts.contains(published) {
                    hosts.push(published.clone());
                }
            }
            NodeCert { id: r.id, dir: node_dir(dir, r.id).join(crate::dev::TLS_DIR), hosts }
        })
        .collect();
    let validity = crate::certs::Validity::days(args.cert_days);
    let operator_tls = dir.join("operator").join(crate::dev::TLS_DIR);
    let tls = crate::dev::create_tls(&dir.join("ca"), &config.realm, &nodes, &operator_tls, validity)?;
    let mut realm = crate::dev::realm_file(&config, shared.voters.iter().map(|v| v.public_addr.clone()).collect());
    realm.tls = Some(tls);
    write_realm(&dir.join("realm.json"), &realm)?;
    if !args.published.is_empty() {
        let mut published = realm.clone();
        published.endpoints = replicas.iter().filter_map(|r| r.published.as_ref().map(|(_, a)| a.clone())).collect();
        write_realm(&dir.join(PUBLISHED_REALM_FILE), &published)?;
    }

    for r in &replicas {
        let listen = NodeListen {
            public: host_port(&args.listen_host, args.public_port),
            peer: host_port(&args.listen_host, args.peer_port),
            metrics: Some(host_port(&args.listen_host, args.metrics_port)),
        };
        let node = crate::dev::node_config(r.id, args.data_dir.clone(), listen, &shared);
        write_realm(&node_dir(dir, r.id).join("realm.json"), &realm)?;
        std::fs::write(node_dir(dir, r.id).join("node.toml"), toml::to_string_pretty(&node)?)?;
    }
    for n in 1..=args.verifiers {
        let metrics = host_port(&args.listen_host, args.verifier_metrics_port);
        let verifier = crate::dev::verifier_config(n, args.data_dir.clone(), Some(metrics));
        write_realm(&verifier_dir(dir, n).join("realm.json"), &realm)?;
        std::fs::write(verifier_dir(dir, n).join("verifier.toml"), toml::to_string_pretty(&verifier)?)?;
    }
    if let Some((uid, gid)) = owner {
        for r in &replicas {
            chown_tree(&node_dir(dir, r.id), uid, gid)?;
        }
        for n in 1..=args.verifiers {
            chown_tree(&verifier_dir(dir, n), uid, gid)?;
        }
    }
    summary(args, &config.realm, &replicas, &shared.voters, out)
}

/// What was written, and how to start it.
fn summary(
    args: &ClusterConfigArgs,
    realm: &str,
    replicas: &[Replica],
    voters: &[VoterSpec],
    out: &mut dyn Write,
) -> CmdResult {
    let d = args.out.display();
    let count = crate::client_cmd::count;
    writeln!(
        out,
        "realm \"{realm}\": {}, {}, written to {d}",
        count(replicas.len() as u64, "replica"),
        count(args.verifiers as u64, "verifier")
    )?;
    for (r, v) in replicas.iter().zip(voters) {
        let published = r.published.as_ref().map(|(_, a)| format!(" (published {a})")).unwrap_or_default();
        writeln!(
            out,
            "  {d}/node-{}/node.toml: public {}{published}, peer {}, metrics {}",
            r.id,
            v.public_addr,
            v.peer_addr,
            host_port(&r.host, args.metrics_port)
        )?;
    }
    for n in 1..=args.verifiers {
        writeln!(out, "  {d}/verifier-{n}/verifier.toml")?;
    }
    writeln!(out, "  {d}/realm.json: the realm file for clients on the replicas' network")?;
    if !args.published.is_empty() {
        writeln!(out, "  {d}/{PUBLISHED_REALM_FILE}: the realm file for clients of the published addresses")?;
    }
    if let Some(first) = voters.first() {
        writeln!(
            out,
            "  {d}/operator: the operator's credentials, e.g. `keyraft admin --peer {} --tls-dir {d}/operator/tls \
             --token-file {d}/operator/admin.token status`",
            first.peer_addr
        )?;
    }
    writeln!(
        out,
        "  {d}/ca: the realm's CA; keep ca.key offline (`keyraft tls node --dir {d}/ca --realm-name {realm}` issues \
         more)"
    )?;
    writeln!(
        out,
        "Start each replica with `keyraft server --config node.toml` (node 1 with `--init-if-new`: it initialises the \
         cluster on its first start), each verifier with `keyraft verifier --config verifier.toml`."
    )?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn parse(argv: &[&str]) -> ClusterConfigArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ClusterConfigArgs,
        }
        let mut full = vec!["keyraft-cluster-config"];
        full.extend_from_slice(argv);
        <Cli as clap::Parser>::try_parse_from(full).unwrap().args
    }

    fn compose_args(out: &Path) -> ClusterConfigArgs {
        let out = out.to_str().unwrap();
        parse(&[
            "--out",
            out,
            "--realm-name",
            "compose.example",
            "--replica",
            "2=10.77.0.12",
            "--replica",
            "1=10.77.0.11",
            "--replica",
            "3=kr3.example",
            "--published",
            "1=127.0.0.1:17001",
            "--published",
            "2=127.0.0.1:17002",
            "--published",
            "3=127.0.0.1:17003",
            "--min-epoch-interval-ms",
            "300",
            "--rate-exempt",
            "10.77.0.1",
        ])
    }

    /// Whether the DER certificate holds the subject alternative name `name`: a dNSName
    /// (tag 0x82) or an iPAddress (tag 0x87) with these bytes.
    fn has_subject_alt_name(der: &[u8], name: &str) -> bool {
        let (tag, bytes) = match name.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => (0x87, ip.octets().to_vec()),
            Ok(IpAddr::V6(ip)) => (0x87, ip.octets().to_vec()),
            Err(_) => (0x82, name.as_bytes().to_vec()),
        };
        let mut needle = vec![tag, u8::try_from(bytes.len()).unwrap()];
        needle.extend(bytes);
        der.windows(needle.len()).any(|w| w == needle.as_slice())
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_what_each_replica_and_verifier_loads_with_its_own_loader() {
        keyraft_proto::tls::install_default_provider();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("cluster");
        let mut said = Vec::new();
        run(&compose_args(&out), &mut said).unwrap();
        let said = String::from_utf8(said).unwrap();
        assert!(said.contains("node-1/node.toml: public 10.77.0.11:7001 (published 127.0.0.1:17001)"), "{said}");

        let hosts = ["10.77.0.11", "10.77.0.12", "kr3.example"];
        for (id, host) in (1..).zip(hosts) {
            let loaded = keyraft_server::NodeConfig::load(&out.join(format!("node-{id}/node.toml"))).unwrap();
            let c = &loaded.config;
            assert_eq!(c.node_id, id);
            assert_eq!(c.public_listen, "0.0.0.0:7001");
            assert_eq!(c.peer_listen, "0.0.0.0:7101");
            assert_eq!(c.metrics_listen.as_deref(), Some("0.0.0.0:7201"));
            assert_eq!(c.data_dir, Path::new("/data"));
            assert_eq!(c.epochs.min_epoch_interval_ms, 300);
            assert_eq!(c.epochs.max_epoch_interval_ms, EpochSettings::default().max_epoch_interval_ms);
            assert!(loaded.tls.is_some(), "TLS on");
            assert!(loaded.admin_token.is_some());
            assert!(c.limits.rate_exempt_addresses.iter().any(|r| r.contains("10.77.0.1".parse().unwrap())));
            assert!(!c.limits.rate_exempt_addresses.iter().any(|r| r.contains("10.77.0.2".parse().unwrap())));
            let voters: Vec<(u64, &str, &str)> =
                c.voters.iter().map(|v| (v.id, v.peer_addr.as_str(), v.public_addr.as_str())).collect();
            assert_eq!(
                voters,
                [
                    (1, "10.77.0.11:7101", "10.77.0.11:7001"),
                    (2, "10.77.0.12:7101", "10.77.0.12:7001"),
                    (3, "kr3.example:7101", "kr3.example:7001")
                ]
            );
            // Its signing key is the one the realm binds to its node id.
            let public = keyraft_core::PublicKey::from_verifying_key(&loaded.signing_key.verifying_key()).unwrap();
            assert_eq!(loaded.realm.replica_node_id(&public), Some(id), "node {id}");
            // Only its own signing key, and every secret owner-only.
            let keys = out.join(format!("node-{id}/keys"));
            let mut names: Vec<String> =
                std::fs::read_dir(&keys).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            names.sort();
            assert_eq!(names, ["admin.token", "cluster.token", format!("replica-{id}.key").as_str(), "vrf.key"]);
            for name in &names {
                assert_eq!(mode(&keys.join(name)), 0o600, "{name}");
            }
            assert_eq!(mode(&out.join(format!("node-{id}/tls/node-{id}.key"))), 0o600);
            assert!(!out.join(format!("node-{id}/tls/ca.key")).exists(), "the CA key stays in ca/");
            // The certificate names the host the others dial and the published one.
            let pem = std::fs::read(out.join(format!("node-{id}/tls/node-{id}.crt"))).unwrap();
            let der = keyraft_proto::tls::certificates_from_pem(&pem, "test").unwrap().remove(0);
            for name in [format!("node-{id}.compose.example").as_str(), host, "127.0.0.1"] {
                assert!(has_subject_alt_name(&der, name), "node {id}: {name}");
            }
            assert!(!has_subject_alt_name(&der, "10.77.0.13"));
        }
        let realm =
            keyraft_core::RealmFile::from_json(&std::fs::read_to_string(out.join("realm.json")).unwrap()).unwrap();
        assert_eq!(realm.endpoints, ["10.77.0.11:7001", "10.77.0.12:7001", "kr3.example:7001"]);
        assert_eq!(realm.verifier_threshold, 1);
        assert!(realm.tls.is_some());
        let published =
            keyraft_core::RealmFile::from_json(&std::fs::read_to_string(out.join(PUBLISHED_REALM_FILE)).unwrap())
                .unwrap();
        assert_eq!(published.endpoints, ["127.0.0.1:17001", "127.0.0.1:17002", "127.0.0.1:17003"]);
        assert_eq!(published.config().unwrap(), realm.config().unwrap(), "one realm, two address books");
        for node in 1..=3 {
            assert_eq!(std::fs::read_to_string(out.join(format!("node-{node}/realm.json"))).unwrap(), realm.to_json());
        }

        let verifier = keyraft_verifier::Config::load(&out.join("verifier-1/verifier.toml")).unwrap();
        assert_eq!(verifier.metrics_listen.as_deref(), Some("0.0.0.0:7301"));
        assert_eq!(verifier.data_dir, Path::new("/data"));
        assert!(verifier.endpoints.is_empty(), "the realm file's");
        assert_eq!(mode(&verifier.signing_key_file), 0o600);
        let seed = keyraft_core::key_file::read_secret(&verifier.signing_key_file, "test").unwrap().key;
        assert_eq!(realm.config().unwrap().verifier_keys, [crate::dev::public_key_of(&seed)]);

        for secret in ["operator/admin.token", "operator/tls/admin.key", "ca/ca.key"] {
            assert_eq!(mode(&out.join(secret)), 0o600, "{secret}");
        }
        assert_eq!(
            std::fs::read_to_string(out.join("operator/admin.token")).unwrap(),
            std::fs::read_to_string(out.join("node-2/keys/admin.token")).unwrap()
        );
        assert_ne!(
            std::fs::read_to_string(out.join("node-2/keys/admin.token")).unwrap(),
            std::fs::read_to_string(out.join("node-2/keys/cluster.token")).unwrap()
        );
        // The operator's TLS directory is what `keyraft admin --tls-dir` loads.
        crate::admin::admin_channels(Some(&out.join("operator/tls"))).unwrap();

        // Nothing is overwritten.
        let again = run(&compose_args(&out), &mut Vec::new()).unwrap_err().to_string();
        assert!(again.contains("exists"), "{again}");
    }

    #[test]
    fn refuses_ids_that_are_not_one_to_n_and_half_published_realms() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("c");
        let o = out.to_str().unwrap();
        let base = ["--out", o, "--realm-name", "r.example"];
        let gap = parse(&[&base[..], &["--replica", "1=10.0.0.1", "--replica", "3=10.0.0.3"]].concat());
        assert!(run(&gap, &mut Vec::new()).unwrap_err().to_string().contains("ids must be 1 to 2"));
        let half = parse(
            &[&base[..], &["--replica", "1=10.0.0.1", "--replica", "2=10.0.0.2", "--published", "1=127.0.0.1:1"]]
                .concat(),
        );
        assert!(run(&half, &mut Vec::new()).unwrap_err().to_string().contains("every replica"));
        let bad_host = parse(&[&base[..], &["--replica", "1=10.0.0.1:7001"]].concat());
        assert!(run(&bad_host, &mut Vec::new()).unwrap_err().to_string().contains("neither an IP address"));
        assert!(!out.exists(), "nothing written for a refused command line");
    }

    #[test]
    fn brackets_ipv6_addresses() {
        assert_eq!(host_port("fd00::11", 7001), "[fd00::11]:7001");
        assert_eq!(host_port("10.0.0.1", 7001), "10.0.0.1:7001");
        assert_eq!(host_port("kr1.example", 7001), "kr1.example:7001");
    }
}
