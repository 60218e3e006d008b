//! The command handlers, one function per command: users, face recognition, appliance
//! controls, schedules and modes, with the old reply shapes (car2home.md section 3),
//! and the robot commands, which go to the robot desk. Every command gets its answer:
//! a reply, or an error reply on the producer's error topic.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, QoS};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::alert::{Alert, Alerter};
use crate::config::ProcessorConfig;
use crate::log_limit::{LogLimiter, Verdict};
use crate::protocol::appliance::Control;
use crate::protocol::command::{self, Code, Command, Rejection, Request};
use crate::protocol::schedule::{MODES, Mode, SCHEDULES, Schedule, find_mode};
use crate::protocol::topics::{self, APPLIANCE_CONTROL_TOPIC, CAMERA_TOPIC};
use crate::store::{DocumentStore, StoreError};

use super::robots::RobotDesk;

pub const USERS: &str = "user_account";

pub struct Handlers<S> {
    store: S,
    robots: RobotDesk,
    client: AsyncClient,
    config: ProcessorConfig,
    alerter: Alerter,
    facer_running: AtomicBool,
    /// Refusals are answered one by one but logged at a bounded rate.
    log_limit: Mutex<LogLimiter>,
}

/// A failure that is the daemon's, not the sender's: it is also alerted.
impl From<StoreError> for Rejection {
    fn from(err: StoreError) -> Self {
        metrics::counter!("smarthomed_processor_store_errors_total").increment(1);
        Rejection::new(Code::StoreError, format!("the store failed: {err}"))
    }
}

impl<S: DocumentStore> Handlers<S> {
    pub fn new(store: S, robots: RobotDesk, client: AsyncClient, config: ProcessorConfig, alerter: Alerter) -> Self {
        Self {
            store,
            robots,
            client,
            config,
            alerter,
            facer_running: AtomicBool::new(false),
            log_limit: Mutex::new(LogLimiter::default()),
        }
    }

    pub fn alerter(&self) -> &Alerter {
        &self.alerter
    }

    /// Reads a command payload.
    pub fn parse(&self, payload: &Bytes) -> Result<Command, Rejection> {
        command::parse(payload, self.config.max_command_bytes)
    }

    /// Answers a command that could not be read.
    pub async fn refuse(&self, rejection: Rejection) {
        // The command's name is not used as a label: an unread one may be anything.
        metrics::counter!("smarthomed_processor_commands_total", "command" => "unreadable", "outcome" => rejection.code.as_str())
            .increment(1);
        let verdict = match self.log_limit.lock() {
            Ok(mut limit) => limit.check(rejection.code.as_str(), Instant::now()),
            Err(_) => Verdict::Log { suppressed_before: 0 },
        };
        if let Verdict::Log { suppressed_before } = verdict {
            info!(code = rejection.code.as_str(), suppressed_before, "rejected command: {}", rejection.message);
        }
        self.reject(&rejection).await;
    }

    /// Carries out one command within `timeout` (plus the recognizer's own time for
    /// `start_facer`), answering with its reply or an error reply.
    pub async fn handle(&self, command: Command, timeout: Duration) {
        let timeout = match command.request {
            Request::StartFacer => timeout + Duration::from_secs(self.config.facer_timeout_secs),
            _ => timeout,
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(timeout, self.carry_out(&command)).await;
        let code = match &outcome {
            Ok(Ok(())) => "ok",
            Ok(Err(rejection)) => rejection.code.as_str(),
            Err(_) => "timeout",
        };
        let name = command.name.clone();
        metrics::counter!("smarthomed_processor_commands_total", "command" => name.clone(), "outcome" => code)
            .increment(1);
        metrics::histogram!("smarthomed_processor_handler_seconds", "command" => name).record(started.elapsed());
        let failure = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(rejection)) => rejection,
            Err(_) => {
                let rejection = Rejection::new(Code::Timeout, format!("not done within {} ms", timeout.as_millis()));
                self.alerter.raise(Alert::new(
                    super::ROLE,
                    format!("command {} timed out", command.name),
                    format!("from {}; {}", command.producer, rejection.message),
                ));
                rejection
            }
        };
        let rejection =
            Rejection { producer: Some(command.producer.clone()), command: Some(command.name.clone()), ..failure };
        if rejection.code == Code::StoreError {
            self.alerter.raise(Alert::new(super::ROLE, "a command failed on the store", rejection.message.clone()));
        }
        self.reject(&rejection).await;
    }

    /// One function per command; this only picks it.
    async fn carry_out(&self, command: &Command) -> Result<(), Rejection> {
        let producer = command.producer.as_str();
        match &command.request {
            Request::Signup { uid, name } => self.signup(producer, uid, name).await,
            Request::Signin { uid } => self.signin(producer, uid).await,
            Request::StartFacer => self.start_facer(producer).await,
            Request::Control(control) => self.control(producer, control).await,
            Request::ScheduleList => self.schedule_list(producer).await,
            Request::ScheduleAdd(schedule) => self.schedule_save(producer, schedule, true).await,
            Request::ScheduleUpdate(schedule) => self.schedule_save(producer, schedule, false).await,
            Request::ScheduleDelete { title } => self.schedule_delete(producer, title).await,
            Request::ModeList => self.mode_list(producer).await,
            Request::ModeAdd(mode) => self.mode_save(producer, mode, true).await,
            Request::ModeUpdate(mode) => self.mode_save(producer, mode, false).await,
            Request::ModeDelete { number } => self.mode_delete(producer, *number).await,
            Request::Robot(request) => self
                .robots
                .ask(producer, request.clone())
                .await
                .map_err(|refused| Rejection::new(Code::Robot(refused.code), refused.message)),
        }
    }

    async fn signup(&self, producer: &str, uid: &str, name: &str) -> Result<(), Rejection> {
        let mut user = serde_json::Map::new();
        user.insert("name".into(), Value::String(name.to_owned()));
        self.store.set(USERS, uid, user).await?;
        info!(producer, uid, "signed up");
        Ok(())
    }

    async fn signin(&self, producer: &str, uid: &str) -> Result<(), Rejection> {
        let Some(mut user) = self.store.get(USERS, uid).await? else {
            return Err(Rejection::new(Code::UnknownUser, format!("no user with UID {uid}")));
        };
        user.insert("Producer".into(), json!("server"));
        user.insert("command".into(), json!("return_name"));
        self.publish(&topics::reply_topic(producer), Value::Object(user).to_string()).await;
        Ok(())
    }

    async fn control(&self, producer: &str, control: &Control) -> Result<(), Rejection> {
        self.publish(APPLIANCE_CONTROL_TOPIC, control.encode()).await;
        info!(producer, control = %control, "control relayed to the appliance");
        Ok(())
    }

    async fn schedule_list(&self, producer: &str) -> Result<(), Rejection> {
        let schedules = self.documents(SCHEDULES).await?;
        self.reply(producer, json!({"command": "schedule_list", "schedules": schedules})).await
    }

    /// `schedule_add` (`adding`) or `schedule_update`.
    async fn schedule_save(&self, producer: &str, schedule: &Schedule, adding: bool) -> Result<(), Rejection> {
        let exists = self.store.get(SCHEDULES, &schedule.title).await?.is_some();
        match (adding, exists) {
            (true, true) => {
                return Err(Rejection::new(
                    Code::AlreadyExists,
                    format!("a schedule titled {:?} exists", schedule.title),
                ));
            }
            (false, false) => {
                return Err(Rejection::new(Code::NotFound, format!("no schedule titled {:?}", schedule.title)));
            }
            _ => {}
        }
        let document = schedule.to_document();
        self.store.set(SCHEDULES, &schedule.title, document.clone()).await?;
        let done = if adding { "schedule_added" } else { "schedule_updated" };
        info!(producer, title = schedule.title, "{done}");
        self.reply(producer, json!({"command": done, "schedule": document})).await
    }

    async fn schedule_delete(&self, producer: &str, title: &str) -> Result<(), Rejection> {
        if !self.store.delete(SCHEDULES, title).await? {
            return Err(Rejection::new(Code::NotFound, format!("no schedule titled {title:?}")));
        }
        info!(producer, title, "schedule_deleted");
        self.reply(producer, json!({"command": "schedule_deleted", "title": title})).await
    }

    async fn mode_list(&self, producer: &str) -> Result<(), Rejection> {
        let modes = self.documents(MODES).await?;
        self.reply(producer, json!({"command": "mode_list", "modes": modes})).await
    }

    /// `mode_add` (`adding`) or `mode_update`.
    async fn mode_save(&self, producer: &str, mode: &Mode, adding: bool) -> Result<(), Rejection> {
        let existing = self.mode_id(mode.number).await?;
        let id = match (adding, existing) {
            (true, Some(_)) => return Err(Rejection::new(Code::AlreadyExists, format!("mode {} exists", mode.number))),
            (false, None) => return Err(Rejection::new(Code::NotFound, format!("no mode {}", mode.number))),
            (true, None) => mode.number.to_string(),
            (false, Some(id)) => id,
        };
        let document = mode.to_document();
        self.store.set(MODES, &id, document.clone()).await?;
        let done = if adding { "mode_added" } else { "mode_updated" };
        info!(producer, number = mode.number, "{done}");
        self.reply(producer, json!({"command": done, "mode": document})).await
    }

    async fn mode_delete(&self, producer: &str, number: u8) -> Result<(), Rejection> {
        let Some(id) = self.mode_id(number).await? else {
            return Err(Rejection::new(Code::NotFound, format!("no mode {number}")));
        };
        self.store.delete(MODES, &id).await?;
        info!(producer, number, "mode_deleted");
        self.reply(producer, json!({"command": "mode_deleted", "modeNum": number})).await
    }

    /// The stored documents of `collection`, as a JSON array.
    async fn documents(&self, collection: &str) -> Result<Vec<Value>, Rejection> {
        let documents = self.store.list(collection).await?;
        Ok(documents.into_iter().map(|(_, document)| Value::Object(document)).collect())
    }

    /// The id of the mode document with `modeNum` = `number`.
    async fn mode_id(&self, number: u8) -> Result<Option<String>, Rejection> {
        let modes = self.store.list(MODES).await?;
        Ok(find_mode(modes, number).map(|(id, _)| id))
    }

    /// Publishes `fields` plus `"Producer":"server"` on the producer's reply topic.
    async fn reply(&self, producer: &str, mut fields: Value) -> Result<(), Rejection> {
        fields["Producer"] = json!("server");
        self.publish(&topics::reply_topic(producer), fields.to_string()).await;
        Ok(())
    }

    /// Signals the camera, runs the recognizer, signals the camera again, and answers
    /// with the recognised user. Only one recognition runs at a time.
    async fn start_facer(&self, producer: &str) -> Result<(), Rejection> {
        let Some((program, args)) = self.config.facer_command.split_first() else {
            return Err(Rejection::new(
                Code::FacerUnavailable,
                "no face recognizer is configured (processor.facer_command)",
            ));
        };
        let Some(running) = FacerRunning::claim(&self.facer_running) else {
            return Err(Rejection::new(Code::FacerBusy, "a face recognition is already running"));
        };
        let sign = |sign: &str| json!({"Producer": "server", "command": "facer_sign", "sign": sign}).to_string();
        self.publish(CAMERA_TOPIC, sign("start")).await;
        let timeout = Duration::from_secs(self.config.facer_timeout_secs);
        let result = recognize(program, args, timeout).await;
        drop(running);
        self.publish(CAMERA_TOPIC, sign("end")).await;

        let result = result.unwrap_or_else(|why| {
            warn!("face recognizer failed: {why}");
            "fail".to_string()
        });
        // The old guard (`result != "none" or result != "fail"`) was always true and
        // looked "none" up as a user; only a real UID is looked up here.
        let name = if result == "none" || result == "fail" {
            "fail".to_string()
        } else {
            match self.store.get(USERS, &result).await {
                Ok(Some(user)) => user.get("name").and_then(Value::as_str).unwrap_or("fail").to_string(),
                Ok(None) => "fail".to_string(),
                Err(StoreError::InvalidName(_)) => "fail".to_string(),
                Err(err) => return Err(err.into()),
            }
        };
        let reply = json!({"Producer": "server", "command": "return_facer", "result": result, "name": name});
        self.publish(&topics::reply_topic(producer), reply.to_string()).await;
        Ok(())
    }

    async fn reject(&self, rejection: &Rejection) {
        self.publish(&rejection.topic(), rejection.reply().to_string()).await;
    }

    async fn publish(&self, topic: &str, payload: String) {
        if let Err(err) = self.client.publish(topic, QoS::AtLeastOnce, false, payload).await {
            warn!(topic, "cannot publish: {err}");
        }
    }
}

/// The claim on the one face recognition that may run at a time. It is released when
/// dropped, so a handler cancelled mid-recognition (by its timeout, or at shutdown)
/// cannot leave every later `start_facer` answered `facer_busy`.
struct FacerRunning<'a>(&'a AtomicBool);

impl<'a> FacerRunning<'a> {
    fn claim(flag: &'a AtomicBool) -> Option<Self> {
        (!flag.swap(true, Ordering::AcqRel)).then_some(Self(flag))
    }
}

impl Drop for FacerRunning<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What the recognizer's environment keeps of the processor's: it needs to find
/// programs and speak the locale, never the daemon's secrets (the internal broker
/// password, environment-provided keys). A recognizer that needs more can be
/// configured as `["env", "VAR=value", "program", ...]`.
const FACER_ENV_KEPT: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "XDG_RUNTIME_DIR"];

/// Runs the recognizer; its last non-empty line of output is the result.
async fn recognize(program: &str, args: &[String], timeout: Duration) -> Result<String, String> {
    let mut command = tokio::process::Command::new(program);
    command.env_clear();
    for var in FACER_ENV_KEPT {
        if let Some(value) = std::env::var_os(var) {
            command.env(var, value);
        }
    }
    let child = command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("cannot start {program}: {err}"))?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("{program} took longer than {} s", timeout.as_secs()))?
        .map_err(|err| format!("{program}: {err}"))?;
    if !output.status.success() {
        return Err(format!("{program} failed with {}", output.status));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("{program} printed nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_recognition_cancelled_midway_releases_its_claim() {
        let flag = AtomicBool::new(false);
        let cancelled = tokio::time::timeout(Duration::from_millis(10), async {
            let _running = FacerRunning::claim(&flag).expect("free");
            assert!(FacerRunning::claim(&flag).is_none(), "a second claim while running");
            std::future::pending::<()>().await;
        })
        .await;
        assert!(cancelled.is_err());
        assert!(FacerRunning::claim(&flag).is_some(), "the claim outlived its cancelled handler");
    }
}
