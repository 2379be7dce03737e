//! The shared conformance suite on PostgreSQL (real time, a schema per test).

mod common;

onceflight_core::conformance_tests!(
    common::suite(common::setup),
    requires || onceflight_test_support::backend_available("DATABASE_URL")
);
