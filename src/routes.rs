//! The route table: which upstream serves a path, by longest prefix on segment boundaries.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use http::{HeaderName, HeaderValue, Uri};
use serde_json::{Map, Value};

use crate::ids::{ServerName, ServerRef, UserName};
use crate::store::StoredRoute;

/// Normalises a route path as configurable-http-proxy does: leading slash, no trailing slash
/// (except the root), percent-decoding left alone.
pub fn normalize_path(raw: &str) -> Result<String, String> {
    let mut p = raw.trim().to_owned();
    if !p.starts_with('/') {
        p.insert(0, '/');
    }
    while p.len() > 1 && p.ends_with('/') {
        p.pop();
    }
    if p.contains("//") || p.contains('\\') || p.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!("{raw:?} is not a valid route path"));
    }
    let lower = p.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err(format!("{raw:?} contains an encoded slash or backslash"));
    }
    if lower
        .split('/')
        .any(|seg| matches!(seg, "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e."))
    {
        return Err(format!("{raw:?} contains dot segments"));
    }
    Ok(p)
}

/// Where requests for a route go.
#[derive(Debug, Clone)]
pub struct Target {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path prefix of the target, without a trailing slash ("" for none).
    pub base_path: String,
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        let uri: Uri = s
            .parse()
            .map_err(|_| format!("target {s:?} is not a URL"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or(format!("target {s:?} needs a scheme (http:// or https://)"))?;
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            return Err(format!("target {s:?} must be http:// or https://"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or(format!("target {s:?} needs a host"))?;
        if uri.query().is_some() {
            return Err(format!("target {s:?} must not have a query"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Target {
            scheme,
            authority,
            base_path,
        })
    }
}

/// A route ready for the hot path: everything parsed once.
#[derive(Debug)]
pub struct Route {
    pub path: String,
    pub target: Target,
    /// The server this route belongs to, when its data names a user; such routes are guarded.
    pub server: Option<ServerRef>,
    pub session: String,
    pub upstream_headers: Vec<(HeaderName, HeaderValue)>,
    pub strip_prefix: bool,
    pub data: Map<String, Value>,
    pub created_at: i64,
    /// Milliseconds since the epoch of the last proxied traffic.
    pub last_activity: AtomicI64,
}

impl Route {
    pub fn touch(&self, now_ms: i64) {
        self.last_activity.fetch_max(now_ms, Ordering::Relaxed);
    }

    pub fn last_activity(&self) -> i64 {
        self.last_activity.load(Ordering::Relaxed)
    }

    pub fn from_stored(stored: &StoredRoute) -> Result<Route, String> {
        let spec = RouteSpec::from_data(&stored.path, &stored.data)?;
        Ok(Route {
            path: stored.path.clone(),
            target: spec.target,
            server: spec.server,
            session: stored.session.clone(),
            upstream_headers: spec.upstream_headers,
            strip_prefix: spec.strip_prefix,
            data: stored.data.clone(),
            created_at: stored.created_at,
            last_activity: AtomicI64::new(stored.last_activity),
        })
    }
}

/// The parsed meaning of a route's posted data.
#[derive(Debug)]
pub struct RouteSpec {
    pub target: Target,
    pub target_str: String,
    pub server: Option<ServerRef>,
    pub explicit_session: Option<String>,
    pub upstream_headers: Vec<(HeaderName, HeaderValue)>,
    pub strip_prefix: bool,
}

impl RouteSpec {
    /// Reads `target`, `user`/`server_name`, `session`, `upstream_headers` and `strip_prefix`;
    /// other keys are kept as they are.
    pub fn from_data(path: &str, data: &Map<String, Value>) -> Result<RouteSpec, String> {
        let target_str = match data.get("target") {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            Some(_) => return Err("\"target\" must be a URL string".into()),
            None => return Err("\"target\" is required".into()),
        };
        let target = Target::parse(&target_str)?;
        let server = match data.get("user") {
            None | Some(Value::Null) => None,
            Some(Value::String(u)) => {
                let owner = UserName::parse(u)?;
                let name = match data.get("server_name") {
                    None | Some(Value::Null) => ServerName::default(),
                    Some(Value::String(n)) => ServerName::parse(n)?,
                    Some(_) => return Err("\"server_name\" must be a string".into()),
                };
                Some(ServerRef::new(owner, name))
            }
            Some(_) => return Err("\"user\" must be a string".into()),
        };
        let explicit_session = match data.get("session") {
            None | Some(Value::Null) => None,
            Some(Value::String(s))
                if !s.is_empty()
                    && s.len() <= 128
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
            {
                Some(s.clone())
            }
            Some(_) => {
                return Err(
                    "\"session\" must be 1 to 128 letters, digits, '-', '_', '.' or ':'".into(),
                );
            }
        };
        let upstream_headers = match data.get("upstream_headers") {
            None | Some(Value::Null) => vec![],
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| {
                    let name = HeaderName::try_from(k.as_str())
                        .map_err(|_| format!("upstream_headers: {k:?} is not a header name"))?;
                    let value = v
                        .as_str()
                        .and_then(|s| HeaderValue::from_str(s).ok())
                        .ok_or(format!(
                            "upstream_headers: the value of {k:?} must be a string"
                        ))?;
                    Ok((name, value))
                })
                .collect::<Result<_, String>>()?,
            Some(_) => return Err("\"upstream_headers\" must be an object".into()),
        };
        let strip_prefix = match data.get("strip_prefix") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("\"strip_prefix\" must be true or false".into()),
        };
        let _ = path;
        Ok(RouteSpec {
            target,
            target_str,
            server,
            explicit_session,
            upstream_headers,
            strip_prefix,
        })
    }
}

/// All routes, looked up by walking a path's prefixes from longest to shortest.
#[derive(Default)]
pub struct RouteTable {
    by_path: HashMap<String, Arc<Route>>,
}

impl RouteTable {
    pub fn new(routes: impl IntoIterator<Item = Arc<Route>>) -> Self {
        RouteTable {
            by_path: routes.into_iter().map(|r| (r.path.clone(), r)).collect(),
        }
    }

    /// The route with the longest prefix of `path` on a segment boundary.
    pub fn lookup(&self, path: &str) -> Option<&Arc<Route>> {
        let mut candidate = path.trim_end_matches('/');
        loop {
            if let Some(r) = self
                .by_path
                .get(if candidate.is_empty() { "/" } else { candidate })
            {
                return Some(r);
            }
            if candidate.is_empty() {
                return None;
            }
            candidate = &candidate[..candidate.rfind('/').unwrap_or(0)];
        }
    }

    pub fn get(&self, path: &str) -> Option<&Arc<Route>> {
        self.by_path.get(path)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.by_path.values()
    }

    /// The running route of a server, if any.
    pub fn server_route(&self, server: &ServerRef) -> Option<&Arc<Route>> {
        self.by_path
            .values()
            .find(|r| r.server.as_ref() == Some(server))
    }

    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(path: &str) -> Arc<Route> {
        let stored = StoredRoute {
            path: path.into(),
            data: json!({"target": "http://127.0.0.1:1"})
                .as_object()
                .unwrap()
                .clone(),
            session: "s".into(),
            created_at: 0,
            last_activity: 0,
        };
        Arc::new(Route::from_stored(&stored).unwrap())
    }

    #[test]
    fn paths_are_normalised_like_chp() {
        assert_eq!(normalize_path("user/john/").unwrap(), "/user/john");
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("").unwrap(), "/");
        assert!(normalize_path("/a/../b").is_err());
        assert!(normalize_path("/a//b").is_err());
    }

    #[test]
    fn lookup_picks_the_longest_prefix_on_segment_boundaries() {
        let t = RouteTable::new([route("/"), route("/user/john"), route("/user/john/lab")]);
        assert_eq!(
            t.lookup("/user/john/lab/tree").unwrap().path,
            "/user/john/lab"
        );
        assert_eq!(t.lookup("/user/john/").unwrap().path, "/user/john");
        assert_eq!(t.lookup("/user/johnny/x").unwrap().path, "/");
        assert_eq!(t.lookup("/hub/x").unwrap().path, "/");
        let t = RouteTable::new([route("/user/john")]);
        assert!(t.lookup("/user/johnny").is_none());
        assert!(t.lookup("/").is_none());
    }

    #[test]
    fn route_data_is_parsed_into_a_server_and_options() {
        let data = json!({
            "target": "http://127.0.0.1:8888/base/",
            "user": "john", "server_name": "",
            "upstream_headers": {"Authorization": "token T"},
            "strip_prefix": true, "jupyterhub": true
        });
        let spec = RouteSpec::from_data("/user/john", data.as_object().unwrap()).unwrap();
        assert_eq!(spec.server.unwrap().key(), "john/");
        assert_eq!(spec.target.base_path, "/base");
        assert!(spec.strip_prefix);
        assert_eq!(spec.upstream_headers.len(), 1);
    }

    #[test]
    fn bad_route_data_is_explained() {
        for (data, needle) in [
            (json!({}), "target"),
            (json!({"target": 5}), "target"),
            (json!({"target": "ftp://x"}), "http"),
            (json!({"target": "http://x", "user": "a/b"}), "user name"),
            (
                json!({"target": "http://x", "upstream_headers": []}),
                "object",
            ),
            (
                json!({"target": "http://x", "strip_prefix": "yes"}),
                "strip_prefix",
            ),
        ] {
            let err = RouteSpec::from_data("/", data.as_object().unwrap()).unwrap_err();
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
    }
}
