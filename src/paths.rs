//! Every path latchkey reserves for itself on the public listener. Anything else is a proxy path.

/// Prefix of latchkey's pages and JSON API (JupyterHub's convention).
pub const HUB: &str = "/hub/";
pub const LOGIN: &str = "/hub/login";
pub const LOGOUT: &str = "/hub/logout";
pub const HOME: &str = "/hub/home";
/// The sharing menu: `/hub/sharing/{owner}/{server}`.
pub const SHARING: &str = "/hub/sharing/";
pub const ACCEPT_SHARE: &str = "/hub/accept-share";
pub const STATIC: &str = "/hub/static/";
pub const API: &str = "/hub/api/";
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const CHP_HEALTHZ: &str = "/_chp_healthz";

/// Route API (configurable-http-proxy compatible), on its own listener.
pub const ROUTES_API: &str = "/api/routes";

/// Cookie names. The XSRF cookie is scoped to `/hub/` so that a proxied Jupyter server, which
/// uses a cookie of the same name, never sees it.
pub const SESSION_COOKIE: &str = "latchkey-session";
pub const SESSION_COOKIE_TLS: &str = "__Host-latchkey-session";
pub const XSRF_COOKIE: &str = "_xsrf";
pub const XSRF_COOKIE_PATH: &str = "/hub/";

/// True for paths that latchkey answers itself rather than proxying.
pub fn is_reserved(path: &str) -> bool {
    path == "/hub"
        || path.starts_with(HUB)
        || path == HEALTHZ
        || path == READYZ
        || path == CHP_HEALTHZ
        || path == "/"
        || path == "/favicon.ico"
}
