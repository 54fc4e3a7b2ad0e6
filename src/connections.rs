//! Open WebSockets and long-lived streams, so that revocation can close them at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::clock::Timestamp;
use crate::ids::{ServerRef, UserName};
use crate::routes::Route;
use crate::secret::TokenHash;

/// One open connection to a guarded server.
#[derive(Clone, Debug)]
pub struct OpenConnection {
    pub server: ServerRef,
    pub session: String,
    pub user: UserName,
    /// The sign-in session it was opened with, so that logout closes it.
    pub login: Option<TokenHash>,
    /// The API token it was opened with, so that deleting the token closes it.
    pub token: Option<TokenHash>,
    /// When that sign-in session (or API token) ends by itself.
    pub expires: Option<Timestamp>,
    pub websocket: bool,
    cancel: CancellationToken,
}

#[derive(Default)]
pub struct Connections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, OpenConnection>>,
    /// How many times the open connections were looked over to close some (snapshots and
    /// closes count, before they look). A request reads it when it begins; if it moved by the
    /// time the request registers its stream, a revocation may have run while the request was
    /// on its way, without seeing it (see [`Registration::raced`]). Every request reads it, so
    /// it has a cache line of its own, away from what registrations write.
    sweeps: Padded,
}

/// A counter on a cache line of its own.
#[derive(Default)]
#[repr(align(64))]
struct Padded(AtomicU64);

/// Removes its connection from the registry when dropped.
pub struct Registration {
    id: u64,
    registry: Arc<Connections>,
    pub cancel: CancellationToken,
    /// [`Connections::sweeps`] when the request began.
    sweeps_seen: u64,
}

impl Registration {
    /// A revocation looked over the open connections between the request's access check and
    /// this registration: it may have been meant for this one too.
    pub fn raced(&self) -> bool {
        self.registry.sweeps() != self.sweeps_seen
    }

    /// What was registered.
    pub fn connection(&self) -> Option<OpenConnection> {
        self.registry.lock().get(&self.id).cloned()
    }
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

    /// See [`Connections::sweeps`]: read it before the access check.
    pub fn sweeps(&self) -> u64 {
        self.sweeps.0.load(Ordering::SeqCst)
    }

    /// A snapshot of the open connections, to decide which must close.
    pub fn snapshot(&self) -> Vec<OpenConnection> {
        self.sweeps.0.fetch_add(1, Ordering::SeqCst);
        self.lock().values().cloned().collect()
    }

    /// Closes every connection for which `doomed` holds; returns how many.
    pub fn close_where(&self, doomed: impl Fn(&OpenConnection) -> bool) -> usize {
        // Counted before the look: a connection registered after it knows it was not seen.
        self.sweeps.0.fetch_add(1, Ordering::SeqCst);
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
    /// The route the request took (its server session is the connection's).
    pub route: Arc<Route>,
    pub user: UserName,
    pub login: Option<TokenHash>,
    pub expires: Option<Timestamp>,
    pub token: Option<TokenHash>,
    /// [`Connections::sweeps`] when the request began.
    pub sweeps_seen: u64,
}

impl Registrar {
    pub fn register(self, websocket: bool) -> Registration {
        let registry = self.registry;
        let id = registry.next.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        registry.lock().insert(
            id,
            OpenConnection {
                server: self.server,
                session: self.route.session.clone(),
                user: self.user,
                login: self.login,
                expires: self.expires,
                token: self.token,
                websocket,
                cancel: cancel.clone(),
            },
        );
        Registration {
            id,
            registry,
            cancel,
            sweeps_seen: self.sweeps_seen,
        }
    }
}
