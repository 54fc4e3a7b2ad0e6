//! `App::handle`: the whole request flow of the public listener in one place.
//!
//! accept -> reserved path? (pages, API, health) -> route lookup -> who is calling -> pure access
//! decision -> forward.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, Method, Request, Response, header};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use crate::auth::cookies::{self, CookiePolicy};
use crate::auth::oidc::Oidc;
use crate::auth::ratelimit::{FailureLimiter, SignInLimit};
use crate::auth::{Credential, Identity, Users};
use crate::cache::Cache;
use crate::clock;
use crate::config::Config;
use crate::connections::{Connections, OpenConnection, Registrar, Registration};
use crate::error::{Error, Result};
use crate::hosts::Site;
use crate::http_util::{self, Body, Fields};
use crate::ids::{GroupName, ServerRef, UserName};
use crate::paths;
use crate::proxy::{self, UpstreamClient, headers::Forwarding};
use crate::routes::Route;
use crate::secret::{self, Secret, TokenHash};
use crate::sharing::access::{self, Decision, RequestKind, Standing};
use crate::store::{ServerGrants, Store, StoreEvent, UserRecord};

/// Shared state of one latchkey instance.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub users: Users,
    /// Sign-in through an OpenID Connect provider, when configured.
    pub oidc: Option<Oidc>,
    /// The Content-Security-Policy of latchkey's pages.
    pub page_policy: http::HeaderValue,
    pub cache: Cache,
    pub connections: Arc<Connections>,
    pub client: UpstreamClient,
    /// Idle keep-alive connections of latchkey's own HTTP/1.1 path.
    pub pool: crate::h1::Pool,
    /// Failed invite codes per client, on this instance.
    pub limiter: FailureLimiter,
    /// Failed sign-ins per client, on the store (shared by every instance).
    pub sign_ins: SignInLimit,
    /// Password checks of sign-ins, a few at a time.
    pub password_checks: crate::auth::password::Checks,
    pub cookies: CookiePolicy,
    /// Where latchkey's pages and API live for clients.
    pub hub: paths::HubPrefix,
    /// Upgraded connections (WebSockets), which hyper's graceful shutdown does not see.
    pub tracker: TaskTracker,
    pub metrics: crate::metrics::Metrics,
    /// Set when shutdown starts: readiness answers 503 from then on.
    pub draining: std::sync::atomic::AtomicBool,
}

/// Per-request facts every handler may need.
pub struct Ctx {
    pub request_id: String,
    /// The client's address (after trusted proxies).
    pub client_ip: IpAddr,
    /// The same, as text: for the forwarding header and the access line.
    pub client_ip_text: http_util::IpText,
    pub peer: SocketAddr,
    /// The peer is one of `trusted_proxies`: its forwarding headers are believed.
    pub trusted_peer: bool,
    pub tls: bool,
    /// [`Connections::sweeps`] when the request began, before its access check.
    pub sweeps_seen: u64,
}

/// What is known about a request from its start: for the access line, the metrics and error
/// rendering.
pub struct Begun {
    pub ctx: Ctx,
    started: Instant,
    method: Method,
    /// The request's URI (a cheap copy: it shares the request's bytes).
    uri: http::Uri,
    internal: Option<String>,
    class: crate::metrics::Class,
}

/// What the proxy path makes of a request.
pub enum Proxied {
    /// Answered by latchkey itself (the redirect from `/`).
    Answer(Response<Body>),
    /// Allowed: the headers are rewritten, forward it.
    Forward(Prepared),
}

/// An allowed request, ready to forward.
pub struct Prepared {
    pub route: Arc<Route>,
    pub websocket: bool,
    /// Who is calling (None on an unguarded route).
    caller: Option<Caller>,
    /// The caller's role on a guarded route.
    role: Option<&'static str>,
    /// `Authorization` is a credential the upstream must not see: the caller signed in with an
    /// API token, or was named by the sign-in proxy in front (which may pass its own).
    drop_authorization: bool,
    /// With `[trusted_header]`: the sign-in proxy's cookies, removed like latchkey's.
    proxy_cookies: Option<Arc<[String]>>,
    /// [`Ctx::sweeps_seen`].
    sweeps_seen: u64,
}

impl Prepared {
    /// What the upstream is told: the input of the header rewriting.
    pub fn forwarding<'a>(&'a self, ctx: &'a Ctx, authority: Option<&'a str>) -> Forwarding<'a> {
        Forwarding {
            client_ip: ctx.client_ip_text.as_str(),
            peer: ctx.peer.ip(),
            trust_forwarded: ctx.trusted_peer,
            proto: if ctx.tls { "https" } else { "http" },
            authority,
            user: self.caller.as_ref().map(|c| c.identity.name.as_str()),
            role: self.role,
            request_id: &ctx.request_id,
            drop_authorization: self.drop_authorization,
            drop_cookies: self.proxy_cookies.as_deref().unwrap_or(&[]),
            upstream_headers: &self.route.upstream_headers,
            websocket: self.websocket,
        }
    }

    /// For guarded routes: how to register a WebSocket or a streamed answer, so that
    /// revocation can close it. Built only when one is opened.
    pub fn registrar(&self, app: &App) -> Option<Registrar> {
        let server = self.route.server.as_ref()?;
        let caller = self.caller.as_ref()?;
        Some(Registrar {
            registry: app.connections.clone(),
            server: server.clone(),
            route: self.route.clone(),
            user: caller.identity.name.clone(),
            login: caller.login,
            expires: caller.expires,
            token: caller.token,
            sweeps_seen: self.sweeps_seen,
        })
    }
}

/// The session cookie that signed in a connection's last request, and its hash: a browser sends
/// the same cookie with every request on a connection, and hashing it was the costliest step of
/// telling who is calling.
#[derive(Default)]
pub struct SessionMemo {
    last: String,
    hash: Option<TokenHash>,
}

impl SessionMemo {
    /// The hash of a session id: remembered when it is the connection's last signed-in one.
    fn hash_of(&self, id: &str) -> TokenHash {
        match self.hash {
            Some(hash) if secret::constant_time_eq(self.last.as_bytes(), id.as_bytes()) => hash,
            _ => TokenHash::of(id),
        }
    }

    /// Remembers the id that signed the request in (not one that was tried and failed, which
    /// would make the two take turns).
    fn remember(&mut self, id: &str, hash: TokenHash) {
        if self.hash != Some(hash) {
            self.last.clear();
            self.last.push_str(id);
            self.hash = Some(hash);
        }
    }
}

/// Someone who proved who they are.
#[derive(Clone, Debug)]
pub struct Caller {
    pub identity: Arc<Identity>,
    pub credential: Credential,
    /// The hashed sign-in session id, when signed in with the cookie.
    pub login: Option<TokenHash>,
    /// When that sign-in session, or the API token, ends by itself.
    pub expires: Option<crate::clock::Timestamp>,
    /// The hashed API token, when called with one.
    pub token: Option<TokenHash>,
}

/// The answer on a host that is neither latchkey's nor a user's (host-based routing).
const NOT_SERVED_HERE: &str = "Nothing is served at this address.";

impl App {
    pub async fn new(config: Config, store: Arc<dyn Store>) -> Arc<App> {
        if config.hosts.is_some()
            && config
                .public_url
                .as_deref()
                .and_then(|u| u.parse::<http::Uri>().ok())
                .is_some_and(|u| u.scheme_str() == Some("http") && u.host() != Some("localhost"))
        {
            tracing::warn!(
                "host-based routing over plain http: a page on one user's host can set cookies for the whole domain; serve it over https"
            );
        }
        let metrics = crate::metrics::Metrics::new();
        let store = crate::store::metered::wrap(store, &metrics.store);
        let app = Arc::new(App {
            cache: Cache::new(config.max_staleness),
            users: Users::new(&config.users),
            page_policy: crate::web::page_policy(&config),
            oidc: config.oidc.clone().and_then(|c| {
                Oidc::new(c)
                    .map_err(|e| tracing::error!(error = %e, "OpenID Connect sign-in is off"))
                    .ok()
            }),
            cookies: CookiePolicy {
                secure: config.secure_cookies(),
                max_age: config.session_max_age,
                xsrf_path: config.hub_prefix.clone(),
            },
            hub: paths::HubPrefix::new(&config.hub_prefix),
            limiter: FailureLimiter::new(config.max_failures, config.failure_window),
            sign_ins: SignInLimit {
                max: config.max_failures,
                window: config.failure_window,
            },
            password_checks: crate::auth::password::Checks::per_core(),
            client: proxy::client(&config.upstream_ca),
            pool: Default::default(),
            config,
            store,
            connections: Arc::default(),
            tracker: TaskTracker::new(),
            metrics,
            draining: Default::default(),
        });
        for (path, data) in app.config.routes.clone() {
            if let Err(e) = crate::api::routes::register(&app, path.clone(), data).await {
                tracing::error!(%path, error = %e, "could not register a route of the config file");
            }
        }
        if let Err(e) = app.cache.reload_routes(app.store.as_ref()).await {
            tracing::warn!(error = %e, "could not load routes at start; will retry");
        }
        if let Ok(rev) = app.store.revision().await {
            app.cache.reset_announced(rev);
        }
        app
    }

    /// Answers one request on the public listener. Never fails: errors are rendered here.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Response<Body> {
        let begun = self.begin(req.method(), req.uri(), req.headers(), peer, tls);
        let json = http_util::wants_json(
            req.headers(),
            begun.internal.as_deref().unwrap_or(begun.uri.path()),
        );
        // An error page names who is signed in: keep the cookies for it (shared bytes), and the
        // host (a user's host has sign-ins of its own), as dispatch takes the request.
        let cookies = if json {
            Cookies::default()
        } else {
            Cookies {
                cookies: req
                    .headers()
                    .get_all(header::COOKIE)
                    .iter()
                    .cloned()
                    .collect(),
                host: self.config.hosts.as_ref().and_then(|_| {
                    crate::hosts::authority(req.uri(), req.headers())
                        .and_then(|a| http::HeaderValue::from_str(a).ok())
                }),
            }
        };
        let result = self.dispatch(req, begun.internal.clone(), &begun.ctx).await;
        let own_page = begun.internal.is_some();
        let resp = self
            .answer(&begun, result, &cookies, own_page, || json)
            .await;
        self.log_access(&begun, resp.status());
        resp
    }

    /// What every request starts with: its id, the client's address, its class.
    pub fn begin(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &impl Fields,
        peer: SocketAddr,
        tls: bool,
    ) -> Begun {
        let mut begun = self.begin_proxied(method, uri, headers, peer, tls);
        begun.internal = self.hub.internal(uri.path());
        begun.class = crate::metrics::Class::of_public(uri.path(), begun.internal.as_deref());
        begun
    }

    /// [`begin`](Self::begin) for a request already known to go to an upstream (latchkey's own
    /// HTTP/1.1 path has asked [`plain_route`](Self::plain_route)).
    pub fn begin_proxied(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &impl Fields,
        peer: SocketAddr,
        tls: bool,
    ) -> Begun {
        let trusted_peer = self.config.trusted_proxies.contains(&peer.ip());
        let client_ip = if trusted_peer {
            forwarded_client(headers).unwrap_or(peer.ip())
        } else {
            peer.ip()
        };
        Begun {
            started: Instant::now(),
            ctx: Ctx {
                request_id: secret::random_id(),
                client_ip,
                client_ip_text: http_util::IpText::new(client_ip),
                peer,
                trusted_peer,
                tls,
                sweeps_seen: self.connections.sweeps(),
            },
            method: method.clone(),
            class: crate::metrics::Class::Proxy,
            internal: None,
            uri: uri.clone(),
        }
    }

    /// The response for a handler's result: errors rendered as an HTML page or JSON (as
    /// `json` says), and the request id on every answer. An error page names who is signed in
    /// with the session cookie among `fields`; `own_page`: the request was for latchkey's own
    /// pages, where the XSRF cookie (for the page's Sign out) belongs.
    pub async fn answer(
        &self,
        begun: &Begun,
        result: Result<Response<Body>>,
        fields: &impl Fields,
        own_page: bool,
        json: impl FnOnce() -> bool,
    ) -> Response<Body> {
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                if e.status().is_server_error() {
                    tracing::warn!(request_id = %begun.ctx.request_id, error = %e, "request failed");
                }
                let json = json();
                let viewer = match json {
                    false => {
                        self.viewer(fields, &e, own_page, begun.ctx.trusted_peer)
                            .await
                    }
                    true => None,
                };
                let mut resp = e.render_with_prefix(
                    &begun.ctx.request_id,
                    json,
                    self.hub.as_str(),
                    viewer.as_ref(),
                );
                // After a malformed request, the rest of the connection cannot be trusted.
                if e.status() == http::StatusCode::BAD_REQUEST {
                    resp.headers_mut()
                        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                }
                resp
            }
        };
        if let Ok(v) = http::HeaderValue::from_str(&begun.ctx.request_id) {
            resp.headers_mut().entry("x-request-id").or_insert(v);
        }
        resp
    }

    /// The access line and the request metrics, once the status is known.
    pub fn log_access(&self, begun: &Begun, status: http::StatusCode) {
        // Never the query string, which may carry codes or upstream tokens.
        let took = begun.started.elapsed();
        let line = crate::logging::AccessLine {
            request_id: &begun.ctx.request_id,
            client: begun.ctx.client_ip_text.as_str(),
            method: begun.method.as_str(),
            path: begun.uri.path(),
            status: status.as_u16(),
            ms: took.as_secs_f64() * 1000.0,
        };
        if !line.write() {
            tracing::info!(
                target: "latchkey::access",
                request_id = line.request_id,
                client = line.client,
                method = line.method,
                path = line.path,
                status = line.status,
                ms = line.ms,
            );
        }
        self.metrics.request(begun.class, status, took);
    }

    /// Checks that hold for every request on the public listener, whoever answers it.
    fn check_request(parts_uri: &http::Uri, headers: &HeaderMap) -> Result<()> {
        proxy::check_path(parts_uri.path())?;
        proxy::check_uri_length(parts_uri)?;
        if let Some(name) = headers
            .keys()
            .find(|n| proxy::headers::aliases_identity_header(n))
        {
            return Err(Error::bad_request(format!(
                "The header {name} is not allowed: it could be read as an identity header."
            )));
        }
        for once in [header::HOST, header::AUTHORIZATION] {
            if headers.get_all(&once).iter().nth(1).is_some() {
                return Err(Error::bad_request(format!(
                    "The header {once} may appear only once."
                )));
            }
        }
        Ok(())
    }

    async fn dispatch(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        internal: Option<String>,
        ctx: &Ctx,
    ) -> Result<Response<Body>> {
        Self::check_request(req.uri(), req.headers())?;
        let path = req.uri().path();
        if let Some(resp) = crate::health::answer(self, path).await {
            return Ok(resp);
        }
        if let Some(internal) = internal {
            let site = self.site(req.uri(), req.headers());
            // Handlers see internal "/hub/..." paths whatever the configured prefix.
            let pq = match req.uri().query() {
                Some(q) => format!("{internal}?{q}"),
                None => internal.clone(),
            };
            *req.uri_mut() = pq
                .parse()
                .map_err(|_| Error::bad_request("The request path is not valid."))?;
            return match site {
                Site::Main if internal.starts_with(paths::API) => {
                    crate::api::handle(self, req, ctx).await
                }
                Site::Main => crate::web::handle(self, req, ctx).await,
                Site::User(label) => crate::web::on_user_host(self, req, &label).await,
                Site::Unknown => Err(Error::NotFound(NOT_SERVED_HERE.into())),
            };
        }
        let (mut parts, body) = req.into_parts();
        let proxied = self
            .prepare_proxy(&parts.method, &parts.uri, &parts.headers, ctx, None, None)
            .await?;
        match proxied {
            Proxied::Answer(resp) => Ok(resp),
            Proxied::Forward(p) => {
                let authority = parts.uri.authority().map(|a| a.as_str());
                proxy::headers::prepare_request(&mut parts.headers, &p.forwarding(ctx, authority));
                let uri = proxy::upstream_uri(&p.route, parts.uri.path(), parts.uri.query())?;
                let registrar = p.registrar(self);
                let req = Request::from_parts(parts, body);
                proxy::forward(
                    req,
                    uri,
                    p.websocket,
                    proxy::Forward {
                        app: self,
                        route: p.route,
                        registrar,
                    },
                )
                .await
            }
        }
    }

    /// The route, when latchkey's own HTTP/1.1 path may answer a request for this path: a
    /// proxied route to a plain `http://` upstream, not a page, the API or a health check.
    /// Decided without side effects, before anything is counted or logged.
    pub fn plain_route(&self, path: &str) -> Option<Arc<Route>> {
        if self.hub.internal(path).is_some()
            || crate::health::is_health_path(path)
            || proxy::check_path(path).is_err()
        {
            return None;
        }
        self.cache
            .routes()
            .lookup(path)
            .filter(|r| r.target.scheme == http::uri::Scheme::HTTP)
            .cloned()
    }

    /// The proxy path up to forwarding: find the route (unless the caller has), identify the
    /// caller, decide, and rewrite the request headers for the upstream.
    pub async fn prepare_proxy(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &impl Fields,
        ctx: &Ctx,
        route: Option<Arc<Route>>,
        memo: Option<&mut SessionMemo>,
    ) -> Result<Proxied> {
        let route = route.or_else(|| self.cache.routes().lookup(uri.path()).cloned());
        let site = self.site(uri, headers);
        let Some(route) = route else {
            if uri.path() == "/" && site != Site::Unknown {
                let home = self.hub.external(paths::HOME);
                return Ok(Proxied::Answer(http_util::redirect(
                    &match &self.config.hosts {
                        Some(hosts) if site != Site::Main => {
                            format!("{}{home}", hosts.main_origin())
                        }
                        _ => home,
                    },
                )));
            }
            return Err(Error::NotFound(
                "No server is running at this address.".into(),
            ));
        };
        let websocket = is_websocket(headers);
        // With host-based routing a user's servers answer on their owner's host only, and
        // latchkey's own host sends a browser there.
        let mut user_host = None;
        if let Some(hosts) = &self.config.hosts {
            let owner = route
                .server
                .as_ref()
                .map(|s| crate::hosts::label(s.owner.as_str()));
            match (&site, owner) {
                (Site::Main, None) => {}
                (Site::User(label), Some(owner)) if *label == owner => {
                    user_host = Some(hosts.user_host(label));
                }
                (Site::Main | Site::User(_), Some(owner)) => {
                    let to = format!(
                        "{}{}",
                        hosts.user_origin(&owner),
                        uri.path_and_query().map_or("/", |p| p.as_str())
                    );
                    if !websocket && (*method == Method::GET || *method == Method::HEAD) {
                        return Ok(Proxied::Answer(http_util::redirect(&to)));
                    }
                    return Err(Error::NotFound(format!(
                        "This server is served at {}.",
                        hosts.user_origin(&owner)
                    )));
                }
                // A route that is no user's (a JupyterHub at "/"): on latchkey's host only;
                // a browser is sent there (JupyterLab's links to the hub, say).
                (Site::User(_), None)
                    if !websocket && (*method == Method::GET || *method == Method::HEAD) =>
                {
                    let to = format!(
                        "{}{}",
                        hosts.main_origin(),
                        uri.path_and_query().map_or("/", |p| p.as_str())
                    );
                    return Ok(Proxied::Answer(http_util::redirect(&to)));
                }
                _ => {
                    return Err(Error::NotFound(
                        "No server is running at this address.".into(),
                    ));
                }
            }
        }
        // A user's server at its bare path ("/user/john"): its pages' relative links need the
        // slash, as JupyterHub's redirect gives them.
        if route.server.is_some()
            && uri.path() == route.path
            && route.path != "/"
            && !websocket
            && (*method == Method::GET || *method == Method::HEAD)
        {
            let to = match uri.query() {
                Some(q) => format!("{}/?{q}", route.path),
                None => format!("{}/", route.path),
            };
            return Ok(Proxied::Answer(http_util::redirect(&to)));
        }
        let caller = self
            .identify_on(headers, ctx.trusted_peer, user_host.as_deref(), memo)
            .await?;

        let mut role = None;
        if let Some(server) = &route.server {
            let kind = RequestKind::new(method, websocket);
            let standing = self.decide(&route, server, caller.as_ref(), kind).await;
            let standing = match standing? {
                Decision::Allow(s) => s,
                Decision::NeedsLogin => {
                    return Err(self.needs_login(uri, headers, user_host.is_some()));
                }
                Decision::NotShared => {
                    let user = caller.as_ref().map(|c| &c.identity.name);
                    let reason = match user {
                        Some(u) => self.store.end_reason(server, u).await.unwrap_or(None),
                        None => None,
                    };
                    return Err(Error::NotShared {
                        server: server.label(),
                        reason,
                    });
                }
                Decision::ViewOnly => {
                    return Err(Error::ViewOnly {
                        server: server.label(),
                    });
                }
            };
            // Injected upstream credentials switch off the tool's own cross-site checks, so
            // latchkey makes them.
            if websocket || !kind.safe_method {
                let own = match (&site, &self.config.hosts) {
                    (Site::User(label), Some(hosts)) => Some(hosts.user_origin(label)),
                    _ => self.own_origin(headers, ctx.tls),
                };
                crate::auth::csrf::check_same_origin(
                    headers,
                    own.as_deref(),
                    uri.authority().map(|a| a.as_str()),
                )?;
            }
            role = Some(match standing {
                Standing::Owner => "owner",
                Standing::Grantee(r) => r.as_str(),
            });
        }

        let guarded = route.server.is_some();
        let drop_authorization = caller
            .as_ref()
            .is_some_and(|c| matches!(c.credential, Credential::Token | Credential::Proxy));
        Ok(Proxied::Forward(Prepared {
            route,
            websocket,
            caller: if guarded { caller } else { None },
            role,
            drop_authorization,
            proxy_cookies: self
                .config
                .trusted_header
                .as_ref()
                .map(|t| t.proxy_cookies.clone()),
            sweeps_seen: ctx.sweeps_seen,
        }))
    }

    /// The access decision for a guarded route. The owner needs no store; grantees are decided
    /// from cached grants, refreshed once if the cache belongs to another session.
    async fn decide(
        &self,
        route: &Route,
        server: &ServerRef,
        caller: Option<&Caller>,
        kind: RequestKind,
    ) -> Result<Decision> {
        let now = clock::now();
        let identity = caller.map(|c| &*c.identity);
        if identity.is_none_or(|i| i.name == server.owner) {
            return Ok(access::decide(&server.owner, identity, &[], kind, now));
        }
        let mut grants = self.cache.grants(self.store.as_ref(), server).await?;
        if grants.session.as_deref() != Some(route.session.as_str()) {
            grants = self
                .cache
                .refresh_grants(self.store.as_ref(), server)
                .await?;
        }
        if grants.session.as_deref() != Some(route.session.as_str()) {
            return Ok(Decision::NotShared);
        }
        Ok(access::decide(
            &server.owner,
            identity,
            &grants.grants,
            kind,
            now,
        ))
    }

    /// A browser is sent to sign in (on a user's host: to have its sign-in handed over); a
    /// script gets 401.
    fn needs_login(&self, uri: &http::Uri, headers: &impl Fields, on_user_host: bool) -> Error {
        if http_util::wants_json(headers, uri.path()) {
            return Error::Unauthorized;
        }
        let next = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let to = if on_user_host {
            paths::HOST_LOGIN
        } else {
            paths::LOGIN
        };
        Error::Redirect(format!(
            "{}?next={}",
            self.hub.external(to),
            http_util::percent_encode(next)
        ))
    }

    /// No caching, and no Referer for the upstreams: a page's URL may hold an invite code. With
    /// host-based routing every upstream is on another origin, so `same-origin` keeps the
    /// Referer from them while latchkey's own form posts carry their real `Origin` (with
    /// `no-referrer` a browser sends `Origin: null`, which is then refused).
    pub fn mark_sensitive(&self, headers: &mut HeaderMap) {
        http_util::mark_sensitive(headers);
        if self.config.hosts.is_some() {
            headers.insert(
                header::REFERRER_POLICY,
                http::HeaderValue::from_static("same-origin"),
            );
        }
    }

    /// Which host a request was addressed to: always latchkey's own without host-based routing.
    pub fn site(&self, uri: &http::Uri, headers: &impl Fields) -> Site {
        match &self.config.hosts {
            Some(hosts) => hosts.site(crate::hosts::authority(uri, headers)),
            None => Site::Main,
        }
    }

    /// Who is signed in with a session cookie, for the header of an error page about `err`;
    /// `None` when nobody is, it cannot be told, or the error is the store's or latchkey's own
    /// (then one more store lookup would only wait for the same failure).
    async fn viewer(
        &self,
        headers: &impl Fields,
        err: &Error,
        own_page: bool,
        trusted_peer: bool,
    ) -> Option<crate::error::Viewer> {
        if !err.names_viewer() {
            return None;
        }
        // On a user's host, its own sign-in.
        let user_host = match (
            self.site(&http::Uri::default(), headers),
            &self.config.hosts,
        ) {
            (Site::User(label), Some(hosts)) => Some(hosts.user_host(&label)),
            _ => None,
        };
        let caller = self
            .identify_on(headers, trusted_peer, user_host.as_deref(), None)
            .await
            .ok()??;
        caller
            .credential
            .is_browser()
            .then(|| crate::error::Viewer {
                name: caller.identity.name.to_string(),
                xsrf: own_page
                    .then(|| cookies::find(headers, paths::XSRF_COOKIE))
                    .flatten()
                    .filter(|v| secret::looks_like_token(v))
                    .map(str::to_owned),
            })
    }

    /// Who is calling on latchkey's own host: an API token in `Authorization`, else the user
    /// a trusted proxy names (`trusted_peer`: the request came from one), else the session
    /// cookie.
    pub async fn identify(
        &self,
        headers: &impl Fields,
        trusted_peer: bool,
    ) -> Result<Option<Caller>> {
        self.identify_on(headers, trusted_peer, None, None).await
    }

    /// [`identify`](Self::identify) on latchkey's own host (`user_host` None) or on a user's
    /// host, whose cookie is a sign-in handed over for that host alone; remembers the session
    /// cookie's hash in `memo` for the next request of the same connection.
    pub async fn identify_on(
        &self,
        headers: &impl Fields,
        trusted_peer: bool,
        user_host: Option<&str>,
        memo: Option<&mut SessionMemo>,
    ) -> Result<Option<Caller>> {
        if let Some(token) = bearer_token(headers)
            && secret::looks_like_token(token)
        {
            let hash = TokenHash::of(token);
            if let Some(rec) = self.cache.api_token(self.store.as_ref(), &hash).await?
                && let Some(identity) = self.identity_of(&rec.user).await?
            {
                return Ok(Some(Caller {
                    identity,
                    credential: Credential::Token,
                    login: None,
                    // What was opened with a token closes when the token expires.
                    expires: rec.expires_at,
                    token: Some(hash),
                }));
            }
        }
        if trusted_peer
            && let Some(th) = &self.config.trusted_header
            && let Some(name) = headers.get(&th.user)
        {
            // One value: a proxy that adds its header to the client's instead of replacing it
            // would otherwise let the client's come first.
            if headers.get_all(&th.user).nth(1).is_some() {
                return Err(Error::bad_request(format!(
                    "The request names its user twice ({}).",
                    th.user
                )));
            }
            let groups = th.groups.as_deref().and_then(|g| headers.get(g));
            let identity = self.proxy_named(name, groups).await?;
            return Ok(Some(Caller {
                identity,
                credential: Credential::Proxy,
                login: None,
                expires: None,
                token: None,
            }));
        }
        // Usually one cookie; a page of the same host may have planted another of the same name
        // (a longer path comes first): the first that is a live sign-in valid here wins.
        let mut memo = memo;
        for id in cookies::find_all(headers, self.cookies.session_name())
            .filter(|id| secret::looks_like_token(id))
        {
            let hash = match memo.as_deref() {
                Some(memo) => memo.hash_of(id),
                None => TokenHash::of(id),
            };
            let Some(rec) = self.cache.login(self.store.as_ref(), &hash).await? else {
                continue;
            };
            let Some((login, expires)) = self.valid_here(hash, &rec, user_host).await? else {
                continue;
            };
            if let Some(memo) = memo.as_deref_mut() {
                memo.remember(id, hash);
            }
            return Ok(self.identity_of(&rec.user).await?.map(|identity| Caller {
                identity,
                credential: Credential::Cookie,
                login: Some(login),
                expires: Some(expires),
                token: None,
            }));
        }
        Ok(None)
    }

    /// Whether users from outside the configuration may sign in (OpenID Connect, or a sign-in
    /// proxy's header): only then is the store asked about names the configuration lacks.
    fn outside_users(&self) -> bool {
        self.oidc.is_some() || self.config.trusted_header.is_some()
    }

    /// Who a user is: one of the configuration's, one who signed in through the identity
    /// provider (while that sign-in is configured and `allowed_groups` admits their groups at
    /// their last sign-in), or one the sign-in proxy named (while `[trusted_header]` is on).
    pub async fn identity_of(&self, name: &UserName) -> Result<Option<Arc<Identity>>> {
        if let Some(identity) = self.users.identity(name) {
            return Ok(Some(identity));
        }
        if !self.outside_users() {
            return Ok(None);
        }
        let Some(user) = self.cache.user(self.store.as_ref(), name).await? else {
            return Ok(None);
        };
        let admitted = crate::auth::admitted(
            user.from_provider,
            &user.identity.groups,
            self.oidc.as_ref().map(Oidc::config),
            self.config.trusted_header.is_some(),
        );
        Ok(admitted.then_some(user.identity))
    }

    /// The user a trusted proxy names in its header (lower-cased), with the groups of its
    /// groups header (comma-separated; names latchkey cannot use are left out), recorded when
    /// new or when the groups changed (see [`record_user`](Self::record_user)).
    async fn proxy_named(&self, name: &[u8], groups: Option<&[u8]>) -> Result<Arc<Identity>> {
        let name = std::str::from_utf8(name)
            .ok()
            .and_then(crate::auth::external_name)
            .ok_or_else(|| {
                Error::Forbidden(
                    "The user name your sign-in proxy sent cannot be used here: latchkey's names are 1 to 64 letters, digits, '.', '_', '-' or '@'.".into(),
                )
            })?;
        let groups = crate::auth::external_groups(
            groups
                .and_then(|g| std::str::from_utf8(g).ok())
                .into_iter()
                .flat_map(|g| g.split(',')),
        );
        if !self.users.exists(&name)
            && let Some(known) = self.cache.user(self.store.as_ref(), &name).await?
            && !known.from_provider
            && known.identity.groups == groups
        {
            return Ok(known.identity);
        }
        self.record_user(Identity { name, groups }, "").await
    }

    /// Records a user a login method outside latchkey vouched for (`subject`: the OpenID
    /// Connect provider's `sub`, "" for the sign-in proxy's users) with their groups now, so
    /// that they may be shared with by name and every instance knows them. A name stays with
    /// the account that first used it, and the configuration's names are not theirs: refused.
    async fn record_user(&self, identity: Identity, subject: &str) -> Result<Arc<Identity>> {
        let name = identity.name;
        if self.users.exists(&name) {
            return Err(Error::Forbidden(format!(
                "{name} is an account of latchkey's own: sign in with its password."
            )));
        }
        let now = clock::now();
        let known = self.store.get_user(&name).await?;
        if let Some(known) = &known
            && known.subject != subject
        {
            tracing::warn!(user = %name, "sign-in refused: the name belongs to another account");
            return Err(Error::Forbidden(if known.subject.is_empty() {
                format!(
                    "The user name {name} is already used by someone the sign-in proxy in front of latchkey named. Ask an administrator."
                )
            } else {
                format!(
                    "The user name {name} belongs to another account at the sign-in provider. Ask an administrator."
                )
            }));
        }
        self.store
            .put_user(&UserRecord {
                name: name.clone(),
                subject: subject.to_owned(),
                groups: identity.groups.clone(),
                first_seen: known.map_or(now, |u| u.first_seen),
                last_seen: now,
            })
            .await?;
        Ok(self
            .cache
            .remember_user(name, identity.groups, !subject.is_empty())
            .identity)
    }

    /// Whether a user signed in through the OpenID Connect provider (not one of the
    /// configuration's or one the sign-in proxy named).
    pub async fn is_provider_user(&self, name: &UserName) -> bool {
        self.oidc.is_some()
            && self.users.identity(name).is_none()
            && matches!(self.cache.user(self.store.as_ref(), name).await, Ok(Some(u)) if u.from_provider)
    }

    /// Whether a group has members: in the configuration, or among the users from outside it
    /// who may use the service (their groups as of their last sign-in).
    pub async fn group_exists(&self, group: &GroupName) -> Result<bool> {
        if self.users.is_group(group) {
            return Ok(true);
        }
        if !self.outside_users() {
            return Ok(false);
        }
        let oidc = self.oidc.as_ref().map(Oidc::config);
        let trusted_header = self.config.trusted_header.is_some();
        Ok(self.store.list_users().await?.iter().any(|u| {
            u.groups.contains(group)
                && crate::auth::admitted(!u.subject.is_empty(), &u.groups, oidc, trusted_header)
        }))
    }

    /// Whether a sign-in record is good on this host (`user_host` None: latchkey's own): the
    /// sign-in it belongs to (for a user's host, the one it was handed from: signing out there
    /// ends it, and the connections opened with it close with that sign-in's) and until when.
    async fn valid_here(
        &self,
        hash: TokenHash,
        rec: &crate::store::LoginRecord,
        user_host: Option<&str>,
    ) -> Result<Option<(TokenHash, crate::clock::Timestamp)>> {
        match (&rec.on_host, user_host) {
            (None, None) => Ok(Some((hash, rec.expires_at))),
            (Some(on), Some(host)) if !on.code && on.host == host => {
                let Some(parent) = TokenHash::from_hex(&on.parent) else {
                    return Ok(None);
                };
                Ok(
                    match self.cache.login(self.store.as_ref(), &parent).await? {
                        Some(p) if p.on_host.is_none() && p.user == rec.user => {
                            Some((parent, rec.expires_at.min(p.expires_at)))
                        }
                        _ => None,
                    },
                )
            }
            _ => Ok(None),
        }
    }

    /// The origin this request was addressed to.
    pub fn own_origin(&self, headers: &impl Fields, tls: bool) -> Option<String> {
        crate::auth::csrf::own_origin(headers, self.config.public_url.as_deref(), tls)
    }

    /// Closes every open connection that its user may no longer hold: grant revoked or
    /// expired, server session ended, user removed. `only` limits the check to one server.
    pub async fn recheck_connections(&self, only: Option<&ServerRef>) {
        self.recheck(|c| only.is_none_or(|o| o == &c.server)).await
    }

    /// [`recheck_connections`](Self::recheck_connections) for one user's connections: what
    /// is known of them changed.
    pub async fn recheck_user(&self, user: &UserName) {
        self.recheck(|c| &c.user == user).await
    }

    /// Closes every open connection `concerned` picks that its user may no longer hold.
    async fn recheck(&self, concerned: impl Fn(&OpenConnection) -> bool) {
        let open: Vec<OpenConnection> = self
            .connections
            .snapshot()
            .into_iter()
            .filter(|c| concerned(c))
            .collect();
        if open.is_empty() {
            return;
        }
        let table = self.cache.routes();
        let now = clock::now();
        let mut servers: Vec<ServerRef> = open.iter().map(|c| c.server.clone()).collect();
        servers.sort();
        servers.dedup();
        // Who each connection's user is now (a user the store cannot tell about keeps theirs
        // until the next check, as with grants below).
        let mut identities: HashMap<UserName, Option<Arc<Identity>>> = HashMap::new();
        for c in &open {
            if !identities.contains_key(&c.user)
                && let Ok(identity) = self.identity_of(&c.user).await
            {
                identities.insert(c.user.clone(), identity);
            }
        }
        for server in servers {
            let session = table.server_route(&server).map(|r| r.session.clone());
            // Without the store, connections stay open until the next successful check.
            let grants = self.cache.grants(self.store.as_ref(), &server).await.ok();
            self.connections.close_where(|c| {
                c.server == server
                    && concerned(c)
                    && !self.may_stay(
                        c,
                        identities.get(&c.user),
                        session.as_deref(),
                        grants.as_deref(),
                        now,
                    )
            });
        }
    }

    /// Whether an open connection's user may still hold it, given who they are now, its
    /// server's current session and grants (`None`: not known, the store is away).
    fn may_stay(
        &self,
        c: &OpenConnection,
        identity: Option<&Option<Arc<Identity>>>,
        session: Option<&str>,
        grants: Option<&ServerGrants>,
        now: clock::Timestamp,
    ) -> bool {
        if session != Some(c.session.as_str()) {
            return false;
        }
        if c.expires.is_some_and(|e| e <= now) {
            return false;
        }
        let identity = match identity {
            Some(Some(identity)) => identity,
            Some(None) => return false,
            None => return true,
        };
        if identity.name == c.server.owner {
            return true;
        }
        let Some(grants) = grants else {
            return true;
        };
        if grants.session.as_deref() != Some(c.session.as_str()) {
            return false;
        }
        let kind = RequestKind {
            safe_method: true,
            websocket: c.websocket,
        };
        matches!(
            access::decide(&c.server.owner, Some(identity), &grants.grants, kind, now),
            Decision::Allow(_)
        )
    }

    /// Registers a WebSocket or a long answer, so that revocation closes it. A revocation
    /// that ran while the request was on its way (after its access check, before this) could
    /// not see it: then this one connection is checked again here. If its access has ended, or
    /// its server session (the h1 path finds the route before the request reads the count of
    /// sweeps), nothing of the answer goes to the client: 403.
    pub async fn register(&self, registrar: Registrar, websocket: bool) -> Result<Registration> {
        let table = self.cache.routes();
        let session = table.get(&registrar.route.path).map(|r| r.session.as_str());
        let current = session == Some(registrar.route.session.as_str());
        let registration = registrar.register(websocket);
        if !current {
            return Err(Error::access_ended_meanwhile());
        }
        if !registration.raced() {
            return Ok(registration);
        }
        let Some(c) = registration.connection() else {
            return Ok(registration);
        };
        let grants = self.cache.grants(self.store.as_ref(), &c.server).await.ok();
        let identity = self.identity_of(&c.user).await.ok();
        if self.credential_ended(&c).await
            || !self.may_stay(
                &c,
                identity.as_ref(),
                session,
                grants.as_deref(),
                clock::now(),
            )
        {
            tracing::info!(user = %c.user, "access ended while the request was on its way");
            return Err(Error::access_ended_meanwhile());
        }
        Ok(registration)
    }

    /// [`register`](Self::register) when there may be nothing to register (an open route).
    pub async fn register_any(
        &self,
        registrar: Option<Registrar>,
        websocket: bool,
    ) -> Result<Option<Registration>> {
        match registrar {
            Some(r) => self.register(r, websocket).await.map(Some),
            None => Ok(None),
        }
    }

    /// Whether the sign-in or API token a connection was opened with has ended, read through
    /// the cache (which forgets either as it ends); false while the store cannot tell.
    async fn credential_ended(&self, c: &OpenConnection) -> bool {
        let store = self.store.as_ref();
        match (&c.login, &c.token) {
            (Some(login), _) => matches!(self.cache.login(store, login).await, Ok(None)),
            (None, Some(token)) => matches!(self.cache.api_token(store, token).await, Ok(None)),
            (None, None) => false,
        }
    }

    /// After a local change to a server's sharing: refresh its cached grants and close what
    /// must close.
    pub async fn sharing_changed(&self, server: &ServerRef) {
        if let Err(e) = self.cache.refresh_grants(self.store.as_ref(), server).await {
            tracing::warn!(error = %e, "could not refresh grants after a change");
            self.cache.forget_grants();
        }
        self.recheck_connections(Some(server)).await;
    }

    /// After a route change: reload the table, then close connections of ended sessions.
    pub async fn routes_changed(&self, server: Option<&ServerRef>) {
        if let Err(e) = self.cache.reload_routes(self.store.as_ref()).await {
            tracing::warn!(error = %e, "could not reload routes after a change");
        }
        if let Some(server) = server {
            self.sharing_changed(server).await;
        }
    }

    /// Starts a sign-in session; returns the cookie value (shown only to the browser).
    pub async fn start_login(&self, identity: &Identity) -> Result<Secret> {
        self.start_login_for(identity, self.config.session_max_age)
            .await
    }

    /// A sign-in that lasts `max_age` seconds.
    async fn start_login_for(&self, identity: &Identity, max_age: u64) -> Result<Secret> {
        let id = Secret::generate();
        let now = clock::now();
        self.store
            .put_login(
                &id.hash(),
                &crate::store::LoginRecord {
                    user: identity.name.clone(),
                    created_at: now,
                    expires_at: now + max_age as i64,
                    on_host: None,
                },
            )
            .await?;
        Ok(id)
    }

    /// Signs in a user the identity provider vouched for (`subject`: the provider's `sub`):
    /// records them (see [`record_user`](Self::record_user)), then starts a sign-in of
    /// `[oidc] session_max_age`.
    pub async fn start_provider_login(
        &self,
        identity: Identity,
        subject: &str,
    ) -> Result<(Arc<Identity>, Secret)> {
        let identity = self.record_user(identity, subject).await?;
        let max_age = self
            .oidc
            .as_ref()
            .map_or(self.config.session_max_age, |o| o.config().session_max_age);
        let id = self.start_login_for(&identity, max_age).await?;
        Ok((identity, id))
    }

    /// Removes a user from outside the configuration (an OpenID Connect or sign-in proxy
    /// user): their sign-ins and API tokens stop working and their connections close, here at
    /// once and on every instance as soon as the announcement arrives. They are back at their
    /// next sign-in, if the provider or the proxy still vouches for them. False when unknown.
    pub async fn remove_user(&self, name: &UserName) -> Result<bool> {
        let deleted = self.store.delete_user(name).await?;
        self.cache.forget_users(Some(name));
        self.recheck_user(name).await;
        Ok(deleted)
    }

    /// Ends a sign-in session and closes the connections opened with it.
    pub async fn end_login(&self, login: &TokenHash) -> Result<()> {
        // Here at once, whatever the store says.
        self.forget_login(login);
        let deleted = self.store.delete_login(login).await;
        // Again once the store has it: a request that read the sign-in before it was deleted
        // may have cached it or opened a stream meanwhile (and one still on its way sees this
        // sweep when it registers).
        self.forget_login(login);
        deleted
    }

    /// Acts on a change announced by any instance.
    pub async fn on_event(&self, event: StoreEvent) {
        match event {
            StoreEvent::Routes => {
                if let Err(e) = self.cache.reload_routes(self.store.as_ref()).await {
                    tracing::warn!(error = %e, "route reload failed");
                }
                self.recheck_connections(None).await;
            }
            StoreEvent::Server(server) => self.sharing_changed(&server).await,
            StoreEvent::LoginEnded(login) => self.forget_login(&login),
            StoreEvent::ApiTokenDeleted(token) => self.forget_api_token(&token),
            StoreEvent::User(name) => {
                self.cache.forget_users(Some(&name));
                self.recheck_user(&name).await;
            }
            StoreEvent::Resync => self.revalidate().await,
            StoreEvent::Seen(revision) => {
                if self.cache.note_announced(revision) {
                    tracing::warn!(revision, "change announcements were skipped; revalidating");
                    self.revalidate().await;
                }
            }
        }
    }

    /// Forgets everything cached and checks every open connection again, for when
    /// announcements may have been lost.
    pub async fn revalidate(&self) {
        if let Ok(rev) = self.store.revision().await {
            self.cache.reset_announced(rev);
        }
        if let Err(e) = self.cache.reload_routes(self.store.as_ref()).await {
            tracing::warn!(error = %e, "route reload failed");
        }
        self.cache.forget_grants();
        self.cache.forget_logins();
        self.cache.forget_api_tokens();
        self.cache.forget_users(None);
        self.recheck_connections(None).await;
        let open = self.connections.snapshot();
        for login in distinct(open.iter().filter_map(|c| c.login)) {
            if let Ok(None) = self.store.get_login(&login).await {
                self.connections.close_where(|c| c.login == Some(login));
            }
        }
        for token in distinct(open.iter().filter_map(|c| c.token)) {
            if let Ok(None) = self.store.get_api_token(&token).await {
                self.connections.close_where(|c| c.token == Some(token));
            }
        }
    }

    /// Forgets an ended sign-in and closes what was opened with it.
    fn forget_login(&self, login: &TokenHash) {
        self.cache.forget_login(login);
        self.connections
            .close_where(|c| c.login.as_ref() == Some(login));
    }

    /// Forgets a deleted API token and closes what was opened with it.
    pub(crate) fn forget_api_token(&self, token: &TokenHash) {
        self.cache.forget_api_token(token);
        self.connections
            .close_where(|c| c.token.as_ref() == Some(token));
    }

    /// Keeps the cache coherent with the store (announcements, and a revision poll every second
    /// for lost ones), closes connections whose access ended or expired, and saves route
    /// activity. Runs until the process ends.
    pub async fn run_background(self: Arc<Self>) {
        let mut events = self.store.subscribe();
        // The embedded store announces nothing: only this instance changes it, and every change
        // here refreshes the cache, so the cache is as fresh as the store is reachable.
        let announces = events.is_some();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flushed: std::collections::HashMap<String, i64> = Default::default();
        let mut n: u64 = 0;
        loop {
            let event = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = event => {
                    match event {
                        Some(event) => {
                            self.cache.mark_synced();
                            self.on_event(event).await;
                        }
                        None => events = None,
                    }
                    continue;
                }
                _ = tick.tick() => {}
            }
            n += 1;
            if events.is_some() {
                // A revision above every announcement heard, still so a second later, means an
                // announcement was lost: revalidate everything.
                match self.store.revision().await {
                    Ok(rev) => {
                        self.cache.mark_synced();
                        if self.cache.announcement_lost(rev) {
                            tracing::warn!(
                                revision = rev,
                                "a change announcement was lost; revalidating"
                            );
                            self.revalidate().await;
                            continue;
                        }
                    }
                    Err(_) => continue,
                }
            } else if !announces && self.store.revision().await.is_ok() {
                // Without this, every lookup would go to the store once the staleness window
                // after start had passed.
                self.cache.mark_synced();
            }
            // A change whose announcement never went out (the writer died between its write
            // and its announcement) is picked up here at the latest.
            if events.is_some() && n.is_multiple_of(30) {
                self.revalidate().await;
                continue;
            }
            // Grants that expired since the last tick.
            self.recheck_connections(None).await;
            if n.is_multiple_of(10) {
                self.pool.prune();
            }
            if n.is_multiple_of(5) {
                let table = self.cache.routes();
                let changed: Vec<(String, i64)> = table
                    .iter()
                    .filter(|r| flushed.get(&r.path) != Some(&r.last_activity()))
                    .map(|r| (r.path.clone(), r.last_activity()))
                    .collect();
                if self.store.record_activity(&changed).await.is_ok() {
                    flushed.extend(changed);
                }
            }
        }
    }
}

/// The client a trusted proxy forwarded the request for: the last address of its
/// X-Forwarded-For chain.
fn forwarded_client(headers: &impl Fields) -> Option<IpAddr> {
    headers
        .get_str("x-forwarded-for")
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok())
}

pub fn is_websocket(headers: &impl Fields) -> bool {
    headers
        .get("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"))
}

/// The token in `Authorization: token X` or `Authorization: Bearer X`.
pub fn bearer_token(headers: &impl Fields) -> Option<&str> {
    let v = headers.get_str("authorization")?;
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer"))
        .then(|| token.trim())
}

/// Each hash once.
fn distinct(hashes: impl Iterator<Item = TokenHash>) -> Vec<TokenHash> {
    let mut list: Vec<TokenHash> = hashes.collect();
    list.sort_unstable();
    list.dedup();
    list
}

/// A request's `Cookie` fields, and with host-based routing its host, kept past the request for
/// its error page.
#[derive(Default)]
struct Cookies {
    cookies: Vec<http::HeaderValue>,
    host: Option<http::HeaderValue>,
}

impl Fields for Cookies {
    fn each(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let cookies = self.cookies.iter().map(|v| (&b"cookie"[..], v.as_bytes()));
        cookies.chain(self.host.iter().map(|h| (&b"host"[..], h.as_bytes())))
    }
}
