//! What the request hot path reads: routes, grants, sign-ins and API tokens, held in memory.
//! Local writes refresh it at once; a revision counter polled in the background makes other
//! instances' writes visible within a second or two.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::clock::{self, Timestamp};
use crate::error::Result;
use crate::ids::ServerRef;
use crate::routes::{Route, RouteTable};
use crate::secret::TokenHash;
use crate::store::{ApiTokenRecord, LoginRecord, ServerGrants, Store};

/// How long a cached sign-in or token is trusted before the store is asked again.
const CREDENTIAL_TTL: Timestamp = 30;

#[derive(Default)]
pub struct Cache {
    routes: RwLock<Arc<RouteTable>>,
    grants: RwLock<HashMap<ServerRef, Arc<ServerGrants>>>,
    logins: RwLock<HashMap<TokenHash, (LoginRecord, Timestamp)>>,
    tokens: RwLock<HashMap<TokenHash, (ApiTokenRecord, Timestamp)>>,
    revision: AtomicU64,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl Cache {
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
        if let Some(g) = read(&self.grants).get(server) {
            return Ok(g.clone());
        }
        self.refresh_grants(store, server).await
    }

    pub async fn refresh_grants(
        &self,
        store: &dyn Store,
        server: &ServerRef,
    ) -> Result<Arc<ServerGrants>> {
        let g = Arc::new(store.grants(server).await?);
        write(&self.grants).insert(server.clone(), g.clone());
        Ok(g)
    }

    pub fn forget_grants(&self) {
        write(&self.grants).clear();
    }

    pub async fn login(&self, store: &dyn Store, id: &TokenHash) -> Result<Option<LoginRecord>> {
        let now = clock::now();
        if let Some((rec, at)) = read(&self.logins).get(id)
            && now - at < CREDENTIAL_TTL
        {
            return Ok((rec.expires_at > now).then(|| rec.clone()));
        }
        let rec = store.get_login(id).await?;
        let mut logins = write(&self.logins);
        match &rec {
            Some(r) => {
                if logins.len() > 100_000 {
                    logins.retain(|_, (_, at)| now - *at < CREDENTIAL_TTL);
                }
                logins.insert(*id, (r.clone(), now));
            }
            None => {
                logins.remove(id);
            }
        }
        Ok(rec)
    }

    pub fn forget_login(&self, id: &TokenHash) {
        write(&self.logins).remove(id);
    }

    pub async fn api_token(
        &self,
        store: &dyn Store,
        token: &TokenHash,
    ) -> Result<Option<ApiTokenRecord>> {
        let now = clock::now();
        if let Some((rec, at)) = read(&self.tokens).get(token)
            && now - at < CREDENTIAL_TTL
        {
            return Ok(Some(rec.clone()));
        }
        let rec = store.get_api_token(token).await?;
        if let Some(r) = &rec {
            let mut tokens = write(&self.tokens);
            if tokens.len() > 100_000 {
                tokens.retain(|_, (_, at)| now - *at < CREDENTIAL_TTL);
            }
            tokens.insert(*token, (r.clone(), now));
        }
        Ok(rec)
    }

    /// Returns true when the store changed since the last call (and remembers the new value).
    pub fn note_revision(&self, revision: u64) -> bool {
        self.revision.swap(revision, Ordering::AcqRel) != revision
    }
}
