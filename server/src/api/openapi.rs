//! The OpenAPI 3 document, generated from the handlers' annotations and the
//! body types, so it cannot drift from the code.
//!
//! The document is as strict as the server: every range, length and pattern
//! of docs/protocol.md §2/§7 is in it, bodies refuse unknown fields
//! (`additionalProperties: false`, from `deny_unknown_fields`), and each
//! route lists every status it can answer. `cargo xtask schemathesis` holds
//! the server to it: values the document allows must be accepted, values it
//! refuses must get a 4xx, and every answer must match the schema given for
//! its status. Two rules JSON Schema cannot state are written in the
//! descriptions instead: lengths are in UTF-8 bytes (`maxLength` counts
//! characters; the two agree for ASCII), and integers are JSON integers
//! (JSON Schema 2020-12 also calls `5.0` an integer; the server refuses it,
//! as docs/protocol.md §7 reads "a token that is not a non-negative integer").

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::model::{
    ClaimBody, ClaimResponse, CompleteBody, ErrorBody, ErrorDetail, ErrorInfo, FailBody,
    HeartbeatBody, HeartbeatResponse, LeaseCountsBody, ListResponse, RecordBody, ReleaseBody,
    StateCountsBody, StatsResponse,
};
use super::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "onceflight",
        description = "Run an expensive job once per key across a fleet and share its result: leases with fencing tokens, decided atomically by the store.\n\nLengths are in bytes of UTF-8 (JSON Schema's maxLength counts characters, the same for ASCII). Integer fields take JSON integers: `5`, not `5.0` or `5e0`, which are 400 invalid_request."
    ),
    paths(
        routes::claim,
        routes::heartbeat,
        routes::complete,
        routes::fail,
        routes::release,
        routes::get_record,
        routes::delete_record,
        routes::list_records,
        routes::stats,
        routes::healthz,
        routes::readyz,
        routes::metrics,
        serve,
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
        LeaseCountsBody,
        ListResponse,
        RecordBody,
        ReleaseBody,
        StateCountsBody,
        StatsResponse,
    )),
    modifiers(&BearerAuth, &KeyConstraints),
    tags(
        (name = "requests", description = "The request lifecycle (docs/protocol.md §3–§4)"),
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

/// Longest key, in bytes (docs/protocol.md §2).
const MAX_KEY_BYTES: usize = 512;

/// Text without Unicode control characters (general category `Cc`, what
/// Rust's `char::is_control` tests), which keys, fingerprints and owners
/// refuse. The same pattern is written out in `model.rs`, where utoipa needs
/// a literal.
const NO_CONTROL_CHARACTERS: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// Gives every `{key}` path parameter the constraints of docs/protocol.md §2 (1–512
/// bytes, no control characters), in one place rather than in each route's
/// annotation, where utoipa would need them repeated as literals.
struct KeyConstraints;

impl Modify for KeyConstraints {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_KEY_BYTES))
            .pattern(Some(NO_CONTROL_CHARACTERS))
            .build();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                let Operation { parameters, .. } = operation;
                for parameter in parameters.iter_mut().flatten() {
                    if parameter.name == "key" && parameter.parameter_in == ParameterIn::Path {
                        parameter.description = Some(
                            "The request key, percent-encoded: 1–512 bytes of UTF-8, no control \
                             characters"
                                .to_owned(),
                        );
                        parameter.schema = Some(schema.clone().into());
                    }
                }
            }
        }
    }
}

/// The OpenAPI document of the whole API.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::document;

    fn doc() -> Value {
        serde_json::to_value(document()).expect("the document serializes")
    }

    fn v1_operations(doc: &Value) -> Vec<(String, String, Value)> {
        v1_operations_where(doc, |_| true)
    }

    /// The `/v1` operations whose path `keep` accepts.
    fn v1_operations_where(
        doc: &Value,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<(String, String, Value)> {
        let mut operations = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            if !path.starts_with("/v1/") || !keep(path) {
                continue;
            }
            for (method, operation) in item.as_object().expect("a path item") {
                operations.push((path.clone(), method.clone(), operation.clone()));
            }
        }
        operations
    }

    #[test]
    fn every_key_parameter_carries_the_key_rules() {
        let doc = doc();
        let operations = v1_operations_where(&doc, |path| path.contains("{key}"));
        assert_eq!(operations.len(), 7, "the seven keyed /v1 operations of §7");
        for (path, method, operation) in operations {
            let key = operation["parameters"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == "key"))
                .unwrap_or_else(|| panic!("{method} {path} has a key parameter"));
            assert_eq!(key["in"], "path", "{method} {path}");
            assert_eq!(key["schema"]["minLength"], 1, "{method} {path}");
            assert_eq!(key["schema"]["maxLength"], 512, "{method} {path}");
            assert!(
                key["schema"]["pattern"].is_string(),
                "{method} {path}: control characters are refused"
            );
        }
    }

    #[test]
    fn every_v1_operation_lists_its_error_answers() {
        let doc = doc();
        for (path, method, operation) in v1_operations(&doc) {
            // `/v1/stats` takes no input it could refuse.
            let statuses: &[&str] = if path == "/v1/stats" {
                &["401", "503"]
            } else {
                &["400", "401", "503"]
            };
            for &status in statuses {
                let response = &operation["responses"][status];
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} answers {status} with the error body"
                );
            }
            assert!(
                operation["responses"]["503"]["headers"]["Retry-After"].is_object(),
                "{method} {path}: a 503 carries Retry-After"
            );
            if method == "post" {
                for status in ["408", "413"] {
                    assert!(
                        operation["responses"][status].is_object(),
                        "{method} {path} lists {status}"
                    );
                }
            }
        }
    }

    #[test]
    fn wait_ms_is_an_optional_bounded_query_parameter() {
        let doc = doc();
        let wait = doc["paths"]["/v1/requests/{key}"]["get"]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "wait_ms"))
            .cloned()
            .expect("a wait_ms parameter");
        assert_eq!(wait["in"], "query", "{wait}");
        assert_eq!(wait["required"], false, "{wait}");
        assert_eq!(wait["schema"]["type"], "integer", "not nullable: {wait}");
        assert_eq!(wait["schema"]["maximum"], 60_000, "{wait}");
    }

    #[test]
    fn request_bodies_refuse_unknown_fields_and_bound_their_values() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        for body in [
            "ClaimBody",
            "HeartbeatBody",
            "CompleteBody",
            "FailBody",
            "ReleaseBody",
        ] {
            assert_eq!(
                schemas[body]["additionalProperties"], false,
                "{body} refuses unknown fields"
            );
        }
        for body in ["HeartbeatBody", "CompleteBody", "FailBody", "ReleaseBody"] {
            assert_eq!(
                schemas[body]["properties"]["token"]["maximum"], 9_007_199_254_740_991_u64,
                "{body}: tokens are at most 2^53 - 1"
            );
        }
        let claim = &schemas["ClaimBody"]["properties"];
        assert_eq!(claim["kind"]["pattern"], "^[a-z0-9_.-]+$", "{claim}");
        assert_eq!(claim["kind"]["maxLength"], 64, "{claim}");
        assert_eq!(claim["lease_ms"]["minimum"], 1, "{claim}");
        assert_eq!(claim["lease_ms"]["maximum"], 86_400_000, "{claim}");
        assert_eq!(claim["max_attempts"]["maximum"], 1000, "{claim}");
        assert_eq!(claim["fingerprint"]["maxLength"], 128, "{claim}");
        assert_eq!(
            schemas["FailBody"]["properties"]["message"]["maxLength"], 4096,
            "the message limit"
        );
        // Results are any JSON value, not only objects.
        let result = &schemas["CompleteBody"]["properties"]["result"];
        assert!(result.get("type").is_none(), "any type: {result}");
    }

    #[test]
    fn record_bodies_always_carry_every_field() {
        let doc = doc();
        let required: Vec<&str> = doc["components"]["schemas"]["RecordBody"]["required"]
            .as_array()
            .expect("required fields")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for field in [
            "state",
            "key",
            "kind",
            "fingerprint",
            "token",
            "attempt",
            "owner",
            "lease_expires_at",
            "lease_expired",
            "result",
            "error",
            "created_at",
            "updated_at",
            "completed_at",
            "expires_at",
        ] {
            assert!(
                required.contains(&field),
                "§7: a record body always has {field:?} (null when absent)"
            );
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3 document of this API", body = serde_json::Value)))]
pub(crate) async fn serve() -> impl axum::response::IntoResponse {
    axum::Json(document())
}
