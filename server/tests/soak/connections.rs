//! The store's own view of a server's connections: `pg_stat_activity` on
//! Postgres, `CLIENT LIST` on Redis, matched to the server's sockets by
//! their local ports.

use std::collections::HashSet;
#[cfg(feature = "redis")]
use std::time::Duration;

#[cfg(feature = "redis")]
use crate::resp::resp;

/// Local ports of the established TCP connections of process `pid` to
/// `port` (from `/proc/<pid>/net/tcp{,6}` and the process's socket fds).
pub(crate) fn ports_connected_to(pid: u32, port: u16) -> HashSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .filter_map(|target| {
                    let target = target.to_string_lossy().into_owned();
                    Some(
                        target
                            .strip_prefix("socket:[")?
                            .strip_suffix(']')?
                            .to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state), Some(inode)) =
                (fields.get(1), fields.get(2), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let port_of = |address: &str| {
                address
                    .rsplit(':')
                    .next()
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
            };
            // 01 is ESTABLISHED.
            if *state == "01" && port_of(remote) == Some(port) && inodes.contains(*inode) {
                ports.extend(port_of(local));
            }
        }
    }
    ports
}

/// How many of Postgres's client backends belong to process `pid`.
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_connections(url: &str, pid: u32) -> usize {
    let parsed = reqwest::Url::parse(url).expect("DATABASE_URL is a URL");
    let port = parsed.port().unwrap_or(5432);
    let ours = ports_connected_to(pid, port);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect to DATABASE_URL");
    let rows: Vec<(Option<i32>,)> = sqlx::query_as(
        "SELECT client_port FROM pg_stat_activity WHERE application_name = 'onceflight'",
    )
    .fetch_all(&pool)
    .await
    .expect("read pg_stat_activity");
    pool.close().await;
    rows.into_iter()
        .filter_map(|(port,)| u16::try_from(port?).ok())
        .filter(|port| ours.contains(port))
        .count()
}

/// How many of Redis's clients belong to process `pid`.
#[cfg(feature = "redis")]
pub(crate) async fn redis_connections(url: &str, pid: u32) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let parsed = reqwest::Url::parse(url).expect("REDIS_URL is a URL");
    let host = parsed.host_str().expect("REDIS_URL has a host").to_owned();
    let port = parsed.port().unwrap_or(6379);
    let ours = ports_connected_to(pid, port);
    let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .expect("connect to REDIS_URL");
    let mut request = Vec::new();
    if let Some(password) = parsed.password() {
        let user = if parsed.username().is_empty() {
            "default"
        } else {
            parsed.username()
        };
        request.extend(resp(&["AUTH", user, password]));
    }
    request.extend(resp(&["CLIENT", "LIST"]));
    request.extend(resp(&["QUIT"]));
    stream.write_all(&request).await.expect("send CLIENT LIST");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("Redis answers CLIENT LIST")
        .expect("read CLIENT LIST");
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .filter_map(|line| {
            let addr = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("addr="))?;
            addr.rsplit(':').next()?.parse::<u16>().ok()
        })
        .filter(|port| ours.contains(port))
        .count()
}
