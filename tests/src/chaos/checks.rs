//! The chaos run's faults on disks, its recovery wait, and its checks at the end.

use super::{failure_kind, seen, Report, Run};
use crate::disk::{copy_dir, Disk, DiskKind};
use crate::linearizability::{check, Event, Read};
use crate::{data_dir, edit_config, Realm, DEADLINE};
use keyraft_client::{ClientError, LookupOptions};
use keyraft_core::lookup::{head_signing_message, ratification_message};
use keyraft_core::{EpochHead, Signature};
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::{EpochInfo, GetEpochRequest, ListEpochsRequest};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Log lines that must never appear on an honest realm whose disks work: panics, the
/// verifier's alarm and halt, a replica or verifier seeing a diverged history, refused log
/// commands, a peer impersonating another. "the Raft core stopped" is expected once per
/// failed disk, and checked apart.
pub(crate) const ALARMS: &[&str] = &[
    "panicked",
    "ALARM",
    "ratification is halted",
    "diverged",
    "refusing an undecodable log command",
    "beyond the per-entry limit",
    "in another node's name refused",
    "head from the future",
];

const RAFT_STOPPED: &str = "the Raft core stopped";

/// At most this many problems of one kind are listed (the count says how many more).
const PROBLEMS_LISTED: usize = 20;

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_size(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

fn log_path(realm: &Realm, name: &str) -> std::path::PathBuf {
    realm.path().join(format!("logs/{name}.log"))
}

impl Run {
    /// Moves replica `i` onto a disk of `kind` under load, makes the disk fail (full, or
    /// read-only), checks that the replica stops with a clear error while the others serve,
    /// gives the space back (or repairs the file system) and restarts the replica.
    pub(super) fn disk_fault(&mut self, kind: DiskKind, i: usize) {
        let id = self.realm.replicas[i].id;
        let config = self.realm.replicas[i].config.clone();
        let old = data_dir(&config);
        self.realm.kill(i);
        let used = dir_size(&old);
        // Room for the data and a little more: the filler takes the rest.
        let size = match kind {
            DiskKind::Tmpfs => used + (32 << 20),
            DiskKind::Ext4 => 2 * used + (128 << 20),
        };
        let mount_point = self.realm.path().join(format!("disks/node-{id}-{}", self.disks.len()));
        let disk = match Disk::mount(kind, &mount_point, size) {
            Ok(d) => d,
            Err(e) => {
                self.notes.push(format!("{kind:?} fault skipped (cannot mount here: {e})"));
                self.realm.start_replica(i);
                return;
            }
        };
        copy_dir(&old, &disk.data()).expect("copying the data directory");
        let data = disk.data().to_str().expect("UTF-8 path").to_owned();
        edit_config(&config, &|t: &mut toml::Table| {
            t.insert("data_dir".into(), data.clone().into());
        });
        self.realm.start_replica(i);
        let leader = self.leader();
        let applied = self.poll("the leader's status", |r| r.realm.status(leader)).applied_index;
        self.poll("the moved replica to catch up", |r| (r.realm.status(i)?.applied_index >= applied).then_some(()));
        let log_before = std::fs::metadata(log_path(&self.realm, &format!("node-{id}"))).map_or(0, |m| m.len());
        let (filler, expected) = match kind {
            DiskKind::Tmpfs => (Some(disk.fill()), "No space left on device"),
            DiskKind::Ext4 => {
                if let Err(e) = disk.fail_read_only() {
                    self.notes.push(format!("read-only fault skipped (cannot fail the disk here: {e})"));
                    self.disks.push(disk);
                    return;
                }
                (None, "Read-only file system")
            }
        };
        self.disk_stops[i] += 1;
        self.expect_disk_stop(i, expected, log_before);
        // The others serve meanwhile.
        let acks = self.rec.acks();
        self.poll("updates without the replica whose disk failed", |r| (r.rec.acks() >= acks + 3).then_some(()));
        let repaired = match &filler {
            Some(filler) => disk.free(filler, 4 * size),
            None => disk.repair(),
        };
        if let Err(e) = repaired {
            self.problems.push(format!("node {id}: giving the disk back failed: {e}"));
        }
        self.realm.start_replica(i);
        self.disks.push(disk);
    }

    /// Replica `i`'s disk failed: it must exit (not hang, not spin), saying why (`expected`,
    /// the OS error) without a flood of lines.
    fn expect_disk_stop(&mut self, i: usize, expected: &str, log_before: u64) {
        let id = self.realm.replicas[i].id;
        let deadline = Instant::now() + DEADLINE;
        let child = self.realm.replicas[i].child.as_mut().expect("running");
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if status.is_none() {
            self.problems
                .push(format!("node {id} still runs {} s after its disk failed ({expected})", DEADLINE.as_secs()));
            self.realm.kill(i);
        }
        self.realm.replicas[i].child = None;
        let log = std::fs::read(log_path(&self.realm, &format!("node-{id}"))).unwrap_or_default();
        let log = String::from_utf8_lossy(log.get(usize::try_from(log_before).unwrap_or(0)..).unwrap_or_default());
        let clear: Vec<&str> = log.lines().filter(|l| l.contains(RAFT_STOPPED) || l.starts_with("error")).collect();
        match clear.iter().find(|l| l.contains(expected)) {
            Some(line) => self.notes.push(format!(
                "node {id}'s disk failed ({expected}): exited with {}, {} log bytes after the failure; {}",
                status.map_or("no exit".into(), |s| s.to_string()),
                log.len(),
                line.chars().take(400).collect::<String>()
            )),
            None => self.problems.push(format!(
                "node {id}'s disk failed ({expected}) but its log says nothing clear about it; its error lines: {clear:?}"
            )),
        }
        if log.len() > 1 << 20 {
            self.problems.push(format!("node {id} logged {} bytes once its disk failed", log.len()));
        }
    }

    /// Polls until the realm is healthy again: a leader every replica agrees on, every replica
    /// and the verifier past a new epoch, and a new acknowledged update. The time it took.
    pub(super) fn wait_healthy(&mut self) -> Duration {
        let restarted = Instant::now();
        let acks = self.rec.acks();
        let leader = self.leader();
        let target = self.poll("the leader's status", |r| r.realm.status(leader)).last_epoch + 1;
        for i in 0..3 {
            self.poll(&format!("replica {} to ratify epoch {target}", i + 1), |r| {
                (r.realm.status(i)?.ratified_epoch >= target).then_some(())
            });
        }
        self.poll(&format!("the verifier to ratify epoch {target}"), |r| {
            r.verifier_position().filter(|(v, _)| *v >= target).map(drop)
        });
        self.poll("a new acknowledged update", |r| (r.rec.acks() > acks).then_some(()));
        restarted.elapsed()
    }

    /// Stops the load, lets the realm settle, checks everything, and reports.
    pub(super) fn finish(mut self, options: &super::Options) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            if let Err(e) = self.realm.runtime.block_on(task) {
                self.problems.push(format!("a client task failed: {e}"));
            }
        }
        let leader = self.leader();
        let target = self.poll("the leader's status", |r| r.realm.status(leader)).last_epoch + 1;
        for i in 0..3 {
            self.poll(&format!("replica {} to ratify epoch {target}", i + 1), |r| {
                (r.realm.status(i)?.ratified_epoch >= target).then_some(())
            });
        }
        self.poll("the verifier to ratify the last epoch", |r| {
            r.verifier_position().filter(|(v, _)| *v >= target).map(drop)
        });
        // Every replica signs the newest head once it runs: the last epoch gets all three.
        for i in 0..3 {
            self.poll(&format!("replica {} to hold every signature of epoch {target}", i + 1), |r| {
                (epoch_info(&r.realm, i, target)?.replica_signatures.len() == 3).then_some(())
            });
        }
        let [mid, after] = self.verifier_kills;
        if mid + after > 0 {
            self.notes.push(format!("verifier killed {mid} times during a catch-up, {after} times once caught up"));
        }
        let (problems, notes) = heads(&self.realm, target);
        self.problems.extend(problems);
        self.notes.extend(notes);
        for e in final_answers(&self.realm, &self.rec, target) {
            if let Event::Failed { user, what, error, accusation: false, .. } = &e {
                self.problems.push(format!("{what} of {user} failed on the settled realm: {error}"));
            }
            self.rec.push(e);
        }
        let problems = logs(&self.realm, self.disk_stops);
        self.problems.extend(problems);
        let events = self.rec.events();
        let mut failures: BTreeMap<String, usize> = BTreeMap::new();
        for e in &events {
            if let Event::Failed { error, .. } = e {
                let kind = error.rsplit_once('[').map_or("?", |(_, k)| k.trim_end_matches(']'));
                *failures.entry(kind.to_owned()).or_default() += 1;
            }
        }
        let mut acked_at: Vec<u64> = events
            .iter()
            .filter_map(|e| if let Event::Ack { completed, .. } = e { Some(*completed) } else { None })
            .collect();
        acked_at.sort_unstable();
        let longest_gap = acked_at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let verdict = check(&events);
        if !verdict.ok() || !self.problems.is_empty() {
            // The logs of a failed run stay for inspection (the disks' contents do not).
            let dir = std::mem::replace(&mut self.realm.dir, tempfile::tempdir().expect("tempdir"));
            self.notes.push(format!("logs kept in {}", dir.keep().display()));
        }
        Report {
            seed: options.seed,
            cycles: options.cycles,
            elapsed: self.rec.start.elapsed(),
            verdict,
            recovery: std::mem::take(&mut self.recovery),
            longest_gap: Duration::from_millis(longest_gap),
            epochs: target,
            failures,
            problems: std::mem::take(&mut self.problems),
            notes: std::mem::take(&mut self.notes),
        }
    }
}

/// Epoch `epoch` as replica `i` serves it.
fn epoch_info(realm: &Realm, i: usize, epoch: u64) -> Option<EpochInfo> {
    let _g = realm.runtime.enter();
    let mut c = KeyraftClient::new(realm.public_channel(i));
    realm.runtime.block_on(c.get_epoch(GetEpochRequest { epoch })).ok().map(tonic::Response::into_inner)
}

/// Every epoch replica `i` serves, with its signatures.
fn epochs(realm: &Realm, i: usize) -> Vec<EpochInfo> {
    let _g = realm.runtime.enter();
    let mut c = KeyraftClient::new(realm.public_channel(i)).max_decoding_message_size(64 << 20);
    let mut out = Vec::new();
    let mut token = Vec::new();
    loop {
        let request = ListEpochsRequest { start_epoch: 1, page_size: 1000, page_token: token };
        let page = realm.runtime.block_on(c.list_epochs(request)).expect("ListEpochs").into_inner();
        out.extend(page.epochs);
        token = page.next_page_token;
        if token.is_empty() {
            return out;
        }
    }
}

type Key = [u8; 32];

fn key(bytes: &[u8]) -> Option<Key> {
    bytes.try_into().ok()
}

/// Which of `keys` signed `message` in `signatures` (each signature must verify and be by one
/// of `keys`; `bad` collects those that are not).
fn signers(
    keys: &[Key],
    message: &[u8],
    signatures: &[keyraft_proto::pb::KeySignature],
    bad: &mut Vec<String>,
) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    for s in signatures {
        let position = key(&s.signer).and_then(|k| keys.iter().position(|x| *x == k));
        let signature = <[u8; 64]>::try_from(s.signature.as_slice()).ok().map(Signature);
        let valid =
            signature.zip(position).filter(|(sig, p)| keyraft_core::ed25519::verify(&keys[*p], message, sig).is_ok());
        match valid {
            Some((_, p)) => {
                out.insert(p);
            }
            None => bad.push(format!("a signature by {} that does not verify", hex::encode(&s.signer))),
        }
    }
    out
}

/// Heads byte-identical on every replica for epochs 1 to `last`, chained, each signed by a
/// replica majority and ratified by the verifier; the problems, and notes on who signed what.
fn heads(realm: &Realm, last: u64) -> (Vec<String>, Vec<String>) {
    let replica_keys: Vec<Key> =
        (1..=3).map(|id| key(&hex::decode(realm.replica_key_hex(id)).expect("hex")).expect("key")).collect();
    let verifier_keys: Vec<Key> =
        realm.realm_file().verifier_keys.iter().map(|k| key(&hex::decode(k).expect("hex")).expect("key")).collect();
    let lists: Vec<Vec<EpochInfo>> = (0..3).map(|i| epochs(realm, i)).collect();
    let mut problems = Vec::new();
    let mut signed = [[0usize; 3]; 3];
    let mut previous: Option<EpochHead> = None;
    for epoch in 1..=last {
        let infos: Vec<Option<&EpochInfo>> =
            lists.iter().map(|l| l.get(usize::try_from(epoch - 1).unwrap_or(usize::MAX))).collect();
        let Some(first) = infos[0] else {
            problems.push(format!("replica 1 lacks epoch {epoch}"));
            break;
        };
        for (i, info) in infos.iter().enumerate().skip(1) {
            if info.map(|x| &x.head) != Some(&first.head) {
                problems.push(format!("epoch {epoch}: replica {} serves another head than replica 1", i + 1));
            }
        }
        let head = match EpochHead::from_bytes(&first.head) {
            Ok(h) if h.epoch == epoch => h,
            other => {
                problems.push(format!("epoch {epoch}: replica 1 serves {other:?}"));
                break;
            }
        };
        let chained = previous.as_ref().map_or([0; 32], EpochHead::hash);
        if head.previous_head_hash != chained {
            problems.push(format!("epoch {epoch}: the head does not chain to epoch {}'s", epoch - 1));
        }
        for (i, info) in infos.iter().enumerate() {
            let Some(info) = info else { continue };
            let mut bad = Vec::new();
            let by = signers(&replica_keys, &head_signing_message(&head), &info.replica_signatures, &mut bad);
            let ratified = signers(&verifier_keys, &ratification_message(&head), &info.verifier_signatures, &mut bad);
            for p in &by {
                signed[i][*p] += 1;
            }
            if by.len() < 2 {
                problems.push(format!("epoch {epoch} on replica {}: signed by {} replicas only", i + 1, by.len()));
            }
            if ratified.len() < verifier_keys.len() {
                problems.push(format!("epoch {epoch} on replica {}: not ratified by every verifier", i + 1));
            }
            problems.extend(bad.into_iter().map(|b| format!("epoch {epoch} on replica {}: {b}", i + 1)));
        }
        previous = Some(head);
    }
    let shown = problems.len().min(PROBLEMS_LISTED);
    if problems.len() > shown {
        let more = problems.len() - shown;
        problems.truncate(shown);
        problems.push(format!("... and {more} more problems with heads and signatures"));
    }
    let notes = vec![format!(
        "epochs 1 to {last} identical on every replica, chained; heads signed by replicas 1, 2, 3 (as replica 1 holds them): {:?} of {last}",
        signed[0]
    )];
    (problems, notes)
}

/// Every acknowledged update checked on every replica with a client requiring the verifier
/// too: a verified lookup at each epoch an update of the identity was acknowledged in, a
/// verified history, and a fresh lookup of the newest epoch `last`.
fn final_answers(realm: &Realm, rec: &super::Recorder, last: u64) -> Vec<Event> {
    let epochs_of = std::sync::Arc::new(acked_epochs(rec));
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            let client = realm.client_requiring(i, realm.realm_file().verifier_keys.len());
            let reads = final_reads(client, format!("final-replica-{}", i + 1), epochs_of.clone(), rec.start, last);
            realm.runtime.spawn(reads)
        })
        .collect();
    tasks.into_iter().flat_map(|t| realm.runtime.block_on(t).expect("final checks")).collect()
}

/// The epochs each identity had an update acknowledged in.
pub(crate) fn acked_epochs(rec: &super::Recorder) -> BTreeMap<String, BTreeSet<u64>> {
    let mut epochs_of: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for e in rec.events() {
        if let Event::Ack { user, epoch, .. } = e {
            epochs_of.entry(user).or_default().insert(epoch);
        }
    }
    epochs_of
}

/// What `client` (named `name`) answers for every identity of `epochs_of`: a verified lookup
/// at each epoch an update of it was acknowledged in, a fresh lookup of at least epoch
/// `last`, and a verified history; as events timed from `start`.
pub(crate) async fn final_reads(
    client: keyraft_client::Client,
    name: String,
    epochs_of: std::sync::Arc<BTreeMap<String, BTreeSet<u64>>>,
    start: tokio::time::Instant,
    last: u64,
) -> Vec<Event> {
    let now = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut out = Vec::new();
    // On a settled realm every one of these must succeed: the run's report lists each
    // failure as a problem.
    let failed = |user: &str, what: &str, e: &ClientError, invoked| Event::Failed {
        client: name.clone(),
        user: user.to_owned(),
        what: format!("final {what}"),
        error: format!("{e} [{}]", failure_kind(e)),
        accusation: e.is_misbehavior(),
        invoked,
        completed: now(),
    };
    for (user, epochs) in epochs_of.iter() {
        let fresh = LookupOptions { epoch: 0, min_epoch: last, wait_ms: 3_000 };
        let reads = epochs
            .iter()
            .map(|e| (Read::AtEpoch, LookupOptions { epoch: *e, ..LookupOptions::default() }))
            .chain([(Read::Fresh { min_epoch: Some(last) }, fresh)]);
        for (read, options) in reads {
            let invoked = now();
            match client.lookup(user, options).await {
                Ok(a) => out.push(Event::Lookup {
                    client: name.clone(),
                    user: user.clone(),
                    read,
                    epoch: a.lookup.epoch(),
                    seen: seen(&a),
                    invoked,
                    completed: now(),
                }),
                Err(e) => out.push(failed(user, "lookup", &e, invoked)),
            }
        }
        let invoked = now();
        match client.full_history(user, 100).await {
            Ok(versions) => out.push(Event::History {
                client: name.clone(),
                user: user.clone(),
                replica: name.clone(),
                versions: versions
                    .iter()
                    .filter_map(|v| Some((v.version, v.answer.lookup.epoch(), seen(&v.answer)?.tag)))
                    .collect(),
            }),
            Err(e) => out.push(failed(user, "history", &e, invoked)),
        }
    }
    out
}

/// Alarms and panics in every process's log, "the Raft core stopped" more often than disks
/// failed under a replica, and a verifier's HALTED mark.
fn logs(realm: &Realm, disk_stops: [usize; 3]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names: Vec<(String, usize)> = (1..=3).map(|id| (format!("node-{id}"), disk_stops[id - 1])).collect();
    names.push(("verifier-1".into(), 0));
    for (name, stops) in names {
        let log = std::fs::read_to_string(log_path(realm, &name)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        // With the line after each (a panic's message follows its location).
        let alarms: Vec<String> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| ALARMS.iter().any(|a| l.contains(a)))
            .map(|(n, l)| format!("{l} | {}", lines.get(n + 1).unwrap_or(&"")))
            .collect();
        for line in alarms.iter().take(PROBLEMS_LISTED) {
            problems.push(format!("{name}.log: {}", line.chars().take(600).collect::<String>()));
        }
        if alarms.len() > PROBLEMS_LISTED {
            problems.push(format!("{name}.log: ... and {} more alarming lines", alarms.len() - PROBLEMS_LISTED));
        }
        let stopped = log.lines().filter(|l| l.contains(RAFT_STOPPED)).count();
        if stopped > stops {
            problems.push(format!("{name}.log: '{RAFT_STOPPED}' {stopped} times, with {stops} failed disks"));
        }
    }
    let halted = realm.path().join("data/verifier-1/HALTED");
    if let Ok(why) = std::fs::read_to_string(&halted) {
        problems.push(format!("the verifier halted: {why}"));
    }
    problems
}
