//! The Redis store (standalone, Sentinel or Cluster).
//!
//! Every script touches one hash slot: the route table lives under the `{lk}` tag, and the keys
//! of one server share its own tag (`lk:{owner/name}:...`). Grants live under
//! `...:g:{session}:{generation}`: ending a session or revoking every grant moves to a new key
//! name in O(1), and the old hash merely expires. After each change, a second small script bumps
//! the revision and announces the change on the `lk:events` channel. Keys never contain a
//! secret: codes, sessions and tokens appear only as SHA-256 hashes.

use std::time::Duration;

use super::endpoint::Conn;
use async_trait::async_trait;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use super::{
    Accepted, ApiTokenRecord, Failures, InviteView, LoginRecord, NewRoute, RouteChange,
    ServerGrants, Store, StoredRoute, UserRecord,
};
use crate::auth::Identity;
use crate::clock::{self, Timestamp};
use crate::error::{Error, Result};
use crate::ids::{ServerRef, UserName};
use crate::secret::TokenHash;
use crate::sharing::{EndReason, Grant, Grantee, InviteRecord};

const ROUTES: &str = "{lk}:routes";
const ROUTE_SESSIONS: &str = "{lk}:route_sessions";
const ACTIVITY: &str = "{lk}:activity";
/// Users from the OpenID Connect provider or the sign-in proxy: name -> record.
const USERS: &str = "lk:users";
const REVISION: &str = "{lk}:rev";
/// The pub/sub channel on which every write is announced.
pub const EVENTS: &str = "lk:events";
/// How long the reasons for ended access are kept, for the refusal page.
const ENDED_TTL: u64 = 86_400;

pub struct RedisStore {
    endpoint: std::sync::Arc<super::endpoint::Endpoint>,
    scripts: Scripts,
}

struct Scripts {
    put_route: Script,
    delete_route: Script,
    server_session: Script,
    announce: Script,
    create_invite: Script,
    accept_invite: Script,
    read_grants: Script,
    put_grant: Script,
    revoke_grant: Script,
    revoke_all: Script,
    revoke_invites: Script,
}

/// What a code's pointer key holds: where its invite lives.
struct CodePointer {
    server: ServerRef,
    session: String,
    link_generation: String,
    id: String,
}

/// An invite as kept in the server's links hash.
#[derive(Serialize, Deserialize)]
struct InviteEntry {
    code_hash: String,
    invite: InviteRecord,
}

#[derive(Serialize, Deserialize)]
struct RouteBody {
    data: serde_json::Map<String, serde_json::Value>,
}

fn tag(server: &ServerRef) -> String {
    format!("lk:{{{}}}", server.key())
}
fn meta_key(server: &ServerRef) -> String {
    format!("{}:meta", tag(server))
}
fn ended_key(server: &ServerRef) -> String {
    format!("{}:ended", tag(server))
}
fn ended_all_key(server: &ServerRef) -> String {
    format!("{}:endedall", tag(server))
}
fn code_key(code: &TokenHash) -> String {
    format!("lk:code:{}", code.to_hex())
}
fn shared_key(grantee: &Grantee) -> String {
    format!("lk:shared:{}", grantee.key())
}

/// An API token's record.
fn token_key(hex: &str) -> String {
    format!("lk:token:{hex}")
}

/// Seconds the index of a user's API tokens lives after a token is added: a token lives at
/// most a year.
const TOKEN_INDEX_TTL: u64 = 366 * 86_400;

/// Failed sign-ins of one client (an address or an IPv6 /64) in its open window.
fn sign_in_failures_key(client: &str) -> String {
    format!("lk:sign-in-failures:{client}")
}

/// The set of a user's API token hashes.
fn tokens_of_key(user: &UserName) -> String {
    format!("lk:tokens-of:{}", user.as_str())
}

fn unavailable(e: redis::RedisError) -> Error {
    tracing::warn!(error = %e, "redis command failed");
    Error::StoreUnavailable
}

fn corrupt(what: &str) -> Error {
    tracing::error!(what, "unreadable record in redis");
    Error::Internal
}

fn decode<T: for<'de> Deserialize<'de>>(json: &str, what: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|_| corrupt(what))
}

fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

impl RedisStore {
    /// Connects lazily: latchkey starts even while Redis is still coming up, and commands fail
    /// fast with `StoreUnavailable` until it is reachable.
    pub async fn connect(url: &str) -> std::result::Result<Self, String> {
        RedisStore::connect_with_timeout(url, Duration::from_millis(500)).await
    }

    /// Connects with a per-command timeout: a slow or stopped Redis makes commands fail after
    /// `timeout` instead of piling up.
    pub async fn connect_with_timeout(
        url: &str,
        timeout: Duration,
    ) -> std::result::Result<Self, String> {
        Ok(RedisStore {
            endpoint: super::endpoint::Endpoint::connect(url, timeout).await?,
            scripts: Scripts::new(),
        })
    }

    /// A failure count read with its key's TTL. A count found without an end (restored from
    /// elsewhere, set by hand) is given the window it should have had: it would block the
    /// client for good, and a blocked client adds no failure that would give it one.
    async fn failures_in_window(
        &self,
        key: &str,
        count: u64,
        ttl: i64,
        window: u64,
    ) -> Result<Failures> {
        let window = window.max(1);
        if ttl == -1 {
            self.conn()
                .expire::<_, ()>(key, window as i64)
                .await
                .map_err(unavailable)?;
        }
        Ok(Failures {
            count,
            ends_in: if ttl >= 0 { ttl.max(1) as u64 } else { window },
        })
    }

    fn conn(&self) -> Conn {
        self.endpoint.conn()
    }

    /// Bumps the revision and announces what changed (`r`, `s <server>`, `l <login>`,
    /// `t <api token>`), so that
    /// every instance acts on it at once. The change itself is already stored: if announcing
    /// fails, it is retried in the background until it lands, and the caller is not failed for
    /// it (other instances also revalidate every 30 s).
    async fn announce(&self, what: &[String]) -> Result<()> {
        if announce_once(&self.scripts.announce, &mut self.conn(), what)
            .await
            .is_ok()
        {
            return Ok(());
        }
        let endpoint = self.endpoint.clone();
        let what = what.to_vec();
        tokio::spawn(async move {
            let script = Script::new(ANNOUNCE);
            let mut delay = Duration::from_millis(50);
            for _ in 0..60 {
                tokio::time::sleep(delay).await;
                match announce_once(&script, &mut endpoint.conn(), &what).await {
                    Ok(()) => return,
                    Err(_) => delay = (delay * 2).min(Duration::from_secs(1)),
                }
            }
            tracing::error!("a change could not be announced; instances revalidate within 30 s");
        });
        Ok(())
    }

    /// Starts (`Some`) or ends (`None`, only if it is still `matching`) a server's session in
    /// its own slot; returns the session that ended, if one did.
    async fn set_server_session(
        &self,
        server: &ServerRef,
        session: Option<&str>,
        matching: &str,
    ) -> Result<Option<String>> {
        let ended: String = self
            .scripts
            .server_session
            .key(meta_key(server))
            .key(ended_all_key(server))
            .arg(tag(server))
            .arg(session.unwrap_or(""))
            .arg(matching)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok((!ended.is_empty()).then_some(ended))
    }

    async fn pointer(&self, code: &TokenHash) -> Result<Option<CodePointer>> {
        let raw: Option<String> = self.conn().get(code_key(code)).await.map_err(unavailable)?;
        let Some(raw) = raw else { return Ok(None) };
        let mut parts = raw.splitn(4, '\n');
        let (Some(server), Some(session), Some(link_generation), Some(id)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(corrupt("code pointer"));
        };
        Ok(Some(CodePointer {
            server: ServerRef::parse(server).map_err(|_| corrupt("code pointer"))?,
            session: session.to_owned(),
            link_generation: link_generation.to_owned(),
            id: id.to_owned(),
        }))
    }

    /// Current (session, link generation, grant generation) of a server.
    async fn meta(&self, server: &ServerRef) -> Result<(Option<String>, String, String)> {
        let (session, lgen, ggen): (Option<String>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(meta_key(server))
                .arg("session")
                .arg("lgen")
                .arg("ggen")
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
        Ok((
            session,
            lgen.unwrap_or_else(|| "0".into()),
            ggen.unwrap_or_else(|| "0".into()),
        ))
    }
}

/// Keeps one subscription to the events channel, re-establishing it after any failure, and
/// forwards what it hears. Every (re)subscription is followed by `Resync`, because
/// announcements made while it was down are lost.
async fn listen(
    endpoint: std::sync::Arc<super::endpoint::Endpoint>,
    tx: tokio::sync::mpsc::Sender<super::StoreEvent>,
) {
    use super::StoreEvent;
    use futures_util::StreamExt;
    let mut backoff = Duration::from_millis(50);
    let mut moved = endpoint.moved();
    loop {
        let client = endpoint.client();
        moved.mark_unchanged();
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(EVENTS).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let mut pubsub = match tokio::time::timeout(Duration::from_secs(2), subscribed).await {
            Ok(Ok(p)) => p,
            _ => {
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        if tx.send(StoreEvent::Resync).await.is_err() {
            return;
        }
        let mut messages = pubsub.on_message();
        loop {
            let msg = tokio::select! {
                m = messages.next() => match m {
                    Some(m) => m,
                    None => break,
                },
                // The master moved (Sentinel failover): subscribe there instead.
                _ = moved.changed() => break,
            };
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            // "<revision> r" | "<revision> s <server>" | "<revision> l <login hash>" |
            // "<revision> t <api token hash>" | "<revision> u <user name>"
            let mut parts = payload.splitn(3, ' ');
            let revision = parts.next().and_then(|r| r.parse::<u64>().ok());
            let event = match (parts.next(), parts.next()) {
                (Some("r"), None) => Some(StoreEvent::Routes),
                (Some("s"), Some(server)) => ServerRef::parse(server).ok().map(StoreEvent::Server),
                (Some("l"), Some(hex)) => TokenHash::from_hex(hex).map(StoreEvent::LoginEnded),
                (Some("t"), Some(hex)) => TokenHash::from_hex(hex).map(StoreEvent::ApiTokenDeleted),
                (Some("u"), Some(name)) => UserName::parse(name).ok().map(StoreEvent::User),
                _ => None,
            };
            if let (Some(revision), Some(event)) = (revision, event)
                && tx.send(StoreEvent::Seen(revision)).await.is_ok()
                && tx.send(event).await.is_err()
            {
                return;
            }
        }
        tracing::warn!("lost the redis subscription; re-subscribing");
    }
}

#[async_trait]
impl Store for RedisStore {
    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<super::StoreEvent>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(listen(self.endpoint.clone(), tx));
        Some(rx)
    }

    async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn revision(&self) -> Result<u64> {
        let rev: Option<u64> = self.conn().get(REVISION).await.map_err(unavailable)?;
        Ok(rev.unwrap_or(0))
    }

    async fn now(&self) -> Result<Timestamp> {
        let (secs, _micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(secs)
    }

    async fn list_routes(&self) -> Result<Vec<StoredRoute>> {
        let mut conn = self.conn();
        let (bodies, sessions, activity): (
            Vec<(String, String)>,
            Vec<(String, String)>,
            Vec<(String, i64)>,
        ) = redis::pipe()
            .hgetall(ROUTES)
            .hgetall(ROUTE_SESSIONS)
            .hgetall(ACTIVITY)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let sessions: std::collections::HashMap<String, String> = sessions.into_iter().collect();
        let activity: std::collections::HashMap<String, i64> = activity.into_iter().collect();
        let mut out = vec![];
        for (path, body) in bodies {
            let Some(sess) = sessions.get(&path) else {
                continue;
            };
            let Some((session, created_at)) = parse_route_session(sess) else {
                continue;
            };
            let body: RouteBody = decode(&body, "route")?;
            out.push(StoredRoute {
                last_activity: activity.get(&path).copied().unwrap_or(created_at * 1000),
                path,
                data: body.data,
                session,
                created_at,
            });
        }
        Ok(out)
    }

    async fn put_route(&self, new: NewRoute) -> Result<RouteChange> {
        let explicit = new
            .explicit_session
            .as_deref()
            .map(|s| format!("x{s}"))
            .unwrap_or_default();
        let body = encode(&RouteBody {
            data: new.data.clone(),
        });
        let (session, created_at, last_activity): (String, i64, i64) = self
            .scripts
            .put_route
            .key(ROUTES)
            .key(ROUTE_SESSIONS)
            .key(ACTIVITY)
            .arg(&new.path)
            .arg(&new.target)
            .arg(explicit)
            .arg(&new.fresh_session)
            .arg(body)
            .arg(new.now)
            .arg(clock::now_millis())
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut announce = vec!["r".to_owned()];
        let mut ended = None;
        if let Some(server) = &new.server {
            ended = self
                .set_server_session(server, Some(&session), "")
                .await?
                .map(|old| (server.clone(), old));
            announce.push(format!("s {}", server.key()));
        }
        self.announce(&announce).await?;
        Ok(RouteChange {
            route: Some(StoredRoute {
                path: new.path,
                data: new.data,
                session,
                created_at,
                last_activity,
            }),
            ended,
        })
    }

    async fn delete_route(&self, path: &str, server: Option<&ServerRef>) -> Result<RouteChange> {
        let result: Option<(String, String, i64, i64)> = self
            .scripts
            .delete_route
            .key(ROUTES)
            .key(ROUTE_SESSIONS)
            .key(ACTIVITY)
            .arg(path)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let Some((body, session, created_at, last_activity)) = result else {
            return Ok(RouteChange {
                route: None,
                ended: None,
            });
        };
        let mut announce = vec!["r".to_owned()];
        let mut ended = None;
        if let Some(server) = server {
            ended = self
                .set_server_session(server, None, &session)
                .await?
                .map(|old| (server.clone(), old));
            announce.push(format!("s {}", server.key()));
        }
        self.announce(&announce).await?;
        let body: RouteBody = decode(&body, "route")?;
        Ok(RouteChange {
            route: Some(StoredRoute {
                path: path.to_owned(),
                data: body.data,
                session,
                created_at,
                last_activity,
            }),
            ended,
        })
    }

    async fn record_activity(&self, activity: &[(String, i64)]) -> Result<()> {
        if activity.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (path, ms) in activity {
            // Only paths that still have a route; a deleted route must not reappear.
            pipe.cmd("EVAL")
                .arg(
                    "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then \
                     local cur = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') \
                     if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end end \
                     return 1",
                )
                .arg(2)
                .arg(ROUTE_SESSIONS)
                .arg(ACTIVITY)
                .arg(path)
                .arg(*ms)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn put_login(&self, id: &TokenHash, record: &LoginRecord) -> Result<()> {
        let ttl = (record.expires_at - clock::now()).max(1) as u64;
        self.conn()
            .set_ex::<_, _, ()>(format!("lk:login:{}", id.to_hex()), encode(record), ttl)
            .await
            .map_err(unavailable)
    }

    async fn get_login(&self, id: &TokenHash) -> Result<Option<LoginRecord>> {
        let raw: Option<String> = self
            .conn()
            .get(format!("lk:login:{}", id.to_hex()))
            .await
            .map_err(unavailable)?;
        // The key lives at least a second, even for a login stored already expired.
        let record: Option<LoginRecord> = raw.map(|r| decode(&r, "login")).transpose()?;
        let now = clock::now();
        Ok(record.filter(|r| r.expires_at > now))
    }

    async fn delete_login(&self, id: &TokenHash) -> Result<()> {
        self.conn()
            .del::<_, ()>(format!("lk:login:{}", id.to_hex()))
            .await
            .map_err(unavailable)?;
        // Announced, so that every instance closes the connections opened with it.
        self.announce(&[format!("l {}", id.to_hex())]).await
    }

    async fn take_login(&self, id: &TokenHash) -> Result<Option<LoginRecord>> {
        let raw: Option<String> = self
            .conn()
            .get_del(format!("lk:login:{}", id.to_hex()))
            .await
            .map_err(unavailable)?;
        let record: Option<LoginRecord> = raw.map(|r| decode(&r, "login")).transpose()?;
        let now = clock::now();
        Ok(record.filter(|r| r.expires_at > now))
    }

    async fn add_sign_in_failure(&self, client: &str, window: u64) -> Result<Failures> {
        // The window opens with the first failure (SET NX with its expiry) and INCR keeps the
        // expiry; one key, so one slot in a cluster.
        let key = sign_in_failures_key(client);
        let window = window.max(1);
        let (count, ttl): (u64, i64) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&key)
            .arg(0)
            .arg("EX")
            .arg(window)
            .arg("NX")
            .ignore()
            .cmd("INCR")
            .arg(&key)
            .cmd("TTL")
            .arg(&key)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        self.failures_in_window(&key, count, ttl, window).await
    }

    async fn sign_in_failures(&self, client: &str, window: u64) -> Result<Option<Failures>> {
        let key = sign_in_failures_key(client);
        let (count, ttl): (Option<u64>, i64) = redis::pipe()
            .get(&key)
            .cmd("TTL")
            .arg(&key)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        match count {
            Some(count) => Ok(Some(
                self.failures_in_window(&key, count, ttl, window).await?,
            )),
            None => Ok(None),
        }
    }

    async fn put_user(&self, user: &UserRecord) -> Result<()> {
        self.conn()
            .hset::<_, _, _, ()>(USERS, user.name.as_str(), encode(user))
            .await
            .map_err(unavailable)?;
        self.announce(&[format!("u {}", user.name)]).await
    }

    async fn delete_user(&self, name: &UserName) -> Result<bool> {
        let deleted: i64 = self
            .conn()
            .hdel(USERS, name.as_str())
            .await
            .map_err(unavailable)?;
        self.announce(&[format!("u {name}")]).await?;
        Ok(deleted > 0)
    }

    async fn get_user(&self, name: &UserName) -> Result<Option<UserRecord>> {
        let raw: Option<String> = self
            .conn()
            .hget(USERS, name.as_str())
            .await
            .map_err(unavailable)?;
        raw.map(|r| decode(&r, "user")).transpose()
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        let all: Vec<(String, String)> = self.conn().hgetall(USERS).await.map_err(unavailable)?;
        let mut users = all
            .iter()
            .map(|(_, r)| decode::<UserRecord>(r, "user"))
            .collect::<Result<Vec<_>>>()?;
        users.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(users)
    }

    async fn put_api_token(&self, token: &TokenHash, record: &ApiTokenRecord) -> Result<()> {
        let hex = token.to_hex();
        // The user's index first, for listing and deleting (in a cluster the two keys live in
        // different slots, so these are separate commands): a listing drops members whose token
        // is gone, never misses a live one. The index outlives every token in it.
        let index = tokens_of_key(&record.user);
        redis::pipe()
            .cmd("SADD")
            .arg(&index)
            .arg(&hex)
            .ignore()
            .cmd("EXPIRE")
            .arg(&index)
            .arg(TOKEN_INDEX_TTL)
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut set = redis::cmd("SET");
        set.arg(token_key(&hex)).arg(encode(record));
        if let Some(at) = record.expires_at {
            set.arg("EXAT").arg(at.max(1));
        }
        set.query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn list_api_tokens(&self, user: &UserName) -> Result<Vec<(TokenHash, ApiTokenRecord)>> {
        let index = tokens_of_key(user);
        let members: Vec<String> = self.conn().smembers(&index).await.map_err(unavailable)?;
        let now = clock::now();
        let (mut live, mut gone) = (vec![], vec![]);
        // One GET per token: in a cluster they live in different slots.
        for hex in members {
            let raw: Option<String> = self
                .conn()
                .get(token_key(&hex))
                .await
                .map_err(unavailable)?;
            // An unreadable record (logged by decode) must not hide the others.
            let record = raw
                .and_then(|r| decode::<ApiTokenRecord>(&r, "api token").ok())
                .filter(|r| r.is_live(now) && &r.user == user);
            match (TokenHash::from_hex(&hex), record) {
                (Some(hash), Some(record)) => live.push((hash, record)),
                _ => gone.push(hex),
            }
        }
        if !gone.is_empty() {
            self.conn()
                .srem::<_, _, ()>(&index, gone)
                .await
                .map_err(unavailable)?;
        }
        super::newest_first(&mut live);
        Ok(live)
    }

    async fn delete_api_token(&self, user: &UserName, token: &TokenHash) -> Result<bool> {
        let hex = token.to_hex();
        let Some(record) = self.get_api_token(token).await? else {
            return Ok(false);
        };
        if &record.user != user {
            return Ok(false);
        }
        // The token first, then its index entry (different slots in a cluster).
        self.conn()
            .del::<_, ()>(token_key(&hex))
            .await
            .map_err(unavailable)?;
        self.conn()
            .srem::<_, _, ()>(tokens_of_key(user), &hex)
            .await
            .map_err(unavailable)?;
        // Announced, so that every instance forgets it and closes what was opened with it.
        self.announce(&[format!("t {hex}")]).await?;
        Ok(true)
    }

    async fn get_api_token(&self, token: &TokenHash) -> Result<Option<ApiTokenRecord>> {
        let raw: Option<String> = self
            .conn()
            .get(token_key(&token.to_hex()))
            .await
            .map_err(unavailable)?;
        let record: Option<ApiTokenRecord> = raw.map(|r| decode(&r, "api token")).transpose()?;
        let now = clock::now();
        Ok(record.filter(|r| r.is_live(now)))
    }

    async fn create_invite(
        &self,
        server: &ServerRef,
        session: &str,
        code: &TokenHash,
        invite: &InviteRecord,
    ) -> Result<()> {
        let entry = encode(&InviteEntry {
            code_hash: code.to_hex(),
            invite: invite.clone(),
        });
        let link_generation: Option<String> = self
            .scripts
            .create_invite
            .key(meta_key(server))
            .arg(session)
            .arg(&invite.id)
            .arg(entry)
            .arg(invite.expires_at)
            .arg(tag(server))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let Some(lgen) = link_generation else {
            return Err(Error::ServerNotRunning(server.label()));
        };
        // The pointer only locates the invite; the entry in the server's slot decides.
        redis::cmd("SET")
            .arg(code_key(code))
            .arg(format!(
                "{}\n{session}\n{lgen}\n{}",
                server.key(),
                invite.id
            ))
            .arg("EXAT")
            .arg(invite.expires_at)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        self.announce(&[format!("s {}", server.key())]).await
    }

    async fn find_invite(&self, code: &TokenHash) -> Result<Option<InviteView>> {
        let Some(ptr) = self.pointer(code).await? else {
            return Ok(None);
        };
        let (session, lgen, _) = self.meta(&ptr.server).await?;
        if session.as_deref() != Some(ptr.session.as_str()) || lgen != ptr.link_generation {
            return Ok(None);
        }
        let links = format!("{}:l:{}:{}", tag(&ptr.server), ptr.session, lgen);
        let raw: Option<String> = self
            .conn()
            .hget(&links, &ptr.id)
            .await
            .map_err(unavailable)?;
        let Some(raw) = raw else { return Ok(None) };
        let entry: InviteEntry = decode(&raw, "invite")?;
        let now = self.now().await?;
        if entry.code_hash != code.to_hex() || !entry.invite.is_live(now) {
            return Ok(None);
        }
        // The exchange counters live beside the invite, as list_invites reads them.
        let counts = format!("{}:lc:{}:{}", tag(&ptr.server), ptr.session, lgen);
        let (n, t): (Option<u64>, Option<Timestamp>) = redis::cmd("HMGET")
            .arg(&counts)
            .arg(format!("{}:n", ptr.id))
            .arg(format!("{}:t", ptr.id))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut invite = entry.invite;
        invite.exchange_count = n.unwrap_or(0);
        invite.last_exchanged_at = t;
        Ok(Some(InviteView {
            server: ptr.server,
            invite,
        }))
    }

    async fn list_invites(&self, server: &ServerRef) -> Result<Vec<InviteRecord>> {
        let (session, lgen, _) = self.meta(server).await?;
        let Some(session) = session else {
            return Ok(vec![]);
        };
        let links = format!("{}:l:{}:{}", tag(server), session, lgen);
        let counts = format!("{}:lc:{}:{}", tag(server), session, lgen);
        let mut conn = self.conn();
        let (entries, counters): (Vec<(String, String)>, Vec<(String, i64)>) = redis::pipe()
            .hgetall(&links)
            .hgetall(&counts)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let counters: std::collections::HashMap<String, i64> = counters.into_iter().collect();
        let now = self.now().await?;
        let mut out = vec![];
        for (id, raw) in entries {
            let entry: InviteEntry = decode(&raw, "invite")?;
            let mut invite = entry.invite;
            if !invite.is_live(now) {
                continue;
            }
            invite.exchange_count = counters.get(&format!("{id}:n")).copied().unwrap_or(0) as u64;
            invite.last_exchanged_at = counters.get(&format!("{id}:t")).copied();
            out.push(invite);
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn revoke_invites(&self, server: &ServerRef, id: Option<&str>) -> Result<u64> {
        // All: "1" or "0"; one: the code hash of the removed invite, or "".
        let removed: String = self
            .scripts
            .revoke_invites
            .key(meta_key(server))
            .arg(tag(server))
            .arg(id.unwrap_or(""))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let n = match id {
            None => u64::from(removed == "1"),
            Some(_) if removed.is_empty() => 0,
            Some(_) => {
                self.conn()
                    .del::<_, ()>(format!("lk:code:{removed}"))
                    .await
                    .map_err(unavailable)?;
                1
            }
        };
        self.announce(&[format!("s {}", server.key())]).await?;
        Ok(n)
    }

    async fn accept_invite(
        &self,
        code: &TokenHash,
        user: &Identity,
        _now: Timestamp,
    ) -> Result<Accepted> {
        let Some(ptr) = self.pointer(code).await? else {
            return Err(Error::InviteInvalid);
        };
        let grantee = Grantee::User(user.name.clone());
        let groups = encode(&user.groups);
        let reply: Vec<String> = self
            .scripts
            .accept_invite
            .key(meta_key(&ptr.server))
            .key(ended_key(&ptr.server))
            .key(ended_all_key(&ptr.server))
            .arg(tag(&ptr.server))
            .arg(&ptr.session)
            .arg(&ptr.link_generation)
            .arg(&ptr.id)
            .arg(code.to_hex())
            .arg(grantee.key())
            .arg(groups)
            .arg(user.name.as_str())
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        match reply.first().map(String::as_str) {
            Some("ok") => {
                let grant: Grant = decode(reply.get(1).map_or("", |s| s.as_str()), "grant")?;
                self.conn()
                    .sadd::<_, _, ()>(shared_key(&grantee), ptr.server.key())
                    .await
                    .map_err(unavailable)?;
                self.announce(&[format!("s {}", ptr.server.key())]).await?;
                Ok(Accepted {
                    server: ptr.server,
                    grant,
                })
            }
            Some("group") => Err(Error::Forbidden(
                "This invite is only for members of certain groups, and you are not in any of them."
                    .into(),
            )),
            _ => Err(Error::InviteInvalid),
        }
    }

    async fn grants(&self, server: &ServerRef) -> Result<ServerGrants> {
        let reply: Vec<String> = self
            .scripts
            .read_grants
            .key(meta_key(server))
            .arg(tag(server))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let Some((session, grants)) = reply.split_first() else {
            return Ok(ServerGrants::default());
        };
        let grants = grants
            .iter()
            .map(|g| decode::<Grant>(g, "grant"))
            .collect::<Result<Vec<_>>>()?;
        Ok(ServerGrants {
            session: Some(session.clone()),
            grants,
        })
    }

    async fn put_grant(&self, server: &ServerRef, session: &str, grant: &Grant) -> Result<()> {
        let user = match &grant.grantee {
            Grantee::User(u) => u.as_str(),
            Grantee::Group(_) => "",
        };
        let ok: i64 = self
            .scripts
            .put_grant
            .key(meta_key(server))
            .key(ended_key(server))
            .key(ended_all_key(server))
            .arg(tag(server))
            .arg(grant.grantee.key())
            .arg(encode(grant))
            .arg(user)
            .arg(session)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if ok != 1 {
            return Err(Error::ServerNotRunning(server.label()));
        }
        self.conn()
            .sadd::<_, _, ()>(shared_key(&grant.grantee), server.key())
            .await
            .map_err(unavailable)?;
        self.announce(&[format!("s {}", server.key())]).await
    }

    async fn revoke_grant(
        &self,
        server: &ServerRef,
        session: &str,
        grantee: &Grantee,
        reason: EndReason,
    ) -> Result<bool> {
        let user = match grantee {
            Grantee::User(u) => u.as_str(),
            Grantee::Group(_) => "",
        };
        let removed: i64 = self
            .scripts
            .revoke_grant
            .key(meta_key(server))
            .key(ended_key(server))
            .arg(tag(server))
            .arg(grantee.key())
            .arg(user)
            .arg(encode(&reason))
            .arg(ENDED_TTL)
            .arg(session)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        self.announce(&[format!("s {}", server.key())]).await?;
        Ok(removed == 1)
    }

    async fn revoke_all_grants(&self, server: &ServerRef) -> Result<()> {
        let _: i64 = self
            .scripts
            .revoke_all
            .key(meta_key(server))
            .key(ended_all_key(server))
            .arg(tag(server))
            .arg(encode(&EndReason::Revoked))
            .arg(ENDED_TTL)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        self.announce(&[format!("s {}", server.key())]).await
    }

    async fn shared_with(&self, user: &Identity) -> Result<Vec<(ServerRef, Grant)>> {
        let mut keys = vec![shared_key(&Grantee::User(user.name.clone()))];
        keys.extend(
            user.groups
                .iter()
                .map(|g| shared_key(&Grantee::Group(g.clone()))),
        );
        // One SMEMBERS per key: in a cluster the keys live in different slots.
        let mut servers: Vec<String> = vec![];
        for key in &keys {
            let members: Vec<String> = self.conn().smembers(key).await.map_err(unavailable)?;
            servers.extend(members);
        }
        servers.sort();
        servers.dedup();
        let mut out = vec![];
        for key in servers {
            let Ok(server) = ServerRef::parse(&key) else {
                continue;
            };
            let grants = self.grants(&server).await?;
            match crate::sharing::access::best_grant(&grants.grants, user) {
                Some(g) => out.push((server, g.clone())),
                None => {
                    // The grant ended (revoked, restarted): forget the index entries.
                    for k in &keys {
                        let _: () = self.conn().srem(k, &key).await.map_err(unavailable)?;
                    }
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn end_reason(&self, server: &ServerRef, user: &UserName) -> Result<Option<EndReason>> {
        let mut conn = self.conn();
        let one: Option<String> = conn
            .hget(ended_key(server), user.as_str())
            .await
            .map_err(unavailable)?;
        if let Some(r) = one {
            return Ok(serde_json::from_str(&r).ok());
        }
        let all: Option<String> = conn.get(ended_all_key(server)).await.map_err(unavailable)?;
        let Some(all) = all else { return Ok(None) };
        let Some((reason, old_grants)) = all.split_once('\n') else {
            return Ok(None);
        };
        let had: bool = conn
            .hexists(old_grants, Grantee::User(user.clone()).key())
            .await
            .map_err(unavailable)?;
        Ok(if had {
            serde_json::from_str(reason).ok()
        } else {
            None
        })
    }
}

/// KEYS: revision   ARGV: what changed, one announcement each
const ANNOUNCE: &str = r#"
local rev = redis.call('INCR', KEYS[1])
for _, what in ipairs(ARGV) do redis.call('PUBLISH', 'lk:events', rev .. ' ' .. what) end
return rev
"#;

async fn announce_once(
    script: &Script,
    conn: &mut Conn,
    what: &[String],
) -> redis::RedisResult<()> {
    let mut call = script.key(REVISION);
    for w in what {
        call.arg(w);
    }
    call.invoke_async::<i64>(conn).await.map(|_| ())
}

fn parse_route_session(raw: &str) -> Option<(String, i64)> {
    let mut parts = raw.splitn(4, '\n');
    let (_target, _explicit, session, created) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some((session.to_owned(), created.parse().ok()?))
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            // KEYS: routes, route_sessions, activity
            // ARGV: path, target, explicit, fresh session, body, now, now_ms
            put_route: Script::new(
                r#"
local old = redis.call('HGET', KEYS[2], ARGV[1])
local session, created = nil, ARGV[6]
if old then
  local t, e, s, c = string.match(old, '^(.-)\n(.-)\n(.-)\n(.*)$')
  if t == ARGV[2] and e == ARGV[3] then session = s; created = c end
end
if not session then
  if ARGV[3] ~= '' then session = string.sub(ARGV[3], 2) else session = ARGV[4] end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. '\n' .. ARGV[3] .. '\n' .. session .. '\n' .. created)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
if not old then redis.call('HSET', KEYS[3], ARGV[1], ARGV[7]) end
local activity = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or ARGV[7])
return {session, tonumber(created), activity}
"#,
            ),
            // KEYS: routes, route_sessions, activity   ARGV: path
            delete_route: Script::new(
                r#"
local old = redis.call('HGET', KEYS[2], ARGV[1])
if not old then return false end
local body = redis.call('HGET', KEYS[1], ARGV[1])
local activity = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
local t, e, s, c = string.match(old, '^(.-)\n(.-)\n(.-)\n(.*)$')
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return {body, s, tonumber(c), activity}
"#,
            ),
            // KEYS: meta, ended_all
            // ARGV: prefix, new session ('' to end), session that must be current to end it
            server_session: Script::new(
                r#"
local cur = redis.call('HGET', KEYS[1], 'session')
local ending = ARGV[2] == ''
if ending and cur ~= ARGV[3] then return '' end
if (not ending) and cur == ARGV[2] then return '' end
local ended = ''
if cur then
  local gg = redis.call('HGET', KEYS[1], 'ggen') or '0'
  local old_grants = ARGV[1] .. ':g:' .. cur .. ':' .. gg
  redis.call('EXPIRE', old_grants, 86400)
  redis.call('SET', KEYS[2], '"server_restarted"\n' .. old_grants, 'EX', 86400)
  -- New generations too, so that a session id used again (an explicit one) starts empty.
  redis.call('HINCRBY', KEYS[1], 'ggen', 1)
  redis.call('HINCRBY', KEYS[1], 'lgen', 1)
  ended = cur
end
if ending then
  redis.call('HDEL', KEYS[1], 'session')
else
  redis.call('HSET', KEYS[1], 'session', ARGV[2])
end
return ended
"#,
            ),
            announce: Script::new(ANNOUNCE),
            // KEYS: meta   ARGV: session, id, entry, expires_at, prefix
            // Returns the link generation, or false when the session is not current.
            create_invite: Script::new(
                r#"
local m = redis.call('HMGET', KEYS[1], 'session', 'lgen')
if m[1] ~= ARGV[1] then return false end
local lgen = m[2] or '0'
local links = ARGV[5] .. ':l:' .. ARGV[1] .. ':' .. lgen
local counts = ARGV[5] .. ':lc:' .. ARGV[1] .. ':' .. lgen
local exp = tonumber(ARGV[4])
local now = tonumber(redis.call('TIME')[1])
if exp <= now then return false end
redis.call('HSET', links, ARGV[2], ARGV[3])
for _, k in ipairs({links, counts}) do
  local ttl = redis.call('TTL', k)
  if ttl < 0 or now + ttl < exp then redis.call('EXPIREAT', k, exp + 60) end
end
return lgen
"#,
            ),
            // KEYS: meta, ended, ended_all
            // ARGV: prefix, session, link generation, id, code hash, grantee key, groups json,
            //       user name
            accept_invite: Script::new(
                r#"
local m = redis.call('HMGET', KEYS[1], 'session', 'lgen', 'ggen')
if m[1] ~= ARGV[2] or (m[2] or '0') ~= ARGV[3] then return {'invalid'} end
local sess, lgen, id = ARGV[2], ARGV[3], ARGV[4]
local links = ARGV[1] .. ':l:' .. sess .. ':' .. lgen
local counts = ARGV[1] .. ':lc:' .. sess .. ':' .. lgen
local raw = redis.call('HGET', links, id)
if not raw then return {'invalid'} end
local e = cjson.decode(raw)
if e.code_hash ~= ARGV[5] then return {'invalid'} end
local now = tonumber(redis.call('TIME')[1])
if e.invite.expires_at <= now then return {'invalid'} end
local allowed = e.invite.groups
if type(allowed) == 'table' and #allowed > 0 then
  local mine = cjson.decode(ARGV[7])
  local ok = false
  for _, g in ipairs(allowed) do
    for _, h in ipairs(mine) do if g == h then ok = true end end
  end
  if not ok then return {'group'} end
end
local grants = ARGV[1] .. ':g:' .. sess .. ':' .. (m[3] or '0')
local rank = {view = 1, use = 2, admin = 3}
local role = e.invite.role
local old = redis.call('HGET', grants, ARGV[6])
if old then
  local o = cjson.decode(old)
  if rank[o.role] and rank[o.role] > rank[role] then role = o.role end
end
local grant = cjson.encode({grantee = {kind = 'user', name = ARGV[8]}, role = role,
  created_at = now, via = {type = 'code', id = id}})
redis.call('HSET', grants, ARGV[6], grant)
redis.call('HINCRBY', counts, id .. ':n', 1)
redis.call('HSET', counts, id .. ':t', now)
-- The counters expire with the links they count.
local pt = redis.call('PTTL', links)
if pt > 0 then redis.call('PEXPIRE', counts, pt) end
redis.call('HDEL', KEYS[2], ARGV[8])
-- Shared with again: the last bulk end (restart, revoke all) no longer explains anything.
local ea = redis.call('GET', KEYS[3])
if ea then
  local old_grants = string.match(ea, '\n(.*)$')
  if old_grants then redis.call('HDEL', old_grants, ARGV[6]) end
end
return {'ok', grant}
"#,
            ),
            // KEYS: meta   ARGV: prefix
            read_grants: Script::new(
                r#"
local m = redis.call('HMGET', KEYS[1], 'session', 'ggen')
if not m[1] then return {} end
local grants = ARGV[1] .. ':g:' .. m[1] .. ':' .. (m[2] or '0')
local out = {m[1]}
for _, v in ipairs(redis.call('HVALS', grants)) do table.insert(out, v) end
return out
"#,
            ),
            // KEYS: meta, ended, ended_all   ARGV: prefix, grantee key, grant, user, session
            put_grant: Script::new(
                r#"
local m = redis.call('HMGET', KEYS[1], 'session', 'ggen')
if m[1] ~= ARGV[5] then return 0 end
local grants = ARGV[1] .. ':g:' .. m[1] .. ':' .. (m[2] or '0')
redis.call('HSET', grants, ARGV[2], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HDEL', KEYS[2], ARGV[4])
  -- Shared with again: the last bulk end (restart, revoke all) no longer explains anything.
  local ea = redis.call('GET', KEYS[3])
  if ea then
    local old_grants = string.match(ea, '\n(.*)$')
    if old_grants then redis.call('HDEL', old_grants, ARGV[2]) end
  end
end
return 1
"#,
            ),
            // KEYS: meta, ended   ARGV: prefix, grantee key, user, reason json, ttl, session
            revoke_grant: Script::new(
                r#"
local m = redis.call('HMGET', KEYS[1], 'session', 'ggen')
if m[1] ~= ARGV[6] then return 0 end
local grants = ARGV[1] .. ':g:' .. m[1] .. ':' .. (m[2] or '0')
local removed = redis.call('HDEL', grants, ARGV[2])
if removed == 1 and ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
return removed
"#,
            ),
            // KEYS: meta, ended_all   ARGV: prefix, reason json, ttl
            revoke_all: Script::new(
                r#"
local sess = redis.call('HGET', KEYS[1], 'session')
if not sess then return 0 end
local gen = redis.call('HINCRBY', KEYS[1], 'ggen', 1)
local old_grants = ARGV[1] .. ':g:' .. sess .. ':' .. (gen - 1)
redis.call('EXPIRE', old_grants, ARGV[3])
redis.call('SET', KEYS[2], ARGV[2] .. '\n' .. old_grants, 'EX', ARGV[3])
return 1
"#,
            ),
            // KEYS: meta   ARGV: prefix, id ('' for all)
            // All: '1' when there was a session, else '0'; one: the removed code's hash or ''.
            revoke_invites: Script::new(
                r#"
local m = redis.call('HMGET', KEYS[1], 'session', 'lgen')
if not m[1] then
  if ARGV[2] == '' then return '0' end
  return ''
end
local lgen = m[2] or '0'
local links = ARGV[1] .. ':l:' .. m[1] .. ':' .. lgen
if ARGV[2] == '' then
  redis.call('HINCRBY', KEYS[1], 'lgen', 1)
  return '1'
end
local raw = redis.call('HGET', links, ARGV[2])
if not raw then return '' end
local e = cjson.decode(raw)
redis.call('HDEL', links, ARGV[2])
return e.code_hash
"#,
            ),
        }
    }
}
