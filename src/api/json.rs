//! JSON shapes of the sharing API, and the `items` / `_pagination` envelope.

use http::{Response, StatusCode};
use serde_json::{Value, json};

use crate::clock;
use crate::error::{Error, Result};
use crate::http_util::{self, Body, json_response};
use crate::ids::ServerRef;
use crate::sharing::{Grant, Grantee, InviteRecord, Via};

pub fn server_json(server: &ServerRef, ready: bool) -> Value {
    json!({
        "name": server.name.as_str(),
        "user": {"name": server.owner.as_str()},
        "url": server.url_path(),
        "full_name": server.key(),
        "ready": ready,
    })
}

pub fn accept_path(hub: &crate::paths::HubPrefix, code: &str) -> String {
    format!("{}?code={}", hub.external(crate::paths::ACCEPT_SHARE), code)
}

/// A share code. `code` is only given when it was just created.
pub fn invite_json(
    hub: &crate::paths::HubPrefix,
    server: &ServerRef,
    invite: &InviteRecord,
    code: Option<&str>,
    origin: Option<&str>,
) -> Value {
    let accept_url = code.map(|c| accept_path(hub, c));
    let full_accept_url = match (&accept_url, origin) {
        (Some(a), Some(o)) => Some(format!("{o}{a}")),
        _ => None,
    };
    json!({
        "id": invite.id,
        "code": code,
        "accept_url": accept_url,
        "full_accept_url": full_accept_url,
        "server": server_json(server, true),
        "role": invite.role,
        "groups": invite.groups,
        "created_by": invite.created_by.as_str(),
        "created_at": clock::iso(invite.created_at),
        "expires_at": clock::iso(invite.expires_at),
        "exchange_count": invite.exchange_count,
        "last_exchanged_at": invite.last_exchanged_at.map(clock::iso),
    })
}

pub fn grant_json(server: &ServerRef, grant: &Grant, connected: bool) -> Value {
    let (kind, user, group) = match &grant.grantee {
        Grantee::User(u) => ("user", json!({"name": u.as_str()}), Value::Null),
        Grantee::Group(g) => ("group", Value::Null, json!({"name": g.as_str()})),
    };
    let via = match &grant.via {
        Via::Code { id } => json!({"type": "code", "id": id}),
        Via::Direct { by } => json!({"type": "direct", "by": by.as_str()}),
    };
    json!({
        "server": server_json(server, true),
        "kind": kind,
        "user": user,
        "group": group,
        "role": grant.role,
        "created_at": clock::iso(grant.created_at),
        "expires_at": grant.expires_at.map(clock::iso),
        "via": via,
        "connected": connected,
    })
}

/// `?offset=&limit=` of a list request.
pub struct Page {
    pub offset: usize,
    pub limit: usize,
}

const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 200;

impl Page {
    pub fn from_query(query: Option<&str>) -> Result<Page> {
        let num = |key: &str, default: usize| -> Result<usize> {
            match http_util::query_value(query, key) {
                None => Ok(default),
                Some(v) => v
                    .parse::<usize>()
                    .map_err(|_| Error::bad_request(format!("{key} must be a whole number."))),
            }
        };
        let offset = num("offset", 0)?;
        let limit = num("limit", DEFAULT_LIMIT)?.clamp(1, MAX_LIMIT);
        Ok(Page { offset, limit })
    }

    pub fn respond(&self, items: Vec<Value>, path: &str) -> Response<Body> {
        let total = items.len();
        let page: Vec<Value> = items
            .into_iter()
            .skip(self.offset)
            .take(self.limit)
            .collect();
        let next_offset = self.offset.saturating_add(self.limit);
        let next = (next_offset < total).then(|| {
            json!({
                "offset": next_offset,
                "limit": self.limit,
                "url": format!("{path}?offset={next_offset}&limit={}", self.limit),
            })
        });
        json_response(
            StatusCode::OK,
            &json!({
                "items": page,
                "_pagination": {
                    "offset": self.offset,
                    "limit": self.limit,
                    "total": total,
                    "next": next,
                },
            }),
        )
    }
}
