//! Verified answers as `lookup` and `history` print them for people: what was verified and
//! how (today's value or a statement about a past epoch), the quorum, the policy with its
//! threshold, the head's time, the replica that answered, and whether newer epochs exist
//! than the newest the client's quorum ratified.

use crate::client_cmd::count;
use crate::json::Verification;
use keyraft_client::{HistoryVersion, LookupAnswer};
use keyraft_core::human;
use keyraft_core::policy::{Quorum, QuorumMember};
use keyraft_core::Policy;
use std::io::Write;

/// A policy's threshold in words: "1 of 1 key", "2 of 3 keys"; a nested expression names the
/// keys by position: "2 of: key 1, (1 of: key 2, key 3)".
pub fn policy_text(p: &Policy) -> String {
    quorum_text(p.quorum(), p.keys().len(), true)
}

fn quorum_text(q: &Quorum, keys: usize, top: bool) -> String {
    let flat = q.members.iter().all(|m| matches!(m, QuorumMember::Key(_)));
    if top && flat && q.members.len() == keys {
        return format!("{} of {}", q.threshold, count(keys as u64, "key"));
    }
    let members: Vec<String> = q
        .members
        .iter()
        .map(|m| match m {
            QuorumMember::Key(position) => format!("key {}", u32::from(*position) + 1),
            QuorumMember::Quorum(nested) => format!("({})", quorum_text(nested, keys, false)),
        })
        .collect();
    format!("{} of: {}", q.threshold, members.join(", "))
}

/// The line saying that the answer's epoch is the newest the client's quorum ratified while
/// the replica says newer ones exist (the verifiers the client requires lag).
pub fn behind_line(a: &LookupAnswer) -> Option<String> {
    let newest = a.newer_epochs_hint()?;
    Some(format!(
        "BEHIND: newest ratified epoch with your quorum is {}; epochs up to {newest} exist (the replica's unsigned hint: the verifiers you require have not ratified the newer ones yet)",
        a.lookup.epoch()
    ))
}

/// `lookup`'s answer.
pub fn print_lookup(
    out: &mut dyn Write,
    a: &LookupAnswer,
    verification: Verification,
    now_ms: u64,
) -> std::io::Result<()> {
    let l = &a.lookup;
    if verification == Verification::Historical {
        writeln!(out, "HISTORICAL: what {:?} was in epoch {}, nothing about today", l.user_id, l.epoch())?;
    }
    match &l.entry {
        None => writeln!(out, "{:?} is not registered (epoch {}, VERIFIED)", l.user_id, l.epoch())?,
        Some((entry, profile)) => {
            writeln!(out, "{:?}: version {} in epoch {} (VERIFIED)", l.user_id, entry.version, l.epoch())?;
            print_profile(out, profile)?;
            writeln!(out, "  policy {}", policy_text(&entry.update_policy))?;
        }
    }
    if let Some(p) = &l.pending_recovery {
        writeln!(out, "{}", recovery_pending_line(&l.user_id, p, now_ms))?;
    }
    writeln!(out, "  index {}", hex::encode(l.index.0))?;
    writeln!(out, "  ratified by a replica majority and {}", count(l.ratified_by.len() as u64, "verifier"))?;
    writeln!(out, "  head issued at {}", human::time_and_age(l.head.issue_time_ms, now_ms))?;
    if let Some(endpoint) = &a.endpoint {
        writeln!(out, "  answered by {endpoint}")?;
    }
    if verification == Verification::Current {
        if let Some(line) = behind_line(a) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// The line an owner's device alerts on: someone asked to recover the identity, and unless
/// its owner vetoes, the new keys take over at the effective time.
pub fn recovery_pending_line(user_id: &str, p: &keyraft_core::recovery::PendingRecovery, now_ms: u64) -> String {
    let policy = &p.signed.entry.update_policy;
    let keys: Vec<String> = policy.keys().iter().map(|k| hex::encode(k.as_bytes())).collect();
    format!(
        "RECOVERY PENDING: a recovery of {user_id:?} to version {} with policy {} ({}) was requested in epoch {}; \
         it takes effect at {} unless the owner vetoes it (`keyraft veto {user_id} --key <current key>`)",
        p.signed.entry.version,
        policy_text(policy),
        keys.join(", "),
        p.requested_epoch,
        human::time_and_age(p.effective_ms, now_ms),
    )
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

/// The line opening `history`'s output: each version is a statement about its own epoch.
pub fn history_heading(user_id: &str) -> String {
    format!("HISTORICAL: what {user_id:?} was at each version's epoch, nothing about today")
}

/// One version of `history`.
pub fn print_history_version(out: &mut dyn Write, v: &HistoryVersion, now_ms: u64) -> std::io::Result<()> {
    let l = &v.answer.lookup;
    let verifiers = count(l.ratified_by.len() as u64, "verifier");
    // A version whose epoch lacks the client's verifier quorum is listed so that the history
    // has no gap; say plainly that it is proven by the replicas alone.
    let quorum = if v.meets_threshold { String::new() } else { ", fewer verifiers than you require".to_owned() };
    writeln!(
        out,
        "version {} in epoch {} (head issued at {}, ratified by a replica majority and {verifiers}{quorum}, VERIFIED)",
        v.version,
        l.epoch(),
        human::time_and_age(l.head.issue_time_ms, now_ms),
    )?;
    if let Some((entry, profile)) = &l.entry {
        let keys: Vec<String> = entry.update_policy.keys().iter().map(|k| hex::encode(k.as_bytes())).collect();
        writeln!(out, "  policy {}: {}", policy_text(&entry.update_policy), keys.join(", "))?;
        print_profile(out, profile)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyraft_core::PublicKey;

    fn key(seed: u8) -> PublicKey {
        keyraft_client::public_key(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }

    #[test]
    fn policies_state_their_threshold() {
        assert_eq!(policy_text(&Policy::single(key(1))), "1 of 1 key");
        let shared = Policy::threshold(2, vec![key(1), key(2), key(3)]).unwrap();
        assert_eq!(policy_text(&shared), "2 of 3 keys");
        let nested = Quorum {
            threshold: 2,
            members: vec![
                QuorumMember::Key(0),
                QuorumMember::Quorum(Quorum {
                    threshold: 1,
                    members: vec![QuorumMember::Key(1), QuorumMember::Key(2)],
                }),
            ],
        };
        let p = Policy::new(vec![key(1), key(2), key(3)], nested).unwrap();
        assert_eq!(policy_text(&p), "2 of: key 1, (1 of: key 2, key 3)");
    }
}
