//! The HTTP API of docs/protocol.md §7: bodies, errors, handlers and the OpenAPI
//! document.

pub mod error;
pub mod model;
mod openapi;
mod responses;
pub(crate) mod routes;

pub use openapi::document as openapi_document;
pub(crate) use openapi::serve as serve_openapi;
pub use routes::{ApiJson, KeyPath, MAX_WAIT_MS};
