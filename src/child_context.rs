//! What every child process starts with: its config, the password of the daemon's own
//! broker account (handed down by the supervisor), and an [`Alerter`] whose alerts
//! travel to the supervisor as marked lines on stderr.

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::alert::{self, Alerter};
use crate::config::{Config, Secret};
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
        let (alerter, mut queue) = Alerter::channel(ALERT_QUEUE);
        tasks.spawn(async move {
            while let Some(alert) = queue.recv().await {
                alert::report_to_supervisor(&alert);
            }
        });
        Self { config: Arc::new(config), internal_password, alerter }
    }
}
