//! `keyraft history`: every version of an identity, newest first, each verified at its epoch.

use super::{client, runtime, CmdResult, RealmArgs};
use std::io::Write;
use std::path::PathBuf;

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
    /// `version-V-epoch-E.proof` (for `keyraft verify-proof --past E`), and the first page's
    /// proof of the current version as `current-epoch-E.proof`.
    #[arg(long, value_name = "DIR")]
    pub save_proofs: Option<PathBuf>,
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
    let started_at_newest = token.is_empty();
    let mut previous: Option<keyraft_client::HistoryPage> = None;
    let mut pending = None;
    loop {
        let page = rt.block_on(client.history(&args.user, args.page_size, &token))?;
        // Pages followed with --all form one chain: a gap between two is misbehaviour too.
        if let Some(newer) = &previous {
            page.check_continues(newer, client.realm())?;
        }
        if let (Some(dir), Some(current)) = (&args.save_proofs, &page.current) {
            crate::history_out::save_current_proof(dir, current)?;
        }
        // A recovery waiting for its window is not a version yet, and its owner must see it.
        if let Some(p) = page.current.as_ref().and_then(|c| c.lookup.pending_recovery.as_ref()) {
            if !args.json {
                writeln!(out, "{}", crate::answer::recovery_pending_line(&args.user, p, now))?;
            }
            pending = Some(p.clone());
        }
        for v in &page.versions {
            if let Some(dir) = &args.save_proofs {
                crate::history_out::save_proof(dir, v.version, &v.answer)?;
            }
            if !args.json {
                if shown == 0 {
                    writeln!(out, "{}", crate::answer::history_heading(&args.user))?;
                }
                crate::answer::print_history_version(out, v, now)?;
            }
            shown += 1;
        }
        if !endpoints.contains(&page.endpoint) {
            endpoints.push(page.endpoint.clone());
        }
        token = page.next_page_token.clone();
        if args.json {
            listed.extend(page.versions.iter().cloned());
        }
        previous = Some(page);
        if token.is_empty() || !args.all {
            break;
        }
    }
    // Checked from the newest version to the first (each page within, and each link between
    // pages): under protocol version 2 that proves no version was left out.
    let complete = started_at_newest && token.is_empty() && client.realm().config.protocol_version() >= 2;
    if args.json {
        let json = crate::json::history(&args.user, &listed, pending.as_ref(), &token, complete, client.realm())?;
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        return Ok(());
    }
    Ok(crate::history_out::finish(out, args, shown, &token, complete, &endpoints)?)
}
