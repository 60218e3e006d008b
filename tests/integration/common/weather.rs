//! A local stand-in for OpenWeatherMap: it answers the two endpoints the syncer uses
//! with the reference sample responses (../shared/reference/openweathermap/), refuses
//! a wrong key with HTTP 401 and an unknown city with HTTP 404 as the real service
//! does, and can fail the next requests on purpose (429 with Retry-After, 5xx, an
//! error body that echoes the request URL as some proxies do, a redirect elsewhere).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference/openweathermap/");

fn sample(name: &str) -> String {
    std::fs::read_to_string(format!("{REFERENCE}{name}")).unwrap_or_else(|err| panic!("{REFERENCE}{name}: {err}"))
}

/// What the next request gets instead of an answer.
#[derive(Debug, Clone)]
pub enum Fault {
    Status(StatusCode),
    /// HTTP 502 whose body quotes the request URL, key included.
    EchoUrl,
    /// HTTP 302 to this URL.
    Redirect(String),
}

#[derive(Default)]
struct Inner {
    requests: usize,
    failures: VecDeque<Fault>,
}

#[derive(Clone)]
pub struct WeatherServer {
    pub addr: SocketAddr,
    pub key: String,
    inner: Arc<Mutex<Inner>>,
}

type Shared = (String, Arc<Mutex<Inner>>);

impl WeatherServer {
    pub async fn start() -> Self {
        let key = "owm-test-key-0123456789".to_string();
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind weather stand-in");
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/data/2.5/weather", get(current))
            .route("/data/2.5/air_pollution", get(air))
            .with_state((key.clone(), inner.clone()));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, key, inner }
    }

    /// The `[weather]` table pointing the daemon here (the key goes in keys/).
    pub fn config(&self, city: &str) -> String {
        format!(
            "[weather]\ncity = \"{city}\"\napi_url = \"http://{}\"\ninterval_secs = 60\nretry_initial_ms = 100\n",
            self.addr
        )
    }

    pub fn fail_next(&self, status: StatusCode) {
        self.fault_next(Fault::Status(status));
    }

    pub fn fault_next(&self, fault: Fault) {
        self.inner.lock().unwrap().failures.push_back(fault);
    }

    pub fn requests(&self) -> usize {
        self.inner.lock().unwrap().requests
    }
}

fn check(key: &str, inner: &Mutex<Inner>, uri: &Uri, query: &HashMap<String, String>) -> Option<Response> {
    let mut inner = inner.lock().unwrap();
    inner.requests += 1;
    match inner.failures.pop_front() {
        Some(Fault::Status(status)) => {
            let mut response = (status, r#"{"cod":500,"message":"Internal error"}"#).into_response();
            if status == StatusCode::TOO_MANY_REQUESTS {
                response.headers_mut().insert(header::RETRY_AFTER, "1".parse().unwrap());
            }
            return Some(response);
        }
        Some(Fault::EchoUrl) => {
            let body = format!("<html><body>upstream failed for {uri}</body></html>");
            return Some((StatusCode::BAD_GATEWAY, body).into_response());
        }
        Some(Fault::Redirect(to)) => {
            return Some((StatusCode::FOUND, [(header::LOCATION, format!("{to}{uri}"))]).into_response());
        }
        None => {}
    }
    if query.get("appid").map(String::as_str) != Some(key) {
        return Some((StatusCode::UNAUTHORIZED, sample("error_401.json")).into_response());
    }
    None
}

async fn current(
    State((key, inner)): State<Shared>,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(refusal) = check(&key, &inner, &uri, &query) {
        return refusal;
    }
    let known = query.get("q").is_some_and(|city| city == "Seoul") || query.contains_key("lat");
    if !known {
        return (StatusCode::NOT_FOUND, sample("error_404_city.json")).into_response();
    }
    ([(header::CONTENT_TYPE, "application/json")], sample("current_weather_seoul.json")).into_response()
}

async fn air(State((key, inner)): State<Shared>, uri: Uri, Query(query): Query<HashMap<String, String>>) -> Response {
    if let Some(refusal) = check(&key, &inner, &uri, &query) {
        return refusal;
    }
    ([(header::CONTENT_TYPE, "application/json")], sample("air_pollution_seoul.json")).into_response()
}
