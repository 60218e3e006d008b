//! What every child process starts with: its config, the password of the daemon's own
//! broker account (handed down by the supervisor), and an [`Alerter`] whose alerts
//! travel to the supervisor over the [`control`] pipe, along with the heartbeats that
//! show the supervisor this process is alive.

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::alert::Alerter;
use crate::config::{Config, Secret};
use crate::control;
use crate::mqtt::INTERNAL_PASSWORD_ENV;

/// Alerts a child may queue while stderr is busy.
const ALERT_QUEUE: usize = 32;

#[derive(Clone)]
pub struct ChildContext {
    pub config: Arc<Config>,
    pub internal_password: Option<Secret>,
    pub alerter: Alerter,
}

impl ChildContext {
    /// Builds the context from the process environment; the alert forwarder runs in
    /// `tasks` until the last clone of the context is dropped.
    pub fn from_env(config: Config, tasks: &TaskTracker) -> Self {
        let internal_password =
            std::env::var(INTERNAL_PASSWORD_ENV).ok().filter(|password| !password.is_empty()).map(Secret::new);
        let (alerter, queue) = Alerter::channel(ALERT_QUEUE);
        let pipe = control::child_end().unwrap_or_else(|err| {
            tracing::error!("cannot open the control pipe to the supervisor: {err}");
            None
        });
        let interval = control::heartbeat_interval(config.supervisor.heartbeat_timeout());
        tasks.spawn(control::run_child_end(pipe, queue, interval));
        Self { config: Arc::new(config), internal_password, alerter }
    }
}
