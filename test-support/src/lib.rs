//! What onceflight's tests, benchmarks and `cargo xtask` share, so that each
//! exists once:
//!
//! - throw-away servers started from the installed binaries on free
//!   loopback ports, stopped and deleted on drop: [`postgres::Postgres`]
//!   (optionally with TLS, crashable), [`redis::Redis`] (optionally with an
//!   append-only file or TLS, crashable), [`redis_cluster::RedisCluster`] and
//!   [`pgbouncer::PgBouncer`] (transaction mode), with their TLS material
//!   from [`tls::Certificates`];
//! - the `onceflight` binary as a process: [`server::Launch`] and
//!   [`server::Server`];
//! - with the `tokio` feature, a TCP [`proxy::Proxy`] that freezes or cuts
//!   the path to a server;
//! - with the `http` feature, JSON requests against a served API with one
//!   [`http::Reply`] type;
//! - a backend's URL from the environment, skipping loudly when it is
//!   missing or failing under `ONCEFLIGHT_REQUIRE_BACKENDS=1`
//!   ([`env::backend_url`]), names no other test uses
//!   ([`env::unique_name`]) and free ports ([`process::free_port`]).
//!
//! The protocol's own test material — the conformance cases, the reference
//! model and the history checker — lives in `onceflight-core`'s `testkit`.
//! This crate is never published.

pub mod env;
#[cfg(feature = "http")]
pub mod http;
pub mod pgbouncer;
pub mod postgres;
pub mod process;
#[cfg(feature = "tokio")]
pub mod proxy;
pub mod redis;
pub mod redis_cluster;
pub mod server;
pub mod tls;

pub use env::{backend_available, backend_url, unique_name};
