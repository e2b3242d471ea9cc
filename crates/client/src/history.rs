//! An identity's history: every version, newest first, each proven at the epoch it
//! appeared in.

use crate::client::CALL_TIMEOUT_MS;
use crate::{Client, ClientError, LookupAnswer};
use keyraft_proto::pb::HistoryRequest;
use std::time::Duration;

/// A page of an identity's history, newest first, each version proven at its epoch.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// `(version, answer)`: each answer is verified at the epoch the version appeared in.
    pub versions: Vec<(u64, LookupAnswer)>,
    /// The replica (its endpoint address) that answered the page.
    pub endpoint: String,
    /// The token of the next (older) page, empty at the end.
    pub next_page_token: Vec<u8>,
}

impl Client {
    /// One page of `user_id`'s versions, newest first (`page_token` empty for the first page),
    /// each proven at the epoch it appeared in. Each listed version is proven; that none is
    /// missing is not (versions only have to increase): compare with what a watch saw, or with
    /// lookups at the epochs in between.
    pub async fn history(&self, user_id: &str, page_size: u32, page_token: &[u8]) -> Result<HistoryPage, ClientError> {
        let user_id = &self.canonical_user_id(user_id)?;
        let request = HistoryRequest {
            user_id: user_id.to_owned(),
            page_size,
            page_token: page_token.to_vec(),
            verifier_threshold: self.threshold(),
        };
        self.each_from(
            |mut c| {
                let mut r = tonic::Request::new(request.clone());
                r.set_timeout(Duration::from_millis(CALL_TIMEOUT_MS));
                async move { c.history(r).await.map(tonic::Response::into_inner) }
            },
            |endpoint, response| self.accept_history(user_id, endpoint, response),
        )
        .await
    }

    /// Verifies a history page.
    fn accept_history(
        &self,
        user_id: &str,
        endpoint: &str,
        response: keyraft_proto::pb::HistoryResponse,
    ) -> Result<HistoryPage, ClientError> {
        let mut versions = Vec::with_capacity(response.versions.len());
        let mut previous: Option<(u64, u64)> = None;
        for v in response.versions {
            let answer =
                LookupAnswer { endpoint: Some(endpoint.to_owned()), ..self.accept_past(user_id, v.proof, v.epoch)? };
            match &answer.lookup.entry {
                Some((entry, _)) if entry.version == v.version => {}
                _ => {
                    return Err(ClientError::Contradicted(format!(
                        "history lists version {} in epoch {}, but the proof of that epoch shows {}",
                        v.version,
                        v.epoch,
                        answer
                            .lookup
                            .entry
                            .as_ref()
                            .map_or("no entry".into(), |(e, _)| format!("version {}", e.version))
                    )))
                }
            }
            if let Some((version, epoch)) = previous {
                if v.version >= version || v.epoch >= epoch {
                    return Err(ClientError::Contradicted(format!(
                        "history is not newest-first: version {} in epoch {} follows version {version} in epoch {epoch}",
                        v.version, v.epoch
                    )));
                }
            }
            previous = Some((v.version, v.epoch));
            versions.push((v.version, answer));
        }
        Ok(HistoryPage { versions, next_page_token: response.next_page_token, endpoint: endpoint.to_owned() })
    }
}
