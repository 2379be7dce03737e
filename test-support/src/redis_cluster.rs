//! A throw-away Redis Cluster for the tests: three master nodes (no
//! replicas) on free loopback ports that keep nothing on disk, killed when
//! the [`RedisCluster`] value is dropped.
//!
//! Each node is the same `redis-server` as [`crate::redis`] starts, with
//! cluster mode on; `redis-cli --cluster create` then joins them and spreads
//! the 16384 hash slots over them, so keys in different slots really live on
//! different nodes and the tests see redirections.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::{self, TempDir};
use crate::redis;

/// Three is the fewest masters `redis-cli --cluster create` accepts.
const NODES: usize = 3;
const START_ATTEMPTS: u32 = 3;
/// How long the nodes may take to agree on the slot map once created.
const CLUSTER_OK_TIMEOUT: Duration = Duration::from_secs(30);
/// A node also listens on its port plus this for the cluster bus (the
/// node-to-node protocol), so that port must be free too.
const BUS_PORT_OFFSET: u16 = 10_000;
/// How many ports to try for the [`NODES`] that also have a free bus port.
/// Most ephemeral ports qualify, so this is only a bound on bad luck.
const PORT_PICKS: usize = 100;

/// A running throw-away cluster.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    // Declared last so it is removed after `drop` has killed the nodes.
    dir: TempDir,
}

impl RedisCluster {
    /// Starts three cluster-mode `redis-server`s, joins them into a cluster
    /// and waits until every node reports it healthy, retrying on new ports
    /// when any step fails.
    pub fn start() -> Result<Self> {
        let server = redis::find_server("REDIS_CLUSTER_URLS")?;
        let Some(cli) = process::find_on_path("redis-cli") else {
            bail!(
                "`redis-cli` is not on PATH; it creates the throw-away Redis Cluster. Install \
                 it with `apt-get install redis-tools` (the redis-server package depends on \
                 it), or set REDIS_CLUSTER_URLS to a cluster the tests may use."
            );
        };
        let dir = TempDir::new("redis-cluster")?;
        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            let ports = free_node_ports()?;
            match Self::try_start(&server, &cli, &ports, dir.path()) {
                Ok(nodes) => return Ok(Self { nodes, dir }),
                // The nodes of the failed attempt were dropped, so killed.
                Err(error) => {
                    eprintln!(
                        "Redis Cluster did not start on ports {} (attempt {attempt} of \
                         {START_ATTEMPTS}): {error:#}",
                        join_ports(&ports)
                    );
                    last_error = Some(error);
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no start attempted"))
            .context(format!(
                "could not start a throw-away Redis Cluster after {START_ATTEMPTS} attempts"
            )))
    }

    /// The seed URLs of all nodes, comma-separated: the format of
    /// `REDIS_CLUSTER_URLS`.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}/", node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Where the nodes' directories, each with its log, live.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// One attempt on `ports`. On failure the nodes started so far are
    /// dropped, which kills them.
    fn try_start(server: &Path, cli: &Path, ports: &[u16], root: &Path) -> Result<Vec<Node>> {
        let mut nodes = Vec::with_capacity(ports.len());
        for &port in ports {
            nodes.push(Node::spawn(server, port, root)?);
        }
        for node in &mut nodes {
            redis::wait_for_pong(node.port, &mut node.child, &node.dir)?;
        }

        let addrs: Vec<String> = ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        process::output(
            Command::new(cli)
                .args(["--cluster", "create"])
                .args(&addrs)
                // Every node a master; `--cluster-yes` accepts the proposed
                // slot layout instead of asking on the terminal.
                .args(["--cluster-replicas", "0", "--cluster-yes"]),
        )
        .context("`redis-cli --cluster create` could not join the nodes into a cluster")?;

        wait_for_cluster_ok(&mut nodes)?;
        Ok(nodes)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let ports: Vec<u16> = self.nodes.iter().map(|node| node.port).collect();
        // Dropping the nodes kills them.
        self.nodes.clear();
        eprintln!(
            "stopped the throw-away Redis Cluster on ports {}",
            join_ports(&ports)
        );
    }
}

/// One cluster node: a `redis-server` child with its own directory (for its
/// log and `nodes.conf`), killed on drop.
#[derive(Debug)]
struct Node {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Node {
    fn spawn(server: &Path, port: u16, root: &Path) -> Result<Self> {
        let dir = root.join(format!("node-{port}"));
        // An earlier, failed attempt may have used this port: its files
        // (above all its `nodes.conf`, which would make the node remember the
        // old cluster) must not carry over.
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("could not remove the stale {}", dir.display()))?;
        }
        std::fs::create_dir(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        let config = dir.join("nodes.conf");
        let child = redis::spawn_server(
            server,
            port,
            &dir,
            &[
                OsStr::new("--cluster-enabled"),
                OsStr::new("yes"),
                OsStr::new("--cluster-config-file"),
                config.as_os_str(),
                OsStr::new("--cluster-node-timeout"),
                OsStr::new("5000"),
            ],
        )?;
        Ok(Self { child, port, dir })
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Fails with the node's log when its server has exited.
    fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!(
                "the redis-server on port {} exited ({status})\n{}",
                self.port,
                process::log_tail(&redis::log_path(&self.dir), 20)
            ),
            None => Ok(()),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(error) = self.child.kill() {
            eprintln!(
                "warning: could not kill the redis-server on port {}: {error}",
                self.port
            );
        }
        let _ = self.child.wait();
    }
}

/// Waits until `CLUSTER INFO` on every node says `cluster_state:ok`: only
/// then does each node know which node serves every slot, so the tests get
/// answers instead of `CLUSTERDOWN` errors.
fn wait_for_cluster_ok(nodes: &mut [Node]) -> Result<()> {
    let deadline = Instant::now() + CLUSTER_OK_TIMEOUT;
    loop {
        let mut not_ready = None;
        for node in nodes.iter_mut() {
            node.check_running()?;
            let reply = redis::request(node.addr(), "CLUSTER INFO");
            if !reply
                .as_ref()
                .is_ok_and(|info| info.contains("cluster_state:ok"))
            {
                not_ready = Some((node, reply));
                break;
            }
        }
        let Some((node, reply)) = not_ready else {
            return Ok(());
        };
        if Instant::now() > deadline {
            let last = match reply {
                Ok(info) => info
                    .lines()
                    .find(|line| line.starts_with("cluster_state:"))
                    .unwrap_or(info.trim())
                    .to_owned(),
                Err(error) => error.to_string(),
            };
            bail!(
                "the node on port {} did not report cluster_state:ok within \
                 {CLUSTER_OK_TIMEOUT:?} (last answer: {last})\n{}",
                node.port,
                process::log_tail(&redis::log_path(&node.dir), 20)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// [`NODES`] loopback ports that were free a moment ago together with their
/// cluster bus ports (port + [`BUS_PORT_OFFSET`], which must not pass 65535).
/// Every port looked at stays bound until all are picked, so no port is
/// picked twice and no node's port is another node's bus port. As with
/// [`process::free_port`], another process can still take one before the
/// nodes bind them, which is why the start is retried.
fn free_node_ports() -> Result<Vec<u16>> {
    let mut held = Vec::new();
    let mut ports = Vec::with_capacity(NODES);
    for _ in 0..PORT_PICKS {
        if ports.len() == NODES {
            break;
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("could not bind a free port on 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        held.push(listener);
        let Some(bus_port) = port.checked_add(BUS_PORT_OFFSET) else {
            continue;
        };
        if let Ok(bus) = TcpListener::bind((Ipv4Addr::LOCALHOST, bus_port)) {
            held.push(bus);
            ports.push(port);
        }
    }
    if ports.len() < NODES {
        bail!(
            "could not find {NODES} free loopback ports whose cluster bus port (port + \
             {BUS_PORT_OFFSET}) is free too, in {PORT_PICKS} tries"
        );
    }
    Ok(ports)
}

fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
