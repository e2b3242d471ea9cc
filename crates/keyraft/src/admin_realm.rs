//! `keyraft admin realm`: realm configuration changes (docs/protocol.md section 2.8).
//!
//! An operator proposes a change from the configuration in force (`propose`, offline), each
//! replica operator signs it with their replica key (`sign`, offline), and an operator with
//! the admin token submits it (`submit`); it is in force from the next epoch, whose head is the
//! first to commit to it. A change
//! file holds the hex of a `SignedConfigChange` (no signature in a fresh proposal).

use keyraft_core::config_change::check_config_change;
use keyraft_core::key_file::read_secret;
use keyraft_core::keys::{public_key_of, KeySignature};
use keyraft_core::registration::RegistrationPolicy;
use keyraft_core::{
    Canonical, ConfigChange, ConfigChangeError, PublicKey, RealmConfig, RealmFile, Signature, SignedConfigChange,
};
use std::io::Write;
use std::path::{Path, PathBuf};

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// `keyraft admin realm` actions.
#[derive(Debug, clap::Subcommand)]
pub enum RealmAction {
    /// Writes a proposed change from the configuration in force (no signature yet).
    Propose {
        /// The realm file of the configuration in force.
        #[arg(long)]
        realm: PathBuf,
        /// Where to write the change.
        #[arg(long)]
        out: PathBuf,
        /// The change.
        #[command(subcommand)]
        change: Change,
    },
    /// Adds this replica key's signature to a change file (in place).
    Sign {
        /// The change file.
        #[arg(long)]
        change: PathBuf,
        /// The replica's secret key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Checks a change against a realm file's configuration and prints what it leads to.
    Check {
        /// The change file.
        #[arg(long)]
        change: PathBuf,
        /// The realm file of the configuration in force.
        #[arg(long)]
        realm: PathBuf,
    },
    /// Proposes a signed change to the cluster (through the node given by `--peer`, which
    /// must be the leader, or the leader it names).
    Submit {
        /// The change file.
        #[arg(long)]
        change: PathBuf,
    },
    /// Shows the realm's configuration in force (generation, replicas by node, verifiers)
    /// and the chain of changes that leads to it from the realm file's configuration,
    /// followed and checked with the core rule (asks the realm file's endpoints).
    Show {
        /// The realm file (any configuration of the realm's chain).
        #[arg(long)]
        realm: PathBuf,
    },
    /// Writes the realm file of the configuration a change leads to (endpoints and client
    /// defaults from `--realm`), for clients that start from it.
    RealmFile {
        /// The change file.
        #[arg(long)]
        change: PathBuf,
        /// The realm file of the configuration the change follows.
        #[arg(long)]
        realm: PathBuf,
        /// Where to write the new realm file.
        #[arg(long)]
        out: PathBuf,
    },
}

/// A configuration change.
#[derive(Debug, clap::Subcommand)]
pub enum Change {
    /// Replaces the key of replica node N.
    RotateReplica {
        /// The node id.
        #[arg(long)]
        node_id: u64,
        /// The new public key (hex).
        #[arg(long)]
        key: String,
    },
    /// Adds a replica on node N with this key.
    AddReplica {
        /// The node id.
        #[arg(long)]
        node_id: u64,
        /// Its public key (hex).
        #[arg(long)]
        key: String,
    },
    /// Removes the replica of node N.
    RemoveReplica {
        /// The node id.
        #[arg(long)]
        node_id: u64,
    },
    /// Registers a verifier key.
    AddVerifier {
        /// The key (hex).
        #[arg(long)]
        key: String,
    },
    /// Removes a verifier key.
    RemoveVerifier {
        /// The key (hex).
        #[arg(long)]
        key: String,
    },
    /// Adds a registrar key (protocol version 2).
    AddRegistrar {
        /// The key (hex).
        #[arg(long)]
        key: String,
    },
    /// Removes a registrar key (protocol version 2).
    RemoveRegistrar {
        /// The key (hex).
        #[arg(long)]
        key: String,
    },
    /// Upgrades a version-1 realm to version 2, anyone registering anything (first come,
    /// first served, as under version 1), replicas bound to nodes 1, 2, ... in key order
    /// unless `--node KEY=N` says otherwise.
    UpgradeV2 {
        /// A replica's node id, as KEY=NODE_ID (repeat for each replica).
        #[arg(long = "node")]
        nodes: Vec<String>,
    },
}

fn key(hex_key: &str) -> Result<PublicKey, Box<dyn std::error::Error>> {
    let bytes = hex::decode(hex_key).map_err(|e| format!("key {hex_key:?}: {e}"))?;
    Ok(PublicKey::from_slice(&bytes).map_err(|e| format!("key {hex_key:?}: {e}"))?)
}

fn read_realm(path: &Path) -> Result<(RealmFile, RealmConfig), Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let file = RealmFile::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let config = file.config().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((file, config))
}

/// Reads a change file.
pub fn read_change(path: &Path) -> Result<SignedConfigChange, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let bytes = hex::decode(text.trim()).map_err(|e| format!("{}: not hex: {e}", path.display()))?;
    Ok(SignedConfigChange::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))?)
}

fn write_change(path: &Path, change: &SignedConfigChange) -> CmdResult {
    std::fs::write(path, hex::encode(change.encode()) + "\n")
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// The replicas of `config` as (node id, key), version 1 configs on nodes 1, 2, ... in key
/// order.
fn bindings(config: &RealmConfig) -> Vec<(u64, PublicKey)> {
    if config.replica_node_ids.is_empty() {
        (1..).zip(config.replica_keys.iter().copied()).collect()
    } else {
        config.replica_node_ids.iter().copied().zip(config.replica_keys.iter().copied()).collect()
    }
}

/// The configuration `change` makes of `from`, one generation later.
pub fn apply(from: &RealmConfig, change: &Change) -> Result<RealmConfig, Box<dyn std::error::Error>> {
    let mut replicas = bindings(from);
    let mut verifiers = from.verifier_keys.clone();
    let mut policy = from.registration.clone();
    let needs_v2 = || -> Result<(), Box<dyn std::error::Error>> {
        if from.registration.is_none() {
            return Err("this change needs a version-2 realm: propose upgrade-v2 first".into());
        }
        Ok(())
    };
    match change {
        Change::RotateReplica { node_id, key: k } => {
            needs_v2()?;
            let slot =
                replicas.iter_mut().find(|(id, _)| id == node_id).ok_or(format!("no replica on node {node_id}"))?;
            slot.1 = key(k)?;
        }
        Change::AddReplica { node_id, key: k } => {
            needs_v2()?;
            replicas.push((*node_id, key(k)?));
        }
        Change::RemoveReplica { node_id } => {
            needs_v2()?;
            replicas.retain(|(id, _)| id != node_id);
        }
        Change::AddVerifier { key: k } => verifiers.push(key(k)?),
        Change::RemoveVerifier { key: k } => {
            let k = key(k)?;
            verifiers.retain(|v| *v != k);
        }
        Change::AddRegistrar { key: k } => {
            needs_v2()?;
            if let Some(p) = policy.as_mut() {
                p.registrar_keys.push(key(k)?);
            }
        }
        Change::RemoveRegistrar { key: k } => {
            needs_v2()?;
            let k = key(k)?;
            if let Some(p) = policy.as_mut() {
                p.registrar_keys.retain(|r| *r != k);
            }
        }
        Change::UpgradeV2 { nodes } => {
            if from.registration.is_some() {
                return Err("the realm is already of protocol version 2".into());
            }
            for spec in nodes {
                let (k, id) = spec.split_once('=').ok_or(format!("--node {spec:?}: expected KEY=NODE_ID"))?;
                let (k, id) = (key(k)?, id.parse::<u64>().map_err(|_| format!("--node {spec:?}: bad node id"))?);
                let slot = replicas
                    .iter_mut()
                    .find(|(_, key)| *key == k)
                    .ok_or(format!("--node {spec:?}: not a replica key"))?;
                slot.0 = id;
            }
            policy = Some(RegistrationPolicy::open());
        }
    }
    let policy = policy.ok_or("the new configuration needs a registration policy")?;
    let mut next = RealmConfig::new(
        from.realm.clone(),
        from.vrf_public_key,
        replicas.iter().map(|(_, k)| *k).collect(),
        verifiers,
    )?
    .with_replica_node_ids(&replicas)?
    .with_registration(policy)?;
    next.generation = from.generation + 1;
    Ok(next)
}

/// Runs an offline action (`propose`, `sign`, `check`, `realm-file`); `None` for `submit`,
/// which needs the cluster.
pub fn run_offline(action: &RealmAction, out: &mut dyn Write) -> Option<CmdResult> {
    let result = match action {
        RealmAction::Propose { realm, out: path, change } => (|| {
            let (_, from) = read_realm(realm)?;
            let next = apply(&from, change)?;
            let generation = next.generation;
            write_change(path, &SignedConfigChange::unsigned(ConfigChange::new(&from, next)))?;
            writeln!(
                out,
                "wrote {}: the change to generation {generation}; each replica operator signs it (a majority of {} is needed)",
                path.display(),
                from.replica_majority()
            )?;
            Ok(())
        })(),
        RealmAction::Sign { change: path, key: key_file } => (|| {
            let mut change = read_change(path)?;
            let secret = read_secret(key_file, "--key")?;
            let signing = ed25519_dalek::SigningKey::from_bytes(&secret.key);
            let signature = ed25519_dalek::Signer::sign(&signing, &change.change.signing_message());
            let signer = public_key_of(&signing);
            change.add_signature(KeySignature { signer, signature: Signature(signature.to_bytes()) });
            write_change(path, &change)?;
            writeln!(out, "signed by {signer}: {} signatures", change.signatures.len())?;
            Ok(())
        })(),
        RealmAction::Check { change: path, realm } => (|| {
            let change = read_change(path)?;
            let (_, from) = read_realm(realm)?;
            match check_config_change(&from, &change) {
                Ok(next) => writeln!(
                    out,
                    "the change follows: generation {} is in force once a head commits to it",
                    next.generation
                )?,
                Err(e @ ConfigChangeError::NotEnoughSignatures { .. }) => return Err(format!("not yet: {e}").into()),
                Err(e) => return Err(e.to_string().into()),
            }
            Ok(())
        })(),
        RealmAction::RealmFile { change: path, realm, out: new_path } => (|| {
            let change = read_change(path)?;
            let (file, from) = read_realm(realm)?;
            let next = check_config_change(&from, &change)?;
            let mut new_file = RealmFile::new(&next, file.epoch_ttl_ms, file.clock_skew_ms, file.endpoints.clone());
            new_file.verifier_threshold = file.verifier_threshold.min(next.verifier_keys.len());
            // The transport is no part of the configuration: the replicas keep their certificates.
            new_file.tls = file.tls.clone();
            std::fs::write(new_path, new_file.to_json())?;
            writeln!(out, "wrote {} (generation {})", new_path.display(), next.generation)?;
            Ok(())
        })(),
        RealmAction::Show { realm } => show(realm, out),
        RealmAction::Submit { .. } => return None,
    };
    Some(result)
}

fn show(realm: &Path, out: &mut dyn Write) -> CmdResult {
    let (file, _) = read_realm(realm)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let chain = runtime.block_on(async {
        let client = keyraft_client::Client::new(&file, &file.endpoints)?;
        client.follow_config_chain().await?;
        Ok::<_, keyraft_client::ClientError>(client.config_chain())
    })?;
    let config = chain.newest();
    writeln!(
        out,
        "realm {:?}, protocol version {}, generation {} (config hash {})",
        config.realm,
        config.protocol_version(),
        config.generation,
        hex::encode(config.hash())
    )?;
    for (i, key) in config.replica_keys.iter().enumerate() {
        match config.replica_node_ids.get(i) {
            Some(node) => writeln!(out, "  replica node {node}: {key}")?,
            None => writeln!(out, "  replica: {key}")?,
        }
    }
    for key in &config.verifier_keys {
        writeln!(out, "  verifier: {key}")?;
    }
    if let Some(policy) = &config.registration {
        for key in &policy.registrar_keys {
            writeln!(out, "  registrar: {key}")?;
        }
    }
    writeln!(
        out,
        "{} configuration change(s) after the realm file's (generation {}), each signed by a majority of the replicas before it",
        chain.changes().len(),
        chain.trusted().generation
    )?;
    for (change, next) in chain.changes().iter().zip(&chain.configs()[1..]) {
        writeln!(out, "  generation {}: signed by {} replicas", next.generation, change.signatures.len())?;
    }
    Ok(())
}
