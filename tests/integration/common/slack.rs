//! A local stand-in for the Slack Web API's chat.postMessage: it checks the bearer
//! token, records each message, and answers as Slack does, including scripted
//! failures (HTTP 429 with Retry-After, HTTP 5xx, `{"ok":false,"error":...}`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Posted {
    pub channel: String,
    pub text: String,
    pub at: Instant,
}

/// What the next request gets instead of success.
#[derive(Debug, Clone)]
pub enum Failure {
    RateLimited { retry_after_secs: u64 },
    ServerError,
    Api(&'static str),
}

#[derive(Default)]
struct Inner {
    posted: Vec<Posted>,
    attempts: Vec<Instant>,
    failures: VecDeque<Failure>,
}

#[derive(Clone)]
pub struct SlackServer {
    pub addr: SocketAddr,
    pub token: String,
    inner: Arc<Mutex<Inner>>,
}

impl SlackServer {
    pub async fn start() -> Self {
        let token = "fake-slack-token-for-tests".to_string();
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind slack stand-in");
        let addr = listener.local_addr().expect("slack stand-in address");
        let app =
            Router::new().route("/api/chat.postMessage", post(post_message)).with_state((token.clone(), inner.clone()));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, token, inner }
    }

    /// The `[slack]` table pointing the daemon here.
    pub fn config(&self) -> String {
        format!(
            "[slack]\ntoken = \"{}\"\nchannel = \"#test\"\napi_url = \"http://{}/api\"\ncoalesce_window_secs = 600\nretry_initial_ms = 100\n",
            self.token, self.addr
        )
    }

    pub fn fail_next(&self, failure: Failure) {
        self.inner.lock().unwrap().failures.push_back(failure);
    }

    pub fn posted(&self) -> Vec<Posted> {
        self.inner.lock().unwrap().posted.clone()
    }

    pub fn attempts(&self) -> Vec<Instant> {
        self.inner.lock().unwrap().attempts.clone()
    }

    pub fn texts_containing(&self, needle: &str) -> Vec<String> {
        self.posted().into_iter().map(|posted| posted.text).filter(|text| text.contains(needle)).collect()
    }
}

async fn post_message(
    State((token, inner)): State<(String, Arc<Mutex<Inner>>)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let authorized = headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok())
        == Some(format!("Bearer {token}").as_str());
    if !authorized {
        return Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
    }
    let mut inner = inner.lock().unwrap();
    inner.attempts.push(Instant::now());
    match inner.failures.pop_front() {
        Some(Failure::RateLimited { retry_after_secs }) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry_after_secs.to_string())],
                Json(json!({"ok": false, "error": "ratelimited"})),
            )
                .into_response();
        }
        Some(Failure::ServerError) => {
            return (StatusCode::SERVICE_UNAVAILABLE, "upstream unavailable").into_response();
        }
        Some(Failure::Api(error)) => return Json(json!({"ok": false, "error": error})).into_response(),
        None => {}
    }
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return Json(json!({"ok": false, "error": "invalid_json"})).into_response();
    };
    let channel = request["channel"].as_str().unwrap_or_default().to_string();
    let text = request["text"].as_str().unwrap_or_default().to_string();
    if channel.is_empty() {
        return Json(json!({"ok": false, "error": "channel_not_found"})).into_response();
    }
    inner.posted.push(Posted { channel: channel.clone(), text: text.clone(), at: Instant::now() });
    let ts = format!("{}.000100", inner.posted.len());
    Json(json!({
        "ok": true,
        "channel": "C0TEST",
        "ts": ts,
        "message": {"type": "message", "subtype": "bot_message", "text": text, "ts": ts, "bot_id": "B0TEST", "username": "smarthomed"}
    }))
    .into_response()
}
