//! Metrics and health, for Prometheus and for container or load-balancer checks.
//!
//! Every process records through the `metrics` facade into its own Prometheus
//! recorder ([`install`]). A child hands its rendered metrics to the supervisor over its
//! control pipe with each heartbeat; the supervisor keeps the latest of each child
//! ([`Children`]) and, with `[metrics] listen` set, serves them with its own on
//! `/metrics`, and `/healthz`: 200 while every child is up and heartbeating, else 503.
//! Metric names carry their process (`smarthomed_processor_...`), so the texts of the
//! processes never name the same metric twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::alert::Alerter;

/// Bounds of the handler latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0];

/// Installs this process's recorder; `None` if one is installed already.
pub fn install() -> Option<PrometheusHandle> {
    PrometheusBuilder::new().set_buckets(&LATENCY_BUCKETS).ok()?.install_recorder().ok()
}

/// What the supervisor knows of each running child.
#[derive(Default)]
struct ChildReport {
    last_heartbeat: Option<Instant>,
    metrics: String,
}

/// The children's reports, shared by the supervisor's control readers and the endpoint.
#[derive(Clone, Default)]
pub struct Children {
    reports: Arc<Mutex<BTreeMap<&'static str, ChildReport>>>,
    expected: Arc<Mutex<Vec<&'static str>>>,
}

impl Children {
    /// The roles that must be up for the daemon to be healthy.
    pub fn expect(&self, roles: Vec<&'static str>) {
        *self.expected.lock().unwrap_or_else(PoisonError::into_inner) = roles;
    }

    pub fn started(&self, role: &'static str) {
        self.reports.lock().unwrap_or_else(PoisonError::into_inner).insert(role, ChildReport::default());
    }

    pub fn stopped(&self, role: &'static str) {
        self.reports.lock().unwrap_or_else(PoisonError::into_inner).remove(role);
    }

    pub fn heartbeat(&self, role: &'static str, metrics: Option<String>) {
        let mut reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(report) = reports.get_mut(role) {
            report.last_heartbeat = Some(Instant::now());
            if let Some(metrics) = metrics {
                report.metrics = metrics;
            }
        }
    }

    /// Each expected child and whether it is up with a heartbeat younger than `fresh`.
    fn health(&self, fresh: Duration) -> Vec<(&'static str, bool)> {
        let reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        let expected = self.expected.lock().unwrap_or_else(PoisonError::into_inner);
        expected
            .iter()
            .map(|role| {
                let healthy = reports
                    .get(role)
                    .and_then(|report| report.last_heartbeat)
                    .is_some_and(|last| last.elapsed() < fresh);
                (*role, healthy)
            })
            .collect()
    }

    fn metrics(&self) -> String {
        let reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        reports.values().map(|report| report.metrics.as_str()).collect()
    }
}

#[derive(Clone)]
struct Endpoint {
    own: PrometheusHandle,
    alerter: Alerter,
    children: Children,
    fresh: Duration,
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`. A child counts as
/// heartbeating while its last heartbeat is younger than `fresh`.
pub async fn serve(
    listener: TcpListener,
    own: PrometheusHandle,
    alerter: Alerter,
    children: Children,
    fresh: Duration,
    shutdown: CancellationToken,
) {
    let app = Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).with_state(Endpoint {
        own,
        alerter,
        children,
        fresh,
    });
    if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!("the metrics endpoint stopped: {err}");
    }
}

async fn metrics(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    // Counted by the supervisor's own alerter only: children have alerters too, and a
    // metric name must come from one process.
    metrics::counter!("smarthomed_alerts_total", "outcome" => "dropped").absolute(endpoint.alerter.dropped_total());
    let mut text = endpoint.own.render();
    text.push_str(&endpoint.children.metrics());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn healthz(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    let health = endpoint.children.health(endpoint.fresh);
    let healthy = health.iter().all(|(_, up)| *up);
    let children: serde_json::Map<String, serde_json::Value> =
        health.into_iter().map(|(role, up)| (role.to_owned(), json!(if up { "up" } else { "down" }))).collect();
    let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({"healthy": healthy, "children": children}).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_only_while_every_expected_child_heartbeats() {
        let children = Children::default();
        children.expect(vec!["broker", "processor"]);
        children.started("broker");
        children.heartbeat("broker", Some("smarthomed_broker_connections 1\n".into()));
        assert_eq!(children.health(Duration::from_secs(10)), [("broker", true), ("processor", false)]);
        children.started("processor");
        assert_eq!(children.health(Duration::from_secs(10)), [("broker", true), ("processor", false)]);
        children.heartbeat("processor", None);
        assert_eq!(children.health(Duration::from_secs(10)), [("broker", true), ("processor", true)]);
        assert_eq!(children.health(Duration::ZERO), [("broker", false), ("processor", false)]);
        children.stopped("broker");
        assert_eq!(children.health(Duration::from_secs(10))[0], ("broker", false));
        assert_eq!(children.metrics(), "");
    }
}
