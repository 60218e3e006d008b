//! `smarthomed status`: what an operator asks first. The supervisor answers for the
//! processes and the broker's clients (its status socket); the newest alarms and the
//! schedules due next are read from the store, read-only, as the processor keeps them.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::config::{Backend, Config};
use crate::processor::alarms;
use crate::protocol::schedule::{SCHEDULES, Schedule};
use crate::schedule::timing;
use crate::store::firestore::FirestoreDocuments;
use crate::store::service_account::{FIRESTORE_SCOPES, ServiceAccountTokens};
use crate::store::{Document, DocumentStore, StoreError, embedded};
use crate::supervisor::status::{StatusError, query};
use crate::telemetry::DaemonStatus;

/// How many alarms and schedules the report lists.
const SHOWN: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum StatusCommandError {
    #[error(transparent)]
    Daemon(#[from] StatusError),
}

/// The report as printed; the daemon must be running, the store part says why it is
/// missing rather than failing the whole report.
pub async fn report(config: &Config, now: DateTime<Utc>) -> Result<String, StatusCommandError> {
    let daemon = query(&config.store.dir).await?;
    let mut text = render_daemon(&daemon);
    match read_store(config).await {
        Ok((alarm_documents, schedule_documents)) => {
            text += &render_alarms(alarm_documents);
            text += &render_schedules(&schedule_documents, now, config.schedule.zone());
        }
        Err(err) => {
            let _ = writeln!(text, "alarms and schedules: cannot read the store: {err}");
        }
    }
    Ok(text)
}

async fn read_store(config: &Config) -> Result<(Vec<(String, Document)>, Vec<(String, Document)>), StoreError> {
    match config.store.backend {
        Backend::Embedded => Ok((
            embedded::read_collection(&config.store.dir, alarms::COLLECTION)?,
            embedded::read_collection(&config.store.dir, SCHEDULES)?,
        )),
        Backend::Firebase => {
            let firebase = &config.firebase;
            let timeout = Duration::from_secs(firebase.timeout_secs);
            let store = if firebase.firestore_emulator_host.is_empty() {
                let tokens =
                    std::sync::Arc::new(ServiceAccountTokens::from_file(&firebase.credentials, FIRESTORE_SCOPES)?);
                FirestoreDocuments::connect(
                    &firebase.project_id,
                    crate::store::firestore::Endpoint::Google { tokens },
                    timeout,
                )
                .await?
            } else {
                FirestoreDocuments::emulator(&firebase.project_id, &firebase.firestore_emulator_host, timeout).await?
            };
            Ok((store.list(alarms::COLLECTION).await?, store.list(SCHEDULES).await?))
        }
    }
}

fn render_daemon(daemon: &DaemonStatus) -> String {
    let mut text = format!("smarthomed {}, pid {}, up {}\n", daemon.version, daemon.pid, span(daemon.up_secs));
    for child in &daemon.children {
        let _ = write!(text, "  {:<10}", child.role);
        match (child.pid, child.up_secs) {
            (Some(pid), Some(up)) => {
                let _ = write!(text, " pid {pid:<7} up {:<9}", span(up));
            }
            _ => text += " down                     ",
        }
        match child.last_heartbeat_ms_ago {
            Some(ms) => {
                let _ = write!(text, " heartbeat {:.1} s ago", ms as f64 / 1000.0);
            }
            None => text += " no heartbeat yet",
        }
        let _ = write!(text, ", restarts {}", child.restarts);
        if let Some(clients) = child.clients {
            let _ = write!(text, ", clients {clients}");
        }
        text.push('\n');
    }
    text
}

/// The newest alarms first: their ids sort newest first by construction.
fn render_alarms(mut documents: Vec<(String, Document)>) -> String {
    documents.sort_by(|(a, _), (b, _)| a.cmp(b));
    let mut text = String::from("last alarms:\n");
    if documents.is_empty() {
        text += "  none\n";
    }
    for (_, document) in documents.iter().take(SHOWN) {
        let field = |name: &str| document.get(name).and_then(|value| value.as_str()).unwrap_or("?");
        let _ = writeln!(text, "  {:<20} {}", field("date"), field("inform"));
    }
    text
}

fn render_schedules(documents: &[(String, Document)], now: DateTime<Utc>, zone: Tz) -> String {
    let mut due: Vec<(DateTime<Utc>, String)> = documents
        .iter()
        .filter_map(|(id, document)| Schedule::from_document(id, document).ok())
        .filter_map(|schedule| {
            let at = timing::next_after(std::iter::once(&schedule), now, zone)?;
            Some((at, schedule.title))
        })
        .collect();
    due.sort();
    let mut text = format!("schedules due next ({zone}):\n");
    if due.is_empty() {
        text += "  none\n";
    }
    for (at, title) in due.into_iter().take(SHOWN) {
        let _ = writeln!(text, "  {}  {title}", at.with_timezone(&zone).format("%Y-%m-%d %H:%M"));
    }
    text
}

fn span(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::ChildStatus;
    use serde_json::json;

    fn document(value: serde_json::Value) -> Document {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn children_show_pid_uptime_heartbeat_restarts_and_clients() {
        let daemon = DaemonStatus {
            version: "0.1.0".into(),
            pid: 10,
            up_secs: 7260,
            children: vec![
                ChildStatus {
                    role: "broker".into(),
                    pid: Some(11),
                    up_secs: Some(75),
                    last_heartbeat_ms_ago: Some(1500),
                    restarts: 1,
                    clients: Some(4),
                },
                ChildStatus {
                    role: "processor".into(),
                    pid: None,
                    up_secs: None,
                    last_heartbeat_ms_ago: None,
                    restarts: 2,
                    clients: None,
                },
            ],
        };
        let text = render_daemon(&daemon);
        assert!(text.starts_with("smarthomed 0.1.0, pid 10, up 2h01m\n"), "{text}");
        assert!(text.contains("broker     pid 11      up 1m15s"), "{text}");
        assert!(text.contains("heartbeat 1.5 s ago, restarts 1, clients 4"), "{text}");
        assert!(text.contains("processor  down") && text.contains("no heartbeat yet, restarts 2\n"), "{text}");
    }

    #[test]
    fn alarms_are_listed_newest_first_and_at_most_five() {
        let documents = (0..7)
            .map(|n| {
                let id = alarms::alarm_id(1_700_000_000 + n, 0);
                (
                    id,
                    document(
                        json!({"icon": 1, "date": format!("2026.11.23.10.0.{n}"), "inform": format!("alarm {n}")}),
                    ),
                )
            })
            .collect();
        let text = render_alarms(documents);
        let listed: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(listed.len(), 5);
        assert!(listed[0].ends_with("alarm 6") && listed[4].ends_with("alarm 2"), "{text}");
        assert_eq!(render_alarms(Vec::new()), "last alarms:\n  none\n");
    }

    #[test]
    fn schedules_are_listed_by_their_next_time_in_the_zone() {
        let zone: Tz = "Asia/Seoul".parse().unwrap();
        let now = DateTime::parse_from_rfc3339("2026-11-23T00:00:00Z").unwrap().with_timezone(&Utc);
        let schedule = crate::protocol::schedule::tests::schedule_document;
        let documents =
            vec![("late".to_string(), schedule("late", "2030")), ("early".into(), schedule("early", "1015"))];
        let text = render_schedules(&documents, now, zone);
        assert_eq!(text, "schedules due next (Asia/Seoul):\n  2026-11-23 10:15  early\n  2026-11-23 20:30  late\n");
    }

    #[test]
    fn spans_read_easily() {
        assert_eq!(span(59), "59s");
        assert_eq!(span(61), "1m01s");
        assert_eq!(span(3 * 3600 + 120), "3h02m");
        assert_eq!(span(2 * 86400 + 3600), "2d01h");
    }
}
