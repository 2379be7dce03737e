//! The shared conformance suite on a single Redis server (real time, a key
//! prefix per test).

mod common;

onceflight_core::conformance_tests!(
    common::suite(common::setup),
    requires || onceflight_test_support::backend_available("REDIS_URL")
);
