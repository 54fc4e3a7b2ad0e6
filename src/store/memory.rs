//! The embedded store: everything in one process's memory, behind one mutex. The default when
//! no Redis is configured.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    Accepted, ApiTokenRecord, Failures, InviteView, LoginRecord, NewRoute, RouteChange,
    ServerGrants, Store, StoredRoute, UserRecord, merged_role,
};
use crate::auth::Identity;
use crate::auth::ratelimit::FixedWindows;
use crate::clock::{self, Timestamp};
use crate::error::{Error, Result};
use crate::ids::{ServerRef, UserName};
use crate::secret::TokenHash;
use crate::sharing::{EndReason, Grant, Grantee, InviteRecord, Via};

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    revision: u64,
    routes: BTreeMap<String, RouteEntry>,
    servers: HashMap<ServerRef, ServerState>,
    logins: HashMap<TokenHash, LoginRecord>,
    tokens: HashMap<TokenHash, ApiTokenRecord>,
    users: BTreeMap<UserName, UserRecord>,
    /// Code hash -> (server, session, invite id).
    codes: HashMap<TokenHash, (ServerRef, String, String)>,
    /// Failed sign-ins per client.
    sign_in_failures: FixedWindows<String>,
}

struct RouteEntry {
    route: StoredRoute,
    target: String,
    explicit_session: Option<String>,
}

#[derive(Default)]
struct ServerState {
    /// The running session, if the server has a route.
    session: Option<String>,
    grants: BTreeMap<Grantee, Grant>,
    invites: BTreeMap<String, (TokenHash, InviteRecord)>,
    ended: HashMap<UserName, EndReason>,
}

impl ServerState {
    /// Ends the current session: grants and invites go, grantees learn why.
    fn end_session(&mut self, reason: EndReason) {
        self.revoke_all(reason);
        self.invites.clear();
        self.session = None;
    }

    fn revoke_all(&mut self, reason: EndReason) {
        for grantee in std::mem::take(&mut self.grants).into_keys() {
            if let Grantee::User(u) = grantee {
                self.ended.insert(u, reason);
            }
        }
    }
}

impl Inner {
    fn bump(&mut self) {
        self.revision += 1;
    }

    fn server(&mut self, server: &ServerRef) -> &mut ServerState {
        self.servers.entry(server.clone()).or_default()
    }
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-written in a way that
        // matters more than refusing all further requests, so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn revision(&self) -> Result<u64> {
        Ok(self.lock().revision)
    }

    async fn now(&self) -> Result<Timestamp> {
        Ok(clock::now())
    }

    async fn list_routes(&self) -> Result<Vec<StoredRoute>> {
        Ok(self
            .lock()
            .routes
            .values()
            .map(|e| e.route.clone())
            .collect())
    }

    async fn put_route(&self, new: NewRoute) -> Result<RouteChange> {
        let mut inner = self.lock();
        let old = inner.routes.get(&new.path);
        let keeps_session = old
            .is_some_and(|o| o.target == new.target && o.explicit_session == new.explicit_session);
        let (session, created_at, last_activity) = match old {
            Some(o) if keeps_session => (
                o.route.session.clone(),
                o.route.created_at,
                o.route.last_activity,
            ),
            Some(o) => (
                new.explicit_session
                    .clone()
                    .unwrap_or_else(|| new.fresh_session.clone()),
                new.now,
                o.route.last_activity,
            ),
            None => (
                new.explicit_session
                    .clone()
                    .unwrap_or_else(|| new.fresh_session.clone()),
                new.now,
                clock::now_millis(),
            ),
        };
        let mut ended = None;
        if let Some(server) = &new.server {
            let state = inner.server(server);
            if state.session.as_deref() != Some(session.as_str()) {
                if let Some(old_session) = state.session.clone() {
                    ended = Some((server.clone(), old_session));
                }
                state.end_session(EndReason::ServerRestarted);
                state.session = Some(session.clone());
            }
        }
        let route = StoredRoute {
            path: new.path.clone(),
            data: new.data,
            session,
            created_at,
            last_activity,
        };
        inner.routes.insert(
            new.path,
            RouteEntry {
                route: route.clone(),
                target: new.target,
                explicit_session: new.explicit_session,
            },
        );
        inner.bump();
        Ok(RouteChange {
            route: Some(route),
            ended,
        })
    }

    async fn delete_route(&self, path: &str, server: Option<&ServerRef>) -> Result<RouteChange> {
        let mut inner = self.lock();
        let Some(entry) = inner.routes.remove(path) else {
            return Ok(RouteChange {
                route: None,
                ended: None,
            });
        };
        let mut ended = None;
        if let Some(server) = server {
            let state = inner.server(server);
            if state.session.as_deref() == Some(entry.route.session.as_str()) {
                ended = Some((server.clone(), entry.route.session.clone()));
                state.end_session(EndReason::ServerRestarted);
            }
        }
        inner.bump();
        Ok(RouteChange {
            route: Some(entry.route),
            ended,
        })
    }

    async fn record_activity(&self, activity: &[(String, i64)]) -> Result<()> {
        let mut inner = self.lock();
        for (path, ms) in activity {
            if let Some(e) = inner.routes.get_mut(path) {
                e.route.last_activity = e.route.last_activity.max(*ms);
            }
        }
        Ok(())
    }

    async fn put_login(&self, id: &TokenHash, record: &LoginRecord) -> Result<()> {
        let mut inner = self.lock();
        let now = clock::now();
        inner.logins.retain(|_, r| r.expires_at > now);
        inner.logins.insert(*id, record.clone());
        Ok(())
    }

    async fn add_sign_in_failure(&self, client: &str, window: u64) -> Result<Failures> {
        let now = clock::now();
        Ok(self
            .lock()
            .sign_in_failures
            .add(client.to_owned(), now, window))
    }

    async fn sign_in_failures(&self, client: &str, _window: u64) -> Result<Option<Failures>> {
        let now = clock::now();
        Ok(self.lock().sign_in_failures.get(&client.to_owned(), now))
    }

    async fn get_login(&self, id: &TokenHash) -> Result<Option<LoginRecord>> {
        let now = clock::now();
        Ok(self
            .lock()
            .logins
            .get(id)
            .filter(|r| r.expires_at > now)
            .cloned())
    }

    async fn delete_login(&self, id: &TokenHash) -> Result<()> {
        self.lock().logins.remove(id);
        Ok(())
    }

    async fn take_login(&self, id: &TokenHash) -> Result<Option<LoginRecord>> {
        let now = clock::now();
        Ok(self.lock().logins.remove(id).filter(|r| r.expires_at > now))
    }

    async fn put_user(&self, user: &UserRecord) -> Result<()> {
        self.lock().users.insert(user.name.clone(), user.clone());
        Ok(())
    }

    async fn get_user(&self, name: &UserName) -> Result<Option<UserRecord>> {
        Ok(self.lock().users.get(name).cloned())
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        Ok(self.lock().users.values().cloned().collect())
    }

    async fn delete_user(&self, name: &UserName) -> Result<bool> {
        Ok(self.lock().users.remove(name).is_some())
    }

    async fn put_api_token(&self, token: &TokenHash, record: &ApiTokenRecord) -> Result<()> {
        self.lock().tokens.insert(*token, record.clone());
        Ok(())
    }

    async fn get_api_token(&self, token: &TokenHash) -> Result<Option<ApiTokenRecord>> {
        let now = clock::now();
        Ok(self
            .lock()
            .tokens
            .get(token)
            .filter(|r| r.is_live(now))
            .cloned())
    }

    async fn list_api_tokens(&self, user: &UserName) -> Result<Vec<(TokenHash, ApiTokenRecord)>> {
        let now = clock::now();
        let mut inner = self.lock();
        inner.tokens.retain(|_, r| r.is_live(now));
        let mut list: Vec<(TokenHash, ApiTokenRecord)> = inner
            .tokens
            .iter()
            .filter(|(_, r)| &r.user == user)
            .map(|(h, r)| (*h, r.clone()))
            .collect();
        drop(inner);
        super::newest_first(&mut list);
        Ok(list)
    }

    async fn delete_api_token(&self, user: &UserName, token: &TokenHash) -> Result<bool> {
        let now = clock::now();
        let mut inner = self.lock();
        let theirs = inner
            .tokens
            .get(token)
            .is_some_and(|r| &r.user == user && r.is_live(now));
        if theirs {
            inner.tokens.remove(token);
        }
        Ok(theirs)
    }

    async fn create_invite(
        &self,
        server: &ServerRef,
        session: &str,
        code: &TokenHash,
        invite: &InviteRecord,
    ) -> Result<()> {
        let mut inner = self.lock();
        let now = clock::now();
        let state = inner.server(server);
        if state.session.as_deref() != Some(session) {
            return Err(Error::ServerNotRunning(server.label()));
        }
        state.invites.retain(|_, (_, i)| i.is_live(now));
        state
            .invites
            .insert(invite.id.clone(), (*code, invite.clone()));
        // Forget codes whose invite is gone (revoked, expired, or its session ended).
        let inner = &mut *inner;
        let servers = &inner.servers;
        inner.codes.retain(|_, (s, sess, id)| {
            servers.get(s).is_some_and(|st| {
                st.session.as_deref() == Some(sess.as_str()) && st.invites.contains_key(id)
            })
        });
        inner.codes.insert(
            *code,
            (server.clone(), session.to_owned(), invite.id.clone()),
        );
        inner.bump();
        Ok(())
    }

    async fn find_invite(&self, code: &TokenHash) -> Result<Option<InviteView>> {
        let mut inner = self.lock();
        Ok(live_invite(&mut inner, code, clock::now())
            .map(|(server, invite)| InviteView { server, invite }))
    }

    async fn list_invites(&self, server: &ServerRef) -> Result<Vec<InviteRecord>> {
        let now = clock::now();
        let mut inner = self.lock();
        // Reads never create state: any signed-in user may ask about any server name.
        let Some(state) = inner.servers.get_mut(server) else {
            return Ok(vec![]);
        };
        state.invites.retain(|_, (_, i)| i.is_live(now));
        let mut out: Vec<InviteRecord> = state.invites.values().map(|(_, i)| i.clone()).collect();
        // Oldest first, as the Redis store lists them.
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn revoke_invites(&self, server: &ServerRef, id: Option<&str>) -> Result<u64> {
        let mut inner = self.lock();
        let Some(state) = inner.servers.get_mut(server) else {
            return Ok(0);
        };
        let removed: Vec<TokenHash> = match id {
            Some(id) => state
                .invites
                .remove(id)
                .map(|(h, _)| h)
                .into_iter()
                .collect(),
            None => std::mem::take(&mut state.invites)
                .into_values()
                .map(|(h, _)| h)
                .collect(),
        };
        let had_session = state.session.is_some();
        for h in &removed {
            inner.codes.remove(h);
        }
        inner.bump();
        Ok(match id {
            Some(_) => removed.len() as u64,
            None => u64::from(had_session),
        })
    }

    async fn accept_invite(
        &self,
        code: &TokenHash,
        user: &Identity,
        now: Timestamp,
    ) -> Result<Accepted> {
        let mut inner = self.lock();
        let Some((server, invite)) = live_invite(&mut inner, code, now) else {
            return Err(Error::InviteInvalid);
        };
        if !invite.groups.is_empty() && !invite.groups.iter().any(|g| user.groups.contains(g)) {
            return Err(Error::Forbidden(
                "This invite is only for members of certain groups, and you are not in any of them."
                    .into(),
            ));
        }
        let state = inner.server(&server);
        let grantee = Grantee::User(user.name.clone());
        let existing = state.grants.get(&grantee).map(|g| g.role);
        let grant = Grant {
            grantee: grantee.clone(),
            role: merged_role(existing, invite.role),
            created_at: now,
            expires_at: None,
            via: Via::Code {
                id: invite.id.clone(),
            },
        };
        state.grants.insert(grantee, grant.clone());
        state.ended.remove(&user.name);
        if let Some((_, i)) = state.invites.get_mut(&invite.id) {
            i.exchange_count += 1;
            i.last_exchanged_at = Some(now);
        }
        inner.bump();
        Ok(Accepted { server, grant })
    }

    async fn grants(&self, server: &ServerRef) -> Result<ServerGrants> {
        let inner = self.lock();
        let Some(state) = inner.servers.get(server) else {
            return Ok(ServerGrants::default());
        };
        Ok(ServerGrants {
            session: state.session.clone(),
            grants: state.grants.values().cloned().collect(),
        })
    }

    async fn put_grant(&self, server: &ServerRef, session: &str, grant: &Grant) -> Result<()> {
        let mut inner = self.lock();
        let state = inner.server(server);
        if state.session.as_deref() != Some(session) {
            return Err(Error::ServerNotRunning(server.label()));
        }
        if let Grantee::User(u) = &grant.grantee {
            state.ended.remove(u);
        }
        state.grants.insert(grant.grantee.clone(), grant.clone());
        inner.bump();
        Ok(())
    }

    async fn revoke_grant(
        &self,
        server: &ServerRef,
        session: &str,
        grantee: &Grantee,
        reason: EndReason,
    ) -> Result<bool> {
        let mut inner = self.lock();
        let Some(state) = inner.servers.get_mut(server) else {
            return Ok(false);
        };
        if state.session.as_deref() != Some(session) {
            return Ok(false);
        }
        let removed = state.grants.remove(grantee).is_some();
        if let (true, Grantee::User(u)) = (removed, grantee) {
            state.ended.insert(u.clone(), reason);
        }
        inner.bump();
        Ok(removed)
    }

    async fn revoke_all_grants(&self, server: &ServerRef) -> Result<()> {
        let mut inner = self.lock();
        if let Some(state) = inner.servers.get_mut(server) {
            state.revoke_all(EndReason::Revoked);
        }
        inner.bump();
        Ok(())
    }

    async fn shared_with(&self, user: &Identity) -> Result<Vec<(ServerRef, Grant)>> {
        let inner = self.lock();
        let mut out = vec![];
        for (server, state) in &inner.servers {
            if let Some(g) = crate::sharing::access::best_grant(state.grants.values(), user) {
                out.push((server.clone(), g.clone()));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn end_reason(&self, server: &ServerRef, user: &UserName) -> Result<Option<EndReason>> {
        Ok(self
            .lock()
            .servers
            .get(server)
            .and_then(|s| s.ended.get(user).copied()))
    }
}

/// The live invite behind a code; forgets the code if its invite is gone.
fn live_invite(
    inner: &mut Inner,
    code: &TokenHash,
    now: Timestamp,
) -> Option<(ServerRef, InviteRecord)> {
    let (server, session, id) = inner.codes.get(code)?.clone();
    let state = inner.servers.get(&server);
    let invite = state
        .filter(|s| s.session.as_deref() == Some(session.as_str()))
        .and_then(|s| s.invites.get(&id))
        .filter(|(h, i)| h == code && i.is_live(now))
        .map(|(_, i)| i.clone());
    if invite.is_none() {
        inner.codes.remove(code);
    }
    invite.map(|i| (server, i))
}
