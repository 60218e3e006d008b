//! One child process: this same binary re-executed with a role subcommand.
//!
//! Each child gets its own process group (a Ctrl-C in a terminal reaches only the
//! supervisor, which then stops the children in order) and the parent-death signal
//! SIGTERM, so a child never outlives a supervisor that was killed outright. Its
//! stdout and stderr are relayed into the supervisor's log under the child's name, at
//! the level and module the child logged each line with (children log JSON lines);
//! the last lines are kept for the alert when it dies. Its [`control`] pipe brings its
//! alerts, relayed through the supervisor's [`Alerter`], and its heartbeats.
//!
//! A child's environment holds only the secrets its role uses: the internal broker
//! password, and of the environment-provided secrets those it reads.

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, trace, warn};

use super::systemd::Notifier;
use crate::alert::Alerter;
use crate::child_context::INTERNAL_PASSWORD_ENV;
use crate::config::{SECRET_SOURCES, Secret};
use crate::control::{self, ControlMessage};
use crate::protocol::role::Role;
use crate::telemetry::Children;

/// How long to wait for a dead child's last output to arrive through its pipes.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// Whether `role` reads the secret `name` (of [`SECRET_SOURCES`]).
fn uses_secret(role: Role, name: &str) -> bool {
    match role {
        Role::Broker => false,
        Role::Processor => name == "mqtt_password",
        Role::Syncer => matches!(name, "mqtt_password" | "weather_api_key"),
    }
}

/// Everything needed to start children: the same for every start.
pub struct Launcher {
    pub exe: PathBuf,
    pub config_path: Option<PathBuf>,
    pub internal_password: Secret,
    pub tail_lines: usize,
    pub alerter: Alerter,
    /// Their heartbeats and metrics, for `/healthz` and `/metrics`.
    pub children: Children,
}

pub struct RunningChild {
    pub role: Role,
    pub pid: u32,
    pub started: Instant,
    /// When the child last sent a heartbeat (at first, when it started); closed when
    /// its control pipe closes.
    pub heartbeats: watch::Receiver<Instant>,
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
    relays: TaskTracker,
}

impl Launcher {
    pub fn spawn(&self, role: Role) -> std::io::Result<RunningChild> {
        let mut command = Command::new(&self.exe);
        command.arg(role.name());
        if let Some(path) = &self.config_path {
            command.arg("--config").arg(path);
        }
        for var in Notifier::ENV_VARS {
            command.env_remove(var);
        }
        for (name, var) in SECRET_SOURCES {
            if !uses_secret(role, name) {
                command.env_remove(var);
            }
        }
        let (control_end, child_control_end) = std::io::pipe()?;
        let child_control_fd = child_control_end.as_raw_fd();
        command
            .env(INTERNAL_PASSWORD_ENV, self.internal_password.expose())
            .env("SMARTHOMED_CHILD", "1")
            .env(control::FD_ENV, control::CHILD_FD.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let supervisor = nix::unistd::getpid();
        // SAFETY: only async-signal-safe calls (prctl, signal, getppid, dup2, fcntl,
        // _exit) run between fork and exec.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
                // SIGHUP (a reload passed on) would end a child that has not yet set
                // up its handler; ignored until then, it is merely missed.
                if nix::libc::signal(nix::libc::SIGHUP, nix::libc::SIG_IGN) == nix::libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
                if nix::unistd::getppid() != supervisor {
                    nix::libc::_exit(1);
                }
                // The control pipe goes to CHILD_FD; dup2 leaves the copy open across
                // exec, and the original (close-on-exec) closes.
                if child_control_fd == control::CHILD_FD {
                    if nix::libc::fcntl(child_control_fd, nix::libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if nix::libc::dup2(child_control_fd, control::CHILD_FD) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = command.spawn();
        // Only the child writes to its control pipe: once it exits, reading ends.
        drop(child_control_end);
        let mut child = spawned?;
        let pid = child.id().unwrap_or_default();
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(self.tail_lines)));
        let relays = TaskTracker::new();
        if let Some(stdout) = child.stdout.take() {
            relays.spawn(relay(stdout, role, tail.clone(), self.tail_lines));
        }
        if let Some(stderr) = child.stderr.take() {
            relays.spawn(relay(stderr, role, tail.clone(), self.tail_lines));
        }
        let (heartbeat, heartbeats) = watch::channel(Instant::now());
        let control_end = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(control_end))?;
        let (alerter, children) = (self.alerter.clone(), self.children.clone());
        children.started(role.name(), pid);
        relays.spawn(control::read_supervisor_end(control_end, role.name(), move |message| match message {
            ControlMessage::Alert(alert) => alerter.relay(alert),
            ControlMessage::Heartbeat { metrics } => {
                let _ = heartbeat.send(Instant::now());
                children.heartbeat(role.name(), metrics);
            }
        }));
        relays.close();
        info!(child = %role, pid, "started");
        Ok(RunningChild { role, pid, started: Instant::now(), heartbeats, child, tail, relays })
    }
}

impl RunningChild {
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM, then SIGKILL to the whole process group after `timeout`.
    pub async fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let pid = Pid::from_raw(self.pid as i32);
        if let Err(err) = signal::kill(pid, Signal::SIGTERM) {
            debug!(child = %self.role, "SIGTERM failed: {err}");
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => return Some(status),
            Ok(Err(err)) => warn!(child = %self.role, "waiting for exit failed: {err}"),
            Err(_) => warn!(child = %self.role, ?timeout, "did not stop in time, sending SIGKILL"),
        }
        if let Err(err) = signal::killpg(pid, Signal::SIGKILL) {
            debug!(child = %self.role, "SIGKILL failed: {err}");
        }
        self.child.wait().await.ok()
    }

    /// SIGKILL to the whole process group at once: for a child that cannot be asked.
    pub async fn kill(&mut self) -> Option<ExitStatus> {
        if let Err(err) = signal::killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL) {
            debug!(child = %self.role, "SIGKILL failed: {err}");
        }
        self.child.wait().await.ok()
    }

    /// The last lines the child wrote, once its pipes have drained.
    pub async fn last_lines(&self) -> Vec<String> {
        let _ = tokio::time::timeout(OUTPUT_DRAIN, self.relays.wait()).await;
        self.tail.lock().map(|tail| tail.iter().cloned().collect()).unwrap_or_default()
    }
}

/// "exit code 3", "killed by SIGKILL".
pub fn describe_exit(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(number)) => match Signal::try_from(number) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {number}"),
        },
        (None, None) => "ended".into(),
    }
}

/// Relays a child's output into this process's log and keeps its last lines.
async fn relay(output: impl AsyncRead + Unpin, role: Role, tail: Arc<Mutex<VecDeque<String>>>, tail_lines: usize) {
    let mut reader = BufReader::new(output);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) => {
                debug!(child = %role, "output closed: {err}");
                return;
            }
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let line = ChildLine::parse(line);
        line.log(role);
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == tail_lines {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        }
    }
}

/// One line of a child's output: an event the child logged as a JSON line, or raw
/// output (a panic before the hook, a program's own writes), which is relayed as a
/// warning with its text as it is, so that no raw text can pose as an error.
#[derive(Debug, PartialEq)]
struct ChildLine {
    level: tracing::Level,
    /// The module that logged it, for logged events.
    module: Option<String>,
    /// The message and its fields (`key=value`), or the raw text.
    text: String,
}

impl ChildLine {
    fn parse(line: &str) -> Self {
        let raw = || ChildLine { level: tracing::Level::WARN, module: None, text: line.to_owned() };
        let Ok(serde_json::Value::Object(mut event)) = serde_json::from_str(line) else { return raw() };
        let Some(level) = event.remove("level").and_then(|level| level.as_str()?.parse().ok()) else {
            return raw();
        };
        let module = event.remove("target").and_then(|target| target.as_str().map(str::to_owned));
        // An event's own fields are nested, so a field named `level` or `target` cannot
        // pass for the line's.
        if let Some(serde_json::Value::Object(fields)) = event.remove("fields") {
            event = fields;
        }
        let mut text = match event.remove("message") {
            Some(serde_json::Value::String(message)) => message,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        for (key, value) in event {
            // Strings quoted and escaped: a field's newline stays on this line.
            match value {
                serde_json::Value::String(value) => text.push_str(&format!(" {key}={value:?}")),
                other => text.push_str(&format!(" {key}={other}")),
            }
        }
        ChildLine { level, module, text }
    }

    fn log(&self, role: Role) {
        let module = self.module.as_deref().unwrap_or("-");
        let text = &self.text;
        match self.level {
            tracing::Level::ERROR => error!(child = %role, module, "{text}"),
            tracing::Level::WARN => warn!(child = %role, module, "{text}"),
            tracing::Level::INFO => info!(child = %role, module, "{text}"),
            tracing::Level::DEBUG => debug!(child = %role, module, "{text}"),
            tracing::Level::TRACE => trace!(child = %role, module, "{text}"),
        }
    }
}

impl fmt::Display for ChildLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.level, self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_descriptions() {
        assert_eq!(describe_exit(&ExitStatus::from_raw(3 << 8)), "exit code 3");
        assert_eq!(describe_exit(&ExitStatus::from_raw(9)), "killed by SIGKILL");
    }

    #[tokio::test]
    async fn relay_keeps_the_last_lines() {
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut output = b"{\"level\":\"INFO\",\"message\":\"one\"}\nWARN two\n".to_vec();
        output.extend_from_slice(b"{\"level\":\"ERROR\",\"message\":\"three\",\"target\":\"m\"}\n\xff bad utf8\n");
        relay(output.as_slice(), Role::Processor, tail.clone(), 3).await;
        let kept: Vec<_> = tail.lock().unwrap().iter().cloned().collect();
        assert_eq!(kept, ["WARN WARN two", "ERROR three", "WARN \u{fffd} bad utf8"]);
    }

    #[test]
    fn logged_events_keep_level_module_and_fields_and_raw_text_is_a_warning() {
        let line =
            r#"{"level":"ERROR","message":"store failed","target":"smarthomed::processor","uid":"a\nERROR b","n":3}"#;
        assert_eq!(
            ChildLine::parse(line),
            ChildLine {
                level: tracing::Level::ERROR,
                module: Some("smarthomed::processor".into()),
                text: r#"store failed n=3 uid="a\nERROR b""#.into(),
            }
        );
        let nested = r#"{"level":"INFO","fields":{"message":"connecting","level":4},"target":"smarthomed::broker"}"#;
        assert_eq!(
            ChildLine::parse(nested),
            ChildLine {
                level: tracing::Level::INFO,
                module: Some("smarthomed::broker".into()),
                text: "connecting level=4".into()
            }
        );
        for raw in ["ERROR forged", "{\"level\":\"LOUD\"}", "[1,2]"] {
            assert_eq!(
                ChildLine::parse(raw),
                ChildLine { level: tracing::Level::WARN, module: None, text: raw.into() }
            );
        }
    }
}
