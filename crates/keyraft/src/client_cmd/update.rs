//! `keyraft register` and `keyraft update`: an entry signed with the owner's key files,
//! submitted, and with `--wait` proven ratified by the client's quorum.

use super::keys::load_key;
use super::{client, count, runtime, CmdResult, RealmArgs};
use ed25519_dalek::SigningKey;
use keyraft_client::{public_key, ClientError, PreparedUpdate, ProfileKeys, RegistrationProof, UpdateOutcome};
use keyraft_core::registration::Attestation;
use keyraft_core::{key_file, Policy, PublicKey};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// Options of `keyraft register` and `keyraft update`.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    /// Realm.
    pub realm: RealmArgs,
    /// The identity.
    #[arg(long, required_unless_present = "prepared", conflicts_with = "prepared")]
    pub user: Option<String>,
    /// A signer's secret key file (from `keyraft keygen`); repeat when the policy needs
    /// several signatures. For `register`, the first is the owner by default.
    #[arg(long = "key", required_unless_present = "prepared")]
    pub keys: Vec<PathBuf>,
    /// For `register` in a realm that asks for a proof of the right to the identity: build
    /// and sign the registration, write it to this file and stop. It prints the update id
    /// (for a registrar attestation or an e-mail code) and the OIDC nonce (for an ID token);
    /// send it with `--prepared`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["prepared", "attestation", "id_token", "email_code"])]
    pub prepare: Option<PathBuf>,
    /// Send the registration prepared with `--prepare` (the user and keys come from the file),
    /// with its proof.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["keys", "new_key", "policy_keys", "set", "unset", "replace_profile"])]
    pub prepared: Option<PathBuf>,
    /// With `--prepared`: ask a replica to mail a registration code for it to the identity's
    /// address, and stop; then send it with `--email-code`.
    #[arg(long, requires = "prepared", conflicts_with_all = ["attestation", "id_token", "email_code"])]
    pub send_email_code: bool,
    /// The proof: a registrar attestation file (from `keyraft registrar attest`).
    #[arg(long, value_name = "FILE", requires = "prepared", conflicts_with_all = ["id_token", "email_code"])]
    pub attestation: Option<PathBuf>,
    /// The proof: an OpenID Connect ID token whose nonce is the prepared update's (the token,
    /// or @FILE holding it).
    #[arg(long, value_name = "TOKEN|@FILE", requires = "prepared", conflicts_with = "email_code")]
    pub id_token: Option<String>,
    /// The proof: the code mailed after `--send-email-code`.
    #[arg(long, value_name = "CODE", requires = "prepared")]
    pub email_code: Option<String>,
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
    /// epoch); 4 the client's state file on this machine could not be read or written; 1 any
    /// other failure (the message says whether the update may still have been applied).
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits for the ratification, in milliseconds (a replica caps it at its
    /// `limits.wait_ms_max`).
    #[arg(long, requires = "wait", default_value_t = keyraft_client::QUORUM_WAIT_MS)]
    pub wait_ms: u32,
}

fn policy_key(s: &str) -> Result<PublicKey, Box<dyn std::error::Error>> {
    public_key_arg(s, "--policy-key")
}

/// A public key given as hex or as a public key file (the `.pub` file `keyraft keygen`
/// writes); `flag` names the option in errors.
pub fn public_key_arg(s: &str, flag: &str) -> Result<PublicKey, Box<dyn std::error::Error>> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        let bytes: [u8; 32] = hex::decode(s)?.try_into().map_err(|_| format!("{flag} {s:?}: expected 32 bytes"))?;
        return Ok(PublicKey::from_bytes(&bytes).map_err(|e| format!("{flag} {s:?}: {e}"))?);
    }
    let path = std::path::Path::new(s);
    let read = key_file::read_public(path, flag)?;
    if read.legacy {
        tracing::warn!("{}", key_file::legacy_warning(path, flag));
    }
    Ok(read.key)
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

/// Reads an attestation file: the hex of its canonical bytes (what `keyraft registrar attest`
/// writes).
pub(super) fn read_attestation(path: &std::path::Path) -> Result<Attestation, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--attestation: reading {}: {e}", path.display()))?;
    let bytes = hex::decode(text.trim())
        .map_err(|e| format!("--attestation {}: not the hex of an attestation: {e}", path.display()))?;
    Ok(keyraft_core::decode_canonical(&bytes).map_err(|e| format!("--attestation {}: {e}", path.display()))?)
}

/// Reads a prepared update file.
pub(super) fn read_prepared(path: &std::path::Path, flag: &str) -> Result<PreparedUpdate, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{flag}: reading {}: {e}", path.display()))?;
    Ok(PreparedUpdate::from_json(&text).map_err(|e| format!("{flag} {}: {e}", path.display()))?)
}

fn registration_proof(args: &UpdateArgs) -> Result<Option<RegistrationProof>, Box<dyn std::error::Error>> {
    if let Some(path) = &args.attestation {
        return Ok(Some(RegistrationProof::Attestation(Box::new(read_attestation(path)?))));
    }
    if let Some(token) = &args.id_token {
        let token = match token.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path).map_err(|e| format!("--id-token: reading {path}: {e}"))?,
            None => token.clone(),
        };
        return Ok(Some(RegistrationProof::OidcIdToken(token.trim().to_owned())));
    }
    Ok(args.email_code.clone().map(RegistrationProof::EmailCode))
}

/// `keyraft register --prepared`: send a prepared registration with its proof, or ask for an
/// e-mail code for it.
fn send_prepared(args: &UpdateArgs, path: &std::path::Path, out: &mut dyn Write) -> CmdResult {
    let rt = runtime()?;
    let _entered = rt.enter();
    let prepared = read_prepared(path, "--prepared")?;
    let client = client(&args.realm)?;
    if args.send_email_code {
        let (address, expires_ms) = rt.block_on(client.send_email_code(&prepared))?;
        writeln!(
            out,
            "a registration code for {:?} was mailed to {address}; it expires at {} (in {} s)",
            prepared.user_id,
            keyraft_core::human::utc(expires_ms),
            expires_ms.saturating_sub(keyraft_client::now_ms()) / 1000
        )?;
        writeln!(
            out,
            "  then: keyraft {} --realm {} --prepared {} --email-code CODE",
            if prepared.recovery { "recover" } else { "register" },
            args.realm.realm.display(),
            path.display()
        )?;
        return Ok(());
    }
    let proof = registration_proof(args)?;
    let wait = args.wait.then_some(args.wait_ms);
    let result = rt.block_on(client.send_prepared(&prepared, proof.as_ref(), wait));
    let what = if prepared.recovery { Done::Recovery } else { Done::Registered };
    report(&args.realm.realm, args.wait_ms, what, &prepared.user_id, result, out)
}

/// What an update did, in `report`'s words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Registered,
    Updated,
    Recovery,
    Vetoed,
}

impl Done {
    fn words(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Updated => "updated",
            Self::Recovery => "recovery requested for",
            Self::Vetoed => "vetoed recovery of",
        }
    }
}

/// `keyraft recover`: a recovery request, prepared (`--prepare`) for its registration proof
/// and sent with it (`--prepared`). Its keys are the new owner's (`--key`); its profile is
/// made afresh, as a registration's.
pub fn recover(args: &UpdateArgs, out: &mut dyn Write) -> CmdResult {
    if let Some(path) = &args.prepared {
        return send_prepared(args, path, out);
    }
    if args.new_key.is_some() || args.replace_profile || !args.unset.is_empty() {
        return Err("recover: the new owner is --key; --new-key, --unset and --replace-profile are for `update`".into());
    }
    let user = args.user.as_deref().ok_or("--user is required")?;
    let rt = runtime()?;
    let _entered = rt.enter();
    let keys: Vec<SigningKey> = args.keys.iter().map(|p| load_key(p, "--key")).collect::<Result<_, _>>()?;
    let owner = keys.first().ok_or("--key is required")?;
    let profile = profile_keys(args, false, owner)?;
    let client = client(&args.realm)?;
    let mut builder = client.recovery(user, owner);
    for k in &keys {
        builder = builder.signer(k);
    }
    if let Some(t) = args.policy_threshold {
        let list = args.policy_keys.iter().map(|k| policy_key(k)).collect::<Result<Vec<_>, _>>()?;
        builder = builder.policy(Policy::threshold(t, list).map_err(|e| format!("the new policy is invalid: {e}"))?);
    }
    if args.wait {
        builder = builder.wait_for_quorum().wait_ms(args.wait_ms);
    }
    let builder = builder.profile_keys(profile);
    if let Some(path) = &args.prepare {
        return write_prepared(&rt, builder, path, "recovery", "recover", out);
    }
    let result = rt.block_on(builder.send());
    report(&args.realm.realm, args.wait_ms, Done::Recovery, user, result, out)
}

/// `--prepare`: signs the update, writes it to `path` for the registration proof it needs
/// (`what` it is, sent back with `keyraft <command> --prepared`), and says how to get one.
fn write_prepared(
    rt: &tokio::runtime::Runtime,
    builder: keyraft_client::UpdateBuilder<'_>,
    path: &std::path::Path,
    what: &str,
    command: &str,
    out: &mut dyn Write,
) -> CmdResult {
    let prepared = rt.block_on(builder.prepare())?;
    std::fs::write(path, prepared.to_json()).map_err(|e| format!("--prepare: writing {}: {e}", path.display()))?;
    writeln!(out, "prepared the {what} of {:?} in {}", prepared.user_id, path.display())?;
    writeln!(out, "  update id:  {}", hex::encode(prepared.update_id()))?;
    writeln!(out, "  OIDC nonce: {}", prepared.oidc_nonce())?;
    writeln!(
        out,
        "  get the proof a registration of the identity needs (`keyraft registrar attest --prepared {0}`, an ID \
         token with that nonce, or `keyraft {command} --prepared {0} --send-email-code`), then send it with \
         `keyraft {command} --prepared {0} ...`",
        path.display()
    )?;
    Ok(())
}

/// Options of `keyraft veto`.
#[derive(Debug, clap::Args)]
pub struct VetoArgs {
    #[command(flatten)]
    /// Realm.
    pub realm: RealmArgs,
    /// The identity whose pending recovery to cancel.
    pub user: String,
    /// A secret key file of the current policy; repeat when it needs several signatures.
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    /// Wait until the veto's epoch is ratified by the quorum.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits, in milliseconds.
    #[arg(long, requires = "wait", default_value_t = keyraft_client::QUORUM_WAIT_MS)]
    pub wait_ms: u32,
}

/// `keyraft veto`: the next version, same policy and profile keys, signed under the current
/// policy; it cancels any pending recovery.
pub fn veto(args: &VetoArgs, out: &mut dyn Write) -> CmdResult {
    let rt = runtime()?;
    let _entered = rt.enter();
    let keys: Vec<SigningKey> = args.keys.iter().map(|p| load_key(p, "--key")).collect::<Result<_, _>>()?;
    let client = client(&args.realm)?;
    let mut builder = client
        .change(&args.user)
        .profile_keys(ProfileKeys::Edit { set: BTreeMap::new(), unset: std::collections::BTreeSet::new() });
    for k in &keys {
        builder = builder.signer(k);
    }
    if args.wait {
        builder = builder.wait_for_quorum().wait_ms(args.wait_ms);
    }
    let result = rt.block_on(builder.send());
    report(&args.realm.realm, args.wait_ms, Done::Vetoed, &args.user, result, out)
}

/// `keyraft register` (`is_update == false`) and `keyraft update`.
pub fn update(args: &UpdateArgs, is_update: bool, out: &mut dyn Write) -> CmdResult {
    if is_update && (args.prepare.is_some() || args.prepared.is_some()) {
        return Err(
            "update: --prepare and --prepared are for `register` (a change needs no proof but its signatures)".into()
        );
    }
    if let Some(path) = &args.prepared {
        return send_prepared(args, path, out);
    }
    let user = args.user.as_deref().ok_or("--user is required")?;
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
    let mut builder = if is_update { client.change(user) } else { client.registration(user, owner) };
    for k in keys.iter().chain(new_key.as_ref()) {
        builder = builder.signer(k);
    }
    if let Some(p) = policy {
        builder = builder.policy(p);
    }
    if args.wait {
        builder = builder.wait_for_quorum().wait_ms(args.wait_ms);
    }
    let builder = builder.profile_keys(profile);
    if let Some(path) = &args.prepare {
        return write_prepared(&rt, builder, path, "registration", "register", out);
    }
    let result = rt.block_on(builder.send());
    report(&args.realm.realm, args.wait_ms, if is_update { Done::Updated } else { Done::Registered }, user, result, out)
}

/// Prints what became of an update.
fn report(
    realm_file: &std::path::Path,
    wait_ms: u32,
    done: Done,
    user: &str,
    result: Result<UpdateOutcome, ClientError>,
    out: &mut dyn Write,
) -> CmdResult {
    let what = done.words();
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(ClientError::NotRatifiedYet { update_id, epoch, verifiers }) => {
            let id = hex::encode(&update_id);
            writeln!(
                out,
                "{what} {:?}: accepted in epoch {epoch}; not yet ratified by {} within {} ms (update id {id})",
                user,
                count(verifiers as u64, "verifier"),
                wait_ms
            )?;
            writeln!(
                out,
                "  the update stays applied: do not resend it; `keyraft status --realm {} {id} --user {}` tells its epoch, `keyraft lookup` proves it once ratified",
                realm_file.display(),
                user
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
            user,
            outcome.epoch,
            hex::encode(&outcome.update_id)
        )?;
    } else {
        writeln!(
            out,
            "{what} {:?}: accepted in epoch {} (update id {})",
            user,
            outcome.epoch,
            hex::encode(&outcome.update_id)
        )?;
    }
    print_profile_changes(out, &outcome.previous_keys, &outcome.keys)?;
    match done {
        Done::Recovery => writeln!(
            out,
            "  the recovery takes effect after the realm's veto window, unless the current owner updates or vetoes \
             the identity first; `keyraft lookup` shows it pending"
        )?,
        Done::Vetoed => writeln!(out, "  any recovery pending in an earlier epoch is cancelled")?,
        Done::Registered | Done::Updated => {}
    }
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
