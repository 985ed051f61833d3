//! The OpenAPI document, generated from the handlers' annotations.
//!
//! `openapi/openapi.json` in the repository is this document byte for byte (a test
//! checks it); regenerate it with `cargo run -p bitark-adapter --bin bitark -- openapi > openapi/openapi.json`.

use crate::http::actuator;
use crate::http::admin;
use crate::http::backup;
use crate::http::error;
use crate::http::extract;
use crate::http::moves;
use crate::http::reads;
use crate::http::receipts;
use crate::http::replication;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bitark",
        description = "Read-status service: has user U read message M? Ids are unsigned 64-bit integers over their \
                       full range. In JSON bodies an id may be a number or a decimal string (JavaScript cannot hold \
                       integers above 2^53). Every write answers with the LSN of its write-ahead-log record once it \
                       is durable; reads accept `minLsn` to wait until this node has applied at least that LSN. \
                       Every error is `{\"error\": code, \"message\": text}`. In paths and query strings an \
                       id is a decimal string (`^[0-9]{1,20}$`, at most 18446744073709551615). The admin endpoints \
                       take a bearer token only when `security.admin-token` is set; without one they are open.",
        license(name = "Apache-2.0")
    ),
    paths(
        reads::mark_read, reads::mark_unread, reads::is_read, reads::mark_many, reads::check, reads::unread_count,
        receipts::readers, receipts::check_pairs,
        actuator::health, actuator::liveness, actuator::readiness, actuator::info, actuator::prometheus,
        actuator::configprops, replication::replication_status, admin::snapshot, admin::digest,
        admin::promote, admin::demote, admin::change_features, admin::refresh, moves::freeze, moves::thaw,
        moves::drop_range, moves::start_incoming, moves::incoming, moves::drain_incoming, moves::stop_incoming,
        backup::begin_backup, backup::backup_snapshot, backup::backup_wal, backup::end_backup,
    ),
    components(schemas(error::ErrorBody, extract::IdString, reads::MarkIds, reads::MarkRange)),
    servers((url = "http://127.0.0.1:8080", description = "A node on the embedded defaults")),
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
    let mut value = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    drop_object_defaults(&mut value);
    let mut text = serde_json::to_string_pretty(&value).expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

/// Configuration defaults that are objects are left out (each description names the
/// default): a whole section's default repeats its properties' own, and a duration comes
/// out of `Default` as `{"secs", "nanos"}`, not as the `"1s"` the configuration takes and
/// answers. Generators (openapi-python-client) also refuse a default on an object.
fn drop_object_defaults(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if map.get("default").is_some_and(serde_json::Value::is_object) {
                map.remove("default");
            }
            map.values_mut().for_each(drop_object_defaults);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_object_defaults),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_operation_has_its_own_id() {
        // Generators name functions and types after operation ids: two alike make
        // clients that do not compile.
        let document: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let mut ids: Vec<&str> = document["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values().filter_map(|op| op["operationId"].as_str()))
            .collect();
        let all = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), all, "operation ids repeat: {ids:?}");
    }
}
