//! The route API, compatible with configurable-http-proxy 5.x, on its own listener: JupyterHub
//! or any spawner that drives CHP drives latchkey unchanged.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use crate::app::App;
use crate::clock;
use crate::error::{Error, Result};
use crate::http_util::{self, Body, json_response, no_content};
use crate::ids::UserName;
use crate::metrics::{Class, Live, Revocation};
use crate::paths;
use crate::routes::{RouteSpec, normalize_path};
use crate::secret::{self, constant_time_eq};
use crate::store::{NewRoute, StoredRoute};

/// Answers one request on the route API listener.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let started = std::time::Instant::now();
    let request_id = secret::random_id();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let class = if path == paths::METRICS {
        Class::Metrics
    } else if crate::health::is_health_path(&path) {
        Class::Health
    } else {
        Class::RouteApi
    };
    let mut resp = match dispatch(&app, req).await {
        Ok(r) => r,
        Err(e) => e.render(&request_id, true),
    };
    if let Ok(v) = http::HeaderValue::from_str(&request_id) {
        resp.headers_mut().entry("x-request-id").or_insert(v);
    }
    tracing::info!(
        target: "latchkey::access",
        request_id = %request_id,
        listener = "api",
        %method,
        path = %path,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
    );
    app.metrics.request(class, resp.status(), started.elapsed());
    resp
}

async fn dispatch(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>> {
    let path = req.uri().path().to_owned();
    if let Some(resp) = crate::health::answer(app, &path).await {
        return Ok(resp);
    }
    if path == paths::METRICS {
        // No token: Prometheus scrapes without one, and no series carries a secret or a name.
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Err(Error::MethodNotAllowed);
        }
        return Ok(metrics(app));
    }
    if let Some(rest) = path
        .strip_prefix(paths::USERS_API)
        .filter(|r| r.is_empty() || r.starts_with('/'))
    {
        if !authorized(app, &req) {
            return Err(Error::Forbidden(
                "The users API needs Authorization: token <api token>.".into(),
            ));
        }
        return users(app, req.method(), rest).await;
    }
    let Some(route_path) = path
        .strip_prefix(paths::ROUTES_API)
        .filter(|r| r.is_empty() || r.starts_with('/'))
    else {
        return Err(Error::NotFound("There is no such API endpoint.".into()));
    };
    if !authorized(app, &req) {
        return Err(Error::Forbidden(
            "The route API needs Authorization: token <api token>.".into(),
        ));
    }
    let query = req.uri().query().map(str::to_owned);
    let method = req.method().clone();
    match (method, route_path) {
        (Method::GET, "" | "/") => list(app, query.as_deref()),
        (Method::GET, p) => get_one(app, p),
        (Method::POST, p) => {
            let body = http_util::read_body(req.into_body(), app.config.max_body).await?;
            post(app, p, &body).await
        }
        (Method::DELETE, p) => delete(app, p).await,
        _ => Err(Error::MethodNotAllowed),
    }
}

/// `GET /api/users`: the users from outside the configuration, by name; `DELETE
/// /api/users/{name}`: removes one (see [`App::remove_user`]).
async fn users(app: &App, method: &Method, rest: &str) -> Result<Response<Body>> {
    match (method, rest.trim_start_matches('/')) {
        (&Method::GET, "") => {
            let list: Vec<Value> = app
                .store
                .list_users()
                .await?
                .into_iter()
                .map(|u| {
                    json!({
                        "name": u.name.as_str(),
                        "groups": u.groups.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
                        "via": if u.subject.is_empty() { "trusted_header" } else { "oidc" },
                        "first_seen": clock::iso(u.first_seen),
                        "last_seen": clock::iso(u.last_seen),
                    })
                })
                .collect();
            Ok(json_response(StatusCode::OK, &json!({ "users": list })))
        }
        (&Method::DELETE, name) if !name.is_empty() => {
            let name = UserName::parse(name).map_err(Error::bad_request)?;
            if !app.remove_user(&name).await? {
                return Err(Error::NotFound(format!(
                    "There is no user {name} from a sign-in provider or proxy."
                )));
            }
            tracing::info!(user = %name, "user removed through the API");
            Ok(no_content())
        }
        _ => Err(Error::MethodNotAllowed),
    }
}

/// The OpenMetrics exposition of this instance.
fn metrics(app: &App) -> Response<Body> {
    let text = app.metrics.encode(Live {
        websockets: app.tracker.len(),
        routes: app.cache.routes().len(),
        draining: app.draining.load(std::sync::atomic::Ordering::SeqCst),
    });
    let mut resp = Response::new(http_util::full(text));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    resp
}

fn authorized(app: &App, req: &Request<Incoming>) -> bool {
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return false;
    };
    (scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer"))
        && constant_time_eq(token.trim().as_bytes(), app.config.api_token.as_bytes())
}

/// A route as the API shows it: the data as posted, except that injected upstream credentials
/// are never shown again (only their header names), plus `last_activity`.
fn route_json(data: &Map<String, Value>, last_activity: i64) -> Value {
    let mut out = data.clone();
    if let Some(Value::Object(headers)) = out.get_mut("upstream_headers") {
        for value in headers.values_mut() {
            *value = Value::String("<hidden>".into());
        }
    }
    out.insert(
        "last_activity".into(),
        Value::String(clock::iso_millis(last_activity)),
    );
    Value::Object(out)
}

fn list(app: &App, query: Option<&str>) -> Result<Response<Body>> {
    let since = http_util::query_value(query, "inactive_since")
        .or_else(|| http_util::query_value(query, "inactiveSince"));
    let since = match since {
        None => None,
        Some(s) => Some(clock::parse_iso_millis(&s).ok_or_else(|| {
            Error::bad_request(format!("inactive_since={s:?} is not an ISO 8601 date"))
        })?),
    };
    let table = app.cache.routes();
    let mut out = Map::new();
    for r in table.iter() {
        if since.is_some_and(|s| r.last_activity() >= s) {
            continue;
        }
        out.insert(r.path.clone(), route_json(&r.data, r.last_activity()));
    }
    Ok(json_response(StatusCode::OK, &Value::Object(out)))
}

fn get_one(app: &App, raw: &str) -> Result<Response<Body>> {
    let path = normalize_path(raw).map_err(Error::BadRequest)?;
    let table = app.cache.routes();
    let r = table
        .get(&path)
        .ok_or_else(|| Error::NotFound(format!("There is no route {path}.")))?;
    Ok(json_response(
        StatusCode::OK,
        &route_json(&r.data, r.last_activity()),
    ))
}

async fn post(app: &Arc<App>, raw: &str, body: &[u8]) -> Result<Response<Body>> {
    let path = normalize_path(raw).map_err(Error::BadRequest)?;
    // JupyterHub sends JSON as text/plain: parse whatever the content type says.
    let data: Map<String, Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(Error::bad_request("The route body must be a JSON object.")),
        Err(e) => {
            return Err(Error::bad_request(format!(
                "The route body is not valid JSON: {e}"
            )));
        }
    };
    register(app, path, data).await?;
    let mut resp = Response::new(http_util::empty());
    *resp.status_mut() = StatusCode::CREATED;
    Ok(resp)
}

/// Stores a route (from the route API or the config file). Re-registering the identical route
/// keeps its server's session; anything else about it changed starts a new one.
pub async fn register(app: &App, path: String, data: Map<String, Value>) -> Result<()> {
    let spec = RouteSpec::from_data(&path, &data).map_err(Error::BadRequest)?;
    let change = app
        .store
        .put_route(NewRoute {
            path: path.clone(),
            data,
            target: spec.target_str.clone(),
            server: spec.server.clone(),
            explicit_session: spec.explicit_session.clone(),
            fresh_session: secret::random_id(),
            now: clock::now(),
        })
        .await?;
    if let Some((server, _)) = &change.ended {
        tracing::info!(server = %server, "server session ended: grants and links are void");
        app.metrics.revoked(Revocation::SessionEnded);
    }
    tracing::info!(path = %path, server = ?spec.server.as_ref().map(|s| s.key()), "route stored");
    app.routes_changed(spec.server.as_ref()).await;
    Ok(())
}

async fn delete(app: &Arc<App>, raw: &str) -> Result<Response<Body>> {
    let path = normalize_path(raw).map_err(Error::BadRequest)?;
    let server = app.cache.routes().get(&path).and_then(|r| r.server.clone());
    // The cache may lag another instance; the store has the truth about the route's server.
    let server = match server {
        Some(s) => Some(s),
        None => app
            .store
            .list_routes()
            .await?
            .into_iter()
            .find(|r: &StoredRoute| r.path == path)
            .and_then(|r| RouteSpec::from_data(&path, &r.data).ok())
            .and_then(|s| s.server),
    };
    let change = app.store.delete_route(&path, server.as_ref()).await?;
    if change.route.is_none() {
        return Err(Error::NotFound(format!("There is no route {path}.")));
    }
    tracing::info!(path = %path, "route deleted");
    if change.ended.is_some() {
        app.metrics.revoked(Revocation::SessionEnded);
    }
    app.routes_changed(server.as_ref()).await;
    Ok(no_content())
}
