//! API-key checking for `/v1` and `/beta`: `Authorization: Bearer KEY`, compared in constant
//! time so the answer's timing does not reveal how much of a guess was right.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::AppState;

/// What the `Authorization` header holds.
#[derive(Debug, PartialEq)]
enum Credential<'a> {
    Missing,
    /// The token of a `Bearer` credential (the scheme matched case-insensitively, RFC 9110).
    Bearer(&'a str),
    /// Another scheme (`Basic`, `Digest`, …), or a header that is not text.
    OtherScheme(String),
}

fn credential(value: Option<&header::HeaderValue>) -> Credential<'_> {
    let Some(v) = value else {
        return Credential::Missing;
    };
    let Ok(v) = v.to_str() else {
        return Credential::OtherScheme("(not ASCII text)".into());
    };
    let v = v.trim();
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        Credential::Bearer(rest.trim())
    } else if v.is_empty() {
        Credential::Missing
    } else {
        Credential::OtherScheme(scheme.chars().take(32).collect())
    }
}

/// `a == b` in time that depends on `a`'s length only (the guess, which its sender knows), not
/// on where the first difference is.
pub(crate) fn constant_time_eq(given: &[u8], key: &[u8]) -> bool {
    let mut diff = (given.len() != key.len()) as u8;
    for (i, &g) in given.iter().enumerate() {
        let k = if key.is_empty() {
            0
        } else {
            key[i % key.len()]
        };
        diff |= g ^ k;
    }
    diff == 0
}

/// Checks the key, then the key's limits ([`crate::keys`]); the request carries its key (an
/// `Arc<ApiKey>` extension) to the handlers, which count its tokens, and the response body
/// holds the key's place among its `concurrent` requests until the last byte is sent.
pub async fn check_api_key(
    State(st): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(keys) = &st.keys else {
        return next.run(req).await;
    };
    let key = match credential(req.headers().get(header::AUTHORIZATION)) {
        Credential::Missing => {
            return ApiError::unauthorized(
                "missing API key: send `Authorization: Bearer KEY` (the server was started with --api-key or --api-keys)",
            )
            .into_response()
        }
        Credential::OtherScheme(s) => {
            return ApiError::unauthorized(&format!(
                "the Authorization header uses the `{s}` scheme; send `Authorization: Bearer KEY`"
            ))
            .into_response()
        }
        Credential::Bearer(g) => match keys.find(g) {
            Some(k) => k,
            None => return ApiError::unauthorized("incorrect API key").into_response(),
        },
    };
    let place = match key.admit() {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    req.extensions_mut().insert(key);
    let resp = next.run(req).await;
    // The place is given back when the body (a stream, perhaps) is done or dropped.
    resp.map(|body| {
        axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |f| {
            let _ = &place;
            f
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn schemes_are_told_apart() {
        let c = |s: &str| {
            let v = HeaderValue::from_str(s).unwrap();
            match credential(Some(&v)) {
                Credential::Bearer(t) => format!("bearer {t}"),
                Credential::OtherScheme(s) => format!("other {s}"),
                Credential::Missing => "missing".into(),
            }
        };
        assert_eq!(c("Bearer abc"), "bearer abc");
        assert_eq!(c("bearer  abc "), "bearer abc");
        assert_eq!(c("Basic dXNlcjpwYXNz"), "other Basic");
        assert_eq!(c("abc"), "other abc");
        assert_eq!(c(""), "missing");
        assert_eq!(credential(None), Credential::Missing);
    }

    #[test]
    fn keys_compare_by_value() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"x", b""));
        assert!(constant_time_eq(b"", b""));
    }
}
