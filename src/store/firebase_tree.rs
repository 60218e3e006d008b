//! The Firebase Realtime Database behind [`RealtimeTree`], over its REST API:
//! `GET`/`PUT`/`PATCH`/`DELETE` on `<database_url>/<path>.json`, and listeners as
//! server-sent events (`Accept: text/event-stream`) whose `put` and `patch` events are
//! applied to a local copy of the watched subtree with the same tree functions the
//! embedded backend uses ([`super::tree`]).
//!
//! A listener survives everything the stream can do: a dropped connection, silence
//! past the keep-alive period, `cancel` (rules now refuse the read), `auth_revoked`
//! (the token expired: a new one is fetched) and malformed events. It reconnects with
//! backoff, and since the first event of every stream is the whole subtree, the state
//! is re-read on every reconnect and no change is lost. Its owner hears of an outage
//! through a [`StreamReporter`]: once when the stream is lost, once when it is back
//! (an `auth_revoked` is routine and not reported).

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::service_account::AccessTokens;
use super::tree::{self, TreePath};
use super::{RealtimeTree, StoreError, TreeEvent};
use crate::backoff::Backoff;
use crate::outage::OutageState;

/// The database sends `keep-alive` every 30 s; twice that in silence means a dead stream.
const STREAM_SILENCE: Duration = Duration::from_secs(60);
const RECONNECT_INITIAL: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(60);

/// What a listener tells its owner beyond the values: once when its stream is lost
/// (not once per reconnect attempt), once when it is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamReport {
    Lost { path: String, reason: String },
    Back { path: String, after: String },
}

pub type StreamReporter = Arc<dyn Fn(StreamReport) + Send + Sync>;

pub struct FirebaseTree<A> {
    http: reqwest::Client,
    /// The most any request may take, connection to last byte, and a stream's
    /// response headers: a stalled server must not stall the syncer.
    timeout: Duration,
    base: String,
    tokens: Arc<A>,
    reporter: StreamReporter,
}

impl<A> Clone for FirebaseTree<A> {
    fn clone(&self) -> Self {
        Self {
            http: self.http.clone(),
            timeout: self.timeout,
            base: self.base.clone(),
            tokens: self.tokens.clone(),
            reporter: self.reporter.clone(),
        }
    }
}

fn remote(operation: &str, path: &TreePath, status: Option<u16>, message: impl Into<String>) -> StoreError {
    StoreError::Remote { operation: format!("{operation} {path}"), status, message: message.into() }
}

impl<A: AccessTokens> FirebaseTree<A> {
    /// `database_url` such as `https://<project>-default-rtdb.firebaseio.com`.
    pub fn new(database_url: &str, tokens: A, timeout: Duration) -> Result<Self, StoreError> {
        crate::tls::use_ring();
        let http = reqwest::Client::builder().connect_timeout(timeout).build().map_err(|err| StoreError::Remote {
            operation: "set up HTTPS".into(),
            status: None,
            message: err.without_url().to_string(),
        })?;
        Ok(Self {
            http,
            timeout,
            base: database_url.trim_end_matches('/').to_owned(),
            tokens: Arc::new(tokens),
            reporter: Arc::new(|_| {}),
        })
    }

    /// Where listeners report a lost stream and its recovery (they log them anyway).
    pub fn with_stream_reporter(mut self, reporter: StreamReporter) -> Self {
        self.reporter = reporter;
        self
    }

    fn url(&self, path: &TreePath) -> String {
        let mut url = self.base.clone();
        for segment in path.segments() {
            url.push('/');
            url.push_str(
                &url::form_urlencoded::byte_serialize(segment.as_bytes()).collect::<String>().replace('+', "%20"),
            );
        }
        url.push_str("/.json");
        url
    }

    async fn request(
        &self,
        operation: &str,
        method: reqwest::Method,
        path: &TreePath,
        body: Option<&Value>,
    ) -> Result<Value, StoreError> {
        let mut request = self.http.request(method, self.url(path)).timeout(self.timeout);
        if let Some(token) = self.tokens.token().await? {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response =
            request.send().await.map_err(|err| remote(operation, path, None, err.without_url().to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|err| remote(operation, path, Some(status.as_u16()), err.without_url().to_string()))?;
        if !status.is_success() {
            if status.as_u16() == 401 {
                self.tokens.invalidate();
            }
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|json| json["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(remote(operation, path, Some(status.as_u16()), format!("HTTP {status}: {message}")));
        }
        serde_json::from_str(&text)
            .map_err(|err| remote(operation, path, Some(status.as_u16()), format!("not JSON: {err}")))
    }

    /// One streaming connection: applies its events to `local` and reports changes,
    /// until the stream ends or fails. Returns why it ended.
    async fn stream_once(
        &self,
        path: &TreePath,
        listening: &mut Listening,
        events: &mpsc::Sender<TreeEvent>,
    ) -> Result<StreamEnd, StoreError> {
        let local = &mut listening.local;
        let mut request = self.http.get(self.url(path)).header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(token) = self.tokens.token().await? {
            request = request.bearer_auth(token);
        }
        let response = tokio::time::timeout(self.timeout, request.send())
            .await
            .map_err(|_| remote("listen to", path, None, format!("no response within {} s", self.timeout.as_secs())))?
            .map_err(|err| remote("listen to", path, None, err.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            if status.as_u16() == 401 {
                self.tokens.invalidate();
            }
            let text = tokio::time::timeout(self.timeout, response.text()).await.ok().and_then(Result::ok);
            let text = text.unwrap_or_default();
            return Err(remote(
                "listen to",
                path,
                Some(status.as_u16()),
                format!("HTTP {status}: {}", text.chars().take(200).collect::<String>()),
            ));
        }
        let mut stream = response.bytes_stream().eventsource();
        loop {
            let next = tokio::time::timeout(STREAM_SILENCE, stream.next())
                .await
                .map_err(|_| remote("listen to", path, None, "no keep-alive within 60 s"))?;
            let event = match next {
                None => return Ok(StreamEnd::Closed),
                Some(Err(err)) => return Err(remote("listen to", path, None, err.to_string())),
                Some(Ok(event)) => event,
            };
            match event.event.as_str() {
                "put" | "patch" => {
                    let data: Value = serde_json::from_str(&event.data).map_err(|err| {
                        remote("listen to", path, None, format!("malformed {} event: {err}", event.event))
                    })?;
                    let (Some(at), Some(value)) = (data["path"].as_str(), data.get("data")) else {
                        return Err(remote(
                            "listen to",
                            path,
                            None,
                            format!("malformed {} event: {}", event.event, event.data),
                        ));
                    };
                    let at = TreePath::parse(at)?;
                    if event.event == "put" {
                        tree::set(local, &at, value.clone());
                    } else {
                        let Value::Object(fields) = value else {
                            return Err(remote("listen to", path, None, "a patch event without an object"));
                        };
                        for (key, child) in fields {
                            tree::set(local, &at.join(key)?, child.clone());
                        }
                    }
                    listening.connected = true;
                    if let Some(ended) = listening.outage.recovered(Instant::now()) {
                        info!(%path, "the stream is back");
                        (self.reporter)(StreamReport::Back { path: path.to_string(), after: ended.first_error });
                    }
                    let now = tree::get(local, &TreePath::parse("")?).cloned();
                    if listening.last_sent.as_ref() != Some(&now) {
                        listening.last_sent = Some(now.clone());
                        if events.send(TreeEvent { value: now }).await.is_err() {
                            return Ok(StreamEnd::ListenerGone);
                        }
                    }
                }
                "keep-alive" => {}
                "cancel" => return Ok(StreamEnd::Cancelled(event.data)),
                "auth_revoked" => {
                    self.tokens.invalidate();
                    return Ok(StreamEnd::AuthRevoked);
                }
                other => debug!(event = other, "ignoring an unknown stream event"),
            }
        }
    }
}

/// What one listener keeps across its streaming connections.
struct Listening {
    /// The tree under the path as this stream's events built it (each stream starts empty).
    local: Value,
    /// The last value handed to the listener: an unchanged one is not sent again.
    last_sent: Option<Option<Value>>,
    /// Whether this stream delivered an event (the reconnect backoff then starts over).
    connected: bool,
    /// Reported once when the stream is lost and once when it is back.
    outage: OutageState,
}

enum StreamEnd {
    Closed,
    Cancelled(String),
    AuthRevoked,
    ListenerGone,
}

impl<A: AccessTokens> RealtimeTree for FirebaseTree<A> {
    async fn get(&self, path: &str) -> Result<Option<Value>, StoreError> {
        let path = TreePath::parse(path)?;
        let value = self.request("read", reqwest::Method::GET, &path, None).await?;
        Ok((!value.is_null()).then_some(value))
    }

    async fn set(&self, path: &str, value: Value) -> Result<(), StoreError> {
        let path = TreePath::parse(path)?;
        if value.is_null() {
            self.request("delete", reqwest::Method::DELETE, &path, None).await?;
        } else {
            self.request("write", reqwest::Method::PUT, &path, Some(&value)).await?;
        }
        Ok(())
    }

    async fn update(&self, path: &str, fields: Map<String, Value>) -> Result<(), StoreError> {
        let path = TreePath::parse(path)?;
        for key in fields.keys() {
            path.join(key)?;
        }
        self.request("update", reqwest::Method::PATCH, &path, Some(&Value::Object(fields))).await?;
        Ok(())
    }

    async fn watch(
        &self,
        path: &str,
        events: mpsc::Sender<TreeEvent>,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        let path = TreePath::parse(path)?;
        let mut backoff = Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX);
        let mut listening =
            Listening { local: Value::Null, last_sent: None, connected: false, outage: OutageState::new() };
        loop {
            listening.local = Value::Null;
            listening.connected = false;
            let ended = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = events.closed() => return Ok(()),
                ended = self.stream_once(&path, &mut listening, &events) => ended,
            };
            if listening.connected {
                backoff.reset();
            }
            let (wait, trouble) = match ended {
                Ok(StreamEnd::ListenerGone) => return Ok(()),
                // Routine: the database ends a stream whose token expired.
                Ok(StreamEnd::AuthRevoked) => {
                    info!(%path, "the database revoked the token: reconnecting with a new one");
                    (Duration::ZERO, None)
                }
                Ok(StreamEnd::Closed) => {
                    warn!(%path, "the database closed the stream: reconnecting");
                    (backoff.next_delay(), Some("the database closed the stream".to_owned()))
                }
                Ok(StreamEnd::Cancelled(why)) => {
                    warn!(%path, "the database cancelled the stream (rules refuse the read?): {why}");
                    (backoff.next_delay(), Some(format!("the database cancelled the stream: {why}")))
                }
                Err(err) => {
                    warn!(%path, "stream failed: {err}");
                    (backoff.next_delay(), Some(err.to_string()))
                }
            };
            if let Some(reason) = trouble
                && let Some(began) = listening.outage.failed(&reason, Instant::now())
            {
                (self.reporter)(StreamReport::Lost { path: path.to_string(), reason: began.first_error });
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}
