//! The HTTP API of design §7: bodies, errors, handlers and the OpenAPI
//! document.

pub mod error;
pub mod model;
mod openapi;
pub(crate) mod routes;

pub use openapi::document as openapi_document;
pub use routes::{ApiJson, ApiKey, MAX_WAIT_MS};
