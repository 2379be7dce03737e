//! `HttpStore`: a `RequestStore` over the HTTP API (being written).
