//! Client commands: `keygen`, `register`, `update`, `lookup`. Every answer printed was
//! verified with `keyraft_core`.

use ed25519_dalek::SigningKey;
use keyraft_client::{public_key, Client, LookupOptions};
use keyraft_core::lookup::{LookupProof, PositionalSignature};
use keyraft_core::tree::Terminal;
use keyraft_core::{decode_canonical, RealmFile};
use keyraft_server::config::{read_secret32, write_secret32};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// Options of `keyraft keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the new secret key (hex; created readable by the owner only).
    #[arg(long)]
    pub out: PathBuf,
}

/// Which realm and replicas to talk to.
#[derive(Debug, clap::Args)]
pub struct RealmArgs {
    /// The realm file.
    #[arg(long)]
    pub realm: PathBuf,
    /// Replica public addresses (host:port) to use instead of the realm file's.
    #[arg(long = "endpoint")]
    pub endpoints: Vec<String>,
}

/// Options of `keyraft register` and `keyraft update`.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    /// Realm.
    pub realm: RealmArgs,
    /// The identity.
    #[arg(long)]
    pub user: String,
    /// The owner's secret key file (from `keyraft keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// For `update`: hand the identity over to this key (the policy becomes this key alone).
    #[arg(long)]
    pub new_key: Option<PathBuf>,
    /// Profile keys as APP=VALUE (VALUE as text, or hex:...). Default: `ed25519=<owner's
    /// public key>`.
    #[arg(long = "set")]
    pub set: Vec<String>,
}

/// Options of `keyraft lookup`.
#[derive(Debug, clap::Args)]
pub struct LookupArgs {
    #[command(flatten)]
    /// Realm.
    pub realm: RealmArgs,
    /// The identity.
    pub user: String,
    /// Answer from this epoch.
    #[arg(long, default_value_t = 0)]
    pub epoch: u64,
    /// Print the whole proof as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the proof's canonical bytes to this file (for `keyraft verify-proof`).
    #[arg(long)]
    pub save_proof: Option<PathBuf>,
}

/// Options of `keyraft verify-proof`.
#[derive(Debug, clap::Args)]
pub struct VerifyProofArgs {
    /// The realm file.
    #[arg(long)]
    pub realm: PathBuf,
    /// The proof file (canonical bytes, as `lookup --save-proof` writes them).
    pub proof: PathBuf,
    /// The identity the proof must be about (default: the one it names).
    #[arg(long)]
    pub user: Option<String>,
    /// Verify as of this time (ms since the Unix epoch) instead of now: a saved proof's head
    /// is older than the realm's TTL after a while.
    #[arg(long)]
    pub at_ms: Option<u64>,
}

fn load_realm(path: &PathBuf) -> Result<RealmFile, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading the realm file {}: {e}", path.display()))?;
    Ok(RealmFile::from_json(&text)?)
}

fn client(args: &RealmArgs) -> Result<Client, Box<dyn std::error::Error>> {
    Ok(Client::new(&load_realm(&args.realm)?, &args.endpoints)?)
}

fn load_key(path: &std::path::Path) -> Result<SigningKey, Box<dyn std::error::Error>> {
    Ok(SigningKey::from_bytes(&read_secret32(path, "secret key")?))
}

fn profile_keys(set: &[String], owner: &SigningKey) -> Result<BTreeMap<String, Vec<u8>>, Box<dyn std::error::Error>> {
    if set.is_empty() {
        return Ok(BTreeMap::from([("ed25519".to_owned(), public_key(owner).as_bytes().to_vec())]));
    }
    let mut out = BTreeMap::new();
    for s in set {
        let (app, value) = s.split_once('=').ok_or_else(|| format!("--set {s:?}: expected APP=VALUE"))?;
        let bytes = match value.strip_prefix("hex:") {
            Some(h) => hex::decode(h).map_err(|e| format!("--set {s:?}: {e}"))?,
            None => value.as_bytes().to_vec(),
        };
        out.insert(app.to_owned(), bytes);
    }
    Ok(out)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// `keyraft keygen`.
pub fn keygen(args: &KeygenArgs, out: &mut dyn Write) -> CmdResult {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    write_secret32(&args.out, &key.to_bytes())?;
    writeln!(out, "secret key written to {}", args.out.display())?;
    writeln!(out, "public key: {}", hex::encode(public_key(&key).as_bytes()))?;
    Ok(())
}

/// `keyraft register` (`update == false`) and `keyraft update`.
pub fn update(args: &UpdateArgs, is_update: bool, out: &mut dyn Write) -> CmdResult {
    let rt = runtime()?;
    let _entered = rt.enter();
    let client = client(&args.realm)?;
    let key = load_key(&args.key)?;
    let new_key = args.new_key.as_deref().map(load_key).transpose()?;
    let keys = profile_keys(&args.set, new_key.as_ref().unwrap_or(&key))?;
    let response = rt.block_on(async {
        if is_update {
            client.update(&args.user, &key, new_key.as_ref(), keys).await
        } else {
            client.register(&args.user, &key, keys).await
        }
    })?;
    writeln!(
        out,
        "{} {:?}: {} in epoch {} (update id {})",
        if is_update { "updated" } else { "registered" },
        args.user,
        if response.duplicate { "already applied" } else { "accepted" },
        response.epoch,
        hex::encode(&response.update_id)
    )?;
    Ok(())
}

/// `keyraft lookup`.
pub fn lookup(args: &LookupArgs, out: &mut dyn Write) -> CmdResult {
    let rt = runtime()?;
    let _entered = rt.enter();
    let client = client(&args.realm)?;
    let answer = rt.block_on(client.lookup(&args.user, LookupOptions { epoch: args.epoch, ..Default::default() }))?;
    if let Some(path) = &args.save_proof {
        std::fs::write(path, &answer.proof).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if args.json {
        let proof: LookupProof = decode_canonical(&answer.proof)?;
        writeln!(out, "{}", serde_json::to_string_pretty(&proof_json(&proof, &answer.proof))?)?;
        return Ok(());
    }
    let l = &answer.lookup;
    match &l.entry {
        None => writeln!(out, "{:?} is not registered (epoch {}, VERIFIED)", l.user_id, l.epoch())?,
        Some((entry, profile)) => {
            writeln!(out, "{:?}: version {} in epoch {} (VERIFIED)", l.user_id, entry.version, l.epoch())?;
            for (app, key) in &profile.keys {
                match std::str::from_utf8(key) {
                    Ok(s) if s.chars().all(|c| !c.is_control()) && app != "ed25519" => writeln!(out, "  {app} = {s}")?,
                    _ => writeln!(out, "  {app} = hex:{}", hex::encode(key))?,
                }
            }
        }
    }
    writeln!(out, "  index {}", hex::encode(l.index.0))?;
    writeln!(out, "  ratified by a replica majority and {} verifier(s)", l.ratified_by.len())?;
    Ok(())
}

fn sigs_json(sigs: &[PositionalSignature]) -> serde_json::Value {
    sigs.iter()
        .map(|s| serde_json::json!({ "position": s.position, "signature": hex::encode(s.signature.0) }))
        .collect()
}

/// The whole proof, field by field, plus its canonical bytes.
pub fn proof_json(p: &LookupProof, bytes: &[u8]) -> serde_json::Value {
    let terminal = match &p.tree_proof.terminal {
        Terminal::Empty => serde_json::json!({ "kind": "empty" }),
        Terminal::Leaf { value } => serde_json::json!({ "kind": "leaf", "value": hex::encode(value) }),
        Terminal::OtherLeaf { index, value } => {
            serde_json::json!({ "kind": "other_leaf", "index": hex::encode(index.0), "value": hex::encode(value) })
        }
    };
    let entry = p.entry.as_ref().map(|(e, profile)| {
        serde_json::json!({
            "index": hex::encode(e.index.0),
            "version": e.version,
            "profile_commitment": hex::encode(e.profile_commitment),
            "update_policy_keys": e.update_policy.keys().iter().map(|k| hex::encode(k.as_bytes())).collect::<Vec<_>>(),
            "profile": {
                "nonce": hex::encode(&profile.nonce),
                "keys": profile.keys.iter().map(|(a, k)| (a.clone(), serde_json::Value::String(hex::encode(k)))).collect::<serde_json::Map<_, _>>(),
            },
        })
    });
    serde_json::json!({
        "user_id": p.user_id,
        "vrf_proof": hex::encode(p.vrf_proof.as_bytes()),
        "head": {
            "realm": p.head.realm,
            "epoch": p.head.epoch,
            "root": hex::encode(p.head.root),
            "previous_head_hash": hex::encode(p.head.previous_head_hash),
            "issue_time_ms": p.head.issue_time_ms,
            "update_count": p.head.update_count,
            "config_hash": hex::encode(p.head.config_hash),
        },
        "replica_signatures": sigs_json(&p.replica_signatures),
        "verifier_signatures": sigs_json(&p.verifier_signatures),
        "tree_proof": {
            "terminal": terminal,
            "siblings": p.tree_proof.siblings.iter().map(|s| s.map(hex::encode)).collect::<Vec<_>>(),
        },
        "entry": entry,
        "proof_hex": hex::encode(bytes),
    })
}

/// `keyraft verify-proof`: checks a saved lookup proof offline, with the realm file only.
pub fn verify_proof(args: &VerifyProofArgs, out: &mut dyn Write) -> CmdResult {
    let realm = load_realm(&args.realm)?.client_realm()?;
    let bytes = std::fs::read(&args.proof).map_err(|e| format!("reading {}: {e}", args.proof.display()))?;
    let proof: LookupProof =
        decode_canonical(&bytes).map_err(|e| format!("{} is not a lookup proof: {e}", args.proof.display()))?;
    let user = args.user.clone().unwrap_or_else(|| proof.user_id.clone());
    let now = args.at_ms.unwrap_or_else(keyraft_client::now_ms);
    let verified = keyraft_core::verify_lookup(&realm, &user, &proof, now, None).map_err(|e| match e {
        keyraft_core::VerifyError::HeadExpired { .. } => {
            format!("proof REJECTED: {e} (a saved proof ages; pass --at-ms to verify it as of an earlier time)")
        }
        e => format!("proof REJECTED: {e}"),
    })?;
    match &verified.entry {
        None => writeln!(out, "VERIFIED: {user:?} was not registered in epoch {}", verified.epoch())?,
        Some((entry, _)) => {
            writeln!(out, "VERIFIED: {user:?} had version {} in epoch {}", entry.version, verified.epoch())?
        }
    }
    writeln!(out, "  ratified by a replica majority and {} verifier(s)", verified.ratified_by.len())?;
    Ok(())
}
