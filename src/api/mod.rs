//! The JSON API under `/hub/api/`, shaped like JupyterHub's sharing API.

pub mod json;
pub mod routes;

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::app::{App, Caller, Ctx};
use crate::clock;
use crate::error::{Error, Result};
use crate::http_util::{self, Body, json_response, no_content};
use crate::ids::{GroupName, ServerName, ServerRef, UserName};
use crate::secret::TokenHash;
use crate::sharing::{Grantee, Role};
use crate::store::ApiTokenRecord;
use json::{Page, grant_json, invite_json, server_json};

pub async fn handle(app: &Arc<App>, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>> {
    let path = req.uri().path().to_owned();
    let rest = path
        .strip_prefix(crate::paths::API)
        .unwrap_or("")
        .to_owned();
    let segments: Vec<&str> = rest.split('/').collect();
    let method = req.method().clone();

    if rest.is_empty() && method == Method::GET {
        return Ok(json_response(
            StatusCode::OK,
            &json!({"version": env!("CARGO_PKG_VERSION"), "name": "latchkey"}),
        ));
    }

    let caller = app
        .identify(req.headers(), ctx.trusted_peer)
        .await?
        .ok_or(Error::Unauthorized)?;
    let changes_state = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if changes_state && caller.credential.is_browser() {
        crate::auth::csrf::check_form_origin(
            req.headers(),
            app.own_origin(req.headers(), ctx.tls).as_deref(),
            req.uri().authority().map(|a| a.as_str()),
            app.config.hosts.is_none(),
        )?;
        crate::auth::csrf::check_token(req.headers(), None)?;
    }
    let query = req.uri().query().map(str::to_owned);
    let origin = app.own_origin(req.headers(), ctx.tls);
    let body = http_util::read_body(req.into_body(), app.config.max_body).await?;

    match (method.clone(), segments.as_slice()) {
        (Method::GET, ["user"]) => Ok(json_response(StatusCode::OK, &whoami(&caller))),
        (Method::POST, ["users", name, "tokens"]) => {
            let name = user_param(name)?;
            if name != caller.identity.name {
                return Err(Error::Forbidden(
                    "You may only create tokens for yourself.".into(),
                ));
            }
            #[derive(Deserialize, Default)]
            #[serde(deny_unknown_fields)]
            struct NewToken {
                #[serde(default)]
                note: Option<String>,
                /// Seconds the token is valid; 30 days when not given, at most a year.
                #[serde(default)]
                expires_in: Option<u64>,
            }
            let req: NewToken = parse_json_or_default(&body)?;
            let (token, record) = app
                .create_api_token(&name, req.note.as_deref().unwrap_or(""), req.expires_in)
                .await?;
            let mut answer = token_json(&token.hash(), &record);
            answer["token"] = json!(token.expose());
            answer["user"] = json!(name.as_str());
            Ok(json_response(StatusCode::CREATED, &answer))
        }
        (Method::GET, ["users", name, "tokens"]) => {
            let name = user_param(name)?;
            require_self(&caller, &name, TOKENS_ARE_OWN)?;
            let items: Vec<Value> = app
                .store
                .list_api_tokens(&name)
                .await?
                .iter()
                .map(|(hash, record)| token_json(hash, record))
                .collect();
            Ok(Page::from_query(query.as_deref())?.respond(items, &path))
        }
        (Method::DELETE, ["users", name, "tokens", id]) => {
            let name = user_param(name)?;
            require_self(&caller, &name, TOKENS_ARE_OWN)?;
            app.delete_api_token_by_id(&name, id).await?;
            Ok(no_content())
        }
        (Method::GET, ["users", name, "shared"]) => {
            let name = user_param(name)?;
            require_self(&caller, &name, SHARES_ARE_OWN)?;
            let shared = app.shared_with(&caller.identity).await?;
            let items: Vec<Value> = shared
                .iter()
                .map(|(server, grant)| {
                    json!({
                        "server": server_json(server, true),
                        "role": grant.role,
                        "created_at": clock::iso(grant.created_at),
                        "expires_at": grant.expires_at.map(clock::iso),
                        "kind": match &grant.grantee { Grantee::User(_) => "user", Grantee::Group(_) => "group" },
                    })
                })
                .collect();
            Ok(Page::from_query(query.as_deref())?.respond(items, &path))
        }
        (Method::DELETE, ["users", name, "shared", owner, server @ ..]) => {
            let name = user_param(name)?;
            require_self(&caller, &name, SHARES_ARE_OWN)?;
            let server = server_param(owner, server)?;
            app.leave(&name, &server).await?;
            Ok(no_content())
        }
        (_, ["share-codes", owner, server @ ..]) => {
            let server = server_param(owner, server)?;
            share_codes(
                app,
                &caller,
                &server,
                method,
                &body,
                query.as_deref(),
                origin,
                &path,
            )
            .await
        }
        (_, ["shares", owner, server @ ..]) => {
            let server = server_param(owner, server)?;
            shares(
                app,
                &caller,
                &server,
                method,
                &body,
                query.as_deref(),
                &path,
            )
            .await
        }
        (Method::POST | Method::DELETE, ["workspace", server, "share", user]) => {
            // openEO style: share the caller's own server with one user, read only.
            let server = ServerRef::new(
                caller.identity.name.clone(),
                ServerName::parse(server).map_err(Error::BadRequest)?,
            );
            let user = user_param(user)?;
            if method == Method::POST {
                let grant = app
                    .share_directly(&caller, &server, Grantee::User(user), Role::View, None)
                    .await?;
                Ok(json_response(
                    StatusCode::CREATED,
                    &grant_json(&server, &grant, false),
                ))
            } else {
                app.revoke_grantee(&caller, &server, &Grantee::User(user))
                    .await?;
                Ok(no_content())
            }
        }
        (_, ["user"] | ["users", ..] | ["workspace", ..]) => Err(Error::MethodNotAllowed),
        _ => Err(Error::NotFound("There is no such API endpoint.".into())),
    }
}

#[allow(clippy::too_many_arguments)]
async fn share_codes(
    app: &Arc<App>,
    caller: &Caller,
    server: &ServerRef,
    method: Method,
    body: &[u8],
    query: Option<&str>,
    origin: Option<String>,
    path: &str,
) -> Result<Response<Body>> {
    match method {
        Method::GET => {
            let invites = app.list_invites(caller, server).await?;
            let items = invites
                .iter()
                .map(|i| invite_json(&app.hub, server, i, None, origin.as_deref()))
                .collect();
            Ok(Page::from_query(query)?.respond(items, path))
        }
        Method::POST => {
            #[derive(Deserialize, Default)]
            #[serde(deny_unknown_fields)]
            struct NewCode {
                expires_in: Option<u64>,
                role: Option<Role>,
                #[serde(default)]
                groups: Vec<GroupName>,
            }
            let req: NewCode = parse_json_or_default(body)?;
            let (code, invite) = app
                .create_invite(caller, server, req.role, req.expires_in, req.groups)
                .await?;
            let mut resp = json_response(
                StatusCode::CREATED,
                &invite_json(
                    &app.hub,
                    server,
                    &invite,
                    Some(code.expose()),
                    origin.as_deref(),
                ),
            );
            app.mark_sensitive(resp.headers_mut());
            Ok(resp)
        }
        Method::DELETE => {
            let id = http_util::query_value(query, "id");
            app.revoke_invites(caller, server, id.as_deref()).await?;
            Ok(no_content())
        }
        _ => Err(Error::MethodNotAllowed),
    }
}

async fn shares(
    app: &Arc<App>,
    caller: &Caller,
    server: &ServerRef,
    method: Method,
    body: &[u8],
    query: Option<&str>,
    path: &str,
) -> Result<Response<Body>> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Target {
        user: Option<UserName>,
        group: Option<GroupName>,
        role: Option<Role>,
        expires_in: Option<u64>,
    }
    let grantee = |t: &Target| match (&t.user, &t.group) {
        (Some(u), None) => Ok(Grantee::User(u.clone())),
        (None, Some(g)) => Ok(Grantee::Group(g.clone())),
        _ => Err(Error::bad_request(
            "Give exactly one of \"user\" or \"group\".",
        )),
    };
    match method {
        Method::GET => {
            let grants = app.list_grants(caller, server).await?;
            let items = grants
                .iter()
                .map(|g| grant_json(server, &g.grant, g.connected))
                .collect();
            Ok(Page::from_query(query)?.respond(items, path))
        }
        Method::POST => {
            let t: Target = parse_json(body)?;
            let g = grantee(&t)?;
            let grant = app
                .share_directly(caller, server, g, t.role.unwrap_or(Role::Use), t.expires_in)
                .await?;
            Ok(json_response(
                StatusCode::CREATED,
                &grant_json(server, &grant, false),
            ))
        }
        Method::PATCH => {
            let t: Target = parse_json(body)?;
            if t.role.is_some() || t.expires_in.is_some() {
                return Err(Error::bad_request(
                    "PATCH revokes a user's or group's access; it takes only \"user\" or \"group\".",
                ));
            }
            let g = grantee(&t)?;
            app.revoke_grantee(caller, server, &g).await?;
            let grants = app.list_grants(caller, server).await?;
            let items = grants
                .iter()
                .map(|g| grant_json(server, &g.grant, g.connected))
                .collect();
            Ok(Page::from_query(None)?.respond(items, path))
        }
        Method::DELETE => {
            app.revoke_all_grantees(caller, server).await?;
            Ok(no_content())
        }
        _ => Err(Error::MethodNotAllowed),
    }
}

fn whoami(caller: &Caller) -> Value {
    json!({
        "kind": "user",
        "name": caller.identity.name.as_str(),
        "groups": caller.identity.groups,
    })
}

/// An API token as listed: never the token itself.
fn token_json(hash: &TokenHash, record: &ApiTokenRecord) -> Value {
    json!({
        "id": crate::tokens::id(hash),
        "note": record.note,
        "created_at": clock::iso(record.created_at),
        "expires_at": record.expires_at.map(clock::iso),
    })
}

/// What a caller is told who asks for someone else's shares or tokens.
const SHARES_ARE_OWN: &str = "You may only look at or change your own shares.";
const TOKENS_ARE_OWN: &str = "You may only look at or delete your own API tokens.";

fn require_self(caller: &Caller, name: &UserName, refusal: &str) -> Result<()> {
    if &caller.identity.name == name {
        Ok(())
    } else {
        Err(Error::Forbidden(refusal.into()))
    }
}

fn user_param(s: &str) -> Result<UserName> {
    let decoded = percent_encoding::percent_decode_str(s).decode_utf8_lossy();
    UserName::parse(&decoded).map_err(Error::BadRequest)
}

/// `{owner}/{server}` from the path; a missing or empty server is the default server.
fn server_param(owner: &str, rest: &[&str]) -> Result<ServerRef> {
    let owner = user_param(owner)?;
    let name = match rest {
        [] | [""] => ServerName::default(),
        [name] | [name, ""] => ServerName::parse(name).map_err(Error::BadRequest)?,
        _ => return Err(Error::NotFound("There is no such API endpoint.".into())),
    };
    Ok(ServerRef::new(owner, name))
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::bad_request(format!("The request body is not valid: {e}")))
}

fn parse_json_or_default<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse_json(body)
    }
}
