//! The supervisor (`smarthomed run`): starts the broker, waits until it accepts MQTT
//! connections, then starts the processor and the syncer, each a process of its own.
//!
//! Each child has a runner task that restarts it by its [`RestartPolicy`] and reports
//! to the main loop, which keeps systemd informed (READY, STATUS, WATCHDOG) and owns
//! shutdown: on SIGTERM or SIGINT the processor and syncer stop first (they finish
//! in-flight work), then the broker; a child that does not stop in time is killed.
//! When a child exceeds its restart limit the whole daemon stops with
//! [`EXIT_RESTART_LIMIT`], escalating to systemd as an OTP supervisor escalates to its
//! parent. The supervisor is the only process that talks to Slack.

pub mod child;
pub mod restart;
pub mod status;
pub mod systemd;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distributions::Alphanumeric;
use rumqttc::{AsyncClient, Event, Packet};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::alert::{self, Alert, Alerter, Coalescer};
use crate::config::{Backend, Config, Secret};
use crate::protocol::role::Role;
use crate::telemetry;
use child::{Launcher, RunningChild, describe_exit};
use restart::{Decision, RestartPolicy};
use systemd::Notifier;

/// Exit code when a child hit its restart limit.
pub const EXIT_RESTART_LIMIT: u8 = 3;
/// Exit code when the store is lost, damaged or of another format, or a file the config
/// names (the broker's certificate) cannot be used: restarting will not help.
pub const EXIT_STORE: u8 = 2;
/// What the supervisor's own alerts name as their source.
const ALERT_SOURCE: &str = "supervisor";

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot find this program to start the children: {0}")]
    Exe(std::io::Error),
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Slack(#[from] alert::slack::SlackError),
    #[error("cannot listen on metrics.listen = {addr}: {source}")]
    MetricsListen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot set up the metrics recorder: one is installed already")]
    MetricsRecorder,
    #[error(transparent)]
    Status(#[from] status::StatusError),
}

enum Report {
    Up { role: Role, pid: u32 },
    Ready(Role),
    Down(Role),
    LimitHit(Role),
}

/// What must hold before any child starts, as the reason it does not.
fn startup_check(config: &Config) -> Result<(), String> {
    if config.store.backend == Backend::Embedded {
        crate::store::embedded::check(&config.store.dir).map_err(|err| format!("the store cannot be used: {err}"))?;
    }
    // A port another program holds would leave the broker child crash-looping while the
    // other children talk to whatever broker owns the port.
    if config.broker.embedded {
        for (key, addr) in config.broker.listeners() {
            std::net::TcpListener::bind(addr).map_err(|err| format!("cannot listen on {key} = {addr}: {err}"))?;
        }
    }
    check_named_files(config)
}

/// Reads the files the config names (the broker's certificate and key, the external
/// broker's CA, Firebase's service-account key) as the children will; for the start and
/// `check-config`.
pub fn check_named_files(config: &Config) -> Result<(), String> {
    if config.broker.embedded {
        crate::broker::certificates::check(&config.broker)
            .map_err(|err| format!("the broker's TLS certificate cannot be used: {err}"))?;
    }
    crate::mqtt::client_options(config, "check", None).map_err(|err| err.to_string())?;
    if config.store.backend == Backend::Firebase {
        crate::store::service_account::check_key_file(&config.firebase.credentials).map_err(|err| {
            format!(
                "firebase.credentials: {err}; the Realtime Database needs a service-account key: put it there \
                 (see keys/README.md) or set GOOGLE_APPLICATION_CREDENTIALS"
            )
        })?;
    }
    Ok(())
}

/// Runs the daemon until a signal or a restart limit; returns the process exit code.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<ExitCode, SupervisorError> {
    let notifier = Notifier::from_env();
    let mut signals_term = signal(SignalKind::terminate()).map_err(SupervisorError::Signals)?;
    let mut signals_int = signal(SignalKind::interrupt()).map_err(SupervisorError::Signals)?;
    let mut signals_hup = signal(SignalKind::hangup()).map_err(SupervisorError::Signals)?;

    let tasks = TaskTracker::new();
    let alerts_stop = CancellationToken::new();
    let (alerter, alert_queue) = Alerter::channel(config.slack.queue_capacity);
    let destination = alert::slack::Destination::from_config(&config.slack)?;
    let coalescer = Coalescer::new(Duration::from_secs(config.slack.coalesce_window_secs));
    let (new_destinations, destinations) = mpsc::channel(1);
    tasks.spawn(alert::slack::run(destination, destinations, alert_queue, coalescer, alerts_stop.clone()));

    // Before anything touches the store: a second daemon on it stops here. A socket
    // that cannot be made (a store.dir path too long for one) only costs `status`.
    let status_socket = match status::bind(&config.store.dir).await {
        Ok(listener) => Some(listener),
        Err(err @ status::StatusError::AlreadyRunning(_)) => return Err(err.into()),
        Err(err) => {
            warn!("smarthomed status will not answer: {err}");
            None
        }
    };
    // A lost or damaged store, or a certificate the broker cannot use, stops the daemon
    // before any child could start on it (a child would only crash-loop).
    if let Err(why) = startup_check(&config) {
        error!("{why}");
        alerter.raise(Alert::new(ALERT_SOURCE, "smarthomed cannot start", why));
        alerts_stop.cancel();
        tasks.close();
        tasks.wait().await;
        return Ok(ExitCode::from(EXIT_STORE));
    }

    let roles: Vec<Role> = if config.broker.embedded {
        vec![Role::Broker, Role::Processor, Role::Syncer]
    } else {
        vec![Role::Processor, Role::Syncer]
    };
    let children = telemetry::Children::default();
    children.expect(roles.iter().map(|role| role.name()).collect());
    if let Some(addr) = config.metrics.listen_addr() {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SupervisorError::MetricsListen { addr, source })?;
        let own = telemetry::install().ok_or(SupervisorError::MetricsRecorder)?;
        // Fresh while no more than one of the four heartbeats per timeout was missed.
        let fresh = config.supervisor.heartbeat_timeout() / 2;
        tasks.spawn(telemetry::serve(listener, own, alerter.clone(), children.clone(), fresh, alerts_stop.clone()));
        info!(%addr, "serving /metrics and /healthz");
    }
    if let Some(listener) = status_socket {
        let path = status::socket_path(&config.store.dir);
        tasks.spawn(status::serve(listener, path, children.clone(), alerts_stop.clone()));
    }

    let launcher = Arc::new(Launcher {
        exe: std::env::current_exe().map_err(SupervisorError::Exe)?,
        config_path: config_path.clone(),
        internal_password: random_password(),
        tail_lines: config.supervisor.log_tail_lines,
        alerter: alerter.clone(),
        children,
    });
    let mut config = Arc::new(config);
    alerter.announce(Alert::new(
        ALERT_SOURCE,
        "smarthomed started",
        format!(
            "version {}; children: {}; broker: {}",
            env!("CARGO_PKG_VERSION"),
            roles.iter().map(|role| role.name()).collect::<Vec<_>>().join(", "),
            if config.broker.embedded { "embedded" } else { "external" },
        ),
    ));

    let (reports, mut report_queue) = mpsc::channel(32);
    let mut runners = Runners::new(launcher, config.clone(), reports);
    if config.broker.embedded {
        runners.start(Role::Broker);
    } else {
        runners.start(Role::Processor);
        runners.start(Role::Syncer);
    }

    let mut pids: HashMap<Role, u32> = HashMap::new();
    let mut ready_sent = false;
    let watchdog = Notifier::watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    notifier.notify("STATUS=starting the broker");

    let exit_code = loop {
        let report = tokio::select! {
            _ = signals_term.recv() => { info!("SIGTERM: stopping"); break 0; }
            _ = signals_int.recv() => { info!("SIGINT: stopping"); break 0; }
            _ = signals_hup.recv() => {
                reload(config_path.as_deref(), &mut config, &new_destinations, &pids);
                continue;
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                if pids.len() == roles.len() {
                    notifier.notify("WATCHDOG=1");
                }
                continue;
            }
            report = report_queue.recv() => report,
        };
        let Some(report) = report else { break 1 };
        match report {
            Report::Up { role, pid } => {
                pids.insert(role, pid);
            }
            Report::Ready(Role::Broker) => {
                runners.start(Role::Processor);
                runners.start(Role::Syncer);
            }
            Report::Ready(_) => {}
            Report::Down(role) => {
                pids.remove(&role);
            }
            Report::LimitHit(role) => {
                error!(child = %role, "restart limit hit: stopping smarthomed");
                break EXIT_RESTART_LIMIT;
            }
        }
        if !ready_sent && pids.len() == roles.len() {
            ready_sent = true;
            notifier.notify("READY=1");
            info!("all children up");
        }
        notifier.notify(&format!("STATUS={}", status_line(&roles, &pids)));
    };

    notifier.notify("STOPPING=1\nSTATUS=stopping");
    runners.stop_all().await;
    alerts_stop.cancel();
    tasks.close();
    tasks.wait().await;
    info!(exit_code, "stopped");
    Ok(ExitCode::from(exit_code))
}

/// SIGHUP: reads the config file again and, if it is valid, applies what can change
/// without dropping clients (Slack here; the children their own parts, on the SIGHUP
/// passed on to them), and logs what changed and what needs a restart. An invalid file
/// changes nothing.
fn reload(
    config_path: Option<&std::path::Path>,
    config: &mut Arc<Config>,
    new_destinations: &mpsc::Sender<alert::slack::Destination>,
    pids: &HashMap<Role, u32>,
) {
    let Some(path) = config_path else {
        info!("SIGHUP: running on the defaults, with no config file to read again");
        return;
    };
    let mut reloaded = match Config::load(Some(path)) {
        Ok(reloaded) => reloaded,
        Err(err) => {
            error!("SIGHUP: config not reloaded, the running one stays: {err}");
            return;
        }
    };
    if let Err(err) = reloaded.resolve_secrets(&crate::config::SecretEnv::from_process()) {
        error!("SIGHUP: config not reloaded, the running one stays: {err}");
        return;
    }
    let changed = config.changed_keys(&reloaded);
    if changed.is_empty() {
        info!("SIGHUP: config reloaded; nothing changed");
        return;
    }
    let (applied, pending): (Vec<&String>, Vec<&String>) =
        changed.iter().partition(|key| crate::config::reloadable(key));
    if changed.iter().any(|key| key.starts_with("slack.")) {
        match alert::slack::Destination::from_config(&reloaded.slack) {
            Ok(destination) => {
                let _ = new_destinations.try_send(destination);
            }
            Err(err) => error!("SIGHUP: the new [slack] settings cannot be used: {err}"),
        }
    }
    for (role, pid) in pids {
        if let Err(err) =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGHUP)
        {
            warn!(child = %role, "cannot pass SIGHUP on: {err}");
        }
    }
    info!(applied = ?applied, needs_restart = ?pending, "SIGHUP: config reloaded");
    *config = Arc::new(config.with_reloaded(&reloaded));
}

fn status_line(roles: &[Role], pids: &HashMap<Role, u32>) -> String {
    roles
        .iter()
        .map(|role| match pids.get(role) {
            Some(pid) => format!("{role} running (pid {pid})"),
            None => format!("{role} down"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn random_password() -> Secret {
    let password: String = rand::thread_rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect();
    Secret::new(password)
}

/// The runner tasks, in start order; stopped in reverse so the broker goes last.
struct Runners {
    launcher: Arc<Launcher>,
    config: Arc<Config>,
    reports: mpsc::Sender<Report>,
    started: Vec<(Role, CancellationToken, TaskTracker)>,
}

impl Runners {
    fn new(launcher: Arc<Launcher>, config: Arc<Config>, reports: mpsc::Sender<Report>) -> Self {
        Self { launcher, config, reports, started: Vec::new() }
    }

    /// Starts the runner of `role` unless it is already running.
    fn start(&mut self, role: Role) {
        if self.started.iter().any(|(started, _, _)| *started == role) {
            return;
        }
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(supervise(role, self.launcher.clone(), self.config.clone(), self.reports.clone(), stop.clone()));
        tracker.close();
        self.started.push((role, stop, tracker));
    }

    async fn stop_all(&mut self) {
        while let Some((role, stop, tracker)) = self.started.pop() {
            info!(child = %role, "stopping");
            stop.cancel();
            tracker.wait().await;
        }
    }
}

/// Keeps one child running until `stop`, restarting it by its policy.
async fn supervise(
    role: Role,
    launcher: Arc<Launcher>,
    config: Arc<Config>,
    reports: mpsc::Sender<Report>,
    stop: CancellationToken,
) {
    let mut policy = RestartPolicy::new(&config.supervisor);
    let alerter = launcher.alerter.clone();
    let mut restart: Option<Duration> = None;
    loop {
        let spawned = launcher.spawn(role);
        let mut child = match spawned {
            Ok(child) => child,
            Err(err) => {
                alerter.raise(Alert::new(ALERT_SOURCE, format!("cannot start {role}"), err.to_string()));
                match policy.on_exit(Duration::ZERO, Instant::now()) {
                    Decision::RestartAfter(delay) => {
                        if sleep_or_stop(delay, &stop).await {
                            return;
                        }
                        continue;
                    }
                    Decision::LimitHit { .. } => {
                        let _ = reports.send(Report::LimitHit(role)).await;
                        return;
                    }
                }
            }
        };
        let _ = reports.send(Report::Up { role, pid: child.pid }).await;
        if let Some(delay) = restart {
            metrics::counter!("smarthomed_supervisor_child_restarts_total", "child" => role.name()).increment(1);
            alerter.raise(Alert::new(
                ALERT_SOURCE,
                format!("{role} restarted"),
                format!(
                    "new pid {} after {} ms of backoff; {} restarts in the last {} s",
                    child.pid,
                    delay.as_millis(),
                    policy.recent_restarts(),
                    config.supervisor.restart_window_secs
                ),
            ));
        }

        let watching = Watching { config: &config, launcher: &launcher, reports: &reports, stop: &stop };
        let watched = watch(&mut child, &policy, restart.is_some(), watching).await;
        launcher.children.stopped(role.name());
        let Some(exit) = watched else {
            let _ = reports.send(Report::Down(role)).await;
            return;
        };
        let _ = reports.send(Report::Down(role)).await;
        let uptime = child.started.elapsed();
        let mut detail = format!("pid {}, {exit}, after {:.1} s", child.pid, uptime.as_secs_f64());
        let last_lines = child.last_lines().await;
        if !last_lines.is_empty() {
            detail.push_str("\nlast output:\n");
            detail.push_str(&last_lines.join("\n"));
        }
        alerter.raise(Alert::new(ALERT_SOURCE, format!("{role} exited unexpectedly"), detail));

        match policy.on_exit(uptime, Instant::now()) {
            Decision::RestartAfter(delay) => {
                info!(child = %role, ?delay, "restarting after backoff");
                restart = Some(delay);
                if sleep_or_stop(delay, &stop).await {
                    return;
                }
            }
            Decision::LimitHit { restarts, window } => {
                alerter.raise(Alert::new(
                    ALERT_SOURCE,
                    format!("{role} hit the restart limit"),
                    format!(
                        "{restarts} restarts within {} s did not keep it up; smarthomed stops \
                         with exit code {EXIT_RESTART_LIMIT} (under systemd, Restart=on-failure \
                         starts it again after RestartSec)",
                        window.as_secs()
                    ),
                ));
                let _ = reports.send(Report::LimitHit(role)).await;
                return;
            }
        }
    }
}

/// What watching one child needs besides the child: shared by all its runs.
struct Watching<'a> {
    config: &'a Config,
    launcher: &'a Launcher,
    reports: &'a mpsc::Sender<Report>,
    stop: &'a CancellationToken,
}

/// Waits for the child to exit (returns why) or for `stop` (stops it, returns None).
async fn watch(
    child: &mut RunningChild,
    policy: &RestartPolicy,
    restarted: bool,
    Watching { config, launcher, reports, stop }: Watching<'_>,
) -> Option<String> {
    let role = child.role;
    let stop_timeout = config.supervisor.stop_timeout();
    let readiness = ready(role, config, &launcher.internal_password);
    tokio::pin!(readiness);
    let mut awaiting_ready = true;
    let recovery = tokio::time::sleep(policy.healthy_after());
    tokio::pin!(recovery);
    let mut awaiting_recovery = restarted;
    let heartbeat_timeout = config.supervisor.heartbeat_timeout();
    let mut heartbeats = child.heartbeats.clone();
    let silence = tokio::time::sleep_until((*heartbeats.borrow() + heartbeat_timeout).into());
    tokio::pin!(silence);
    let mut heartbeats_open = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                match child.stop(stop_timeout).await {
                    Some(status) => info!(child = %role, "stopped: {}", describe_exit(&status)),
                    None => error!(child = %role, "could not be stopped"),
                }
                return None;
            }
            status = child.wait() => {
                return Some(match status {
                    Ok(status) => describe_exit(&status),
                    Err(err) => format!("lost track of it: {err}"),
                });
            }
            result = &mut readiness, if awaiting_ready => {
                awaiting_ready = false;
                match result {
                    Ok(()) => { let _ = reports.send(Report::Ready(role)).await; }
                    Err(why) => {
                        error!(child = %role, "{why}; restarting it");
                        child.stop(stop_timeout).await;
                        return Some(why);
                    }
                }
            }
            () = &mut silence, if heartbeats_open => {
                let silent = heartbeats.borrow().elapsed();
                if silent < heartbeat_timeout {
                    silence.as_mut().reset((*heartbeats.borrow() + heartbeat_timeout).into());
                    continue;
                }
                let why = format!("hung: no heartbeat for {} s", silent.as_secs());
                error!(child = %role, "{why}; killing it");
                let _ = reports.send(Report::Down(role)).await;
                child.kill().await;
                return Some(why);
            }
            changed = heartbeats.changed(), if heartbeats_open => {
                if changed.is_err() {
                    heartbeats_open = false;
                }
                silence.as_mut().reset((*heartbeats.borrow_and_update() + heartbeat_timeout).into());
            }
            () = &mut recovery, if awaiting_recovery => {
                awaiting_recovery = false;
                launcher.alerter.announce(Alert::new(
                    ALERT_SOURCE,
                    format!("{role} recovered"),
                    format!("up for {} s since its last restart", policy.healthy_after().as_secs()),
                ));
            }
        }
    }
}

/// Resolves once the child can do its job: for the broker, once it accepts an MQTT
/// connection; the other children are ready once started.
async fn ready(role: Role, config: &Config, internal_password: &Secret) -> Result<(), String> {
    if role != Role::Broker {
        return Ok(());
    }
    probe_broker(config, internal_password, config.supervisor.broker_ready_timeout()).await
}

async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = stop.cancelled() => true,
    }
}

/// Connects to the embedded broker as the daemon's own user until it answers.
async fn probe_broker(config: &Config, password: &Secret, timeout: Duration) -> Result<(), String> {
    let options =
        crate::mqtt::client_options(config, "supervisor-probe", Some(password)).map_err(|err| err.to_string())?;
    let attempt = async {
        loop {
            let (client, mut eventloop) = AsyncClient::new(options.clone(), 1);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.disconnect().await;
                        let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("did not accept MQTT connections within {} s", timeout.as_secs()))
}
