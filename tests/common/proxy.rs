//! A cuttable TCP proxy inside the test process: a network partition between one process and
//! another, without root or iptables.
//!
//! `cut()` stalls the link rather than refusing it, like packets being dropped: bytes already
//! read from one side are held (not written to the other) until `heal()`, and connections
//! accepted while cut are not connected upstream until `heal()`. Nothing is closed by a cut,
//! so both ends see silence, as across a real partition: their own timeouts must notice it.
//!
//! Dropping the proxy stops accepting and closes every connection it forwards.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A TCP proxy on `127.0.0.1`, forwarding to one target. See the module documentation.
pub struct Proxy {
    addr: SocketAddr,
    target: String,
    cut: watch::Sender<bool>,
    /// The accept loop; it owns the connections' tasks, which end when it is aborted.
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port forwarding to `target` ("host:port", or a
    /// `SocketAddr`, or an `http://host:port` URL). Needs a tokio runtime.
    pub async fn start(target: impl ToString) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        Self::serve(listener, target)
    }

    /// Starts a proxy listening on `127.0.0.1:port` (a port the caller chose, e.g. one to
    /// advertise before the proxy exists). Needs a tokio runtime.
    pub async fn start_on(port: u16, target: impl ToString) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("bind proxy on port {port}: {e}"));
        Self::serve(listener, target)
    }

    fn serve(listener: TcpListener, target: impl ToString) -> Proxy {
        let target = target.to_string();
        let target = target
            .strip_prefix("http://")
            .unwrap_or(&target)
            .trim_end_matches('/')
            .to_string();
        let addr = listener.local_addr().expect("proxy address");
        let (cut, _) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, target.clone(), cut.clone()));
        Proxy {
            addr,
            target,
            cut,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address forwarded to ("host:port").
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Stalls the link in both directions (see the module documentation).
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Resumes the link: held bytes and pending connections go through.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection task and
        // so closes both sockets of each connection.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: String, cut: watch::Sender<bool>) {
    let mut conns = JoinSet::new();
    // Declared after `conns`, so dropped before it: once the proxy is dropped and a
    // connection of it is seen closed, the listener is closed already.
    let listener = listener;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((inbound, _)) = accepted else { continue };
                let _ = inbound.set_nodelay(true);
                conns.spawn(forward(inbound, target.clone(), cut.subscribe()));
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Waits until the link is not cut. False if the proxy is gone.
async fn open(cut: &mut watch::Receiver<bool>) -> bool {
    cut.wait_for(|cut| !*cut).await.is_ok()
}

async fn forward(inbound: TcpStream, target: String, mut cut: watch::Receiver<bool>) {
    // A connection accepted while cut waits here, unconnected upstream, until the heal.
    if !open(&mut cut).await {
        return;
    }
    let Ok(outbound) = TcpStream::connect(&target).await else {
        return; // dropping `inbound` closes it: the target refused, as it would directly
    };
    let _ = outbound.set_nodelay(true);
    let (in_r, in_w) = inbound.into_split();
    let (out_r, out_w) = outbound.into_split();
    // Each direction ends at its EOF (passed on as a half-close) or error; the connection
    // ends when both did, or when the proxy is dropped.
    tokio::join!(pipe(in_r, out_w, cut.clone()), pipe(out_r, in_w, cut));
}

/// Copies `from` to `to` chunk by chunk, holding each chunk while the link is cut.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // Deliver the EOF only once the link is up, as a FIN would be dropped too.
                if open(&mut cut).await {
                    let _ = to.shutdown().await;
                }
                return;
            }
            Ok(n) => n,
        };
        if !open(&mut cut).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
