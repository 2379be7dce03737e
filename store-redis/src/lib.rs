//! The onceflight store on Redis and Redis Cluster.
//!
//! - Every operation is one round trip: an FCALL of one function of a Redis
//!   function library assembled from one Lua file per atomic operation
//!   (`lua/`). The library is loaded when the store connects (on every
//!   primary of a cluster) and again, transparently, when Redis has lost it
//!   (a restart or failover without persistence, `FUNCTION FLUSH`). Its
//!   name carries a hash of its code ([`RedisStore::library`]), so two
//!   versions of the store run side by side during a rolling upgrade.
//! - A request's record is one string, its fields packed with msgpack,
//!   written with `SET … PXAT`; the lease lives in it. Whether a lease is
//!   live is judged with Redis's clock (`TIME`) against its end, and the
//!   key's expiry is the lease's end plus retention while processing, so a
//!   dead worker's record is forgotten by Redis itself with nobody
//!   sweeping, and the next claim takes over once the lease has ended.
//!   Settled records expire at retention, so
//!   [`sweep`](onceflight_core::RequestStore::sweep) has nothing to do. Lease ends, backoff and retention are judged by Redis's
//!   clock, never the client's. A claim on a completed record reads one key
//!   and no clock, and its reply carries only what the answer needs (with
//!   the retention's end); a completed record with a 100-byte result takes
//!   about 300 bytes of Redis's memory.
//! - All keys of one request share a hash tag (a hash of the request key),
//!   so the store runs unchanged on Redis Cluster; every key starts with a
//!   configurable prefix.
//! - `wait` is woken through pub/sub: each operation that settles a record
//!   publishes its key on `<prefix>wake`; each store instance holds one
//!   subscription and fans it out in process. The subscription is PINGed
//!   every [`RedisConfig::pubsub_ping`], so that a half-open connection (one
//!   a peer or middlebox dropped without a word) is noticed too. After the
//!   subscription drops or goes silent, the store subscribes again first and
//!   only then has every waiter re-read its record, so no change falls
//!   between the re-read and the new subscription; a bounded fallback
//!   re-read covers a lost message.
//! - Listings ([`onceflight_core::RequestStore::list`] and `counts`) write
//!   nothing on the claim path: they `SCAN` the store's record keys on each
//!   primary in turn and read each batch in one pipeline (the records
//!   without their results, judged by Redis's clock). A page scans a
//!   bounded number of keys, so it may hold fewer records than asked, even
//!   none, with a cursor to go on; each page is in order, the pages are
//!   not among themselves. `counts` scans every record key, so its cost
//!   grows with the number of records.
//! - The same subscription feeds result caches
//!   ([`onceflight_core::RequestStore::change_feed`]): every delete
//!   publishes its key, and while a cache listens the subscription is PINGed
//!   every third of the cache's staleness bound. Redis answers a PING after
//!   every message published to the connection before it, so an answered
//!   PING confirms that every earlier delete has arrived. Claims then also
//!   ask for a completed record's retention left (its key's PTTL), which
//!   the cache must not outlive. A Redis Cluster forwards messages between
//!   nodes over its bus, in no order a PING on one node confirms: there the
//!   store offers no feed, and a cache over it is refused.
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
//! A Redis restart without AOF, or a failover to a replica whose clock is
//! behind, breaks that assumption. So each store also keeps a high-water
//! mark, the highest token it has seen in any reply, and every token it
//! asks Redis to grant is above it, for any key: tokens granted through
//! one store instance never go backwards, whatever Redis's clock does.
//! When Redis's clock is found behind the mark, the store logs a warning
//! (at most once a minute). Limits: the mark lives in the process, not in
//! Redis — a function may only touch the keys of its own request's hash tag
//! in a cluster, so no shared mark can be kept there, and each record
//! already keeps its key's last token. A store started after the clock
//! went back, or another instance that never saw the higher tokens, relies
//! on the per-key record and fence alone; keep AOF on and the Redis hosts'
//! clocks disciplined (NTP) for the guarantee to hold across processes.
//!
//! # Requirements and deployment
//!
//! Redis 7.0 or later, or Valkey 7.2 or later: the store uses functions
//! (`FUNCTION LOAD`, `FCALL`, which its user must be allowed), and
//! `connect` says so when the library cannot be loaded. Run it with
//! `maxmemory-policy noeviction`: an evicting policy may drop live leases
//! and cached results under memory pressure, and as every record carries a
//! TTL, `volatile-*` policies are as dangerous as `allkeys-*`. The store reads the policy
//! when it connects (`CONFIG GET`, or `INFO memory` where a managed Redis
//! disables `CONFIG`; neither readable, it does not check) and logs a
//! warning naming an evicting policy ([`RedisStore::eviction_warning`]). It
//! warns rather than refuses: some managed services do not let the
//! operator change the policy. Without persistence (AOF), a Redis restart
//! forgets every record; with `appendonly yes` completed results survive
//! it.
//!
//! Out of memory (`maxmemory` reached under `noeviction`), new work is
//! refused and work already granted finishes: a claim that would write (a
//! fresh key, a takeover, a retry) fails with `Error::Unavailable` (HTTP 503
//! `store_unavailable`) having changed nothing, while claims that only read
//! (in flight, completed, failed) are still answered, and renew, complete,
//! fail, release and delete succeed. The functions' flags say so: Redis
//! refuses the claim function, which has none, whole and before it runs;
//! the store then asks its read-only twin (`no-writes`), which answers the
//! claims that only read and refuses the rest — a second round trip, only
//! when Redis is out of memory. The fenced functions and delete carry
//! `allow-oom`; `get` is `no-writes`.
//!
//! # Upgrading from the previous layout
//!
//! The previous version kept a record as a hash beside a lease key and ran
//! scripts (EVALSHA). This one still honours such records: it reads the
//! hash (only when GET finds a key of another type, so the normal path
//! pays nothing), answers claims from it, lets the holder of a lease
//! granted there renew, complete or fail it, and the first operation that
//! writes the record replaces the hash with the packed string; fences are
//! the same string as before. Instances of the previous version, however,
//! cannot read a packed record: while both run, a request an upgraded
//! instance has written answers an error (`WRONGTYPE`) on the old ones,
//! never a second lease — so finish a rolling upgrade promptly.
//!
//! A retention under 1 ms is refused ([`RedisStore::connect`] answers
//! `Error::InvalidInput`): a record would vanish the instant it settled.
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
