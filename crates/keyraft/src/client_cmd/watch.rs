//! `keyraft watch`: an identity's current value, then every change and heartbeat, verified.

use super::{client, runtime, CmdResult, RealmArgs};
use crate::json::Verification;
use keyraft_client::WatchUpdate;
use keyraft_core::human;
use std::io::Write;

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

/// `keyraft watch`: the current value, then every change and heartbeat, all verified.
pub fn watch(args: &WatchArgs, out: &mut dyn Write) -> CmdResult {
    let rt = runtime()?;
    let _entered = rt.enter();
    let client = client(&args.realm)?;
    rt.block_on(async {
        let mut watch = client.watch(&args.user, args.from_epoch).await?;
        let mut seen = 0u64;
        // A watch from an epoch first replays the changes after it: statements about their
        // epochs, until the first heartbeat brings the watch up to date.
        let mut replaying = args.from_epoch > 0;
        // The recovery pending as of the last event, to say how it ended.
        let mut pending: Option<keyraft_core::recovery::PendingRecovery> = None;
        while args.count.is_none_or(|n| seen < n) {
            let Some(event) = watch.next().await else {
                writeln!(out, "the replica ended the watch")?;
                break;
            };
            match event? {
                WatchUpdate::Changed(answer) => {
                    let verification = if replaying { Verification::Historical } else { Verification::Current };
                    let l = &answer.lookup;
                    // A recovery that was pending and is no more: it took effect, or its
                    // owner vetoed it.
                    if let (Some(before), None) = (&pending, &l.pending_recovery) {
                        let now = l.entry.as_ref().map(|(e, _)| e);
                        if now == Some(&before.signed.entry) {
                            writeln!(
                                out,
                                "RECOVERY COMPLETED: the recovery of {:?} requested in epoch {} took effect in epoch {}",
                                l.user_id,
                                before.requested_epoch,
                                l.epoch()
                            )?;
                        } else {
                            writeln!(
                                out,
                                "RECOVERY CANCELLED: the recovery of {:?} requested in epoch {} was vetoed in epoch {}",
                                l.user_id,
                                before.requested_epoch,
                                l.epoch()
                            )?;
                        }
                    }
                    pending = l.pending_recovery.clone();
                    write!(out, "CHANGED ")?;
                    crate::answer::print_lookup(out, &answer, verification, keyraft_client::now_ms())?;
                }
                WatchUpdate::Unchanged(answer) => {
                    replaying = false;
                    let l = &answer.lookup;
                    let version =
                        l.entry.as_ref().map_or("not registered".to_owned(), |(e, _)| format!("version {}", e.version));
                    let recovery = if l.pending_recovery.is_some() { ", RECOVERY PENDING" } else { "" };
                    writeln!(
                        out,
                        "unchanged in epoch {} (head issued {}, {version}{recovery}, VERIFIED)",
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
