//! A small TCP proxy that stands between a client and a server, so tests can
//! break the path on purpose:
//!
//! - [`Proxy::freeze`] stops every byte (the connections stay open, as
//!   behind a dead router or a paused host; new ones wait too),
//!   [`Proxy::cut`] resets every connection and refuses new ones (as when
//!   the server crashes or a firewall drops the flow), and [`Proxy::heal`]
//!   lets traffic through again;
//! - [`Proxy::freeze_open`] and [`Proxy::freeze_open_that_sent`] silence
//!   only the connections open now (all of them, or those whose client has
//!   sent some bytes, e.g. a Redis `SUBSCRIBE`): a half-open connection after
//!   a network failover, while connections opened later pass.
//!
//! The proxy runs on a runtime of its own, so it forwards bytes whatever the
//! test's runtime is doing: a test that blocks a worker thread (a blocking
//! readiness probe, say) cannot starve the path its server's store takes.

use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    Freeze,
    Cut,
}

#[derive(Clone, Debug)]
struct State {
    mode: Mode,
    /// Connections silenced on their own, whatever the mode.
    frozen: BTreeSet<u64>,
}

impl State {
    /// `Some(true)` when connection `id` may pass, `Some(false)` when it is
    /// to be closed, `None` while it waits.
    fn pass(&self, id: u64) -> Option<bool> {
        match self.mode {
            Mode::Cut => Some(false),
            Mode::Freeze => None,
            Mode::Pass if self.frozen.contains(&id) => None,
            Mode::Pass => Some(true),
        }
    }
}

/// How much of what a client sends is kept to match
/// [`Proxy::freeze_open_that_sent`] against.
const KEPT_PER_CONNECTION: usize = 64 * 1024;

/// The connections open now and the start of what each client sent.
type Open = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// A running proxy on a loopback port; stops (and drops every connection)
/// when dropped.
#[derive(Debug)]
pub struct Proxy {
    address: SocketAddr,
    state: watch::Sender<State>,
    open: Open,
    /// The proxy's own runtime: one thread that accepts and forwards.
    runtime: Option<Runtime>,
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `upstream`.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound or the proxy's thread cannot
    /// start.
    pub async fn start(upstream: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-proxy")
            .enable_all()
            .build()
            .expect("start the proxy's runtime");
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy on 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("make the proxy's socket non-blocking");
        let address = listener.local_addr().expect("the proxy's address");
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener).expect("register the proxy's socket")
        };
        let state = watch::channel(State {
            mode: Mode::Pass,
            frozen: BTreeSet::new(),
        })
        .0;
        let open: Open = Arc::default();
        let (states, opened) = (state.clone(), Arc::clone(&open));
        runtime.spawn(async move {
            let next_id = AtomicU64::new(0);
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let states = states.subscribe();
                if states.borrow().mode == Mode::Cut {
                    // Refused: closed at once.
                    drop(client);
                    continue;
                }
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                lock(&opened).push((id, Vec::new()));
                let connection = Connection {
                    id,
                    states,
                    open: Arc::clone(&opened),
                };
                tokio::spawn(connection.forward(client, upstream));
            }
        });
        Self {
            address,
            state,
            open,
            runtime: Some(runtime),
        }
    }

    /// A proxy in front of the server that `url` names (`default_port` when
    /// the URL has none), and `url` pointed at the proxy instead.
    ///
    /// # Panics
    ///
    /// When the URL names no host that resolves.
    pub async fn in_front_of(url: &str, default_port: u16) -> (Self, String) {
        let (before, _, _, after) = split_authority(url, default_port);
        let proxy = Self::start(server_of(url, default_port)).await;
        let url = format!("{before}127.0.0.1:{}{after}", proxy.port());
        (proxy, url)
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.address
    }

    /// Stops all traffic; connections stay open and bytes wait.
    pub fn freeze(&self) {
        self.state.send_modify(|state| state.mode = Mode::Freeze);
    }

    /// Resets every connection and refuses new ones.
    pub fn cut(&self) {
        self.state.send_modify(|state| state.mode = Mode::Cut);
    }

    /// Lets traffic through again (held bytes flow on), on every connection.
    pub fn heal(&self) {
        self.state.send_modify(|state| {
            state.mode = Mode::Pass;
            state.frozen.clear();
        });
    }

    /// Silences every connection open now: it stays open, but nothing
    /// passes any more. Connections opened later pass.
    pub fn freeze_open(&self) {
        self.freeze_open_where(|_| true);
    }

    /// Silences the connections open now whose client has sent `needle`
    /// (ASCII case ignored), e.g. `b"SUBSCRIBE"`.
    pub fn freeze_open_that_sent(&self, needle: &[u8]) {
        self.freeze_open_where(|sent| {
            sent.windows(needle.len())
                .any(|window| window.eq_ignore_ascii_case(needle))
        });
    }

    fn freeze_open_where(&self, matches: impl Fn(&[u8]) -> bool) {
        let ids: Vec<u64> = lock(&self.open)
            .iter()
            .filter(|(_, sent)| matches(sent))
            .map(|(id, _)| *id)
            .collect();
        self.state.send_modify(|state| state.frozen.extend(ids));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.send_modify(|state| state.mode = Mode::Cut);
        // Without waiting: the proxy may be dropped on a runtime's thread,
        // where blocking is not allowed. Its tasks, and the sockets they
        // own, go with the runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn lock(open: &Open) -> std::sync::MutexGuard<'_, Vec<(u64, Vec<u8>)>> {
    open.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One connection through the proxy.
struct Connection {
    id: u64,
    states: watch::Receiver<State>,
    open: Open,
}

impl Connection {
    async fn forward(mut self, client: TcpStream, upstream: SocketAddr) {
        // A new connection waits out a freeze before it even reaches
        // upstream.
        if self.passable().await
            && let Ok(server) = TcpStream::connect(upstream).await
        {
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let upstream_bound = Pump {
                id: self.id,
                states: self.states.clone(),
                keep: Some(Arc::clone(&self.open)),
            };
            let downstream = Pump {
                id: self.id,
                states: self.states.clone(),
                keep: None,
            };
            // When either direction ends, both sockets close: the
            // futures own the halves, and `select!` drops the other.
            tokio::select! {
                () = upstream_bound.run(client_read, server_write) => {}
                () = downstream.run(server_read, client_write) => {}
            }
        }
        lock(&self.open).retain(|(id, _)| *id != self.id);
    }

    async fn passable(&mut self) -> bool {
        passable(self.id, &mut self.states).await
    }
}

/// One direction of a connection.
struct Pump {
    id: u64,
    states: watch::Receiver<State>,
    /// Where what the client sends is kept (client to server only).
    keep: Option<Open>,
}

impl Pump {
    /// Copies `from` to `to` while traffic may pass; returns when either
    /// side closes or the proxy cuts the connection.
    async fn run(mut self, mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
        let mut buffer = vec![0_u8; 16 * 1024];
        loop {
            let read = tokio::select! {
                read = from.read(&mut buffer) => read,
                () = cut(&mut self.states) => return,
            };
            let n = match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if let Some(open) = &self.keep {
                let mut open = lock(open);
                if let Some((_, sent)) = open.iter_mut().find(|(id, _)| *id == self.id) {
                    let room = KEPT_PER_CONNECTION.saturating_sub(sent.len());
                    sent.extend_from_slice(&buffer[..n.min(room)]);
                }
            }
            if !passable(self.id, &mut self.states).await {
                return;
            }
            if to.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    }
}

/// Waits until connection `id` may pass: `true` once it may, `false` if it
/// is cut first (or the proxy is gone).
async fn passable(id: u64, states: &mut watch::Receiver<State>) -> bool {
    match states.wait_for(|state| state.pass(id).is_some()).await {
        Ok(state) => state.pass(id) == Some(true),
        Err(_) => false,
    }
}

/// Resolves once the proxy cuts connections (or is gone).
async fn cut(states: &mut watch::Receiver<State>) {
    let _ = states.wait_for(|state| state.mode == Mode::Cut).await;
}

/// The address of the server that `url` names (`default_port` when the URL
/// has none), IPv4 first.
///
/// # Panics
///
/// When the URL names no host that resolves.
pub fn server_of(url: &str, default_port: u16) -> SocketAddr {
    let (_, host, port, _) = split_authority(url, default_port);
    let addresses: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .unwrap_or_else(|e| panic!("resolve {host}:{port}: {e}"))
        .collect();
    addresses
        .iter()
        .find(|address| address.is_ipv4())
        .or(addresses.first())
        .copied()
        .unwrap_or_else(|| panic!("{host}:{port} resolves to no address"))
}

/// `scheme://user@host:port/rest` → (`scheme://user@`, `host`, `port`,
/// `/rest`). An IPv6 host keeps its brackets off.
fn split_authority(url: &str, default_port: u16) -> (String, String, u16, String) {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let hostport = &authority[host_start..];
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (
            host,
            port.parse()
                .unwrap_or_else(|_| panic!("bad port `{port}` in the URL")),
        ),
        _ => (hostport, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (
        format!("{}{}", &url[..scheme_end], &authority[..host_start]),
        host.to_owned(),
        port,
        rest[authority_end..].to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::split_authority;

    #[test]
    fn urls_split_around_host_and_port() {
        let split = |url| split_authority(url, 5432);
        assert_eq!(
            split("postgres://app:pw@db.local:6000/main?sslmode=disable"),
            (
                "postgres://app:pw@".to_owned(),
                "db.local".to_owned(),
                6000,
                "/main?sslmode=disable".to_owned()
            )
        );
        assert_eq!(
            split("redis://127.0.0.1/"),
            (
                "redis://".to_owned(),
                "127.0.0.1".to_owned(),
                5432,
                "/".to_owned()
            )
        );
        assert_eq!(split("postgres://u@[::1]:7/d").1, "::1");
    }
}
