//! The client-observed history of a run and its check against the model of an identity
//! (issue 17 part 4): what clients were told (acknowledgements) and what they then saw
//! (verified lookups and histories), checked per identity.
//!
//! The model, per identity: versions form one chain (0 at registration, each update one
//! more), and an update acknowledged in epoch `E` is in every epoch from `E` on and in none
//! before. So:
//!
//! - **at its epoch and later**: an answer from an epoch `e >= E` shows the acknowledged
//!   version or a newer one, and if it shows that version number, the acknowledged update's
//!   content (its tag); an answer from `e < E` shows an older version.
//! - **never back for a client**: one client's answers about one identity, in the order it got
//!   them, never show an older version than one it saw before (acknowledged with the proof of
//!   its epoch, or looked up), and its fresh lookups never answer from an older epoch than one
//!   it saw before.
//! - **after ratification**: a fresh lookup that starts after an acknowledgement proved its
//!   epoch ratified answers from that epoch or a newer one (the chaos clients ask for it by
//!   passing the newest ratified epoch they know of as `min_epoch`, as a client that was told
//!   of an epoch does; a replica that lags must wait or refer the client elsewhere).
//! - **in its history**: every replica's verified history of the identity lists the
//!   acknowledged version at the epoch it was acknowledged in, with its content.
//! - **no false accusation**: an honest realm never makes a client say the server misbehaved.
//!
//! The checker only reads the recorded events, so a unit test can feed it a history with a
//! lost update or a version going back and see it say so.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What a client saw of an identity: its version and the tag of the update that wrote it
/// (the chaos clients put a unique tag in every profile they publish).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub version: u64,
    pub tag: String,
}

/// How an answer was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Today's value; `min_epoch` is what the client passed (the newest epoch it knew was
    /// ratified), `None` if it relied on its own memory of epochs seen.
    Fresh { min_epoch: Option<u64> },
    /// The value in a given past epoch.
    AtEpoch,
}

/// One event of the history. Times are milliseconds since the run started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An update the realm acknowledged: `version` with `tag`, in `epoch`. `ratified`: the
    /// client got the verified proof of that epoch with the acknowledgement (it waited for
    /// its quorum); otherwise the realm said only "accepted in `epoch`".
    Ack {
        client: String,
        user: String,
        version: u64,
        tag: String,
        epoch: u64,
        ratified: bool,
        invoked: u64,
        completed: u64,
    },
    /// A verified lookup's answer (`seen: None`: the identity is absent in that epoch).
    Lookup { client: String, user: String, read: Read, epoch: u64, seen: Option<Seen>, invoked: u64, completed: u64 },
    /// A verified history of `user` from `replica`: every version with the epoch it appeared in.
    History { client: String, user: String, replica: String, versions: Vec<(u64, u64, String)> },
    /// A call that failed; `accusation` when the client said the server misbehaved.
    Failed { client: String, user: String, what: String, error: String, accusation: bool, invoked: u64, completed: u64 },
}

impl Event {
    fn client(&self) -> &str {
        match self {
            Self::Ack { client, .. }
            | Self::Lookup { client, .. }
            | Self::History { client, .. }
            | Self::Failed { client, .. } => client,
        }
    }

    fn completed(&self) -> u64 {
        match self {
            Self::Ack { completed, .. } | Self::Lookup { completed, .. } | Self::Failed { completed, .. } => *completed,
            Self::History { .. } => u64::MAX,
        }
    }
}

/// What kind of rule a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// An acknowledged update missing where it must be (an answer, a history): lost.
    Lost,
    /// An answer showing another update than the acknowledged one under its version, or an
    /// update visible before the epoch it was acknowledged in.
    Conflict,
    /// A client saw a version or an epoch older than one it had seen.
    WentBack,
    /// A fresh lookup that started after an epoch was ratified answered from an older one.
    StaleRead,
    /// A client said the server misbehaved.
    Accusation,
}

/// One broken rule, with what shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: Kind,
    pub user: String,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}: {}", self.kind, self.user, self.what)
    }
}

/// The verdict on a history.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Acknowledged updates.
    pub acked: usize,
    /// Verified answers checked (lookups and history listings).
    pub answers: usize,
    /// Acknowledged updates found missing somewhere they must be.
    pub lost: usize,
    pub violations: Vec<Violation>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.lost == 0
    }
}

#[derive(Debug)]
struct Ack<'a> {
    id: usize,
    version: u64,
    tag: &'a str,
    epoch: u64,
    ratified: bool,
    completed: u64,
}

/// Checks `events` against the model (module documentation).
pub fn check(events: &[Event]) -> Verdict {
    let mut verdict = Verdict::default();
    let mut acks: BTreeMap<&str, Vec<Ack<'_>>> = BTreeMap::new();
    for e in events {
        if let Event::Ack { user, version, tag, epoch, ratified, completed, .. } = e {
            let id = verdict.acked;
            verdict.acked += 1;
            acks.entry(user).or_default().push(Ack {
                id,
                version: *version,
                tag,
                epoch: *epoch,
                ratified: *ratified,
                completed: *completed,
            });
        }
    }
    // Acknowledged versions must differ: two acknowledgements of one version with different
    // content mean the chain forked (the same update acknowledged twice is a duplicate).
    for (user, list) in &acks {
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                if a.version == b.version && (a.tag != b.tag || a.epoch != b.epoch) {
                    verdict.violations.push(Violation {
                        kind: Kind::Conflict,
                        user: (*user).to_owned(),
                        what: format!(
                            "version {} acknowledged twice: {} in epoch {} and {} in epoch {}",
                            a.version, a.tag, a.epoch, b.tag, b.epoch
                        ),
                    });
                }
            }
        }
    }
    let mut lost: BTreeSet<usize> = BTreeSet::new();
    for e in events {
        match e {
            Event::Lookup { user, read, epoch, seen, invoked, .. } => {
                verdict.answers += 1;
                let user_acks = acks.get(user.as_str()).map_or(&[][..], Vec::as_slice);
                check_answer(user, *epoch, seen.as_ref(), user_acks, &mut verdict.violations, &mut lost);
                if let Read::Fresh { min_epoch } = read {
                    check_fresh(user, *epoch, *min_epoch, *invoked, &acks, &mut verdict.violations);
                }
            }
            Event::History { user, replica, versions, .. } => {
                verdict.answers += versions.len();
                let user_acks = acks.get(user.as_str()).map_or(&[][..], Vec::as_slice);
                check_history(user, replica, versions, user_acks, &mut verdict.violations, &mut lost);
            }
            Event::Failed { user, what, error, accusation: true, .. } => verdict.violations.push(Violation {
                kind: Kind::Accusation,
                user: user.clone(),
                what: format!("{what}: {error}"),
            }),
            Event::Ack { .. } | Event::Failed { .. } => {}
        }
    }
    check_sessions(events, &mut verdict.violations);
    verdict.lost = lost.len();
    verdict
}

/// An answer from `epoch` against the acknowledgements of its identity.
fn check_answer(
    user: &str,
    epoch: u64,
    seen: Option<&Seen>,
    acks: &[Ack<'_>],
    violations: &mut Vec<Violation>,
    lost: &mut BTreeSet<usize>,
) {
    let shown = || seen.map_or("no entry".to_owned(), |s| format!("version {} ({})", s.version, s.tag));
    for a in acks {
        let v = |kind, what: String| Violation { kind, user: user.to_owned(), what };
        if a.epoch <= epoch {
            match seen {
                Some(s) if s.version > a.version => {}
                Some(s) if s.version == a.version && s.tag == a.tag => {}
                Some(s) if s.version == a.version => violations.push(v(
                    Kind::Conflict,
                    format!(
                        "epoch {epoch} shows {} under version {}, acknowledged as {} in epoch {}",
                        s.tag, a.version, a.tag, a.epoch
                    ),
                )),
                _ => {
                    lost.insert(a.id);
                    violations.push(v(
                        Kind::Lost,
                        format!(
                            "version {} ({}) acknowledged in epoch {}, but epoch {epoch} shows {}",
                            a.version,
                            a.tag,
                            a.epoch,
                            shown()
                        ),
                    ));
                }
            }
        } else if seen.is_some_and(|s| s.version >= a.version) {
            violations.push(v(
                Kind::Conflict,
                format!(
                    "epoch {epoch} shows {}, yet version {} ({}) was acknowledged only in the later epoch {}",
                    shown(),
                    a.version,
                    a.tag,
                    a.epoch
                ),
            ));
        }
    }
}

/// A fresh answer from `epoch` that started at `invoked`: not older than what it asked for,
/// nor than any epoch an acknowledgement proved ratified before it started (if it asked for
/// the newest ratified epoch it knew of).
fn check_fresh(
    user: &str,
    epoch: u64,
    min_epoch: Option<u64>,
    invoked: u64,
    acks: &BTreeMap<&str, Vec<Ack<'_>>>,
    violations: &mut Vec<Violation>,
) {
    let Some(min_epoch) = min_epoch else { return };
    if epoch < min_epoch {
        violations.push(Violation {
            kind: Kind::StaleRead,
            user: user.to_owned(),
            what: format!("a lookup asking for epoch {min_epoch} or newer answered from epoch {epoch}"),
        });
    }
    let ratified_before = acks
        .values()
        .flatten()
        .filter(|a| a.ratified && a.completed < invoked)
        .max_by_key(|a| a.epoch)
        .filter(|a| a.epoch > epoch);
    if let Some(a) = ratified_before {
        violations.push(Violation {
            kind: Kind::StaleRead,
            user: user.to_owned(),
            what: format!(
                "a lookup started at {invoked} ms answered from epoch {epoch}, but epoch {} was proven ratified at {} ms",
                a.epoch, a.completed
            ),
        });
    }
}

/// A verified history from `replica` against the acknowledgements of its identity.
fn check_history(
    user: &str,
    replica: &str,
    versions: &[(u64, u64, String)],
    acks: &[Ack<'_>],
    violations: &mut Vec<Violation>,
    lost: &mut BTreeSet<usize>,
) {
    for a in acks {
        let listed = versions.iter().find(|(v, _, _)| *v == a.version);
        let what = match listed {
            Some((_, epoch, tag)) if *epoch == a.epoch && tag == a.tag => continue,
            Some((_, epoch, tag)) => {
                violations.push(Violation {
                    kind: Kind::Conflict,
                    user: user.to_owned(),
                    what: format!(
                        "{replica}'s history lists version {} as {tag} in epoch {epoch}, acknowledged as {} in epoch {}",
                        a.version, a.tag, a.epoch
                    ),
                });
                continue;
            }
            None => format!(
                "{replica}'s history lacks version {} ({}), acknowledged in epoch {}",
                a.version, a.tag, a.epoch
            ),
        };
        lost.insert(a.id);
        violations.push(Violation { kind: Kind::Lost, user: user.to_owned(), what });
    }
}

/// Per client, in the order it got its answers: versions per identity and fresh epochs never
/// go back.
fn check_sessions(events: &[Event], violations: &mut Vec<Violation>) {
    let mut order: Vec<&Event> = events.iter().filter(|e| !matches!(e, Event::History { .. })).collect();
    order.sort_by_key(|e| e.completed());
    let mut newest_version: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut newest_epoch: BTreeMap<&str, u64> = BTreeMap::new();
    for e in order {
        let (user, version, fresh_epoch) = match e {
            // Only an acknowledgement with its proof shows the client the version: one only
            // "accepted in epoch E" is in an epoch not ratified yet, and until it is, lookups
            // answer from older epochs (found by the chaos run, a false violation at first).
            Event::Ack { user, version, ratified: true, .. } => (user, Some(*version), None),
            // An answer about a past epoch may well be older than one seen before.
            Event::Lookup { user, read: Read::Fresh { .. }, epoch, seen, .. } => {
                (user, seen.as_ref().map(|s| s.version), Some(*epoch))
            }
            _ => continue,
        };
        let client = e.client();
        if let Some(version) = version {
            let newest = newest_version.entry((client, user)).or_insert(version);
            if version < *newest {
                violations.push(Violation {
                    kind: Kind::WentBack,
                    user: user.clone(),
                    what: format!("{client} saw version {version} after version {newest}"),
                });
            }
            *newest = (*newest).max(version);
        } else if let Some(newest) = newest_version.get(&(client, user.as_str())) {
            violations.push(Violation {
                kind: Kind::WentBack,
                user: user.clone(),
                what: format!("{client} saw no entry after version {newest}"),
            });
        }
        if let Some(epoch) = fresh_epoch {
            let newest = newest_epoch.entry(client).or_insert(epoch);
            if epoch < *newest {
                violations.push(Violation {
                    kind: Kind::WentBack,
                    user: user.clone(),
                    what: format!("{client}'s fresh lookup answered from epoch {epoch} after epoch {newest}"),
                });
            }
            *newest = (*newest).max(epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(client: &str, user: &str, version: u64, epoch: u64, at: u64) -> Event {
        Event::Ack {
            client: client.into(),
            user: user.into(),
            version,
            tag: format!("{user}#{version}"),
            epoch,
            ratified: true,
            invoked: at.saturating_sub(5),
            completed: at,
        }
    }

    fn lookup(client: &str, user: &str, read: Read, epoch: u64, version: Option<u64>, at: u64) -> Event {
        Event::Lookup {
            client: client.into(),
            user: user.into(),
            read,
            epoch,
            seen: version.map(|version| Seen { version, tag: format!("{user}#{version}") }),
            invoked: at,
            completed: at + 5,
        }
    }

    fn history(user: &str, versions: &[(u64, u64)]) -> Event {
        Event::History {
            client: "final".into(),
            user: user.into(),
            replica: "replica 1".into(),
            versions: versions.iter().map(|(v, e)| (*v, *e, format!("{user}#{v}"))).collect(),
        }
    }

    fn kinds(v: &Verdict) -> Vec<Kind> {
        v.violations.iter().map(|v| v.kind).collect()
    }

    const FRESH: Read = Read::Fresh { min_epoch: None };

    #[test]
    fn an_honest_history_passes() {
        let events = vec![
            ack("w1", "a", 0, 3, 100),
            ack("w1", "a", 1, 5, 200),
            lookup("r1", "a", Read::Fresh { min_epoch: Some(5) }, 6, Some(1), 300),
            lookup("r2", "a", Read::AtEpoch, 4, Some(0), 310),
            lookup("r2", "a", Read::AtEpoch, 2, None, 320),
            history("a", &[(1, 5), (0, 3)]),
        ];
        let v = check(&events);
        assert!(v.ok(), "{:?}", v.violations);
        assert_eq!((v.acked, v.answers, v.lost), (2, 5, 0));
    }

    #[test]
    fn a_lost_update_is_reported_from_a_lookup_and_from_a_history() {
        let events = vec![
            ack("w1", "a", 0, 3, 100),
            ack("w1", "a", 1, 5, 200),
            // Epoch 7 shows version 0: version 1, acknowledged in epoch 5, is gone.
            lookup("final", "a", Read::AtEpoch, 7, Some(0), 900),
            history("a", &[(0, 3)]),
        ];
        let v = check(&events);
        assert_eq!(v.lost, 1, "{:?}", v.violations);
        assert_eq!(kinds(&v), [Kind::Lost, Kind::Lost]);
        // A registration that vanished entirely.
        let v = check(&[ack("w1", "b", 0, 3, 100), lookup("final", "b", Read::AtEpoch, 3, None, 900)]);
        assert_eq!((v.lost, kinds(&v)), (1, vec![Kind::Lost]));
    }

    #[test]
    fn a_version_going_back_for_a_client_is_reported() {
        let events = vec![
            ack("w1", "a", 0, 3, 100),
            ack("w1", "a", 1, 5, 200),
            lookup("r1", "a", FRESH, 6, Some(1), 300),
            // Answered from an older epoch, it is consistent with the acknowledgements at
            // that epoch, but r1 had already seen version 1 (and epoch 6).
            lookup("r1", "a", FRESH, 4, Some(0), 400),
        ];
        let v = check(&events);
        assert_eq!(v.lost, 0);
        assert_eq!(kinds(&v), [Kind::WentBack, Kind::WentBack], "{:?}", v.violations);
    }

    #[test]
    fn an_update_accepted_in_an_epoch_not_ratified_yet_is_not_seen_by_older_epochs() {
        let mut accepted = ack("w1", "a", 1, 5, 200);
        if let Event::Ack { ratified, .. } = &mut accepted {
            *ratified = false;
        }
        let events = vec![
            ack("w1", "a", 0, 3, 100),
            accepted,
            // Epoch 5 is not ratified yet: the newest answer is from epoch 4.
            lookup("w1", "a", FRESH, 4, Some(0), 300),
            lookup("w1", "a", FRESH, 5, Some(1), 400),
        ];
        let v = check(&events);
        assert!(v.ok(), "{:?}", v.violations);
        // Once shown, version 1 may not go back.
        let mut events = events;
        events.push(lookup("w1", "a", FRESH, 4, Some(0), 500));
        assert_eq!(kinds(&check(&events)), [Kind::WentBack, Kind::WentBack]);
    }

    #[test]
    fn a_stale_read_after_ratification_is_reported() {
        // Epoch 5 was proven ratified at 200 ms; a fresh lookup starting at 300 ms asked for it
        // but got epoch 4.
        let events = vec![
            ack("w1", "a", 0, 3, 100),
            ack("w1", "a", 1, 5, 200),
            lookup("r1", "a", Read::Fresh { min_epoch: Some(5) }, 4, Some(0), 300),
        ];
        let v = check(&events);
        assert_eq!(kinds(&v), [Kind::StaleRead, Kind::StaleRead], "{:?}", v.violations);
        // Before the acknowledgement completed, epoch 4 was a fine answer.
        let events =
            vec![ack("w1", "a", 0, 3, 100), lookup("r1", "a", Read::Fresh { min_epoch: Some(3) }, 4, Some(0), 150)];
        assert!(check(&events).ok());
    }

    #[test]
    fn another_update_under_an_acknowledged_version_or_one_visible_too_early_is_a_conflict() {
        let mut other = lookup("r1", "a", Read::AtEpoch, 6, Some(1), 300);
        if let Event::Lookup { seen: Some(s), .. } = &mut other {
            s.tag = "someone else".into();
        }
        let v = check(&[ack("w1", "a", 0, 3, 100), ack("w1", "a", 1, 5, 200), other]);
        assert_eq!(kinds(&v), [Kind::Conflict]);
        let early = lookup("r1", "a", Read::AtEpoch, 4, Some(1), 300);
        let v = check(&[ack("w1", "a", 0, 3, 100), ack("w1", "a", 1, 5, 200), early]);
        assert_eq!(kinds(&v), [Kind::Conflict]);
        let v = check(&[ack("w1", "a", 0, 3, 100), history("a", &[(0, 4)])]);
        assert_eq!(kinds(&v), [Kind::Conflict]);
    }

    #[test]
    fn an_accusation_is_a_violation_and_other_failures_are_not() {
        let failed = |accusation| Event::Failed {
            client: "w1".into(),
            user: "a".into(),
            what: "history".into(),
            error: "the server misbehaved: ...".into(),
            accusation,
            invoked: 1,
            completed: 2,
        };
        assert_eq!(kinds(&check(&[failed(true)])), [Kind::Accusation]);
        assert!(check(&[failed(false)]).ok());
    }
}
