//! Every path latchkey reserves for itself on the public listener. Anything else is a proxy path.

/// Prefix of latchkey's pages and JSON API (JupyterHub's convention).
pub const HUB: &str = "/hub/";
pub const LOGIN: &str = "/hub/login";
pub const LOGOUT: &str = "/hub/logout";
pub const HOME: &str = "/hub/home";
/// The sharing menu: `/hub/sharing/{owner}/{server}`.
pub const SHARING: &str = "/hub/sharing/";
pub const ACCEPT_SHARE: &str = "/hub/accept-share";
/// The user's API tokens (JupyterHub's page of the same name).
pub const TOKENS: &str = "/hub/token";
pub const STATIC: &str = "/hub/static/";
/// Host-based routing: on a user's host, where a browser without a sign-in for that host is
/// sent, with the state cookie; on latchkey's host, where the sign-in is handed over as a
/// one-time code; on the user's host, where the code is exchanged for the host's cookie.
pub const HOST_LOGIN: &str = "/hub/host-login";
pub const HOST_HANDOFF: &str = "/hub/host-handoff";
pub const HOST_CALLBACK: &str = "/hub/host-callback";
/// Sign-in through an OpenID Connect provider: where it starts, and where the provider sends
/// the browser back (JupyterHub's OAuthenticator uses the same two paths).
pub const OIDC_LOGIN: &str = "/hub/oauth_login";
pub const OIDC_CALLBACK: &str = "/hub/oauth_callback";
pub const API: &str = "/hub/api/";
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const CHP_HEALTHZ: &str = "/_chp_healthz";

/// Route API (configurable-http-proxy compatible), on its own listener.
pub const ROUTES_API: &str = "/api/routes";
/// The users from outside the configuration (OpenID Connect, sign-in proxy), on the same
/// listener and token as the route API: list, and remove one.
pub const USERS_API: &str = "/api/users";
/// Prometheus metrics (OpenMetrics text), on the route API listener only.
pub const METRICS: &str = "/metrics";

/// Cookie names. The XSRF cookie is scoped to `/hub/` so that a proxied Jupyter server, which
/// uses a cookie of the same name, never sees it.
pub const SESSION_COOKIE: &str = "latchkey-session";
pub const SESSION_COOKIE_TLS: &str = "__Host-latchkey-session";
pub const XSRF_COOKIE: &str = "_xsrf";
/// The state of a sign-in hand-over, on a user's host while it runs.
pub const HOST_STATE_COOKIE: &str = "latchkey-host-state";
pub const HOST_STATE_COOKIE_TLS: &str = "__Host-latchkey-host-state";
/// The secret of a sign-in at an OpenID Connect provider, while it runs.
pub const OIDC_STATE_COOKIE: &str = "latchkey-oidc-state";
pub const OIDC_STATE_COOKIE_TLS: &str = "__Host-latchkey-oidc-state";
/// latchkey's cookies that never reach an upstream and that an upstream may never set.
pub const OWN_COOKIES: [&str; 6] = [
    SESSION_COOKIE,
    SESSION_COOKIE_TLS,
    HOST_STATE_COOKIE,
    HOST_STATE_COOKIE_TLS,
    OIDC_STATE_COOKIE,
    OIDC_STATE_COOKIE_TLS,
];

/// The hub prefix as configured (e.g. "/latchkey/"), mapping between the paths clients see and
/// the internal paths above, which always start with "/hub/".
#[derive(Clone, Debug)]
pub struct HubPrefix(String);

impl HubPrefix {
    pub fn new(prefix: &str) -> Self {
        HubPrefix(prefix.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The internal path for a path under the configured prefix, if it is one.
    pub fn internal(&self, path: &str) -> Option<String> {
        let bare = &self.0[..self.0.len() - 1];
        if path == bare {
            return Some("/hub".into());
        }
        path.strip_prefix(self.0.as_str())
            .map(|rest| format!("{HUB}{rest}"))
    }

    /// The path clients use for an internal "/hub/..." path.
    pub fn external(&self, internal: &str) -> String {
        match internal.strip_prefix(HUB) {
            Some(rest) => format!("{}{rest}", self.0),
            None => internal.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_custom_prefix_maps_both_ways() {
        let p = HubPrefix::new("/latchkey/");
        assert_eq!(p.internal("/latchkey/login").as_deref(), Some("/hub/login"));
        assert_eq!(p.internal("/latchkey").as_deref(), Some("/hub"));
        assert_eq!(p.internal("/hub/login"), None);
        assert_eq!(p.external(LOGIN), "/latchkey/login");
        assert_eq!(p.external("/user/john/"), "/user/john/");
        let d = HubPrefix::new(HUB);
        assert_eq!(
            d.internal("/hub/api/user").as_deref(),
            Some("/hub/api/user")
        );
        assert_eq!(d.external(HOME), "/hub/home");
    }
}
