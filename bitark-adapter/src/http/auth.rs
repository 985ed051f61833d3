//! Bearer tokens for `/admin/*` (`security.admin-token`) and `/internal/*`
//! (`security.cluster-token`), compared in constant time.

use super::error::ApiError;
use crate::app::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

/// Which token a group of routes requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    Admin,
    Cluster,
}

impl Guard {
    /// Whether `headers` carry the configured token; `None` when none is set.
    fn presented(self, state: &AppState, headers: &HeaderMap) -> Option<bool> {
        let config = state.config();
        let security = &config.security;
        let expected = match self {
            Guard::Admin => security.admin_token.expose(),
            Guard::Cluster => security.cluster_token.expose(),
        }?;
        Some(bearer_matches(headers, expected))
    }
}

/// True when `presented` equals `expected`, in time that does not depend on where they
/// differ (only on the length of the presented token).
pub fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len() && bool::from(presented.ct_eq(expected))
}

/// True when the request carries `Authorization: Bearer <expected>`.
pub fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    token_matches(presented.as_bytes(), expected.as_bytes())
}

/// Whether a request presented the token of `guard` (false when none is configured:
/// nothing was proven).
pub fn is_authenticated(state: &AppState, guard: Guard, headers: &HeaderMap) -> bool {
    guard.presented(state, headers) == Some(true)
}

/// Middleware: refuses requests without the token `guard` requires, when it is set.
pub async fn require(
    State((state, guard)): State<(AppState, Guard)>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if guard.presented(&state, request.headers()) == Some(false) {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn tokens_match_only_when_identical() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(!token_matches(b"s3creT", b"s3cret"));
        assert!(!token_matches(b"s3cre", b"s3cret"));
        assert!(!token_matches(b"", b"s3cret"));
    }
}
