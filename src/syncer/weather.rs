//! OpenWeatherMap: current weather, then the air pollution at its coordinates, turned
//! into the `sensor/openweather` value of car2home.md section 5:
//! `{temp: "19.8" (Celsius, as text), description, icon, air_level, update}`.
//!
//! Parsing is plain functions over the response bodies; errors are sorted by what a
//! retry can change. The API key travels in the query string, so no error carries a
//! URL: reqwest's errors are stripped of theirs.

use std::time::Duration;

use chrono::NaiveDateTime;
use serde_json::{Value, json};

use crate::config::{Secret, WeatherConfig};

#[derive(Debug, thiserror::Error)]
pub enum WeatherError {
    #[error("the API key was refused (HTTP 401): check weather.api_key")]
    Unauthorized,
    #[error("OpenWeatherMap does not know the city {0:?} (HTTP 404): check weather.city")]
    UnknownCity(String),
    #[error("rate limited (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("OpenWeatherMap answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("cannot reach OpenWeatherMap: {0}")]
    Http(reqwest::Error),
    #[error("unexpected response from OpenWeatherMap: {0}")]
    BadResponse(String),
}

/// What the current-weather endpoint tells.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    pub lat: f64,
    pub lon: f64,
    pub description: String,
    pub icon: String,
    pub temp_celsius: f64,
}

pub fn parse_current(body: &Value) -> Result<Current, WeatherError> {
    let missing = |what: &str| WeatherError::BadResponse(format!("no {what} in the current weather"));
    let weather = body["weather"].get(0).ok_or_else(|| missing("weather[0]"))?;
    let kelvin = body["main"]["temp"].as_f64().ok_or_else(|| missing("main.temp"))?;
    Ok(Current {
        lat: body["coord"]["lat"].as_f64().ok_or_else(|| missing("coord.lat"))?,
        lon: body["coord"]["lon"].as_f64().ok_or_else(|| missing("coord.lon"))?,
        description: weather["description"].as_str().ok_or_else(|| missing("weather[0].description"))?.to_owned(),
        icon: weather["icon"].as_str().ok_or_else(|| missing("weather[0].icon"))?.to_owned(),
        temp_celsius: kelvin - 273.15,
    })
}

/// `list[0].main.aqi`: 1 good .. 5 very poor.
pub fn parse_air_level(body: &Value) -> Result<u8, WeatherError> {
    body["list"][0]["main"]["aqi"]
        .as_u64()
        .and_then(|aqi| u8::try_from(aqi).ok())
        .filter(|aqi| (1..=5).contains(aqi))
        .ok_or_else(|| WeatherError::BadResponse("no list[0].main.aqi (1-5) in the air pollution".into()))
}

/// The `sensor/openweather` value; `update` is local time with microseconds, as the
/// old backend wrote it.
pub fn tree_value(current: &Current, air_level: u8, updated: NaiveDateTime) -> Value {
    json!({
        "temp": format!("{:.1}", current.temp_celsius),
        "description": current.description,
        "icon": current.icon,
        "air_level": air_level,
        "update": updated.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
    })
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Secret,
    config: WeatherConfig,
}

impl Client {
    pub fn new(config: &WeatherConfig) -> Result<Self, WeatherError> {
        crate::tls::use_ring();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs))
            .redirect(same_origin_redirects())
            .build()
            .map_err(|err| WeatherError::Http(err.without_url()))?;
        Ok(Self {
            http,
            base: config.api_url.trim_end_matches('/').to_owned(),
            key: config.api_key.clone(),
            config: config.clone(),
        })
    }

    /// Current weather and air level, as the tree stores them.
    pub async fn fetch(&self) -> Result<(Current, u8), WeatherError> {
        let mut query = vec![("lang", self.config.lang.clone()), ("appid", self.key.expose().to_owned())];
        match (self.config.lat, self.config.lon) {
            (Some(lat), Some(lon)) => {
                query.push(("lat", lat.to_string()));
                query.push(("lon", lon.to_string()));
            }
            _ => query.push(("q", self.config.city.clone())),
        }
        let current = parse_current(&self.get("data/2.5/weather", &query).await?)?;
        let air_query = [
            ("lat", current.lat.to_string()),
            ("lon", current.lon.to_string()),
            ("appid", self.key.expose().to_owned()),
        ];
        let air_level = parse_air_level(&self.get("data/2.5/air_pollution", &air_query).await?)?;
        Ok((current, air_level))
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, WeatherError> {
        let response = self
            .http
            .get(format!("{}/{path}", self.base))
            .query(query)
            .send()
            .await
            .map_err(|err| WeatherError::Http(err.without_url()))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .map(Duration::from_secs);
        let body = response.text().await.map_err(|err| WeatherError::Http(err.without_url()))?;
        let json: Option<Value> = serde_json::from_str(&body).ok();
        let message = json
            .as_ref()
            .and_then(|json| json["message"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| body.chars().take(200).collect());
        // An error body may quote the request URL (proxies and gateways do).
        let message = redact(&message, self.key.expose());
        match status.as_u16() {
            200 => json.ok_or_else(|| WeatherError::BadResponse(format!("not JSON: {message}"))),
            401 => Err(WeatherError::Unauthorized),
            404 => Err(WeatherError::UnknownCity(self.config.city.clone())),
            429 => Err(WeatherError::RateLimited { retry_after }),
            status => Err(WeatherError::Status { status, message }),
        }
    }
}

/// Follows redirects only within the origin they started from: the key travels in the
/// query string, and must never be carried to another host.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt.previous().first().is_some_and(|first| first.origin() == attempt.url().origin());
        if attempt.previous().len() > 5 {
            attempt.error("too many redirects")
        } else if same_origin {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// `text` with every copy of `key` (and its URL-encoded form) blanked out.
fn redact(text: &str, key: &str) -> String {
    if key.is_empty() {
        return text.to_owned();
    }
    let encoded: String = url::form_urlencoded::byte_serialize(key.as_bytes()).collect();
    text.replace(key, "[redacted]").replace(&encoded, "[redacted]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Value {
        let path = format!("{}/../shared/reference/openweathermap/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"))).unwrap()
    }

    #[test]
    fn the_sample_responses_make_the_old_tree_value() {
        let current = parse_current(&sample("current_weather_seoul.json")).unwrap();
        assert_eq!((current.lat, current.lon), (37.5683, 126.9778));
        let air = parse_air_level(&sample("air_pollution_seoul.json")).unwrap();
        let updated =
            chrono::NaiveDate::from_ymd_opt(2021, 9, 22).unwrap().and_hms_micro_opt(20, 36, 14, 881_117).unwrap();
        assert_eq!(
            tree_value(&current, air, updated),
            json!({"temp": "19.8", "description": "실 비", "icon": "10n", "air_level": 2, "update": "2021-09-22 20:36:14.881117"})
        );
    }

    #[test]
    fn the_key_is_redacted_from_quoted_urls() {
        let text = "failed: /data/2.5/weather?lang=kr&appid=k%2By+z&q=Seoul and k+y z";
        assert_eq!(redact(text, "k+y z"), "failed: /data/2.5/weather?lang=kr&appid=[redacted]&q=Seoul and [redacted]");
        assert_eq!(redact("no key here", ""), "no key here");
    }

    #[test]
    fn incomplete_responses_are_errors_not_defaults() {
        assert!(matches!(parse_current(&json!({"weather": []})), Err(WeatherError::BadResponse(_))));
        assert!(matches!(parse_current(&sample("error_401.json")), Err(WeatherError::BadResponse(_))));
        assert!(matches!(parse_air_level(&json!({"list": [{"main": {"aqi": 9}}]})), Err(WeatherError::BadResponse(_))));
    }
}
