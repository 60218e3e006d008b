//! The embedded MQTT broker child: rumqttd behind the [`front_door`].
//!
//! `rumqttd::Broker::start` blocks its thread forever, which is why the broker is a
//! process of its own. Its listeners are bound to loopback ports chosen at start;
//! only the front door faces clients. Accounts come from `broker.users` (Argon2
//! hashes, checked by [`login`]); the daemon's own processes log in as `smarthomed` with a
//! password the supervisor makes up at each start and hands to its children.

pub mod certificates;
pub mod connect;
pub mod front_door;
pub mod login;
pub mod packet_counter;
pub mod password;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rumqttd::{ConnectionSettings, RouterConfig, ServerSettings};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Anonymous, BrokerConfig, Config, Secret};
use front_door::{FrontDoor, Route};
use login::{Accounts, LoginGate, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {key} = {addr}: {source}")]
    Bind { key: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("cannot reserve an internal loopback port: {0}")]
    InternalPort(std::io::Error),
    #[error("the MQTT router did not start listening within {0:?}")]
    RouterStart(Duration),
    #[error("the MQTT router stopped: {0}")]
    RouterStopped(String),
    #[error(transparent)]
    Certificates(#[from] certificates::CertificateError),
}

/// Runs the broker until `shutdown` is cancelled or the router dies; on a reload, takes
/// the new `broker.users` (the other broker settings need a restart).
pub async fn run(
    config: &BrokerConfig,
    mut reloads: watch::Receiver<Arc<Config>>,
    internal_password: Option<Secret>,
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
    let internal = InternalPorts::reserve()?;

    let accounts = Accounts::new(&config.users);
    // Accounts can change on a reload only where logins were required from the start.
    let authenticating = [config.listen, config.ws_listen]
        .into_iter()
        .all(|public| !anonymous_allowed(config.anonymous, !config.users.is_empty(), public));
    let mut users_now = config.users.clone();
    let logins = Arc::new(LoginGate::new(accounts.clone(), internal_password));
    let router_config = router_config(config, &internal, &logins);
    let (router_done_tx, mut router_done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("mqtt-router".into())
        .spawn(move || {
            let outcome = rumqttd::Broker::new(router_config).start();
            let _ = router_done_tx.send(outcome.map_err(|err| err.to_string()));
        })
        .map_err(|err| BrokerError::RouterStopped(err.to_string()))?;

    let startup = Duration::from_secs(5);
    tokio::select! {
        ready = internal.wait_until_listening(startup) => ready?,
        outcome = &mut router_done => return Err(router_stopped(outcome)),
    }

    let connections = Arc::new(Semaphore::new(config.max_connections));
    let sniff_timeout = Duration::from_millis(u64::from(config.connect_timeout_ms));
    let tracker = TaskTracker::new();
    let by_version = Route::ByVersion { v4: internal.v4, v5: internal.v5 };
    let door = |name, listener, route, tls: Option<&Arc<certificates::Certificates>>| FrontDoor {
        name,
        listener,
        route,
        connections: connections.clone(),
        sniff_timeout,
        tls: tls.cloned(),
        logins: logins.clone(),
        authenticate: authenticating,
    };
    let mut doors = vec![door("mqtt", tcp, by_version, None), door("websocket", ws, Route::Fixed(internal.ws), None)];
    doors.extend(tls.map(|listener| door("mqtts", listener, by_version, certificates.as_ref())));
    doors.extend(wss.map(|listener| door("wss", listener, Route::Fixed(internal.ws), certificates.as_ref())));
    for door in doors {
        tracker.spawn(door.serve(tracker.clone(), shutdown.clone()));
    }
    tracker.close();
    info!(
        listen = %config.listen,
        ws_listen = %config.ws_listen,
        tls_listen = ?config.tls_listen,
        wss_listen = ?config.wss_listen,
        accounts = config.users.len(),
        "broker accepting MQTT 3.1.1 and 5 (TCP, TLS) and MQTT 3.1.1 (WebSocket)"
    );

    let result = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            outcome = &mut router_done => break Err(router_stopped(outcome)),
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
    result
}

fn router_stopped(outcome: Result<Result<(), String>, tokio::sync::oneshot::error::RecvError>) -> BrokerError {
    BrokerError::RouterStopped(match outcome {
        Ok(Ok(())) => "all listeners ended".into(),
        Ok(Err(err)) => err,
        Err(_) => "router thread panicked".into(),
    })
}

async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, BrokerError> {
    TcpListener::bind(addr).await.map_err(|source| BrokerError::Bind { key, addr, source })
}

struct InternalPorts {
    v4: SocketAddr,
    v5: SocketAddr,
    ws: SocketAddr,
}

impl InternalPorts {
    /// Asks the kernel for three free loopback ports. rumqttd binds them itself a
    /// moment later; the window in which another process could take one is tiny and
    /// shows up as a clear startup error, never as a silent misroute.
    fn reserve() -> Result<Self, BrokerError> {
        let listeners = (0..3)
            .map(|_| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(BrokerError::InternalPort)?;
        let addrs = listeners
            .iter()
            .map(std::net::TcpListener::local_addr)
            .collect::<Result<Vec<_>, _>>()
            .map_err(BrokerError::InternalPort)?;
        Ok(Self { v4: addrs[0], v5: addrs[1], ws: addrs[2] })
    }

    /// rumqttd has no readiness signal; its listeners are up once they accept.
    async fn wait_until_listening(&self, timeout: Duration) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        for addr in [self.v4, self.v5, self.ws] {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                if tokio::time::Instant::now() >= deadline {
                    return Err(BrokerError::RouterStart(timeout));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }
}

fn router_config(config: &BrokerConfig, internal: &InternalPorts, logins: &Arc<LoginGate>) -> rumqttd::Config {
    let server = |name: &str, listen: SocketAddr, public: SocketAddr| {
        let mut settings = ServerSettings {
            name: name.into(),
            listen,
            tls: None,
            next_connection_delay_ms: 0,
            connections: ConnectionSettings {
                connection_timeout_ms: config.connect_timeout_ms,
                max_payload_size: config.max_payload_bytes,
                max_inflight_count: config.max_inflight_messages,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        if !anonymous_allowed(config.anonymous, !config.users.is_empty(), public) {
            let logins = logins.clone();
            // Behind the front door the password is its token; WebSocket clients'
            // logins are checked here, through the same gate.
            settings.set_auth_handler(move |_client_id, user: String, pass: String| {
                let logins = logins.clone();
                async move {
                    logins.is_token(pass.as_bytes())
                        || logins.verify(&user, pass.as_bytes(), None).await == Verdict::Accepted
                }
            });
        }
        (name.to_string(), settings)
    };
    rumqttd::Config {
        id: 0,
        router: RouterConfig {
            max_connections: config.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: config.log_segment_bytes,
            max_segment_count: config.log_segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([server("v4", internal.v4, config.listen)])),
        v5: Some(HashMap::from([server("v5", internal.v5, config.listen)])),
        ws: Some(HashMap::from([server("ws", internal.ws, config.ws_listen)])),
        ..Default::default()
    }
}

/// Anonymous access per listener. Once accounts exist every client must log in:
/// rumqttd refuses a client without credentials whenever authentication is on.
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
