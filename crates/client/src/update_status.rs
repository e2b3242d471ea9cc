//! Where an update is, as a replica reports it (not a proof: a lookup proves it).

use crate::client::CALL_TIMEOUT_MS;
use crate::{Client, ClientError, LookupOptions};
use keyraft_core::Update;
use keyraft_proto::pb::get_update_status_response::State;
use keyraft_proto::pb::GetUpdateStatusRequest;
use std::time::Duration;

/// Where an update is, as a replica reports it ([`Client::update_status`]; not a proof: a
/// lookup proves it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateStatus {
    /// The replica does not know it (never received, or rejected long ago).
    Unknown,
    /// Received and not applied yet.
    Pending,
    /// Applied in this epoch.
    InEpoch(u64),
    /// Refused.
    Rejected {
        /// Why.
        reason: String,
        /// Whether resubmitting it later may succeed.
        retryable: bool,
    },
}

impl Client {
    /// Where `update` is, as the first replica that answers reports it.
    pub async fn update_status(&self, update: &Update) -> Result<UpdateStatus, ClientError> {
        let request = GetUpdateStatusRequest {
            update_id: update.id().to_vec(),
            index: update.signed.entry.index.0.to_vec(),
            version: update.signed.entry.version,
        };
        self.update_status_request(request).await
    }

    /// Where the update with id `update_id` is, as the first replica that answers reports it.
    /// A replica finds an applied update by its identity's index: with `user_id`, the index is
    /// learnt from a verified lookup (so this client's quorum must have ratified a fresh
    /// epoch); without, only pending and rejected updates are found, and an applied one is
    /// [`UpdateStatus::Unknown`].
    pub async fn update_status_by_id(
        &self,
        update_id: &[u8],
        user_id: Option<&str>,
    ) -> Result<UpdateStatus, ClientError> {
        if update_id.len() != 32 {
            return Err(ClientError::Invalid(format!("an update id is 32 bytes, not {}", update_id.len())));
        }
        let index = match user_id {
            Some(u) => self.lookup(u, LookupOptions::default()).await?.lookup.index.0.to_vec(),
            None => Vec::new(),
        };
        let request = GetUpdateStatusRequest { update_id: update_id.to_vec(), index, version: 0 };
        self.update_status_request(request).await
    }

    async fn update_status_request(&self, request: GetUpdateStatusRequest) -> Result<UpdateStatus, ClientError> {
        self.each(
            |mut c| {
                let mut r = tonic::Request::new(request.clone());
                r.set_timeout(Duration::from_millis(CALL_TIMEOUT_MS));
                async move { c.get_update_status(r).await.map(tonic::Response::into_inner) }
            },
            |r| {
                Ok(match r.state() {
                    State::Pending => UpdateStatus::Pending,
                    State::InEpoch => UpdateStatus::InEpoch(r.epoch),
                    State::Rejected => UpdateStatus::Rejected { reason: r.reason, retryable: r.retryable },
                    State::Unknown | State::Unspecified => UpdateStatus::Unknown,
                })
            },
        )
        .await
    }
}
