//! The conformance suite every [`Storage`] implementation must pass.
#![allow(clippy::unwrap_used)]

use crate::{dump_all, Batch, Direction, Storage};

fn put(s: &dyn Storage, k: &[u8], v: &[u8]) {
    let mut b = Batch::new();
    b.put(k, v);
    s.write(b).unwrap();
}

fn keys(iter: crate::RangeIter<'_>) -> Vec<Vec<u8>> {
    iter.map(|r| r.unwrap().0).collect()
}

/// Runs every case, each on a fresh store from `make`.
///
/// # Panics
/// On the first case the store fails.
pub fn run_conformance_suite<S: Storage>(make: impl Fn() -> S) {
    get_put_delete(&make());
    batches_are_ordered_and_atomic(&make());
    ranges(&make());
    prefixes(&make());
    big_endian_order(&make());
    writes_during_iteration(&make());
    large_values_and_many_keys(&make());
}

fn get_put_delete(s: &dyn Storage) {
    assert_eq!(s.get(b"a").unwrap(), None);
    put(s, b"a", b"1");
    assert_eq!(s.get(b"a").unwrap(), Some(b"1".to_vec()));
    put(s, b"a", b"2");
    assert_eq!(s.get(b"a").unwrap(), Some(b"2".to_vec()));
    let mut b = Batch::new();
    b.delete(b"a".to_vec());
    s.write(b).unwrap();
    assert_eq!(s.get(b"a").unwrap(), None);
    put(s, b"", b"empty key");
    assert_eq!(s.get(b"").unwrap(), Some(b"empty key".to_vec()));
    s.flush().unwrap();
}

fn batches_are_ordered_and_atomic(s: &dyn Storage) {
    let mut b = Batch::new();
    b.put(b"x".to_vec(), b"1".to_vec());
    b.delete(b"x".to_vec());
    b.delete(b"y".to_vec());
    b.put(b"y".to_vec(), b"2".to_vec());
    b.put(b"z".to_vec(), b"3".to_vec());
    b.put(b"z".to_vec(), b"4".to_vec());
    assert_eq!(b.len(), 6);
    s.write(b).unwrap();
    assert_eq!(s.get(b"x").unwrap(), None);
    assert_eq!(s.get(b"y").unwrap(), Some(b"2".to_vec()));
    assert_eq!(s.get(b"z").unwrap(), Some(b"4".to_vec()));
    s.write(Batch::new()).unwrap();
}

fn ranges(s: &dyn Storage) {
    for k in [&b"a"[..], b"b", b"ba", b"c", b"\xff", b"\xff\xff"] {
        put(s, k, b"v");
    }
    assert_eq!(keys(s.range(b"b", Some(b"c"), Direction::Forward)), vec![b"b".to_vec(), b"ba".to_vec()]);
    assert_eq!(keys(s.range(b"b", Some(b"c"), Direction::Reverse)), vec![b"ba".to_vec(), b"b".to_vec()]);
    assert!(keys(s.range(b"b", Some(b"b"), Direction::Forward)).is_empty());
    assert!(keys(s.range(b"c", Some(b"b"), Direction::Reverse)).is_empty());
    assert_eq!(
        keys(s.range(b"c", None, Direction::Forward)),
        vec![b"c".to_vec(), b"\xff".to_vec(), b"\xff\xff".to_vec()]
    );
    assert_eq!(keys(s.range(b"", None, Direction::Reverse)).len(), 6);
    assert_eq!(s.first_in_range(b"bb", None).unwrap().unwrap().0, b"c".to_vec());
    assert_eq!(s.last_in_range(b"a", Some(b"c")).unwrap().unwrap().0, b"ba".to_vec());
    assert_eq!(s.last_in_range(b"d", Some(b"e")).unwrap(), None);
    let only_keys = |start: &[u8], end: Option<&[u8]>| s.range_keys(start, end).map(Result::unwrap).collect::<Vec<_>>();
    assert_eq!(only_keys(b"b", Some(b"c")), vec![b"b".to_vec(), b"ba".to_vec()]);
    assert_eq!(only_keys(b"", None), keys(s.range(b"", None, Direction::Forward)));
    assert!(only_keys(b"c", Some(b"b")).is_empty());
}

fn prefixes(s: &dyn Storage) {
    for k in [&b"p1"[..], b"p1a", b"p2", b"\xff\xffz", b"\xff\xff"] {
        put(s, k, b"v");
    }
    assert_eq!(keys(s.scan_prefix(b"p1")), vec![b"p1".to_vec(), b"p1a".to_vec()]);
    assert_eq!(keys(s.scan_prefix(b"\xff\xff")), vec![b"\xff\xff".to_vec(), b"\xff\xffz".to_vec()]);
    assert_eq!(keys(s.scan_prefix(b"")).len(), 5);
}

fn big_endian_order(s: &dyn Storage) {
    for n in [0u64, 1, 255, 256, 65_535, 1 << 40, u64::MAX] {
        put(s, &n.to_be_bytes(), b"");
    }
    let got: Vec<u64> = keys(s.range(&[], None, Direction::Forward))
        .iter()
        .map(|k| u64::from_be_bytes(k.as_slice().try_into().unwrap()))
        .collect();
    assert_eq!(got, vec![0, 1, 255, 256, 65_535, 1 << 40, u64::MAX]);
}

fn writes_during_iteration(s: &dyn Storage) {
    for i in 0u32..1000 {
        put(s, &i.to_be_bytes(), b"v");
    }
    let mut seen = 0;
    for item in s.range(&[], None, Direction::Forward) {
        let (k, _) = item.unwrap();
        // Writing while an iterator is open must neither deadlock nor tear batches.
        let mut b = Batch::new();
        b.put([k.clone(), b"-x".to_vec()].concat(), b"w".to_vec());
        b.put([k, b"-y".to_vec()].concat(), b"w".to_vec());
        s.write(b).unwrap();
        seen += 1;
        if seen > 5000 {
            break;
        }
    }
    assert!(seen >= 1000);
    let all = dump_all(s).unwrap();
    let x = all.iter().filter(|(k, _)| k.ends_with(b"-x")).count();
    let y = all.iter().filter(|(k, _)| k.ends_with(b"-y")).count();
    assert_eq!(x, y, "a batch was torn");
}

fn large_values_and_many_keys(s: &dyn Storage) {
    let big = vec![0xabu8; 1 << 20];
    put(s, b"big", &big);
    assert_eq!(s.get(b"big").unwrap(), Some(big));
    let mut b = Batch::new();
    for i in 0u32..10_000 {
        b.put(i.to_be_bytes().to_vec(), i.to_le_bytes().to_vec());
    }
    s.write(b).unwrap();
    s.flush().unwrap();
    assert_eq!(keys(s.range(&0u32.to_be_bytes(), Some(&10_000u32.to_be_bytes()), Direction::Forward)).len(), 10_000);
}
