//! OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the right status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// 400 about request parameter `param`.
    pub fn invalid(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.into(),
            code: None,
            retry_after: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn unauthorized(message: &str) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        }
    }

    pub fn busy(retry_after: u64) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "the server is busy: its request queue is full; retry later".into(),
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
            retry_after: Some(retry_after),
        }
    }

    /// 429 for one API key's limit.
    pub fn rate_limited(message: String, retry_after: u64) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message,
            kind: "rate_limit_error",
            param: None,
            code: Some("rate_limit_exceeded"),
            retry_after: Some(retry_after),
        }
    }

    pub fn unavailable(message: &str) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
            retry_after: None,
        }
    }

    /// An error of any status, as an HTTP layer reports it (413, 414, 415, 431, …).
    pub fn with_status(status: StatusCode, message: impl Into<String>) -> Self {
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => Some("request_too_large"),
            StatusCode::URI_TOO_LONG => Some("uri_too_long"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Some("unsupported_media_type"),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Some("headers_too_large"),
            StatusCode::METHOD_NOT_ALLOWED => Some("method_not_allowed"),
            StatusCode::REQUEST_TIMEOUT => Some("request_timeout"),
            StatusCode::NOT_FOUND => Some("not_found"),
            _ => None,
        };
        ApiError {
            status,
            message: message.into(),
            kind: if status.is_server_error() {
                "server_error"
            } else {
                "invalid_request_error"
            },
            param: None,
            code,
            retry_after: None,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

/// Parses a JSON body into `T`; a wrong type names the field (`messages[0].content`). Anything
/// after the JSON value but whitespace is an error, as in every strict JSON reader.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => match de.end() {
            Ok(()) => Ok(v),
            Err(e) => Err(ApiError::invalid(
                None,
                format!("the body is not valid JSON: {e} (text after the JSON value)"),
            )),
        },
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let param = (path != "." && !path.is_empty()).then_some(path.clone());
            let msg = if inner.is_syntax() || inner.is_eof() {
                format!("the body is not valid JSON: {inner}")
            } else if inner.to_string().contains("untagged enum") {
                let expected = match path.as_str() {
                    "prompt" => "a string, a list of one string, or a list of token ids",
                    "stop" => "a string or a list of strings",
                    _ => "another type",
                };
                format!("invalid value for `{path}`: expected {expected}")
            } else {
                match &param {
                    Some(p) => format!("invalid value for `{p}`: {inner}"),
                    None => format!("invalid request body: {inner}"),
                }
            };
            Err(ApiError::invalid(param, msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_one_json_value() {
        let ok: Result<serde_json::Value, _> = parse_body(b" {\"a\": 1} \n");
        assert!(ok.is_ok());
        for bad in [
            &b"{\"a\": 1} garbage"[..],
            b"{\"a\": 1}{}",
            b"{\"a\": 1",
            b"",
            b"\"\\ud800\"",
        ] {
            let e = parse_body::<serde_json::Value>(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad:?}");
            assert!(
                e.message.contains("not valid JSON"),
                "{bad:?}: {}",
                e.message
            );
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_body::<serde_json::Value>(deep.as_bytes()).is_err());
    }
}
