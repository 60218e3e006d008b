//! Helpers shared by the integration tests: free ports, a daemon started from the real
//! binary in a temporary directory (and always cleaned up), a Slack API stand-in, and
//! MQTT test clients.
#![allow(dead_code)]

pub mod app;
pub mod certs;
pub mod firebase;
pub mod firestore_emulator;
pub mod google_token;
pub mod mosquitto;
pub mod proxy;
pub mod raw_mqtt;
pub mod robots;
pub mod rtdb;
pub mod slack;
pub mod store_suite;
pub mod v5;
pub mod weather;

use std::collections::HashMap;
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_smarthomed");

/// The daemon's binary with none of the caller's environment that it reads: the
/// config path, secrets, systemd's credentials, Google's variables.
pub fn smarthomed_command() -> Command {
    let mut command = Command::new(BIN);
    for var in [
        "SMARTHOMED_CONFIG",
        "SMARTHOMED_SLACK_TOKEN",
        "SMARTHOMED_MQTT_PASSWORD",
        "SMARTHOMED_WEATHER_API_KEY",
        "CREDENTIALS_DIRECTORY",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "FIRESTORE_EMULATOR_HOST",
    ] {
        command.env_remove(var);
    }
    command
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("no free loopback port")
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the async `check` until it returns `Some` or `timeout` passes.
pub async fn wait_for_async<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Test-friendly supervisor settings: quick backoff, short stop timeout.
pub const FAST_SUPERVISOR: &str =
    "[supervisor]\nbackoff_initial_ms = 100\nbackoff_max_ms = 400\nstop_timeout_secs = 5\n";

/// A smarthomed process (any subcommand) running in its own temporary directory.
pub struct Daemon {
    pub dir: TempDir,
    pub mqtt_port: u16,
    pub ws_port: u16,
    child: Option<Child>,
    /// Every child pid seen, so cleanup reaches children orphaned by a failed test.
    seen: std::sync::Mutex<std::collections::HashSet<u32>>,
}

impl Daemon {
    /// Writes a config with free broker ports plus `extra` TOML (which must not repeat
    /// the `[broker]` table header unless it replaces `broker_table`), then starts
    /// `smarthomed <subcommand> -c <file>`.
    pub fn start(subcommand: &str, broker_table: &str, extra: &str) -> Self {
        Self::start_with_env(subcommand, broker_table, extra, &[])
    }

    pub fn start_with_env(subcommand: &str, broker_table: &str, extra: &str, env: &[(&str, &str)]) -> Self {
        Self::start_at(subcommand, (free_port(), free_port()), broker_table, extra, env)
    }

    /// As [`Daemon::start`], with secret files written to `keys/` in its directory first.
    pub fn start_with_keys(subcommand: &str, broker_table: &str, extra: &str, keys: &[(&str, &str)]) -> Self {
        Self::start_full(subcommand, (free_port(), free_port()), broker_table, extra, &[], keys)
    }

    /// As [`Daemon::start`], with the broker on the given (TCP, WebSocket) ports.
    pub fn start_at(
        subcommand: &str,
        (mqtt_port, ws_port): (u16, u16),
        broker_table: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_full(subcommand, (mqtt_port, ws_port), broker_table, extra, env, &[])
    }

    /// As [`Daemon::start`] in `dir`, whose `data/` a test may have filled already.
    pub fn start_in(dir: TempDir, subcommand: &str, extra: &str) -> Self {
        Self::start_full_in(dir, subcommand, (free_port(), free_port()), "", extra, &[], &[])
    }

    fn start_full(
        subcommand: &str,
        ports: (u16, u16),
        broker_table: &str,
        extra: &str,
        env: &[(&str, &str)],
        keys: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_full_in(dir, subcommand, ports, broker_table, extra, env, keys)
    }

    fn start_full_in(
        dir: TempDir,
        subcommand: &str,
        (mqtt_port, ws_port): (u16, u16),
        broker_table: &str,
        extra: &str,
        env: &[(&str, &str)],
        keys: &[(&str, &str)],
    ) -> Self {
        if !keys.is_empty() {
            std::fs::create_dir(dir.path().join("keys")).expect("keys dir");
            for (name, value) in keys {
                std::fs::write(dir.path().join("keys").join(name), value).expect("write key");
            }
        }
        // The tests' own observers and stand-ins (an operator reading `#`, a fake ESP32
        // or robot under a test's client id) reach everywhere unless a test asks for a
        // policy: "car2home", the daemon's default, has tests of its own (broker_access,
        // robots) that use the real identities.
        let access = if broker_table.contains("access =") { "" } else { "access = \"open\"\n" };
        let config = format!(
            "[broker]\nlisten = \"127.0.0.1:{mqtt_port}\"\nws_listen = \"127.0.0.1:{ws_port}\"\n{access}{broker_table}\n\
             [store]\ndir = \"{}\"\n{extra}\n",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("smarthomed.toml"), config).expect("write config");
        // A new start's log begins empty; a restart's goes on.
        std::fs::write(dir.path().join("daemon.log"), "").expect("log file");
        let child = spawn_in(dir.path(), subcommand, env);
        Self { dir, mqtt_port, ws_port, child: Some(child), seen: Default::default() }
    }

    /// Stops the daemon with SIGTERM, waits for it to exit, and starts `subcommand`
    /// again with the same directory, config and ports (its log goes on in the same file).
    pub async fn restart(&mut self, subcommand: &str) {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "the daemon's stop failed: {status}\n{}", self.log());
        self.child = Some(spawn_in(self.dir.path(), subcommand, &[]));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("daemon already reaped")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("signal daemon");
    }

    /// Waits for the daemon to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("daemon already reaped");
        let status = wait_for(timeout, "the daemon to exit", || child.try_wait().expect("try_wait")).await;
        self.child = None;
        status
    }

    /// The supervisor's children by role, read from /proc.
    pub fn children(&self) -> HashMap<String, u32> {
        let children = children_of(self.pid());
        if let Ok(mut seen) = self.seen.lock() {
            seen.extend(children.values());
        }
        children
    }

    /// Waits until all `roles` run as children; returns their pids.
    pub async fn wait_children(&self, roles: &[&str]) -> HashMap<String, u32> {
        wait_for(Duration::from_secs(20), &format!("children {roles:?}"), || {
            let children = self.children();
            roles.iter().all(|role| children.contains_key(*role)).then_some(children)
        })
        .await
    }

    /// Waits until the broker accepts an anonymous MQTT connection.
    pub async fn wait_broker(&self) {
        let port = self.mqtt_port;
        wait_for_async(Duration::from_secs(20), "the broker to accept", || async move {
            connect(port, "wait-broker", None).await.ok()
        })
        .await;
    }
}

/// Starts `smarthomed <subcommand> -c <dir>/smarthomed.toml` in `dir`, appending its
/// output to `<dir>/daemon.log`.
fn spawn_in(dir: &std::path::Path, subcommand: &str, env: &[(&str, &str)]) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("daemon.log")).expect("log file");
    let mut command = smarthomed_command();
    command
        .arg(subcommand)
        .arg("-c")
        .arg(dir.join("smarthomed.toml"))
        .current_dir(dir)
        .env_remove("NOTIFY_SOCKET")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("start smarthomed")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            let mut descendants = all_descendants(pid);
            if let Ok(seen) = self.seen.lock() {
                descendants.extend(seen.iter().filter(|pid| alive(**pid)));
            }
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            for pid in descendants {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        // A failed test shows what the daemon and its robots said (the harness prints it
        // with the panic).
        if std::thread::panicking() {
            let logs = std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten().map(|entry| entry.path());
            for path in logs.filter(|path| path.extension().is_some_and(|ext| ext == "log")) {
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(LOG_LINES_ON_FAILURE).collect();
                eprintln!("--- {}, last {} lines ---", path.display(), tail.len());
                tail.iter().rev().for_each(|line| eprintln!("{line}"));
            }
        }
    }
}

/// The log filter that shows `module`'s debug lines: a child's lines are logged again by
/// the supervisor under its own module, so that one must let debug through too.
pub fn debug_logging(module: &str) -> String {
    format!("info,{module}=debug,smarthomed::supervisor::child=debug")
}

/// How much of the daemon's log a failed test shows.
const LOG_LINES_ON_FAILURE: usize = 300;

/// Pids whose parent is `parent`, with the role (first argument) of each.
pub fn children_of(parent: u32) -> HashMap<String, u32> {
    let mut found = HashMap::new();
    for (pid, ppid) in processes() {
        if ppid == parent
            && let Some(role) = cmdline(pid).get(1)
        {
            found.insert(role.clone(), pid);
        }
    }
    found
}

fn all_descendants(root: u32) -> Vec<u32> {
    let table = processes();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(table.iter().filter(|(_, ppid)| *ppid == parent).map(|(pid, _)| *pid));
        i += 1;
    }
    found.remove(0);
    found
}

/// Whether `pid` is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

fn processes() -> Vec<(u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// An MQTT 3.1.1 client connected to 127.0.0.1:`port`, or the reason it was refused.
pub async fn connect(
    port: u16,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> Result<(AsyncClient, EventLoop), String> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some((user, pass)) = login {
        options.set_credentials(user, pass);
    }
    connect_with(options).await
}

pub async fn connect_with(options: MqttOptions) -> Result<(AsyncClient, EventLoop), String> {
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let connack = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(err) => return Err(err.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "no CONNACK within 5 s".to_string())?;
    connack.map(|()| (client, eventloop))
}

/// Subscribes, waits until the broker has granted it, and returns a receiver of (topic,
/// payload, retain) for what arrives, retained messages sent before the SUBACK included.
pub async fn subscriber(
    client: AsyncClient,
    mut eventloop: EventLoop,
    filter: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, String, bool)> {
    client.subscribe(filter, QoS::AtLeastOnce).await.expect("subscribe");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let granted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => return,
                Ok(Event::Incoming(Packet::Publish(publish))) => drop(tx.send(delivery(&publish))),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    granted.await.unwrap_or_else(|_| panic!("no SUBACK for {filter} within 10 s"));
    forward(client, eventloop, tx);
    rx
}

/// A receiver of (topic, payload, retain) for what arrives on subscriptions the client
/// already has (a persistent session's).
pub fn receiver(
    client: AsyncClient,
    eventloop: EventLoop,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, String, bool)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    forward(client, eventloop, tx);
    rx
}

/// A message as the receivers hand it on: (topic, payload, retain).
fn delivery(publish: &rumqttc::Publish) -> (String, String, bool) {
    (publish.topic.clone(), String::from_utf8_lossy(&publish.payload).into_owned(), publish.retain)
}

/// Sends what arrives on `eventloop` to `tx` until its receiver is dropped.
fn forward(
    client: AsyncClient,
    mut eventloop: EventLoop,
    tx: tokio::sync::mpsc::UnboundedSender<(String, String, bool)>,
) {
    tokio::spawn(async move {
        let _client = client;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if tx.send(delivery(&publish)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
}

/// Receives until a message on `topic` with `payload` arrives; returns its retain flag.
/// Other messages are passed over.
pub async fn expect_message(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String, bool)>,
    topic: &str,
    payload: &str,
) -> bool {
    expect_messages(rx, &[(topic, payload)]).await[0]
}

/// Receives until every (topic, payload) has arrived, in any order; returns their
/// retain flags in the order asked.
pub async fn expect_messages(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String, bool)>,
    wanted: &[(&str, &str)],
) -> Vec<bool> {
    let mut found: Vec<Option<bool>> = vec![None; wanted.len()];
    let outcome = tokio::time::timeout(Duration::from_secs(15), async {
        while found.iter().any(Option::is_none) {
            let Some((topic, payload, retain)) = rx.recv().await else {
                panic!("subscription ended while waiting for {wanted:?}");
            };
            if let Some(i) = wanted.iter().position(|(t, p)| *t == topic && *p == payload) {
                found[i].get_or_insert(retain);
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "within 15 s, of {wanted:?} only these arrived: {found:?}");
    found.into_iter().flatten().collect()
}

/// The resident memory of a process, in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    proc_kib(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// A process's proportional share of memory, in KiB (0 when it is gone): pages shared
/// with other processes (the one binary's code, in all four) count in part, so the
/// daemon's processes add up to what the machine spends on them.
pub fn pss_kib(pid: u32) -> u64 {
    proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

fn proc_kib(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
