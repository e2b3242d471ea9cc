//! A replica's Prometheus metrics, served as text on the metrics listener (`GET /metrics`).
//!
//! One registry per replica (no process-wide state: several replicas share a process in the
//! tests and the simulation). Two kinds of values:
//!
//! - **recorded as they happen**: request durations by listener, RPC and gRPC status (the
//!   acceptor records each request when its answer ends), epoch apply times and updates per
//!   epoch (the state machine, at each epoch it closes);
//! - **read at scrape time** from what `keyraft admin status` reports
//!   ([`crate::peer_service::status`], one source for both): Raft term, leader, log indexes,
//!   each follower's replication lag (on the leader), epochs, pending updates, each verifier's
//!   ratification lag, readiness.
//!
//! Names follow Prometheus conventions: the `keyraft_` prefix, units in the name (`_seconds`,
//! `_entries`, `_epochs`), `_total` for counters. Label values are bounded: an RPC label is a
//! method keyraft serves (read from the descriptors), `unimplemented` for another gRPC path,
//! and `other` for anything else (HTTP clients, a refused request to an unknown path), so a
//! client cannot grow the label set.

use crate::node::Node;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Labels, as pairs.
type Labels = Vec<(String, String)>;

/// The gRPC status code UNIMPLEMENTED.
const GRPC_UNIMPLEMENTED: &str = "12";

/// Every gRPC method keyraft serves (`/package.Service/Method`): the public and peer APIs,
/// health checking and reflection, read from their descriptors; and the HTTP gateway's routes.
fn served_methods() -> std::collections::BTreeSet<String> {
    use prost::Message as _;
    let sets = [
        keyraft_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    ];
    let mut methods: std::collections::BTreeSet<String> =
        crate::gateway::ROUTES.iter().map(|r| (*r).to_owned()).collect();
    for bytes in sets {
        // Compiled in: a descriptor that does not decode leaves its methods labelled `other`.
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else { continue };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                for method in service.method {
                    methods.insert(format!("/{package}.{name}/{}", method.name.unwrap_or_default()));
                }
            }
        }
    }
    methods
}

/// A replica's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// The `rpc` label's values.
    methods: std::collections::BTreeSet<String>,
    requests: Family<Labels, Histogram>,
    epoch_apply: Histogram,
    epoch_updates: Histogram,
    raft_term: Gauge,
    raft_leader_id: Gauge,
    raft_is_leader: Gauge,
    raft_last_log_index: Gauge,
    raft_applied_index: Gauge,
    raft_snapshot_index: Gauge,
    replication_lag: Family<Labels, Gauge>,
    epoch: Gauge,
    epoch_ratified: Gauge,
    pending_updates: Gauge,
    ratification_lag: Family<Labels, Gauge>,
    ready: Gauge,
    snapshot_duration: Family<Labels, Histogram>,
    snapshot_bytes: Family<Labels, Gauge>,
    streams_open: Family<Labels, Gauge>,
    /// The public service's open-stream counters (`Watch`, `VerifierStream`).
    stream_counters: Mutex<Vec<(&'static str, Arc<AtomicUsize>)>>,
    connections_open: Family<Labels, Gauge>,
    storage_bytes: Family<Labels, Gauge>,
    retention: RetentionMetrics,
    /// The data directory whose stores are sized at each scrape.
    data_dir: Option<std::path::PathBuf>,
}

/// The stores of a data directory, sized in `keyraft_storage_bytes{store}`.
const STORES: [&str; 3] = ["log", "state", "snapshots"];

/// The bytes the files under `path` occupy on disk, their allocated blocks (0 if it is absent):
/// holes that retention punched in the value log are not counted.
fn dir_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.blocks() * 512),
            Err(_) => 0,
        })
        .sum()
}

/// Retention's metrics (`storage.retention_epochs`).
#[derive(Debug)]
struct RetentionMetrics {
    trees_from: Gauge,
    pruned_chunks: Counter,
    prune_duration: Histogram,
}

impl RetentionMetrics {
    fn register(r: &mut Registry) -> Self {
        let trees_from = Gauge::default();
        r.register(
            "retention_trees_from_epoch",
            "The oldest epoch whose tree this replica keeps (storage.retention_epochs; 0: every epoch's)",
            trees_from.clone(),
        );
        let pruned_chunks = Counter::default();
        r.register("retention_pruned_chunks", "Tree chunks of past epochs deleted by retention", pruned_chunks.clone());
        let prune_duration = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        r.register_with_unit(
            "retention_prune_duration",
            "One round of retention: walking the horizon's tree and deleting what it no longer reaches",
            Unit::Seconds,
            prune_duration.clone(),
        );
        Self { trees_from, pruned_chunks, prune_duration }
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("keyraft");
        let requests = Family::<Labels, Histogram>::new_with_constructor(|| {
            // 100 us to about 100 s.
            Histogram::new(exponential_buckets(0.000_1, 4.0, 11))
        });
        r.register_with_unit(
            "request_duration",
            "Requests by listener, rpc and gRPC status code, until their answer ended",
            Unit::Seconds,
            requests.clone(),
        );
        let epoch_apply = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        r.register_with_unit(
            "epoch_apply",
            "Time to apply an epoch's delimiter (tree, head)",
            Unit::Seconds,
            epoch_apply.clone(),
        );
        let epoch_updates = Histogram::new(exponential_buckets(1.0, 4.0, 10));
        r.register("epoch_updates", "Updates per epoch", epoch_updates.clone());
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let raft_term = gauge(&mut r, "raft_term", "The Raft term");
        let raft_leader_id = gauge(&mut r, "raft_leader_id", "The leader's node id (0: none known)");
        let raft_is_leader = gauge(&mut r, "raft_is_leader", "1 on the leader");
        let raft_last_log_index = gauge(&mut r, "raft_last_log_index", "The newest log index this node holds");
        let raft_applied_index = gauge(&mut r, "raft_applied_index", "The newest log index this node applied");
        let raft_snapshot_index = gauge(&mut r, "raft_snapshot_index", "The log index of the newest snapshot");
        let replication_lag = Family::<Labels, Gauge>::default();
        r.register(
            "raft_replication_lag_entries",
            "On the leader: how many log entries each member trails by",
            replication_lag.clone(),
        );
        let epoch = gauge(&mut r, "epoch", "The newest epoch applied");
        let epoch_ratified = gauge(&mut r, "epoch_ratified", "The newest epoch the replica majority signed");
        let pending_updates = gauge(&mut r, "pending_updates", "Updates applied to the log but not yet in an epoch");
        let ratification_lag = Family::<Labels, Gauge>::default();
        r.register(
            "verifier_ratification_lag_epochs",
            "How many epochs each verifier's newest ratification trails the newest signed epoch",
            ratification_lag.clone(),
        );
        let ready = gauge(&mut r, "ready", "1 when the replica is ready to serve (see /readyz)");
        let snapshot_duration =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.01, 2.0, 14)));
        r.register_with_unit(
            "snapshot_duration",
            "Snapshots built (a consistent dump of the state) and installed (received from the leader)",
            Unit::Seconds,
            snapshot_duration.clone(),
        );
        let snapshot_bytes = Family::<Labels, Gauge>::default();
        r.register_with_unit(
            "snapshot",
            "The size of the newest snapshot built or installed",
            Unit::Bytes,
            snapshot_bytes.clone(),
        );
        let streams_open = Family::<Labels, Gauge>::default();
        r.register("streams_open", "Open Watch and VerifierStream streams", streams_open.clone());
        let connections_open = Family::<Labels, Gauge>::default();
        r.register("connections_open", "Open connections per listener", connections_open.clone());
        let storage_bytes = Family::<Labels, Gauge>::default();
        r.register_with_unit(
            "storage",
            "Bytes on disk per store of the data directory: the Raft log, the state, the snapshots",
            Unit::Bytes,
            storage_bytes.clone(),
        );
        let retention = RetentionMetrics::register(&mut r);
        Self {
            registry: Mutex::new(r),
            methods: served_methods(),
            requests,
            epoch_apply,
            epoch_updates,
            raft_term,
            raft_leader_id,
            raft_is_leader,
            raft_last_log_index,
            raft_applied_index,
            raft_snapshot_index,
            replication_lag,
            epoch,
            epoch_ratified,
            pending_updates,
            ratification_lag,
            ready,
            snapshot_duration,
            snapshot_bytes,
            streams_open,
            stream_counters: Mutex::new(Vec::new()),
            connections_open,
            storage_bytes,
            retention,
            data_dir: None,
        }
    }

    /// Sizes the stores under `data_dir` at each scrape.
    #[must_use]
    pub fn with_data_dir(self, data_dir: std::path::PathBuf) -> Self {
        Self { data_dir: Some(data_dir), ..self }
    }

    /// The gauge of `listener`'s open connections, which the acceptor moves.
    pub fn connections(&self, listener: &str) -> Gauge {
        self.connections_open.get_or_create(&vec![("listener".to_owned(), listener.to_owned())]).clone()
    }

    /// Counts the open streams of `kind` (`watch`, `verifier`) from `open` at each scrape.
    pub fn count_streams(&self, kind: &'static str, open: Arc<AtomicUsize>) {
        self.stream_counters.lock().unwrap_or_else(PoisonError::into_inner).push((kind, open));
    }

    /// Records a snapshot `built` or `installed` in `took`, of `bytes`.
    pub fn snapshot(&self, how: &str, took: Duration, bytes: u64) {
        let labels = vec![("how".to_owned(), how.to_owned())];
        self.snapshot_duration.get_or_create(&labels).observe(took.as_secs_f64());
        self.snapshot_bytes.get_or_create(&labels).set(gauge_value(bytes));
    }

    /// The oldest epoch whose tree this replica keeps.
    pub fn retention_trees_from(&self, trees_from: u64) {
        self.retention.trees_from.set(gauge_value(trees_from));
    }

    /// Records a round of retention that kept the trees from `trees_from` on.
    pub fn pruned(&self, trees_from: u64, chunks: usize, took: Duration) {
        self.retention_trees_from(trees_from);
        self.retention.pruned_chunks.inc_by(chunks as u64);
        self.retention.prune_duration.observe(took.as_secs_f64());
    }

    /// Records a request of `listener` to `path` that ended with gRPC status `code` (`None`:
    /// no gRPC status, e.g. an HTTP client or a call the client abandoned) after `took`.
    pub fn request(&self, listener: &str, path: &str, code: Option<&str>, took: Duration) {
        let rpc = match code {
            _ if self.methods.contains(path) => path,
            Some(GRPC_UNIMPLEMENTED) => "unimplemented",
            _ => "other",
        };
        let labels = vec![
            ("listener".to_owned(), listener.to_owned()),
            ("rpc".to_owned(), rpc.to_owned()),
            ("code".to_owned(), code.unwrap_or("none").to_owned()),
        ];
        self.requests.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Records an epoch applied in `took` with `updates` updates.
    pub fn epoch_applied(&self, took: Duration, updates: u64) {
        self.epoch_apply.observe(took.as_secs_f64());
        #[allow(clippy::cast_precision_loss)] // a histogram bucket, not an exact count
        self.epoch_updates.observe(updates as f64);
    }

    /// Reads the scrape-time values from `node`, then the whole registry as Prometheus text.
    pub fn scrape(&self, node: &Node) -> String {
        let s = crate::peer_service::status(node);
        self.raft_term.set(gauge_value(s.term));
        self.raft_leader_id.set(gauge_value(if s.has_leader { s.leader_id } else { 0 }));
        self.raft_is_leader.set(i64::from(s.has_leader && s.leader_id == s.node_id));
        self.raft_last_log_index.set(gauge_value(s.last_log_index));
        self.raft_applied_index.set(gauge_value(s.applied_index));
        self.raft_snapshot_index.set(gauge_value(s.snapshot_index));
        self.replication_lag.clear();
        if s.has_leader && s.leader_id == s.node_id {
            for n in &s.nodes {
                let labels = vec![("node".to_owned(), n.id.to_string())];
                self.replication_lag.get_or_create(&labels).set(gauge_value(n.lag));
            }
        }
        self.epoch.set(gauge_value(s.last_epoch));
        self.epoch_ratified.set(gauge_value(s.ratified_epoch));
        self.pending_updates.set(gauge_value(s.pending_updates));
        self.ratification_lag.clear();
        for v in &s.verifiers {
            let labels = vec![("verifier".to_owned(), hex::encode(&v.key))];
            self.ratification_lag
                .get_or_create(&labels)
                .set(gauge_value(s.ratified_epoch.saturating_sub(v.latest_ratified_epoch)));
        }
        let ready = crate::health::readiness(&crate::health::Probe::of(node)) == crate::health::Readiness::Ready;
        self.ready.set(i64::from(ready));
        for (kind, open) in self.stream_counters.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let labels = vec![("kind".to_owned(), (*kind).to_owned())];
            self.streams_open.get_or_create(&labels).set(gauge_value(open.load(Ordering::Relaxed) as u64));
        }
        if let Some(dir) = &self.data_dir {
            for store in STORES {
                let labels = vec![("store".to_owned(), store.to_owned())];
                self.storage_bytes.get_or_create(&labels).set(gauge_value(dir_bytes(&dir.join(store))));
            }
        }
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }
}

/// The metrics listener's `/metrics` route.
pub fn metrics_route(node: Arc<Node>, metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (node, metrics) = (node.clone(), metrics.clone());
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    metrics.scrape(&node),
                )
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_labels_stay_bounded() {
        let m = Metrics::new();
        m.request("public", "/keyraft.v1.Keyraft/Lookup", Some("0"), Duration::from_millis(3));
        m.request("public", "/keyraft.v1.Keyraft/Nonsense-1", Some("12"), Duration::from_millis(1));
        m.request("public", "/keyraft.v1.Keyraft/Nonsense-2", Some("12"), Duration::from_millis(1));
        m.request("public", "/any/http/path", None, Duration::from_millis(1));
        m.request("public", "/keyraft.v1.Keyraft/Nonsense-3", Some("8"), Duration::from_millis(1));
        m.request("peer", "/keyraft.peer.v1.Peer/AppendEntries", Some("0"), Duration::from_millis(1));
        m.request("public", "/grpc.health.v1.Health/Check", Some("0"), Duration::from_millis(1));
        let mut text = String::new();
        encode(&mut text, &m.registry.lock().unwrap_or_else(PoisonError::into_inner)).unwrap_or_default();
        assert!(text.contains(r#"keyraft_request_duration_seconds_count{listener="public",rpc="/keyraft.v1.Keyraft/Lookup",code="0"} 1"#), "{text}");
        assert!(text.contains(r#"rpc="unimplemented",code="12"} 2"#), "{text}");
        assert!(text.contains(r#"rpc="other",code="none"} 1"#), "{text}");
        assert!(text.contains(r#"rpc="other",code="8"} 1"#), "{text}");
        assert!(text.contains(r#"rpc="/keyraft.peer.v1.Peer/AppendEntries",code="0"} 1"#), "{text}");
        assert!(text.contains(r#"rpc="/grpc.health.v1.Health/Check",code="0"} 1"#), "{text}");
        assert!(!text.contains("Nonsense") && !text.contains("/any/http"), "{text}");

        m.snapshot("built", Duration::from_millis(250), 4_096);
        let open = Arc::new(AtomicUsize::new(3));
        m.count_streams("watch", open);
        let mut text = String::new();
        encode(&mut text, &m.registry.lock().unwrap_or_else(PoisonError::into_inner)).unwrap_or_default();
        assert!(text.contains(r#"keyraft_snapshot_bytes{how="built"} 4096"#), "{text}");
        assert!(text.contains(r#"keyraft_snapshot_duration_seconds_count{how="built"} 1"#), "{text}");
    }
}
