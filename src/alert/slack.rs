//! Delivery of alerts to Slack (chat.postMessage with a bot token), or to the log
//! alone when no token is configured.
//!
//! Failures are sorted by what retrying could change: a 429 waits for its Retry-After,
//! network errors and 5xx back off, and answers such as `invalid_auth` or
//! `channel_not_found` are logged once and dropped, since sending again cannot help.
//! The token is held only inside slack-morphism's token type and never formatted.

use std::time::{Duration, Instant};

use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Alert, AlertQueue, Coalescer};
use crate::backoff::Backoff;
use crate::config::SlackConfig;

/// Slack accepts up to 40,000 characters; an alert is read on a phone.
const MAX_TEXT_CHARS: usize = 3_000;
/// How long pending alerts may still be sent once shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum SlackError {
    #[error("cannot set up HTTPS for Slack (native root certificates): {0}")]
    Tls(std::io::Error),
}

/// What to do after a failed delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    After(Duration),
    WithBackoff,
    GiveUp,
}

pub fn retry_decision(err: &SlackClientError) -> Retry {
    match err {
        SlackClientError::RateLimitError(limit) => limit.retry_after.map_or(Retry::WithBackoff, Retry::After),
        SlackClientError::HttpError(http) if http.status_code.is_server_error() => Retry::WithBackoff,
        SlackClientError::HttpError(http) if http.status_code.as_u16() == 408 => Retry::WithBackoff,
        SlackClientError::HttpProtocolError(_)
        | SlackClientError::SystemError(_)
        | SlackClientError::EndOfStream(_) => Retry::WithBackoff,
        SlackClientError::ApiError(api)
            if matches!(
                api.code.as_str(),
                "ratelimited" | "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout"
            ) =>
        {
            Retry::WithBackoff
        }
        _ => Retry::GiveUp,
    }
}

type Client = SlackClient<
    SlackClientHyperConnector<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>>,
>;

/// Where alerts end up.
pub enum Destination {
    LogOnly,
    Slack(Box<SlackSink>),
}

pub struct SlackSink {
    client: Client,
    token: SlackApiToken,
    channel: SlackChannelId,
    backoff: Backoff,
    max_attempts: u32,
    host: String,
}

impl Destination {
    pub fn from_config(config: &SlackConfig) -> Result<Self, SlackError> {
        if config.token.is_empty() {
            return Ok(Self::LogOnly);
        }
        crate::tls::use_ring();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(SlackError::Tls)?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let connector = SlackClientHyperConnector::from(https).with_slack_api_url(config.api_url.trim_end_matches('/'));
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_else(|| "unknown-host".into());
        Ok(Self::Slack(Box::new(SlackSink {
            client: SlackClient::new(connector),
            token: SlackApiToken::new(SlackApiTokenValue::new(config.token.expose().to_owned())),
            channel: SlackChannelId::new(config.channel.clone()),
            backoff: Backoff::new(
                Duration::from_millis(config.retry_initial_ms),
                Duration::from_millis(config.retry_max_ms),
            ),
            max_attempts: config.max_attempts,
            host,
        })))
    }

    pub fn describe(&self) -> String {
        match self {
            Self::LogOnly => "no Slack token configured: alerts go to the log only".into(),
            Self::Slack(sink) => format!("alerts go to Slack channel {}", sink.channel),
        }
    }

    async fn deliver(&mut self, alert: &Alert, shutdown: &CancellationToken) {
        match self {
            Self::LogOnly => {}
            Self::Slack(sink) => sink.deliver(alert, shutdown).await,
        }
    }
}

impl SlackSink {
    async fn deliver(&mut self, alert: &Alert, shutdown: &CancellationToken) {
        let text = message_text(&self.host, alert);
        let request =
            SlackApiChatPostMessageRequest::new(self.channel.clone(), SlackMessageContent::new().with_text(text));
        self.backoff.reset();
        for attempt in 1..=self.max_attempts {
            let session = self.client.open_session(&self.token);
            let err = match session.chat_post_message(&request).await {
                Ok(_) => {
                    metrics::counter!("smarthomed_alerts_total", "outcome" => "sent").increment(1);
                    return;
                }
                Err(err) => err,
            };
            let wait = match retry_decision(&err) {
                Retry::GiveUp => {
                    metrics::counter!("smarthomed_alerts_total", "outcome" => "refused").increment(1);
                    error!(title = alert.title, "Slack refused the alert, not retrying: {err}");
                    return;
                }
                _ if attempt == self.max_attempts => break,
                Retry::After(wait) => wait,
                Retry::WithBackoff => self.backoff.next_delay(),
            };
            warn!(attempt, retry_in = ?wait, "Slack delivery failed: {err}");
            if shutdown.is_cancelled() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => break,
            }
        }
        metrics::counter!("smarthomed_alerts_total", "outcome" => "failed").increment(1);
        error!(title = alert.title, attempts = self.max_attempts, "alert not delivered to Slack");
    }
}

fn message_text(host: &str, alert: &Alert) -> String {
    let mut text = format!("*smarthomed@{host}* · {}: *{}*", alert.source, alert.title);
    if !alert.detail.is_empty() {
        text.push_str("\n```\n");
        text.push_str(&alert.detail);
        text.push_str("\n```");
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        text = text.chars().take(MAX_TEXT_CHARS - 4).collect::<String>() + "\n```";
    }
    text
}

/// Takes alerts off the queue, coalesces them and delivers them until `shutdown`;
/// then sends what is still pending within a short grace period.
pub async fn run(
    mut destination: Destination,
    mut new_destinations: mpsc::Receiver<Destination>,
    mut queue: AlertQueue,
    mut coalescer: Coalescer,
    shutdown: CancellationToken,
) {
    info!("{}", destination.describe());
    loop {
        let next_close = coalescer.next_close();
        let alert = tokio::select! {
            () = shutdown.cancelled() => break,
            () = sleep_until(next_close) => {
                for summary in coalescer.close_due(Instant::now()) {
                    destination.deliver(&summary, &shutdown).await;
                }
                continue;
            }
            Some(replacement) = new_destinations.recv() => {
                destination = replacement;
                info!("{} (reloaded)", destination.describe());
                continue;
            }
            alert = queue.recv() => match alert {
                Some(alert) => alert,
                None => break,
            },
        };
        for alert in coalescer.offer(alert, Instant::now()) {
            destination.deliver(&alert, &shutdown).await;
        }
    }

    let drain = async {
        queue.close();
        let mut pending = Vec::new();
        while let Some(alert) = queue.recv().await {
            pending.extend(coalescer.offer(alert, Instant::now()));
        }
        pending.extend(coalescer.close_due(Instant::now() + Duration::from_secs(365 * 24 * 3600)));
        let no_retries = CancellationToken::new();
        no_retries.cancel();
        for alert in &pending {
            destination.deliver(alert, &no_retries).await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        warn!("gave up sending pending alerts at shutdown");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slack_morphism::errors::{SlackClientApiError, SlackClientHttpError, SlackRateLimitError};

    #[test]
    fn rate_limits_wait_for_retry_after() {
        let err = SlackClientError::RateLimitError(SlackRateLimitError::new().with_retry_after(Duration::from_secs(7)));
        assert_eq!(retry_decision(&err), Retry::After(Duration::from_secs(7)));
        let err = SlackClientError::RateLimitError(SlackRateLimitError::new());
        assert_eq!(retry_decision(&err), Retry::WithBackoff);
    }

    #[test]
    fn server_errors_back_off_and_refusals_give_up() {
        let status = |code: u16| {
            let status = http::StatusCode::from_u16(code).unwrap();
            SlackClientError::HttpError(SlackClientHttpError::new(status))
        };
        assert_eq!(retry_decision(&status(503)), Retry::WithBackoff);
        assert_eq!(retry_decision(&status(404)), Retry::GiveUp);
        let api = |code: &str| SlackClientError::ApiError(SlackClientApiError::new(code.into()));
        assert_eq!(retry_decision(&api("invalid_auth")), Retry::GiveUp);
        assert_eq!(retry_decision(&api("channel_not_found")), Retry::GiveUp);
        assert_eq!(retry_decision(&api("internal_error")), Retry::WithBackoff);
    }

    #[test]
    fn long_details_are_cut_and_keep_their_code_block_closed() {
        let alert = Alert::new("processor", "died", "x".repeat(10_000));
        let text = message_text("pi", &alert);
        assert!(text.chars().count() <= MAX_TEXT_CHARS);
        assert!(text.ends_with("\n```"));
        assert!(text.starts_with("*smarthomed@pi* · processor: *died*"));
    }
}
