//! The schedule engine: runs each occurrence of each schedule exactly once.
//!
//! It keeps `schedule_mode` and `modes` in memory through store listeners (so edits
//! take effect at once), sleeps until the next due minute (or an edit, or at most
//! `schedule.max_sleep_secs`), and on waking handles every occurrence due since it
//! last checked, in time order: it records the occurrence in the store first (so a
//! restart never repeats it), then sends the control that brings the appliance to the
//! target, if anything differs. Where it last checked is stored too, so runs missed
//! while the daemon was down are caught up (within the grace period) or reported as
//! missed. A malformed document is reported once and skipped.

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use rumqttc::{AsyncClient, QoS};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::STATE_COLLECTION;
use crate::alert::{Alert, Alerter};
use crate::config::ScheduleConfig;
use crate::protocol::appliance::State;
use crate::protocol::command::error_reply;
use crate::protocol::schedule::{DocumentError, MODES, Mode, SCHEDULES, Schedule};
use crate::protocol::topics::{APPLIANCE_CONTROL_TOPIC, DATA_ERROR_TOPIC, DATA_WARNING_TOPIC};
use crate::schedule::timing::{self, Occurrence, Plan};
use crate::schedule::{clock, target};
use crate::store::{Document, DocumentEvent, DocumentStore, StoreError};

/// Handled occurrences: per schedule title, the local date of the last one.
const RUNS: &str = "smarthomed_schedule_runs";
const CHECKED: &str = "schedule";
/// How far back a restart looks for missed runs.
const MAX_LOOKBACK_DAYS: i64 = 7;

pub struct Engine<S> {
    pub store: S,
    pub client: AsyncClient,
    pub config: ScheduleConfig,
    pub alerter: Alerter,
    pub state: watch::Receiver<Option<State>>,
}

/// The readable documents of one collection, kept current from its listener.
struct Catalog<T> {
    read: fn(&str, &Document) -> Result<T, DocumentError>,
    items: HashMap<String, T>,
    /// Problems already reported, by id: reported again only if they change.
    reported: HashMap<String, String>,
}

impl<T> Catalog<T> {
    fn new(read: fn(&str, &Document) -> Result<T, DocumentError>) -> Self {
        Self { read, items: HashMap::new(), reported: HashMap::new() }
    }

    /// Applies a listener event; returns the problems not reported before.
    fn apply(&mut self, event: DocumentEvent) -> Vec<DocumentError> {
        let mut new_problems = Vec::new();
        let mut accept = |catalog: &mut Self, id: String, document: &Document| match (catalog.read)(&id, document) {
            Ok(item) => {
                catalog.reported.remove(&id);
                catalog.items.insert(id, item);
            }
            Err(err) => {
                catalog.items.remove(&id);
                let text = err.to_string();
                if catalog.reported.get(&id) != Some(&text) {
                    catalog.reported.insert(id, text);
                    new_problems.push(err);
                }
            }
        };
        match event {
            DocumentEvent::Snapshot(documents) => {
                self.items.clear();
                for (id, document) in documents {
                    accept(self, id, &document);
                }
            }
            DocumentEvent::Set { id, document } => accept(self, id, &document),
            DocumentEvent::Deleted { id } => {
                self.items.remove(&id);
                self.reported.remove(&id);
            }
        }
        new_problems
    }
}

struct Known {
    schedules: Catalog<Schedule>,
    /// By document id; looked up by `modeNum`.
    modes: Catalog<Mode>,
}

impl<S: DocumentStore> Engine<S> {
    pub async fn run(self, tasks: &TaskTracker, shutdown: CancellationToken) {
        let zone = self.config.zone();
        let grace = Duration::seconds(self.config.grace_secs as i64);
        let max_sleep = std::time::Duration::from_secs(self.config.max_sleep_secs);
        let (schedule_events, mut schedule_queue) = mpsc::channel(16);
        let (mode_events, mut mode_queue) = mpsc::channel(16);
        for (collection, events) in [(SCHEDULES, schedule_events), (MODES, mode_events)] {
            let store = self.store.clone();
            let stop = shutdown.clone();
            let alerter = self.alerter.clone();
            tasks.spawn(async move {
                if let Err(err) = store.watch(collection, events, stop).await {
                    warn!(collection, "schedule listener stopped: {err}");
                    alerter.raise(Alert::new(
                        super::ROLE,
                        "the schedule engine lost its store listener",
                        err.to_string(),
                    ));
                }
            });
        }
        let mut known =
            Known { schedules: Catalog::new(Schedule::from_document), modes: Catalog::new(Mode::from_document) };
        // Both first snapshots, before anything is judged due.
        let (mut have_schedules, mut have_modes) = (false, false);
        while !(have_schedules && have_modes) {
            tokio::select! {
                () = shutdown.cancelled() => return,
                event = schedule_queue.recv(), if !have_schedules => match event {
                    Some(event) => {
                        have_schedules = true;
                        self.apply(&mut known.schedules, event);
                    }
                    None => return,
                },
                event = mode_queue.recv(), if !have_modes => match event {
                    Some(event) => {
                        have_modes = true;
                        self.apply(&mut known.modes, event);
                    }
                    None => return,
                },
            }
        }
        info!(%zone, schedules = known.schedules.items.len(), modes = known.modes.items.len(), "schedule engine running");

        let mut checked = self.load_checked(grace).await;
        loop {
            let now = clock::now();
            // Stored only when occurrences were due: a wake-up with nothing to do (its
            // own deletes, a document edited) costs no write. A restart then looks back
            // further, and what already ran is in the runs it recorded.
            if self.handle_due(&mut known, checked, now, zone, grace).await {
                self.save_checked(now).await;
            }
            checked = now;

            let until_next = timing::next_after(known.schedules.items.values(), now, zone)
                .and_then(|next| (next - clock::now()).to_std().ok())
                .unwrap_or(max_sleep)
                .min(max_sleep);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(until_next) => {}
                event = schedule_queue.recv() => match event {
                    Some(event) => self.apply(&mut known.schedules, event),
                    None => return,
                },
                event = mode_queue.recv() => match event {
                    Some(event) => self.apply(&mut known.modes, event),
                    None => return,
                },
            }
        }
    }

    /// Runs (or reports) what fell due in `(from, now]`; whether anything did.
    async fn handle_due(
        &self,
        known: &mut Known,
        from: DateTime<Utc>,
        now: DateTime<Utc>,
        zone: Tz,
        grace: Duration,
    ) -> bool {
        let due = timing::due_between(known.schedules.items.values(), from, now, zone);
        let any = !due.is_empty();
        for occurrence in due {
            match self.already_handled(&occurrence).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(err) => {
                    self.store_failed("cannot read schedule runs; not running", &err);
                    continue;
                }
            }
            if let Err(err) = self.record(&occurrence).await {
                self.store_failed("cannot record a schedule run; not running it", &err);
                continue;
            }
            let Some(schedule) = known.schedules.items.get(&occurrence.title).cloned() else { continue };
            match timing::plan(&occurrence, now, grace) {
                Plan::Run { late_by } => {
                    if let Some(late_by) = late_by {
                        self.report(
                            DATA_WARNING_TOPIC,
                            "schedule_late",
                            format!(
                                "schedule {} of {} at {} ran {} s late",
                                occurrence.title,
                                occurrence.date,
                                occurrence.at,
                                late_by.num_seconds()
                            ),
                        );
                    }
                    self.fire(known, &schedule).await;
                }
                Plan::Missed { late_by } => self.report(
                    DATA_WARNING_TOPIC,
                    "schedule_missed",
                    format!(
                        "schedule {} of {} at {} was missed by {} s (more than schedule.grace_secs): not run",
                        occurrence.title,
                        occurrence.date,
                        occurrence.at,
                        late_by.num_seconds()
                    ),
                ),
            }
            if !schedule.repeat {
                match self.store.delete(SCHEDULES, &schedule.title).await {
                    Ok(_) => {
                        known.schedules.items.remove(&schedule.title);
                        info!(title = schedule.title, "one-off schedule done and deleted");
                    }
                    Err(err) => self.store_failed("cannot delete a finished one-off schedule", &err),
                }
            }
        }
        any
    }

    async fn fire(&self, known: &Known, schedule: &Schedule) {
        let settings = if schedule.mode_num == 0 {
            schedule.settings
        } else {
            match known.modes.items.values().find(|mode| mode.number == schedule.mode_num) {
                Some(mode) => mode.settings,
                None => {
                    self.report(
                        DATA_ERROR_TOPIC,
                        "missing_mode",
                        format!(
                            "schedule {} names mode {}, which does not exist: not run",
                            schedule.title, schedule.mode_num
                        ),
                    );
                    return;
                }
            }
        };
        let wanted = target::full_control(schedule.mode_num, &settings);
        let current = *self.state.borrow();
        match target::needed_control(&wanted, current.as_ref()) {
            Some(control) => {
                info!(title = schedule.title, control = %control, "schedule runs");
                metrics::counter!("smarthomed_processor_schedule_runs_total").increment(1);
                if let Err(err) =
                    self.client.publish(APPLIANCE_CONTROL_TOPIC, QoS::AtLeastOnce, false, control.encode()).await
                {
                    warn!("cannot publish the schedule's control: {err}");
                }
            }
            None => info!(title = schedule.title, "schedule runs: the appliance is already as wanted"),
        }
    }

    async fn already_handled(&self, occurrence: &Occurrence) -> Result<bool, StoreError> {
        let record = self.store.get(RUNS, &occurrence.title).await?;
        let last = record
            .as_ref()
            .and_then(|record| record.get("date"))
            .and_then(Value::as_str)
            .and_then(|date| NaiveDate::parse_from_str(date, "%Y-%m-%d").ok());
        Ok(last.is_some_and(|last| last >= occurrence.date))
    }

    async fn record(&self, occurrence: &Occurrence) -> Result<(), StoreError> {
        let record = json!({"date": occurrence.date.to_string(), "at": occurrence.at.to_rfc3339()});
        self.store.set(RUNS, &occurrence.title, record.as_object().cloned().unwrap_or_default()).await
    }

    async fn load_checked(&self, grace: Duration) -> DateTime<Utc> {
        let now = clock::now();
        let stored = match self.store.get(STATE_COLLECTION, CHECKED).await {
            Ok(stored) => stored,
            Err(err) => {
                self.store_failed("cannot read where the schedule engine stopped", &err);
                None
            }
        };
        stored
            .as_ref()
            .and_then(|doc| doc.get("checked_until"))
            .and_then(Value::as_str)
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            .map(|at| at.with_timezone(&Utc).max(now - Duration::days(MAX_LOOKBACK_DAYS)))
            .unwrap_or(now - grace)
    }

    async fn save_checked(&self, at: DateTime<Utc>) {
        let document = json!({"checked_until": at.to_rfc3339()});
        if let Err(err) =
            self.store.set(STATE_COLLECTION, CHECKED, document.as_object().cloned().unwrap_or_default()).await
        {
            self.store_failed("cannot store where the schedule engine is", &err);
        }
    }

    /// Applies a listener event to `catalog`, reporting documents it cannot read.
    fn apply<T>(&self, catalog: &mut Catalog<T>, event: DocumentEvent) {
        for problem in catalog.apply(event) {
            self.report(DATA_ERROR_TOPIC, "invalid_document", format!("{problem}; skipped"));
        }
    }

    /// Logs, alerts and publishes a problem for operators.
    fn report(&self, topic: &'static str, code: &'static str, message: String) {
        warn!(code, "{message}");
        self.alerter.raise(Alert::new(super::ROLE, format!("schedules: {code}"), message.clone()));
        let payload = error_reply(code, &message, None).to_string();
        if let Err(err) = self.client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
            warn!("cannot publish the report: {err}");
        }
    }

    fn store_failed(&self, what: &str, err: &StoreError) {
        metrics::counter!("smarthomed_processor_store_errors_total").increment(1);
        warn!("{what}: {err}");
        self.alerter.raise(Alert::new(super::ROLE, what, err.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::schedule::tests::schedule_document;

    #[test]
    fn a_malformed_document_is_reported_once_until_its_problem_changes() {
        let mut catalog = Catalog::new(Schedule::from_document);
        let good = schedule_document("a", "0700");
        let mut bad = schedule_document("b", "0700");
        bad.insert("startTime".into(), json!("x"));
        let problems = catalog.apply(DocumentEvent::Snapshot(vec![("a".into(), good), ("b".into(), bad.clone())]));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "startTime");
        assert_eq!(catalog.items.len(), 1);

        assert!(catalog.apply(DocumentEvent::Set { id: "b".into(), document: bad.clone() }).is_empty());
        assert!(catalog.apply(DocumentEvent::Snapshot(vec![("b".into(), bad.clone())])).is_empty());
        bad.insert("enabled".into(), json!("yes"));
        bad.insert("startTime".into(), json!("0700"));
        assert_eq!(catalog.apply(DocumentEvent::Set { id: "b".into(), document: bad.clone() })[0].field, "enabled");

        catalog.apply(DocumentEvent::Deleted { id: "b".into() });
        assert_eq!(
            catalog.apply(DocumentEvent::Set { id: "b".into(), document: bad }).len(),
            1,
            "reported again after a delete"
        );
        catalog.apply(DocumentEvent::Set { id: "b".into(), document: schedule_document("b", "0800") });
        assert_eq!(catalog.items.len(), 1, "b fixed, a gone with the snapshot");
    }
}
