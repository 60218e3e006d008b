//! The JSON commands of the Android app and the webOS car dashboard
//! (car2home.md section 3), the topics they travel on, and the replies.
//!
//! Every command is an object with `Producer` (the sending device) and `command`.
//! [`COMMANDS`] is the one table of what exists: a new device type or command is a
//! row there plus its [`Request`] variant. Parsing never panics; every way a payload
//! can be wrong is a [`Rejection`] with a machine-readable code, and the producer
//! when it is known, so the reply can go to that device.

use serde_json::{Map, Value, json};

use super::appliance::{Control, ParseError};
use super::names::check_name;
use super::schedule::{Mode, Schedule};

use super::topics::{DATA_WARNING_TOPIC, error_topic};

/// The devices that send commands and get replies on `webos/<device>/...`.
pub const PRODUCERS: [&str; 2] = ["android", "car"];

/// A command that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Signup { uid: String, name: String },
    Signin { uid: String },
    StartFacer,
    Control(Control),
    ScheduleList,
    ScheduleAdd(Schedule),
    ScheduleUpdate(Schedule),
    ScheduleDelete { title: String },
    ModeList,
    ModeAdd(Mode),
    ModeUpdate(Mode),
    ModeDelete { number: u8 },
    Robot(RobotRequest),
}

/// The robot commands (protocol/README.md, "Robots"), each with the sender's UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RobotRequest {
    List { uid: String },
    Register(RobotRegistration),
    Remove { uid: String, robot: String },
    Command(RobotCommand),
    Reset { uid: String, robot: String },
}

/// `robot_register`: `robot`, `kind`, `name`, and optionally `operators`, `viewers`
/// (UIDs), `heartbeatSecs` and `onDaemonLost` (continue, pause, stop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotRegistration {
    pub uid: String,
    pub robot: String,
    pub kind: crate::protocol::robot::Kind,
    pub name: String,
    pub operators: Vec<String>,
    pub viewers: Vec<String>,
    pub heartbeat_secs: u32,
    pub on_daemon_lost: crate::protocol::robot::OnDaemonLost,
}

/// `robot_command`: `robot`, `cmdId` (the idempotency key), `action`, `params`, and
/// `timestamp` (RFC 3339, when the app sent it).
#[derive(Debug, Clone, PartialEq)]
pub struct RobotCommand {
    pub uid: String,
    pub robot: String,
    pub cmd_id: String,
    pub action: String,
    pub params: Value,
    pub sent_at: chrono::DateTime<chrono::Utc>,
}

impl Eq for RobotCommand {}

/// One row of the command table.
pub struct CommandSpec {
    pub command: &'static str,
    pub producers: &'static [&'static str],
    pub parse: fn(&Map<String, Value>) -> Result<Request, Rejection>,
}

/// Commands every app may send.
const APPS: &[&str] = &PRODUCERS;

pub const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        command: "signup",
        producers: APPS,
        parse: |fields| Ok(Request::Signup { uid: uid(fields)?, name: text_field(fields, "name")? }),
    },
    CommandSpec { command: "signin", producers: APPS, parse: |fields| Ok(Request::Signin { uid: uid(fields)? }) },
    CommandSpec { command: "start_facer", producers: &["car"], parse: |_| Ok(Request::StartFacer) },
    CommandSpec {
        command: "control",
        producers: APPS,
        parse: |fields| {
            let digits = text_field(fields, "control")?;
            Control::parse(&digits).map(Request::Control).map_err(|err| Rejection::bad_control(&err))
        },
    },
    CommandSpec { command: "schedule_list", producers: APPS, parse: |_| Ok(Request::ScheduleList) },
    CommandSpec {
        command: "schedule_add",
        producers: APPS,
        parse: |fields| schedule(fields).map(Request::ScheduleAdd),
    },
    CommandSpec {
        command: "schedule_update",
        producers: APPS,
        parse: |fields| schedule(fields).map(Request::ScheduleUpdate),
    },
    CommandSpec {
        command: "schedule_delete",
        producers: APPS,
        parse: |fields| {
            let title = text_field(fields, "title")?;
            check_name("title", &title).map_err(|err| Rejection::new(Code::BadField, err.to_string()))?;
            Ok(Request::ScheduleDelete { title })
        },
    },
    CommandSpec { command: "mode_list", producers: APPS, parse: |_| Ok(Request::ModeList) },
    CommandSpec { command: "mode_add", producers: APPS, parse: |fields| mode(fields).map(Request::ModeAdd) },
    CommandSpec { command: "mode_update", producers: APPS, parse: |fields| mode(fields).map(Request::ModeUpdate) },
    CommandSpec {
        command: "mode_delete",
        producers: APPS,
        parse: |fields| match fields.get("modeNum") {
            None => Err(Rejection::new(Code::MissingField, "modeNum is missing")),
            Some(value) => value
                .as_u64()
                .filter(|number| (1..=9).contains(number))
                .map(|number| Request::ModeDelete { number: number as u8 })
                .ok_or_else(|| Rejection::new(Code::BadField, "modeNum must be an integer 1-9")),
        },
    },
    CommandSpec {
        command: "robot_list",
        producers: APPS,
        parse: |fields| Ok(Request::Robot(RobotRequest::List { uid: uid(fields)? })),
    },
    CommandSpec { command: "robot_register", producers: APPS, parse: robot_registration },
    CommandSpec {
        command: "robot_remove",
        producers: APPS,
        parse: |fields| Ok(Request::Robot(RobotRequest::Remove { uid: uid(fields)?, robot: robot_id(fields)? })),
    },
    CommandSpec { command: "robot_command", producers: APPS, parse: robot_command },
    CommandSpec {
        command: "robot_reset",
        producers: APPS,
        parse: |fields| Ok(Request::Robot(RobotRequest::Reset { uid: uid(fields)?, robot: robot_id(fields)? })),
    },
];

fn robot_id(fields: &Map<String, Value>) -> Result<String, Rejection> {
    let robot = text_field(fields, "robot")?;
    if !crate::protocol::robot::valid_robot_id(&robot) {
        return Err(Rejection::new(Code::BadField, "robot must match [A-Za-z0-9_.:-]{1,64} and not be \"all\""));
    }
    Ok(robot)
}

fn uid_list(fields: &Map<String, Value>, key: &'static str) -> Result<Vec<String>, Rejection> {
    match fields.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(uid) if check_name("UID", uid).is_ok() => Ok(uid.clone()),
                _ => Err(Rejection::new(Code::BadField, format!("{key} must be a list of UIDs"))),
            })
            .collect(),
        Some(_) => Err(Rejection::new(Code::BadField, format!("{key} must be a list of UIDs"))),
    }
}

fn robot_registration(fields: &Map<String, Value>) -> Result<Request, Rejection> {
    let kind_name = text_field(fields, "kind")?;
    let kind = serde_json::from_value(Value::String(kind_name.clone()))
        .map_err(|_| Rejection::new(Code::BadField, format!("kind {kind_name:?} is not vacuum, serving or mobile")))?;
    let heartbeat_secs = match fields.get("heartbeatSecs") {
        None => crate::protocol::robot::DEFAULT_HEARTBEAT_SECS,
        Some(value) => value
            .as_u64()
            .filter(|secs| (1..=3600).contains(secs))
            .map(|secs| secs as u32)
            .ok_or_else(|| Rejection::new(Code::BadField, "heartbeatSecs must be an integer 1-3600"))?,
    };
    let on_daemon_lost = match fields.get("onDaemonLost") {
        None => crate::protocol::robot::OnDaemonLost::Pause,
        Some(choice) => serde_json::from_value(choice.clone())
            .map_err(|_| Rejection::new(Code::BadField, "onDaemonLost must be continue, pause or stop"))?,
    };
    let name = text_field(fields, "name")?;
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Rejection::new(Code::BadField, "name must be 1-100 characters"));
    }
    Ok(Request::Robot(RobotRequest::Register(RobotRegistration {
        uid: uid(fields)?,
        robot: robot_id(fields)?,
        kind,
        name,
        operators: uid_list(fields, "operators")?,
        viewers: uid_list(fields, "viewers")?,
        heartbeat_secs,
        on_daemon_lost,
    })))
}

fn robot_command(fields: &Map<String, Value>) -> Result<Request, Rejection> {
    let cmd_id = text_field(fields, "cmdId")?;
    if cmd_id.is_empty() || cmd_id.len() > 64 || !cmd_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(Rejection::new(Code::BadField, "cmdId must be 1-64 letters, digits or dashes (a UUID)"));
    }
    let action = text_field(fields, "action")?;
    let params = fields.get("params").cloned().unwrap_or(Value::Null);
    if !(params.is_null() || params.is_object()) {
        return Err(Rejection::new(Code::BadField, "params must be an object"));
    }
    let stamp = text_field(fields, "timestamp")?;
    let sent_at = chrono::DateTime::parse_from_rfc3339(&stamp)
        .map_err(|err| Rejection::new(Code::BadField, format!("timestamp is not RFC 3339: {err}")))?
        .with_timezone(&chrono::Utc);
    Ok(Request::Robot(RobotRequest::Command(RobotCommand {
        uid: uid(fields)?,
        robot: robot_id(fields)?,
        cmd_id,
        action,
        params,
        sent_at,
    })))
}

/// The `schedule` key: a document in the Android app's format; its title is its id.
fn schedule(fields: &Map<String, Value>) -> Result<Schedule, Rejection> {
    let document = object_field(fields, "schedule")?;
    let title = match document.get("title") {
        Some(Value::String(title)) => title.clone(),
        _ => return Err(Rejection::new(Code::InvalidSchedule, "schedule.title must be a string")),
    };
    check_name("title", &title).map_err(|err| Rejection::new(Code::InvalidSchedule, err.to_string()))?;
    Schedule::from_document(&title, document).map_err(|err| Rejection::new(Code::InvalidSchedule, err.to_string()))
}

/// The `mode` key: a document in the Android app's format.
fn mode(fields: &Map<String, Value>) -> Result<Mode, Rejection> {
    let document = object_field(fields, "mode")?;
    Mode::from_document("(new)", document).map_err(|err| Rejection::new(Code::InvalidMode, err.to_string()))
}

fn object_field<'a>(fields: &'a Map<String, Value>, key: &'static str) -> Result<&'a Map<String, Value>, Rejection> {
    match fields.get(key) {
        Some(Value::Object(document)) => Ok(document),
        Some(other) => {
            Err(Rejection::new(Code::BadField, format!("{key} must be an object, not {}", json_type(other))))
        }
        None => Err(Rejection::new(Code::MissingField, format!("{key} is missing"))),
    }
}

/// The `code` of an error reply: why a command was refused (protocol/README.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    NotJson,
    NotUtf8,
    NotAnObject,
    PayloadTooLarge,
    UnknownProducer,
    MissingField,
    BadField,
    UnknownCommand,
    InvalidControl,
    InvalidSchedule,
    InvalidMode,
    AlreadyExists,
    NotFound,
    UnknownUser,
    FacerBusy,
    FacerUnavailable,
    StoreError,
    Timeout,
    /// Refused by the robot desk, with the robot channel's own code.
    Robot(&'static str),
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::NotJson => "not_json",
            Code::NotUtf8 => "not_utf8",
            Code::NotAnObject => "not_an_object",
            Code::PayloadTooLarge => "payload_too_large",
            Code::UnknownProducer => "unknown_producer",
            Code::MissingField => "missing_field",
            Code::BadField => "bad_field",
            Code::UnknownCommand => "unknown_command",
            Code::InvalidControl => "invalid_control",
            Code::InvalidSchedule => "invalid_schedule",
            Code::InvalidMode => "invalid_mode",
            Code::AlreadyExists => "already_exists",
            Code::NotFound => "not_found",
            Code::UnknownUser => "unknown_user",
            Code::FacerBusy => "facer_busy",
            Code::FacerUnavailable => "facer_unavailable",
            Code::StoreError => "store_error",
            Code::Timeout => "timeout",
            Code::Robot(code) => code,
        }
    }
}

/// A command that cannot be carried out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: Code,
    pub message: String,
    /// The producer, when the payload named a known one: the reply goes there.
    pub producer: Option<String>,
    /// The command, when the payload named one.
    pub command: Option<String>,
}

impl Rejection {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), producer: None, command: None }
    }

    fn bad_control(err: &ParseError) -> Self {
        Self::new(Code::InvalidControl, format!("control: {err}"))
    }

    /// Where the error reply goes: the producer's error topic, or operators' warnings.
    pub fn topic(&self) -> String {
        match &self.producer {
            Some(producer) => error_topic(producer),
            None => DATA_WARNING_TOPIC.to_string(),
        }
    }

    /// The error reply.
    pub fn reply(&self) -> Value {
        error_reply(self.code.as_str(), &self.message, self.command.as_deref())
    }
}

/// `{"Producer":"server","command":"error","code":...,"message":...}`, with the
/// `request` that failed when known.
pub fn error_reply(code: &str, message: &str, request: Option<&str>) -> Value {
    let mut reply = json!({
        "Producer": "server",
        "command": "error",
        "code": code,
        "message": message,
    });
    if let Some(request) = request {
        reply["request"] = Value::String(request.to_owned());
    }
    reply
}

/// A parsed command: who sent it, what it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub producer: String,
    pub name: String,
    pub request: Request,
}

impl Command {
    /// Commands with the same key must take effect in the order they arrived (a
    /// signin right after its signup); commands with different keys, or none, may
    /// overlap. A face recognition has none: a second one while the first runs is
    /// refused as busy, not queued.
    pub fn order_key(&self) -> Option<String> {
        match &self.request {
            Request::Signup { uid, .. } | Request::Signin { uid } => Some(format!("user/{uid}")),
            Request::StartFacer => None,
            Request::Control(_) => Some("appliance".into()),
            Request::ScheduleList
            | Request::ScheduleAdd(_)
            | Request::ScheduleUpdate(_)
            | Request::ScheduleDelete { .. }
            | Request::ModeList
            | Request::ModeAdd(_)
            | Request::ModeUpdate(_)
            | Request::ModeDelete { .. } => Some("schedules".into()),
            Request::Robot(RobotRequest::List { .. }) => None,
            Request::Robot(
                RobotRequest::Register(RobotRegistration { robot, .. })
                | RobotRequest::Remove { robot, .. }
                | RobotRequest::Command(RobotCommand { robot, .. })
                | RobotRequest::Reset { robot, .. },
            ) => Some(format!("robot/{robot}")),
        }
    }
}

/// Reads a command payload of at most `max_bytes`.
pub fn parse(payload: &[u8], max_bytes: usize) -> Result<Command, Rejection> {
    if payload.len() > max_bytes {
        return Err(Rejection::new(
            Code::PayloadTooLarge,
            format!("a command may be at most {max_bytes} bytes, this one is {}", payload.len()),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|err| Rejection::new(Code::NotUtf8, format!("payload is not UTF-8 text: {err}")))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|err| Rejection::new(Code::NotJson, format!("payload is not JSON: {err}")))?;
    let Value::Object(fields) = value else {
        return Err(Rejection::new(Code::NotAnObject, "a command must be a JSON object"));
    };
    let producer = match fields.get("Producer") {
        Some(Value::String(producer)) => producer.clone(),
        Some(_) => return Err(Rejection::new(Code::BadField, "Producer must be a string")),
        None => return Err(Rejection::new(Code::MissingField, "Producer is missing")),
    };
    let known = PRODUCERS.contains(&producer.as_str());
    let with_producer = |mut rejection: Rejection| {
        if known {
            rejection.producer = Some(producer.clone());
        }
        rejection
    };
    let name = match fields.get("command") {
        Some(Value::String(name)) => name.clone(),
        Some(_) => return Err(with_producer(Rejection::new(Code::BadField, "command must be a string"))),
        None => return Err(with_producer(Rejection::new(Code::MissingField, "command is missing"))),
    };
    let with_command = |rejection: Rejection| Rejection { command: Some(name.clone()), ..with_producer(rejection) };
    if !known {
        return Err(with_command(Rejection::new(
            Code::UnknownProducer,
            format!("unknown Producer {producer:?}; known: {}", PRODUCERS.join(", ")),
        )));
    }
    let Some(spec) = COMMANDS.iter().find(|spec| spec.command == name && spec.producers.contains(&producer.as_str()))
    else {
        return Err(with_command(Rejection::new(Code::UnknownCommand, format!("{producer} has no command {name:?}"))));
    };
    let request = (spec.parse)(&fields).map_err(with_command)?;
    Ok(Command { producer, name, request })
}

fn text_field(fields: &Map<String, Value>, key: &'static str) -> Result<String, Rejection> {
    match fields.get(key) {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(other) => Err(Rejection::new(Code::BadField, format!("{key} must be a string, not {}", json_type(other)))),
        None => Err(Rejection::new(Code::MissingField, format!("{key} is missing"))),
    }
}

/// A user id, usable as a document id.
fn uid(fields: &Map<String, Value>) -> Result<String, Rejection> {
    let uid = text_field(fields, "UID")?;
    check_name("UID", &uid).map_err(|err| Rejection::new(Code::BadField, err.to_string()))?;
    Ok(uid)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Command, Rejection> {
        parse(text.as_bytes(), 4096)
    }

    fn rejection(text: &str) -> Rejection {
        parse_text(text).expect_err("should be rejected")
    }

    #[test]
    fn the_reference_signup_parses() {
        let command = parse_text(
            r#"{"Producer":"android","command":"signup","UID":"eAMHGLmiBGO76PIQ54O9CpsqTb23","name":"Hong-Gil-Dong"}"#,
        )
        .unwrap();
        assert_eq!(command.producer, "android");
        assert_eq!(
            command.request,
            Request::Signup { uid: "eAMHGLmiBGO76PIQ54O9CpsqTb23".into(), name: "Hong-Gil-Dong".into() }
        );
    }

    #[test]
    fn every_command_of_the_table_parses_for_its_producers() {
        for (text, expected) in [
            (r#"{"Producer":"car","command":"signin","UID":"u1"}"#, Request::Signin { uid: "u1".into() }),
            (r#"{"Producer":"car","command":"start_facer"}"#, Request::StartFacer),
            (
                r#"{"Producer":"android","command":"control","control":"009060210"}"#,
                Request::Control(Control::parse("009060210").unwrap()),
            ),
        ] {
            assert_eq!(parse_text(text).unwrap().request, expected, "{text}");
        }
    }

    #[test]
    fn bad_payloads_get_codes_and_known_producers_get_the_reply() {
        for (payload, code, producer) in [
            (&b"\xff\xfe"[..], "not_utf8", None),
            (b"not json", "not_json", None),
            (b"[1,2]", "not_an_object", None),
            (br#"{"command":"signin"}"#, "missing_field", None),
            (br#"{"Producer":7,"command":"signin"}"#, "bad_field", None),
            (br#"{"Producer":"android"}"#, "missing_field", Some("android")),
            (br#"{"Producer":"android","command":["x"]}"#, "bad_field", Some("android")),
            (br#"{"Producer":"toaster","command":"signin"}"#, "unknown_producer", None),
            (br#"{"Producer":"android","command":"fly"}"#, "unknown_command", Some("android")),
            (br#"{"Producer":"android","command":"start_facer"}"#, "unknown_command", Some("android")),
            (br#"{"Producer":"car","command":"signin"}"#, "missing_field", Some("car")),
            (br#"{"Producer":"car","command":"signin","UID":5}"#, "bad_field", Some("car")),
            (br#"{"Producer":"car","command":"signin","UID":"a/b"}"#, "bad_field", Some("car")),
            (br#"{"Producer":"car","command":"signup","UID":"u"}"#, "missing_field", Some("car")),
            (br#"{"Producer":"car","command":"control","control":"12345"}"#, "invalid_control", Some("car")),
            (br#"{"Producer":"car","command":"control","control":"0x9060210"}"#, "invalid_control", Some("car")),
        ] {
            let rejection = parse(payload, 4096).expect_err("rejected");
            assert_eq!(rejection.code.as_str(), code, "{}", String::from_utf8_lossy(payload));
            assert_eq!(rejection.producer.as_deref(), producer, "{}", String::from_utf8_lossy(payload));
        }
    }

    #[test]
    fn commands_on_one_user_share_an_order_key() {
        let key = |text: &str| parse_text(text).unwrap().order_key();
        assert_eq!(
            key(r#"{"Producer":"android","command":"signup","UID":"u1","name":"n"}"#),
            key(r#"{"Producer":"car","command":"signin","UID":"u1"}"#)
        );
        assert_ne!(
            key(r#"{"Producer":"car","command":"signin","UID":"u1"}"#),
            key(r#"{"Producer":"car","command":"signin","UID":"u2"}"#)
        );
    }

    #[test]
    fn schedule_and_mode_edits_are_validated_like_stored_documents() {
        let document = crate::protocol::schedule::tests::schedule_document("morning", "0730");
        let add = json!({"Producer": "android", "command": "schedule_add", "schedule": document});
        assert!(matches!(parse_text(&add.to_string()).unwrap().request, Request::ScheduleAdd(_)));
        let mut bad = document.clone();
        bad.insert("startTime".into(), json!("7:30"));
        let rejected =
            rejection(&json!({"Producer": "android", "command": "schedule_update", "schedule": bad}).to_string());
        assert_eq!(rejected.code, Code::InvalidSchedule);
        assert!(rejected.message.contains("startTime"), "{}", rejected.message);
        assert_eq!(rejection(r#"{"Producer":"android","command":"schedule_add","schedule":"x"}"#).code, Code::BadField);
        assert_eq!(rejection(r#"{"Producer":"android","command":"schedule_delete"}"#).code, Code::MissingField);
        assert_eq!(rejection(r#"{"Producer":"android","command":"mode_delete","modeNum":0}"#).code, Code::BadField);
        assert_eq!(
            parse_text(r#"{"Producer":"car","command":"mode_delete","modeNum":3}"#).unwrap().request,
            Request::ModeDelete { number: 3 }
        );
        assert_eq!(
            rejection(r#"{"Producer":"android","command":"mode_add","mode":{"modeName":"x"}}"#).code,
            Code::InvalidMode
        );
    }

    #[test]
    fn oversize_payloads_are_refused_before_parsing() {
        let big = format!(r#"{{"Producer":"android","command":"signup","UID":"u","name":"{}"}}"#, "x".repeat(5000));
        assert_eq!(rejection(&big).code, Code::PayloadTooLarge);
    }

    #[test]
    fn error_replies_name_the_failed_request_and_go_to_the_right_topic() {
        let rejection = rejection(r#"{"Producer":"car","command":"control","control":"0x9060210"}"#);
        assert_eq!(rejection.topic(), "webos/car/error");
        let reply = rejection.reply();
        assert_eq!(reply["Producer"], "server");
        assert_eq!(reply["command"], "error");
        assert_eq!(reply["code"], "invalid_control");
        assert_eq!(reply["request"], "control");
        assert!(reply["message"].as_str().unwrap().contains("position 1"));
        assert_eq!(Rejection::new(Code::NotJson, "x").topic(), "data/error/warning");
    }
}
