//! The pages: sign-in, dashboard, sharing menu, accept page, and static assets.

pub mod pages;

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::app::{App, Caller, Ctx};
use crate::auth::Credential;
use crate::auth::cookies;
use crate::clock;
use crate::error::{Error, Result};
use crate::http_util::{self, Body, form_value, redirect};
use crate::ids::{GroupName, ServerName, ServerRef, UserName};
use crate::paths;
use crate::secret::{self, Secret, TokenHash};
use crate::sharing::{Grantee, Role, Via};
use crate::store::{HostLogin, LoginRecord};
use pages::*;

static STYLE_CSS: &str = include_str!("../../static/style.css");
static APP_JS: &str = include_str!("../../static/app.js");
static FAVICON_SVG: &str = include_str!("../../static/favicon.svg");

pub async fn handle(app: &Arc<App>, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (method.clone(), path.as_str()) {
        (Method::GET | Method::HEAD, "/hub" | "/hub/") => {
            Ok(redirect(&app.hub.external(paths::HOME)))
        }
        (Method::GET | Method::HEAD, p) if p.starts_with(paths::STATIC) => static_file(p),
        (Method::GET | Method::HEAD, paths::LOGIN) => login_form(app, req, ctx, None).await,
        (Method::POST, paths::LOGIN) => login(app, req, ctx).await,
        (Method::GET | Method::HEAD, paths::OIDC_LOGIN) => oidc_login(app, &req).await,
        (Method::GET, paths::OIDC_CALLBACK) => oidc_callback(app, &req, ctx).await,
        (Method::GET | Method::POST, paths::LOGOUT) => logout(app, req, ctx).await,
        (Method::GET | Method::HEAD, paths::HOME) => home(app, req, ctx).await,
        (Method::GET | Method::HEAD, paths::ACCEPT_SHARE) => accept_form(app, req, ctx).await,
        (Method::POST, paths::ACCEPT_SHARE) => accept(app, req, ctx).await,
        (Method::POST, "/hub/leave") => leave(app, req, ctx).await,
        (Method::GET | Method::HEAD, p) if p.starts_with(paths::SHARING) => {
            sharing_page(app, req, ctx).await
        }
        (Method::POST, p) if p.starts_with(paths::SHARING) => sharing_action(app, req, ctx).await,
        (Method::GET | Method::HEAD, paths::TOKENS) => tokens_page(app, req, ctx).await,
        (Method::POST, paths::TOKENS) => tokens_action(app, req, ctx).await,
        (Method::GET | Method::HEAD, paths::HOST_HANDOFF) if app.config.hosts.is_some() => {
            host_handoff(app, req, ctx).await
        }
        (_, paths::LOGIN | paths::HOME | paths::ACCEPT_SHARE | paths::TOKENS | "/hub/leave") => {
            Err(Error::MethodNotAllowed)
        }
        _ => Err(Error::NotFound("There is no such page.".into())),
    }
}

/// latchkey's paths on a user's host (host-based routing): the two ends of the sign-in
/// hand-over and the style of error pages; a browser asking for any other page is sent to
/// latchkey's own host.
pub async fn on_user_host(
    app: &Arc<App>,
    req: Request<Incoming>,
    label: &str,
) -> Result<Response<Body>> {
    let Some(hosts) = &app.config.hosts else {
        return Err(Error::NotFound("There is no such page.".into()));
    };
    let path = req.uri().path();
    match *req.method() {
        Method::GET | Method::HEAD => {}
        _ => {
            return Err(Error::NotFound(format!(
                "latchkey's pages are at {}.",
                hosts.main_origin()
            )));
        }
    }
    match path {
        paths::HOST_LOGIN => Ok(host_login(app, &req, hosts, label)),
        paths::HOST_CALLBACK => host_callback(app, &req, hosts, label).await,
        p if p.starts_with(paths::STATIC) => static_file(p),
        p => {
            let external = app.hub.external(p);
            let to = match req.uri().query() {
                Some(q) => format!("{}{external}?{q}", hosts.main_origin()),
                None => format!("{}{external}", hosts.main_origin()),
            };
            Ok(redirect(&to))
        }
    }
}

/// On a user's host, for a browser with no sign-in there: a fresh state in a cookie of this
/// host, and off to latchkey's host to have the sign-in handed over.
fn host_login(
    app: &App,
    req: &Request<Incoming>,
    hosts: &crate::hosts::UserHosts,
    label: &str,
) -> Response<Body> {
    let next = next_path(req.uri().query());
    // One state per browser and host while hand-overs run, so that several at once (tabs, or
    // the loads of a page whose sign-in ended) do not undo each other's.
    let state = cookies::find(req.headers(), app.cookies.host_state_name())
        .filter(|s| secret::looks_like_token(s))
        .map(|s| Secret::from_string(s.to_owned()))
        .unwrap_or_else(Secret::generate);
    let to = format!(
        "{}{}?host={}&state={}&next={}{}",
        hosts.main_origin(),
        app.hub.external(paths::HOST_HANDOFF),
        http_util::percent_encode(&hosts.user_host(label)),
        state.expose(),
        http_util::percent_encode(&next),
        again(req.uri().query())
    );
    let mut r = redirect(&to);
    r.headers_mut().append(
        header::SET_COOKIE,
        app.cookies.host_state_cookie(state.expose()),
    );
    app.mark_sensitive(r.headers_mut());
    r
}

/// "&again=1" when a hand-over is already the second try (see `host_callback`).
fn again(query: Option<&str>) -> &'static str {
    match http_util::query_value(query, "again").as_deref() {
        Some("1") => "&again=1",
        _ => "",
    }
}

/// How long a hand-over code may wait for its exchange on the user's host.
const HANDOFF_CODE_SECONDS: i64 = 60;

/// On latchkey's host: hands the browser's sign-in over to a user's host as a one-time code
/// for that host (after signing in, if needed).
async fn host_handoff(app: &Arc<App>, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>> {
    let Some(hosts) = &app.config.hosts else {
        return Err(Error::NotFound("There is no such page.".into()));
    };
    // Opened as a page, as the user's host sends it: not an image or a script of another page
    // (each would store a code).
    if req
        .headers()
        .get("sec-fetch-dest")
        .is_some_and(|d| d != "document")
    {
        return Err(Error::bad_request("Open this address as a page."));
    }
    let caller = signed_in(app, &req, ctx).await?;
    let Some(parent) = caller
        .login
        .filter(|_| caller.credential == Credential::Cookie)
    else {
        return Err(Error::bad_request(
            "Sign in with the sign-in form to open a server.",
        ));
    };
    let query = req.uri().query();
    let label = http_util::query_value(query, "host")
        .and_then(|h| hosts.label_of_host(&h))
        .ok_or_else(|| Error::bad_request("This is not the address of a user's server."))?;
    let state = http_util::query_value(query, "state")
        .filter(|s| secret::looks_like_token(s))
        .ok_or_else(|| Error::bad_request("This sign-in link is incomplete."))?;
    let next = next_path(query);
    let code = Secret::generate();
    let now = clock::now();
    app.store
        .put_login(
            &code.hash(),
            &LoginRecord {
                user: caller.identity.name.clone(),
                created_at: now,
                expires_at: now + HANDOFF_CODE_SECONDS,
                on_host: Some(HostLogin {
                    host: hosts.user_host(&label),
                    parent: parent.to_hex(),
                    code: true,
                }),
            },
        )
        .await?;
    let to = format!(
        "{}{}?code={}&state={state}&next={}{}",
        hosts.user_origin(&label),
        app.hub.external(paths::HOST_CALLBACK),
        code.expose(),
        http_util::percent_encode(&next),
        again(query)
    );
    let mut r = redirect(&to);
    app.mark_sensitive(r.headers_mut());
    Ok(r)
}

/// On a user's host: exchanges a hand-over code for this host's own sign-in cookie, when the
/// state matches this browser's, and goes on to the page first asked for.
async fn host_callback(
    app: &Arc<App>,
    req: &Request<Incoming>,
    hosts: &crate::hosts::UserHosts,
    label: &str,
) -> Result<Response<Body>> {
    let invalid = || {
        Error::bad_request(
            "This sign-in link is not valid (any more). Open the server's address again.",
        )
    };
    let query = req.uri().query();
    let code = http_util::query_value(query, "code")
        .filter(|c| secret::looks_like_token(c))
        .ok_or_else(invalid)?;
    // Taken whatever follows: a code is good for one try, by whoever holds it first.
    let record = app
        .store
        .take_login(&TokenHash::of(&code))
        .await?
        .ok_or_else(invalid)?;
    let state = http_util::query_value(query, "state").unwrap_or_default();
    if !secret::matches_any(
        &state,
        cookies::find_all(req.headers(), app.cookies.host_state_name()),
    ) {
        // This browser's state is gone (its cookie lasts ten minutes, and a sign-in form may
        // have waited longer) or was never this one's: begin once more with a fresh state,
        // rather than end on an error; a second failure is one.
        if !again(query).is_empty() {
            return Err(invalid());
        }
        let next = next_path(query);
        return Ok(redirect(&format!(
            "{}?next={}&again=1",
            app.hub.external(paths::HOST_LOGIN),
            http_util::percent_encode(&next)
        )));
    }
    let host = hosts.user_host(label);
    let Some(on) = record.on_host.filter(|on| on.code && on.host == host) else {
        return Err(invalid());
    };
    let parent = TokenHash::from_hex(&on.parent).ok_or_else(invalid)?;
    let Some(signed_in) = app
        .cache
        .login(app.store.as_ref(), &parent)
        .await?
        .filter(|p| p.on_host.is_none() && p.user == record.user)
    else {
        return Err(invalid());
    };
    let id = Secret::generate();
    app.store
        .put_login(
            &id.hash(),
            &LoginRecord {
                user: record.user.clone(),
                created_at: clock::now(),
                expires_at: signed_in.expires_at,
                on_host: Some(HostLogin {
                    host,
                    parent: on.parent,
                    code: false,
                }),
            },
        )
        .await?;
    let next = next_path(query);
    let mut r = redirect(&next);
    let h = r.headers_mut();
    h.append(header::SET_COOKIE, app.cookies.session_cookie(id.expose()));
    app.mark_sensitive(h);
    Ok(r)
}

fn static_file(path: &str) -> Result<Response<Body>> {
    let (body, ty) = match path.strip_prefix(paths::STATIC) {
        Some("style.css") => (STYLE_CSS, "text/css; charset=utf-8"),
        Some("app.js") => (APP_JS, "text/javascript; charset=utf-8"),
        Some("favicon.svg") => (FAVICON_SVG, "image/svg+xml"),
        _ => return Err(Error::NotFound("There is no such file.".into())),
    };
    let mut r = Response::new(http_util::full(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    Ok(r)
}

/// The XSRF token of this browser: the cookie's, or a new one (set on the response).
struct Xsrf {
    value: String,
    is_new: bool,
}

impl Xsrf {
    fn of(headers: &HeaderMap) -> Xsrf {
        match cookies::find(headers, paths::XSRF_COOKIE).filter(|v| secret::looks_like_token(v)) {
            Some(value) => Xsrf {
                value: value.to_owned(),
                is_new: false,
            },
            None => Xsrf {
                value: Secret::generate().expose().to_owned(),
                is_new: true,
            },
        }
    }

    fn apply(&self, app: &App, resp: &mut Response<Body>) {
        if self.is_new {
            resp.headers_mut()
                .append(header::SET_COOKIE, app.cookies.xsrf_cookie(&self.value));
        }
    }
}

/// The Content-Security-Policy of latchkey's pages, made once at start. A form's redirects
/// count as its action: signing in or accepting an invite ends on a user's host (host-based
/// routing), and signing out may end at the sign-in provider's or proxy's own sign-out.
pub fn page_policy(config: &crate::config::Config) -> HeaderValue {
    const POLICY: &str =
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
    let mut policy = POLICY.to_owned();
    if let Some(hosts) = &config.hosts {
        policy.push(' ');
        policy.push_str(&hosts.user_origin("*"));
    }
    let sign_outs = [
        config.oidc.as_ref().and_then(|o| o.logout_url.as_deref()),
        config
            .trusted_header
            .as_ref()
            .and_then(|t| t.logout_url.as_deref()),
    ];
    for url in sign_outs.into_iter().flatten() {
        if let Ok(uri) = url.parse::<http::Uri>()
            && let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority())
        {
            policy.push_str(&format!(" {scheme}://{authority}"));
        }
    }
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static(POLICY))
}

/// Frame-busting and content-type hygiene for every page latchkey renders itself.
fn harden(app: &App, resp: &mut Response<Body>) {
    let policy = app.page_policy.clone();
    let h = resp.headers_mut();
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("content-security-policy", policy);
}

/// A page's response with the XSRF cookie and hardening headers.
fn page<T: askama::Template>(app: &App, xsrf: &Xsrf, status: StatusCode, t: &T) -> Response<Body> {
    let mut r = render(status, t);
    xsrf.apply(app, &mut r);
    harden(app, &mut r);
    r
}

/// The hand-over's `next`: a path on the user's host, "/" when missing or not one.
fn next_path(query: Option<&str>) -> String {
    safe_next(http_util::query_value(query, "next").as_deref()).unwrap_or_else(|| "/".into())
}

/// Only paths on latchkey's own origin are valid `next` targets.
pub fn safe_next(next: Option<&str>) -> Option<String> {
    let n = next?.trim();
    let ok = n.starts_with('/')
        && !n.starts_with("//")
        && !n.starts_with("/\\")
        && !n.chars().any(|c| c.is_control() || c == '\\');
    ok.then(|| n.to_owned())
}

/// The caller for a page: signed in with the cookie, or sent to the sign-in page.
async fn signed_in(app: &App, req: &Request<Incoming>, ctx: &Ctx) -> Result<Caller> {
    match app.identify(req.headers(), ctx.trusted_peer).await? {
        Some(c) => Ok(c),
        None => {
            let next = req
                .uri()
                .path_and_query()
                .map(|p| app.hub.external(p.as_str()))
                .unwrap_or_else(|| app.hub.external(paths::HOME));
            Err(Error::Redirect(format!(
                "{}?next={}",
                app.hub.external(paths::LOGIN),
                http_util::percent_encode(&next)
            )))
        }
    }
}

/// Reads a form POST and checks it came from latchkey's own pages.
async fn read_form(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
) -> Result<(HeaderMap, Vec<(String, String)>)> {
    crate::auth::csrf::check_form_origin(
        req.headers(),
        app.own_origin(req.headers(), ctx.tls).as_deref(),
        req.uri().authority().map(|a| a.as_str()),
        app.config.hosts.is_none(),
    )?;
    let (parts, body) = req.into_parts();
    let body = http_util::read_body(body, app.config.max_body).await?;
    let form = http_util::parse_form(&body);
    crate::auth::csrf::check_token(&parts.headers, form_value(&form, "_xsrf"))?;
    Ok((parts.headers, form))
}

async fn login_form(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    error: Option<(StatusCode, String, String)>,
) -> Result<Response<Body>> {
    let next = safe_next(http_util::query_value(req.uri().query(), "next").as_deref())
        .unwrap_or_else(|| app.hub.external(paths::HOME));
    if error.is_none()
        && let Some(_) = app.identify(req.headers(), ctx.trusted_peer).await?
    {
        return Ok(redirect(&next));
    }
    let xsrf = Xsrf::of(req.headers());
    let (status, username, message) = match error {
        Some((s, u, m)) => (s, u, Some(m)),
        None => (StatusCode::OK, String::new(), None),
    };
    let mut resp = page(
        app,
        &xsrf,
        status,
        &login_page(app, &xsrf, &next, username, message),
    );
    // The login URL may carry an invite code in `next`.
    app.mark_sensitive(resp.headers_mut());
    Ok(resp)
}

/// The sign-in page: the provider's button when sign-in through one is on, and the password
/// form when there are local users (or no other way in).
fn login_page(
    app: &App,
    xsrf: &Xsrf,
    next: &str,
    username: String,
    error: Option<String>,
) -> LoginPage {
    LoginPage {
        prefix: app.hub.as_str().to_owned(),
        user: None,
        xsrf: xsrf.value.clone(),
        next_encoded: http_util::percent_encode(next),
        username,
        error,
        provider: app.oidc.as_ref().map(|o| o.config().display_name.clone()),
        passwords: !app.config.users.is_empty() || app.oidc.is_none(),
    }
}

/// A fresh id at every sign-in (no fixation): the session the browser had, if any, ends.
async fn end_previous_login(app: &App, headers: &HeaderMap) {
    if let Some(old) = cookies::find(headers, app.cookies.session_name())
        && secret::looks_like_token(old)
    {
        let _ = app.end_login(&TokenHash::of(old)).await;
    }
}

async fn login(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>> {
    let store = app.store.as_ref();
    app.sign_ins.allowed(store, ctx.client_ip).await?;
    let next = safe_next(http_util::query_value(req.uri().query(), "next").as_deref());
    let (headers, form) = read_form(app, req, ctx).await?;
    let next = next
        .or_else(|| safe_next(form_value(&form, "next")))
        .unwrap_or_else(|| app.hub.external(paths::HOME));
    let username = form_value(&form, "username")
        .unwrap_or("")
        .trim()
        .to_owned();
    let password = form_value(&form, "password").unwrap_or("").to_owned();
    let hash = app.users.password_hash(&username).map(str::to_owned);
    let known = hash.is_some();
    let phc = hash.unwrap_or_else(|| crate::auth::password::decoy_hash().to_owned());
    // Asked again when the check's turn comes: by then the failures of this client's checks
    // ahead of it are counted.
    let gate = app.sign_ins.allowed(store, ctx.client_ip);
    let Some(checked) = app
        .password_checks
        .verify(ctx.client_ip, password, phc, gate)
        .await?
    else {
        tracing::info!(client = %ctx.client_ip, "sign-in refused: too many password checks waiting");
        return Err(Error::Busy {
            retry_after: app.password_checks.retry_after(),
        });
    };
    let identity = (known && checked.matches)
        .then(|| UserName::parse(&username).ok())
        .flatten()
        .and_then(|u| app.users.identity(&u));
    let Some(identity) = identity else {
        // Counted while the check still holds its turn: the client's next check sees it.
        app.sign_ins.record_failure(store, ctx.client_ip).await?;
        drop(checked);
        tracing::info!(client = %ctx.client_ip, "failed sign-in");
        let xsrf = Xsrf::of(&headers);
        return Ok(page(
            app,
            &xsrf,
            StatusCode::FORBIDDEN,
            &login_page(
                app,
                &xsrf,
                &next,
                username,
                Some("Invalid user name or password.".into()),
            ),
        ));
    };
    drop(checked);
    // Failures are not forgiven by a success: an attacker with an account of their own must
    // not reset the count between guesses at someone else's password.
    end_previous_login(app, &headers).await;
    let id = app.start_login(&identity).await?;
    tracing::info!(user = %identity.name, "signed in");
    let mut resp = redirect(&next);
    resp.headers_mut()
        .append(header::SET_COOKIE, app.cookies.session_cookie(id.expose()));
    Ok(resp)
}

/// Sign-in through the OpenID Connect provider: a fresh secret for this browser in a cookie
/// (never one the browser already has: a page of a sibling host may have planted it), and off
/// to the provider.
async fn oidc_login(app: &App, req: &Request<Incoming>) -> Result<Response<Body>> {
    let Some(oidc) = &app.oidc else {
        return Err(Error::NotFound("There is no such page.".into()));
    };
    let next = safe_next(http_util::query_value(req.uri().query(), "next").as_deref())
        .unwrap_or_else(|| app.hub.external(paths::HOME));
    let secret = Secret::generate();
    let to = oidc.authorize_url(secret.expose(), &next).await?;
    let mut resp = redirect(&to);
    resp.headers_mut().append(
        header::SET_COOKIE,
        app.cookies.oidc_state_cookie(secret.expose()),
    );
    app.mark_sensitive(resp.headers_mut());
    Ok(resp)
}

/// Where the provider sends the browser back: the state checked against this browser's
/// secret, the code exchanged, the ID token verified, and the user signed in.
async fn oidc_callback(app: &App, req: &Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>> {
    let Some(oidc) = &app.oidc else {
        return Err(Error::NotFound("There is no such page.".into()));
    };
    let store = app.store.as_ref();
    app.sign_ins.allowed(store, ctx.client_ip).await?;
    let query = req.uri().query();
    if let Some(error) = http_util::query_value(query, "error") {
        // An OAuth error code (access_denied, login_required, ...): short, and shown as text.
        let code: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(40)
            .collect();
        return Err(Error::Forbidden(format!(
            "The sign-in provider did not sign you in ({code})."
        )));
    }
    let again = "This sign-in was not started in this browser, or took longer than ten minutes. Sign in again.";
    // Every state cookie sent (one planted by a page of the same site must not hide the
    // real one): the one the state was made for.
    let state = http_util::query_value(query, "state").unwrap_or_default();
    let Some((secret, next)) = cookies::find_all(req.headers(), app.cookies.oidc_state_name())
        .filter(|s| secret::looks_like_token(s))
        .find_map(|s| Some((s, crate::auth::oidc::check_state(s, &state)?)))
    else {
        return Err(Error::bad_request(again));
    };
    let next = safe_next(Some(&next)).ok_or_else(|| Error::bad_request(again))?;
    let Some(code) = http_util::query_value(query, "code").filter(|c| !c.is_empty()) else {
        return Err(Error::bad_request("The sign-in provider sent no code."));
    };
    let claims = oidc.finish(secret, &code).await?;
    let (identity, subject) = crate::auth::oidc::identity_from_claims(&claims, oidc.config())
        .map_err(|message| {
            tracing::info!(client = %ctx.client_ip, "sign-in through the provider refused");
            Error::Forbidden(message)
        })?;
    end_previous_login(app, req.headers()).await;
    let (identity, id) = app.start_provider_login(identity, &subject).await?;
    tracing::info!(user = %identity.name, via = "oidc", "signed in");
    let mut resp = redirect(&next);
    let headers = resp.headers_mut();
    headers.append(header::SET_COOKIE, app.cookies.session_cookie(id.expose()));
    headers.append(header::SET_COOKIE, app.cookies.clear_oidc_state_cookie());
    app.mark_sensitive(headers);
    Ok(resp)
}

/// "Sign out of latchkey?", with the button that does it.
async fn sign_out_page(app: &App, req: &Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>> {
    let Some(caller) = app.identify(req.headers(), ctx.trusted_peer).await? else {
        return Ok(redirect(&app.hub.external(paths::LOGIN)));
    };
    let xsrf = Xsrf::of(req.headers());
    Ok(page(
        app,
        &xsrf,
        StatusCode::OK,
        &SignOutPage {
            prefix: app.hub.as_str().to_owned(),
            user: Some(caller.identity.name.to_string()),
            xsrf: xsrf.value.clone(),
        },
    ))
}

async fn logout(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>> {
    let headers = if req.method() == Method::POST {
        read_form(app, req, ctx).await?.0
    } else {
        // JupyterHub signs out on GET too (its pages and JupyterLab's Log Out link here). From
        // latchkey's own pages or the address bar that is what happens; from anywhere else (a
        // link or an image on a user's server, another site) the browser is asked first.
        // (Over plain HTTP to a host name there is no Fetch Metadata: the Referer, when sent,
        // tells the same.)
        let own = app.own_origin(req.headers(), ctx.tls);
        let from_here = crate::auth::csrf::check_same_origin(
            req.headers(),
            own.as_deref(),
            req.uri().authority().map(|a| a.as_str()),
        )
        .is_ok()
            && !req
                .headers()
                .get("sec-fetch-site")
                .is_some_and(|s| s != "same-origin" && s != "none")
            && req.headers().get(header::REFERER).is_none_or(|r| {
                own.as_deref().is_some_and(|o| {
                    r.to_str()
                        .is_ok_and(|r| r.to_ascii_lowercase().starts_with(&format!("{o}/")))
                })
            });
        if !from_here {
            return sign_out_page(app, &req, ctx).await;
        }
        req.headers().clone()
    };
    // Asked while the sign-in still exists.
    let to = sign_out_destination(app, &headers, ctx).await;
    // Every session cookie sent: one planted by a page of the same site, sent first, must not
    // leave the real sign-in (and the sign-ins handed over from it) alive.
    for id in cookies::find_all(&headers, app.cookies.session_name())
        .filter(|id| secret::looks_like_token(id))
    {
        app.end_login(&crate::secret::TokenHash::of(id)).await?;
    }
    let mut resp = redirect(&to.unwrap_or_else(|| app.hub.external(paths::LOGIN)));
    resp.headers_mut()
        .append(header::SET_COOKIE, app.cookies.clear_session_cookie());
    Ok(resp)
}

/// Where signing out ends, besides latchkey's sign-in page: for a user the proxy in front
/// named, its own sign-out (only that ends their sign-in); for one who signed in through the
/// OpenID Connect provider, the provider's, so that the next sign-in asks again.
async fn sign_out_destination(app: &App, headers: &HeaderMap, ctx: &Ctx) -> Option<String> {
    let caller = app.identify(headers, ctx.trusted_peer).await.ok()??;
    match caller.credential {
        Credential::Proxy => app.config.trusted_header.as_ref()?.logout_url.clone(),
        Credential::Cookie if app.is_provider_user(&caller.identity.name).await => {
            app.oidc.as_ref()?.config().logout_url.clone()
        }
        _ => None,
    }
}

async fn home(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>> {
    let caller = signed_in(app, &req, ctx).await?;
    let xsrf = Xsrf::of(req.headers());
    // A server's key from the address, never free text: a link cannot put words on the page.
    let notice = http_util::query_value(req.uri().query(), "left")
        .and_then(|key| ServerRef::parse(&key).ok())
        .map(|server| format!("You left {}.", server.label()));
    let table = app.cache.routes();
    let mut mine: Vec<ServerRef> = table
        .iter()
        .filter_map(|r| r.server.clone())
        .filter(|s| s.owner == caller.identity.name)
        .collect();
    mine.sort();
    mine.dedup();
    let mut servers = vec![];
    for s in mine {
        let grants = app.cache.grants(app.store.as_ref(), &s).await?;
        let now = clock::now();
        servers.push(MyServerRow {
            label: s.label(),
            url: s.url_path(),
            share_url: sharing_url(app, &s),
            sharees: sharee_summary(
                grants
                    .grants
                    .iter()
                    .filter(|g| g.is_live(now))
                    .map(|g| grantee_label(&g.grantee))
                    .collect(),
            ),
        });
    }
    let shared = app
        .shared_with(&caller.identity)
        .await?
        .into_iter()
        .map(|(s, g)| SharedRow {
            label: s.label(),
            key: s.key(),
            owner: s.owner.to_string(),
            role: g.role.to_string(),
            since: clock::iso(g.created_at),
            url: s.url_path(),
            direct: matches!(g.grantee, Grantee::User(_)),
        })
        .collect();
    Ok(page(
        app,
        &xsrf,
        StatusCode::OK,
        &HomePage {
            prefix: app.hub.as_str().to_owned(),
            user: Some(caller.identity.name.to_string()),
            xsrf: xsrf.value.clone(),
            notice,
            servers,
            shared,
        },
    ))
}

fn sharing_url(app: &App, server: &ServerRef) -> String {
    app.hub.external(&format!(
        "{}{}/{}",
        paths::SHARING,
        server.owner,
        server.name.as_str()
    ))
}

/// `/hub/sharing/{owner}/{server}` → the server.
fn sharing_target(path: &str) -> Result<ServerRef> {
    let rest = path.strip_prefix(paths::SHARING).unwrap_or("");
    let rest = rest.trim_end_matches('/');
    let (owner, name) = rest.split_once('/').unwrap_or((rest, ""));
    let owner =
        UserName::parse(owner).map_err(|_| Error::NotFound("There is no such server.".into()))?;
    let name =
        ServerName::parse(name).map_err(|_| Error::NotFound("There is no such server.".into()))?;
    Ok(ServerRef::new(owner, name))
}

async fn sharing_page(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>> {
    let caller = signed_in(app, &req, ctx).await?;
    let server = sharing_target(req.uri().path())?;
    let xsrf = Xsrf::of(req.headers());
    let shown = Shown {
        done: req.uri().query().and_then(Done::from_query),
        ..Shown::default()
    };
    render_sharing(app, &caller, &server, &xsrf, shown, StatusCode::OK).await
}

/// What the sharing page shows of what was just done, besides the server's links and people.
#[derive(Default)]
struct Shown {
    new_link: Option<NewLink>,
    done: Option<Done>,
    error: Option<String>,
    /// The direct-share form as it was sent, when it comes back with an error to correct.
    share: ShareForm,
}

async fn render_sharing(
    app: &App,
    caller: &Caller,
    server: &ServerRef,
    xsrf: &Xsrf,
    shown: Shown,
    status: StatusCode,
) -> Result<Response<Body>> {
    let Shown {
        new_link,
        done,
        error,
        share,
    } = shown;
    let standing = app.manager_standing(caller, server).await?;
    let running = app.cache.routes().server_route(server).is_some();
    let links = app
        .list_invites(caller, server)
        .await?
        .into_iter()
        .map(|i| LinkRow {
            id: i.id,
            role: i.role.to_string(),
            created: clock::iso(i.created_at),
            created_label: clock::readable_utc(i.created_at),
            created_by: i.created_by.to_string(),
            expires_iso: clock::iso(i.expires_at),
            expires_epoch: i.expires_at,
            uses: i.exchange_count,
            last_used: i.last_exchanged_at.map(clock::iso),
        })
        .collect::<Vec<_>>();
    // Links are multi-use: whoever was just revoked can accept an active one again.
    let links_still_admit =
        matches!(done, Some(Done::Revoked(_) | Done::AllRevoked)) && !links.is_empty();
    let grants = app
        .list_grants(caller, server)
        .await?
        .into_iter()
        .map(|g| {
            let (kind, name) = match &g.grant.grantee {
                Grantee::User(u) => ("user", u.to_string()),
                Grantee::Group(gr) => ("group", gr.to_string()),
            };
            GrantRow {
                kind: kind.into(),
                name,
                role: g.grant.role.to_string(),
                since: clock::iso(g.grant.created_at),
                expires: g.grant.expires_at.map(clock::iso),
                via: match &g.grant.via {
                    Via::Code { .. } => "accepted an invite link".into(),
                    Via::Direct { by } => format!("shared by {by}"),
                },
                connected: g.connected,
            }
        })
        .collect();
    let limits = app.config.sharing;
    let mut lifetimes: Vec<Lifetime> = [300u64, 900, 3600, 4 * 3600, 86400, 7 * 86400]
        .into_iter()
        .chain([limits.default_expires_in])
        .filter(|s| *s >= limits.min_expires_in && *s <= limits.max_expires_in)
        .map(|s| Lifetime {
            seconds: s,
            label: describe_duration(s),
            selected: s == limits.default_expires_in,
        })
        .collect();
    lifetimes.sort_by_key(|l| l.seconds);
    lifetimes.dedup_by_key(|l| l.seconds);
    let mut resp = page(
        app,
        xsrf,
        status,
        &SharingPage {
            prefix: app.hub.as_str().to_owned(),
            user: Some(caller.identity.name.to_string()),
            xsrf: xsrf.value.clone(),
            server_label: server.label(),
            page_url: sharing_url(app, server),
            action_url: sharing_url(app, server),
            running,
            is_owner: standing == crate::sharing::access::Standing::Owner,
            error,
            notice: done.as_ref().map(Done::notice),
            links_still_admit,
            new_link,
            share,
            lifetimes,
            links,
            grants,
        },
    );
    app.mark_sensitive(resp.headers_mut());
    Ok(resp)
}

async fn tokens_page(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>> {
    let caller = signed_in(app, &req, ctx).await?;
    let xsrf = Xsrf::of(req.headers());
    // Only a token id from the address, never free text: a link cannot put words on this page.
    let notice = http_util::query_value(req.uri().query(), "deleted")
        .filter(|id| crate::tokens::is_id(id))
        .map(|id| format!("Token {id} was deleted: it is refused from now on, and what was opened with it is closed."));
    let origin = app.own_origin(req.headers(), ctx.tls);
    let view = TokensView {
        caller: &caller,
        xsrf: &xsrf,
        origin,
    };
    render_tokens(app, view, None, notice, None, StatusCode::OK).await
}

/// What every rendering of the tokens page needs.
struct TokensView<'a> {
    caller: &'a Caller,
    xsrf: &'a Xsrf,
    origin: Option<String>,
}

async fn tokens_action(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>> {
    let caller = signed_in(app, &req, ctx).await?;
    let origin = app.own_origin(req.headers(), ctx.tls);
    let (headers, form) = read_form(app, req, ctx).await?;
    let xsrf = Xsrf::of(&headers);
    let view = TokensView {
        caller: &caller,
        xsrf: &xsrf,
        origin,
    };
    let me = &caller.identity.name;
    let result = match form_value(&form, "action").unwrap_or("") {
        "create" => {
            let note = form_value(&form, "note").unwrap_or("");
            let created = match lifetime(&form) {
                Ok(lifetime) => app.create_api_token(me, note, lifetime).await,
                Err(e) => Err(e),
            };
            match created {
                Ok((token, record)) => {
                    let created = NewToken {
                        token: token.expose().to_owned(),
                        id: crate::tokens::id(&token.hash()),
                        note: record.note,
                        expires_iso: record.expires_at.map(clock::iso).unwrap_or_default(),
                    };
                    return render_tokens(app, view, Some(created), None, None, StatusCode::OK)
                        .await;
                }
                Err(e) => Err(e),
            }
        }
        "delete" => {
            let id = form_value(&form, "id").unwrap_or("");
            app.delete_api_token_by_id(me, id).await
        }
        _ => Err(Error::bad_request("Unknown action.")),
    };
    match result {
        Ok(deleted) => Ok(redirect(&format!(
            "{}?deleted={deleted}",
            app.hub.external(paths::TOKENS)
        ))),
        // Input mistakes are shown on the page itself, where they can be corrected.
        Err(e @ (Error::BadRequest(_) | Error::NotFound(_))) => {
            render_tokens(app, view, None, None, Some(e.message()), e.status()).await
        }
        Err(e) => Err(e),
    }
}

async fn render_tokens(
    app: &App,
    view: TokensView<'_>,
    new_token: Option<NewToken>,
    notice: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> Result<Response<Body>> {
    let tokens = app
        .store
        .list_api_tokens(&view.caller.identity.name)
        .await?
        .into_iter()
        .map(|(hash, record)| TokenRow {
            id: crate::tokens::id(&hash),
            note: record.note,
            created: clock::iso(record.created_at),
            expires: record.expires_at.map(clock::iso),
        })
        .collect();
    let lifetimes = [86400u64, 7 * 86400, 30 * 86400, 90 * 86400, 365 * 86400]
        .into_iter()
        .map(|s| Lifetime {
            seconds: s,
            label: describe_duration(s),
            selected: s == crate::tokens::DEFAULT_LIFETIME,
        })
        .collect();
    let mut resp = page(
        app,
        view.xsrf,
        status,
        &TokensPage {
            prefix: app.hub.as_str().to_owned(),
            user: Some(view.caller.identity.name.to_string()),
            xsrf: view.xsrf.value.clone(),
            origin: view.origin.unwrap_or_default(),
            action_url: app.hub.external(paths::TOKENS),
            error,
            notice,
            new_token,
            max_note: crate::tokens::MAX_NOTE,
            lifetimes,
            tokens,
        },
    );
    app.mark_sensitive(resp.headers_mut());
    Ok(resp)
}

/// The form's `expires_in`, a number of seconds, if it has one.
fn lifetime(form: &[(String, String)]) -> Result<Option<u64>> {
    form_value(form, "expires_in")
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| Error::bad_request("The lifetime must be a number of seconds."))
        })
        .transpose()
}

fn describe_duration(s: u64) -> String {
    match s {
        s if s % 86400 == 0 => format!("{} day{}", s / 86400, if s == 86400 { "" } else { "s" }),
        s if s % 3600 == 0 => format!("{} hour{}", s / 3600, if s == 3600 { "" } else { "s" }),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

async fn sharing_action(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>> {
    let caller = signed_in(app, &req, ctx).await?;
    let server = sharing_target(req.uri().path())?;
    let origin = app.own_origin(req.headers(), ctx.tls);
    let (headers, form) = read_form(app, req, ctx).await?;
    let xsrf = Xsrf::of(&headers);
    let back = |done: Done| redirect(&format!("{}?{}", sharing_url(app, &server), done.query()));
    let action = form_value(&form, "action").unwrap_or("");
    let result = match action {
        "create-link" => {
            let role = parse_role(form_value(&form, "role"))?;
            let expires_in = lifetime(&form)?;
            match app
                .create_invite(&caller, &server, Some(role), expires_in, vec![])
                .await
            {
                Ok((code, invite)) => {
                    let path = crate::api::json::accept_path(&app.hub, code.expose());
                    let link = NewLink {
                        url: format!("{}{}", origin.unwrap_or_default(), path),
                        role: invite.role.to_string(),
                        expires_iso: clock::iso(invite.expires_at),
                        expires_epoch: invite.expires_at,
                    };
                    let shown = Shown {
                        new_link: Some(link),
                        ..Shown::default()
                    };
                    return render_sharing(app, &caller, &server, &xsrf, shown, StatusCode::OK)
                        .await;
                }
                Err(e) => Err(e),
            }
        }
        "revoke-link" => {
            let id = form_value(&form, "id").unwrap_or("");
            app.revoke_invites(&caller, &server, Some(id))
                .await
                .map(|_| Done::LinkRevoked)
        }
        "revoke-all-links" => app
            .revoke_invites(&caller, &server, None)
            .await
            .map(|_| Done::LinksRevoked),
        "revoke-user" => {
            let grantee = parse_grantee(&form)?;
            app.revoke_grantee(&caller, &server, &grantee)
                .await
                .map(|_| Done::Revoked(grantee))
        }
        "revoke-all-users" => app
            .revoke_all_grantees(&caller, &server)
            .await
            .map(|_| Done::AllRevoked),
        // A name or role that does not parse is a mistake to correct on the page, as an
        // unknown user is.
        "share" => match (parse_grantee(&form), parse_role(form_value(&form, "role"))) {
            (Ok(grantee), Ok(role)) => app
                .share_directly(&caller, &server, grantee.clone(), role, None)
                .await
                .map(|_| Done::Shared(grantee, role)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        _ => Err(Error::bad_request("Unknown action.")),
    };
    match result {
        Ok(done) => Ok(back(done)),
        // Input mistakes are shown on the page itself, where they can be corrected.
        Err(e @ (Error::BadRequest(_) | Error::NotFound(_) | Error::ServerNotRunning(_))) => {
            let share = if action == "share" {
                ShareForm::sent(&form)
            } else {
                ShareForm::default()
            };
            let shown = Shown {
                error: Some(e.message()),
                share,
                ..Shown::default()
            };
            render_sharing(app, &caller, &server, &xsrf, shown, e.status()).await
        }
        Err(e) => Err(e),
    }
}

/// What the sharing page says after a change. The address names it and the words are made
/// here, so that a link cannot put its own words on latchkey's page.
enum Done {
    LinkRevoked,
    LinksRevoked,
    Revoked(Grantee),
    AllRevoked,
    Shared(Grantee, Role),
}

impl Done {
    /// The query string of the page that reports it.
    fn query(&self) -> String {
        let with = |grantee: &Grantee| {
            let (kind, name) = match grantee {
                Grantee::User(u) => ("user", u.as_str()),
                Grantee::Group(g) => ("group", g.as_str()),
            };
            format!("kind={kind}&name={}", http_util::percent_encode(name))
        };
        match self {
            Done::LinkRevoked => "done=link-revoked".into(),
            Done::LinksRevoked => "done=links-revoked".into(),
            Done::Revoked(g) => format!("done=revoked&{}", with(g)),
            Done::AllRevoked => "done=all-revoked".into(),
            Done::Shared(g, role) => format!("done=shared&{}&role={role}", with(g)),
        }
    }

    /// The report a query string names, if it names one.
    fn from_query(query: &str) -> Option<Done> {
        let q = http_util::parse_form(query.as_bytes());
        Some(match form_value(&q, "done")? {
            "link-revoked" => Done::LinkRevoked,
            "links-revoked" => Done::LinksRevoked,
            "revoked" => Done::Revoked(parse_grantee(&q).ok()?),
            "all-revoked" => Done::AllRevoked,
            "shared" => Done::Shared(
                parse_grantee(&q).ok()?,
                form_value(&q, "role")?.parse().ok()?,
            ),
            _ => return None,
        })
    }

    fn notice(&self) -> String {
        match self {
            Done::LinkRevoked => "The link was revoked.".into(),
            Done::LinksRevoked => "All links were revoked.".into(),
            Done::Revoked(g) => format!("{} no longer has access.", grantee_label(g)),
            Done::AllRevoked => "Everyone's access was revoked.".into(),
            Done::Shared(g, role) => format!("Shared with {} as {role}.", grantee_label(g)),
        }
    }
}

/// Who a server is shared with, for the home page: up to three names, then how many more
/// (empty: nobody).
fn sharee_summary(mut names: Vec<String>) -> String {
    const SHOWN: usize = 3;
    names.sort();
    let more = names.len().saturating_sub(SHOWN);
    names.truncate(SHOWN);
    let mut summary = names.join(", ");
    if more > 0 {
        summary.push_str(&format!(" and {more} more"));
    }
    summary
}

fn grantee_label(g: &Grantee) -> String {
    match g {
        Grantee::User(u) => u.to_string(),
        Grantee::Group(g) => format!("group {g}"),
    }
}

fn parse_role(v: Option<&str>) -> Result<Role> {
    v.unwrap_or("use").parse().map_err(Error::BadRequest)
}

fn parse_grantee(form: &[(String, String)]) -> Result<Grantee> {
    let name = form_value(form, "name").unwrap_or("").trim();
    match form_value(form, "kind").unwrap_or("user") {
        "user" => UserName::parse(name)
            .map(Grantee::User)
            .map_err(Error::BadRequest),
        "group" => GroupName::parse(name)
            .map(Grantee::Group)
            .map_err(Error::BadRequest),
        _ => Err(Error::bad_request("kind must be user or group.")),
    }
}

async fn accept_form(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>> {
    let caller = signed_in(app, &req, ctx).await?;
    let now = clock::now();
    if let Some(wait) = app.limiter.blocked_for(ctx.client_ip, now) {
        return Err(Error::TooManyRequests { retry_after: wait });
    }
    let code = http_util::query_value(req.uri().query(), "code").unwrap_or_default();
    let next =
        safe_next(http_util::query_value(req.uri().query(), "next").as_deref()).unwrap_or_default();
    let view = if secret::looks_like_token(&code) {
        app.store
            .find_invite(&crate::secret::TokenHash::of(&code))
            .await?
    } else {
        None
    };
    let Some(view) = view else {
        app.limiter.record_failure(ctx.client_ip, now);
        return Err(Error::InviteInvalid);
    };
    let xsrf = Xsrf::of(req.headers());
    let role_explain = match view.invite.role {
        Role::View => "you may look, but not run or change anything",
        Role::Use => "you may use the server fully, as its owner does",
        Role::Admin => "you may use the server and invite others",
    };
    let mut resp = page(
        app,
        &xsrf,
        StatusCode::OK,
        &AcceptPage {
            prefix: app.hub.as_str().to_owned(),
            user: Some(caller.identity.name.to_string()),
            xsrf: xsrf.value.clone(),
            user_name: caller.identity.name.to_string(),
            inviter: view.invite.created_by.to_string(),
            server_label: view.server.label(),
            role: view.invite.role.to_string(),
            role_explain: role_explain.into(),
            expires_iso: clock::iso(view.invite.expires_at),
            expires_epoch: view.invite.expires_at,
            code,
            next,
        },
    );
    app.mark_sensitive(resp.headers_mut());
    Ok(resp)
}

async fn accept(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>> {
    let caller = signed_in(app, &req, ctx).await?;
    let now = clock::now();
    if let Some(wait) = app.limiter.blocked_for(ctx.client_ip, now) {
        return Err(Error::TooManyRequests { retry_after: wait });
    }
    let (_, form) = read_form(app, req, ctx).await?;
    let code = form_value(&form, "code").unwrap_or("");
    let accepted = match app.accept_invite(&caller.identity, code).await {
        Ok(a) => a,
        Err(Error::InviteInvalid) => {
            app.limiter.record_failure(ctx.client_ip, now);
            return Err(Error::InviteInvalid);
        }
        Err(e) => return Err(e),
    };
    let target = safe_next(form_value(&form, "next"))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| accepted.server.url_path());
    let mut resp = redirect(&target);
    app.mark_sensitive(resp.headers_mut());
    Ok(resp)
}

async fn leave(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>> {
    let caller = signed_in(app, &req, ctx).await?;
    let (_, form) = read_form(app, req, ctx).await?;
    let server =
        ServerRef::parse(form_value(&form, "server").unwrap_or("")).map_err(Error::BadRequest)?;
    app.leave(&caller.identity.name, &server).await?;
    Ok(redirect(&format!(
        "{}?left={}",
        app.hub.external(paths::HOME),
        http_util::percent_encode(&server.key())
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_home_page_names_up_to_three_sharees() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(sharee_summary(vec![]), "");
        assert_eq!(sharee_summary(names(&["nina"])), "nina");
        assert_eq!(
            sharee_summary(names(&["otto", "group analysts", "nina"])),
            "group analysts, nina, otto"
        );
        assert_eq!(
            sharee_summary(names(&["e", "d", "c", "b", "a"])),
            "a, b, c and 2 more"
        );
    }

    #[test]
    fn notices_are_named_by_the_address_and_worded_here() {
        let alice = Grantee::User(UserName::parse("alice").unwrap());
        let team = Grantee::Group(GroupName::parse("team-a").unwrap());
        for (done, says) in [
            (Done::LinkRevoked, "The link was revoked."),
            (Done::LinksRevoked, "All links were revoked."),
            (Done::Revoked(alice.clone()), "alice no longer has access."),
            (Done::AllRevoked, "Everyone's access was revoked."),
            (
                Done::Shared(team, Role::View),
                "Shared with group team-a as view.",
            ),
            (
                Done::Shared(alice, Role::Admin),
                "Shared with alice as admin.",
            ),
        ] {
            let back = Done::from_query(&done.query()).expect(says);
            assert_eq!(back.notice(), says);
        }
        for words in [
            "done=Your+account+is+locked",
            "done=revoked&kind=user&name=%3Cb%3Ex%3C%2Fb%3E",
            "done=shared&kind=user&name=alice&role=owner",
            "done=revoked",
            "error=Call+us",
            "",
        ] {
            assert!(Done::from_query(words).is_none(), "{words}");
        }
    }

    #[test]
    fn next_must_stay_on_this_origin() {
        assert_eq!(
            safe_next(Some("/user/john/")).as_deref(),
            Some("/user/john/")
        );
        assert_eq!(safe_next(Some("//evil.example/")), None);
        assert_eq!(safe_next(Some("/\\evil.example")), None);
        assert_eq!(safe_next(Some("https://evil.example/")), None);
        assert_eq!(safe_next(Some("javascript:alert(1)")), None);
        assert_eq!(safe_next(None), None);
    }

    #[test]
    fn sharing_urls_name_the_server() {
        let s = sharing_target("/hub/sharing/john/").unwrap();
        assert_eq!(s.key(), "john/");
        let s = sharing_target("/hub/sharing/john/lab").unwrap();
        assert_eq!(s.key(), "john/lab");
        assert!(sharing_target("/hub/sharing/-x/").is_err());
    }
}
