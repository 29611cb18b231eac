//! Prometheus metrics (prefix `strata_operator_`) and the /metrics + /healthz endpoint.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use warp::Filter;

use crate::{Error, Result};

/// Prefix of every metric name.
pub const PREFIX: &str = "strata_operator";
/// `strata_operator_reconciles_total{controller}`: reconciles started.
pub const RECONCILES: &str = "reconciles";
/// `strata_operator_reconcile_failures_total{controller,reason}`: reconciles that failed.
pub const RECONCILE_FAILURES: &str = "reconcile_failures";
/// `strata_operator_reconcile_duration_seconds{controller}`: time per reconcile.
pub const RECONCILE_DURATION: &str = "reconcile_duration_seconds";
/// `strata_operator_leader`: 1 while this replica holds the Lease.
pub const LEADER: &str = "leader";
/// `strata_operator_dataset_conditions_total{reason}`: datasets that got a failing condition.
pub const DATASET_PROBLEMS: &str = "dataset_problems";

/// Label of per-controller metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    /// `dataset`, `cachepolicy` or `nodes`.
    pub controller: &'static str,
}

/// Labels of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `dataset`, `cachepolicy` or `nodes`.
    pub controller: &'static str,
    /// The error's short reason, e.g. `Conflict`, `ApiUnavailable`.
    pub reason: String,
}

/// Label of the dataset problem counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The condition reason, e.g. `SecretNotFound`.
    pub reason: String,
}

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// Reconciles started, per controller.
    pub reconciles: Family<ControllerLabel, Counter>,
    /// Failed reconciles, per controller and reason.
    pub failures: Family<FailureLabels, Counter>,
    /// Reconcile durations, per controller.
    pub duration: Family<ControllerLabel, Histogram>,
    /// 1 while leader.
    pub leader: Gauge,
    /// Failing conditions given to datasets, by reason.
    pub dataset_problems: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let reconciles = Family::<ControllerLabel, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duration = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        let leader = Gauge::default();
        let dataset_problems = Family::<ReasonLabel, Counter>::default();
        registry.register(RECONCILES, "Reconciles started", reconciles.clone());
        registry.register(
            RECONCILE_FAILURES,
            "Reconciles that failed, by reason",
            failures.clone(),
        );
        registry.register(
            RECONCILE_DURATION,
            "Time spent in one reconcile",
            duration.clone(),
        );
        registry.register(
            LEADER,
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            DATASET_PROBLEMS,
            "Failing conditions given to Datasets, by reason",
            dataset_problems.clone(),
        );
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            reconciles,
            failures,
            duration,
            leader,
            dataset_problems,
        }
    }

    /// Counts a started reconcile.
    pub fn reconciled(&self, controller: &'static str, took: Duration) {
        let label = ControllerLabel { controller };
        self.reconciles.get_or_create(&label).inc();
        self.duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    /// Counts a failed reconcile.
    pub fn failed(&self, controller: &'static str, reason: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                controller,
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Reconciles started so far by one controller (used by tests and logs).
    pub fn reconcile_count(&self, controller: &'static str) -> u64 {
        self.reconciles
            .get_or_create(&ControllerLabel { controller })
            .get()
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// Binds `addr` (port 0 picks a free port) and returns the bound address
    /// and the server future (serves /metrics and /healthz until dropped).
    pub async fn serve(
        &self,
        addr: SocketAddr,
    ) -> Result<(SocketAddr, impl std::future::Future<Output = ()> + use<>)> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::MetricsBind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| Error::MetricsBind { addr, source })?;
        let metrics = self.clone();
        let metrics_route = warp::path("metrics").and(warp::path::end()).map(move || {
            warp::reply::with_header(
                metrics.encode(),
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        });
        let health = warp::path("healthz").and(warp::path::end()).map(|| "ok");
        let server = warp::serve(metrics_route.or(health))
            .incoming(listener)
            .run();
        Ok((bound, server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prefixed_and_counted() {
        let metrics = Metrics::new();
        metrics.reconciled("dataset", Duration::from_millis(3));
        metrics.failed("dataset", "Conflict");
        let text = metrics.encode();
        assert!(
            text.contains("strata_operator_reconciles_total{controller=\"dataset\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "strata_operator_reconcile_failures_total{controller=\"dataset\",reason=\"Conflict\"} 1"
            ),
            "{text}"
        );
        assert_eq!(metrics.reconcile_count("dataset"), 1);
    }
}
