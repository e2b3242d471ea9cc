//! `keyraft registrar attest`: a registrar (a signup service, an HR system: whoever verified
//! the person) signs that one prepared registration of one identity may be applied.

use super::keys::load_key;
use super::update::read_prepared;
use super::{load_realm, CmdResult};
use keyraft_core::registration::Attestation;
use keyraft_core::{Canonical, PublicKey};
use std::io::Write;
use std::path::PathBuf;

/// Registrar commands.
#[derive(Debug, clap::Subcommand)]
pub enum RegistrarCommand {
    /// Signs an attestation that a prepared registration may be applied (the realm must
    /// list the key in `registration.registrar_keys`).
    Attest(AttestArgs),
}

/// Options of `keyraft registrar attest`.
#[derive(Debug, clap::Args)]
pub struct AttestArgs {
    /// The realm file.
    #[arg(long)]
    pub realm: PathBuf,
    /// The registrar's secret key file (from `keyraft keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// The prepared registration (`keyraft register --prepare FILE`).
    #[arg(long, value_name = "FILE", required_unless_present = "update_id", conflicts_with_all = ["user", "update_id"])]
    pub prepared: Option<PathBuf>,
    /// Instead of `--prepared`: the identity ...
    #[arg(long, requires = "update_id")]
    pub user: Option<String>,
    /// ... and the id of the update (64 hex digits) that registers it.
    #[arg(long, requires = "user")]
    pub update_id: Option<String>,
    /// How long the attestation may be used, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub valid_for_s: u64,
    /// Where to write it (hex of its canonical bytes); default: standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `keyraft registrar ...`.
pub fn registrar(command: &RegistrarCommand, out: &mut dyn Write) -> CmdResult {
    match command {
        RegistrarCommand::Attest(args) => attest(args, out),
    }
}

fn attest(args: &AttestArgs, out: &mut dyn Write) -> CmdResult {
    let realm = load_realm(&args.realm)?.config()?;
    let key = load_key(&args.key, "--key")?;
    let Some(policy) = &realm.registration else {
        return Err(format!(
            "realm {:?} is of protocol version 1: it registers first come, first served and has no registrar keys",
            realm.realm
        )
        .into());
    };
    let public = PublicKey::from_verifying_key(&key.verifying_key())?;
    if policy.registrar_keys.binary_search(&public).is_err() {
        return Err(format!(
            "--key {}: its public key {} is not one of realm {:?}'s registrar keys",
            args.key.display(),
            hex::encode(public.as_bytes()),
            realm.realm
        )
        .into());
    }
    let (user_id, update_id) = match (&args.prepared, &args.user, &args.update_id) {
        (Some(path), _, _) => {
            let prepared = read_prepared(path, "--prepared")?;
            if prepared.realm != realm.realm {
                return Err(format!(
                    "--prepared {}: it is for realm {:?}, not {:?}",
                    path.display(),
                    prepared.realm,
                    realm.realm
                )
                .into());
            }
            (prepared.user_id.clone(), prepared.update_id())
        }
        (None, Some(user), Some(id)) => {
            let bytes: [u8; 32] = hex::decode(id)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("--update-id {id:?}: expected 64 hex digits"))?;
            (realm.canonical_user_id(user).map_err(|e| format!("--user {user:?}: {e}"))?, bytes)
        }
        _ => return Err("give --prepared FILE, or --user and --update-id".into()),
    };
    let expires_ms = keyraft_client::now_ms().saturating_add(args.valid_for_s.saturating_mul(1000));
    let attestation = Attestation::sign(&key, &realm.realm, &user_id, update_id, expires_ms);
    let text = format!("{}\n", hex::encode(attestation.encode()));
    match &args.out {
        Some(path) => {
            std::fs::write(path, &text).map_err(|e| format!("--out: writing {}: {e}", path.display()))?;
            writeln!(
                out,
                "attested the registration of {user_id:?} by update {} until {} in {}",
                hex::encode(update_id),
                keyraft_core::human::utc(expires_ms),
                path.display()
            )?;
        }
        None => out.write_all(text.as_bytes())?,
    }
    Ok(())
}
