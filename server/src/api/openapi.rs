//! The OpenAPI 3 document, generated from the handlers' annotations and the
//! body types, so it cannot drift from the code.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::model::{
    ClaimBody, ClaimResponse, CompleteBody, ErrorBody, ErrorDetail, ErrorInfo, FailBody,
    HeartbeatBody, HeartbeatResponse, RecordBody, ReleaseBody,
};
use super::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "onceflight",
        description = "Run an expensive job once per key across a fleet and share its result: leases with fencing tokens, decided atomically by the store."
    ),
    paths(
        routes::claim,
        routes::heartbeat,
        routes::complete,
        routes::fail,
        routes::release,
        routes::get_record,
        routes::delete_record,
        routes::healthz,
        routes::readyz,
        routes::metrics,
        routes::openapi,
    ),
    components(schemas(
        ClaimBody,
        ClaimResponse,
        CompleteBody,
        ErrorBody,
        ErrorDetail,
        ErrorInfo,
        FailBody,
        HeartbeatBody,
        HeartbeatResponse,
        RecordBody,
        ReleaseBody,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "requests", description = "The request lifecycle (design §3–§4)"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
struct ApiDoc;

/// Declares the `bearer` security scheme the `/v1` routes use when tokens
/// are configured.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI document of the whole API.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
