//! The syncer child: the only process that talks to the Firebase Realtime Database
//! and the weather service, bridging them to the processor over MQTT.
//!
//! As the process model stands it holds its MQTT link and logs its state changes;
//! the database and weather sync arrive with the Firebase issue on top of this link.

use tokio_util::sync::CancellationToken;

use crate::child_context::ChildContext;
use crate::mqtt::{self, Link, MqttError};

pub const ROLE: &str = "syncer";

#[derive(Debug, thiserror::Error)]
pub enum SyncerError {
    #[error(transparent)]
    Mqtt(#[from] MqttError),
}

pub async fn run(context: ChildContext, shutdown: CancellationToken) -> Result<(), SyncerError> {
    let options = mqtt::client_options(&context.config, ROLE, context.internal_password.as_ref())?;
    let link = Link::new(ROLE, options, &context.config, context.alerter.clone());
    mqtt::run_without_handlers(link, shutdown).await;
    Ok(())
}
