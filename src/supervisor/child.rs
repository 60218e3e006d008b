//! One child process: this same binary re-executed with a role subcommand.
//!
//! Each child gets its own process group (a Ctrl-C in a terminal reaches only the
//! supervisor, which then stops the children in order) and the parent-death signal
//! SIGTERM, so a child never outlives a supervisor that was killed outright. Its
//! stdout and stderr are relayed into the supervisor's log under the child's name;
//! the last lines are kept for the alert when it dies, and lines marked as alerts are
//! raised through the supervisor's [`Alerter`].

use std::collections::VecDeque;
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, trace, warn};

use super::systemd::Notifier;
use crate::alert::{Alert, Alerter};
use crate::config::Secret;
use crate::mqtt::INTERNAL_PASSWORD_ENV;

/// How long to wait for a dead child's last output to arrive through its pipes.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Broker,
    Processor,
    Syncer,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Broker => "broker",
            Role::Processor => "processor",
            Role::Syncer => "syncer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything needed to start children: the same for every start.
pub struct Launcher {
    pub exe: PathBuf,
    pub config_path: Option<PathBuf>,
    pub internal_password: Secret,
    pub tail_lines: usize,
    pub alerter: Alerter,
}

pub struct RunningChild {
    pub role: Role,
    pub pid: u32,
    pub started: Instant,
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
        command
            .env(INTERNAL_PASSWORD_ENV, self.internal_password.expose())
            .env("SMARTHOMED_CHILD", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let supervisor = nix::unistd::getpid();
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run between
        // fork and exec.
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
                if nix::unistd::getppid() != supervisor {
                    nix::libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let pid = child.id().unwrap_or_default();
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(self.tail_lines)));
        let relays = TaskTracker::new();
        if let Some(stdout) = child.stdout.take() {
            relays.spawn(relay(stdout, role, tail.clone(), self.tail_lines, self.alerter.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            relays.spawn(relay(stderr, role, tail.clone(), self.tail_lines, self.alerter.clone()));
        }
        relays.close();
        info!(child = %role, pid, "started");
        Ok(RunningChild { role, pid, started: Instant::now(), child, tail, relays })
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

async fn relay(
    output: impl AsyncRead + Unpin,
    role: Role,
    tail: Arc<Mutex<VecDeque<String>>>,
    tail_lines: usize,
    alerter: Alerter,
) {
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
        if let Some(alert) = Alert::from_child_line(line) {
            alerter.raise(alert);
            continue;
        }
        log_child_line(role, line);
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == tail_lines {
                tail.pop_front();
            }
            tail.push_back(line.to_owned());
        }
    }
}

/// Re-logs a child's line at the level the child logged it.
fn log_child_line(role: Role, line: &str) {
    let trimmed = line.trim_start();
    let (level, message) = trimmed.split_once(' ').unwrap_or(("", trimmed));
    let message = message.trim_start();
    match level {
        "ERROR" => error!(child = %role, "{message}"),
        "WARN" => warn!(child = %role, "{message}"),
        "INFO" => info!(child = %role, "{message}"),
        "DEBUG" => debug!(child = %role, "{message}"),
        "TRACE" => trace!(child = %role, "{message}"),
        _ => info!(child = %role, "{line}"),
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
    async fn relay_keeps_the_last_lines_and_raises_marked_alerts() {
        let (alerter, mut alerts) = Alerter::channel(4);
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let alert = Alert::new("processor", "store unreachable", "");
        let mut output = format!("INFO one\nWARN two\n{}\nERROR three\n", alert.to_child_line()).into_bytes();
        output.extend_from_slice(b"\xff bad utf8\n");
        relay(output.as_slice(), Role::Processor, tail.clone(), 3, alerter).await;
        let kept: Vec<_> = tail.lock().unwrap().iter().cloned().collect();
        assert_eq!(kept, ["WARN two", "ERROR three", "\u{fffd} bad utf8"]);
        assert_eq!(alerts.recv().await, Some(alert));
    }
}
