//! What every child process starts with: its config, the password of the daemon's own
//! broker account (handed down by the supervisor), and an [`Alerter`] whose alerts
//! travel to the supervisor over the [`control`] pipe, along with the heartbeats that
//! show the supervisor this process is alive. Its config can change on SIGHUP:
//! [`ChildContext::reloads`] has the newest, and [`rerun_on_reload`] starts a part of
//! the child over when its settings change.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::alert::Alerter;
use crate::config::{Config, Secret};
use crate::control;

/// Environment variable through which the supervisor gives its children the password
/// of the internal MQTT user (`smarthomed`) on the embedded broker.
pub const INTERNAL_PASSWORD_ENV: &str = "SMARTHOMED_INTERNAL_MQTT_PASSWORD";

/// Alerts a child may queue while its control pipe is busy.
const ALERT_QUEUE: usize = 32;

#[derive(Clone)]
pub struct ChildContext {
    /// The config the child started with.
    pub config: Arc<Config>,
    /// The newest config: the one it started with, then each one reloaded on SIGHUP.
    pub reloads: watch::Receiver<Arc<Config>>,
    pub internal_password: Option<Secret>,
    pub alerter: Alerter,
}

impl ChildContext {
    /// Builds the context from the process environment; the control pipe's task runs in
    /// `tasks` until `job_done`.
    pub fn from_env(
        reloads: watch::Receiver<Arc<Config>>,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
        tasks: &TaskTracker,
        job_done: &CancellationToken,
    ) -> Self {
        let config = reloads.borrow().clone();
        let internal_password =
            std::env::var(INTERNAL_PASSWORD_ENV).ok().filter(|password| !password.is_empty()).map(Secret::new);
        let (alerter, queue) = Alerter::channel(ALERT_QUEUE);
        let pipe = control::child_end().unwrap_or_else(|err| {
            tracing::error!("cannot open the control pipe to the supervisor: {err}");
            None
        });
        let interval = control::heartbeat_interval(config.supervisor.heartbeat_timeout());
        tasks.spawn(control::run_child_end(pipe, queue, interval, metrics, job_done.clone()));
        Self { config, reloads, internal_password, alerter }
    }
}

/// Runs `job` with what `settings` picks out of the newest config until it ends or
/// `shutdown`, and starts it over with the new settings whenever a reload changes them.
pub async fn rerun_on_reload<T, Job, Fut>(
    what: &str,
    mut reloads: watch::Receiver<Arc<Config>>,
    settings: impl Fn(&Config) -> T,
    shutdown: CancellationToken,
    mut job: Job,
) where
    T: PartialEq + Clone,
    Job: FnMut(T, CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let current = settings(&reloads.borrow_and_update());
        let stop = shutdown.child_token();
        let running = job(current.clone(), stop.clone());
        tokio::pin!(running);
        loop {
            tokio::select! {
                () = &mut running => return,
                changed = reloads.changed() => {
                    if changed.is_ok() && settings(&reloads.borrow()) == current {
                        continue;
                    }
                    break;
                }
            }
        }
        stop.cancel();
        running.await;
        if shutdown.is_cancelled() {
            return;
        }
        info!("{what} starts over with the reloaded settings");
    }
}
