//! `[weather]`: the OpenWeatherMap fetch.

use serde::{Deserialize, Serialize};

use super::{Bound, ConfigError, DAY_SECS, HOUR_MS, Secret, invalid};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeatherConfig {
    /// OpenWeatherMap API key; empty: the weather is off.
    pub api_key: Secret,
    /// Where, by name, unless `lat` and `lon` are given.
    pub city: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    /// Language of the description ("kr" as the old system).
    pub lang: String,
    pub interval_secs: u64,
    pub api_url: String,
    pub timeout_secs: u64,
    /// After a failure, the next try comes after this, doubling up to `interval_secs`.
    pub retry_initial_ms: u64,
}

impl Default for WeatherConfig {
    fn default() -> Self {
        Self {
            api_key: Secret::default(),
            city: "Seoul".into(),
            lat: None,
            lon: None,
            lang: "kr".into(),
            interval_secs: 900,
            api_url: "https://api.openweathermap.org".into(),
            timeout_secs: 10,
            retry_initial_ms: 5_000,
        }
    }
}

impl WeatherConfig {
    /// Each numeric setting with its value and the range it must fall in.
    pub(super) fn bounds(&self) -> Vec<Bound> {
        vec![
            ("weather.interval_secs", self.interval_secs, 60..=DAY_SECS),
            ("weather.timeout_secs", self.timeout_secs, 1..=600),
            ("weather.retry_initial_ms", self.retry_initial_ms, 1..=HOUR_MS),
        ]
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match (self.lat, self.lon) {
            (Some(lat), Some(lon)) => {
                if !(-90.0..=90.0).contains(&lat) {
                    return Err(invalid("weather.lat", "must be between -90 and 90"));
                }
                if !(-180.0..=180.0).contains(&lon) {
                    return Err(invalid("weather.lon", "must be between -180 and 180"));
                }
            }
            (None, None) if self.city.trim().is_empty() => {
                return Err(invalid("weather.city", "must name a city unless weather.lat and weather.lon are set"));
            }
            (None, None) => {}
            (Some(_), None) => return Err(invalid("weather.lon", "is needed with weather.lat")),
            (None, Some(_)) => return Err(invalid("weather.lat", "is needed with weather.lon")),
        }
        let url =
            url::Url::parse(&self.api_url).map_err(|err| invalid("weather.api_url", format!("not a URL: {err}")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(invalid("weather.api_url", "must be an https:// (or http://) URL"));
        }
        Ok(())
    }
}
