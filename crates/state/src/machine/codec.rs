//! The byte layout of the persisted epoch state (`META_EPOCH`) and of the applied log
//! position (`META_APPLIED`).

use super::EpochState;
use crate::corrupt;
use crate::keys;
use keyraft_core::LogPosition;
use keyraft_epoch::StateError;

impl EpochState {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.last_epoch.to_be_bytes());
        out.extend_from_slice(&self.last_issue_time_ms.to_be_bytes());
        out.extend_from_slice(&self.last_head_hash);
        out.extend_from_slice(&self.ratified_epoch.to_be_bytes());
        out.extend_from_slice(&self.pending_updates.to_be_bytes());
        out
    }

    pub(super) fn decode(b: &[u8]) -> Result<Self, StateError> {
        if b.len() != 64 {
            return Err(corrupt("epoch state has the wrong length"));
        }
        let u = |r: std::ops::Range<usize>| keys::be_u64(&b[r]).ok_or_else(|| corrupt("epoch state"));
        let mut last_head_hash = [0u8; 32];
        last_head_hash.copy_from_slice(&b[16..48]);
        Ok(Self {
            last_epoch: u(0..8)?,
            last_issue_time_ms: u(8..16)?,
            last_head_hash,
            ratified_epoch: u(48..56)?,
            pending_updates: u(56..64)?,
        })
    }
}

pub(super) fn encode_position(p: LogPosition) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&p.term.to_be_bytes());
    out.extend_from_slice(&p.index.to_be_bytes());
    out
}
