//! The onceflight store on PostgreSQL — the database most backends already
//! run — built so that the failure of a hand-written request table cannot
//! happen (docs/protocol.md §1): no read-then-write race, no unique violation
//! surfacing to callers, no sweep needed for correctness.
//!
//! - Every operation is one round trip: a call of a SQL function from the
//!   embedded migrations, deciding atomically with Postgres's clock
//!   (`clock_timestamp()`). Directly, each statement is prepared once per
//!   pooled connection (one extra round trip the first time it is used
//!   there); through a transaction-mode pooler, it is one simple-protocol
//!   query. Connections are not pinged before use; sqlx checks each one
//!   with an empty Sync when it goes back into the pool, after the caller
//!   has its answer.
//! - `claim_or_get` answers a hit on a completed result with a plain SQL
//!   read of the columns the answer needs (a fraction of the cost of a
//!   plpgsql call), and calls `onceflight_claim_v2` in the same statement
//!   only when that read found no such hit, as an expression whose answer
//!   comes back as one record column, so that a hit sets up no plan node
//!   for the function (through a transaction-mode
//!   pooler, where every statement is sent unprepared and planned anew, the
//!   claim is the function call alone). The function answers the other
//!   hits (a live lease, a final failure) from a plain snapshot read too: no
//!   row lock, no transaction id, no WAL. Only a due write (fresh record,
//!   takeover, retry) locks the row. Claims that find no live record take
//!   the key's creation lock (a transaction-level advisory lock: no
//!   transaction id) and read again, so the loser of a race to create a
//!   record waits for the winner's commit and reads its record like any
//!   hit; `ON CONFLICT DO NOTHING` still makes any other race a re-read,
//!   never an error.
//! - Renewals and completions are HOT updates: the only index is the
//!   primary key, and pages keep room for new row versions (fillfactor
//!   85). `sweep` therefore walks the primary key, a bounded batch per
//!   statement, reading the whole table once per sweep.
//! - Tokens come from one sequence, so a key's tokens strictly increase even
//!   after `delete` or retention (and across a failover, given synchronous
//!   replication: see below).
//! - `wait` is woken by LISTEN/NOTIFY on one connection per store instance,
//!   fanned out in process. That connection is pinged when it has been
//!   quiet for [`PgConfig::listen_ping`]; once it fails or stops answering,
//!   it is replaced, and as soon as the new one listens every waiter
//!   re-reads its record. A bounded fallback re-read covers a lost
//!   notification meanwhile.
//! - The same connection feeds result caches ([`onceflight_core::RequestStore::change_feed`]):
//!   the deletions it hears of, and while a cache listens, a probe every
//!   third of the cache's staleness bound — a NOTIFY the connection sends to
//!   itself on a channel of its own. Postgres delivers notifications of all
//!   channels in commit order, so the probe's return confirms that every
//!   delete committed before it was sent has arrived. When the connection
//!   fails, caches are emptied at once.
//! - Only writes on a key someone waits for notify. A transaction that
//!   notifies takes a lock of the whole cluster at commit and holds it
//!   through its WAL flush, so notifying commits happen one at a time.
//!   Each read of a waiter registers its key, until it will read again, in
//!   an UNLOGGED table (written without a WAL flush at commit); complete,
//!   fail, release and a claim that fails an exhausted lease notify only a
//!   key registered there. A delete always notifies: result caches on
//!   other servers must forget the record, and deletes are rare. A transaction-level advisory lock per
//!   key, shared by waiters and exclusive for writers, orders a waiter's
//!   registration and read against a write's check, so no wake-up is lost
//!   between them. A crash or failover empties the table, and also breaks
//!   the LISTEN connection, whose replacement makes every waiter read (and
//!   register) again.
//! - An operation that runs out of [`PgConfig::operation_timeout`] also ends
//!   on the server: Postgres cancels and rolls back the store's statements a
//!   little sooner (`statement_timeout`, `lock_timeout`), so none keeps
//!   waiting for a lock, holding a connection, or commits after its caller
//!   was told `Unavailable`.
//! - Statements name their schema (`"onceflight".onceflight_claim(…)`) and
//!   the functions it calls pin their own `search_path` (the one helper
//!   they share, `onceflight_lock_id`, does not, so that Postgres inlines
//!   it into them), so nothing depends on the session's or the role's
//!   `search_path`.
//!
//! # Connection
//!
//! [`PgConfig::url`] takes every libpq-style option sqlx understands,
//! including TLS through rustls (`sslmode=require`, or `verify-full` with
//! `sslrootcert=…` for a private CA such as Supabase's), as managed Postgres
//! (Supabase, RDS, Cloud SQL) asks. A certificate that does not check out is
//! refused by [`PgStore::connect`] with a message saying what to check.
//!
//! Behind a transaction-mode pooler (PgBouncer `pool_mode = transaction`,
//! Supavisor on port 6543), set [`PgConfig::pooler`] to
//! [`PgPooler::Transaction`] and [`PgConfig::listen_url`] to a direct or
//! session-mode URL of the same database: operations go through the pooler
//! without prepared statements, while LISTEN and [`PgStore::migrate`] use
//! the session. [`PgStore::connect`] refuses a store URL it sees going
//! through such a pooler undeclared, and a session URL that does, saying
//! what to set.
//!
//! Through a transaction-mode pooler the time bounds travel with each
//! statement (`SET LOCAL statement_timeout …; SET LOCAL lock_timeout …;
//! SELECT …`, one query string, one round trip), since session settings do
//! not stay with a client there. The pooler's own limits (PgBouncer's
//! `query_timeout`, `query_wait_timeout`) are still worth setting for time
//! spent waiting inside the pooler for a server connection.
//!
//! # Tokens across a failover
//!
//! Fencing tokens come from a Postgres sequence. A sequence is not
//! transactional and is WAL-logged ahead in batches (32 values at a time),
//! and with asynchronous streaming replication the last WAL the primary
//! wrote may never reach the standby. Promoted after such a loss, the
//! standby hands out sequence values that the old primary already granted:
//! the same token twice for one key, and a smaller token after a larger
//! one. Nothing in a single database can detect that; it is the price of
//! asynchronous replication, which also loses the claims themselves.
//!
//! Fleets that rely on tokens downstream (a storage system that refuses a
//! write carrying a token lower than one it has seen) should run the store
//! on a primary with synchronous replication (`synchronous_standby_names`
//! set and `synchronous_commit` at `on` or stronger — the default level, as
//! long as a synchronous standby is named): a claim's commit, which follows
//! the WAL of the token it grants, then returns only once a standby has
//! it, so any token a worker has seen survives a failover to that standby.
//! High-availability modes of managed Postgres that replicate synchronously
//! (an RDS Multi-AZ instance, Cloud SQL HA) qualify; an asynchronous read
//! replica promoted by hand does not.
//!
//! Without synchronous replication, after an unplanned failover and before
//! serving traffic, move the sequence well past anything the old primary can
//! have granted, e.g. `SELECT setval('"onceflight".onceflight_tokens',
//! nextval('"onceflight".onceflight_tokens') + 1000000)` (use a margin above
//! the tokens granted per second times the worst replication lag). Tokens
//! stay below 2^53 − 1, so there is room for many such jumps. The store does
//! not mix the clock into tokens: that would trade this hazard for another
//! (a clock stepped back on the new primary) and spend the 2^53 range fast.

mod answer;
mod config;
mod connect;
mod error;
mod sql;
mod store;
mod waiters;

pub use config::{PgConfig, PgPooler};
pub use store::PgStore;
