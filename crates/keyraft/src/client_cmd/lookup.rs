//! `keyraft lookup`: an identity's verified value, today or at a past epoch.

use super::{client, runtime, CmdResult, RealmArgs};
use crate::json::Verification;
use keyraft_client::LookupOptions;
use std::io::Write;
use std::path::PathBuf;

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
