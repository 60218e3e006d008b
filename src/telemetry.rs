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
use serde::{Deserialize, Serialize};
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

/// What the supervisor knows, as `smarthomed status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    pub up_secs: u64,
    pub children: Vec<ChildStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildStatus {
    pub role: String,
    /// Absent while the child is down (between a crash and its restart).
    pub pid: Option<u32>,
    pub up_secs: Option<u64>,
    pub last_heartbeat_ms_ago: Option<u64>,
    /// Restarts since the daemon started.
    pub restarts: u32,
    /// For the broker: the clients connected now, on all listeners.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub clients: Option<u64>,
}

/// What the supervisor knows of each running child.
struct ChildReport {
    pid: u32,
    since: Instant,
    last_heartbeat: Option<Instant>,
    metrics: String,
}

/// The children's reports, shared by the supervisor's control readers, the endpoint and
/// the status socket.
#[derive(Clone, Default)]
pub struct Children {
    reports: Arc<Mutex<BTreeMap<&'static str, ChildReport>>>,
    expected: Arc<Mutex<Vec<&'static str>>>,
    /// Starts of each role so far; all but the first are restarts.
    starts: Arc<Mutex<BTreeMap<&'static str, u32>>>,
}

impl Children {
    /// The roles that must be up for the daemon to be healthy.
    pub fn expect(&self, roles: Vec<&'static str>) {
        *self.expected.lock().unwrap_or_else(PoisonError::into_inner) = roles;
    }

    pub fn started(&self, role: &'static str, pid: u32) {
        let report = ChildReport { pid, since: Instant::now(), last_heartbeat: None, metrics: String::new() };
        self.reports.lock().unwrap_or_else(PoisonError::into_inner).insert(role, report);
        *self.starts.lock().unwrap_or_else(PoisonError::into_inner).entry(role).or_default() += 1;
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

    /// Each expected child as `smarthomed status` shows it.
    pub fn status(&self) -> Vec<ChildStatus> {
        let reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        let expected = self.expected.lock().unwrap_or_else(PoisonError::into_inner);
        let starts = self.starts.lock().unwrap_or_else(PoisonError::into_inner);
        let millis = |elapsed: Duration| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        expected
            .iter()
            .map(|role| {
                let report = reports.get(role);
                ChildStatus {
                    role: (*role).to_owned(),
                    pid: report.map(|report| report.pid),
                    up_secs: report.map(|report| report.since.elapsed().as_secs()),
                    last_heartbeat_ms_ago: report
                        .and_then(|report| report.last_heartbeat)
                        .map(|at| millis(at.elapsed())),
                    restarts: starts.get(role).map_or(0, |starts| starts.saturating_sub(1)),
                    clients: report.and_then(|report| gauge_total(&report.metrics, BROKER_CONNECTIONS)),
                }
            })
            .collect()
    }

    fn metrics(&self) -> String {
        let reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        reports.values().map(|report| report.metrics.as_str()).collect()
    }
}

/// The broker's gauge of open client connections, one series per listener.
pub const BROKER_CONNECTIONS: &str = "smarthomed_broker_connections";

/// The sum of a metric's series in a Prometheus text rendering; None when absent.
fn gauge_total(text: &str, name: &str) -> Option<u64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    // Gauges are whole connections; a negative sum would be a bug, shown as 0.
    (!values.is_empty()).then(|| values.iter().sum::<f64>().max(0.0).round() as u64)
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
        children.started("broker", 11);
        children.heartbeat("broker", Some("smarthomed_broker_connections 1\n".into()));
        assert_eq!(children.health(Duration::from_secs(10)), [("broker", true), ("processor", false)]);
        children.started("processor", 12);
        assert_eq!(children.health(Duration::from_secs(10)), [("broker", true), ("processor", false)]);
        children.heartbeat("processor", None);
        assert_eq!(children.health(Duration::from_secs(10)), [("broker", true), ("processor", true)]);
        assert_eq!(children.health(Duration::ZERO), [("broker", false), ("processor", false)]);
        children.stopped("broker");
        assert_eq!(children.health(Duration::from_secs(10))[0], ("broker", false));
        assert_eq!(children.metrics(), "");
    }

    #[test]
    fn status_counts_restarts_and_the_brokers_clients_on_every_listener() {
        let children = Children::default();
        children.expect(vec!["broker", "processor"]);
        children.started("broker", 11);
        children.heartbeat(
            "broker",
            Some(
                "# TYPE smarthomed_broker_connections gauge\nsmarthomed_broker_connections{listener=\"mqtt\"} 3\n\
                 smarthomed_broker_connections{listener=\"websocket\"} 2\nsmarthomed_broker_connections_total 9\n"
                    .into(),
            ),
        );
        children.started("processor", 12);
        children.stopped("processor");
        children.started("processor", 13);
        let status = children.status();
        assert_eq!((status[0].pid, status[0].restarts, status[0].clients), (Some(11), 0, Some(5)));
        assert!(status[0].last_heartbeat_ms_ago.is_some());
        assert_eq!((status[1].pid, status[1].restarts, status[1].clients), (Some(13), 1, None));
        children.stopped("processor");
        assert_eq!((children.status()[1].pid, children.status()[1].up_secs), (None, None));
    }
}
