//! `keyraft verify-proof`: a saved lookup proof checked offline, with the realm file only.

use super::{count, load_realm, state_file, CmdResult};
use keyraft_client::{ClientError, ClientOptions, ProofChecker};
use keyraft_core::decode_canonical;
use keyraft_core::human;
use keyraft_core::lookup::LookupProof;
use std::io::Write;
use std::path::PathBuf;

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
    if let Some(p) = &verified.pending_recovery {
        writeln!(out, "{}", crate::answer::recovery_pending_line(&user, p, now))?;
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

/// Why a saved proof was refused, and how to check what it does prove; any other error (the
/// state file, not the proof) as it is.
fn rejection(e: ClientError, epoch: u64) -> Box<dyn std::error::Error> {
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
        e => return e.into(),
    }
    .into()
}
