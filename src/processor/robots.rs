//! The robot channel in the processor: the [`Fleet`] run on an MQTT connection of its
//! own (`smarthomed-robots`).
//!
//! Emergency stops must never wait behind other work, so robots' messages and e-stop
//! requests do not share the command link's queue, handler limit or in-order
//! acknowledgement: they arrive on this connection, and one task (the desk) handles
//! them in memory and publishes at once. App requests (`robot_command`, ...) reach the
//! desk from the command handlers through a channel and are answered the same way. The
//! store is written by a task of its own in the order of the changes, so a slow or
//! stalled store delays no stop; on start the desk restores the fleet from the store,
//! and on every (re)connect it publishes the latches and views again, retained.

use std::time::Instant;

use rumqttc::{AsyncClient, Publish, QoS};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::alert::{Alert, Alerter, Outage};
use crate::config::Language;
use crate::mqtt::Acker;
use crate::processor::alarms;
use crate::processor::texts;
use crate::protocol::command::RobotRequest;
use crate::protocol::robot::{
    self as wire, ConnectionMessage, EstopRequest, Factsheet, Leaf, RobotStatus, StateMessage, Target,
};
use crate::protocol::topics;
use crate::robot::fleet::{CommandRecord, Effect, Fleet, LatchRecord, Now, Refused, Registration, Save};
use crate::store::{Document, DocumentStore, StoreError};

pub const ROLE: &str = wire::DAEMON_LINK;
pub const ROBOTS: &str = "robots";
pub const ESTOPS: &str = "robot_estops";
pub const COMMANDS: &str = "robot_commands";
pub const VIEWS: &str = "robot_views";
pub const FACTSHEETS: &str = "robot_factsheets";
/// Robot alarms take ids apart from the appliance's within one second (see
/// `alarms::alarm_id`), so the two writers never overwrite each other.
const ALARM_NTH_BASE: usize = 100;

/// A robot command from an app, for the desk.
struct Ask {
    producer: String,
    request: RobotRequest,
    answer: oneshot::Sender<Result<(), Refused>>,
}

/// The command handlers' way to the desk.
#[derive(Clone)]
pub struct RobotDesk {
    asks: mpsc::Sender<Ask>,
}

impl RobotDesk {
    /// Hands `producer`'s `request` to the desk; the replies go out from there. Err when
    /// refused, or when the desk is gone (shutting down).
    pub async fn ask(&self, producer: &str, request: RobotRequest) -> Result<(), Refused> {
        let (answer, answered) = oneshot::channel();
        let gone = || Refused { code: "unavailable", message: "the robot desk is shutting down".into() };
        let ask = Ask { producer: producer.to_owned(), request, answer };
        self.asks.send(ask).await.map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }
}

/// The desk's end of [`RobotDesk`].
pub struct Asks(mpsc::Receiver<Ask>);

pub fn desk(capacity: usize) -> (RobotDesk, Asks) {
    let (asks, queue) = mpsc::channel(capacity);
    (RobotDesk { asks }, Asks(queue))
}

#[derive(Debug, thiserror::Error)]
pub enum RobotsError {
    #[error("cannot read the robots from the store: {0}")]
    Store(#[from] StoreError),
}

/// Everything the desk works with.
pub struct Desk<S> {
    pub store: S,
    pub client: AsyncClient,
    pub acker: Acker,
    pub alerter: Alerter,
    pub connects: watch::Receiver<u64>,
    pub language: Language,
}

impl<S: DocumentStore> Desk<S> {
    /// Runs until `shutdown`: robot messages from `incoming`, app calls from `asks`.
    pub async fn run(
        mut self,
        mut incoming: mpsc::Receiver<Publish>,
        Asks(mut asks): Asks,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<(), RobotsError> {
        let (mut fleet, effects) = self.restore().await?;
        let (saves, to_save) = mpsc::unbounded_channel();
        tasks.spawn(persist(self.store.clone(), to_save, self.alerter.clone(), self.language, shutdown.clone()));
        self.carry_out(effects, &saves).await;
        self.connects.mark_unchanged();
        loop {
            let deadline = fleet.next_deadline().map(tokio::time::Instant::from_std);
            let effects = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(publish) = incoming.recv() => {
                    let effects = self.on_message(&mut fleet, &publish);
                    self.carry_out(effects, &saves).await;
                    // Acknowledged once what it caused is queued (an e-stop's latch
                    // first): a crash before this has it delivered again.
                    self.acker.ack(&publish).await;
                    continue;
                }
                Some(ask) = asks.recv() => {
                    let (effects, answer) = match on_request(&mut fleet, &ask.producer, ask.request) {
                        Ok(effects) => (effects, Ok(())),
                        Err(refused) => (Vec::new(), Err(refused)),
                    };
                    self.carry_out(effects, &saves).await;
                    let _ = ask.answer.send(answer);
                    continue;
                }
                Ok(()) = self.connects.changed() => fleet.republish(now()),
                () = sleep_until(deadline) => fleet.tick(now()),
            };
            self.carry_out(effects, &saves).await;
        }
        Ok(())
    }

    async fn restore(&self) -> Result<(Fleet, Vec<Effect>), RobotsError> {
        let registrations = read_all::<Registration, _>(&self.store, ROBOTS).await?;
        let latches = read_all::<LatchRecord, _>(&self.store, ESTOPS).await?;
        let views = read_all::<RobotStatus, _>(&self.store, VIEWS).await?;
        let factsheets = read_all::<Factsheet, _>(&self.store, FACTSHEETS).await?;
        let commands = read_all::<CommandRecord, _>(&self.store, COMMANDS).await?.into_iter().map(|(_, c)| c).collect();
        info!(robots = registrations.len(), "robot desk restored");
        Ok(Fleet::restore(registrations, latches, views, factsheets, commands, now()))
    }

    fn on_message(&self, fleet: &mut Fleet, publish: &Publish) -> Vec<Effect> {
        let Some((target, leaf)) = wire::parse_topic(&publish.topic) else { return Vec::new() };
        let now = now();
        let result = match (&target, leaf) {
            (_, Leaf::EstopRequest) => {
                parse::<EstopRequest>(publish).map(|request| {
                    info!(topic = publish.topic, uid = request.uid, producer = request.producer, "e-stop requested");
                    let producer = if crate::protocol::command::PRODUCERS.contains(&request.producer.as_str()) {
                        request.producer.clone()
                    } else {
                        // Still stopped; the answer goes where operators look.
                        "server".into()
                    };
                    fleet.estop(&target, &producer, &request.uid, now)
                })
            }
            (Target::One(robot_id), Leaf::Connection) => {
                parse::<ConnectionMessage>(publish).map(|message| fleet.on_connection(robot_id, message, now))
            }
            (Target::One(robot_id), Leaf::State) => {
                parse::<StateMessage>(publish).map(|message| fleet.on_state(robot_id, message, now))
            }
            (Target::One(robot_id), Leaf::Factsheet) => {
                parse::<Factsheet>(publish).map(|sheet| fleet.on_factsheet(robot_id, sheet))
            }
            _ => Ok(Vec::new()),
        };
        result.unwrap_or_else(|err| {
            warn!(topic = publish.topic, "unreadable robot message: {err}");
            Vec::new()
        })
    }

    async fn carry_out(&self, effects: Vec<Effect>, saves: &mpsc::UnboundedSender<Save>) {
        for effect in effects {
            match effect {
                Effect::Publish { topic, payload, retain } => {
                    if let Err(err) = self.client.publish(topic.as_str(), QoS::AtLeastOnce, retain, payload).await {
                        warn!(topic, "cannot queue a robot message: {err}");
                    }
                }
                Effect::Reply { producer, payload } => {
                    let topic = if producer == "server" {
                        topics::DATA_WARNING_TOPIC.to_owned()
                    } else {
                        topics::reply_topic(&producer)
                    };
                    if let Err(err) =
                        self.client.publish(topic.as_str(), QoS::AtLeastOnce, false, payload.to_string()).await
                    {
                        warn!(topic, "cannot queue a robot reply: {err}");
                    }
                }
                Effect::Save(save) => {
                    let _ = saves.send(save);
                }
                Effect::Alert { title, detail } => self.alerter.raise(Alert::new(ROLE, title, detail)),
            }
        }
    }
}

fn on_request(fleet: &mut Fleet, producer: &str, request: RobotRequest) -> Result<Vec<Effect>, Refused> {
    match request {
        RobotRequest::List { uid } => {
            Ok(vec![Effect::Reply { producer: producer.to_owned(), payload: fleet.list(&uid) }])
        }
        RobotRequest::Register(registration) => fleet.register(producer, registration),
        RobotRequest::Remove { uid, robot } => fleet.remove(&uid, producer, &robot),
        RobotRequest::Command(command) => fleet.command(producer, command, now()),
        RobotRequest::Reset { uid, robot } => fleet.reset(&uid, producer, &robot, now()),
    }
}

fn now() -> Now {
    Now { instant: Instant::now(), wall: chrono::Utc::now() }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn parse<T: DeserializeOwned>(publish: &Publish) -> Result<T, serde_json::Error> {
    serde_json::from_slice(&publish.payload)
}

async fn read_all<T: DeserializeOwned, S: DocumentStore>(
    store: &S,
    collection: &'static str,
) -> Result<Vec<(String, T)>, StoreError> {
    let documents = store.list(collection).await?;
    Ok(documents
        .into_iter()
        .filter_map(|(id, document)| match serde_json::from_value(Value::Object(document)) {
            Ok(value) => Some((id, value)),
            Err(err) => {
                warn!(collection, id, "unreadable robot document skipped: {err}");
                None
            }
        })
        .collect())
}

fn document(value: &impl Serialize) -> Document {
    match serde_json::to_value(value) {
        Ok(Value::Object(document)) => document,
        _ => Document::new(),
    }
}

/// Writes the fleet's changes in order; a failed write is retried with backoff and
/// alerted once, so a store outage delays the record but loses no change.
async fn persist<S: DocumentStore>(
    store: S,
    mut saves: mpsc::UnboundedReceiver<Save>,
    alerter: Alerter,
    language: Language,
    shutdown: CancellationToken,
) {
    let mut outage = Outage::new(alerter, ROLE);
    let mut alarm_second = (0, ALARM_NTH_BASE);
    while let Some(save) = saves.recv().await {
        let mut retry =
            crate::backoff::Backoff::new(std::time::Duration::from_millis(200), std::time::Duration::from_secs(30));
        loop {
            let result = match &save {
                Save::Registration { robot_id, registration: Some(registration) } => {
                    store.set(ROBOTS, robot_id, document(registration)).await
                }
                Save::Registration { robot_id, registration: None } => {
                    let removed = store.delete(ROBOTS, robot_id).await.map(drop);
                    removed.and(store.delete(ESTOPS, robot_id).await.map(drop))
                }
                Save::Latch { robot_id, latch } => store.set(ESTOPS, robot_id, document(latch)).await,
                Save::Command(record) => store.set(COMMANDS, &record.document_id(), document(record)).await,
                Save::ForgetCommand { document_id } => store.delete(COMMANDS, document_id).await.map(drop),
                Save::View { robot_id, view: Some(view) } => store.set(VIEWS, robot_id, document(view)).await,
                Save::View { robot_id, view: None } => store.delete(VIEWS, robot_id).await.map(drop),
                Save::Factsheet { robot_id, factsheet: Some(sheet) } => {
                    store.set(FACTSHEETS, robot_id, document(sheet)).await
                }
                Save::Factsheet { robot_id, factsheet: None } => store.delete(FACTSHEETS, robot_id).await.map(drop),
                Save::Alarm(alarm) => {
                    write_alarm(&store, &texts::robot_alarm(language, alarm), &mut alarm_second).await
                }
            };
            match result {
                Ok(()) => {
                    if let Save::Command(record) = &save {
                        debug!(id = record.document_id(), status = ?record.status, "robot command record written");
                    }
                    outage.recovered("robot records are written again");
                    break;
                }
                Err(err) => {
                    metrics::counter!("smarthomed_processor_store_errors_total").increment(1);
                    warn!("cannot write a robot record, retrying: {err}");
                    outage.failed("cannot write robot records", &err);
                    tokio::select! {
                        () = tokio::time::sleep(retry.next_delay()) => {}
                        () = shutdown.cancelled() => {
                            warn!(lost = saves.len() + 1, "stopping with robot records unwritten");
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// One alarm in the apps' list, which keeps its newest `alarms::MAX_ALARMS`.
async fn write_alarm<S: DocumentStore>(
    store: &S,
    text: &texts::AlarmText,
    second: &mut (i64, usize),
) -> Result<(), StoreError> {
    let now = chrono::Local::now();
    if second.0 != now.timestamp() {
        *second = (now.timestamp(), ALARM_NTH_BASE);
    }
    let id = alarms::alarm_id(now.timestamp(), second.1);
    second.1 += 1;
    store.set(alarms::COLLECTION, &id, alarms::document(text, &alarms::alarm_date(now.naive_local()))).await?;
    info!(id, inform = text.inform, "robot alarm");
    let ids = store.list(alarms::COLLECTION).await?.into_iter().map(|(id, _)| id).collect();
    for id in alarms::excess(ids) {
        store.delete(alarms::COLLECTION, &id).await?;
    }
    Ok(())
}
