//! The OpenAI/DeepSeek-compatible HTTP server: small axum handlers over the engine's
//! continuous-batching scheduler.
//!
//! - `GET /`: a chat page in the browser ([`chat_page`]; off with `chat_page: false`).
//! - `POST /v1/chat/completions` ([`chat`]), `POST /v1/completions` and `/beta/completions`
//!   (FIM with `suffix`, [`completions`]), `GET /v1/models`, `GET /health`, `GET /metrics`.
//! - Errors are OpenAI's JSON body with the matching status ([`error`]), also for what the HTTP
//!   layer refuses ([`http`]: sizes, content type, slow clients).
//! - Parsing, templating and tokenizing run on a small blocking pool ([`run::prepare`]), never on
//!   the threads that answer `/health` and stream tokens.

pub mod api;
pub mod auth;
pub mod chat;
pub mod chat_page;
pub mod completions;
pub mod error;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod run;
pub mod tools;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use deepseek_engine::scheduler::SchedulerHandle;
use deepseek_engine::{ChatTemplate, Tokenizer};
use serde_json::json;

use crate::error::ApiError;
use crate::http::HttpLimits;
use crate::metrics::Metrics;

/// Everything the handlers share.
pub struct AppState {
    pub scheduler: SchedulerHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
    /// Bytes of every token (JSON mode, logprobs).
    pub token_bytes: Arc<Vec<Option<Vec<u8>>>>,
    /// The name `/v1/models` reports and responses carry.
    pub model_name: String,
    /// Most tokens (prompt + completion) one request may use.
    pub context: usize,
    /// The keys accepted on `/v1` and `/beta` (`None`: no key needed).
    pub keys: Option<keys::Keys>,
    pub http: HttpLimits,
    /// Requests being parsed, templated and tokenized at once (the rest wait their turn).
    pub prepare_slots: Arc<tokio::sync::Semaphore>,
    pub metrics: Metrics,
    /// Whether `/` serves the chat page.
    pub chat_page: bool,
    pub created: u64,
    next_id: AtomicU64,
}

/// Requests prepared at once: enough to keep up with arrivals, few enough that large prompts
/// cannot take every core from the model or hold much memory together.
pub const PREPARE_SLOTS: usize = 2;

impl AppState {
    pub fn new(
        scheduler: SchedulerHandle,
        tokenizer: Arc<Tokenizer>,
        model_name: String,
        context: usize,
        api_key: Option<String>,
    ) -> Result<Self, deepseek_engine::EngineError> {
        let template = match &tokenizer.chat_template {
            Some(src) => Some(ChatTemplate::new(
                src,
                tokenizer.bos_token.as_deref().unwrap_or(""),
                tokenizer.eos_token.as_deref().unwrap_or(""),
            )?),
            None => None,
        };
        Ok(AppState {
            scheduler,
            token_bytes: Arc::new(tokenizer.token_bytes()),
            tokenizer,
            template,
            model_name,
            context,
            keys: api_key.as_deref().map(keys::Keys::single),
            http: HttpLimits::default(),
            prepare_slots: Arc::new(tokio::sync::Semaphore::new(PREPARE_SLOTS)),
            metrics: Metrics::default(),
            chat_page: true,
            created: now(),
            next_id: AtomicU64::new(1),
        })
    }

    /// A fresh response id: `chatcmpl-…` / `cmpl-…`.
    pub fn response_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:x}{n:08x}", self.created)
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub const SYSTEM_FINGERPRINT: &str = concat!("deepseek-rs-", env!("CARGO_PKG_VERSION"));

/// The routes, with API-key checking on `/v1` and `/beta`, and request counting.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::handle))
        .route("/v1/completions", post(completions::handle))
        .route("/beta/completions", post(completions::handle))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        // The body is read (within --max-body-mb) by `read_json_body`, after the key check.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            http::read_json_body,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::check_api_key,
        ));
    let mut app = Router::new().merge(api);
    if state.chat_page {
        app = app.route("/", get(chat_page::handle));
    }
    app.route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            http::guard_head,
        ))
        .layer(middleware::from_fn(http::json_errors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn count_requests(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let endpoint = match path.as_str() {
        "/"
        | "/v1/chat/completions"
        | "/v1/completions"
        | "/beta/completions"
        | "/v1/models"
        | "/health"
        | "/metrics" => path,
        p if p.starts_with("/v1/models/") => "/v1/models/{id}".to_string(),
        _ => "other".to_string(),
    };
    let resp = next.run(req).await;
    st.metrics.count_request(&endpoint, resp.status().as_u16());
    resp
}

fn model_object(st: &AppState) -> serde_json::Value {
    json!({"id": st.model_name, "object": "model", "created": st.created, "owned_by": "deepseek-rs"})
}

async fn models(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({"object": "list", "data": [model_object(&st)]}))
}

async fn model(
    State(st): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if id == st.model_name {
        Ok(Json(model_object(&st)))
    } else {
        Err(ApiError::not_found(format!(
            "the model `{id}` does not exist; this server serves `{}`",
            st.model_name
        )))
    }
}

async fn health(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let s = &st.scheduler.stats;
    Json(json!({
        "status": "ok",
        "model": st.model_name,
        "running": s.running.load(Ordering::Relaxed),
        "waiting": s.waiting.load(Ordering::Relaxed),
    }))
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(&st.scheduler.stats, st.keys.as_ref()),
    )
}

async fn not_found(State(st): State<Arc<AppState>>, req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}; the server has {}POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics",
        req.method(),
        req.uri().path(),
        if st.chat_page { "GET / (the chat page), " } else { "" }
    ))
}

/// Serves until `shutdown` resolves, then stops accepting, lets running requests finish for up
/// to `grace`, and cancels whatever is left.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let scheduler = state.scheduler.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; finishing running requests");
        let _ = tx.send(());
    };
    let limits = state.http.clone();
    let app = router(state);
    let server = http::serve_connections(listener, app, limits, signal);
    // After the grace period, cancel what still runs so the drain ends.
    let canceller = tokio::spawn(async move {
        if rx.await.is_ok() {
            tokio::time::sleep(grace).await;
            scheduler.shutdown();
        }
    });
    server.await;
    canceller.abort();
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
