//! Every MQTT topic smarthomed uses, in MQTT form (the old RabbitMQ routing key
//! `a.b.c` is the topic `a/b/c`). protocol/README.md documents each.

/// Commands from apps and the car arrive on this filter (any `webos/server/...`).
pub const COMMAND_FILTER: &str = "webos/server/#";
/// Controls to the appliance (ESP32): 9 digits.
pub const APPLIANCE_CONTROL_TOPIC: &str = "webos/smarthome/info";
/// The appliance's applied state: 9 digits.
pub const APPLIANCE_STATE_TOPIC: &str = "data/smarthome";
/// Signals to the car's camera.
pub const CAMERA_TOPIC: &str = "webos/camera/info";
/// Data problems, for operators.
pub const DATA_ERROR_TOPIC: &str = "data/error/error";
pub const DATA_WARNING_TOPIC: &str = "data/error/warning";

/// Retained: the last applied appliance state the processor knows (9 digits).
pub const CURRENT_STATE_TOPIC: &str = "smarthomed/appliance/state";
/// Retained: the current recommendation text ("none" when there is nothing to say).
pub const RECOMMENDATION_TOPIC: &str = "smarthomed/recommendation";
/// Retained, from the syncer: the home sensors (`sensor/hometemp`) as JSON.
pub const HOMETEMP_TOPIC: &str = "smarthomed/sensor/hometemp";
/// Retained, from the syncer: the weather (`sensor/openweather`) as JSON.
pub const OPENWEATHER_TOPIC: &str = "smarthomed/sensor/openweather";

pub fn reply_topic(producer: &str) -> String {
    format!("webos/{producer}/info")
}

pub fn error_topic(producer: &str) -> String {
    format!("webos/{producer}/error")
}
