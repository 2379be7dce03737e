//! The client side of onceflight's HTTP API (`docs/protocol.md` §7): the
//! request and answer bodies exactly as they travel ([`model`]), and
//! (feature `http`, on by default) [`HttpStore`], a
//! [`onceflight_core::RequestStore`] over that API, so that a
//! [`onceflight_core::Coordinator`] can work against a remote onceflight
//! service as it does against a local store.
//!
//! The server builds its routes on the same [`model`] types (with feature
//! `openapi`, which derives their utoipa schemas), so the client and the
//! service cannot drift apart. This crate depends on no server code.

pub mod model;

#[cfg(feature = "http")]
mod http_store;

#[cfg(feature = "http")]
pub use http_store::HttpStore;
