//! What `keyraft history` writes besides each version's lines: the proof files of
//! `--save-proofs` and the closing lines.

use crate::client_cmd::HistoryArgs;
use keyraft_client::LookupAnswer;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file `--save-proofs` writes a version's proof to: `version-V-epoch-E.proof`.
pub fn proof_file(dir: &Path, version: u64, answer: &LookupAnswer) -> PathBuf {
    dir.join(format!("version-{version}-epoch-{}.proof", answer.lookup.epoch()))
}

/// Writes a version's proof (its canonical bytes, as `keyraft verify-proof` reads them).
pub fn save_proof(dir: &Path, version: u64, answer: &LookupAnswer) -> Result<(), String> {
    write_proof(&proof_file(dir, version, answer), answer)
}

/// Writes the first page's proof of the current version, `current-epoch-E.proof`: with the
/// versions' proofs, what an independent checker needs to check the history complete
/// (docs/protocol.md section 8.1).
pub fn save_current_proof(dir: &Path, answer: &LookupAnswer) -> Result<(), String> {
    write_proof(&dir.join(format!("current-epoch-{}.proof", answer.lookup.epoch())), answer)
}

fn write_proof(path: &Path, answer: &LookupAnswer) -> Result<(), String> {
    std::fs::write(path, &answer.proof).map_err(|e| format!("--save-proofs: writing {}: {e}", path.display()))
}

/// The lines closing `history`'s text output, after the `shown` versions printed: the next
/// page, whether the listing was checked complete, the replicas that answered, the proofs
/// saved.
pub fn finish(
    out: &mut dyn Write,
    args: &HistoryArgs,
    shown: usize,
    next_page_token: &[u8],
    complete: bool,
    endpoints: &[String],
) -> std::io::Result<()> {
    if !next_page_token.is_empty() {
        writeln!(out, "more: --page-token {}", hex::encode(next_page_token))?;
    }
    if shown == 0 {
        writeln!(out, "{:?} has no versions in the ratified epochs", args.user)?;
    } else if complete {
        writeln!(out, "complete: every version from the newest to version 0, none left out (VERIFIED)")?;
    }
    writeln!(out, "answered by {}", endpoints.join(", "))?;
    if let Some(dir) = &args.save_proofs {
        writeln!(
            out,
            "{} saved in {} (with the first page, also the proof of the current version, current-epoch-E.proof; check one with `keyraft verify-proof --realm {} --past EPOCH FILE`)",
            crate::client_cmd::count(shown as u64, "proof"),
            dir.display(),
            args.realm.realm.display()
        )?;
    }
    Ok(())
}
