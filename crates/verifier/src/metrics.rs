//! The verifier's Prometheus metrics, on its own metrics listener (`metrics_listen`):
//! `GET /metrics` and `GET /healthz`.
//!
//! A verifier that finds the realm lying writes evidence, sets `keyraft_verifier_halted` and
//! exits; a supervisor restarting it sees it refuse to start until an operator looks. Alert on
//! a verifier that is not up, on `halted`, and on a growing `lag_epochs`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The file in the data directory naming the metrics listener's address once bound (its port
/// may be chosen by the OS).
pub const LISTEN_FILE: &str = "listen.json";

/// A verifier's metrics.
#[derive(Debug)]
pub struct VerifierMetrics {
    registry: Mutex<Registry>,
    verified_epoch: Gauge,
    realm_epoch: Gauge,
    lag: Gauge,
    check: Histogram,
    updates: Counter,
    halted: Gauge,
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Default for VerifierMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl VerifierMetrics {
    /// Every metric, registered.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("keyraft_verifier");
        let verified_epoch = Gauge::default();
        r.register("verified_epoch", "The newest epoch this verifier recomputed and accepted", verified_epoch.clone());
        let realm_epoch = Gauge::default();
        r.register("realm_epoch", "The newest epoch the serving replica announced", realm_epoch.clone());
        let lag = Gauge::default();
        r.register("lag_epochs", "Epochs the realm has that this verifier has not verified yet", lag.clone());
        let check = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        r.register_with_unit("epoch_check", "Time to recompute and check one epoch", Unit::Seconds, check.clone());
        let updates = Counter::default();
        r.register("updates_checked", "Updates checked", updates.clone());
        let halted = Gauge::default();
        r.register("halted", "1 once this verifier found the realm lying (it then stops)", halted.clone());
        Self { registry: Mutex::new(r), verified_epoch, realm_epoch, lag, check, updates, halted }
    }

    /// The serving replica announced `epoch`.
    pub fn realm_at(&self, epoch: u64) {
        self.realm_epoch.set(self.realm_epoch.get().max(gauge_value(epoch)));
        self.update_lag();
    }

    /// Epoch `epoch`, of `updates` updates, was checked in `took`.
    pub fn verified(&self, epoch: u64, updates: usize, took: Duration) {
        self.verified_epoch.set(gauge_value(epoch));
        self.realm_at(epoch);
        self.check.observe(took.as_secs_f64());
        self.updates.inc_by(updates as u64);
    }

    /// The realm lied.
    pub fn halt(&self) {
        self.halted.set(1);
    }

    fn update_lag(&self) {
        self.lag.set((self.realm_epoch.get() - self.verified_epoch.get()).max(0));
    }

    /// The registry as Prometheus text.
    pub fn text(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry.lock().unwrap_or_else(PoisonError::into_inner));
        text
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<VerifierMetrics>,
    stop: tokio_util::sync::CancellationToken,
) {
    let routes = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.text(),
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    if let Err(e) = axum::serve(listener, routes).with_graceful_shutdown(stop.cancelled_owned()).await {
        tracing::error!(error = %e, "the metrics listener stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_what_the_realm_has_beyond_what_was_verified() {
        let m = VerifierMetrics::new();
        m.realm_at(10);
        m.verified(4, 3, Duration::from_millis(5));
        assert_eq!(m.lag.get(), 6);
        m.verified(10, 0, Duration::from_millis(5));
        assert_eq!(m.lag.get(), 0);
        m.realm_at(9);
        assert_eq!(m.realm_epoch.get(), 10, "an older announcement does not move it back");
        let text = m.text();
        assert!(text.contains("keyraft_verifier_updates_checked_total 3"), "{text}");
        assert!(text.contains("keyraft_verifier_halted 0"), "{text}");
    }
}
