//! Is this replica alive, and is it ready to serve? Asked by gRPC health checks
//! (`grpc.health.v1.Health` on the public listener, for grpcurl and Kubernetes' gRPC probes)
//! and by HTTP probes (`/healthz`, `/readyz` on the metrics listener; `keyraft health`).
//!
//! - **live** (`/healthz`): the process answers and its Raft core runs. A replica whose core
//!   stopped exits on its own (`Error::RaftStopped`), so a live answer is the process's.
//! - **ready** (`/readyz`, gRPC `SERVING`): live, a leader is known, at least one epoch is
//!   applied, and the log this node holds is applied but for at most
//!   [`READY_LAG_ENTRIES_MAX`] entries: a node catching up (a restarted node replaying, a new
//!   learner taking a snapshot) answers lookups with old epochs, which clients would leave for
//!   another replica anyway, so a load balancer should not send them here yet.
//!
//! [`readiness`] decides from a snapshot of the node ([`Probe`]): one pure function, the
//! same for both protocols, with table tests.

use crate::node::Node;
use std::sync::Arc;
use std::time::Duration;

/// How many log entries a ready node may hold unapplied (the in-flight tail of a busy realm).
pub const READY_LAG_ENTRIES_MAX: u64 = 100;
/// How often the gRPC health status is brought up to date, in milliseconds.
pub const HEALTH_REFRESH_MS: u64 = 500;
/// The gRPC service name of the public API, as health checks name it.
pub const PUBLIC_SERVICE: &str = "keyraft.v1.Keyraft";

/// What readiness is decided from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The Raft core runs.
    pub raft_running: bool,
    /// A leader is known.
    pub has_leader: bool,
    /// The newest log index this node holds.
    pub last_log_index: u64,
    /// The newest log index it has applied.
    pub applied_index: u64,
    /// The newest epoch it has applied.
    pub last_epoch: u64,
}

impl Probe {
    /// The node's state now.
    pub fn of(node: &Node) -> Self {
        let m = node.raft.metrics().borrow().clone();
        Self {
            raft_running: m.running_state.is_ok(),
            has_leader: m.current_leader.is_some(),
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            last_epoch: node.shared.applied().epoch_state.last_epoch,
        }
    }
}

/// Ready, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Serving.
    Ready,
    /// Alive but not serving, for this reason.
    NotReady(String),
    /// The Raft core stopped (the process is about to exit).
    Dead,
}

/// The decision (see the module's documentation).
pub fn readiness(p: &Probe) -> Readiness {
    if !p.raft_running {
        return Readiness::Dead;
    }
    if !p.has_leader {
        return Readiness::NotReady("no leader known".into());
    }
    if p.last_epoch == 0 {
        return Readiness::NotReady("no epoch applied yet".into());
    }
    let behind = p.last_log_index.saturating_sub(p.applied_index);
    if behind > READY_LAG_ENTRIES_MAX {
        return Readiness::NotReady(format!(
            "catching up: {behind} log entries not applied yet (ready at {READY_LAG_ENTRIES_MAX} or fewer)"
        ));
    }
    Readiness::Ready
}

/// Keeps the gRPC health status of the whole server (`""`) and of [`PUBLIC_SERVICE`] up to
/// date until the task is stopped.
pub async fn report(node: Arc<Node>, reporter: tonic_health::server::HealthReporter) {
    let mut last = None;
    loop {
        let serving = readiness(&Probe::of(&node)) == Readiness::Ready;
        if last != Some(serving) {
            let status =
                if serving { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(PUBLIC_SERVICE, status).await;
            last = Some(serving);
        }
        tokio::time::sleep(Duration::from_millis(HEALTH_REFRESH_MS)).await;
    }
}

/// The metrics listener's probe routes: `/healthz` and `/readyz`, answering 200 with `ok`
/// or 503 with the reason.
pub fn probe_routes(node: Arc<Node>) -> axum::Router {
    let route = |live: bool| {
        let node = node.clone();
        axum::routing::get(move || {
            let node = node.clone();
            async move { probe_answer(&readiness(&Probe::of(&node)), live) }
        })
    };
    axum::Router::new().route("/healthz", route(true)).route("/readyz", route(false))
}

/// The answer to `/healthz` (`live`) or `/readyz` for `readiness`.
fn probe_answer(readiness: &Readiness, live: bool) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    match readiness {
        Readiness::Dead => (StatusCode::SERVICE_UNAVAILABLE, "raft stopped\n".to_owned()),
        Readiness::NotReady(why) if !live => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
        _ => (StatusCode::OK, "ok\n".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READY: Probe =
        Probe { raft_running: true, has_leader: true, last_log_index: 500, applied_index: 450, last_epoch: 7 };

    #[test]
    fn readiness_table() {
        let cases: [(&str, Probe, Option<&str>); 7] = [
            ("ready", READY, None),
            ("at the lag limit", Probe { applied_index: 400, ..READY }, None),
            ("past the lag limit", Probe { applied_index: 399, ..READY }, Some("catching up: 101")),
            ("no leader", Probe { has_leader: false, ..READY }, Some("no leader")),
            ("no epoch", Probe { last_epoch: 0, ..READY }, Some("no epoch")),
            ("applied ahead of the log (after a snapshot)", Probe { applied_index: 600, ..READY }, None),
            ("raft stopped", Probe { raft_running: false, ..READY }, Some("dead")),
        ];
        for (name, probe, want) in cases {
            let got = readiness(&probe);
            match (want, &got) {
                (None, Readiness::Ready) | (Some("dead"), Readiness::Dead) => {}
                (Some(why), Readiness::NotReady(reason)) if reason.contains(why) => {}
                _ => panic!("{name}: {got:?}, wanted {want:?}"),
            }
        }
    }
}
