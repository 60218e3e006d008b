//! The processor's side of Home Assistant ([`crate::protocol::homeassistant`]): it
//! publishes the retained discovery configs at start and again whenever Home Assistant
//! announces itself, and turns Home Assistant's commands into the same `control`
//! command an app sends, so they are checked, ordered and logged alike.

use rumqttc::{AsyncClient, QoS};
use tracing::{info, warn};

use crate::protocol::appliance::State;
use crate::protocol::command::{Code, Command, Rejection, Request};
use crate::protocol::homeassistant;

/// The producer Home Assistant's commands carry: errors go to `webos/homeassistant/error`.
pub const PRODUCER: &str = "homeassistant";

pub async fn publish_discovery(client: &AsyncClient, prefix: &str) {
    let configs = homeassistant::discovery(prefix);
    let count = configs.len();
    for (topic, config) in configs {
        if let Err(err) = client.publish(topic, QoS::AtLeastOnce, true, config.to_string()).await {
            warn!("cannot publish the Home Assistant discovery: {err}");
            return;
        }
    }
    info!(prefix, entities = count, "Home Assistant discovery published");
}

/// The `control` command for Home Assistant's `payload` on `topic`, built on `current`.
pub fn command(topic: &str, payload: &[u8], current: &State) -> Result<Command, Rejection> {
    let text = String::from_utf8_lossy(payload);
    match homeassistant::control_for(topic, &text, current) {
        Ok(control) => {
            Ok(Command { producer: PRODUCER.into(), name: "control".into(), request: Request::Control(control) })
        }
        Err(err) => Err(Rejection {
            code: Code::InvalidControl,
            message: err.to_string(),
            producer: Some(PRODUCER.into()),
            command: Some("control".into()),
        }),
    }
}
