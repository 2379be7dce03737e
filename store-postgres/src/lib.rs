//! The onceflight store on PostgreSQL — the store the incident's users run,
//! built so the incident cannot happen: no read-then-write race, no unique
//! violation surfacing to callers, no sweep needed for correctness.
//!
//! - Every operation is one round trip: a call of a SQL function from the
//!   embedded migrations, deciding atomically with Postgres's clock
//!   (`clock_timestamp()`). (sqlx prepares each statement once per pooled
//!   connection, one extra round trip the first time it is used there.)
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
//!
//! # Connection
//!
//! [`PgConfig::url`] takes every libpq-style option sqlx understands,
//! including TLS through rustls (`sslmode=require`, `verify-full` with
//! `sslrootcert=…`), as managed Postgres (Supabase, RDS, Cloud SQL) asks.
//!
//! Behind a transaction-mode pooler (PgBouncer, Supavisor on port 6543),
//! claims and the other operations work — each is one statement, with no
//! session state — but LISTEN needs a session: point
//! [`PgConfig::listen_url`] at a direct (or session-mode) connection. The
//! store sets `search_path` to its schema as a startup parameter, which
//! transaction-mode poolers may ignore; give the pooler's user that
//! `search_path` (`ALTER ROLE … SET search_path = onceflight`) in that case.

mod config;
mod connect;
mod error;
mod sql;
mod store;
mod waiters;

pub use config::{PgConfig, PgPooler};
pub use store::PgStore;
