//! `keyraft status`: where an update is, as a replica reports it.

use super::{client, runtime, CmdResult, RealmArgs};
use keyraft_client::UpdateStatus;
use std::io::Write;

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
