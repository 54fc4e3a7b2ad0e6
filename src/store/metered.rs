//! A `Store` that times every call of the store it wraps and counts the calls the backend could
//! not answer. It forwards every method, the defaulted ones included, and changes no result.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{
    Accepted, ApiTokenRecord, Failures, InviteView, LoginRecord, NewRoute, RouteChange,
    ServerGrants, Store, StoreEvent, StoredRoute, UserRecord,
};
use crate::auth::Identity;
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::ids::{ServerRef, UserName};
use crate::metrics::StoreMetrics;
use crate::secret::TokenHash;
use crate::sharing::{EndReason, Grant, Grantee, InviteRecord};

pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: StoreMetrics,
}

/// Wraps `inner` so that its calls are measured in `metrics`.
pub fn wrap(inner: Arc<dyn Store>, metrics: &StoreMetrics) -> Arc<dyn Store> {
    Arc::new(MeteredStore {
        inner,
        metrics: metrics.clone(),
    })
}

impl MeteredStore {
    async fn timed<T>(&self, op: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
        let started = Instant::now();
        let result = call.await;
        // Domain outcomes (unknown code, server not running) are answers, not store failures.
        let failed = matches!(result, Err(Error::StoreUnavailable | Error::Internal));
        self.metrics.observe(op, started.elapsed(), failed);
        result
    }
}

#[async_trait]
impl Store for MeteredStore {
    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<StoreEvent>> {
        self.inner.subscribe()
    }

    async fn ping(&self) -> Result<()> {
        self.timed("ping", self.inner.ping()).await
    }

    async fn revision(&self) -> Result<u64> {
        self.timed("revision", self.inner.revision()).await
    }

    async fn now(&self) -> Result<Timestamp> {
        self.timed("now", self.inner.now()).await
    }

    async fn list_routes(&self) -> Result<Vec<StoredRoute>> {
        self.timed("list_routes", self.inner.list_routes()).await
    }

    async fn put_route(&self, route: NewRoute) -> Result<RouteChange> {
        self.timed("put_route", self.inner.put_route(route)).await
    }

    async fn delete_route(&self, path: &str, server: Option<&ServerRef>) -> Result<RouteChange> {
        self.timed("delete_route", self.inner.delete_route(path, server))
            .await
    }

    async fn record_activity(&self, activity: &[(String, i64)]) -> Result<()> {
        self.timed("record_activity", self.inner.record_activity(activity))
            .await
    }

    async fn put_login(&self, id: &TokenHash, record: &LoginRecord) -> Result<()> {
        self.timed("put_login", self.inner.put_login(id, record))
            .await
    }

    async fn add_sign_in_failure(&self, client: &str, window: u64) -> Result<Failures> {
        self.timed(
            "add_sign_in_failure",
            self.inner.add_sign_in_failure(client, window),
        )
        .await
    }

    async fn sign_in_failures(&self, client: &str, window: u64) -> Result<Option<Failures>> {
        self.timed(
            "sign_in_failures",
            self.inner.sign_in_failures(client, window),
        )
        .await
    }

    async fn get_login(&self, id: &TokenHash) -> Result<Option<LoginRecord>> {
        self.timed("get_login", self.inner.get_login(id)).await
    }

    async fn delete_login(&self, id: &TokenHash) -> Result<()> {
        self.timed("delete_login", self.inner.delete_login(id))
            .await
    }

    async fn take_login(&self, id: &TokenHash) -> Result<Option<LoginRecord>> {
        self.timed("take_login", self.inner.take_login(id)).await
    }

    async fn put_user(&self, user: &UserRecord) -> Result<()> {
        self.timed("put_user", self.inner.put_user(user)).await
    }

    async fn get_user(&self, name: &UserName) -> Result<Option<UserRecord>> {
        self.timed("get_user", self.inner.get_user(name)).await
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        self.timed("list_users", self.inner.list_users()).await
    }

    async fn delete_user(&self, name: &UserName) -> Result<bool> {
        self.timed("delete_user", self.inner.delete_user(name))
            .await
    }

    async fn put_api_token(&self, token: &TokenHash, record: &ApiTokenRecord) -> Result<()> {
        self.timed("put_api_token", self.inner.put_api_token(token, record))
            .await
    }

    async fn get_api_token(&self, token: &TokenHash) -> Result<Option<ApiTokenRecord>> {
        self.timed("get_api_token", self.inner.get_api_token(token))
            .await
    }

    async fn list_api_tokens(&self, user: &UserName) -> Result<Vec<(TokenHash, ApiTokenRecord)>> {
        self.timed("list_api_tokens", self.inner.list_api_tokens(user))
            .await
    }

    async fn delete_api_token(&self, user: &UserName, token: &TokenHash) -> Result<bool> {
        self.timed("delete_api_token", self.inner.delete_api_token(user, token))
            .await
    }

    async fn create_invite(
        &self,
        server: &ServerRef,
        session: &str,
        code: &TokenHash,
        invite: &InviteRecord,
    ) -> Result<()> {
        self.timed(
            "create_invite",
            self.inner.create_invite(server, session, code, invite),
        )
        .await
    }

    async fn find_invite(&self, code: &TokenHash) -> Result<Option<InviteView>> {
        self.timed("find_invite", self.inner.find_invite(code))
            .await
    }

    async fn list_invites(&self, server: &ServerRef) -> Result<Vec<InviteRecord>> {
        self.timed("list_invites", self.inner.list_invites(server))
            .await
    }

    async fn revoke_invites(&self, server: &ServerRef, id: Option<&str>) -> Result<u64> {
        self.timed("revoke_invites", self.inner.revoke_invites(server, id))
            .await
    }

    async fn accept_invite(
        &self,
        code: &TokenHash,
        user: &Identity,
        now: Timestamp,
    ) -> Result<Accepted> {
        self.timed("accept_invite", self.inner.accept_invite(code, user, now))
            .await
    }

    async fn grants(&self, server: &ServerRef) -> Result<ServerGrants> {
        self.timed("grants", self.inner.grants(server)).await
    }

    async fn put_grant(&self, server: &ServerRef, session: &str, grant: &Grant) -> Result<()> {
        self.timed("put_grant", self.inner.put_grant(server, session, grant))
            .await
    }

    async fn revoke_grant(
        &self,
        server: &ServerRef,
        session: &str,
        grantee: &Grantee,
        reason: EndReason,
    ) -> Result<bool> {
        self.timed(
            "revoke_grant",
            self.inner.revoke_grant(server, session, grantee, reason),
        )
        .await
    }

    async fn revoke_all_grants(&self, server: &ServerRef) -> Result<()> {
        self.timed("revoke_all_grants", self.inner.revoke_all_grants(server))
            .await
    }

    async fn shared_with(&self, user: &Identity) -> Result<Vec<(ServerRef, Grant)>> {
        self.timed("shared_with", self.inner.shared_with(user))
            .await
    }

    async fn end_reason(&self, server: &ServerRef, user: &UserName) -> Result<Option<EndReason>> {
        self.timed("end_reason", self.inner.end_reason(server, user))
            .await
    }
}
