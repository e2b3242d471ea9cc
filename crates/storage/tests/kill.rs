//! A process killed (`SIGKILL`) while writing: each engine comes back with every batch it had
//! flushed and, past those, only whole batches (the crate's contract, on a real engine and a
//! real crash rather than `MemoryStorage::crash`). The writer is this test binary itself, run
//! again as a child (`writer`, ignored in ordinary runs).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_storage::{Batch, RedbStorage, SledStorage, Storage};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};

const CHILD_ENV: &str = "KEYRAFT_KILL_TEST_WRITER";
const KEYS_PER_BATCH: u64 = 8;
const LAST: &[u8] = b"last";

fn open(engine: &str, dir: &Path) -> Box<dyn Storage> {
    match engine {
        "sled" => Box::new(SledStorage::open(dir).unwrap()),
        "redb" => Box::new(RedbStorage::open(dir).unwrap()),
        other => panic!("unknown engine {other}"),
    }
}

fn key(batch: u64, j: u64) -> Vec<u8> {
    format!("b/{batch:010}/{j:02}").into_bytes()
}

/// Values of every size class: small, and large enough for sled's value log.
fn value(batch: u64, j: u64) -> Vec<u8> {
    let len = if j == 0 { 6_000 } else { 40 + (batch % 7) as usize };
    vec![(batch.wrapping_mul(31) + j) as u8; len]
}

fn last(store: &dyn Storage) -> Option<u64> {
    store.get(LAST).unwrap().map(|v| u64::from_be_bytes(v.try_into().expect("8 bytes")))
}

/// The child: writes batches after the last one found, flushing every fourth and saying so,
/// until it is killed.
#[test]
#[ignore = "the writer the kill tests start as a child process"]
fn writer() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let (engine, dir) = spec.split_once(':').expect("engine:dir");
    let store = open(engine, Path::new(dir));
    let first = last(store.as_ref()).map_or(0, |l| l + 1);
    let mut out = std::io::stdout().lock();
    for batch in first.. {
        let mut b = Batch::new();
        for j in 0..KEYS_PER_BATCH {
            b.put(key(batch, j), value(batch, j));
        }
        // Deleting the previous batch's small keys too: deletions must be whole as well.
        if batch > 0 {
            b.delete(key(batch - 1, KEYS_PER_BATCH - 1));
        }
        b.put(LAST.to_vec(), batch.to_be_bytes().to_vec());
        store.write(b).unwrap();
        if batch % 4 == 3 {
            store.flush().unwrap();
            writeln!(out, "flushed {batch}").unwrap();
            out.flush().unwrap();
        }
    }
}

/// What a store must hold once batches `0..=last` were applied.
fn check(store: &dyn Storage, engine: &str, flushed: u64) -> u64 {
    let last = last(store).unwrap_or_else(|| panic!("{engine}: nothing survived, {flushed} flushed"));
    assert!(last >= flushed, "{engine}: batch {flushed} was flushed, only {last} survived");
    let keys: Vec<_> = store.scan_prefix(b"b/").map(|r| r.unwrap()).collect();
    let mut want = Vec::new();
    for batch in 0..=last {
        for j in 0..KEYS_PER_BATCH {
            if j == KEYS_PER_BATCH - 1 && batch < last {
                continue;
            }
            want.push((key(batch, j), value(batch, j)));
        }
    }
    assert_eq!(keys.len(), want.len(), "{engine}: not the keys of batches 0..={last} exactly");
    assert!(keys == want, "{engine}: a value differs from what batches 0..={last} wrote");
    last
}

fn killed_writers_lose_only_unflushed_whole_batches(engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut previous = None;
    // Killed early, later, and once right after a flush (the next batch not written yet).
    for want in [8u64, 60, 200] {
        let mut child = Command::new(&exe)
            .args(["--ignored", "--exact", "writer", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, format!("{engine}:{}", dir.path().display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut flushed = 0;
        // Kept open until the kill: a writer must not meet a closed pipe and exit on its own.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("flushed ") {
                flushed = n.parse().unwrap();
                if flushed >= previous.unwrap_or(0) + want {
                    break;
                }
            }
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        drop(lines);
        assert!(flushed > 0, "{engine}: the writer ended ({status}) before flushing anything");
        let store = open(engine, dir.path());
        previous = Some(check(store.as_ref(), engine, flushed));
    }
}

#[test]
fn sled_killed_writers_lose_only_unflushed_whole_batches() {
    killed_writers_lose_only_unflushed_whole_batches("sled");
}

#[test]
fn redb_killed_writers_lose_only_unflushed_whole_batches() {
    killed_writers_lose_only_unflushed_whole_batches("redb");
}
