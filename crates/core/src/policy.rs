//! Update policies: who may change an entry.
//!
//! A policy is a list of Ed25519 keys and a quorum expression over them, as in coname's
//! `QuorumExpr`: `threshold(t, members)` is satisfied when at least `t` of its members are,
//! where a member is either one key (satisfied when that key signed) or a nested expression.
//!
//! Policies that zero signatures could satisfy are refused (coname let clients register
//! `threshold(0, ..)`, so anyone could take over the entry): every threshold is at least 1.
//! Policies that no set of signatures could satisfy are refused too (`t` above the member
//! count), because they would freeze an entry by accident.

use crate::encoding::{put_count, put_u16, Canonical, DecodeError, Reader};
use crate::keys::PublicKey;
use crate::limits::{POLICY_DEPTH_MAX, POLICY_KEYS_MAX, POLICY_MEMBERS_MAX};
use std::collections::BTreeSet;

/// A quorum expression: at least `threshold` of `members` must be satisfied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quorum {
    /// How many members must be satisfied; `1 <= threshold <= members.len()`.
    pub threshold: u16,
    /// The members, in the order the policy's author chose.
    pub members: Vec<QuorumMember>,
}

/// One member of a quorum expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumMember {
    /// Satisfied when the key at this position of [`Policy::keys`] signed.
    Key(u16),
    /// Satisfied when the nested expression is.
    Quorum(Quorum),
}

/// An entry's update policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    keys: Vec<PublicKey>,
    quorum: Quorum,
}

const MEMBER_KEY: u8 = 0;
const MEMBER_QUORUM: u8 = 1;

impl Policy {
    /// Builds and validates a policy. `keys` may be in any order; key positions in `quorum`
    /// refer to `keys` sorted ascending (the canonical order).
    pub fn new(mut keys: Vec<PublicKey>, quorum: Quorum) -> Result<Self, DecodeError> {
        keys.sort();
        let policy = Self { keys, quorum };
        policy.validate()?;
        Ok(policy)
    }

    /// The common case: any `threshold` of `keys`.
    pub fn threshold(threshold: u16, keys: Vec<PublicKey>) -> Result<Self, DecodeError> {
        let n = u16::try_from(keys.len()).map_err(|_| DecodeError::TooLong {
            what: "policy keys",
            max: POLICY_KEYS_MAX,
            got: keys.len(),
        })?;
        let members = (0..n).map(QuorumMember::Key).collect();
        Self::new(keys, Quorum { threshold, members })
    }

    /// A policy satisfied by one key's signature.
    pub fn single(key: PublicKey) -> Self {
        Self { keys: vec![key], quorum: Quorum { threshold: 1, members: vec![QuorumMember::Key(0)] } }
    }

    /// The keys, sorted ascending.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// The quorum expression.
    pub fn quorum(&self) -> &Quorum {
        &self.quorum
    }

    fn validate(&self) -> Result<(), DecodeError> {
        const WHAT: &str = "update policy";
        if self.keys.is_empty() {
            return Err(DecodeError::TooShort { what: WHAT, min: 1, got: 0 });
        }
        if self.keys.len() > POLICY_KEYS_MAX {
            return Err(DecodeError::TooLong { what: WHAT, max: POLICY_KEYS_MAX, got: self.keys.len() });
        }
        if self.keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err(DecodeError::NonCanonical { what: WHAT, why: "keys not sorted strictly ascending" });
        }
        let mut used = BTreeSet::new();
        validate_quorum(&self.quorum, self.keys.len(), 1, &mut used)?;
        if used.len() != self.keys.len() {
            return Err(DecodeError::Invalid { what: WHAT, why: "a key is not referenced by the quorum expression" });
        }
        Ok(())
    }

    /// Whether the set of key positions that produced valid signatures satisfies the policy.
    pub fn is_satisfied_by(&self, signed: &BTreeSet<u16>) -> bool {
        eval(&self.quorum, signed)
    }

    /// The position of `key` in [`Policy::keys`], if it is there.
    pub fn position(&self, key: &PublicKey) -> Option<u16> {
        self.keys.binary_search(key).ok().and_then(|i| u16::try_from(i).ok())
    }
}

fn validate_quorum(q: &Quorum, key_count: usize, depth: usize, used: &mut BTreeSet<u16>) -> Result<(), DecodeError> {
    const WHAT: &str = "quorum expression";
    if depth > POLICY_DEPTH_MAX {
        return Err(DecodeError::TooLong { what: "quorum expression depth", max: POLICY_DEPTH_MAX, got: depth });
    }
    if q.members.is_empty() || q.members.len() > POLICY_MEMBERS_MAX {
        return Err(DecodeError::Invalid { what: WHAT, why: "must have between 1 and 16 members" });
    }
    if q.threshold == 0 {
        return Err(DecodeError::Invalid { what: WHAT, why: "threshold 0 would be satisfied by no signature at all" });
    }
    if usize::from(q.threshold) > q.members.len() {
        return Err(DecodeError::Invalid {
            what: WHAT,
            why: "threshold exceeds the member count, so it can never be met",
        });
    }
    let mut here = BTreeSet::new();
    for m in &q.members {
        match m {
            QuorumMember::Key(k) => {
                if usize::from(*k) >= key_count {
                    return Err(DecodeError::Invalid { what: WHAT, why: "key position out of range" });
                }
                if !here.insert(*k) {
                    return Err(DecodeError::Invalid { what: WHAT, why: "a key appears twice in one threshold" });
                }
                used.insert(*k);
            }
            QuorumMember::Quorum(sub) => validate_quorum(sub, key_count, depth + 1, used)?,
        }
    }
    Ok(())
}

fn eval(q: &Quorum, signed: &BTreeSet<u16>) -> bool {
    let met = q
        .members
        .iter()
        .filter(|m| match m {
            QuorumMember::Key(k) => signed.contains(k),
            QuorumMember::Quorum(sub) => eval(sub, signed),
        })
        .count();
    met >= usize::from(q.threshold)
}

fn encode_quorum(q: &Quorum, out: &mut Vec<u8>) {
    put_u16(out, q.threshold);
    put_count(out, q.members.len());
    for m in &q.members {
        match m {
            QuorumMember::Key(k) => {
                out.push(MEMBER_KEY);
                put_u16(out, *k);
            }
            QuorumMember::Quorum(sub) => {
                out.push(MEMBER_QUORUM);
                encode_quorum(sub, out);
            }
        }
    }
}

fn decode_quorum(r: &mut Reader<'_>, depth: usize) -> Result<Quorum, DecodeError> {
    if depth > POLICY_DEPTH_MAX {
        return Err(DecodeError::TooLong { what: "quorum expression depth", max: POLICY_DEPTH_MAX, got: depth });
    }
    let threshold = r.u16("quorum threshold")?;
    let n = r.count(1, POLICY_MEMBERS_MAX, "quorum members")?;
    let mut members = Vec::with_capacity(n);
    for _ in 0..n {
        members.push(match r.u8("quorum member tag")? {
            MEMBER_KEY => QuorumMember::Key(r.u16("quorum member key")?),
            MEMBER_QUORUM => QuorumMember::Quorum(decode_quorum(r, depth + 1)?),
            _ => return Err(DecodeError::Invalid { what: "quorum member tag", why: "unknown tag" }),
        });
    }
    Ok(Quorum { threshold, members })
}

impl Canonical for Policy {
    const NAME: &'static str = "update policy";

    fn encode_into(&self, out: &mut Vec<u8>) {
        put_count(out, self.keys.len());
        for k in &self.keys {
            out.extend_from_slice(k.as_bytes());
        }
        encode_quorum(&self.quorum, out);
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.count(1, POLICY_KEYS_MAX, "policy keys")?;
        let mut keys = Vec::with_capacity(n);
        for _ in 0..n {
            keys.push(PublicKey::decode_from(r, "policy key")?);
        }
        let quorum = decode_quorum(r, 1)?;
        let policy = Self { keys, quorum };
        policy.validate()?;
        Ok(policy)
    }
}
