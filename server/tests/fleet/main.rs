//! Several real `onceflight` servers on one store: on PostgreSQL
//! ([`postgres`]: restarts, one schema shared, LISTEN/NOTIFY wake-ups across
//! instances, a pooler, TLS, `onceflight migrate`) and on Redis ([`redis`]:
//! one prefix shared, pub/sub wake-ups across instances). Each module needs
//! its store's feature and `DATABASE_URL` / `REDIS_URL`; without the URL its
//! tests skip loudly, unless `ONCEFLIGHT_REQUIRE_BACKENDS=1`.

#[path = "../common/mod.rs"]
mod common;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
