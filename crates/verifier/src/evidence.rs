//! Evidence: what a verifier writes, logs and stops with when the realm publishes an epoch
//! that does not verify.

use keyraft_core::{Canonical, EpochHead, SignedEntry};
use keyraft_proto::pb::verifier_frame::SignedHead;

use crate::config::Error;
use crate::daemon::Verifier;

impl Verifier {
    /// Writes the evidence file and `HALTED`, logs the alarm, returns the error to stop with.
    pub(crate) fn evidence(
        &self,
        epoch: u64,
        reason: &str,
        endpoint: &str,
        head: Option<(&SignedHead, Option<EpochHead>)>,
        updates: &[SignedEntry],
        raw: Option<&Vec<u8>>,
    ) -> Error {
        let record = serde_json::json!({
            "realm": self.realm.realm,
            "epoch": epoch,
            "reason": reason,
            "endpoint": endpoint,
            "verifier": hex::encode(self.public.as_bytes()),
            "received_head": head.as_ref().map(|(h, _)| hex::encode(&h.head)),
            "received_replica_signatures": head.as_ref().map(|(h, _)| h.replica_signatures.iter().map(|s| serde_json::json!({
                "signer": hex::encode(&s.signer), "signature": hex::encode(&s.signature)
            })).collect::<Vec<_>>()),
            "expected_head": head.as_ref().and_then(|(_, e)| e.as_ref().map(|e| hex::encode(e.encode()))),
            "previous_verified_head": self.state.last_head().map(|h| hex::encode(h.encode())),
            "updates": updates.iter().map(|u| hex::encode(u.encode())).collect::<Vec<_>>(),
            "undecodable_update": raw.map(hex::encode),
            "how_to_check": "heads and updates are canonical bytes (docs/protocol.md); verify the replica signatures over the received head, recompute the tree from the previous verified head's epoch",
        });
        let dir = self.data_dir.join("evidence");
        let path = dir.join(format!("epoch-{epoch}.json"));
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap_or_default()))
            .and_then(|()| {
                std::fs::write(
                    self.data_dir.join("HALTED"),
                    format!("epoch {epoch}: {reason}; evidence {}\n", path.display()),
                )
            });
        if let Err(e) = written {
            tracing::error!(error = %e, "could not write the evidence file");
        }
        tracing::error!(epoch, reason, evidence = %path.display(), "ALARM: the realm published an epoch that does not verify; ratification halted");
        Error::Misbehaved { epoch, reason: reason.to_owned(), evidence: path.display().to_string() }
    }
}
