//! The command processor child: the brain of smarthomed.
//!
//! Message-driven: the MQTT [`Link`] (listener) fills a bounded queue; the dispatcher
//! routes each message, and acknowledges it to the broker only once it has been
//! handled (in arrival order, as MQTT requires), so a crash repeats a message rather
//! than losing it. Commands run as
//! concurrent handlers ([`commands`]), each with a timeout and at most
//! `max_concurrent_handlers` at once, so a slow one (a face recognition) never stalls
//! the rest; waiting for a free handler is logged and alerted as overload. Appliance
//! states and sensor values go, in order, to the one [`appliance`] task, since alarms
//! depend on the order of states.
//!
//! The link's session is persistent and its subscriptions QoS 1: commands published
//! while the processor restarts are delivered when it is back.

pub mod alarms;
pub mod appliance;
pub mod commands;
pub mod homeassistant;
pub mod recommendation;
pub mod robots;
pub mod schedules;
pub mod texts;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{Publish, QoS};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::alert::{Alert, Outage};
use crate::backoff::Backoff;
use crate::child_context::{ChildContext, rerun_on_reload};
use crate::config::Backend;
use crate::mqtt::{self, Acker, Link, MqttError};
use crate::protocol::appliance::State;
use crate::protocol::command::{Command, Rejection, Request};
use crate::protocol::homeassistant as protocol_homeassistant;
use crate::protocol::role::Role;
use crate::protocol::schedule::MODES;
use crate::protocol::topics;
use crate::store::embedded::EmbeddedDocuments;
use crate::store::firestore::{Endpoint, FirestoreDocuments};
use crate::store::service_account::{FIRESTORE_SCOPES, ServiceAccountTokens};
use crate::store::{DocumentStore, StoreError};
use appliance::ApplianceInput;
use commands::Handlers;

pub const ROLE: &str = Role::Processor.name();
/// The processor's own records: the last appliance state, how far schedules were run.
pub const STATE_COLLECTION: &str = "smarthomed_state";
/// A wait for a free handler longer than this counts as overload.
const OVERLOAD_AFTER: Duration = Duration::from_secs(1);
/// Past this many order keys, those whose last command is done are forgotten.
const ORDER_KEYS_KEPT: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs the processor on the configured store.
pub async fn run(context: ChildContext, shutdown: CancellationToken) -> Result<(), ProcessorError> {
    match context.config.store.backend {
        Backend::Embedded => {
            let store = EmbeddedDocuments::open(&context.config.store.dir)?;
            run_with_store(context, store, shutdown).await
        }
        Backend::Firebase => match connect_firestore(&context, &shutdown).await? {
            Some(store) => run_with_store(context, store, shutdown).await,
            None => Ok(()),
        },
    }
}

/// Connects to Firestore and reads from it, retrying with backoff (a home server often
/// boots before its network is up) and alerting once; `None` if shut down first.
async fn connect_firestore(
    context: &ChildContext,
    shutdown: &CancellationToken,
) -> Result<Option<FirestoreDocuments>, ProcessorError> {
    let firebase = &context.config.firebase;
    let timeout = Duration::from_secs(firebase.timeout_secs);
    let mut retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut outage = Outage::new(context.alerter.clone(), ROLE);
    // Read once: every attempt shares the key and its cached token.
    let tokens = if firebase.firestore_emulator_host.is_empty() {
        Some(Arc::new(ServiceAccountTokens::from_file(&firebase.credentials, FIRESTORE_SCOPES)?))
    } else {
        None
    };
    loop {
        let connected = if let Some(tokens) = &tokens {
            FirestoreDocuments::connect(&firebase.project_id, Endpoint::Google { tokens: tokens.clone() }, timeout)
                .await
        } else {
            FirestoreDocuments::emulator(&firebase.project_id, &firebase.firestore_emulator_host, timeout).await
        };
        // One read proves what connecting does not: the project, its database, the key's
        // rights (a wrong project id would otherwise read as missing documents).
        let usable = match connected {
            Ok(store) => store.list(MODES).await.map(|_| store),
            Err(err) => Err(err),
        };
        match usable {
            Ok(store) => {
                outage.recovered("Firestore is reachable again");
                return Ok(Some(store));
            }
            Err(err) => {
                let wait = retry.next_delay();
                warn!(retry_in = ?wait, "cannot connect to Firestore: {err}");
                outage.failed("cannot connect to Firestore", &err);
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Runs the processor on `store` until `shutdown`.
pub async fn run_with_store<S: DocumentStore>(
    context: ChildContext,
    store: S,
    shutdown: CancellationToken,
) -> Result<(), ProcessorError> {
    let config = context.config.clone();
    let options = mqtt::client_options(&config, ROLE, context.internal_password.as_ref())?;
    let (mut link, acker) = Link::persistent(ROLE, options, &config, context.alerter.clone());
    for filter in
        [topics::COMMAND_FILTER, topics::APPLIANCE_STATE_TOPIC, topics::HOMETEMP_TOPIC, topics::OPENWEATHER_TOPIC]
    {
        link.subscribe(filter, QoS::AtLeastOnce);
    }
    let homeassistant_prefix = config.homeassistant.enabled.then(|| config.homeassistant.discovery_prefix.clone());
    if let Some(prefix) = &homeassistant_prefix {
        link.subscribe(protocol_homeassistant::COMMAND_FILTER, QoS::AtLeastOnce);
        link.subscribe(protocol_homeassistant::status_topic(prefix), QoS::AtLeastOnce);
    }
    let handler_timeout = Duration::from_millis(config.processor.handler_timeout_ms);
    link.set_drain_grace(handler_timeout + Duration::from_secs(config.processor.facer_timeout_secs));
    let client = link.client();

    let tasks = TaskTracker::new();
    let (appliance_inputs, appliance_queue) = mpsc::channel(config.processor.queue_capacity);
    let (state_tx, state_rx) = watch::channel(None);
    let appliance_state = state_rx.clone();
    if let Some(prefix) = homeassistant_prefix.clone() {
        let client = client.clone();
        tasks.spawn(async move { homeassistant::publish_discovery(&client, &prefix).await });
    }
    tasks.spawn(appliance::run(
        appliance_queue,
        state_tx,
        store.clone(),
        client.clone(),
        config.processor.clone(),
        context.alerter.clone(),
    ));
    {
        let (tracker, store, client, alerter) = (tasks.clone(), store.clone(), client.clone(), context.alerter.clone());
        let schedule_settings = |config: &crate::config::Config| config.schedule.clone();
        tasks.spawn(rerun_on_reload(
            "the schedule engine",
            context.reloads.clone(),
            schedule_settings,
            shutdown.clone(),
            move |config, stop| {
                let engine = schedules::Engine {
                    store: store.clone(),
                    client: client.clone(),
                    config,
                    alerter: alerter.clone(),
                    state: state_rx.clone(),
                };
                let tracker = tracker.clone();
                async move { engine.run(&tracker, stop).await }
            },
        ));
    }
    // The robot channel: a connection of its own, so that e-stops never wait here.
    let robot_options = mqtt::client_options(&config, robots::ROLE, context.internal_password.as_ref())?;
    let (mut robot_link, robot_acker) = Link::persistent(robots::ROLE, robot_options, &config, context.alerter.clone());
    for filter in crate::protocol::robot::DAEMON_FILTERS {
        robot_link.subscribe(filter, QoS::AtLeastOnce);
    }
    let (robot_desk, robot_asks) = robots::desk(config.processor.queue_capacity);
    let robot_work = {
        let desk = robots::Desk {
            store: store.clone(),
            client: robot_link.client(),
            acker: robot_acker,
            alerter: context.alerter.clone(),
            connects: robot_link.connects(),
            language: config.processor.language,
        };
        let (robot_incoming, robot_queue) = mpsc::channel(config.processor.queue_capacity);
        let (tasks, shutdown, alerter) = (tasks.clone(), shutdown.clone(), context.alerter.clone());
        async move {
            let (_, outcome) = tokio::join!(
                robot_link.run(robot_incoming, shutdown.clone()),
                desk.run(robot_queue, robot_asks, &tasks, shutdown.clone())
            );
            if let Err(err) = outcome {
                warn!("the robot desk stopped: {err}");
                alerter.raise(Alert::new(ROLE, "the robot desk stopped", err.to_string()));
            }
        }
    };
    tasks.spawn(robot_work);
    let handlers =
        Arc::new(Handlers::new(store, robot_desk, client.clone(), config.processor.clone(), context.alerter.clone()));
    let (incoming, queue) = mpsc::channel(config.processor.queue_capacity);
    let (acks, unacked) = mpsc::channel(config.processor.queue_capacity + config.processor.max_concurrent_handlers);
    tasks.spawn(acknowledge_in_order(unacked, acker));
    let dispatcher = Dispatcher {
        handlers,
        acks,
        last_by_key: HashMap::new(),
        appliance: appliance_inputs,
        permits: Arc::new(Semaphore::new(config.processor.max_concurrent_handlers)),
        handler_timeout,
        tasks: tasks.clone(),
        homeassistant: homeassistant_prefix.map(|prefix| (protocol_homeassistant::status_topic(&prefix), prefix)),
        appliance_state,
        homeassistant_expected: None,
        client,
    };
    tokio::join!(link.run(incoming, shutdown.clone()), dispatcher.run(queue, shutdown));
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Waits for a free handler slot; `None` at shutdown, which leaves the command
/// unacknowledged for redelivery. A long wait is logged and alerted as overload.
async fn handler_slot(
    permits: &Arc<Semaphore>,
    alerter: &crate::alert::Alerter,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    let waited = Instant::now();
    let permit = tokio::select! {
        biased;
        () = shutdown.cancelled() => return None,
        permit = permits.clone().acquire_owned() => permit.ok()?,
    };
    if waited.elapsed() >= OVERLOAD_AFTER {
        warn!(waited = ?waited.elapsed(), "overloaded: every command handler was busy");
        alerter.raise(Alert::new(
            ROLE,
            "overloaded: commands wait for a free handler",
            format!(
                "waited {} ms; raise processor.max_concurrent_handlers if this recurs",
                waited.elapsed().as_millis()
            ),
        ));
    }
    Some(permit)
}

/// A received message and the signal that it has been handled.
struct Unacked {
    publish: Publish,
    handled: oneshot::Receiver<()>,
}

/// Acknowledges messages in the order they arrived, each once it has been handled. A
/// message whose handling was abandoned (at shutdown) is left unacknowledged, so the
/// broker delivers it again on the next connect.
async fn acknowledge_in_order(mut unacked: mpsc::Receiver<Unacked>, acker: Acker) {
    while let Some(Unacked { publish, handled }) = unacked.recv().await {
        if handled.await.is_ok() {
            acker.ack(&publish).await;
        } else {
            debug!(topic = publish.topic, "not handled: left for redelivery");
        }
    }
}

struct Dispatcher<S: DocumentStore> {
    handlers: Arc<Handlers<S>>,
    acks: mpsc::Sender<Unacked>,
    /// Per order key, the completion of the last command dispatched with it: the next
    /// one waits for it, so commands on one subject take effect in arrival order.
    last_by_key: HashMap<String, oneshot::Receiver<()>>,
    appliance: mpsc::Sender<(ApplianceInput, oneshot::Sender<()>)>,
    permits: Arc<Semaphore>,
    handler_timeout: Duration,
    tasks: TaskTracker,
    /// With Home Assistant on: its status topic and the discovery prefix.
    homeassistant: Option<(String, String)>,
    /// The appliance's last reported state.
    appliance_state: watch::Receiver<Option<State>>,
    /// What Home Assistant's controls so far lead to, from the last report on: its next
    /// command builds on this, not on a report that has not caught up with them yet.
    homeassistant_expected: Option<State>,
    client: rumqttc::AsyncClient,
}

impl<S: DocumentStore> Dispatcher<S> {
    /// Takes messages until `shutdown`, then lets in-flight handlers finish before it
    /// releases the queue (which lets the link disconnect).
    async fn run(mut self, mut queue: mpsc::Receiver<Publish>, shutdown: CancellationToken) {
        loop {
            let publish = tokio::select! {
                () = shutdown.cancelled() => break,
                publish = queue.recv() => match publish {
                    Some(publish) => publish,
                    None => break,
                },
            };
            metrics::gauge!("smarthomed_processor_queue_depth").set(queue.len() as f64);
            if !self.dispatch(publish, &shutdown).await {
                break;
            }
        }
        let Self { appliance, acks, tasks, .. } = self;
        drop(appliance);
        drop(acks);
        tasks.close();
        tasks.wait().await;
        drop(queue);
    }

    /// Routes one message; false when shutdown came first.
    async fn dispatch(&mut self, publish: Publish, shutdown: &CancellationToken) -> bool {
        let (handled, handled_signal) = oneshot::channel();
        let payload = publish.payload.clone();
        let topic = publish.topic.clone();
        if let Some((status, prefix)) = &self.homeassistant
            && topic == *status
        {
            // Home Assistant started (again): it needs the discovery configs anew.
            if payload.as_ref() == b"online" {
                let (client, prefix) = (self.client.clone(), prefix.clone());
                self.tasks.spawn(async move { homeassistant::publish_discovery(&client, &prefix).await });
            }
            let _ = handled.send(());
            return self.track(publish, handled_signal, shutdown).await;
        }
        let from_homeassistant =
            self.homeassistant.is_some() && topic.starts_with(protocol_homeassistant::COMMAND_PREFIX);
        let input = match publish.topic.as_str() {
            topics::APPLIANCE_STATE_TOPIC => Some(ApplianceInput::State(payload.clone())),
            topics::HOMETEMP_TOPIC => Some(ApplianceInput::HomeTemp(payload.clone())),
            topics::OPENWEATHER_TOPIC => Some(ApplianceInput::OpenWeather(payload.clone())),
            topic if topic.starts_with("webos/server/") || topic == "webos/server" || from_homeassistant => None,
            topic => {
                debug!(topic, "no route for this topic");
                let _ = handled.send(());
                return self.track(publish, handled_signal, shutdown).await;
            }
        };
        if !self.track(publish, handled_signal, shutdown).await {
            return false;
        }
        if let Some(input) = input {
            let sent = tokio::select! {
                () = shutdown.cancelled() => return false,
                sent = self.appliance.send((input, handled)) => sent,
            };
            return sent.is_ok();
        }

        let handlers = self.handlers.clone();
        let (permits, shutdown) = (self.permits.clone(), shutdown.clone());
        let parsed =
            if from_homeassistant { self.homeassistant_command(&topic, &payload) } else { handlers.parse(&payload) };
        let command = match parsed {
            Ok(command) => command,
            Err(rejection) => {
                self.tasks.spawn(async move {
                    let Some(_permit) = handler_slot(&permits, handlers.alerter(), &shutdown).await else { return };
                    handlers.refuse(rejection).await;
                    let _ = handled.send(());
                });
                return true;
            }
        };
        let (done, completion) = oneshot::channel();
        let previous = match command.order_key() {
            Some(key) => self.last_by_key.insert(key, completion),
            None => None,
        };
        self.forget_finished_keys();
        let timeout = self.handler_timeout;
        // A command waits for its predecessor before it takes a handler slot: a burst on
        // one subject behind a slow command holds one slot, not all of them. The waiting
        // tasks are bounded by the acknowledgement queue, which `track` fills.
        self.tasks.spawn(async move {
            if let Some(previous) = previous {
                // A predecessor left unhandled (at shutdown) is delivered again later:
                // this one must not overtake it.
                let handled_before = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => false,
                    done = previous => done.is_ok(),
                };
                if !handled_before {
                    return;
                }
            }
            let Some(_permit) = handler_slot(&permits, handlers.alerter(), &shutdown).await else { return };
            handlers.handle(command, timeout).await;
            let _ = done.send(());
            let _ = handled.send(());
        });
        true
    }

    /// Home Assistant's command, built on what its earlier controls lead to; a new report
    /// from the appliance starts over from what it says.
    fn homeassistant_command(&mut self, topic: &str, payload: &[u8]) -> Result<Command, Rejection> {
        if self.appliance_state.has_changed().unwrap_or(false) || self.homeassistant_expected.is_none() {
            self.homeassistant_expected =
                Some(protocol_homeassistant::assumed_state(self.appliance_state.borrow_and_update().as_ref()));
        }
        let current = protocol_homeassistant::assumed_state(self.homeassistant_expected.as_ref());
        let command = homeassistant::command(topic, payload, &current)?;
        if let Request::Control(control) = &command.request {
            self.homeassistant_expected = Some(control.apply_to(&current));
        }
        Ok(command)
    }

    /// Queues the message for acknowledgement once `handled` fires.
    async fn track(&self, publish: Publish, handled: oneshot::Receiver<()>, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            () = shutdown.cancelled() => false,
            queued = self.acks.send(Unacked { publish, handled }) => queued.is_ok(),
        }
    }

    fn forget_finished_keys(&mut self) {
        if self.last_by_key.len() > ORDER_KEYS_KEPT {
            self.last_by_key
                .retain(|_, completion| matches!(completion.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        }
    }
}
