//! The onceflight store on PostgreSQL — the store the incident's users run,
//! built so the incident cannot happen: no read-then-write race, no unique
//! violation surfacing to callers, no sweep needed for correctness.
//!
//! - Every operation is one round trip: a call of a SQL function from the
//!   embedded migrations, deciding atomically with Postgres's clock
//!   (`clock_timestamp()`). Directly, each statement is prepared once per
//!   pooled connection (one extra round trip the first time it is used
//!   there); through a transaction-mode pooler, it is one simple-protocol
//!   query. Connections are not pinged before use; sqlx checks each one
//!   with an empty Sync when it goes back into the pool, after the caller
//!   has its answer.
//! - `claim_or_get` reads first and answers hits (a live lease, a result, a
//!   final failure) from a plain snapshot read: no row lock, no transaction
//!   id, no WAL. Only a due write (fresh record, takeover, retry) locks the
//!   row, and a fresh insert uses `INSERT … ON CONFLICT DO UPDATE … WHERE
//!   <past retention>` so a lost race is re-read, never an error.
//! - Tokens come from one sequence, so a key's tokens strictly increase even
//!   after `delete` or retention.
//! - `wait` is woken by LISTEN/NOTIFY on one connection per store instance,
//!   fanned out in process; after that connection drops it reconnects and
//!   every waiter re-reads its record; a bounded fallback re-read covers a
//!   lost notification.
//! - Statements name their schema (`"onceflight".onceflight_claim(…)`) and
//!   the functions pin their own `search_path`, so nothing depends on the
//!   session's or the role's `search_path`.
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

mod config;
mod connect;
mod error;
mod sql;
mod store;
mod waiters;

pub use config::{PgConfig, PgPooler};
pub use store::PgStore;
