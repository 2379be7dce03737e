//! The shared conformance suite on a single Redis server (real time, a key
//! prefix per test).

mod common;

onceflight_core::conformance_tests!(common::suite(common::setup), requires "REDIS_URL");
