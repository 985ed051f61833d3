//! Request extractors that turn every malformed input into an [`ApiError`] naming the
//! problem, instead of axum's plain-text rejections.

use super::body::{body_limit, BodyTimeout, DeadlineBody};
use super::error::ApiError;
use crate::app::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, RawPathParams, Request};
use axum::http::{header, request::Parts, Uri};
use http_body_util::BodyExt;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;

/// An id as the OpenAPI document describes it: 1 to 20 ASCII digits (`^[0-9]{1,20}$`)
/// whose value fits a `u64`. No sign, no spaces, no more than 20 digits even when the
/// extra ones are leading zeros.
pub fn decimal_u64(raw: &str) -> Option<u64> {
    if raw.is_empty() || raw.len() > 20 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

/// Parses a path or query id: a decimal `u64`, nothing else.
pub fn parse_id(name: &str, raw: &str) -> Result<u64, ApiError> {
    decimal_u64(raw).ok_or_else(|| {
        let why = if raw.starts_with('-') { " (ids are never negative)" } else { "" };
        ApiError::bad_request(
            "invalid_id",
            format!("{name}: `{raw}` is not a decimal integer of 1 to 20 digits in 0..={}{why}", u64::MAX),
        )
    })
}

/// The `{userId}` of a route.
pub struct UserId(pub u64);

/// The `{userId}` and `{msgId}` of a route.
pub struct UserMsg {
    pub user: u64,
    pub msg: u64,
}

async fn path_params(parts: &mut Parts) -> Result<RawPathParams, ApiError> {
    RawPathParams::from_request_parts(parts, &())
        .await
        .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
}

fn param(params: &RawPathParams, name: &str) -> Result<u64, ApiError> {
    let raw = params
        .iter()
        .find_map(|(key, value)| (key == name).then_some(value))
        .ok_or_else(|| ApiError::bad_request("invalid_path", format!("missing {name}")))?;
    parse_id(name, raw)
}

impl<S: Send + Sync> FromRequestParts<S> for UserId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let params = path_params(parts).await?;
        Ok(UserId(param(&params, "userId")?))
    }
}

impl UserMsg {
    /// The ids of a route's raw (not percent-decoded) parameters, when both are plain
    /// decimal ids; `None` for anything else, which the routed extractor then decodes or
    /// refuses.
    pub fn of_raw(params: &matchit::Params<'_, '_>) -> Option<UserMsg> {
        let id = |name| params.get(name).and_then(decimal_u64);
        Some(UserMsg { user: id("userId")?, msg: id("msgId")? })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for UserMsg {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let params = path_params(parts).await?;
        Ok(UserMsg { user: param(&params, "userId")?, msg: param(&params, "msgId")? })
    }
}

/// The query string's key-value pairs; values are parsed by the handler. A list, not a
/// map: there are one or two parameters, and most requests have none.
pub struct QueryParams {
    pairs: Vec<(String, String)>,
    /// The query string as sent, when there is one.
    raw: Option<String>,
}

impl QueryParams {
    /// An optional id parameter (the last one wins when repeated).
    pub fn id(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.pairs.iter().rev().find(|(key, _)| key == name).map(|(_, raw)| parse_id(name, raw)).transpose()
    }

    /// An optional text parameter (the last one wins when repeated).
    pub fn text(&self, name: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(key, _)| key == name).map(|(_, raw)| raw.as_str())
    }

    /// A required id parameter.
    pub fn required_id(&self, name: &str) -> Result<u64, ApiError> {
        self.id(name)?
            .ok_or_else(|| ApiError::bad_request("invalid_query", format!("query parameter `{name}` is required")))
    }

    /// No parameters at all.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// `path` followed by this query string, as the request had it.
    pub fn after(&self, path: &str) -> String {
        match &self.raw {
            Some(raw) => format!("{path}?{raw}"),
            None => path.to_string(),
        }
    }

    /// The parameters of `uri`'s query string.
    pub fn of(uri: &Uri) -> Result<QueryParams, ApiError> {
        // Most requests have no query: nothing to decode.
        let Some(raw) = uri.query().filter(|q| !q.is_empty()) else {
            return Ok(QueryParams { pairs: Vec::new(), raw: None });
        };
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri).map_err(|e| {
            ApiError::bad_request("invalid_query", format!("malformed query string: {}", e.body_text()))
        })?;
        Ok(QueryParams { pairs, raw: Some(raw.to_string()) })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        QueryParams::of(&parts.uri)
    }
}

/// A JSON body: `Content-Type: application/json` required (415 otherwise), size
/// bounded by the router's body limit (413), and a parse error names what was wrong
/// and where (400). A request with no body and no Content-Type is taken as the empty
/// object `{}`: an endpoint whose fields are all optional accepts it, and one that needs
/// a field answers 400 naming it.
pub struct ApiJson<T>(pub T);

/// True when `req` has no body at all (its length is known to be 0) and no Content-Type.
fn no_body(req: &Request) -> bool {
    use http_body::Body as _;
    !req.headers().contains_key(header::CONTENT_TYPE) && req.body().size_hint().exact() == Some(0)
}

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if no_body(&req) {
            return serde_json::from_slice(b"{}")
                .map(ApiJson)
                .map_err(|e| ApiError::bad_request("invalid_body", format!("the request has no body: {e}")));
        }
        let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            let shown = if content_type.is_empty() { "none".to_string() } else { format!("`{content_type}`") };
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body must be application/json; Content-Type was {shown}"
            )));
        }
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid JSON body: {e}")))
    }
}

/// The whole body as bytes, with every failure to read it named: over the size limit
/// (413), not received within `server.request-timeout` (408), or cut off (400).
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = body_limit(req.uri().path(), state.config().engine.limits.max_batch);
        // The deadline is set here, as the body is about to be read: only requests that
        // have one to read pay for a timer.
        let req = DeadlineBody::wrap(req, state.config().server.request_timeout);
        let body = http_body_util::Limited::new(req.into_body(), limit);
        body.collect().await.map(|collected| RawBody(collected.to_bytes())).map_err(|e| {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*e);
            while let Some(error) = source {
                if let Some(BodyTimeout(timeout)) = error.downcast_ref::<BodyTimeout>() {
                    return ApiError::RequestTimeout(*timeout);
                }
                if error.is::<http_body_util::LengthLimitError>() {
                    return ApiError::TooLarge {
                        code: "body_too_large",
                        message: "the request body exceeds the size limit (room for limits.max-batch ids)".into(),
                    };
                }
                source = error.source();
            }
            ApiError::bad_request("invalid_body", format!("cannot read the request body: {e}"))
        })
    }
}

/// A `u64` id in a JSON body, given as a number or as a decimal string (JavaScript
/// cannot hold integers above 2^53 exactly, so clients may send `"9223372036854775813"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlexU64(pub u64);

impl<'de> Deserialize<'de> for FlexU64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = FlexU64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an id: an integer in 0..={} as a number or a decimal string", u64::MAX)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FlexU64, E> {
                Ok(FlexU64(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FlexU64, E> {
                u64::try_from(v).map(FlexU64).map_err(|_| E::custom(format!("id {v} is negative")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<FlexU64, E> {
                Err(E::custom(format!("id {v} is not an integer in 0..={}", u64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FlexU64, E> {
                decimal_u64(v).map(FlexU64).ok_or_else(|| {
                    E::custom(format!("id \"{v}\" is not a decimal integer of 1 to 20 digits in 0..={}", u64::MAX))
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl serde::Serialize for FlexU64 {
    /// As a decimal string, which every JSON reader holds exactly.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl utoipa::PartialSchema for FlexU64 {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(utoipa::openapi::SchemaFormat::Custom("uint64".into())))
                    .minimum(Some(0.0))
                    .maximum(Some(u64::MAX as f64)),
            )
            .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[0-9]{1,20}$")))
            .description(Some(
                "An unsigned 64-bit id (0..=18446744073709551615), as a JSON number or as a decimal string; \
                 use the string form above 2^53, which JavaScript numbers cannot hold exactly.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for FlexU64 {}

/// How the OpenAPI document spells an id in a path or query: a decimal string, so every
/// generated client passes ids above 2^53 exactly. The handlers parse it with
/// [`parse_id`], which takes exactly this and refuses values above the u64 maximum.
pub struct IdString;

impl utoipa::PartialSchema for IdString {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::Custom("uint64".into())))
            .pattern(Some("^[0-9]{1,20}$"))
            .description(Some("An unsigned 64-bit id, 0..=18446744073709551615, in decimal"))
            .examples(["9223372036854775813"])
            .into()
    }
}

impl utoipa::ToSchema for IdString {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flex_ids_accept_numbers_and_strings_over_the_full_range() {
        let ids: Vec<FlexU64> = serde_json::from_str(r#"[0, 18446744073709551615, "9223372036854775813"]"#).unwrap();
        assert_eq!(ids, vec![FlexU64(0), FlexU64(u64::MAX), FlexU64((1 << 63) + 5)]);
    }

    #[test]
    fn flex_ids_reject_negative_fractional_oversized_and_text() {
        for bad in [
            "-1",
            "1.5",
            "18446744073709551616",
            "\"18446744073709551616\"",
            "\"12a\"",
            "\"\"",
            "null",
            "true",
            "\"+1\"",
            "\" 1\"",
            "\"00000000000000000000001\"",
        ] {
            assert!(serde_json::from_str::<FlexU64>(bad).is_err(), "{bad} was accepted");
        }
        let padded: FlexU64 = serde_json::from_str("\"00000000000000000042\"").unwrap();
        assert_eq!(padded, FlexU64(42), "20 digits with leading zeros match the documented pattern");
    }

    #[test]
    fn path_ids_name_the_parameter() {
        let err = parse_id("msgId", "-3").unwrap_err().to_string();
        assert!(err.contains("msgId") && err.contains("negative"), "{err}");
        assert_eq!(parse_id("userId", "18446744073709551615").unwrap(), u64::MAX);
        assert!(parse_id("userId", "18446744073709551616").is_err());
        for bad in ["+1", "", " 1", "1 ", "00000000000000000000001", "0x10", "１"] {
            assert!(parse_id("userId", bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(parse_id("userId", "00000000000000000007").unwrap(), 7);
    }
}
