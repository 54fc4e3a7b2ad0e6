//! What the request hot path reads: routes, grants, sign-ins and API tokens, held in memory.
//! Local writes refresh it at once; other instances' writes arrive by pub/sub, and a revision
//! counter polled every second catches announcements that were lost.
//!
//! The cache is only trusted while the store is in reach: once the last contact is older than
//! the configured staleness window, every lookup goes to the store again (and fails with 503
//! while the store is down), so an outage cannot extend anyone's access beyond that window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::auth::Identity;
use crate::clock::{self, Timestamp};
use crate::error::Result;
use crate::ids::{ServerRef, UserName};
use crate::routes::{Route, RouteTable};
use crate::secret::TokenHash;
use crate::store::{ApiTokenRecord, LoginRecord, ServerGrants, Store};

/// How long a cached sign-in or token is trusted before the store is asked again.
const CREDENTIAL_TTL: Timestamp = 30;

/// Sign-ins or API tokens by hash, each with the time it was read from the store.
type Credentials<V> = RwLock<HashMap<TokenHash, (V, Timestamp)>>;

/// A user not in the configuration: signed in through the OpenID Connect provider
/// (`from_provider`), or named by the sign-in proxy in front.
#[derive(Clone)]
pub struct KnownUser {
    pub identity: Arc<Identity>,
    pub from_provider: bool,
}

#[derive(Default)]
pub struct Cache {
    routes: RwLock<Arc<RouteTable>>,
    /// Grants per server, with the ticket of the read that produced them.
    grants: RwLock<HashMap<ServerRef, (Arc<ServerGrants>, u64)>>,
    /// Tickets for grant reads, in the order they start.
    reads: AtomicU64,
    logins: Credentials<Arc<LoginRecord>>,
    /// Counts sign-ins and API tokens forgotten: a store read that started before one was
    /// forgotten does not put what it read into the cache (it may be from before a sign-out or
    /// the token's deletion).
    forgets: AtomicU64,
    tokens: Credentials<ApiTokenRecord>,
    /// Users who signed in through an identity provider or were named by the sign-in proxy
    /// ([`KnownUser`]), with the time each was read.
    users: RwLock<HashMap<UserName, (KnownUser, Timestamp)>>,
    /// The store revision seen by the last poll.
    revision: AtomicU64,
    /// The highest revision whose announcement arrived.
    announced: AtomicU64,
    /// Milliseconds since the epoch of the last confirmed contact with the store.
    synced_at: AtomicI64,
    max_staleness_ms: i64,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl Cache {
    pub fn new(max_staleness: std::time::Duration) -> Self {
        Cache {
            max_staleness_ms: max_staleness.as_millis() as i64,
            synced_at: AtomicI64::new(clock::now_millis()),
            ..Cache::default()
        }
    }

    /// The store answered: cached entries are as good as the announcements received so far.
    pub fn mark_synced(&self) {
        self.synced_at
            .fetch_max(clock::now_millis(), Ordering::Relaxed);
    }

    /// Whether cached entries may still be used.
    pub fn is_fresh(&self) -> bool {
        clock::now_millis() - self.synced_at.load(Ordering::Relaxed) <= self.max_staleness_ms
    }

    pub fn routes(&self) -> Arc<RouteTable> {
        read(&self.routes).clone()
    }

    /// Reloads every route from the store, keeping activity already seen here.
    pub async fn reload_routes(&self, store: &dyn Store) -> Result<()> {
        let stored = store.list_routes().await?;
        let old = self.routes();
        let mut routes = vec![];
        for s in &stored {
            match Route::from_stored(s) {
                Ok(r) => {
                    if let Some(prev) = old.get(&r.path) {
                        r.touch(prev.last_activity());
                    }
                    routes.push(Arc::new(r));
                }
                Err(e) => tracing::error!(path = %s.path, error = %e, "ignoring a stored route"),
            }
        }
        *write(&self.routes) = Arc::new(RouteTable::new(routes));
        Ok(())
    }

    /// The grants of a server's current session: from memory, or loaded once from the store.
    pub async fn grants(&self, store: &dyn Store, server: &ServerRef) -> Result<Arc<ServerGrants>> {
        if self.is_fresh()
            && let Some((g, _)) = read(&self.grants).get(server)
        {
            return Ok(g.clone());
        }
        self.refresh_grants(store, server).await
    }

    /// Reads a server's grants from the store. A read that started before another one never
    /// overwrites it (a slow read from before a revoke must not bring the grant back), and
    /// servers that are not running are not kept.
    pub async fn refresh_grants(
        &self,
        store: &dyn Store,
        server: &ServerRef,
    ) -> Result<Arc<ServerGrants>> {
        let ticket = self.reads.fetch_add(1, Ordering::AcqRel) + 1;
        let g = Arc::new(store.grants(server).await?);
        let mut grants = write(&self.grants);
        match grants.get(server) {
            Some((_, newer)) if *newer > ticket => {}
            _ if g.session.is_none() => {
                grants.remove(server);
            }
            _ => {
                if grants.len() > 100_000 {
                    grants.clear();
                }
                grants.insert(server.clone(), (g.clone(), ticket));
            }
        }
        Ok(g)
    }

    pub fn forget_grants(&self) {
        write(&self.grants).clear();
    }

    pub async fn login(
        &self,
        store: &dyn Store,
        id: &TokenHash,
    ) -> Result<Option<Arc<LoginRecord>>> {
        self.credential(
            &self.logins,
            id,
            |r, now| r.expires_at > now,
            || async { Ok(store.get_login(id).await?.map(Arc::new)) },
        )
        .await
    }

    pub fn forget_login(&self, id: &TokenHash) {
        self.forget(&self.logins, Some(id));
    }

    pub fn forget_logins(&self) {
        self.forget(&self.logins, None);
    }

    pub async fn api_token(
        &self,
        store: &dyn Store,
        token: &TokenHash,
    ) -> Result<Option<ApiTokenRecord>> {
        self.credential(
            &self.tokens,
            token,
            |r, now| r.is_live(now),
            || store.get_api_token(token),
        )
        .await
    }

    /// A user who signed in through an identity provider or was named by the sign-in proxy: as
    /// read from the store less than `CREDENTIAL_TTL` ago while the cache is fresh (so a change
    /// of groups at another instance's sign-in shows here within that time), else read again.
    pub async fn user(&self, store: &dyn Store, name: &UserName) -> Result<Option<KnownUser>> {
        let now = clock::now();
        if self.is_fresh()
            && let Some((user, at)) = read(&self.users).get(name)
            && now - at < CREDENTIAL_TTL
        {
            return Ok(Some(user.clone()));
        }
        let Some(record) = store.get_user(name).await? else {
            write(&self.users).remove(name);
            return Ok(None);
        };
        let from_provider = !record.subject.is_empty();
        Ok(Some(self.remember_user(
            record.name,
            record.groups,
            from_provider,
        )))
    }

    /// Forgets a user (`None`: every user), to be read from the store again.
    pub fn forget_users(&self, name: Option<&UserName>) {
        match name {
            Some(name) => write(&self.users).remove(name),
            None => {
                write(&self.users).clear();
                None
            }
        };
    }

    /// How many users the cache keeps before it starts over.
    const MAX_USERS: usize = 100_000;

    /// What this instance just stored of a user.
    pub fn remember_user(
        &self,
        name: UserName,
        groups: Vec<crate::ids::GroupName>,
        from_provider: bool,
    ) -> KnownUser {
        let user = KnownUser {
            identity: Arc::new(Identity {
                name: name.clone(),
                groups,
            }),
            from_provider,
        };
        let mut users = write(&self.users);
        if users.len() >= Self::MAX_USERS {
            users.clear();
        }
        users.insert(name, (user.clone(), clock::now()));
        user
    }

    /// Forgets a deleted API token.
    pub fn forget_api_token(&self, token: &TokenHash) {
        self.forget(&self.tokens, Some(token));
    }

    pub fn forget_api_tokens(&self) {
        self.forget(&self.tokens, None);
    }

    /// A sign-in or API token: the cached record while the cache is fresh and the record was
    /// read less than `CREDENTIAL_TTL` ago (none once `live` says it ended), else what `fetch`
    /// reads from the store, kept unless a credential was forgotten while it was read.
    async fn credential<V, F>(
        &self,
        cached: &Credentials<V>,
        key: &TokenHash,
        live: impl Fn(&V, Timestamp) -> bool,
        fetch: impl FnOnce() -> F,
    ) -> Result<Option<V>>
    where
        V: Clone,
        F: Future<Output = Result<Option<V>>>,
    {
        let now = clock::now();
        if self.is_fresh()
            && let Some((rec, at)) = read(cached).get(key)
            && now - at < CREDENTIAL_TTL
        {
            return Ok(live(rec, now).then(|| rec.clone()));
        }
        let forgets = self.forgets.load(Ordering::Acquire);
        let rec = fetch().await?;
        let mut map = write(cached);
        if self.forgets.load(Ordering::Acquire) != forgets {
            return Ok(rec);
        }
        match &rec {
            Some(r) => {
                if map.len() > 100_000 {
                    map.retain(|_, (_, at)| now - *at < CREDENTIAL_TTL);
                }
                map.insert(*key, (r.clone(), now));
            }
            None => {
                map.remove(key);
            }
        }
        Ok(rec)
    }

    /// Forgets one credential (or all of them, with `None`).
    fn forget<V>(&self, cached: &Credentials<V>, key: Option<&TokenHash>) {
        let mut map = write(cached);
        self.forgets.fetch_add(1, Ordering::AcqRel);
        match key {
            Some(key) => {
                map.remove(key);
            }
            None => map.clear(),
        }
    }

    /// Notes that the announcement of `revision` arrived. True when revisions were skipped:
    /// announcements are sent in revision order, so a gap means one was lost.
    pub fn note_announced(&self, revision: u64) -> bool {
        let before = self.announced.fetch_max(revision, Ordering::AcqRel);
        before != 0 && revision > before + 1
    }

    /// After a resubscription or revalidation: the store's revision is the new baseline.
    pub fn reset_announced(&self, revision: u64) {
        self.announced.store(revision, Ordering::Release);
        self.revision.store(revision, Ordering::Release);
    }

    /// Called once a second with the store's revision. True when a revision above every
    /// announcement heard was already seen at the previous call (an announcement was lost rather
    /// than still in flight); the announced revision then catches up.
    pub fn announcement_lost(&self, revision: u64) -> bool {
        let announced = self.announced.load(Ordering::Acquire);
        let previous = self.revision.swap(revision, Ordering::AcqRel);
        if revision < announced {
            // The store went back (data lost, failover to a lagging replica): nothing cached
            // can be trusted, and the baseline moves down with it.
            self.announced.store(revision, Ordering::Release);
            return true;
        }
        if revision == announced {
            return false;
        }
        if previous > announced {
            self.announced.fetch_max(revision, Ordering::AcqRel);
            return true;
        }
        false
    }
}
