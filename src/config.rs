//! Configuration: defaults, then the TOML file, then `LATCHKEY_*` environment variables.
//! `Config::load` checks everything and reports every problem at once.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ids::{GroupName, UserName};

/// The file as written, every value still unchecked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub api: RawApi,
    pub store: RawStore,
    pub sharing: RawSharing,
    pub login: RawLogin,
    pub oidc: RawOidc,
    pub trusted_header: RawTrustedHeader,
    pub users: Vec<RawUser>,
    /// Servers declared here rather than through the route API.
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub public_url: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// Seconds between checks of the TLS files for changes (SIGHUP reloads at once).
    pub tls_reload_interval: u64,
    /// A plain HTTP listener that redirects every request to HTTPS (needs TLS).
    pub http_redirect_listen: Option<String>,
    /// PEM file of the CA certificates that `https://` upstreams are verified against; without
    /// it, the Mozilla roots.
    pub upstream_ca: Option<String>,
    /// Seconds between readiness turning 503 and the listeners closing on shutdown, for load
    /// balancers that only learn from readiness checks.
    pub shutdown_delay: u64,
    /// Peers whose X-Forwarded-For is believed (load balancers in front of latchkey).
    pub trusted_proxies: Vec<String>,
    /// Seconds to wait for an upstream's response headers.
    pub upstream_timeout: u64,
    /// Seconds a sign-in lasts.
    pub session_max_age: u64,
    /// Largest API or form body, in bytes.
    pub max_body: usize,
    /// Where latchkey's own pages and API live. Change it (e.g. to "/latchkey/") when a
    /// JupyterHub behind latchkey needs "/hub/" for itself.
    pub hub_prefix: String,
    /// Host-based routing: each user's servers on `<user>.<user_domain>` (e.g. "lab.example.org"
    /// for `john.lab.example.org`), latchkey's pages on the public URL's host only. Needs
    /// `public_url` and a wildcard DNS name (and certificate) for the domain.
    pub user_domain: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApi {
    pub listen: String,
    pub token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub url: String,
    /// Milliseconds a store command may take before the request gets a 503.
    pub timeout_ms: u64,
    /// Seconds cached access decisions stay usable without contact with the store.
    pub max_staleness: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSharing {
    pub enabled: bool,
    pub default_expires_in: u64,
    pub min_expires_in: u64,
    pub max_expires_in: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLogin {
    /// Failed sign-ins (and bad invite codes) allowed per client per window.
    pub max_failures: u32,
    pub failure_window: u64,
}

/// Sign-in through an OpenID Connect provider (Keycloak, Dex, Google, Entra ID, ...), on when
/// `issuer` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOidc {
    /// The provider's issuer URL; its `/.well-known/openid-configuration` is read from there.
    pub issuer: Option<String>,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// Where the provider sends the browser back; by default `<public_url><hub prefix>oauth_callback`.
    pub redirect_url: Option<String>,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
    /// The claim that names the user (ID token, else userinfo), e.g. "preferred_username",
    /// "email", "sub". Lower-cased; must be a valid latchkey user name.
    pub username_claim: String,
    /// The claim with the user's groups (a list of names); "" for none.
    pub groups_claim: String,
    /// When not empty, only members of one of these groups may sign in.
    pub allowed_groups: Vec<String>,
    /// The provider's name on the sign-in button ("Sign in with ...").
    pub display_name: String,
    /// Seconds a sign-in through the provider lasts (at most `server.session_max_age`): how
    /// long someone removed at the provider keeps latchkey's pages and servers.
    pub session_max_age: u64,
    /// Where Sign out sends a user who signed in through the provider (its own sign-out, so
    /// that the next sign-in asks again), instead of latchkey's sign-in page.
    pub logout_url: Option<String>,
}

impl Default for RawOidc {
    fn default() -> Self {
        RawOidc {
            issuer: None,
            client_id: String::new(),
            client_secret: None,
            redirect_url: None,
            scopes: vec!["profile".into(), "email".into()],
            username_claim: "preferred_username".into(),
            groups_claim: "groups".into(),
            allowed_groups: vec![],
            display_name: "single sign-on".into(),
            session_max_age: 86_400,
            logout_url: None,
        }
    }
}

/// Sign-in by an authenticating proxy in front of latchkey (oauth2-proxy, Authelia,
/// Authentik, ...), which names the user in a request header: on when `user` is set, believed
/// only from `server.trusted_proxies`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTrustedHeader {
    /// The header with the user name, e.g. "X-Forwarded-User" or "Remote-User".
    pub user: Option<String>,
    /// The header with the user's groups, comma-separated, e.g. "X-Forwarded-Groups".
    pub groups: Option<String>,
    /// Where Sign out sends the browser (the proxy's own sign-out), instead of latchkey's
    /// sign-in page.
    pub logout_url: Option<String>,
    /// Name prefixes of the proxy's own cookies, removed from every request latchkey forwards
    /// (they are the users' credentials there).
    pub proxy_cookies: Vec<String>,
}

impl Default for RawTrustedHeader {
    fn default() -> Self {
        RawTrustedHeader {
            user: None,
            groups: None,
            logout_url: None,
            proxy_cookies: [
                "_oauth2_proxy",
                "authelia_session",
                "authentik_session",
                "_pomerium",
                "vouch-session",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// Checked `[trusted_header]` settings (header names lower-cased).
#[derive(Debug, Clone)]
pub struct TrustedHeaderConfig {
    pub user: String,
    pub groups: Option<String>,
    pub logout_url: Option<String>,
    pub proxy_cookies: std::sync::Arc<[String]>,
}

/// Checked `[oidc]` settings.
#[derive(Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub redirect_url: String,
    pub scopes: Vec<String>,
    pub username_claim: String,
    pub groups_claim: Option<String>,
    pub allowed_groups: Vec<GroupName>,
    pub display_name: String,
    pub session_max_age: u64,
    pub logout_url: Option<String>,
}

impl OidcConfig {
    /// Whether a user in these groups may use the service (no allowed groups: everyone).
    pub fn admits(&self, groups: &[GroupName]) -> bool {
        self.allowed_groups.is_empty() || groups.iter().any(|g| self.allowed_groups.contains(g))
    }
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("redirect_url", &self.redirect_url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRoute {
    pub path: String,
    pub target: String,
    /// The owner: such a route is a user's server, guarded by latchkey.
    pub user: Option<String>,
    pub server_name: String,
    pub upstream_headers: std::collections::BTreeMap<String, String>,
    pub strip_prefix: bool,
    pub session: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUser {
    pub name: String,
    pub password_hash: String,
    pub groups: Vec<String>,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            server: RawServer {
                listen: "127.0.0.1:8000".into(),
                public_url: None,
                tls_cert: None,
                tls_key: None,
                tls_reload_interval: 5,
                http_redirect_listen: None,
                upstream_ca: None,
                shutdown_delay: 0,
                trusted_proxies: vec![],
                upstream_timeout: 30,
                session_max_age: 7 * 24 * 3600,
                max_body: 1024 * 1024,
                hub_prefix: "/hub/".into(),
                user_domain: None,
            },
            api: RawApi {
                listen: "127.0.0.1:8001".into(),
                token: None,
            },
            store: RawStore {
                url: "memory://".into(),
                timeout_ms: 500,
                max_staleness: 5,
            },
            sharing: RawSharing {
                enabled: true,
                default_expires_in: 3600,
                min_expires_in: 60,
                max_expires_in: 86400,
            },
            login: RawLogin {
                max_failures: 10,
                failure_window: 60,
            },
            oidc: RawOidc::default(),
            trusted_header: RawTrustedHeader::default(),
            users: vec![],
            routes: vec![],
        }
    }
}

impl Default for RawServer {
    fn default() -> Self {
        RawConfig::default().server
    }
}
impl Default for RawApi {
    fn default() -> Self {
        RawConfig::default().api
    }
}
impl Default for RawStore {
    fn default() -> Self {
        RawConfig::default().store
    }
}
impl Default for RawSharing {
    fn default() -> Self {
        RawConfig::default().sharing
    }
}
impl Default for RawLogin {
    fn default() -> Self {
        RawConfig::default().login
    }
}

/// Checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `scheme://host[:port]` with no trailing slash, when configured.
    pub public_url: Option<String>,
    pub tls: Option<TlsFiles>,
    pub tls_reload_interval: std::time::Duration,
    pub http_redirect_listen: Option<SocketAddr>,
    /// CA certificates for `https://` upstreams (empty: the Mozilla roots).
    pub upstream_ca: Vec<rustls_pki_types::CertificateDer<'static>>,
    pub shutdown_delay: std::time::Duration,
    pub trusted_proxies: Vec<IpAddr>,
    pub upstream_timeout: std::time::Duration,
    pub session_max_age: u64,
    pub max_body: usize,
    /// Prefix of latchkey's pages and API, with leading and trailing slash.
    pub hub_prefix: String,
    /// Host-based routing, when `user_domain` is set.
    pub hosts: Option<crate::hosts::UserHosts>,
    pub api_listen: SocketAddr,
    pub api_token: String,
    pub store_url: String,
    pub store_timeout: std::time::Duration,
    pub max_staleness: std::time::Duration,
    pub sharing: SharingLimits,
    pub max_failures: u32,
    pub failure_window: u64,
    pub users: Vec<UserConfig>,
    /// Sign-in through an OpenID Connect provider, when configured.
    pub oidc: Option<OidcConfig>,
    /// Sign-in by a proxy in front that names the user in a header, when configured.
    pub trusted_header: Option<TrustedHeaderConfig>,
    /// Routes to register at start: (normalised path, route data as the route API takes it).
    pub routes: Vec<(String, serde_json::Map<String, serde_json::Value>)>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy)]
pub struct SharingLimits {
    pub enabled: bool,
    pub default_expires_in: u64,
    pub min_expires_in: u64,
    pub max_expires_in: u64,
}

#[derive(Clone)]
pub struct UserConfig {
    pub name: UserName,
    pub password_hash: String,
    pub groups: Vec<GroupName>,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Reads the file (if any), applies the environment, and checks everything.
    pub fn load(path: Option<&Path>) -> Result<Config, Vec<String>> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| vec![format!("cannot read {}: {e}", p.display())])?,
            None => String::new(),
        };
        Config::from_sources(&text, &env)
    }

    /// Builds a configuration from file text and environment pairs (testable without either).
    pub fn from_sources(text: &str, env: &[(String, String)]) -> Result<Config, Vec<String>> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut problems = apply_env(&mut table, env);
        let raw: RawConfig = match RawConfig::deserialize(toml::Value::Table(table)) {
            Ok(raw) => raw,
            Err(e) => {
                problems.push(e.to_string());
                return Err(problems);
            }
        };
        match raw.check() {
            Ok(config) if problems.is_empty() => Ok(config),
            Ok(_) => Err(problems),
            Err(mut more) => {
                problems.append(&mut more);
                Err(problems)
            }
        }
    }

    /// The cookie `Secure` flag and `__Host-` prefix apply when served over TLS, or when the
    /// public URL is https (TLS terminated in front of latchkey).
    pub fn secure_cookies(&self) -> bool {
        self.tls.is_some()
            || self
                .public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
    }
}

const SECTIONS: &[&str] = &[
    "server",
    "api",
    "store",
    "sharing",
    "login",
    "oidc",
    "trusted_header",
];

/// Applies `LATCHKEY_SECTION_KEY=value` (and `CONFIGPROXY_AUTH_TOKEN`, and `*_FILE` variants for
/// secrets) on top of the file. Values take the type the key has by default.
fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Vec<String> {
    let defaults = toml::Table::try_from(RawConfig::default()).unwrap_or_default();
    let mut problems = vec![];
    let mut set = |section: &str, key: &str, raw: &str, problems: &mut Vec<String>| {
        let default = defaults.get(section).and_then(|s| s.get(key)).cloned();
        let value = match default {
            Some(toml::Value::Integer(_)) => match raw.trim().parse::<i64>() {
                Ok(n) => toml::Value::Integer(n),
                Err(_) => {
                    problems.push(format!(
                        "LATCHKEY_{}_{} must be a whole number, got {raw:?}",
                        section.to_uppercase(),
                        key.to_uppercase()
                    ));
                    return;
                }
            },
            Some(toml::Value::Boolean(_)) => match raw.trim() {
                "1" | "true" | "yes" | "on" => toml::Value::Boolean(true),
                "0" | "false" | "no" | "off" => toml::Value::Boolean(false),
                _ => {
                    problems.push(format!(
                        "LATCHKEY_{}_{} must be true or false, got {raw:?}",
                        section.to_uppercase(),
                        key.to_uppercase()
                    ));
                    return;
                }
            },
            Some(toml::Value::Array(_)) => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
            _ => toml::Value::String(raw.to_owned()),
        };
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(t) = entry.as_table_mut() {
            t.insert(key.to_owned(), value);
        }
    };
    if let Some((_, token)) = env.iter().find(|(k, _)| k == "CONFIGPROXY_AUTH_TOKEN") {
        set("api", "token", token, &mut problems);
    }
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("LATCHKEY_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some((section, key)) = rest.split_once('_') else {
            continue;
        };
        if !SECTIONS.contains(&section) {
            continue;
        }
        if let Some(secret_key) = key.strip_suffix("_file") {
            match std::fs::read_to_string(value) {
                Ok(s) => set(
                    section,
                    secret_key,
                    s.trim_end_matches(['\n', '\r']),
                    &mut problems,
                ),
                Err(e) => problems.push(format!("{name}: cannot read {value}: {e}")),
            }
        } else {
            set(section, key, value, &mut problems);
        }
    }
    problems
}

impl RawConfig {
    fn check(self) -> Result<Config, Vec<String>> {
        let mut problems = vec![];
        let addr = |what: &str, s: &str, problems: &mut Vec<String>| {
            s.parse::<SocketAddr>().unwrap_or_else(|_| {
                problems.push(format!(
                    "{what} = {s:?} is not an address like \"127.0.0.1:8000\""
                ));
                SocketAddr::from(([127, 0, 0, 1], 0))
            })
        };
        let listen = addr("server.listen", &self.server.listen, &mut problems);
        let api_listen = addr("api.listen", &self.api.listen, &mut problems);

        let public_url = self.server.public_url.as_deref().map(|u| {
            let trimmed = u.trim_end_matches('/');
            let ok = http_url(trimmed)
                .is_some_and(|uri| uri.path_and_query().is_none_or(|p| p.as_str() == "/"));
            if !ok {
                problems.push(format!(
                    "server.public_url = {u:?} must be like \"https://share.example.org\" (scheme and host, no path)"
                ));
            }
            trimmed.to_owned()
        });

        let hosts = self.server.user_domain.as_deref().and_then(|domain| {
            if !crate::hosts::valid_domain(domain) {
                problems.push(format!(
                    "server.user_domain = {domain:?} must be a domain like \"lab.example.org\" (each user's servers at <user>.lab.example.org) or \"localhost\""
                ));
                return None;
            }
            match public_url.as_deref() {
                Some(u) => {
                    let hosts = crate::hosts::UserHosts::new(u, domain)?;
                    // latchkey's host may be the domain itself or any host outside it, not one
                    // that is a user's host too.
                    if hosts.main_is_a_user_host() {
                        problems.push(format!(
                            "server.public_url = {u:?} names a host inside server.user_domain = {domain:?}: use the domain itself (or a host outside it) for latchkey's pages"
                        ));
                        return None;
                    }
                    Some(hosts)
                }
                None => {
                    problems.push(
                        "server.user_domain needs server.public_url (latchkey's own host)".into(),
                    );
                    None
                }
            }
        });

        let tls = match (&self.server.tls_cert, &self.server.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                for (what, p) in [("server.tls_cert", cert), ("server.tls_key", key)] {
                    if !Path::new(p).is_file() {
                        problems.push(format!("{what} = {p:?}: no such file"));
                    }
                }
                Some(TlsFiles {
                    cert: cert.into(),
                    key: key.into(),
                })
            }
            _ => {
                problems.push("server.tls_cert and server.tls_key must be set together".into());
                None
            }
        };

        if self.server.tls_reload_interval == 0 {
            problems.push("server.tls_reload_interval must be at least 1 second".into());
        }
        let http_redirect_listen = self.server.http_redirect_listen.as_deref().map(|a| {
            if tls.is_none() {
                problems.push(
                    "server.http_redirect_listen needs server.tls_cert and server.tls_key".into(),
                );
            }
            addr("server.http_redirect_listen", a, &mut problems)
        });
        let upstream_ca = match self.server.upstream_ca.as_deref() {
            None => vec![],
            Some(p) => crate::tls::read_certificates(Path::new(p)).unwrap_or_else(|e| {
                problems.push(format!("server.upstream_ca: {e}"));
                vec![]
            }),
        };

        let trusted_proxies: Vec<IpAddr> = self
            .server
            .trusted_proxies
            .iter()
            .filter_map(|p| match p.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    problems.push(format!(
                        "server.trusted_proxies: {p:?} is not an IP address"
                    ));
                    None
                }
            })
            .collect();

        if self.server.upstream_timeout == 0 {
            problems.push("server.upstream_timeout must be at least 1 second".into());
        }
        if self.server.session_max_age < 60 {
            problems.push("server.session_max_age must be at least 60 seconds".into());
        }
        let hub_prefix = self.server.hub_prefix.clone();
        if !(hub_prefix.len() >= 3
            && hub_prefix.starts_with('/')
            && hub_prefix.ends_with('/')
            && hub_prefix[1..hub_prefix.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            problems.push(format!(
                "server.hub_prefix = {hub_prefix:?} must be one path segment like \"/hub/\" or \"/latchkey/\""
            ));
        }
        if self.server.max_body < 1024 {
            problems.push("server.max_body must be at least 1024 bytes".into());
        }

        let api_token = match self.api.token.as_deref().map(str::trim) {
            Some(t) if t.len() >= 16 => t.to_owned(),
            Some(_) => {
                problems.push("api.token must be at least 16 characters".into());
                String::new()
            }
            None => {
                problems.push(
                    "api.token is required (or set CONFIGPROXY_AUTH_TOKEN or LATCHKEY_API_TOKEN)"
                        .into(),
                );
                String::new()
            }
        };

        let url = self.store.url.trim().to_owned();
        if !(url == "memory://"
            || url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("redis+unix://")
            || url.starts_with("redis+sentinel://")
            || url.starts_with("redis+cluster://")
            || url.starts_with("unix://"))
        {
            problems.push(format!(
                "store.url = {url:?} must be \"memory://\", redis://, rediss://, redis+sentinel:// or redis+cluster://"
            ));
        }

        if self.store.timeout_ms < 10 || self.store.timeout_ms > 60_000 {
            problems.push("store.timeout_ms must be between 10 and 60000".into());
        }
        if self.store.max_staleness == 0 {
            problems.push("store.max_staleness must be at least 1 second".into());
        }
        let s = &self.sharing;
        if s.min_expires_in == 0 {
            problems.push("sharing.min_expires_in must be at least 1 second".into());
        }
        if !(s.min_expires_in <= s.default_expires_in && s.default_expires_in <= s.max_expires_in) {
            problems.push(format!(
                "sharing: need min_expires_in ({}) <= default_expires_in ({}) <= max_expires_in ({})",
                s.min_expires_in, s.default_expires_in, s.max_expires_in
            ));
        }
        if self.login.max_failures == 0 || self.login.failure_window == 0 {
            problems.push("login.max_failures and login.failure_window must be positive".into());
        }

        let mut routes = vec![];
        for (i, r) in self.routes.iter().enumerate() {
            let path = match crate::routes::normalize_path(&r.path) {
                Ok(p) => p,
                Err(e) => {
                    problems.push(format!("routes[{i}]: {e}"));
                    continue;
                }
            };
            let mut data = serde_json::Map::new();
            data.insert("target".into(), r.target.clone().into());
            if let Some(u) = &r.user {
                data.insert("user".into(), u.clone().into());
                data.insert("server_name".into(), r.server_name.clone().into());
            }
            if !r.upstream_headers.is_empty() {
                data.insert(
                    "upstream_headers".into(),
                    serde_json::to_value(&r.upstream_headers).unwrap_or_default(),
                );
            }
            if r.strip_prefix {
                data.insert("strip_prefix".into(), true.into());
            }
            if let Some(s) = &r.session {
                data.insert("session".into(), s.clone().into());
            }
            match crate::routes::RouteSpec::from_data(&path, &data) {
                Ok(_) => routes.push((path, data)),
                Err(e) => problems.push(format!("routes[{i}] ({path}): {e}")),
            }
        }

        let mut seen = HashSet::new();
        let mut users = vec![];
        for (i, u) in self.users.iter().enumerate() {
            let name = match UserName::parse(&u.name) {
                Ok(n) => n,
                Err(e) => {
                    problems.push(format!("users[{i}]: {e}"));
                    continue;
                }
            };
            if !seen.insert(name.clone()) {
                problems.push(format!("users[{i}]: user {name} is listed twice"));
            }
            if !crate::auth::password::is_valid_hash(&u.password_hash) {
                problems.push(format!(
                    "users[{i}] ({name}): password_hash is not an argon2 PHC string latchkey can check (at most {} MiB, {} passes and {} lanes per check); make one with `latchkey hash-password`",
                    crate::auth::password::MAX_MEMORY_KIB / 1024,
                    crate::auth::password::MAX_PASSES,
                    crate::auth::password::MAX_LANES
                ));
            }
            let mut groups = vec![];
            for g in &u.groups {
                match GroupName::parse(g) {
                    Ok(g) => groups.push(g),
                    Err(e) => problems.push(format!("users[{i}] ({name}): {e}")),
                }
            }
            users.push(UserConfig {
                name,
                password_hash: u.password_hash.clone(),
                groups,
            });
        }

        let oidc = self.oidc.check(
            public_url.as_deref(),
            &hub_prefix,
            self.server.session_max_age,
            &mut problems,
        );

        let trusted_header = self
            .trusted_header
            .check(!trusted_proxies.is_empty(), &mut problems);

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            listen,
            public_url,
            tls,
            tls_reload_interval: std::time::Duration::from_secs(self.server.tls_reload_interval),
            http_redirect_listen,
            upstream_ca,
            shutdown_delay: std::time::Duration::from_secs(self.server.shutdown_delay),
            trusted_proxies,
            upstream_timeout: std::time::Duration::from_secs(self.server.upstream_timeout),
            session_max_age: self.server.session_max_age,
            max_body: self.server.max_body,
            hub_prefix,
            hosts,
            api_listen,
            api_token,
            store_url: url,
            store_timeout: std::time::Duration::from_millis(self.store.timeout_ms),
            max_staleness: std::time::Duration::from_secs(self.store.max_staleness),
            sharing: SharingLimits {
                enabled: s.enabled,
                default_expires_in: s.default_expires_in,
                min_expires_in: s.min_expires_in,
                max_expires_in: s.max_expires_in,
            },
            max_failures: self.login.max_failures,
            failure_window: self.login.failure_window,
            users,
            oidc,
            trusted_header,
            routes,
        })
    }
}

/// A sign-out URL is absolute, http(s), and fits in a `Location` header.
/// An absolute `http://` or `https://` URL with a host.
fn http_url(url: &str) -> Option<http::Uri> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return None;
    }
    url.parse::<http::Uri>().ok().filter(|u| u.host().is_some())
}

/// A problem unless `url` is an absolute http(s) URL (and so fits in a `Location` header).
fn check_url(key: &str, url: &str, example: &str, problems: &mut Vec<String>) {
    if http_url(url).is_none() {
        problems.push(format!("{key} = {url:?} must be a URL like \"{example}\""));
    }
}

impl RawTrustedHeader {
    fn check(self, have_proxies: bool, problems: &mut Vec<String>) -> Option<TrustedHeaderConfig> {
        let user = self.user?.to_ascii_lowercase();
        // Only names latchkey already removes from every request it forwards: the proxy's
        // header must never reach an upstream, whoever sent it.
        let named = |key: &str, name: &str, problems: &mut Vec<String>| {
            if !crate::proxy::headers::TRUSTED_HEADER_NAMES.contains(&name) {
                problems.push(format!(
                    "trusted_header.{key} = {name:?} is not a header latchkey removes before forwarding; use one of {}",
                    crate::proxy::headers::TRUSTED_HEADER_NAMES.join(", ")
                ));
            }
        };
        named("user", &user, problems);
        let groups = self.groups.map(|g| g.to_ascii_lowercase());
        if let Some(g) = &groups {
            named("groups", g, problems);
        }
        if !have_proxies {
            problems.push(
                "trusted_header needs server.trusted_proxies: the addresses of the proxy that sets the header (from anyone else it is ignored)".into(),
            );
        }
        if let Some(url) = &self.logout_url {
            check_url(
                "trusted_header.logout_url",
                url,
                "https://share.example.org/oauth2/sign_out",
                problems,
            );
        }
        Some(TrustedHeaderConfig {
            user,
            groups,
            logout_url: self.logout_url,
            proxy_cookies: self
                .proxy_cookies
                .into_iter()
                .filter(|c| !c.is_empty())
                .collect(),
        })
    }
}

impl RawOidc {
    fn check(
        self,
        public_url: Option<&str>,
        hub_prefix: &str,
        session_max_age: u64,
        problems: &mut Vec<String>,
    ) -> Option<OidcConfig> {
        // As the provider writes it (a trailing slash included): discovery checks that the
        // provider's metadata names exactly this issuer.
        let Some(issuer) = self.issuer else {
            if !self.client_id.is_empty() {
                problems.push(
                    "oidc.client_id is set but oidc.issuer is not: OpenID Connect sign-in needs both".into(),
                );
            }
            return None;
        };
        check_url(
            "oidc.issuer",
            &issuer,
            "https://id.example.org/realms/lab",
            problems,
        );
        if self.client_id.is_empty() {
            problems.push("oidc.client_id is required with oidc.issuer".into());
        }
        let redirect_url = match (self.redirect_url, public_url) {
            (Some(u), _) => {
                check_url(
                    "oidc.redirect_url",
                    &u,
                    "https://share.example.org/hub/oauth_callback",
                    problems,
                );
                u
            }
            // (The prefix is checked above: "/name/".)
            (None, Some(base)) => format!("{base}{hub_prefix}oauth_callback"),
            (None, None) => {
                problems.push(
                    "oidc.redirect_url (or server.public_url) is required with oidc.issuer: the provider must know where to send the browser back".into(),
                );
                String::new()
            }
        };
        if self.username_claim.is_empty() {
            problems
                .push("oidc.username_claim must name a claim, e.g. \"preferred_username\"".into());
        }
        let mut allowed_groups = vec![];
        for g in &self.allowed_groups {
            match GroupName::parse(g) {
                Ok(g) => allowed_groups.push(g),
                Err(e) => problems.push(format!("oidc.allowed_groups: {e}")),
            }
        }
        if !allowed_groups.is_empty() && self.groups_claim.is_empty() {
            problems.push(
                "oidc.allowed_groups needs oidc.groups_claim (the claim the groups are read from)"
                    .into(),
            );
        }
        if let Some(url) = &self.logout_url {
            check_url(
                "oidc.logout_url",
                url,
                "https://id.example.org/logout",
                problems,
            );
        }
        Some(OidcConfig {
            issuer,
            client_id: self.client_id,
            client_secret: self.client_secret.filter(|s| !s.is_empty()),
            redirect_url,
            scopes: self
                .scopes
                .into_iter()
                .filter(|s| !s.is_empty() && s != "openid")
                .collect(),
            username_claim: self.username_claim,
            groups_claim: Some(self.groups_claim).filter(|c| !c.is_empty()),
            allowed_groups,
            display_name: self.display_name,
            session_max_age: self.session_max_age.min(session_max_age),
            logout_url: self.logout_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_only_a_token() {
        let c = Config::from_sources("[api]\ntoken = \"0123456789abcdef\"\n", &[]).unwrap();
        assert_eq!(c.listen.port(), 8000);
        assert_eq!(c.api_listen.port(), 8001);
        assert_eq!(c.store_url, "memory://");
        assert_eq!(c.sharing.default_expires_in, 3600);
    }

    #[test]
    fn environment_overrides_the_file_with_typed_values() {
        let c = Config::from_sources(
            "[api]\ntoken = \"0123456789abcdef\"\n[sharing]\nmin_expires_in = 10\n",
            &env(&[
                ("LATCHKEY_SERVER_LISTEN", "127.0.0.1:9000"),
                ("LATCHKEY_SHARING_MAX_EXPIRES_IN", "7200"),
                ("CONFIGPROXY_AUTH_TOKEN", "fromchpenvironment"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.sharing.max_expires_in, 7200);
        assert_eq!(c.sharing.min_expires_in, 10);
        assert_eq!(c.api_token, "fromchpenvironment");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [server]
            listen = "nowhere"
            [store]
            url = "postgres://x"
            [sharing]
            min_expires_in = 100
            default_expires_in = 50
            [[users]]
            name = "-bad"
            password_hash = "plain"
        "#;
        let problems = Config::from_sources(text, &[]).unwrap_err();
        let all = problems.join("\n");
        for needle in [
            "server.listen",
            "api.token",
            "store.url",
            "min_expires_in",
            "users[0]",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
    }

    #[test]
    fn oidc_is_off_by_default_and_checked_when_on() {
        let token = "[api]\ntoken = \"0123456789abcdef\"\n";
        assert!(Config::from_sources(token, &[]).unwrap().oidc.is_none());
        let problems = Config::from_sources(&format!("{token}[oidc]\nclient_id = \"x\"\n"), &[])
            .unwrap_err()
            .join("\n");
        assert!(problems.contains("oidc.issuer is not"), "{problems}");

        let problems = Config::from_sources(
            &format!("{token}[oidc]\nissuer = \"id.example.org\"\nallowed_groups = [\"lab\"]\ngroups_claim = \"\"\n"),
            &[],
        )
        .unwrap_err()
        .join("\n");
        for needle in [
            "oidc.issuer",
            "oidc.client_id is required",
            "oidc.redirect_url (or server.public_url)",
            "oidc.allowed_groups needs oidc.groups_claim",
        ] {
            assert!(
                problems.contains(needle),
                "{needle} missing from {problems}"
            );
        }

        // The callback is under the public URL and hub prefix; the secret may come from a
        // file named in the environment; "openid" is always asked for, not listed twice.
        let dir = std::env::temp_dir().join(format!("latchkey-oidc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let c = Config::from_sources(
            &format!(
                "{token}[server]\npublic_url = \"https://share.example.org/\"\nhub_prefix = \"/latchkey/\"\n[oidc]\nissuer = \"https://id.example.org/realms/lab/\"\nclient_id = \"latchkey\"\nscopes = [\"openid\", \"email\"]\n"
            ),
            &env(&[("LATCHKEY_OIDC_CLIENT_SECRET_FILE", secret.to_str().unwrap())]),
        )
        .unwrap();
        let o = c.oidc.unwrap();
        assert_eq!(
            o.issuer, "https://id.example.org/realms/lab/",
            "exactly as written"
        );
        assert_eq!(o.session_max_age, 86_400);
        assert_eq!(
            o.redirect_url,
            "https://share.example.org/latchkey/oauth_callback"
        );
        assert_eq!(o.client_secret.as_deref(), Some("s3cret"));
        assert_eq!(o.scopes, ["email"]);
        assert_eq!(o.username_claim, "preferred_username");
        assert_eq!(o.groups_claim.as_deref(), Some("groups"));
        assert!(
            !format!("{o:?}").contains("s3cret"),
            "the secret is not in Debug"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_trusted_header_needs_trusted_proxies_and_a_header_that_is_stripped() {
        let token = "[api]\ntoken = \"0123456789abcdef\"\n";
        let problems = Config::from_sources(
            &format!("{token}[trusted_header]\nuser = \"X-User\"\ngroups = \"Remote-Groups\"\nlogout_url = \"/oauth2/sign_out\"\n"),
            &[],
        )
        .unwrap_err()
        .join("\n");
        assert!(
            problems.contains("trusted_header.user = \"x-user\" is not a header latchkey removes"),
            "{problems}"
        );
        assert!(!problems.contains("trusted_header.groups"), "{problems}");
        assert!(
            problems.contains("trusted_header.logout_url")
                && problems.contains("needs server.trusted_proxies"),
            "{problems}"
        );
        let c = Config::from_sources(
            &format!("{token}[server]\ntrusted_proxies = [\"10.0.0.5\"]\n[trusted_header]\nuser = \"Remote-User\"\n"),
            &[],
        )
        .unwrap();
        let th = c.trusted_header.unwrap();
        assert_eq!(th.user, "remote-user");
        assert_eq!(th.groups, None);
    }

    #[test]
    fn host_based_routing_needs_a_domain_and_the_public_url() {
        let token = "[api]\ntoken = \"0123456789abcdef\"\n";
        let problems = Config::from_sources(
            &format!("[server]\nuser_domain = \"lab.test\"\n{token}"),
            &[],
        )
        .unwrap_err();
        assert!(problems.join(" ").contains("needs server.public_url"));
        let overlap = Config::from_sources(
            &format!("[server]\npublic_url = \"https://hub.lab.test\"\nuser_domain = \"lab.test\"\n{token}"),
            &[],
        )
        .unwrap_err();
        assert!(
            overlap.join(" ").contains("names a host inside"),
            "{overlap:?}"
        );
        for bad in [
            "lab",
            "lab..test",
            "lab_x.test",
            "*.lab.test",
            "-lab.test",
            "lab-.test",
        ] {
            let problems = Config::from_sources(
                &format!(
                    "[server]\npublic_url = \"https://lab.test\"\nuser_domain = \"{bad}\"\n{token}"
                ),
                &[],
            )
            .unwrap_err();
            assert!(problems.join(" ").contains("server.user_domain"), "{bad}");
        }
        let c = Config::from_sources(
            &format!("[server]\npublic_url = \"https://lab.test:8443\"\nuser_domain = \"Lab.Test\"\n{token}"),
            &[],
        )
        .unwrap();
        let hosts = c.hosts.expect("host-based routing on");
        assert_eq!(hosts.user_origin("john"), "https://john.lab.test:8443");
        assert!(Config::from_sources(token, &[]).unwrap().hosts.is_none());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let problems = Config::from_sources("[server]\nlisten_addr = \"x\"\n", &[]).unwrap_err();
        assert!(problems.join(" ").contains("listen_addr"));
    }

    #[test]
    fn a_non_number_in_a_number_variable_is_a_problem() {
        let problems = Config::from_sources(
            "[api]\ntoken = \"0123456789abcdef\"\n",
            &env(&[("LATCHKEY_SHARING_MAX_EXPIRES_IN", "soon")]),
        )
        .unwrap_err();
        assert!(problems[0].contains("LATCHKEY_SHARING_MAX_EXPIRES_IN"));
    }
}
