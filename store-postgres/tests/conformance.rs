//! The shared conformance suite on PostgreSQL (real time, a schema per test).

mod common;

onceflight_core::conformance_tests!(common::suite(common::setup), requires "DATABASE_URL");
