//! The systemd notify protocol (sd_notify(3)): one datagram per state change to
//! `$NOTIFY_SOCKET`. Outside systemd every call is a no-op.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tracing::debug;

pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Variables that belong to the supervisor alone; children are started without them.
    pub const ENV_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

    pub fn from_env() -> Self {
        let path = std::env::var_os("NOTIFY_SOCKET");
        let socket = path.and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = match path.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
                None => SocketAddr::from_pathname(&path),
            };
            Some((UnixDatagram::unbound().ok()?, addr.ok()?))
        });
        Self { socket }
    }

    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.socket
            && let Err(err) = socket.send_to_addr(state.as_bytes(), addr)
        {
            debug!("sd_notify {state:?} failed: {err}");
        }
    }

    /// How often to send WATCHDOG=1, when systemd asks for it (half its timeout).
    pub fn watchdog_interval() -> Option<Duration> {
        if let Ok(pid) = std::env::var("WATCHDOG_PID")
            && pid.parse::<u32>().ok() != Some(std::process::id())
        {
            return None;
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}
