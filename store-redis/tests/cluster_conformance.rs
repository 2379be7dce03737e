//! The shared conformance suite on a three-master Redis Cluster (started by
//! `cargo xtask test`): every request's keys share one slot.

mod common;

onceflight_core::conformance_tests!(
    common::suite(common::cluster_setup),
    requires || onceflight_test_support::backend_available("REDIS_CLUSTER_URLS")
);
