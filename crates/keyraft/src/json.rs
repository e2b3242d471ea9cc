//! The `--json` outputs of `lookup`, `history`, `status` and `admin status`: a stable schema,
//! documented field by field in docs/cli-json.md. Every document names its `schema` and
//! `version`; a change that renames, retypes or drops a field bumps the version (adding a
//! field does not). Times stay raw milliseconds, with their RFC 3339 text next to them.

use keyraft_client::{HistoryVersion, LookupAnswer, UpdateStatus};
use keyraft_core::human;
use keyraft_core::lookup::{ClientRealm, LookupProof, PositionalSignature};
use keyraft_core::policy::{Quorum, QuorumMember};
use keyraft_core::tree::Terminal;
use keyraft_core::{decode_canonical, EpochHead, Policy};
use keyraft_proto::peer::StatusReply;
use serde_json::{json, Map, Value};

/// The version of every schema below (docs/cli-json.md).
pub const SCHEMA_VERSION: u64 = 1;

/// How an answer was verified: as today's answer, or as a statement about its epoch only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Every check, freshness and rollback included: the identity's value now.
    Current,
    /// Every check but freshness and rollback: what the identity was in the answer's epoch,
    /// nothing about today.
    Historical,
}

impl Verification {
    /// The `verification.result` value.
    pub fn result(self) -> &'static str {
        match self {
            Self::Current => "verified",
            Self::Historical => "historical",
        }
    }
}

/// A profile value: text when its bytes are UTF-8, else hex, saying which.
pub fn profile_value(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => json!({ "encoding": "utf8", "value": text }),
        Err(_) => json!({ "encoding": "hex", "value": hex::encode(bytes) }),
    }
}

fn quorum_json(q: &Quorum) -> Value {
    let members: Vec<Value> = q
        .members
        .iter()
        .map(|m| match m {
            QuorumMember::Key(position) => json!({ "key": position }),
            QuorumMember::Quorum(nested) => json!({ "quorum": quorum_json(nested) }),
        })
        .collect();
    json!({ "threshold": q.threshold, "members": members })
}

/// An update policy: its threshold, keys and whole quorum expression.
pub fn policy(p: &Policy) -> Value {
    json!({
        "threshold": p.quorum().threshold,
        "description": crate::answer::policy_text(p),
        "keys": p.keys().iter().map(|k| hex::encode(k.as_bytes())).collect::<Vec<_>>(),
        "quorum": quorum_json(p.quorum()),
    })
}

/// A time: raw milliseconds and RFC 3339 text.
fn time(prefix: &str, ms: u64, out: &mut Map<String, Value>) {
    out.insert(format!("{prefix}_ms"), json!(ms));
    out.insert(prefix.to_owned(), json!(human::utc(ms)));
}

fn head(h: &EpochHead) -> Value {
    let mut out = Map::new();
    out.insert("realm".into(), json!(h.realm));
    out.insert("epoch".into(), json!(h.epoch));
    time("issue_time", h.issue_time_ms, &mut out);
    out.insert("root".into(), json!(hex::encode(h.root)));
    out.insert("previous_head_hash".into(), json!(hex::encode(h.previous_head_hash)));
    out.insert("update_count".into(), json!(h.update_count));
    out.insert("config_hash".into(), json!(hex::encode(h.config_hash)));
    Value::Object(out)
}

/// A verified answer, as `lookup` prints it and as each version of `history`: who answered,
/// how it was verified, the head, the entry (policy and profile) and the proof's bytes.
pub fn answer(
    a: &LookupAnswer,
    realm: &ClientRealm,
    verification: Verification,
) -> Result<Value, Box<dyn std::error::Error>> {
    let proof: LookupProof = decode_canonical(&a.proof)?;
    let l = &a.lookup;
    let newer = match verification {
        Verification::Current => a.newer_epochs_hint(),
        Verification::Historical => None,
    };
    let entry = l.entry.as_ref().map(|(entry, profile)| {
        json!({
            "version": entry.version,
            "policy": policy(&entry.update_policy),
            "profile": profile.keys.iter().map(|(app, v)| (app.clone(), profile_value(v))).collect::<Map<_, _>>(),
        })
    });
    Ok(json!({
        "answered_by": a.endpoint,
        "verification": {
            "result": verification.result(),
            "epoch": l.epoch(),
            "replica_signatures": proof.replica_signatures.len(),
            "replica_majority": realm.config.replica_majority(),
            "verifier_signatures": l.ratified_by.len(),
            "verifier_threshold": realm.verifier_threshold,
            "newest_epoch_hint": a.newest_epoch_hint,
            "behind": newer.is_some(),
        },
        "head": head(&l.head),
        "index": hex::encode(l.index.0),
        "registered": entry.is_some(),
        "entry": entry,
        "pending_recovery": l.pending_recovery.as_ref().map(pending_recovery),
        "proof_hex": hex::encode(&a.proof),
    }))
}

/// A recovery waiting for its veto window: an owner's device alerts on it (`null` when none).
pub fn pending_recovery(p: &keyraft_core::recovery::PendingRecovery) -> Value {
    let mut out = Map::new();
    out.insert("version".into(), json!(p.signed.entry.version));
    out.insert("policy".into(), policy(&p.signed.entry.update_policy));
    out.insert("requested_epoch".into(), json!(p.requested_epoch));
    time("effective", p.effective_ms, &mut out);
    Value::Object(out)
}

/// `lookup --json`: the answer, plus the whole proof field by field.
pub fn lookup(
    a: &LookupAnswer,
    realm: &ClientRealm,
    verification: Verification,
) -> Result<Value, Box<dyn std::error::Error>> {
    let mut out = Map::new();
    out.insert("schema".into(), json!("keyraft.lookup"));
    out.insert("version".into(), json!(SCHEMA_VERSION));
    out.insert("user_id".into(), json!(a.lookup.user_id));
    if let Value::Object(fields) = answer(a, realm, verification)? {
        out.extend(fields);
    }
    let proof: LookupProof = decode_canonical(&a.proof)?;
    out.insert("proof".into(), proof_json(&proof, &a.proof));
    Ok(Value::Object(out))
}

/// `history --json`: every version listed, newest first, each with its proof, and the
/// recovery pending at the epoch the listing is pinned to (first page only).
pub fn history(
    user_id: &str,
    versions: &[HistoryVersion],
    pending: Option<&keyraft_core::recovery::PendingRecovery>,
    next_page_token: &[u8],
    complete: bool,
    realm: &ClientRealm,
) -> Result<Value, Box<dyn std::error::Error>> {
    let versions = versions
        .iter()
        .map(|v| {
            let mut a = answer(&v.answer, realm, Verification::Historical)?;
            if let Value::Object(fields) = &mut a {
                fields.insert("meets_verifier_threshold".into(), Value::Bool(v.meets_threshold));
            }
            Ok(a)
        })
        .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
    Ok(json!({
        "schema": "keyraft.history",
        "version": SCHEMA_VERSION,
        "user_id": user_id,
        "versions": versions,
        "pending_recovery": pending.map(pending_recovery),
        "complete": complete,
        "next_page_token": (!next_page_token.is_empty()).then(|| hex::encode(next_page_token)),
    }))
}

/// `status --json`: where an update is, as a replica reports it (not a proof).
pub fn update_status(update_id: &[u8], status: &UpdateStatus) -> Value {
    let (state, epoch, reason, retryable) = match status {
        UpdateStatus::Unknown => ("unknown", None, None, None),
        UpdateStatus::Pending => ("pending", None, None, None),
        UpdateStatus::InEpoch(epoch) => ("in_epoch", Some(*epoch), None, None),
        UpdateStatus::Rejected { reason, retryable } => ("rejected", None, Some(reason.clone()), Some(*retryable)),
    };
    json!({
        "schema": "keyraft.update-status",
        "version": SCHEMA_VERSION,
        "update_id": hex::encode(update_id),
        "state": state,
        "epoch": epoch,
        "reason": reason,
        "retryable": retryable,
    })
}

/// `admin status --json`: a node's view of the cluster.
pub fn admin_status(s: &StatusReply) -> Value {
    json!({
        "schema": "keyraft.admin-status",
        "version": SCHEMA_VERSION,
        "node_id": s.node_id, "role": s.role, "leader_id": s.has_leader.then_some(s.leader_id), "term": s.term,
        "last_log_index": s.last_log_index, "applied_index": s.applied_index,
        "last_epoch": s.last_epoch, "ratified_epoch": s.ratified_epoch, "pending_updates": s.pending_updates,
        "snapshot_index": s.snapshot_index, "purged_index": s.purged_index,
        "verifiers": s.verifiers.iter().map(|v| json!({
            "key": hex::encode(&v.key), "latest_ratified_epoch": v.latest_ratified_epoch,
        })).collect::<Vec<_>>(),
        "nodes": s.nodes.iter().map(|n| json!({
            "id": n.id, "voter": n.voter, "peer_addr": n.peer_addr, "public_addr": n.public_addr,
            "matched_index": n.matched_index, "lag": n.lag,
        })).collect::<Vec<_>>(),
    })
}

fn sigs_json(sigs: &[PositionalSignature]) -> serde_json::Value {
    sigs.iter()
        .map(|s| serde_json::json!({ "position": s.position, "signature": hex::encode(s.signature.0) }))
        .collect()
}

/// The whole proof, field by field, plus its canonical bytes.
pub fn proof_json(p: &LookupProof, bytes: &[u8]) -> serde_json::Value {
    let terminal = match &p.tree_proof.terminal {
        Terminal::Empty => serde_json::json!({ "kind": "empty" }),
        Terminal::Leaf { value } => serde_json::json!({ "kind": "leaf", "value": hex::encode(value) }),
        Terminal::OtherLeaf { index, value } => {
            serde_json::json!({ "kind": "other_leaf", "index": hex::encode(index.0), "value": hex::encode(value) })
        }
    };
    let entry = p.entry.as_ref().map(|(e, profile)| {
        serde_json::json!({
            "index": hex::encode(e.index.0),
            "version": e.version,
            "profile_commitment": hex::encode(e.profile_commitment),
            "update_policy_keys": e.update_policy.keys().iter().map(|k| hex::encode(k.as_bytes())).collect::<Vec<_>>(),
            "profile": {
                "nonce": hex::encode(&profile.nonce),
                "keys": profile.keys.iter().map(|(a, k)| (a.clone(), serde_json::Value::String(hex::encode(k)))).collect::<serde_json::Map<_, _>>(),
            },
        })
    });
    serde_json::json!({
        "user_id": p.user_id,
        "vrf_proof": hex::encode(p.vrf_proof.as_bytes()),
        "head": {
            "realm": p.head.realm,
            "epoch": p.head.epoch,
            "root": hex::encode(p.head.root),
            "previous_head_hash": hex::encode(p.head.previous_head_hash),
            "issue_time_ms": p.head.issue_time_ms,
            "update_count": p.head.update_count,
            "config_hash": hex::encode(p.head.config_hash),
        },
        "replica_signatures": sigs_json(&p.replica_signatures),
        "verifier_signatures": sigs_json(&p.verifier_signatures),
        "tree_proof": {
            "terminal": terminal,
            "siblings": p.tree_proof.siblings.iter().map(|s| s.map(hex::encode)).collect::<Vec<_>>(),
        },
        "entry": entry,
        "proof_hex": hex::encode(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_values_are_text_when_utf8_and_hex_otherwise_saying_which() {
        assert_eq!(profile_value(b"one"), json!({ "encoding": "utf8", "value": "one" }));
        assert_eq!(profile_value(&[0x00, 0xff]), json!({ "encoding": "hex", "value": "00ff" }));
    }
}
