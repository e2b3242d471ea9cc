//! Both engines pass the same conformance suite; engine-specific crash and reopen behaviour.
#![allow(clippy::unwrap_used, missing_docs)]

use keyraft_storage::testing::run_conformance_suite;
use keyraft_storage::{
    check_format_version, dump_all, Batch, Direction, FormatOutcome, MemoryStorage, Migration, RedbOptions,
    RedbStorage, SledStorage, Storage, StorageError, VALUE_LOG_MIN_BYTES,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[test]
fn memory_conforms() {
    run_conformance_suite(MemoryStorage::new);
}

/// The conformance suite on a disk engine, each case in a fresh directory kept until the end.
fn disk_conforms<S: Storage>(open: impl Fn(&std::path::Path) -> S) {
    let dirs = std::sync::Mutex::new(Vec::new());
    run_conformance_suite(|| {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        dirs.lock().unwrap().push(dir);
        s
    });
}

#[test]
fn sled_conforms() {
    disk_conforms(|dir| SledStorage::open(dir).unwrap());
}

#[test]
fn redb_conforms() {
    disk_conforms(|dir| RedbStorage::open(dir).unwrap());
}

/// Commits made durable by the byte count behave as any other.
#[test]
fn redb_conforms_with_every_write_durable() {
    let options = RedbOptions { durable_every_bytes: 1, ..RedbOptions::default() };
    disk_conforms(|dir| RedbStorage::open_with(dir, options).unwrap());
}

#[test]
fn memory_crash_drops_unflushed_batches_whole() {
    let s = MemoryStorage::new();
    let mut b = Batch::new();
    b.put(b"a".to_vec(), b"1".to_vec());
    s.write(b).unwrap();
    s.flush().unwrap();
    let mut b = Batch::new();
    b.put(b"b".to_vec(), b"2".to_vec());
    b.delete(b"a".to_vec());
    s.write(b).unwrap();
    let after = s.crash();
    assert_eq!(after.get(b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(after.get(b"b").unwrap(), None);
    assert_eq!(s.get(b"b").unwrap(), Some(b"2".to_vec()));
}

#[test]
fn sled_keeps_data_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!(check_format_version(&s, 1, &[]).unwrap(), FormatOutcome::Initialized);
        let mut b = Batch::new();
        b.put(b"k".to_vec(), b"v".to_vec());
        s.write(b).unwrap();
        s.flush().unwrap();
    }
    let s = SledStorage::open(dir.path()).unwrap();
    assert_eq!(s.get(b"k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(check_format_version(&s, 1, &[]).unwrap(), FormatOutcome::Current);
    assert!(matches!(check_format_version(&s, 0, &[]), Err(StorageError::FormatTooNew { found: 1, supported: 0 })));
}

#[test]
fn redb_keeps_data_across_reopen_and_refuses_a_newer_engine_format() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = RedbStorage::open(dir.path()).unwrap();
        assert_eq!(check_format_version(&s, 1, &[]).unwrap(), FormatOutcome::Initialized);
        let mut b = Batch::new();
        b.put(b"k".to_vec(), b"v".to_vec());
        b.put(b"big".to_vec(), vec![7; 100_000]);
        s.write(b).unwrap();
        s.flush().unwrap();
    }
    let s = RedbStorage::open(dir.path()).unwrap();
    assert_eq!(s.get(b"k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(s.get(b"big").unwrap(), Some(vec![7; 100_000]));
    assert_eq!(check_format_version(&s, 1, &[]).unwrap(), FormatOutcome::Current);
    assert!(s.size_on_disk_bytes().unwrap() > 100_000);
    drop(s);
    // A database from a newer keyraft is refused, not misread.
    {
        let db = redb::Database::create(dir.path().join(keyraft_storage::REDB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        let table: redb::TableDefinition<'static, &str, u32> = redb::TableDefinition::new("keyraft-engine");
        txn.open_table(table).unwrap().insert("format", 9).unwrap();
        txn.commit().unwrap();
    }
    let err = RedbStorage::open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::FormatTooNew { found: 9, supported: 1 }), "{err}");
}

#[test]
fn redb_held_open_is_refused_with_a_clear_error_and_reopens_once_closed() {
    let dir = tempfile::tempdir().unwrap();
    let held = RedbStorage::open(dir.path()).unwrap();
    let err = RedbStorage::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("in use by another process"), "{err}");
    drop(held);
    drop(RedbStorage::open(dir.path()).unwrap());
}

/// Written without flushes, a store frees the pages its commits replaced once the written
/// bytes reach `durable_every_bytes` (redb frees only at durable commits).
#[test]
fn redb_written_without_flushes_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let options = RedbOptions { durable_every_bytes: 1024 * 1024, ..RedbOptions::default() };
    let s = RedbStorage::open_with(dir.path(), options).unwrap();
    // 4,000 commits rewriting the same 64 KiB: 256 MiB written in all.
    for round in 0..4_000u32 {
        let mut b = Batch::new();
        for k in 0..16u8 {
            b.put(vec![k], vec![(round % 251) as u8; 4096]);
        }
        s.write(b).unwrap();
    }
    let size = s.size_on_disk_bytes().unwrap();
    assert!(size < 32 * 1024 * 1024, "the file grew to {size} bytes for 64 KiB of live data");
}

fn put_all(s: &dyn Storage, pairs: &[(&[u8], Vec<u8>)]) {
    let mut b = Batch::new();
    for (k, v) in pairs {
        b.put(k.to_vec(), v.clone());
    }
    s.write(b).unwrap();
    s.flush().unwrap();
}

#[test]
fn sled_value_log_survives_reopen_and_torn_appends() {
    let dir = tempfile::tempdir().unwrap();
    let big = |b: u8, n: usize| vec![b; VALUE_LOG_MIN_BYTES + n];
    {
        let s = SledStorage::open(dir.path()).unwrap();
        put_all(&s, &[(b"a", big(1, 0)), (b"b", b"small".to_vec()), (b"c", big(3, 77))]);
    }
    // A crash between appending a batch's values and writing the batch leaves bytes nobody
    // points at.
    {
        use std::io::Write as _;
        let mut log = std::fs::OpenOptions::new().append(true).open(dir.path().join("values.log")).unwrap();
        log.write_all(&[0xee; 1000]).unwrap();
    }
    let s = SledStorage::open(dir.path()).unwrap();
    assert_eq!(s.get(b"a").unwrap(), Some(big(1, 0)));
    assert_eq!(s.get(b"c").unwrap(), Some(big(3, 77)));
    put_all(&s, &[(b"d", big(4, 5)), (b"a", b"now small".to_vec())]);
    let all = dump_all(&s).unwrap();
    assert_eq!(
        all,
        vec![
            (b"a".to_vec(), b"now small".to_vec()),
            (b"b".to_vec(), b"small".to_vec()),
            (b"c".to_vec(), big(3, 77)),
            (b"d".to_vec(), big(4, 5)),
        ]
    );
    drop(s);
    let s = SledStorage::open(dir.path()).unwrap();
    assert_eq!(dump_all(&s).unwrap(), all);
}

/// Bytes the file occupies on disk (its blocks), not its length.
fn allocated_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn sled_deleted_values_give_their_space_back_once_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("values.log");
    let s = SledStorage::open(dir.path()).unwrap();
    let value = |i: u8| vec![i; 64 * 1024];
    let mut b = Batch::new();
    for i in 0..64u8 {
        b.put(vec![b'k', i], value(i));
    }
    s.write(b).unwrap();
    s.flush().unwrap();
    let full = allocated_bytes(&log);
    assert!(full >= 64 * 64 * 1024, "{full}");
    let mut b = Batch::new();
    for i in (0..64u8).filter(|i| i % 4 != 0) {
        b.delete(vec![b'k', i]);
    }
    s.write(b).unwrap();
    // Not durable yet: the bytes stay until a flush, so a crash now cannot leave a durable
    // pointer into a hole.
    assert_eq!(allocated_bytes(&log), full);
    s.flush().unwrap();
    // ext4, xfs, btrfs and tmpfs all punch holes (the machines this runs on use ext4).
    let after = allocated_bytes(&log);
    assert!(after <= full / 4 + 64 * 1024, "{after} of {full} bytes still allocated");
    let check = |s: &SledStorage| {
        for i in 0..64u8 {
            let expected = (i % 4 == 0).then(|| value(i));
            assert_eq!(s.get(&[b'k', i]).unwrap(), expected, "key {i}");
        }
    };
    check(&s);
    drop(s);
    let s = SledStorage::open(dir.path()).unwrap();
    check(&s);
    // The log keeps its length: new values go after the holes.
    put_all(&s, &[(b"new", value(200))]);
    assert_eq!(s.get(b"new").unwrap(), Some(value(200)));
    check(&s);
}

#[test]
fn sled_value_log_damage_is_reported_not_returned() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStorage::open(dir.path()).unwrap();
        put_all(&s, &[(b"a", vec![7; VALUE_LOG_MIN_BYTES]), (b"b", vec![8; VALUE_LOG_MIN_BYTES])]);
    }
    let path = dir.path().join("values.log");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[VALUE_LOG_MIN_BYTES + 10] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let s = SledStorage::open(dir.path()).unwrap();
    assert_eq!(s.get(b"a").unwrap(), Some(vec![7; VALUE_LOG_MIN_BYTES]));
    let err = s.get(b"b").unwrap_err();
    assert!(matches!(&err, StorageError::Corrupt { what } if what.contains("checksum")), "{err}");
    assert!(s.range(b"", None, Direction::Forward).any(|r| r.is_err()));
    drop(s);
    // A log cut short (a lost tail) is refused at open, not found one read at a time.
    std::fs::write(&path, &bytes[..VALUE_LOG_MIN_BYTES + 5]).unwrap();
    let err = SledStorage::open(dir.path()).map(drop).unwrap_err();
    assert!(
        matches!(&err, StorageError::Corrupt { what } if what.contains("cut short") && what.contains(&format!("up to byte {}", 2 * VALUE_LOG_MIN_BYTES))),
        "{err}"
    );
    // As long as the log is whole again, the store opens.
    std::fs::write(&path, &bytes).unwrap();
    SledStorage::open(dir.path()).unwrap();
}

#[test]
fn sled_engine_format_1_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![5u8; 3 * VALUE_LOG_MIN_BYTES];
    {
        // What builds before the value log wrote: untagged values in the tree "keyraft".
        let db = sled::open(dir.path()).unwrap();
        let t = db.open_tree("keyraft").unwrap();
        t.insert(b"\x00format-version", &1u32.to_be_bytes()).unwrap();
        t.insert(b"k", b"v".as_slice()).unwrap();
        t.insert(b"big", big.as_slice()).unwrap();
        db.flush().unwrap();
    }
    for _ in 0..2 {
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!(check_format_version(&s, 1, &[]).unwrap(), FormatOutcome::Current);
        assert_eq!(s.get(b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(s.get(b"big").unwrap(), Some(big.clone()));
        assert_eq!(dump_all(&s).unwrap().len(), 3);
    }
}

#[test]
fn format_versions_migrate_or_refuse() {
    let s = MemoryStorage::new();
    check_format_version(&s, 1, &[]).unwrap();
    assert!(matches!(check_format_version(&s, 3, &[]), Err(StorageError::FormatTooOld { found: 1, supported: 3 })));
    fn one_to_two(s: &dyn Storage) -> Result<(), StorageError> {
        let mut b = Batch::new();
        b.put(b"migrated".to_vec(), b"yes".to_vec());
        s.write(b)
    }
    fn two_to_three(_: &dyn Storage) -> Result<(), StorageError> {
        Ok(())
    }
    let steps = [Migration { from: 1, to: 2, run: one_to_two }, Migration { from: 2, to: 3, run: two_to_three }];
    assert_eq!(check_format_version(&s, 3, &steps).unwrap(), FormatOutcome::Migrated { from: 1, to: 3 });
    assert_eq!(s.get(b"migrated").unwrap(), Some(b"yes".to_vec()));
    assert_eq!(check_format_version(&s, 3, &steps).unwrap(), FormatOutcome::Current);
    // A garbage version is corruption, not a guess.
    let bad = MemoryStorage::new();
    let mut b = Batch::new();
    b.put(b"\x00format-version".to_vec(), b"xx".to_vec());
    bad.write(b).unwrap();
    assert!(matches!(check_format_version(&bad, 1, &[]), Err(StorageError::Corrupt { .. })));
}

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    Range(Vec<u8>, Option<Vec<u8>>, bool),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xffu8), any::<u8>()], 0..4)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (key(), prop::collection::vec(any::<u8>(), 0..8)).prop_map(|(k, v)| Op::Put(k, v)),
        // Around the sled engine's value-log threshold.
        (key(), any::<u8>(), (VALUE_LOG_MIN_BYTES - 2)..(VALUE_LOG_MIN_BYTES + 2))
            .prop_map(|(k, b, n)| Op::Put(k, vec![b; n])),
        key().prop_map(Op::Delete),
        prop::collection::vec((key(), prop::option::of(prop::collection::vec(any::<u8>(), 0..4))), 0..6)
            .prop_map(Op::Batch),
        (key(), prop::option::of(key()), any::<bool>()).prop_map(|(a, b, r)| Op::Range(a, b, r)),
    ]
}

fn check_model(s: &dyn Storage, ops: &[Op]) {
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                let mut b = Batch::new();
                b.put(k.clone(), v.clone());
                s.write(b).unwrap();
                model.insert(k.clone(), v.clone());
            }
            Op::Delete(k) => {
                let mut b = Batch::new();
                b.delete(k.clone());
                s.write(b).unwrap();
                model.remove(k);
            }
            Op::Batch(items) => {
                let mut b = Batch::new();
                for (k, v) in items {
                    match v {
                        Some(v) => {
                            b.put(k.clone(), v.clone());
                            model.insert(k.clone(), v.clone());
                        }
                        None => {
                            b.delete(k.clone());
                            model.remove(k);
                        }
                    }
                }
                s.write(b).unwrap();
            }
            Op::Range(a, b, rev) => {
                let dir = if *rev { Direction::Reverse } else { Direction::Forward };
                let got: Vec<_> = s.range(a, b.as_deref(), dir).map(|r| r.unwrap()).collect();
                let mut want: Vec<_> = model
                    .iter()
                    .filter(|(k, _)| {
                        k.as_slice() >= a.as_slice() && b.as_ref().is_none_or(|b| k.as_slice() < b.as_slice())
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if *rev {
                    want.reverse();
                }
                assert_eq!(got, want);
            }
        }
        for k in model.keys().take(3) {
            assert_eq!(s.get(k).unwrap().as_ref(), model.get(k));
        }
    }
    let want: Vec<_> = model.into_iter().collect();
    assert_eq!(dump_all(s).unwrap(), want);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn memory_matches_btreemap(ops in prop::collection::vec(op(), 0..40)) {
        check_model(&MemoryStorage::new(), &ops);
    }

    #[test]
    fn sled_matches_btreemap(ops in prop::collection::vec(op(), 0..40)) {
        let dir = tempfile::tempdir().unwrap();
        check_model(&SledStorage::open(dir.path()).unwrap(), &ops);
    }

    #[test]
    fn redb_matches_btreemap(ops in prop::collection::vec(op(), 0..40)) {
        let dir = tempfile::tempdir().unwrap();
        check_model(&RedbStorage::open(dir.path()).unwrap(), &ops);
    }
}

#[test]
fn a_database_held_open_is_refused_with_a_clear_error_and_reopens_once_closed() {
    let dir = tempfile::tempdir().unwrap();
    let held = SledStorage::open(dir.path()).unwrap();
    let err = SledStorage::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("in use by another process"), "{err}");
    drop(held);
    for _ in 0..20 {
        drop(SledStorage::open(dir.path()).unwrap());
    }
}

/// A directory is opened with the engine that created it; the other is refused, by name.
#[test]
fn an_engine_refuses_the_other_engines_directory() {
    use keyraft_storage::{engine_in, DiskEngine, SledOptions};
    let (sled_dir, redb_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sled, redb) = (DiskEngine::Sled(SledOptions::default()), DiskEngine::Redb(RedbOptions::default()));
    assert_eq!(engine_in(sled_dir.path()), None);
    drop(sled.open(sled_dir.path()).unwrap());
    drop(redb.open(redb_dir.path()).unwrap());
    assert_eq!((engine_in(sled_dir.path()), engine_in(redb_dir.path())), (Some("sled"), Some("redb")));
    let err = redb.open(sled_dir.path()).err().unwrap().to_string();
    assert!(err.contains("holds a sled database") && err.contains("storage.engine = \"sled\""), "{err}");
    let err = sled.open(redb_dir.path()).err().unwrap().to_string();
    assert!(err.contains("holds a redb database"), "{err}");
    drop(sled.open(sled_dir.path()).unwrap());
}

/// Only sled asks writers to keep batches small.
#[test]
fn only_sled_prefers_small_batches() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sled = SledStorage::open(a.path()).unwrap();
    assert_eq!(sled.batch_keys_preferred_max(), Some(keyraft_storage::SLED_BATCH_KEYS_PREFERRED_MAX));
    assert_eq!(RedbStorage::open(b.path()).unwrap().batch_keys_preferred_max(), None);
    assert_eq!(MemoryStorage::new().batch_keys_preferred_max(), None);
    let shared: std::sync::Arc<dyn Storage> = std::sync::Arc::new(sled);
    assert_eq!(shared.batch_keys_preferred_max(), Some(2048));
}
