//! The one Bearer token of a request: exactly one `Authorization: Bearer` header, and no
//! `access_token` in the query string.

use super::error::AuthFailure;
use http::header::{HeaderMap, AUTHORIZATION};

/// The bearer token of a request, or why there is not exactly one well-formed one.
pub(super) fn extract_bearer<'h>(
    headers: &'h HeaderMap,
    query: Option<&str>,
    max_token_bytes: usize,
) -> Result<&'h str, AuthFailure> {
    let in_query = query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(name, _)| name == "access_token")
    });
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = match (values.next(), values.next(), in_query) {
        (Some(_), Some(_), _) | (Some(_), None, true) => return Err(AuthFailure::MultipleTokens),
        (None, _, true) => return Err(AuthFailure::TokenInQuery),
        (None, _, false) => return Err(AuthFailure::MissingToken),
        (Some(value), None, false) => value,
    };
    let value = value
        .to_str()
        .map_err(|_| AuthFailure::Malformed("the Authorization header is not visible ASCII"))?
        .trim_matches(|c| c == ' ' || c == '\t');
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::UnsupportedScheme);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(AuthFailure::Malformed("the Bearer credentials are empty"));
    }
    if token.len() > max_token_bytes {
        return Err(AuthFailure::Malformed("the token is longer than accepted"));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(AuthFailure::Malformed("the token is not a compact JWS"));
    }
    Ok(token)
}

/// Strict base64url without padding (RFC 7515 §2), as jsonwebtoken decodes: no `=`, no
/// whitespace, and the unused trailing bits must be zero (the `base64` crate's default).
pub(super) fn b64url_decode(input: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(input)
        .ok()
}
