//! The appliance task: the one place that knows the last applied state.
//!
//! It takes, in order, the states the appliance reports and the sensor values the
//! syncer publishes. On a state change it writes the alarms in the old format and
//! republishes the state (retained); on any input it recomputes the recommendation and
//! republishes it (retained) when the text changed. The last state is kept in the
//! store, so a restart neither repeats alarms nor misses the change it came back to.

use std::time::Instant;

use bytes::Bytes;
use rumqttc::{AsyncClient, QoS};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::STATE_COLLECTION;
use super::alarms;
use super::recommendation::{self, Inputs};
use super::texts;
use crate::alert::{Alert, Alerter};
use crate::config::ProcessorConfig;
use crate::log_limit::{LogLimiter, Verdict};
use crate::protocol::appliance::{self, Change, State};
use crate::protocol::command::error_reply;
use crate::protocol::schedule::{MODES, find_mode};
use crate::protocol::topics::{CURRENT_STATE_TOPIC, DATA_ERROR_TOPIC, RECOMMENDATION_TOPIC};
use crate::store::{DocumentStore, StoreError};

/// Where the processor keeps what it must remember across restarts.
const STATE_DOCUMENT: &str = "appliance";

pub enum ApplianceInput {
    State(Bytes),
    HomeTemp(Bytes),
    OpenWeather(Bytes),
}

struct Appliance<S> {
    store: S,
    client: AsyncClient,
    config: ProcessorConfig,
    alerter: Alerter,
    inputs: Inputs,
    published_recommendation: Option<String>,
    /// The second of the last alarm and how many alarms it has, so that alarms of
    /// one second get distinct ids even across state changes.
    alarm_second: (i64, usize),
    /// Unreadable states and sensor values are answered one by one, logged at a bounded rate.
    log_limit: LogLimiter,
}

/// Takes inputs in order until the queue closes; signals each one's sender when it
/// has been handled.
pub async fn run<S: DocumentStore>(
    mut queue: mpsc::Receiver<(ApplianceInput, oneshot::Sender<()>)>,
    current: watch::Sender<Option<State>>,
    store: S,
    client: AsyncClient,
    config: ProcessorConfig,
    alerter: Alerter,
) {
    let mut appliance = Appliance {
        store,
        client,
        config,
        alerter,
        inputs: Inputs::default(),
        published_recommendation: None,
        alarm_second: (0, 0),
        log_limit: LogLimiter::default(),
    };
    appliance.inputs.state = appliance.load_state().await;
    current.send_replace(appliance.inputs.state);
    while let Some((input, handled)) = queue.recv().await {
        match input {
            ApplianceInput::State(payload) => {
                appliance.on_state(&payload).await;
                current.send_replace(appliance.inputs.state);
            }
            ApplianceInput::HomeTemp(payload) => {
                if let Some(hometemp) = appliance.json(&payload, "sensor/hometemp").await {
                    appliance.inputs.raining = recommendation::rain_from_hometemp(&hometemp);
                }
            }
            ApplianceInput::OpenWeather(payload) => {
                if let Some(weather) = appliance.json(&payload, "sensor/openweather").await {
                    let (icon, air_level) = recommendation::weather_from_openweather(&weather);
                    appliance.inputs.weather_icon = icon;
                    appliance.inputs.air_level = air_level;
                }
            }
        }
        appliance.recommend().await;
        let _ = handled.send(());
    }
}

impl<S: DocumentStore> Appliance<S> {
    async fn load_state(&self) -> Option<State> {
        let stored = match self.store.get(STATE_COLLECTION, STATE_DOCUMENT).await {
            Ok(stored) => stored?,
            Err(err) => {
                self.store_failed("cannot read the last appliance state", &err);
                return None;
            }
        };
        let text = stored.get("status").and_then(Value::as_str).unwrap_or_default();
        match State::parse(text) {
            Ok(state) => Some(state),
            Err(err) => {
                warn!("ignoring the stored appliance state {text:?}: {err}");
                None
            }
        }
    }

    async fn on_state(&mut self, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        let text = text.trim();
        let state = match State::parse(text) {
            Ok(state) => state,
            Err(err) => {
                let message = format!("the appliance reported {text:?}: {err}");
                if let Verdict::Log { suppressed_before } = self.log_limit.check(err.code(), Instant::now()) {
                    warn!(suppressed_before, "{message}");
                }
                self.publish(DATA_ERROR_TOPIC, false, error_reply(err.code(), &message, None).to_string()).await;
                self.alerter.raise(Alert::new(super::ROLE, "the appliance reported an unreadable state", message));
                return;
            }
        };
        let previous = self.inputs.state.replace(state);
        if previous == Some(state) {
            return;
        }
        if let Some(previous) = previous {
            let changes = appliance::changes(&previous, &state);
            if let Err(err) = self.write_alarms(&changes).await {
                self.store_failed("cannot write alarms", &err);
            }
        }
        let mut stored = serde_json::Map::new();
        stored.insert("status".into(), json!(state.encode()));
        if let Err(err) = self.store.set(STATE_COLLECTION, STATE_DOCUMENT, stored).await {
            self.store_failed("cannot save the appliance state", &err);
        }
        info!(state = %state, "appliance state");
        self.publish(CURRENT_STATE_TOPIC, true, state.encode()).await;
    }

    async fn write_alarms(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let language = self.config.language;
        let now = chrono::Local::now();
        let date = alarms::alarm_date(now.naive_local());
        if self.alarm_second.0 != now.timestamp() {
            self.alarm_second = (now.timestamp(), 0);
        }
        for change in changes {
            let nth = self.alarm_second.1;
            self.alarm_second.1 += 1;
            let mode_name = match change {
                Change::ModeRun(number) => self.mode_name(*number).await?,
                _ => String::new(),
            };
            let text = texts::alarm(language, *change, &mode_name);
            let id = alarms::alarm_id(now.timestamp(), nth);
            self.store.set(alarms::COLLECTION, &id, alarms::document(&text, &date)).await?;
            info!(id, inform = text.inform, "alarm");
        }
        let ids = self.store.list(alarms::COLLECTION).await?.into_iter().map(|(id, _)| id).collect();
        for id in alarms::excess(ids) {
            self.store.delete(alarms::COLLECTION, &id).await?;
        }
        Ok(())
    }

    /// The `modeName` of the mode with `modeNum` = `number`.
    async fn mode_name(&self, number: u8) -> Result<String, StoreError> {
        let found = find_mode(self.store.list(MODES).await?, number);
        let name = found.and_then(|(_, mode)| mode.get("modeName").and_then(Value::as_str).map(str::to_owned));
        Ok(name.unwrap_or_else(|| {
            warn!(number, "no mode document has this modeNum");
            texts::unnamed_mode(self.config.language, number)
        }))
    }

    async fn recommend(&mut self) {
        let advice = recommendation::advise(&self.inputs, &self.config.recommendation);
        let text = texts::advice(self.config.language, advice).to_owned();
        if self.published_recommendation.as_deref() != Some(text.as_str()) {
            info!(recommendation = text, "recommendation");
            self.publish(RECOMMENDATION_TOPIC, true, text.clone()).await;
            self.published_recommendation = Some(text);
        }
    }

    async fn json(&mut self, payload: &[u8], what: &str) -> Option<Value> {
        match serde_json::from_slice::<Value>(payload) {
            Ok(value) if value.is_object() => Some(value),
            Ok(_) | Err(_) => {
                let message = format!("{what} is not a JSON object: {:?}", String::from_utf8_lossy(payload));
                if let Verdict::Log { suppressed_before } = self.log_limit.check("bad_sensor_data", Instant::now()) {
                    warn!(suppressed_before, "{message}");
                }
                self.publish(DATA_ERROR_TOPIC, false, error_reply("bad_sensor_data", &message, None).to_string()).await;
                None
            }
        }
    }

    fn store_failed(&self, what: &str, err: &StoreError) {
        metrics::counter!("smarthomed_processor_store_errors_total").increment(1);
        warn!("{what}: {err}");
        self.alerter.raise(Alert::new(super::ROLE, what, err.to_string()));
    }

    async fn publish(&self, topic: &str, retain: bool, payload: String) {
        if let Err(err) = self.client.publish(topic, QoS::AtLeastOnce, retain, payload).await {
            warn!(topic, "cannot publish: {err}");
        }
    }
}
