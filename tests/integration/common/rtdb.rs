//! A local stand-in for the Firebase Realtime Database REST API: `GET`, `PUT`,
//! `PATCH` and `DELETE` on `/<path>.json` with a bearer token, and streaming with
//! `Accept: text/event-stream`: a first `put` of the whole subtree, then `put` and
//! `patch` events whose `path` is relative to the listened location, as documented.
//! Tests can also drop every stream, or push raw events (`auth_revoked`, `cancel`,
//! malformed ones) into them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use smarthomed::store::tree::{self, TreePath};
use tokio::sync::broadcast;

#[derive(Clone, Debug)]
enum Change {
    Put { path: TreePath, data: Value },
    Patch { path: TreePath, data: Value },
    Raw(String),
    Drop,
}

#[derive(Clone)]
pub struct RtdbServer {
    pub url: String,
    pub token: String,
    root: Arc<Mutex<Value>>,
    changes: broadcast::Sender<Change>,
    streams_opened: Arc<Mutex<usize>>,
    /// Requests still to be refused, and how.
    refusals: Arc<Mutex<Vec<(StatusCode, &'static str)>>>,
    /// Requests still to be left unanswered, as a stalled server leaves them.
    stalls: Arc<Mutex<usize>>,
}

impl RtdbServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind rtdb stand-in");
        let addr: SocketAddr = listener.local_addr().unwrap();
        let server = Self {
            url: format!("http://{addr}"),
            token: "rtdb-test-token".into(),
            root: Arc::new(Mutex::new(Value::Null)),
            changes: broadcast::channel(256).0,
            streams_opened: Arc::new(Mutex::new(0)),
            refusals: Arc::new(Mutex::new(Vec::new())),
            stalls: Arc::new(Mutex::new(0)),
        };
        let app = Router::new().fallback(handle).with_state(server.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        server
    }

    /// Ends every open stream, as a network failure would.
    pub fn drop_streams(&self) {
        let _ = self.changes.send(Change::Drop);
    }

    /// Sends `event` (e.g. "event: cancel\ndata: null\n\n") to every open stream.
    pub fn push_raw(&self, event: &str) {
        let _ = self.changes.send(Change::Raw(event.to_owned()));
    }

    /// Writes as another client would.
    pub fn put(&self, path: &str, data: Value) {
        let path = TreePath::parse(path).unwrap();
        tree::set(&mut self.root.lock().unwrap(), &path, data.clone());
        let _ = self.changes.send(Change::Put { path, data });
    }

    /// The next `count` requests are refused with `status` and the database's message
    /// for it: 401 "Unauthorized request." as for an expired token, 503 as in an outage.
    pub fn refuse_next(&self, status: StatusCode, count: usize) {
        let message = match status {
            StatusCode::UNAUTHORIZED => "Unauthorized request.",
            _ => "Service Unavailable",
        };
        self.refusals.lock().unwrap().extend(std::iter::repeat_n((status, message), count));
    }

    /// What is stored at `path`, as a GET would answer.
    /// Leaves the next `count` requests unanswered, their connections open.
    pub fn stall_next(&self, count: usize) {
        *self.stalls.lock().unwrap() += count;
    }

    pub fn value(&self, path: &str) -> Option<Value> {
        tree::get(&self.root.lock().unwrap(), &TreePath::parse(path).unwrap()).cloned()
    }

    pub fn streams_opened(&self) -> usize {
        *self.streams_opened.lock().unwrap()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

async fn handle(
    axum::extract::State(server): axum::extract::State<RtdbServer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let stall = {
        let mut stalls = server.stalls.lock().unwrap();
        let stall = *stalls > 0;
        *stalls = stalls.saturating_sub(1);
        stall
    };
    if stall {
        std::future::pending::<()>().await;
    }
    if let Some((status, message)) = server.refusals.lock().unwrap().pop() {
        return error(status, message);
    }
    let authorized =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {}", server.token));
    if !authorized {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized request.");
    }
    let Some(raw) = uri.path().strip_suffix(".json") else {
        return error(StatusCode::BAD_REQUEST, "Invalid path: must end in .json");
    };
    let decoded = url::form_urlencoded::parse(format!("p={}", raw.trim_end_matches('/')).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let Ok(path) = TreePath::parse(&decoded) else {
        return error(StatusCode::BAD_REQUEST, "Invalid path");
    };
    let streaming = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) == Some("text/event-stream");
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    match (method, streaming) {
        (Method::GET, true) => stream(server, path),
        (Method::GET, false) => {
            axum::Json(tree::get(&server.root.lock().unwrap(), &path).cloned().unwrap_or(Value::Null)).into_response()
        }
        (Method::PUT, _) => {
            let Some(data) = parsed else {
                return error(StatusCode::BAD_REQUEST, "Invalid data; couldn't parse JSON object.");
            };
            server.put(&path.to_string(), data.clone());
            axum::Json(data).into_response()
        }
        (Method::PATCH, _) => {
            let Some(Value::Object(fields)) = parsed.clone() else {
                return error(StatusCode::BAD_REQUEST, "Invalid data; couldn't parse JSON object.");
            };
            {
                let mut root = server.root.lock().unwrap();
                for (key, value) in &fields {
                    tree::set(&mut root, &path.join(key).unwrap(), value.clone());
                }
            }
            let _ = server.changes.send(Change::Patch { path, data: Value::Object(fields.clone()) });
            axum::Json(Value::Object(fields)).into_response()
        }
        (Method::DELETE, _) => {
            server.put(&path.to_string(), Value::Null);
            axum::Json(Value::Null).into_response()
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
    }
}

fn sse(event: &str, path: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {}\n\n", json!({"path": path, "data": data}))
}

/// The event a watcher of `watched` gets for a change, if any.
fn event_for(watched: &TreePath, change: &Change, root: &Value) -> Option<String> {
    let (kind, changed, data) = match change {
        Change::Put { path, data } => ("put", path, data),
        Change::Patch { path, data } => ("patch", path, data),
        Change::Raw(text) => return Some(text.clone()),
        Change::Drop => return None,
    };
    if !watched.overlaps(changed) {
        return None;
    }
    let below = changed.segments().len() >= watched.segments().len();
    if below {
        let relative = format!("/{}", changed.segments()[watched.segments().len()..].join("/"));
        Some(sse(kind, &relative, data))
    } else {
        Some(sse("put", "/", &tree::get(root, watched).cloned().unwrap_or(Value::Null)))
    }
}

fn stream(server: RtdbServer, path: TreePath) -> Response {
    *server.streams_opened.lock().unwrap() += 1;
    let first = sse("put", "/", &tree::get(&server.root.lock().unwrap(), &path).cloned().unwrap_or(Value::Null));
    let receiver = server.changes.subscribe();
    let state = (Some(first), receiver, server, path);
    let body = futures_util::stream::unfold(state, |(first, mut receiver, server, path)| async move {
        if let Some(first) = first {
            return Some((Ok::<_, Infallible>(Bytes::from(first)), (None, receiver, server, path)));
        }
        loop {
            let change = receiver.recv().await.ok()?;
            if matches!(change, Change::Drop) {
                return None;
            }
            let root = server.root.lock().unwrap().clone();
            if let Some(event) = event_for(&path, &change, &root) {
                return Some((Ok(Bytes::from(event)), (None, receiver, server, path)));
            }
        }
    });
    ([(header::CONTENT_TYPE, "text/event-stream")], Body::from_stream(body)).into_response()
}
