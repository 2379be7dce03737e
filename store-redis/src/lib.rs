//! The onceflight store on Redis and Redis Cluster.
//!
//! - Every operation is one round trip: an EVALSHA of one Lua script per
//!   atomic operation (`lua/`), reloaded transparently after `NOSCRIPT`
//!   (a Redis restart, a failover, `SCRIPT FLUSH`).
//! - A lease is a key written with `SET … PXAT` (the `SET NX PX` idea with
//!   an absolute end): when a worker dies, Redis retires its lease at the
//!   lease's end with nobody sweeping, and the next claim takes over.
//!   Records carry their retention as a TTL, so [`RequestStore::sweep`]
//!   has nothing to do. Lease ends, backoff and retention are judged by
//!   Redis's clock (`TIME` and key TTLs), never the client's.
//! - All keys of one request share a hash tag (a hash of the request key),
//!   so the store runs unchanged on Redis Cluster; every key starts with a
//!   configurable prefix.
//! - `wait` is woken through pub/sub: each operation that settles a record
//!   publishes its key on `<prefix>wake`; each store instance holds one
//!   subscription and fans it out in process. After the subscription drops
//!   it subscribes again and every waiter re-reads its record; a bounded
//!   fallback re-read covers a lost message.
//!
//! # Fencing tokens
//!
//! A token is Redis's clock in microseconds at the grant, or one more than
//! the key's last token should that be higher (two grants within one
//! microsecond). The last token lives in the record, and after `delete` in
//! a small "fence" key kept as long as the record would have lived; once a
//! record is gone by retention, Redis's clock has moved on by at least the
//! retention, past every token the key was granted. So tokens strictly
//! increase per key, with no counter kept forever per request, and stay
//! below 2^53 − 1 until the year 2255. The one assumption: Redis's clock
//! never steps back by more than the retention (or, right after a `delete`,
//! by more than what remained of it) — NTP slews, it does not step, on a
//! healthy host.
//!
//! # Requirements and deployment
//!
//! Redis 6.2 or later (`SET … PXAT`); scripts replicate by effects (the
//! default since Redis 7). Run it with `maxmemory-policy noeviction`: an
//! evicting policy may drop leases and cached results under memory
//! pressure. Without persistence (AOF), a Redis restart forgets every
//! record; with `appendonly yes` completed results survive it.
//!
//! # Connection
//!
//! [`RedisConfig::new`] takes `redis://[user:password@]host:port[/db]`,
//! `rediss://…` for TLS (rustls, with the webpki roots), or a comma-separated
//! list of cluster seed URLs (`redis+cluster://host:port` names a cluster
//! through one seed). Passwords never appear in `Debug` output or logs.

mod config;
mod error;
mod store;

pub use config::RedisConfig;
pub use store::{RedisConnection, RedisStore};
