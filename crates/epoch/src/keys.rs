//! The tree's keyspace and the byte helpers its keys need, shared by every store that holds a
//! tree (a replica's state, a verifier's store).
//!
//! | prefix | key                                       | value                                  |
//! |--------|-------------------------------------------|----------------------------------------|
//! | `t`    | `t` + epoch (u64) + 0                     | the epoch's root page                  |
//! | `t`    | `t` + epoch (u64) + 1 + chunk (u32)       | a chunk of the epoch's page versions   |
//!
//! Integers are big-endian so that byte order is numeric order.

/// The first byte of every tree key.
pub const TREE: u8 = b't';

/// Zeroes every bit at position `depth` and beyond.
pub fn mask_after(bytes: &mut [u8; 32], depth: usize) {
    for (i, b) in bytes.iter_mut().enumerate() {
        let start = i * 8;
        if start >= depth {
            *b = 0;
        } else if depth - start < 8 {
            *b &= 0xffu8 << (8 - (depth - start));
        }
    }
}

/// A big-endian `u64` from exactly 8 bytes.
pub fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
