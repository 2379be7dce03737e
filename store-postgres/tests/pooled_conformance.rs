//! The shared conformance suite through a transaction-mode pooler
//! (PgBouncer, the stand-in for Supavisor on port 6543): every operation as
//! one simple-protocol query, no prepared statement, no `search_path`, and
//! server connections shared between clients.

mod common;

onceflight_core::conformance_tests!(
    common::suite(common::pooled_setup),
    requires || onceflight_test_support::backend_available("PGBOUNCER_URL")
);
