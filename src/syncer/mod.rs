//! The syncer child: the only process that talks to the realtime tree (the Firebase
//! Realtime Database, or the embedded tree) and to the weather service, bridging them
//! to the processor over MQTT.
//!
//! - Tree to MQTT: `smarthome/status` (the appliance's state, written there by the
//!   ESP32) goes to `data/smarthome`; `sensor/hometemp` goes to
//!   `smarthomed/sensor/hometemp`; all retained, so a restarted processor has them at once.
//! - MQTT to tree: the processor's recommendation (`smarthomed/recommendation`) is
//!   written to `server/notification`. The processor publishes only changes; one that
//!   repeats what this syncer last wrote (the retained message after a reconnect) is
//!   not written again.
//! - Weather: fetched every `weather.interval_secs` ([`weather`]), published on
//!   `smarthomed/sensor/openweather` (retained) and written to `sensor/openweather`;
//!   failures back off and alert once per outage.

pub mod weather;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::alert::{Alert, Alerter, Outage};
use crate::backoff::Backoff;
use crate::child_context::{ChildContext, rerun_on_reload};
use crate::config::{Backend, Config, WeatherConfig};
use crate::mqtt::{self, Link, MqttError};
use crate::protocol::command::error_reply;
use crate::protocol::role::Role;
use crate::protocol::topics::{
    APPLIANCE_STATE_TOPIC, DATA_ERROR_TOPIC, HOMETEMP_TOPIC, OPENWEATHER_TOPIC, RECOMMENDATION_TOPIC,
};
use crate::store::embedded::EmbeddedTree;
use crate::store::firebase_tree::{FirebaseTree, StreamReport};
use crate::store::service_account::{DATABASE_SCOPES, ServiceAccountTokens};
use crate::store::{RealtimeTree, StoreError, TreeEvent};

pub const ROLE: &str = Role::Syncer.name();
const NOTIFICATION_PATH: &str = "server/notification";
const OPENWEATHER_PATH: &str = "sensor/openweather";

#[derive(Debug, thiserror::Error)]
pub enum SyncerError {
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs the syncer on the configured tree.
pub async fn run(context: ChildContext, shutdown: CancellationToken) -> Result<(), SyncerError> {
    match context.config.store.backend {
        Backend::Embedded => {
            let tree = EmbeddedTree::open(&context.config.store.dir)?;
            run_with_tree(context, tree, shutdown).await
        }
        Backend::Firebase => {
            let firebase = &context.config.firebase;
            let tokens = ServiceAccountTokens::from_file(&firebase.credentials, DATABASE_SCOPES)?;
            let alerter = context.alerter.clone();
            let tree = FirebaseTree::new(&firebase.database_url, tokens, Duration::from_secs(firebase.timeout_secs))?
                .with_stream_reporter(Arc::new(move |report| alerter.raise(stream_alert(report))));
            run_with_tree(context, tree, shutdown).await
        }
    }
}

fn stream_alert(report: StreamReport) -> Alert {
    let (path, up) = match &report {
        StreamReport::Lost { path, .. } => (path.clone(), 0.0),
        StreamReport::Back { path, .. } => (path.clone(), 1.0),
    };
    metrics::gauge!("smarthomed_syncer_stream_up", "path" => path).set(up);
    match report {
        StreamReport::Lost { path, reason } => {
            Alert::new(ROLE, format!("lost the Realtime Database stream of {path}; reconnecting"), reason)
        }
        StreamReport::Back { path, after } => {
            Alert::new(ROLE, format!("the Realtime Database stream of {path} is back"), format!("after: {after}"))
        }
    }
}

pub async fn run_with_tree<T: RealtimeTree>(
    context: ChildContext,
    tree: T,
    shutdown: CancellationToken,
) -> Result<(), SyncerError> {
    let config = context.config.clone();
    let options = mqtt::client_options(&config, ROLE, context.internal_password.as_ref())?;
    let mut link = Link::new(ROLE, options, &config, context.alerter.clone());
    link.subscribe(RECOMMENDATION_TOPIC, QoS::AtLeastOnce);
    let client = link.client();

    let tasks = TaskTracker::new();
    // The weather is published as it is fetched, not read back from the tree.
    for (path, topic) in [("smarthome/status", APPLIANCE_STATE_TOPIC), ("sensor/hometemp", HOMETEMP_TOPIC)] {
        tasks.spawn(mirror(tree.clone(), path, topic, client.clone(), context.alerter.clone(), shutdown.clone()));
    }
    {
        let out = Weather { tree: tree.clone(), bus: client.clone(), alerter: context.alerter.clone() };
        let weather_settings = |config: &Config| config.weather.clone();
        tasks.spawn(rerun_on_reload("the weather", context.reloads.clone(), weather_settings, shutdown.clone(), {
            move |config, stop| weather(config, out.clone(), stop)
        }));
    }
    tasks.close();

    let (incoming, mut queue) = mpsc::channel::<rumqttc::Publish>(16);
    let notifications = async {
        // What this syncer last wrote to the notification.
        let mut written: Option<String> = None;
        loop {
            let publish = tokio::select! {
                () = shutdown.cancelled() => break,
                publish = queue.recv() => match publish {
                    Some(publish) => publish,
                    None => break,
                },
            };
            if publish.topic == RECOMMENDATION_TOPIC {
                let text = String::from_utf8_lossy(&publish.payload).into_owned();
                if !text.is_empty()
                    && written.as_ref() != Some(&text)
                    && write_notification(&tree, &text, &context.alerter).await
                {
                    written = Some(text);
                }
            }
        }
        drop(queue);
    };
    tokio::join!(link.run(incoming, shutdown.clone()), notifications);
    tasks.wait().await;
    Ok(())
}

/// Writes the recommendation to `server/notification`; whether it was written.
async fn write_notification<T: RealtimeTree>(tree: &T, text: &str, alerter: &Alerter) -> bool {
    match tree.set(NOTIFICATION_PATH, Value::String(text.to_owned())).await {
        Ok(()) => {
            info!(notification = text, "notification written");
            true
        }
        Err(err) => {
            warn!("cannot write the notification: {err}");
            alerter.raise(Alert::new(ROLE, "cannot write the notification", err.to_string()));
            false
        }
    }
}

/// Publishes the value at `path` (retained) on `topic` whenever it changes.
async fn mirror<T: RealtimeTree>(
    tree: T,
    path: &'static str,
    topic: &'static str,
    client: AsyncClient,
    alerter: Alerter,
    shutdown: CancellationToken,
) {
    let (events, mut queue) = mpsc::channel(8);
    let publish = async {
        let mut published = false;
        while let Some(TreeEvent { value }) = queue.recv().await {
            let payload = match value {
                Some(Value::String(text)) if topic == APPLIANCE_STATE_TOPIC => text,
                Some(value @ Value::Object(_)) if topic != APPLIANCE_STATE_TOPIC => value.to_string(),
                None if published => String::new(),
                None => continue,
                Some(other) => {
                    let message = format!("{path} holds {other}, which is not what it should be");
                    warn!("{message}");
                    let reply = error_reply("bad_tree_data", &message, None).to_string();
                    if let Err(err) = client.publish(DATA_ERROR_TOPIC, QoS::AtLeastOnce, false, reply).await {
                        warn!("cannot publish: {err}");
                    }
                    continue;
                }
            };
            published = !payload.is_empty();
            if let Err(err) = client.publish(topic, QoS::AtLeastOnce, true, payload).await {
                warn!(topic, "cannot publish: {err}");
            }
        }
    };
    let (watched, ()) = tokio::join!(tree.watch(path, events, shutdown), publish);
    if let Err(err) = watched {
        warn!(path, "tree listener stopped: {err}");
        alerter.raise(Alert::new(ROLE, format!("lost the listener of {path}"), err.to_string()));
    }
}

/// Keeps the weather up to date as `config` says, until `stop`.
async fn weather<T: RealtimeTree>(config: WeatherConfig, out: Weather<T>, stop: CancellationToken) {
    if config.api_key.is_empty() {
        info!("no weather.api_key: the weather is off");
        return stop.cancelled().await;
    }
    match weather::Client::new(&config) {
        Ok(client) => keep_weather(client, out, config, stop).await,
        Err(err) => {
            out.alerter.raise(Alert::new(ROLE, "the weather cannot be fetched", err.to_string()));
            stop.cancelled().await;
        }
    }
}

/// Where the weather goes: to MQTT (retained), for the processor and the apps, and to
/// the tree, where the old apps read it.
#[derive(Clone)]
struct Weather<T> {
    tree: T,
    bus: AsyncClient,
    alerter: Alerter,
}

/// Fetches the weather every interval and hands it on; after a failure, retries with
/// backoff and alerts once per outage, and once more when it is over.
async fn keep_weather<T: RealtimeTree>(
    client: weather::Client,
    Weather { tree, bus, alerter }: Weather<T>,
    config: WeatherConfig,
    shutdown: CancellationToken,
) {
    let interval = Duration::from_secs(config.interval_secs);
    let mut retry = Backoff::new(Duration::from_millis(config.retry_initial_ms), interval);
    let mut outage = Outage::new(alerter.clone(), ROLE);
    loop {
        let wait = match client.fetch().await {
            Ok((current, air_level)) => {
                let value = weather::tree_value(&current, air_level, chrono::Local::now().naive_local());
                info!(icon = current.icon, air_level, "weather updated");
                metrics::counter!("smarthomed_syncer_weather_updates_total", "outcome" => "ok").increment(1);
                outage.recovered("the weather is back");
                if let Err(err) = bus.publish(OPENWEATHER_TOPIC, QoS::AtLeastOnce, true, value.to_string()).await {
                    warn!("cannot publish the weather: {err}");
                }
                match tree.set(OPENWEATHER_PATH, value).await {
                    Ok(()) => {
                        retry.reset();
                        interval
                    }
                    Err(err) => {
                        warn!("cannot store the weather: {err}");
                        alerter.raise(Alert::new(ROLE, "cannot store the weather", err.to_string()));
                        retry.next_delay()
                    }
                }
            }
            Err(err) => {
                let wait = match &err {
                    weather::WeatherError::RateLimited { retry_after: Some(after) } => (*after).min(interval),
                    _ => retry.next_delay(),
                };
                warn!(retry_in = ?wait, "weather update failed: {err}");
                metrics::counter!("smarthomed_syncer_weather_updates_total", "outcome" => "failed").increment(1);
                outage.failed("the weather cannot be updated", &err);
                wait
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
