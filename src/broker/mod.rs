//! The embedded MQTT broker child: the [`engine`] (rmqtt) behind the [`front_door`].
//!
//! The front door binds the public listeners, reads each CONNECT, checks logins
//! ([`login`]) and terminates TLS; the engine routes messages, keeps retained messages
//! and persistent sessions on disk under `<store.dir>/broker/`, and checks topic access
//! ([`acl`]). Accounts come from `broker.users` (Argon2 hashes); the daemon's own
//! processes log in as `smarthomed` with a password the supervisor makes up at each
//! start and hands to its children.

pub mod acl;
pub mod certificates;
pub mod connect;
pub mod engine;
pub mod front_door;
pub mod login;
pub mod packet_size;
pub mod packet_watch;
pub mod retained;
pub mod sys;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Anonymous, BrokerConfig, Config, Secret};
use engine::{AnonymousAt, Engine};
use front_door::{FrontDoor, Route};
use login::{Accounts, LoginGate};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {key} = {addr}: {source}")]
    Bind { key: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error("the MQTT engine stopped: {0}")]
    EngineStopped(String),
    #[error(transparent)]
    Certificates(#[from] certificates::CertificateError),
}

/// Runs the broker until `shutdown` is cancelled; on a reload, takes the new
/// `broker.users` (the other broker settings need a restart). Retained messages and
/// sessions are kept under `store_dir`.
///
/// With `await_processor` (the daemon's own broker, whose processor comes next), the
/// first start holds the public at the door until the processor is subscribed, at
/// most [`PROCESSOR_WAIT`]: its persistent session does not exist yet, and a command
/// acknowledged before it does would reach no one. Once stored, the session queues
/// commands while the processor is away, on later starts too.
pub async fn run(
    config: &BrokerConfig,
    store_dir: &Path,
    mut reloads: watch::Receiver<Arc<Config>>,
    internal_password: Option<Secret>,
    await_processor: bool,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    let tcp = bind(config.listen, "broker.listen").await?;
    let ws = bind(config.ws_listen, "broker.ws_listen").await?;
    let tls = match config.tls_listen {
        Some(addr) => Some(bind(addr, "broker.tls_listen").await?),
        None => None,
    };
    let wss = match config.wss_listen {
        Some(addr) => Some(bind(addr, "broker.wss_listen").await?),
        None => None,
    };
    let certificates =
        if certificates::wanted(config) { Some(Arc::new(certificates::Certificates::load(config)?)) } else { None };
    if config.log_segment_bytes.is_some() || config.log_segment_count.is_some() {
        warn!("broker.log_segment_bytes and broker.log_segment_count are no longer used; remove them");
    }

    let accounts = Accounts::new(&config.users);
    let has_accounts = !config.users.is_empty();
    let anonymous_at = AnonymousAt {
        mqtt: anonymous_allowed(config.anonymous, has_accounts, config.listen),
        websocket: anonymous_allowed(config.anonymous, has_accounts, config.ws_listen),
    };
    // Accounts can change on a reload only where logins were required from the start.
    let authenticating = !anonymous_at.mqtt && !anonymous_at.websocket;
    let mut users_now = config.users.clone();
    let logins = Arc::new(LoginGate::new(accounts.clone(), internal_password));
    let policy = Arc::new(acl::Policy::new(&config.acl, config.access));
    let marker = store_dir.join("broker").join(PROCESSOR_SESSION_MARKER);
    let awaiting = await_processor && !marker.exists();
    let processor_subscribed = CancellationToken::new();
    let (engine, retained_writer) = Engine::new(
        config,
        &store_dir.join("broker"),
        logins.clone(),
        policy,
        anonymous_at,
        awaiting.then(|| processor_subscribed.clone()),
    )
    .await?;
    let backends = engine.backends;
    let publisher = engine.publisher.clone();
    let counters = Arc::new(sys::Counters::default());

    let connections = Arc::new(Semaphore::new(config.max_connections));
    let sniff_timeout = Duration::from_millis(u64::from(config.connect_timeout_ms));
    let tracker = TaskTracker::new();
    // The retained messages are written until the last client is gone.
    let clients_gone = CancellationToken::new();
    let writing = tokio::spawn(retained_writer.run(clients_gone.clone()));
    let open_to_public = CancellationToken::new();
    if awaiting {
        tracker.spawn(open_when_subscribed(processor_subscribed, open_to_public.clone(), marker, shutdown.clone()));
    } else {
        open_to_public.cancel();
    }
    let door = |name, listener, route, tls: Option<&Arc<certificates::Certificates>>| FrontDoor {
        name,
        listener,
        route,
        connections: connections.clone(),
        sniff_timeout,
        tls: tls.cloned(),
        logins: logins.clone(),
        authenticate: authenticating,
        counters: counters.clone(),
        open_to_public: open_to_public.clone(),
    };
    let (mqtt, websocket) = (Route::Mqtt(backends.mqtt), Route::WebSocket(backends.websocket));
    let mut doors = vec![door("mqtt", tcp, mqtt, None), door("websocket", ws, websocket, None)];
    doors.extend(tls.map(|listener| door("mqtts", listener, mqtt, certificates.as_ref())));
    doors.extend(wss.map(|listener| door("wss", listener, websocket, certificates.as_ref())));
    let (engine_stopped_tx, mut engine_stopped) = tokio::sync::oneshot::channel();
    tracker.spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                outcome = engine.serve() => {
                    let _ = engine_stopped_tx.send(outcome);
                }
                () = shutdown.cancelled() => {}
            }
        }
    });
    for door in doors {
        tracker.spawn(door.serve(tracker.clone(), shutdown.clone()));
    }
    if config.sys_interval_secs > 0 {
        let interval = Duration::from_secs(config.sys_interval_secs);
        tracker.spawn(publish_sys(publisher, counters, interval, shutdown.clone()));
    }
    tracker.close();
    info!(
        listen = %config.listen,
        ws_listen = %config.ws_listen,
        tls_listen = ?config.tls_listen,
        wss_listen = ?config.wss_listen,
        accounts = config.users.len(),
        access = ?config.access,
        acl_rules = config.acl.len(),
        "broker accepting MQTT 3.1.1 and 5 (TCP, TLS, WebSocket)"
    );

    let result = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            stopped = &mut engine_stopped => {
                // The engine's task also ends (unheard) when the stop came first.
                if shutdown.is_cancelled() {
                    break Ok(());
                }
                let reason = match stopped {
                    Ok(Err(err)) => err,
                    Ok(Ok(())) | Err(_) => "its listeners ended".into(),
                };
                break Err(BrokerError::EngineStopped(reason));
            }
            Ok(()) = reloads.changed() => {
                if let Some(certificates) = &certificates {
                    certificates.reload();
                }
                let users = reloads.borrow_and_update().broker.users.clone();
                if users == users_now {
                    continue;
                }
                if authenticating && !users.is_empty() {
                    accounts.replace(&users);
                    info!(accounts = users.len(), "broker.users reloaded");
                    users_now = users;
                } else {
                    warn!("broker.users changed between having accounts and having none: that takes a restart");
                }
            }
        }
    };
    shutdown.cancel();
    tracker.wait().await;
    clients_gone.cancel();
    if let Err(err) = writing.await {
        warn!("the retained messages' writer failed: {err}");
    }
    // Clients are gone and their sessions stored; give the storage time to write them.
    tokio::time::sleep(engine::STORAGE_FLUSH + Duration::from_millis(200)).await;
    result
}

/// How long the public waits at the door for the processor's first subscription; a
/// processor that cannot start (a first start with Firestore out of reach) must not
/// lock out every device. A processor starts in about a second.
pub const PROCESSOR_WAIT: Duration = Duration::from_secs(10);

/// Written under the broker's directory once the processor's session is stored: from
/// then on the session queues commands while the processor is away, and nobody waits.
const PROCESSOR_SESSION_MARKER: &str = "processor-session-stored";

async fn open_when_subscribed(
    subscribed: CancellationToken,
    open: CancellationToken,
    marker: std::path::PathBuf,
    shutdown: CancellationToken,
) {
    info!("holding other clients until the processor is subscribed (first start)");
    tokio::select! {
        () = subscribed.cancelled() => info!("processor subscribed: letting every client in"),
        () = tokio::time::sleep(PROCESSOR_WAIT) => {
            warn!(
                "the processor did not subscribe within {} s: letting every client in; commands \
                 published before it does reach no one",
                PROCESSOR_WAIT.as_secs()
            );
            open.cancel();
            return;
        }
        () = shutdown.cancelled() => return,
    }
    open.cancel();
    tokio::select! {
        () = tokio::time::sleep(engine::STORAGE_FLUSH * 2) => {}
        () = shutdown.cancelled() => return,
    }
    if let Err(err) = std::fs::write(&marker, "") {
        warn!(path = %marker.display(), "cannot note that the processor's session is stored: {err}");
    }
}

/// Publishes the `$SYS` topics every `interval`, from the first moment on.
async fn publish_sys(
    publisher: engine::SystemPublisher,
    counters: Arc<sys::Counters>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let started = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures_logged = crate::log_limit::LogLimiter::default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for (topic, payload) in sys::messages(&counters.read(), started.elapsed()) {
            if let Err(err) = publisher.publish(topic, payload).await
                && let crate::log_limit::Verdict::Log { suppressed_before } =
                    failures_logged.check("sys", std::time::Instant::now())
            {
                warn!(topic, suppressed_before, "cannot publish a $SYS message: {err}");
            }
        }
    }
}

async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, BrokerError> {
    TcpListener::bind(addr).await.map_err(|source| BrokerError::Bind { key, addr, source })
}

/// Anonymous access per listener. Once accounts exist every client must log in (as
/// before the engine changed: users who added accounts expect no anonymous door).
fn anonymous_allowed(anonymous: Anonymous, has_accounts: bool, public: SocketAddr) -> bool {
    if has_accounts {
        return false;
    }
    match anonymous {
        Anonymous::Always => true,
        Anonymous::Never => false,
        Anonymous::Loopback => public.ip().is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_mode_allows_anonymous_only_on_loopback_listeners() {
        let loopback: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        let v6_loopback: SocketAddr = "[::1]:1883".parse().unwrap();
        let lan: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        assert!(anonymous_allowed(Anonymous::Loopback, false, loopback));
        assert!(anonymous_allowed(Anonymous::Loopback, false, v6_loopback));
        assert!(!anonymous_allowed(Anonymous::Loopback, false, lan));
        assert!(anonymous_allowed(Anonymous::Always, false, lan));
        assert!(!anonymous_allowed(Anonymous::Never, false, loopback));
    }

    #[test]
    fn accounts_switch_anonymous_access_off_everywhere() {
        let loopback: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        assert!(!anonymous_allowed(Anonymous::Loopback, true, loopback));
    }
}
