//! Watching one identity: the current value, then every change, each with a proof.
//!
//! The client checks the story as well as each proof: epochs strictly increase; a "change"
//! shows a different entry than the one before it; a heartbeat shows the same entry and is
//! fresh (so a server cannot freeze a watcher on an old value for longer than the TTL). When a
//! replica goes away, or sends what another replica may do better (a stale head, an epoch not
//! ratified yet), the watch resumes on the next one after the last epoch it verified.
//! A watch from an epoch no replica has reached is refused at once.

use crate::client::Tried;
use crate::error::status_error;
use crate::lookup::decode_proof;
use crate::{Client, ClientError, LookupAnswer};
use keyraft_core::recovery::PendingRecovery;
use keyraft_core::{backoff, Entry};

/// What an identity's leaf commits to: its entry and the recovery pending for it.
type Leaf = (Option<Entry>, Option<PendingRecovery>);
use keyraft_proto::pb::watch_event::Event;
use keyraft_proto::pb::WatchRequest;

/// How many times in a row a watch may fail to reach any replica before it gives up.
pub const WATCH_RECONNECT_ROUNDS_MAX: u32 = 3;
/// First pause after a round of replicas that all failed, in milliseconds (doubled each
/// round, jittered).
const WATCH_RECONNECT_DELAY_MS: u64 = 500;
/// Longest pause between two rounds, in milliseconds.
const WATCH_RECONNECT_DELAY_MAX_MS: u64 = 4_000;

/// The pause before round `round` (1 for the first retry) of reconnecting: the capped
/// exponential backoff every retry loop uses, spread so that the watchers of a replica that
/// went away do not all come back at once.
fn reconnect_pause(round: u32) -> std::time::Duration {
    let delay_ms = backoff::delay_ms(round.saturating_sub(1), WATCH_RECONNECT_DELAY_MS, WATCH_RECONNECT_DELAY_MAX_MS);
    std::time::Duration::from_millis(backoff::jittered_ms(delay_ms, rand::random()))
}

/// One verified event.
#[derive(Debug, Clone)]
pub enum WatchUpdate {
    /// The identity's value in this epoch differs from the previous event's (or is the
    /// first value of the watch).
    Changed(LookupAnswer),
    /// The identity is unchanged as of this (fresh) epoch.
    Unchanged(LookupAnswer),
}

impl WatchUpdate {
    /// The verified answer.
    pub fn answer(&self) -> &LookupAnswer {
        match self {
            Self::Changed(a) | Self::Unchanged(a) => a,
        }
    }
}

/// An open watch; see [`Client::watch`].
#[derive(Debug)]
pub struct Watch {
    client: Client,
    user_id: String,
    from_epoch: u64,
    stream: Option<tonic::Streaming<keyraft_proto::pb::WatchEvent>>,
    endpoint: usize,
    /// The epoch, entry and pending recovery of the last verified event.
    last: Option<(u64, Leaf)>,
    /// Stream failures since the last verified event.
    failures: u32,
    /// When the last event whose head was within the TTL arrived.
    last_fresh: tokio::time::Instant,
}

impl Watch {
    pub(crate) async fn open(client: Client, user_id: String, from_epoch: u64) -> Result<Self, ClientError> {
        if from_epoch > 0 {
            client.check_epoch_reachable(from_epoch).await?;
        }
        let mut watch = Self {
            client,
            user_id,
            from_epoch,
            stream: None,
            endpoint: 0,
            last: None,
            failures: 0,
            last_fresh: tokio::time::Instant::now(),
        };
        watch.connect().await?;
        Ok(watch)
    }

    /// Opens the stream on the next endpoint that answers, resuming after the last epoch seen.
    async fn connect(&mut self) -> Result<(), ClientError> {
        let from_epoch = self.last.as_ref().map_or(self.from_epoch, |(e, _)| *e);
        let request =
            WatchRequest { user_id: self.user_id.clone(), verifier_threshold: self.client.threshold(), from_epoch };
        let mut last_error = None;
        let mut tried = Tried::new();
        for round in 0..WATCH_RECONNECT_ROUNDS_MAX {
            if round > 0 {
                // A whole round failed: let the realm recover before the next one.
                tokio::time::sleep(reconnect_pause(round)).await;
            }
            // The last round's endpoints are reported, each with its cause.
            tried = Tried::new();
            for i in self.client.endpoint_order() {
                let (addr, c) = &self.client.endpoints[i];
                match c.clone().watch(request.clone()).await {
                    Ok(response) => {
                        self.endpoint = i;
                        self.stream = Some(response.into_inner());
                        return Ok(());
                    }
                    Err(status) => {
                        let e = status_error(addr, &status);
                        // A replica at its stream cap says to watch through another one; a
                        // rate limit is the caller's to wait out, on any replica.
                        let stream_cap = status.code() == tonic::Code::ResourceExhausted
                            && !matches!(e, ClientError::RateLimited { .. });
                        if !e.try_elsewhere() && !stream_cap {
                            return Err(e);
                        }
                        tracing::debug!(endpoint = %addr, error = %e, "watch: trying the next endpoint");
                        self.client.demote(i);
                        tried.record(addr, &e, Some(&status));
                        last_error = Some(e);
                    }
                }
            }
        }
        Err(tried.error(last_error))
    }

    /// The next verified event; `None` only if the server ended the watch cleanly. A replica
    /// that sends nothing fresh for the client's TTL (silent, or replaying old changes) is left
    /// for another; after [`WATCH_RECONNECT_ROUNDS_MAX`] rounds of failures the error is
    /// returned.
    pub async fn next(&mut self) -> Option<Result<WatchUpdate, ClientError>> {
        let ttl = std::time::Duration::from_millis(self.client.realm().epoch_ttl_ms.max(1_000));
        loop {
            // Old changes trickled out one by one do not keep a watch alive: only fresh heads do.
            let silence = ttl.saturating_sub(self.last_fresh.elapsed()).max(std::time::Duration::from_millis(100));
            let limit = self.client.endpoints.len() as u32 * WATCH_RECONNECT_ROUNDS_MAX;
            let Some(stream) = self.stream.as_mut() else {
                if let Err(e) = self.connect().await {
                    return Some(Err(e));
                }
                continue;
            };
            let addr = self.client.endpoints[self.endpoint].0.clone();
            let failure = match tokio::time::timeout(silence, stream.message()).await {
                Ok(Ok(Some(event))) => match self.accept(event.event).await {
                    Ok(update) => {
                        self.failures = 0;
                        let issued = update.answer().lookup.head.issue_time_ms;
                        if !self.client.realm().head_expired(issued, self.client.checker.now_ms()) {
                            self.last_fresh = tokio::time::Instant::now();
                        }
                        return Some(Ok(update));
                    }
                    // Stale, or not ratified yet: another replica may do better.
                    Err(e) if e.try_elsewhere() => e,
                    Err(e) => return Some(Err(e)),
                },
                Ok(Ok(None)) => return None,
                Ok(Err(status)) => {
                    let e = status_error(&addr, &status);
                    // RESOURCE_EXHAUSTED mid-stream: the replica dropped us as a slow reader;
                    // resuming from the last verified epoch loses nothing.
                    if !e.try_elsewhere() && status.code() != tonic::Code::ResourceExhausted {
                        return Some(Err(e));
                    }
                    e
                }
                Err(_) => ClientError::Stale(keyraft_core::VerifyError::HeadExpired {
                    epoch: self.last.as_ref().map_or(0, |(e, _)| *e),
                    issue_time_ms: 0,
                    now_ms: self.client.checker.now_ms(),
                    ttl_ms: self.client.realm().epoch_ttl_ms,
                }),
            };
            self.failures += 1;
            if self.failures >= limit {
                return Some(Err(failure));
            }
            tracing::info!(endpoint = %addr, error = %failure, "watch interrupted; resuming on another replica");
            self.last_fresh = tokio::time::Instant::now();
            self.stream = None;
            self.client.demote(self.endpoint);
        }
    }

    async fn accept(&mut self, event: Option<Event>) -> Result<WatchUpdate, ClientError> {
        let (changed, bytes) = match event {
            Some(Event::Changed(b)) => (true, b),
            Some(Event::Heartbeat(b)) => (false, b),
            None => return Err(ClientError::Contradicted("a watch event carries no event".into())),
        };
        let epoch = decode_proof(&bytes)?.head.epoch;
        // The first value of a watch from "now" must be fresh; replayed changes are past
        // statements, and the heartbeat that follows them brings the watch up to date.
        let fresh = !changed || (self.last.is_none() && self.from_epoch == 0);
        let (client, user_id) = (&self.client, &self.user_id);
        let answer = client
            .following_chain(|| async {
                if fresh {
                    // The watch checks its own order of epochs below; a replica one epoch
                    // behind another call of this client is not a rollback.
                    client.accept_fresh(user_id, bytes.clone(), None)
                } else {
                    client.accept_past(user_id, bytes.clone(), epoch)
                }
            })
            .await?;
        let answer = LookupAnswer { endpoint: Some(self.client.endpoints[self.endpoint].0.clone()), ..answer };
        let entry = answer.lookup.entry.as_ref().map(|(e, _)| e.clone());
        let leaf = (entry.clone(), answer.lookup.pending_recovery.clone());
        if let Some((last_epoch, last_leaf)) = &self.last {
            let last_entry = &last_leaf.0;
            if epoch <= *last_epoch {
                return Err(ClientError::Contradicted(format!(
                    "watch went from epoch {last_epoch} back to epoch {epoch}"
                )));
            }
            // A change is of the leaf: the entry, or the pending recovery its owner must see.
            match (changed, last_leaf == &leaf) {
                (true, true) => {
                    return Err(ClientError::Contradicted(format!(
                        "watch reports a change in epoch {epoch} that shows the same entry (and pending recovery) as epoch {last_epoch}"
                    )))
                }
                (false, false) => {
                    return Err(ClientError::Contradicted(format!(
                        "watch says unchanged in epoch {epoch}, but the entry or pending recovery differs from epoch {last_epoch}: a change was hidden"
                    )))
                }
                _ => {}
            }
            if let (true, Some(old), Some(new)) = (changed, last_entry, &entry) {
                if new.version < old.version || (new.version == old.version && new != old) {
                    return Err(ClientError::Contradicted(format!(
                        "watch went from version {} to version {} in epoch {epoch}",
                        old.version, new.version
                    )));
                }
            }
        } else if epoch <= self.from_epoch {
            return Err(ClientError::Contradicted(format!(
                "watch from epoch {} started with epoch {epoch}",
                self.from_epoch
            )));
        }
        self.last = Some((epoch, leaf));
        Ok(if changed { WatchUpdate::Changed(answer) } else { WatchUpdate::Unchanged(answer) })
    }
}

impl Client {
    /// Watches `user_id`: the current value, then every change, and heartbeats proving it
    /// unchanged. With `from_epoch`, starts with the changes after that epoch (the caller knows
    /// the value at `from_epoch`; the first event is not compared with it).
    pub async fn watch(&self, user_id: &str, from_epoch: u64) -> Result<Watch, ClientError> {
        Watch::open(self.clone(), user_id.to_owned(), from_epoch).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keyraft_core::vrf::VrfSecretKey;
    use keyraft_core::{RealmConfig, RealmFile};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_pause_between_rounds_backs_off_up_to_its_cap() {
        for _ in 0..100 {
            let first = reconnect_pause(1).as_millis() as u64;
            assert!((WATCH_RECONNECT_DELAY_MS / 2..=WATCH_RECONNECT_DELAY_MS).contains(&first), "{first}");
            let second = reconnect_pause(2).as_millis() as u64;
            assert!((WATCH_RECONNECT_DELAY_MS..=2 * WATCH_RECONNECT_DELAY_MS).contains(&second), "{second}");
            assert!(reconnect_pause(u32::MAX).as_millis() as u64 <= WATCH_RECONNECT_DELAY_MAX_MS);
        }
    }

    /// A replica that takes connections and drops them: every round of the watch tries it
    /// again, after a pause, until the rounds run out.
    #[tokio::test]
    async fn a_watch_retries_every_round_with_a_pause_before_giving_up() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        let key = |n: u8| crate::public_key(&ed25519_dalek::SigningKey::from_bytes(&[n; 32]));
        let vrf = VrfSecretKey::from_seed(&[9; 32]).public_key();
        let config = RealmConfig::new("dropping.example", vrf, vec![key(1), key(2), key(3)], vec![]).unwrap();
        let file = RealmFile::new(&config, 60_000, 5_000, vec![addr]);
        let client = Client::new(&file, &[]).unwrap();

        let started = tokio::time::Instant::now();
        let err = client.watch("alice", 0).await.unwrap_err();
        assert!(matches!(err, ClientError::Unavailable(_)), "{err}");
        let rounds = WATCH_RECONNECT_ROUNDS_MAX as usize;
        assert!(accepted.load(Ordering::SeqCst) >= rounds, "{} connections", accepted.load(Ordering::SeqCst));
        // The shortest pauses backoff allows between the rounds.
        let pauses_ms: u64 = (1..WATCH_RECONNECT_ROUNDS_MAX)
            .map(|round| backoff::delay_ms(round - 1, WATCH_RECONNECT_DELAY_MS, WATCH_RECONNECT_DELAY_MAX_MS) / 2)
            .sum();
        assert!(started.elapsed() >= std::time::Duration::from_millis(pauses_ms), "{:?}", started.elapsed());
    }
}
