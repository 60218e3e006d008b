//! Logins to the embedded broker, at a bounded cost.
//!
//! An Argon2 verification takes ~19 MiB and tens of milliseconds on purpose; a flood of
//! wrong passwords must not turn that into gigabytes or into a way to tell which user
//! names exist. So: at most [`VERIFICATIONS_AT_ONCE`] verifications run at a time, at
//! most [`WAITING_AT_MOST`] more wait their turn (others are told the server is busy),
//! an unknown user name costs a verification against a dummy
//! hash like a known one, and a peer address with [`FAILURES_PER_WINDOW`] failed logins
//! within [`FAILURE_WINDOW`] is refused as busy, without a verification, until the
//! window has passed.
//!
//! The front door checks each login it can read (MQTT over TCP and TLS) and then hands
//! the engine the per-start [`LoginGate::token`] instead of the password, so the
//! engine's own check is a constant-time comparison; what the front door cannot read
//! (MQTT inside WebSocket frames) the engine checks through the same gate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, oneshot};
use tracing::info;

use crate::config::{BrokerUser, INTERNAL_MQTT_USER, Secret};
use crate::password;

pub const VERIFICATIONS_AT_ONCE: usize = 2;
/// Logins that may wait for a verifier; more are told the server is busy at once, so a
/// flood holds neither connection slots nor memory while it waits.
pub const WAITING_AT_MOST: usize = 8;
pub const FAILURES_PER_WINDOW: u32 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Peers remembered at most; the oldest are forgotten first.
const PEERS_KEPT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    BadCredentials,
    /// Too many failures from this peer: not even checked.
    Busy,
}

/// Failed logins per peer address, over a fixed window.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    peers: HashMap<IpAddr, (Instant, u32)>,
}

impl FailureLimiter {
    /// Whether `peer` may try now.
    pub fn allows(&self, peer: IpAddr, now: Instant) -> bool {
        match self.peers.get(&peer) {
            Some((since, failures)) => now.duration_since(*since) >= FAILURE_WINDOW || *failures < FAILURES_PER_WINDOW,
            None => true,
        }
    }

    pub fn failed(&mut self, peer: IpAddr, now: Instant) {
        if self.peers.len() >= PEERS_KEPT && !self.peers.contains_key(&peer) {
            self.peers.retain(|_, (since, _)| now.duration_since(*since) < FAILURE_WINDOW);
            if self.peers.len() >= PEERS_KEPT
                && let Some(oldest) = self.peers.iter().min_by_key(|(_, (since, _))| *since).map(|(peer, _)| *peer)
            {
                self.peers.remove(&oldest);
            }
        }
        let entry = self.peers.entry(peer).or_insert((now, 0));
        if now.duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

/// The accounts of `broker.users` by name, replaced whole when the config is reloaded.
#[derive(Clone, Default)]
pub struct Accounts(Arc<RwLock<Arc<HashMap<String, Secret>>>>);

impl Accounts {
    pub fn new(users: &[BrokerUser]) -> Self {
        let accounts = Self::default();
        accounts.replace(users);
        accounts
    }

    pub fn replace(&self, users: &[BrokerUser]) {
        let by_name = users.iter().map(|user| (user.name.clone(), user.password_hash.clone())).collect();
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(by_name);
    }

    fn current(&self) -> Arc<HashMap<String, Secret>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// A verification for the verifier threads, and where its outcome goes.
type Job = (Vec<u8>, String, oneshot::Sender<bool>);

/// [`VERIFICATIONS_AT_ONCE`] long-lived threads that run the Argon2 verifications, each
/// in memory of its own that it keeps: allocating 19 MiB per verification (on tokio's
/// blocking pool) grew the broker by some 200 MiB under a flood, which malloc kept.
struct Verifier {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

impl Verifier {
    fn start() -> Self {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(VERIFICATIONS_AT_ONCE);
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..VERIFICATIONS_AT_ONCE {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new().name(format!("argon2-{n}")).spawn(move || {
                let mut memory = Vec::new();
                loop {
                    let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok((password, hash, outcome)) = job else { return };
                    let _ = outcome.send(password::verify_in(&password, &hash, &mut memory));
                }
            });
            if let Err(err) = spawned {
                tracing::error!("cannot start a password verifier thread: {err}");
            }
        }
        Self { jobs }
    }
}

pub struct LoginGate {
    pub accounts: Accounts,
    internal_password: Option<Secret>,
    /// Who may hand the verifier a job: as many as it has threads.
    verifications: Semaphore,
    /// Who may run or wait for a verification at all.
    admitted: Semaphore,
    verifier: Verifier,
    failures: Mutex<FailureLimiter>,
    /// What unknown users are checked against, so they cost what known ones do.
    dummy_hash: String,
    token: Secret,
}

impl LoginGate {
    pub fn new(accounts: Accounts, internal_password: Option<Secret>) -> Self {
        let token: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        Self {
            accounts,
            internal_password,
            verifications: Semaphore::new(VERIFICATIONS_AT_ONCE),
            admitted: Semaphore::new(VERIFICATIONS_AT_ONCE + WAITING_AT_MOST),
            verifier: Verifier::start(),
            failures: Mutex::new(FailureLimiter::default()),
            dummy_hash: password::hash(&token).unwrap_or_default(),
            token: Secret::new(token),
        }
    }

    /// What the front door hands the engine in place of a password it has checked.
    pub fn token(&self) -> &str {
        self.token.expose()
    }

    pub fn is_token(&self, password: &[u8]) -> bool {
        bool::from(self.token.expose().as_bytes().ct_eq(password))
    }

    /// Checks a login; `peer` is None where the address is not known.
    pub async fn verify(&self, user: &str, password: &[u8], peer: Option<IpAddr>) -> Verdict {
        if user == INTERNAL_MQTT_USER {
            let accepted = self
                .internal_password
                .as_ref()
                .is_some_and(|expected| bool::from(expected.expose().as_bytes().ct_eq(password)));
            return if accepted { Verdict::Accepted } else { self.failed(peer) };
        }
        let allowed = |peer: Option<IpAddr>| {
            peer.is_none_or(|peer| {
                self.failures.lock().unwrap_or_else(PoisonError::into_inner).allows(peer, Instant::now())
            })
        };
        if !allowed(peer) {
            return Verdict::Busy;
        }
        let known = self.accounts.current().get(user).cloned();
        let hash = known.as_ref().map_or(self.dummy_hash.clone(), |hash| hash.expose().to_owned());
        let matches = {
            let Ok(_admitted) = self.admitted.try_acquire() else { return Verdict::Busy };
            let Ok(_slot) = self.verifications.acquire().await else { return Verdict::Busy };
            // The failures of those ahead in the queue count too.
            if !allowed(peer) {
                return Verdict::Busy;
            }
            let (outcome, verified) = oneshot::channel();
            if self.verifier.jobs.try_send((password.to_vec(), hash, outcome)).is_err() {
                return Verdict::Busy;
            }
            verified.await.unwrap_or(false)
        };
        if matches && known.is_some() {
            return Verdict::Accepted;
        }
        if known.is_none() {
            info!(user, "refused MQTT login: no such account");
        }
        self.failed(peer)
    }

    fn failed(&self, peer: Option<IpAddr>) -> Verdict {
        if let Some(peer) = peer {
            self.failures.lock().unwrap_or_else(PoisonError::into_inner).failed(peer, Instant::now());
        }
        Verdict::BadCredentials
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> LoginGate {
        let users =
            [BrokerUser { name: "esp32".into(), password_hash: Secret::new(password::hash("s3cret").unwrap()) }];
        LoginGate::new(Accounts::new(&users), Some(Secret::new("internal-pw")))
    }

    #[tokio::test]
    async fn logins_are_checked_against_hashes_and_the_internal_password() {
        let gate = gate();
        assert_eq!(gate.verify("esp32", b"s3cret", None).await, Verdict::Accepted);
        assert_eq!(gate.verify("esp32", b"wrong", None).await, Verdict::BadCredentials);
        assert_eq!(gate.verify("nobody", b"s3cret", None).await, Verdict::BadCredentials);
        assert_eq!(gate.verify(INTERNAL_MQTT_USER, b"internal-pw", None).await, Verdict::Accepted);
        assert_eq!(gate.verify(INTERNAL_MQTT_USER, b"s3cret", None).await, Verdict::BadCredentials);
        let no_internal = LoginGate::new(Accounts::default(), None);
        assert_eq!(no_internal.verify(INTERNAL_MQTT_USER, b"", None).await, Verdict::BadCredentials);
        assert!(gate.is_token(gate.token().as_bytes()) && !gate.is_token(b"s3cret"));
    }

    #[tokio::test]
    async fn a_peer_with_too_many_failures_is_refused_unchecked() {
        let gate = gate();
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..FAILURES_PER_WINDOW {
            assert_eq!(gate.verify("esp32", b"guess", Some(peer)).await, Verdict::BadCredentials);
        }
        assert_eq!(gate.verify("esp32", b"s3cret", Some(peer)).await, Verdict::Busy);
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(gate.verify("esp32", b"s3cret", Some(other)).await, Verdict::Accepted);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logins_beyond_the_waiting_room_are_told_the_server_is_busy() {
        let gate = Arc::new(gate());
        let attempts: Vec<_> = (0..VERIFICATIONS_AT_ONCE + WAITING_AT_MOST + 6)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.verify("esp32", b"wrong", None).await })
            })
            .collect();
        let mut verdicts = Vec::new();
        for attempt in attempts {
            verdicts.push(attempt.await.unwrap());
        }
        let busy = verdicts.iter().filter(|verdict| **verdict == Verdict::Busy).count();
        assert!(busy >= 6, "{verdicts:?}");
        assert!(verdicts.iter().all(|verdict| *verdict != Verdict::Accepted));
    }

    #[test]
    fn failures_are_forgotten_after_the_window_and_the_table_is_bounded() {
        let mut limiter = FailureLimiter::default();
        let (peer, start) = ("192.0.2.1".parse().unwrap(), Instant::now());
        for _ in 0..FAILURES_PER_WINDOW {
            limiter.failed(peer, start);
        }
        assert!(!limiter.allows(peer, start + Duration::from_secs(59)));
        assert!(limiter.allows(peer, start + FAILURE_WINDOW));
        for n in 0..(PEERS_KEPT as u32 + 10) {
            limiter.failed(IpAddr::from(n.to_be_bytes()), start);
        }
        assert!(limiter.peers.len() <= PEERS_KEPT);
    }
}
