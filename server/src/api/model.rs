//! The JSON bodies of the API: the client crate's wire model, so that the
//! service and `HttpStore` can never disagree on a field.

pub use onceflight_client::model::*;
