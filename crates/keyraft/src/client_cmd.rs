//! Client commands: `keygen`, `register`, `update`, `lookup`, `history`, `watch`, `verify-proof`. Every answer printed was
//! verified with `keyraft_core`.

use crate::json::Verification;
use ed25519_dalek::SigningKey;
use keyraft_client::{
    public_key, Client, ClientError, ClientOptions, LookupOptions, ProfileKeys, ProofChecker, UpdateStatus, WatchUpdate,
};
use keyraft_core::human;
use keyraft_core::lookup::{LookupProof, PositionalSignature};
use keyraft_core::tree::Terminal;
use keyraft_core::{decode_canonical, key_file, Lookup, Policy, PublicKey, RealmFile};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// Options of `keyraft keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the new secret key file (created readable by the owner only); the public
    /// key file is written next to it, with `.pub` appended to the name.
    #[arg(long)]
    pub out: PathBuf,
}

/// Which realm and replicas to talk to, and what answers to accept.
#[derive(Debug, clap::Args)]
pub struct RealmArgs {
    /// The realm file.
    #[arg(long)]
    pub realm: PathBuf,
    /// Replica public addresses (host:port) to use instead of the realm file's.
    #[arg(long = "endpoint")]
    pub endpoints: Vec<String>,
    /// The minimum number of verifier ratifications an answer's epoch needs, from distinct
    /// registered verifiers (default: the realm file's `verifier_threshold`). A replica
    /// majority is always required.
    #[arg(long = "verifiers", value_name = "MIN_RATIFICATIONS")]
    pub verifier_threshold: Option<usize>,
    /// Reject heads older than this many milliseconds (default: the realm file's).
    #[arg(long)]
    pub ttl_ms: Option<u64>,
    /// Accept heads up to this many milliseconds ahead of this machine's clock (default: the
    /// realm file's).
    #[arg(long)]
    pub skew_ms: Option<u64>,
    /// Where to remember the newest epoch seen per realm, to reject rollbacks across runs
    /// (default: `$XDG_STATE_HOME/keyraft/epochs.json`, else `~/.local/state/keyraft/epochs.json`).
    #[arg(long, env = "KEYRAFT_STATE_FILE")]
    pub state: Option<PathBuf>,
    /// Remember epochs for this run only (overrides `--state` and `KEYRAFT_STATE_FILE`).
    #[arg(long)]
    pub no_state: bool,
}

/// `keyraft key` commands.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Rewrites key files of an earlier keyraft (64 hex digits, no header) in the typed
    /// formats, keeping each key. A file named `*.pub` becomes a public key file, any other a
    /// secret key file; files already typed are left alone.
    Migrate(KeyMigrateArgs),
}

/// Options of `keyraft key migrate`.
#[derive(Debug, clap::Args)]
pub struct KeyMigrateArgs {
    /// The key files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
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
    /// A signer's secret key file (from `keyraft keygen`); repeat when the policy needs
    /// several signatures. For `register`, the first is the owner by default.
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    /// For `update`: hand the identity over to this key (the policy becomes this key alone;
    /// it signs too).
    #[arg(long, conflicts_with_all = ["policy_keys", "policy_threshold"])]
    pub new_key: Option<PathBuf>,
    /// A new update policy: these public keys (hex, or a public key file such as the `.pub`
    /// file `keyraft keygen` writes; a secret key file is refused) ...
    #[arg(long = "policy-key", requires = "policy_threshold")]
    pub policy_keys: Vec<String>,
    /// ... of which this many must sign each later update.
    #[arg(long, requires = "policy_keys")]
    pub policy_threshold: Option<u16>,
    /// A profile key to add or change, as APP=VALUE (VALUE as text, or hex:...); repeat for
    /// several. `update` keeps every key of the current profile that `--set` and `--unset` do
    /// not name. A registration without `--set` publishes `ed25519=<owner's public key>`.
    #[arg(long = "set", value_name = "APP=VALUE")]
    pub set: Vec<String>,
    /// For `update`: remove this key from the profile (it must be there); repeat for several.
    #[arg(long = "unset", value_name = "APP", conflicts_with = "replace_profile")]
    pub unset: Vec<String>,
    /// For `update`: start from an empty profile, so it holds only the `--set` keys (without
    /// `--set`: `ed25519=<owner's public key>`), instead of keeping the current profile's.
    #[arg(long)]
    pub replace_profile: bool,
    /// Wait until the update's epoch is ratified by the quorum (`--verifiers`) and print the
    /// verified proof's summary. Exit codes: 0 ratified; 3 accepted in an epoch not ratified
    /// within the wait (the update stays applied: do not resend it; `keyraft status` tells its
    /// epoch); 1 any failure (the message says whether the update may still have been applied).
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits for the ratification, in milliseconds (a replica caps it at its
    /// `limits.wait_ms_max`).
    #[arg(long, requires = "wait", default_value_t = keyraft_client::QUORUM_WAIT_MS)]
    pub wait_ms: u32,
}

/// Options of `keyraft status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    /// Realm.
    pub realm: RealmArgs,
    /// The update id (64 hex digits), as `register` and `update` print it.
    pub update_id: String,
    /// The identity the update is for: needed to find an applied update (its index is learnt
    /// from a verified lookup; `--verifiers 0` if the verifiers are behind). Without it, only
    /// pending and rejected updates are found.
    #[arg(long)]
    pub user: Option<String>,
    /// Print JSON (schema `keyraft.update-status`, docs/cli-json.md).
    #[arg(long)]
    pub json: bool,
}

/// Options of `keyraft lookup`.
#[derive(Debug, clap::Args)]
pub struct LookupArgs {
    #[command(flatten)]
    /// Realm.
    pub realm: RealmArgs,
    /// The identity.
    pub user: String,
    /// Answer from this past epoch (verified as a statement about that epoch).
    #[arg(long, default_value_t = 0)]
    pub epoch: u64,
    /// Print JSON: the verified answer and the whole proof (schema `keyraft.lookup`,
    /// docs/cli-json.md).
    #[arg(long)]
    pub json: bool,
    /// Also write the proof's canonical bytes to this file (for `keyraft verify-proof`).
    #[arg(long)]
    pub save_proof: Option<PathBuf>,
}

/// Options of `keyraft history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    /// Realm.
    pub realm: RealmArgs,
    /// The identity.
    pub user: String,
    /// Versions per page.
    #[arg(long, default_value_t = 100)]
    pub page_size: u32,
    /// Continue from this page token (hex, as printed after a page).
    #[arg(long)]
    pub page_token: Option<String>,
    /// Follow every page to the first version.
    #[arg(long)]
    pub all: bool,
    /// Print JSON: every version listed with its proof (schema `keyraft.history`,
    /// docs/cli-json.md).
    #[arg(long)]
    pub json: bool,
    /// Also write each listed version's proof to this directory, as
    /// `version-V-epoch-E.proof` (for `keyraft verify-proof --past E`).
    #[arg(long, value_name = "DIR")]
    pub save_proofs: Option<PathBuf>,
}

/// Options of `keyraft watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    /// Realm.
    pub realm: RealmArgs,
    /// The identity.
    pub user: String,
    /// Start with the changes after this epoch (default: the current value).
    #[arg(long, default_value_t = 0)]
    pub from_epoch: u64,
    /// Stop after this many events (default: run until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
}

/// Options of `keyraft verify-proof`. Without `--past` or `--at-ms` the proof is checked as
/// the current answer: fresh now, and not older than the newest epoch this client has seen
/// (the same memory as `lookup`'s, which it then updates).
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
    /// Check it as a statement about this epoch only (a proof of another epoch is refused):
    /// no freshness or rollback check, which are about the present. Historical: it says
    /// nothing about today.
    #[arg(long, value_name = "EPOCH", conflicts_with = "at_ms")]
    pub past: Option<u64>,
    /// Check it as the answer that was current at this time (ms since the Unix epoch):
    /// freshness as of then, no rollback check. Historical: it says nothing about today.
    #[arg(long, value_name = "MS")]
    pub at_ms: Option<u64>,
    /// The minimum number of verifier ratifications its epoch needs, from distinct registered
    /// verifiers (default: the realm file's `verifier_threshold`).
    #[arg(long = "verifiers", value_name = "MIN_RATIFICATIONS")]
    pub verifier_threshold: Option<usize>,
    /// Reject heads older than this many milliseconds (default: the realm file's).
    #[arg(long)]
    pub ttl_ms: Option<u64>,
    /// Accept heads up to this many milliseconds ahead of the clock (default: the realm
    /// file's).
    #[arg(long)]
    pub skew_ms: Option<u64>,
    /// The newest epoch seen per realm, as `lookup` remembers it (default as for `lookup`).
    #[arg(long, env = "KEYRAFT_STATE_FILE")]
    pub state: Option<PathBuf>,
    /// Check against, and remember, epochs for this run only (overrides `--state` and
    /// `KEYRAFT_STATE_FILE`).
    #[arg(long)]
    pub no_state: bool,
}

fn load_realm(path: &PathBuf) -> Result<RealmFile, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading the realm file {}: {e}", path.display()))?;
    Ok(RealmFile::from_json(&text)?)
}

fn default_state_file() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".local/state"),
    };
    Some(base.join("keyraft/epochs.json"))
}

/// Where the client remembers the newest epoch seen: `--no-state` wins, then `--state` (or
/// `KEYRAFT_STATE_FILE`), then the default file.
fn state_file(state: Option<&PathBuf>, no_state: bool) -> Option<PathBuf> {
    if no_state {
        return None;
    }
    let file = state.cloned().or_else(default_state_file);
    if file.is_none() {
        tracing::warn!("no HOME or XDG_STATE_HOME: epochs seen are remembered for this run only");
    }
    file
}

fn client(args: &RealmArgs) -> Result<Client, Box<dyn std::error::Error>> {
    let options = ClientOptions {
        verifier_threshold: args.verifier_threshold,
        epoch_ttl_ms: args.ttl_ms,
        clock_skew_ms: args.skew_ms,
        state_file: state_file(args.state.as_ref(), args.no_state),
        ..ClientOptions::default()
    };
    Ok(Client::with_options(&load_realm(&args.realm)?, &args.endpoints, &options)?)
}

/// A public key given as hex or as a public key file (the `.pub` file `keyraft keygen` writes).
fn policy_key(s: &str) -> Result<PublicKey, Box<dyn std::error::Error>> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        let bytes: [u8; 32] =
            hex::decode(s)?.try_into().map_err(|_| format!("--policy-key {s:?}: expected 32 bytes"))?;
        return Ok(PublicKey::from_bytes(&bytes).map_err(|e| format!("--policy-key {s:?}: {e}"))?);
    }
    let path = std::path::Path::new(s);
    let read = key_file::read_public(path, "--policy-key")?;
    if read.legacy {
        tracing::warn!("{}", key_file::legacy_warning(path, "--policy-key"));
    }
    Ok(read.key)
}

/// A signer's secret key file; `option` names the option that gave it, for the messages.
fn load_key(path: &std::path::Path, option: &str) -> Result<SigningKey, Box<dyn std::error::Error>> {
    let read = key_file::read_secret(path, option)?;
    if read.legacy {
        tracing::warn!("{}", key_file::legacy_warning(path, option));
    }
    Ok(SigningKey::from_bytes(&read.key))
}

/// The profile keys an update makes: a registration and `--replace-profile` start from an
/// empty profile (holding the owner's public key when nothing is `--set`); any other update
/// edits the current profile.
fn profile_keys(
    args: &UpdateArgs,
    is_update: bool,
    owner: &SigningKey,
) -> Result<ProfileKeys, Box<dyn std::error::Error>> {
    if !is_update && (args.replace_profile || !args.unset.is_empty()) {
        return Err(
            "register: --unset and --replace-profile are for `update` (a registration has no profile yet)".into()
        );
    }
    let set = parse_set(&args.set)?;
    if is_update && !args.replace_profile {
        let unset = args.unset.iter().cloned().collect();
        return Ok(ProfileKeys::Edit { set, unset });
    }
    if set.is_empty() {
        return Ok(ProfileKeys::Replace(BTreeMap::from([(
            "ed25519".to_owned(),
            public_key(owner).as_bytes().to_vec(),
        )])));
    }
    Ok(ProfileKeys::Replace(set))
}

fn parse_set(set: &[String]) -> Result<BTreeMap<String, Vec<u8>>, Box<dyn std::error::Error>> {
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
    let public = public_key(&key);
    let pub_path = key_file::public_path_for(&args.out);
    // Neither file is overwritten; a secret whose public file could not be written is removed
    // again, so a failed keygen leaves no half pair (and never a stale .pub beside an old key).
    key_file::write_secret(&args.out, &key.to_bytes())?;
    if let Err(e) = key_file::write_public(&pub_path, &public) {
        let _ = std::fs::remove_file(&args.out);
        return Err(e.into());
    }
    writeln!(out, "secret key written to {}", args.out.display())?;
    writeln!(out, "public key: {} (also in {})", hex::encode(public.as_bytes()), pub_path.display())?;
    Ok(())
}

/// `keyraft key migrate`: rewrites key files of an earlier keyraft in the typed formats.
pub fn key_migrate(args: &KeyMigrateArgs, out: &mut dyn Write) -> CmdResult {
    for path in &args.files {
        match key_file::migrate(path)? {
            key_file::Migrated::Rewritten(kind) => {
                writeln!(out, "{}: rewritten as a {} key file", path.display(), kind.name())?
            }
            key_file::Migrated::AlreadyTyped(kind) => {
                writeln!(out, "{}: already a {} key file, unchanged", path.display(), kind.name())?
            }
        }
    }
    Ok(())
}

/// `keyraft register` (`is_update == false`) and `keyraft update`.
pub fn update(args: &UpdateArgs, is_update: bool, out: &mut dyn Write) -> CmdResult {
    let rt = runtime()?;
    let _entered = rt.enter();
    // Key files first: the wrong kind of file is the caller's mistake whatever the realm is.
    let keys: Vec<SigningKey> = args.keys.iter().map(|p| load_key(p, "--key")).collect::<Result<_, _>>()?;
    let new_key = args.new_key.as_deref().map(|p| load_key(p, "--new-key")).transpose()?;
    let owner = new_key.as_ref().or(keys.first()).ok_or("--key is required")?;
    let profile = profile_keys(args, is_update, owner)?;
    let policy = match args.policy_threshold {
        Some(t) => {
            let list = args.policy_keys.iter().map(|k| policy_key(k)).collect::<Result<Vec<_>, _>>()?;
            Some(Policy::threshold(t, list).map_err(|e| format!("the new policy is invalid: {e}"))?)
        }
        None => new_key.as_ref().map(|k| Policy::single(public_key(k))),
    };
    let client = client(&args.realm)?;
    let mut builder = if is_update { client.change(&args.user) } else { client.registration(&args.user, owner) };
    for k in keys.iter().chain(new_key.as_ref()) {
        builder = builder.signer(k);
    }
    if let Some(p) = policy {
        builder = builder.policy(p);
    }
    if args.wait {
        builder = builder.wait_for_quorum().wait_ms(args.wait_ms);
    }
    let what = if is_update { "updated" } else { "registered" };
    let outcome = match rt.block_on(builder.profile_keys(profile).send()) {
        Ok(outcome) => outcome,
        Err(ClientError::NotRatifiedYet { update_id, epoch, verifiers }) => {
            let id = hex::encode(&update_id);
            writeln!(
                out,
                "{what} {:?}: accepted in epoch {epoch}; not yet ratified by {} within {} ms (update id {id})",
                args.user,
                count(verifiers as u64, "verifier"),
                args.wait_ms
            )?;
            writeln!(
                out,
                "  the update stays applied: do not resend it; `keyraft status --realm {} {id} --user {}` tells its epoch, `keyraft lookup` proves it once ratified",
                args.realm.realm.display(),
                args.user
            )?;
            return Err(crate::cli::Exit(crate::cli::EXIT_NOT_RATIFIED).into());
        }
        Err(e) => return Err(e.into()),
    };
    if outcome.duplicate {
        // An attempt answered "try again" had gone through: the resubmission found it.
        writeln!(
            out,
            "{what} {:?}: the update was already applied in epoch {} (an earlier attempt went through; update id {})",
            args.user,
            outcome.epoch,
            hex::encode(&outcome.update_id)
        )?;
    } else {
        writeln!(
            out,
            "{what} {:?}: accepted in epoch {} (update id {})",
            args.user,
            outcome.epoch,
            hex::encode(&outcome.update_id)
        )?;
    }
    print_profile_changes(out, &outcome.previous_keys, &outcome.keys)?;
    if let Some(answer) = &outcome.proof {
        writeln!(
            out,
            "  VERIFIED in epoch {}: ratified by a replica majority and {}",
            answer.lookup.epoch(),
            count(answer.lookup.ratified_by.len() as u64, "verifier")
        )?;
    }
    Ok(())
}

/// One line per profile key: added, changed, removed or kept.
fn print_profile_changes(
    out: &mut dyn Write,
    before: &BTreeMap<String, Vec<u8>>,
    after: &BTreeMap<String, Vec<u8>>,
) -> std::io::Result<()> {
    let apps: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for app in apps {
        let what = match (before.get(app), after.get(app)) {
            (None, _) => "added",
            (Some(_), None) => "removed",
            (Some(old), Some(new)) if old == new => "kept",
            _ => "changed",
        };
        writeln!(out, "  {app}: {what}")?;
    }
    Ok(())
}

/// `keyraft status`: where an update is, as a replica reports it.
pub fn status(args: &StatusArgs, out: &mut dyn Write) -> CmdResult {
    let id = hex::decode(&args.update_id)
        .ok()
        .filter(|id| id.len() == 32)
        .ok_or_else(|| format!("{:?} is not an update id (64 hex digits)", args.update_id))?;
    let rt = runtime()?;
    let _entered = rt.enter();
    let client = client(&args.realm)?;
    let status = rt.block_on(client.update_status_by_id(&id, args.user.as_deref()))?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&crate::json::update_status(&id, &status))?)?;
        return Ok(());
    }
    match status {
        UpdateStatus::Pending => writeln!(out, "PENDING: received, not in an epoch yet")?,
        UpdateStatus::InEpoch(epoch) => writeln!(
            out,
            "IN_EPOCH {epoch}: applied in epoch {epoch} (a replica's report; `keyraft lookup` proves it once the epoch is ratified)"
        )?,
        UpdateStatus::Rejected { reason, retryable } => writeln!(
            out,
            "REJECTED: {reason} ({})",
            if retryable { "sending it again later may succeed" } else { "final" }
        )?,
        UpdateStatus::Unknown if args.user.is_none() => writeln!(
            out,
            "UNKNOWN: not pending nor rejected (an applied update is found only with --user)"
        )?,
        UpdateStatus::Unknown => writeln!(out, "UNKNOWN: the replica does not know this update")?,
    }
    Ok(())
}

pub(crate) fn print_lookup(out: &mut dyn Write, l: &Lookup) -> std::io::Result<()> {
    match &l.entry {
        None => writeln!(out, "{:?} is not registered (epoch {}, VERIFIED)", l.user_id, l.epoch())?,
        Some((entry, profile)) => {
            writeln!(out, "{:?}: version {} in epoch {} (VERIFIED)", l.user_id, entry.version, l.epoch())?;
            print_profile(out, profile)?;
        }
    }
    Ok(())
}

/// Profile keys as text when printable (binary keys as hex).
pub(crate) fn print_profile(out: &mut dyn Write, profile: &keyraft_core::Profile) -> std::io::Result<()> {
    for (app, key) in &profile.keys {
        match std::str::from_utf8(key) {
            Ok(s) if s.chars().all(|c| !c.is_control()) && app != "ed25519" => writeln!(out, "  {app} = {s}")?,
            _ => writeln!(out, "  {app} = hex:{}", hex::encode(key))?,
        }
    }
    Ok(())
}

/// `keyraft history`: every version, newest first, each verified at its epoch.
pub fn history(args: &HistoryArgs, out: &mut dyn Write) -> CmdResult {
    let rt = runtime()?;
    let _entered = rt.enter();
    let client = client(&args.realm)?;
    let mut token = match &args.page_token {
        Some(t) => hex::decode(t).map_err(|e| format!("--page-token: {e}"))?,
        None => Vec::new(),
    };
    if let Some(dir) = &args.save_proofs {
        std::fs::create_dir_all(dir).map_err(|e| format!("--save-proofs: creating {}: {e}", dir.display()))?;
    }
    let now = keyraft_client::now_ms();
    // Only the JSON document holds every version at once; text is written page by page.
    let mut listed = Vec::new();
    let mut shown = 0usize;
    let mut endpoints: Vec<String> = Vec::new();
    loop {
        let page = rt.block_on(client.history(&args.user, args.page_size, &token))?;
        for (version, answer) in &page.versions {
            if let Some(dir) = &args.save_proofs {
                crate::history_out::save_proof(dir, *version, answer)?;
            }
            if !args.json {
                if shown == 0 {
                    writeln!(out, "{}", crate::answer::history_heading(&args.user))?;
                }
                crate::answer::print_history_version(out, *version, answer, now)?;
            }
            shown += 1;
        }
        if !endpoints.contains(&page.endpoint) {
            endpoints.push(page.endpoint);
        }
        if args.json {
            listed.extend(page.versions);
        }
        token = page.next_page_token;
        if token.is_empty() || !args.all {
            break;
        }
    }
    if args.json {
        let json = crate::json::history(&args.user, &listed, &token, client.realm())?;
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        return Ok(());
    }
    Ok(crate::history_out::finish(out, args, shown, &token, &endpoints)?)
}

/// `keyraft watch`: the current value, then every change and heartbeat, all verified.
pub fn watch(args: &WatchArgs, out: &mut dyn Write) -> CmdResult {
    let rt = runtime()?;
    let _entered = rt.enter();
    let client = client(&args.realm)?;
    rt.block_on(async {
        let mut watch = client.watch(&args.user, args.from_epoch).await?;
        let mut seen = 0u64;
        while args.count.is_none_or(|n| seen < n) {
            let Some(event) = watch.next().await else {
                writeln!(out, "the replica ended the watch")?;
                break;
            };
            match event? {
                WatchUpdate::Changed(answer) => {
                    write!(out, "CHANGED ")?;
                    print_lookup(out, &answer.lookup)?;
                }
                WatchUpdate::Unchanged(answer) => {
                    let l = &answer.lookup;
                    let version =
                        l.entry.as_ref().map_or("not registered".to_owned(), |(e, _)| format!("version {}", e.version));
                    writeln!(
                        out,
                        "unchanged in epoch {} (head issued {}, {version}, VERIFIED)",
                        l.epoch(),
                        human::time_and_age(l.head.issue_time_ms, keyraft_client::now_ms())
                    )?;
                }
            }
            out.flush()?;
            seen += 1;
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })
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
    // An answer about a given epoch is checked as a statement about it, not as today's value.
    let verification = if args.epoch != 0 { Verification::Historical } else { Verification::Current };
    if args.json {
        let json = crate::json::lookup(&answer, client.realm(), verification)?;
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        return Ok(());
    }
    crate::answer::print_lookup(out, &answer, verification, keyraft_client::now_ms())?;
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

/// `keyraft verify-proof`: checks a saved lookup proof offline, with the realm file only: as
/// the current answer (every step, rollback against this client's epoch memory, which it then
/// updates), or as a historical statement (`--past EPOCH`, `--at-ms`).
pub fn verify_proof(args: &VerifyProofArgs, out: &mut dyn Write) -> CmdResult {
    let file = load_realm(&args.realm)?;
    let bytes = std::fs::read(&args.proof).map_err(|e| format!("reading {}: {e}", args.proof.display()))?;
    let proof: LookupProof =
        decode_canonical(&bytes).map_err(|e| format!("{} is not a lookup proof: {e}", args.proof.display()))?;
    let user = args.user.clone().unwrap_or_else(|| proof.user_id.clone());
    let historical = args.past.is_some() || args.at_ms.is_some();
    let options = ClientOptions {
        verifier_threshold: args.verifier_threshold,
        epoch_ttl_ms: args.ttl_ms,
        clock_skew_ms: args.skew_ms,
        // A historical check neither reads nor updates the memory of the present.
        state_file: if historical { None } else { state_file(args.state.as_ref(), args.no_state) },
        ..ClientOptions::default()
    };
    let checker = ProofChecker::new(&file, &options)?;
    let now = keyraft_client::now_ms();
    let last_seen = checker.newest_epoch_seen();
    let verified = match (args.past, args.at_ms) {
        (Some(epoch), _) => checker.accept_past(&user, bytes, epoch),
        (None, Some(at_ms)) => checker.accept_as_of(&user, bytes, at_ms),
        (None, None) => checker.accept_current(&user, bytes, now, last_seen),
    };
    let verified = verified.map_err(|e| rejection(e, proof.head.epoch))?.lookup;
    let epoch = verified.epoch();
    if historical {
        writeln!(out, "HISTORICAL: what {user:?} was in epoch {epoch}, nothing about today")?;
    }
    match &verified.entry {
        None => writeln!(out, "VERIFIED: {user:?} was not registered in epoch {epoch}")?,
        Some((entry, _)) => writeln!(out, "VERIFIED: {user:?} had version {} in epoch {epoch}", entry.version)?,
    }
    let realm = checker.realm();
    let issued = verified.head.issue_time_ms;
    match (args.past, args.at_ms) {
        (Some(_), _) => writeln!(out, "  freshness and rollback not checked (a statement about epoch {epoch})")?,
        (None, Some(at_ms)) => writeln!(
            out,
            "  the current answer as of {} (--at-ms {at_ms}): head issued at {} ({} earlier), within the TTL of {}; rollback not checked",
            human::utc(at_ms),
            human::utc(issued),
            human::duration(at_ms.saturating_sub(issued)),
            human::duration(realm.epoch_ttl_ms)
        )?,
        (None, None) => {
            let seen = match last_seen {
                Some(seen) => format!("not older than epoch {seen}, the newest this client had seen"),
                None => "the first epoch this client has seen of this realm".to_owned(),
            };
            writeln!(
                out,
                "  the current answer: head issued at {} (TTL {}), {seen}",
                human::time_and_age(issued, now),
                human::duration(realm.epoch_ttl_ms)
            )?;
        }
    }
    writeln!(out, "  ratified by a replica majority and {}", count(verified.ratified_by.len() as u64, "verifier"))?;
    Ok(())
}

/// Why a saved proof was refused, and how to check what it does prove.
fn rejection(e: ClientError, epoch: u64) -> String {
    use keyraft_core::VerifyError;
    match e {
        ClientError::Misbehaved(e @ VerifyError::Rollback { .. }) => format!(
            "proof REJECTED as the current answer: {e}: this client has seen a newer epoch of the realm, so the proof is not today's answer (pass --past {epoch} to check it as a statement about epoch {epoch})"
        ),
        ClientError::Stale(e @ VerifyError::HeadExpired { .. }) => format!(
            "proof REJECTED: {e} (a saved proof ages; pass --past {epoch} to check it as a statement about epoch {epoch}, or --at-ms to verify it as of an earlier time)"
        ),
        ClientError::Misbehaved(e) | ClientError::Stale(e) => format!("proof REJECTED: {e}"),
        // Verifier ratifications missing: the proof lacks them; no retry changes a saved proof.
        ClientError::Unavailable(why) => format!("proof REJECTED: {why}"),
        // The state file, not the proof.
        e => e.to_string(),
    }
}

/// `n` and `noun`, in the plural unless `n` is 1: "1 verifier", "2 verifiers".
pub(crate) fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
