//! The conformance suite and the property harnesses of `onceflight-core`
//! over HTTP: each case gets its own onceflight service, served in-process
//! on `127.0.0.1:0` and reached through `HttpStore`, so that the API of
//! docs/protocol.md §7, the client and the store behind them together must
//! behave exactly as a store does.
//!
//! By store: [`memory`] (and its [`properties`]) with the `memory` feature,
//! [`postgres`] and [`redis`] with theirs (and `DATABASE_URL` /
//! `REDIS_URL`: without them every case skips loudly, unless
//! `ONCEFLIGHT_REQUIRE_BACKENDS=1`).

#[path = "../common/mod.rs"]
mod common;

#[cfg(feature = "memory")]
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "memory")]
mod properties;
#[cfg(feature = "redis")]
mod redis;
