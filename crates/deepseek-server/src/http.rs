//! How connections and raw requests are accepted, before any handler runs: the connection loop
//! (HTTP/1.1 with a deadline on reading the headers, graceful shutdown), and the request guards
//! (URI and header sizes, `Content-Type: application/json` on POST, the body read whole within a
//! size limit and a deadline). Whatever answers a request with an error, here or in axum, answers
//! with OpenAI's JSON error body.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

use crate::error::ApiError;
use crate::AppState;

/// What a client may send, and how slowly.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Largest request body (`--max-body-mb`).
    pub max_body_bytes: usize,
    /// A client has this long to send the request line and headers.
    pub header_read_timeout: Duration,
    /// ... and this long for the body.
    pub body_read_timeout: Duration,
    /// Longest URI answered with 414 as JSON (hyper itself refuses past 64 KiB).
    pub max_uri_bytes: usize,
    /// Most header bytes and header lines answered with 431 as JSON (hyper itself refuses past
    /// its buffer or `HYPER_MAX_HEADERS` lines).
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: 16 << 20,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            max_uri_bytes: 8 << 10,
            max_header_bytes: 64 << 10,
            max_headers: 100,
        }
    }
}

/// hyper's own header-line limit, above ours so that ours answers first, in JSON.
const HYPER_MAX_HEADERS: usize = 256;

/// Accepts connections until `shutdown` resolves, then stops accepting and waits for open
/// connections to finish their requests (idle keep-alive connections close at once).
pub async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(HYPER_MAX_HEADERS);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection ended: {e}");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Every request: the request line and headers within their limits.
pub async fn guard_head(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let l = &st.http;
    let uri_len = req.uri().to_string().len();
    if uri_len > l.max_uri_bytes {
        return ApiError::with_status(
            StatusCode::URI_TOO_LONG,
            format!(
                "the request URI has {uri_len} bytes; at most {} are accepted",
                l.max_uri_bytes
            ),
        )
        .into_response();
    }
    let headers = req.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if headers.len() > l.max_headers || header_bytes > l.max_header_bytes {
        return ApiError::with_status(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request has {} header lines, {header_bytes} bytes; at most {} lines and {} bytes are accepted",
                headers.len(),
                l.max_headers,
                l.max_header_bytes
            ),
        )
        .into_response();
    }
    next.run(req).await
}

/// POST on the API: JSON's content type, then the whole body, read within the size limit and
/// the deadline, before the handler sees it.
pub async fn read_json_body(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let l = &st.http;
    let headers = req.headers();
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    // A web page may send a "simple" cross-origin POST (text/plain, form data) without asking
    // first; requiring JSON's content type means such a page cannot start a generation.
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match ct.as_deref() {
        Some(c) if is_json(c) => {}
        other => {
            let said = match other {
                None => "missing".to_string(),
                Some(c) => format!("`{}`", c.chars().take(64).collect::<String>()),
            };
            return ApiError::with_status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("`Content-Type` is {said}; send the body as JSON with `Content-Type: application/json`"),
            )
            .into_response();
        }
    }
    if let Some(n) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if n > l.max_body_bytes as u64 {
            return too_large(l.max_body_bytes).into_response();
        }
    }
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, l.max_body_bytes);
    let bytes = match tokio::time::timeout(l.body_read_timeout, read).await {
        Err(_) => {
            return ApiError::with_status(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    l.body_read_timeout.as_secs()
                ),
            )
            .into_response()
        }
        Ok(Err(e)) => {
            // The limit, or a connection cut mid-body.
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if over {
                too_large(l.max_body_bytes).into_response()
            } else {
                ApiError::invalid(None, format!("the request body could not be read: {e}"))
                    .into_response()
            };
        }
        Ok(Ok(b)) => b,
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn too_large(limit: usize) -> ApiError {
    ApiError::with_status(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is larger than this server's limit of {limit} bytes (--max-body-mb)"
        ),
    )
}

/// Turns any error answer that is not already OpenAI's JSON body (axum's own 405, a rejected
/// extractor) into one, keeping its status and text.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json_body = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json);
    if !(status.is_client_error() || status.is_server_error()) || is_json_body {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match (status, text.is_empty()) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            "this method is not allowed on this path (the API takes POST on /v1/chat/completions and /v1/completions, GET elsewhere)".to_string()
        }
        (_, true) => status
            .canonical_reason()
            .unwrap_or("error")
            .to_lowercase(),
        (_, false) => text,
    };
    let mut out = ApiError::with_status(status, message).into_response();
    for (k, v) in parts.headers.iter() {
        if k == header::ALLOW || k == header::RETRY_AFTER {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/vnd.api+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json("multipart/form-data; boundary=x"));
        assert!(!is_json(""));
    }
}
