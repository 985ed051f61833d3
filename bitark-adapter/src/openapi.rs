//! The OpenAPI document, generated from the handlers' annotations.
//!
//! `openapi/openapi.json` in the repository is this document byte for byte (a test
//! checks it); regenerate it with `cargo run -p bitark-adapter --bin bitark -- openapi > openapi/openapi.json`.

use crate::http::{actuator, admin, error, reads, replication};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "BitArk",
        description = "Read-status service: has user U read message M? Ids are unsigned 64-bit integers over their \
                       full range. In JSON bodies an id may be a number or a decimal string (JavaScript cannot hold \
                       integers above 2^53). Every write answers with the LSN of its write-ahead-log record once it \
                       is durable; reads accept `minLsn` to wait until this node has applied at least that LSN. \
                       Every error is `{\"error\": code, \"message\": text}`.",
        license(name = "Apache-2.0")
    ),
    paths(
        reads::mark_read, reads::mark_unread, reads::is_read, reads::mark_many, reads::check, reads::unread_count,
        actuator::health, actuator::liveness, actuator::readiness, actuator::info, actuator::prometheus,
        actuator::configprops, replication::replication_status, admin::snapshot, admin::digest,
        admin::promote, admin::demote,
    ),
    components(schemas(error::ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "reads", description = "Read marks per user"),
        (name = "actuator", description = "Health, info, metrics and configuration"),
        (name = "admin", description = "Operator endpoints; bearer token when security.admin-token is set"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as pretty-printed JSON with a trailing newline.
pub fn document() -> String {
    let mut text = ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serializes");
    text.push('\n');
    text
}
