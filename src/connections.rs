//! Open WebSockets and long-lived streams, so that revocation can close them at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::clock::Timestamp;
use crate::ids::{ServerRef, UserName};
use crate::secret::TokenHash;

/// One open connection to a guarded server.
#[derive(Clone, Debug)]
pub struct OpenConnection {
    pub server: ServerRef,
    pub session: String,
    pub user: UserName,
    /// The sign-in session it was opened with, so that logout closes it.
    pub login: Option<TokenHash>,
    /// When that sign-in session ends by itself.
    pub login_expires: Option<Timestamp>,
    pub websocket: bool,
    cancel: CancellationToken,
}

#[derive(Default)]
pub struct Connections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, OpenConnection>>,
}

/// Removes its connection from the registry when dropped.
pub struct Registration {
    id: u64,
    registry: Arc<Connections>,
    pub cancel: CancellationToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OpenConnection>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(
        self: &Arc<Self>,
        server: ServerRef,
        session: String,
        user: UserName,
        login: Option<TokenHash>,
        login_expires: Option<Timestamp>,
        websocket: bool,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        self.lock().insert(
            id,
            OpenConnection {
                server,
                session,
                user,
                login,
                login_expires,
                websocket,
                cancel: cancel.clone(),
            },
        );
        Registration {
            id,
            registry: self.clone(),
            cancel,
        }
    }

    /// A snapshot of the open connections.
    pub fn snapshot(&self) -> Vec<OpenConnection> {
        self.lock().values().cloned().collect()
    }

    /// Closes every connection for which `doomed` holds; returns how many.
    pub fn close_where(&self, doomed: impl Fn(&OpenConnection) -> bool) -> usize {
        let open = self.lock();
        let mut n = 0;
        for c in open.values().filter(|c| doomed(c)) {
            if !c.cancel.is_cancelled() {
                c.cancel.cancel();
                n += 1;
            }
        }
        n
    }

    /// Users with an open connection to this server session (for "connected now").
    pub fn connected_users(&self, server: &ServerRef, session: &str) -> Vec<UserName> {
        let mut users: Vec<UserName> = self
            .lock()
            .values()
            .filter(|c| &c.server == server && c.session == session && !c.cancel.is_cancelled())
            .map(|c| c.user.clone())
            .collect();
        users.sort();
        users.dedup();
        users
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// What is needed to register a connection, if the response turns out to be long-lived.
pub struct Registrar {
    pub registry: Arc<Connections>,
    pub server: ServerRef,
    pub session: String,
    pub user: UserName,
    pub login: Option<TokenHash>,
    pub login_expires: Option<Timestamp>,
}

impl Registrar {
    pub fn register(self, websocket: bool) -> Registration {
        self.registry.register(
            self.server,
            self.session,
            self.user,
            self.login,
            self.login_expires,
            websocket,
        )
    }
}
