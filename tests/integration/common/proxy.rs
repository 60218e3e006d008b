//! A loopback TCP relay whose connections a test can cut, to show what a client does
//! when the network drops under it (the server itself stays up and keeps its data),
//! or freeze: connections stay open and carry nothing, as behind a dead route.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct CuttableProxy {
    /// `127.0.0.1:port` to connect to instead of the target.
    pub host: String,
    cuts: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    holding: Arc<AtomicBool>,
    frozen: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    pub async fn start(target: &str) -> Self {
        Self::start_on(0, target).await
    }

    /// As [`CuttableProxy::start`], on `port` (0: any free one).
    pub async fn start_on(port: u16, target: &str) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind the proxy");
        let host = listener.local_addr().expect("proxy address").to_string();
        let (cuts, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let holding = Arc::new(AtomicBool::new(false));
        let (target, cut_signal, counter, held) = (target.to_owned(), cuts.clone(), accepted.clone(), holding.clone());
        let refused_counter = refused.clone();
        let (frozen, _) = watch::channel(false);
        let freeze_signal = frozen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if held.load(Ordering::SeqCst) {
                    refused_counter.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let mut cut = cut_signal.subscribe();
                let mut freeze = freeze_signal.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    let frozen_now = *freeze.borrow();
                    if frozen_now {
                        let _ = cut.changed().await;
                        return;
                    }
                    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                        () = async { drop(freeze.wait_for(|frozen| *frozen).await) } => {
                            let _ = cut.changed().await;
                        }
                    }
                });
            }
        });
        Self { host, cuts, accepted, refused, holding, frozen, task }
    }

    /// Drops every open connection; new ones are relayed again.
    pub fn cut(&self) {
        self.cuts.send_modify(|generation| *generation += 1);
    }

    /// Drops every open connection and refuses new ones until [`CuttableProxy::resume`]:
    /// a network outage.
    pub fn hold(&self) {
        self.holding.store(true, Ordering::SeqCst);
        self.cut();
    }

    /// Stops relaying: open and new connections stay open and carry nothing, so every
    /// request waits for its own timeout. [`CuttableProxy::thaw`] ends it.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Relays again; the frozen connections are dropped, as a client would give up on them.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
        self.cut();
    }

    pub fn resume(&self) {
        self.holding.store(false, Ordering::SeqCst);
    }

    /// Connections relayed so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections dropped at once while held: a client's attempts during an outage.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}
