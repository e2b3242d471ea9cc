//! The state machine's keyspaces in the one ordered store.
//!
//! Every key starts with one byte naming its keyspace; integers are big-endian so that byte
//! order is numeric order. Nothing is keyed by user id: the state knows only VRF indexes.
//!
//! | prefix | key                                   | value                                  |
//! |--------|---------------------------------------|----------------------------------------|
//! | `m`    | `m` + name                            | state metadata (applied log position, epoch state, realm config) |
//! | `t`    | `t` + epoch (u64) + 0                 | the epoch's tree root page (`keyraft_epoch::tree`) |
//! | `t`    | `t` + epoch (u64) + 1 + chunk (u32)   | a chunk of the other page versions written in `epoch` |
//! | `u`    | `u` + index + epoch (u64)             | the update to `index` in `epoch` (staged while `epoch` is open) |
//! | `e`    | `e` + epoch (u64) + index             | the entry hash: the indexes updated in `epoch` |
//! | `h`    | `h` + epoch (u64)                     | the epoch's head bytes                 |
//! | `r`    | `r` + epoch (u64) + replica key (32)  | the replica's signature over the head  |
//! | `v`    | `v` + epoch (u64) + verifier key (32) | the verifier's ratification            |
//! | `p`    | `p` + index + epoch (u64)             | the index's pending recovery from `epoch` on: `PendingRecovery` bytes then the recovery's `Profile` bytes, or empty (none pending from then on) |
//! | `q`    | `q` + index                           | the recoveries pending now: requested epoch (u64) and effective time (u64), for the delimiter to find matured ones without scanning the tree |
//! | `s`    | `s` + index                           | a recovery request staged in the open epoch (the `Update` bytes) |
//!
//! `p`, `q` and `s` (protocol version 2, recovery) are empty in stores written before them,
//! which is what a store without recoveries holds: they need no format version bump.
//!
//! | `c`    | `c` + generation (u64)                | a configuration change in a head: its first epoch (u64) + the `SignedConfigChange` bytes |
//!
//! `mpending-config` holds a configuration change applied from the log and not yet in a head.
//! The `c` keyspace and `mpending-config` are empty in stores written before configuration
//! changes existed, which read exactly as before: no format version bump.
//!
//! `mtrees-from` is written by retention, not by the step function (see `machine::retention`):
//! replicas with different retention settings differ in it and in the `t` keys below it, and
//! in nothing else.
//!
//! The first byte 0x00 belongs to the storage crate (format version).

use keyraft_core::Index;

pub(crate) const UPDATE: u8 = b'u';
pub(crate) const EPOCH_UPDATES: u8 = b'e';
pub(crate) const HEAD: u8 = b'h';
pub(crate) const REPLICA_SIG: u8 = b'r';
pub(crate) const VERIFIER_SIG: u8 = b'v';
pub(crate) const PENDING: u8 = b'p';
pub(crate) const PENDING_NOW: u8 = b'q';
pub(crate) const STAGED_RECOVERY: u8 = b's';
pub(crate) const CONFIG_CHANGE: u8 = b'c';

pub(crate) const META_APPLIED: &[u8] = b"mapplied";
pub(crate) const META_EPOCH: &[u8] = b"mepoch";
pub(crate) const META_CONFIG: &[u8] = b"mconfig";
pub(crate) const META_PENDING_CONFIG: &[u8] = b"mpending-config";
/// The oldest epoch whose tree is kept (u64): retention, a replica's own setting, wrote it and
/// deleted the trees before it. Absent: every tree is kept. The step function never reads it.
pub(crate) const META_TREES_FROM: &[u8] = b"mtrees-from";

pub(crate) fn config_change(generation: u64) -> Vec<u8> {
    epoch_prefix(CONFIG_CHANGE, generation)
}

pub(crate) fn update(index: &Index, epoch: u64) -> Vec<u8> {
    let mut k = update_prefix(index);
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

pub(crate) fn update_prefix(index: &Index) -> Vec<u8> {
    let mut k = Vec::with_capacity(41);
    k.push(UPDATE);
    k.extend_from_slice(&index.0);
    k
}

pub(crate) fn index_key(space: u8, index: &Index) -> Vec<u8> {
    let mut k = Vec::with_capacity(41);
    k.push(space);
    k.extend_from_slice(&index.0);
    k
}

pub(crate) fn pending(index: &Index, epoch: u64) -> Vec<u8> {
    let mut k = index_key(PENDING, index);
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

pub(crate) fn epoch_update(epoch: u64, index: &Index) -> Vec<u8> {
    let mut k = epoch_prefix(EPOCH_UPDATES, epoch);
    k.extend_from_slice(&index.0);
    k
}

pub(crate) fn epoch_prefix(space: u8, epoch: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(41);
    k.push(space);
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

pub(crate) fn head(epoch: u64) -> Vec<u8> {
    epoch_prefix(HEAD, epoch)
}

pub(crate) fn signature(space: u8, epoch: u64, signer: &[u8; 32]) -> Vec<u8> {
    let mut k = epoch_prefix(space, epoch);
    k.extend_from_slice(signer);
    k
}

pub(crate) use keyraft_epoch::keys::be_u64;
