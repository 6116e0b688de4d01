//! The REST API, mongosync's paths and JSON: `POST /api/v1/start`, `/pause`, `/resume`,
//! `/commit`, `/reverse` and `GET /api/v1/progress`, on `127.0.0.1:27182` by default.
//!
//! Replies are `{"success":true}` (plus `"progress"` for `/progress`) or
//! `{"success":false,"error":"<Name>","errorDescription":"..."}` with a 4xx status for the
//! caller's mistakes and a 5xx status only for our faults or an unavailable dependency. The
//! error names are [`ControlError::name`]'s (see [`crate::control`]) plus, from this layer,
//! `NotFound` (404), `MethodNotAllowed` (405) and `PayloadTooLarge` (413). `docs/API.md`
//! describes every endpoint with curl examples.
//!
//! The handlers only parse and answer; every decision is [`Control`]'s, which the gRPC API
//! shares.
//!
//! # Layout
//!
//! - this file: the router, the server loop and the reply shapes.
//! - [`body`]: request body parsing with precise errors.

pub mod body;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::control::{Control, ControlError};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Path prefix of every endpoint.
pub const API_PREFIX: &str = "/api/v1";

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        error_reply(status, self.name(), &self.to_string())
    }
}

fn error_reply(status: StatusCode, name: &str, description: &str) -> Response {
    (status, axum::Json(json!({ "success": false, "error": name, "errorDescription": description }))).into_response()
}

fn success() -> Response {
    (StatusCode::OK, axum::Json(json!({ "success": true }))).into_response()
}

/// Builds the router over `control`.
pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/api/v1/start", post(start))
        .route("/api/v1/pause", post(pause))
        .route("/api/v1/resume", post(resume))
        .route("/api/v1/commit", post(commit))
        .route("/api/v1/reverse", post(reverse))
        .route("/api/v1/progress", get(progress))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(control)
}

/// Serves the API on `listener` until `shutdown` is cancelled; requests in flight finish.
///
/// # Errors
///
/// The server's I/O error.
pub async fn serve(listener: TcpListener, control: Arc<Control>, shutdown: CancellationToken) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    info!(%address, "rest api listening");
    axum::serve(listener, router(control)).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

/// Binds the API's listener.
///
/// # Errors
///
/// The bind error, with the address in its message.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|error| std::io::Error::new(error.kind(), format!("cannot bind the rest api to {address}: {error}")))
}

/// Reads a body up to [`MAX_BODY_BYTES`].
async fn read_body(body: Body) -> Result<axum::body::Bytes, Response> {
    axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| {
        error_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            &format!("the request body is larger than {MAX_BODY_BYTES} bytes or could not be read"),
        )
    })
}

/// Turns a control result into a reply, logging refusals and failures.
fn reply<T>(endpoint: &'static str, result: Result<T, ControlError>) -> Response {
    match result {
        Ok(_) => success(),
        Err(error) => {
            if error.http_status() >= 500 {
                warn!(endpoint, error = error.name(), description = %error, "api call failed");
            } else {
                info!(endpoint, error = error.name(), description = %error, "api call refused");
            }
            error.into_response()
        }
    }
}

async fn start(State(control): State<Arc<Control>>, body: Body) -> Response {
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let result = match body::parse_start(&bytes) {
        Ok(options) => control.start(options).await,
        Err(error) => Err(error),
    };
    reply("start", result)
}

/// Shared handler of the endpoints without parameters.
async fn bodiless<F, Fut>(endpoint: &'static str, body: Body, operation: F) -> Response
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<clustersync_common::model::SyncStateDoc, ControlError>>,
{
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    if let Err(error) = body::parse_empty(endpoint, &bytes) {
        return reply(endpoint, Err::<(), _>(error));
    }
    reply(endpoint, operation().await)
}

async fn pause(State(control): State<Arc<Control>>, body: Body) -> Response {
    bodiless("pause", body, || control.pause()).await
}

async fn resume(State(control): State<Arc<Control>>, body: Body) -> Response {
    bodiless("resume", body, || control.resume()).await
}

async fn commit(State(control): State<Arc<Control>>, body: Body) -> Response {
    bodiless("commit", body, || control.commit()).await
}

async fn reverse(State(control): State<Arc<Control>>, body: Body) -> Response {
    bodiless("reverse", body, || control.reverse()).await
}

async fn progress(State(control): State<Arc<Control>>) -> Response {
    match control.progress().await {
        Ok(progress) => (StatusCode::OK, axum::Json(json!({ "success": true, "progress": progress }))).into_response(),
        Err(error) => reply("progress", Err::<(), _>(error)),
    }
}

async fn not_found(uri: Uri) -> Response {
    error_reply(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!(
            "no endpoint at {}: use POST {API_PREFIX}/start, /pause, /resume, /commit, /reverse or GET {API_PREFIX}/progress",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let expected = if uri.path() == "/api/v1/progress" { "GET" } else { "POST" };
    error_reply(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        &format!("{method} is not allowed on {}: use {expected}", uri.path()),
    )
}
