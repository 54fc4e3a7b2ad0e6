//! Liveness and readiness, answered the same way on the public and the route API listeners.
//!
//! `/healthz` and `/_chp_healthz` say the process answers (no dependencies, so a slow store
//! never gets a healthy instance restarted); `/readyz` says it should get traffic: the store
//! answers and the instance is not shutting down.

use std::sync::atomic::Ordering;

use http::{Response, StatusCode};
use serde_json::json;

use crate::app::App;
use crate::http_util::{Body, json_response};
use crate::paths;

/// Whether a path is one of the health checks, which latchkey answers itself.
pub fn is_health_path(path: &str) -> bool {
    matches!(path, paths::HEALTHZ | paths::CHP_HEALTHZ | paths::READYZ)
}

/// The answer for a health path, or None for any other path.
pub async fn answer(app: &App, path: &str) -> Option<Response<Body>> {
    match path {
        paths::HEALTHZ | paths::CHP_HEALTHZ => {
            Some(json_response(StatusCode::OK, &json!({"status": "OK"})))
        }
        paths::READYZ => Some(readiness(app).await),
        _ => None,
    }
}

async fn readiness(app: &App) -> Response<Body> {
    if app.draining.load(Ordering::SeqCst) {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "draining"}),
        );
    }
    match app.store.ping().await {
        Ok(()) => json_response(StatusCode::OK, &json!({"status": "ready"})),
        Err(_) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "store unavailable"}),
        ),
    }
}
