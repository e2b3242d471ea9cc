//! Checking many independent items on every core, with the answer a sequential loop gives.
//!
//! A verifier catching up re-checks tens of thousands of signatures per epoch; each check is
//! independent, so they spread over threads. The result is what checking in order would
//! return: every output in input order, or the error of the *first* failing item, so evidence
//! names the same update whatever the thread timing.

/// Below this many items, threads cost more than they save.
pub const PARALLEL_ITEMS_MIN: usize = 256;
/// Threads used at most.
pub const THREADS_MAX: usize = 8;

/// `f` applied to every item, in order, or the lowest position whose `f` failed and its error.
pub fn try_map<T, R, E>(items: &[T], f: impl Fn(usize, &T) -> Result<R, E> + Sync) -> Result<Vec<R>, (usize, E)>
where
    T: Sync,
    R: Send,
    E: Send,
{
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(THREADS_MAX);
    if threads < 2 || items.len() < PARALLEL_ITEMS_MIN {
        return items.iter().enumerate().map(|(i, t)| f(i, t).map_err(|e| (i, e))).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    let parts: Vec<Result<Vec<R>, (usize, E)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(c, slice)| {
                scope.spawn(move || {
                    let base = c * chunk;
                    slice.iter().enumerate().map(|(i, t)| f(base + i, t).map_err(|e| (base + i, e))).collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    let mut out = Vec::with_capacity(items.len());
    // Chunks are in order, so the first error met is the lowest failing position.
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// Calls `f` on consecutive slices of at most `slice_len` items covering `items`, on every
/// core: for work done per group of items, such as batch signature checks.
pub fn for_each_slice<T: Sync>(items: &[T], slice_len: usize, f: impl Fn(&[T]) + Sync) {
    assert!(slice_len > 0, "slices must hold at least one item");
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(THREADS_MAX);
    if threads < 2 || items.len() < PARALLEL_ITEMS_MIN {
        items.chunks(slice_len).for_each(f);
        return;
    }
    // Each thread's share is a whole number of slices, so the slices are those of one thread.
    let share = items.len().div_ceil(threads).div_ceil(slice_len) * slice_len;
    let f = &f;
    std::thread::scope(|scope| {
        for part in items.chunks(share) {
            scope.spawn(move || part.chunks(slice_len).for_each(f));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_every_item_once_in_slices_of_one_thread() {
        for (n, slice_len) in [(0usize, 64usize), (10, 64), (255, 64), (256, 64), (1_000, 64), (10_001, 7)] {
            let items: Vec<usize> = (0..n).collect();
            let seen = std::sync::Mutex::new(Vec::new());
            for_each_slice(&items, slice_len, |slice| {
                assert!(!slice.is_empty() && slice.len() <= slice_len);
                assert!(slice.windows(2).all(|w| w[1] == w[0] + 1), "a slice is consecutive items");
                seen.lock().unwrap().push(slice.to_vec());
            });
            let mut seen = seen.into_inner().unwrap();
            seen.sort();
            // Every slice but the last of each thread's share is full.
            assert_eq!(seen.concat(), items, "n = {n}");
            assert!(seen.iter().filter(|s| s.len() < slice_len).count() <= THREADS_MAX);
        }
    }

    #[test]
    fn same_answer_as_a_sequential_loop() {
        let items: Vec<u32> = (0..10_000).collect();
        let doubled = try_map(&items, |_, x| Ok::<_, ()>(x * 2)).map_err(|_| ());
        assert_eq!(doubled, Ok(items.iter().map(|x| x * 2).collect::<Vec<_>>()));
        // Several failures: the first position wins, wherever the threads split.
        for first_bad in [0usize, 1, 2_499, 2_500, 5_001, 9_999] {
            let r = try_map(&items, |i, _| if i == first_bad || i == 9_999 || i > 7_000 { Err(i) } else { Ok(()) });
            assert_eq!(r.err(), Some((first_bad.min(7_001), first_bad.min(7_001))));
        }
    }
}
