//! The command processor child: the brain of smarthomed.
//!
//! It owns one MQTT link (see [`crate::mqtt`]) and, as the process model stands, holds
//! it and logs its state changes; the command handlers, the appliance protocol and
//! the store arrive with the processor issue on top of this link.

use tokio_util::sync::CancellationToken;

use crate::child_context::ChildContext;
use crate::mqtt::{self, Link, MqttError};

pub const ROLE: &str = "processor";

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Mqtt(#[from] MqttError),
}

pub async fn run(context: ChildContext, shutdown: CancellationToken) -> Result<(), ProcessorError> {
    let options = mqtt::client_options(&context.config, ROLE, context.internal_password.as_ref())?;
    let link = Link::new(ROLE, options, &context.config, context.alerter.clone());
    mqtt::run_without_handlers(link, shutdown).await;
    Ok(())
}
