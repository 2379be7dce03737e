//! The shared conformance suite over TLS with `sslmode=verify-full`, the
//! server's certificate signed by a private certificate authority given as
//! `sslrootcert` (as Supabase's is).

mod common;

onceflight_core::conformance_tests!(
    common::suite(common::tls_setup),
    requires || onceflight_test_support::backend_available("PG_TLS_URL")
);
