//! A small TCP proxy that stands between the server and its store, so tests
//! can break the path on purpose: [`Proxy::freeze`] stops every byte (the
//! connections stay open, as behind a dead router or a paused host),
//! [`Proxy::cut`] resets every connection and refuses new ones (as when a
//! store crashes or a firewall drops the flow), and [`Proxy::heal`] lets
//! traffic through again.

use std::net::{SocketAddr, ToSocketAddrs};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    Freeze,
    Cut,
}

/// A running proxy on a loopback port; stops (and drops every connection)
/// when dropped.
pub(crate) struct Proxy {
    address: SocketAddr,
    mode: watch::Sender<Mode>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy on 127.0.0.1:0");
        let address = listener.local_addr().expect("the proxy's address");
        let mode = watch::channel(Mode::Pass).0;
        let modes = mode.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let modes = modes.subscribe();
                if *modes.borrow() == Mode::Cut {
                    // Refused: closed at once.
                    drop(client);
                    continue;
                }
                tokio::spawn(forward(client, upstream, modes));
            }
        });
        Self {
            address,
            mode,
            accept,
        }
    }

    /// A proxy in front of the server that the store URL `url` names
    /// (`default_port` when the URL has none), and the URL that reaches the
    /// same store through the proxy.
    pub(crate) async fn in_front_of(url: &str, default_port: u16) -> (Self, String) {
        let mut parsed = reqwest::Url::parse(url).unwrap_or_else(|e| panic!("parse {url}: {e}"));
        let host = parsed.host_str().expect("the store URL names a host");
        let port = parsed.port().unwrap_or(default_port);
        let upstream = (host, port)
            .to_socket_addrs()
            .unwrap_or_else(|e| panic!("resolve {host}:{port}: {e}"))
            .next()
            .expect("an address");
        let proxy = Self::start(upstream).await;
        parsed.set_host(Some("127.0.0.1")).expect("a host");
        parsed.set_port(Some(proxy.port())).expect("a port");
        (proxy, parsed.to_string())
    }

    /// The port clients connect to.
    pub(crate) fn port(&self) -> u16 {
        self.address.port()
    }

    /// Stops all traffic; connections stay open and bytes wait.
    pub(crate) fn freeze(&self) {
        self.mode.send_replace(Mode::Freeze);
    }

    /// Resets every connection and refuses new ones.
    pub(crate) fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Lets traffic through again (held bytes flow on).
    pub(crate) fn heal(&self) {
        self.mode.send_replace(Mode::Pass);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.mode.send_replace(Mode::Cut);
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, mut modes: watch::Receiver<Mode>) {
    // A new connection waits out a freeze before it even reaches upstream.
    if !passable(&mut modes).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // When either direction ends, both sockets close: the tasks own the
    // halves, and `select!` drops the other one.
    tokio::select! {
        () = pump(client_read, server_write, modes.clone()) => {}
        () = pump(server_read, client_write, modes) => {}
    }
}

/// Copies `from` to `to` while the mode allows; returns when either side
/// closes or the proxy cuts the connection.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut modes: watch::Receiver<Mode>) {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            () = cut(&mut modes) => return,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !passable(&mut modes).await {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits until traffic may pass: `true` once the mode is `Pass`, `false` if
/// it becomes `Cut` first (or the proxy is gone).
async fn passable(modes: &mut watch::Receiver<Mode>) -> bool {
    match modes.wait_for(|mode| *mode != Mode::Freeze).await {
        Ok(mode) => *mode == Mode::Pass,
        Err(_) => false,
    }
}

/// Resolves once the proxy cuts connections (or is gone).
async fn cut(modes: &mut watch::Receiver<Mode>) {
    let _ = modes.wait_for(|mode| *mode == Mode::Cut).await;
}
