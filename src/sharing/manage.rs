//! Sharing operations, used by the JSON API, the pages and the CLI alike: who may manage a
//! server's sharing, and what each change does to the store, the cache and open connections.

use crate::app::{App, Caller};
use crate::auth::Identity;
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::ids::{GroupName, ServerRef, UserName};
use crate::metrics::Revocation;
use crate::secret::{self, Secret, TokenHash};
use crate::sharing::access::{self, Standing};
use crate::sharing::{EndReason, Grant, Grantee, InviteRecord, Role, Via};
use crate::store::Accepted;

/// What a manager may do to a server, decided against one server session.
pub struct Managing {
    pub standing: Standing,
    /// The running session the decision was made against, if the server runs.
    pub session: Option<String>,
    /// The grants of that session.
    pub grants: std::sync::Arc<crate::store::ServerGrants>,
}

/// A grant with what the sharing menu shows about it.
pub struct GrantView {
    pub grant: Grant,
    pub connected: bool,
}

/// The longest a direct share may be limited to (a share without end gives no `expires_in`).
const MAX_DIRECT_SHARE_SECONDS: u64 = 10 * 365 * 24 * 3600;

impl App {
    /// The caller's standing on a server they want to manage; refuses everyone else.
    pub async fn manager_standing(&self, caller: &Caller, server: &ServerRef) -> Result<Standing> {
        self.managing(caller, server).await.map(|m| m.standing)
    }

    /// Decides whether the caller may manage the server, against the grants of the server's
    /// current session (never a cached older one): a change then applies to that session only.
    pub async fn managing(&self, caller: &Caller, server: &ServerRef) -> Result<Managing> {
        let session = self
            .cache
            .routes()
            .server_route(server)
            .map(|r| r.session.clone());
        let mut grants = self.cache.grants(self.store.as_ref(), server).await?;
        if grants.session != session {
            grants = self
                .cache
                .refresh_grants(self.store.as_ref(), server)
                .await?;
        }
        let standing = if caller.identity.name == server.owner {
            Some(Standing::Owner)
        } else if grants.session.is_some() && grants.session == session {
            access::standing(
                &server.owner,
                &caller.identity,
                &grants.grants,
                crate::clock::now(),
            )
        } else {
            None
        };
        match standing {
            Some(standing) if standing.may_manage_sharing() => Ok(Managing {
                standing,
                // The running route's session: a grantee's standing was decided against it,
                // and the store refuses writes once it is no longer current.
                session,
                grants,
            }),
            _ => Err(Error::Forbidden(format!(
                "Only the owner of {} (or someone it was shared with as admin) may manage its sharing.",
                server.label()
            ))),
        }
    }

    fn require_owner(&self, caller: &Caller, server: &ServerRef, what: &str) -> Result<()> {
        if caller.identity.name == server.owner {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "Only the owner of {} may {what}.",
                server.label()
            )))
        }
    }

    fn check_enabled(&self) -> Result<()> {
        if self.config.sharing.enabled {
            Ok(())
        } else {
            Err(Error::Forbidden(
                "Sharing is turned off on this latchkey.".into(),
            ))
        }
    }

    /// Admins may hand out `view` and `use`, never `admin`.
    fn check_role_grantable(standing: Standing, role: Role) -> Result<()> {
        match (standing, role) {
            (Standing::Owner, _) => Ok(()),
            (_, Role::Admin) => Err(Error::Forbidden(
                "Only the owner may share with role admin.".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The current session of a running server.
    fn running_session(&self, server: &ServerRef) -> Result<String> {
        self.cache
            .routes()
            .server_route(server)
            .map(|r| r.session.clone())
            .ok_or_else(|| Error::ServerNotRunning(server.label()))
    }

    /// Creates an invite link. The code is returned once and stored only as a hash.
    pub async fn create_invite(
        &self,
        caller: &Caller,
        server: &ServerRef,
        role: Option<Role>,
        expires_in: Option<u64>,
        groups: Vec<GroupName>,
    ) -> Result<(Secret, InviteRecord)> {
        self.check_enabled()?;
        let standing = self.manager_standing(caller, server).await?;
        let role = role.unwrap_or(Role::Use);
        Self::check_role_grantable(standing, role)?;
        let limits = self.config.sharing;
        let expires_in = expires_in.unwrap_or(limits.default_expires_in);
        if expires_in < limits.min_expires_in || expires_in > limits.max_expires_in {
            return Err(Error::bad_request(format!(
                "expires_in must be between {} and {} seconds.",
                limits.min_expires_in, limits.max_expires_in
            )));
        }
        for g in &groups {
            if !self.group_exists(g).await? {
                return Err(Error::bad_request(format!("There is no group {g}.")));
            }
        }
        let session = self.running_session(server)?;
        let now = self.store.now().await?;
        let code = Secret::generate();
        let invite = InviteRecord {
            id: secret::random_id(),
            role,
            created_by: caller.identity.name.clone(),
            created_at: now,
            expires_at: now + expires_in as i64,
            groups,
            exchange_count: 0,
            last_exchanged_at: None,
        };
        self.store
            .create_invite(server, &session, &code.hash(), &invite)
            .await?;
        tracing::info!(server = %server, invite = %invite.id, role = %role, "invite created");
        self.metrics.invite_created();
        Ok((code, invite))
    }

    pub async fn list_invites(
        &self,
        caller: &Caller,
        server: &ServerRef,
    ) -> Result<Vec<InviteRecord>> {
        self.manager_standing(caller, server).await?;
        self.store.list_invites(server).await
    }

    /// Revokes one link (`id`) or all links of a server.
    pub async fn revoke_invites(
        &self,
        caller: &Caller,
        server: &ServerRef,
        id: Option<&str>,
    ) -> Result<u64> {
        match id {
            Some(id) => {
                if self.manager_standing(caller, server).await? != Standing::Owner
                    && self
                        .store
                        .list_invites(server)
                        .await?
                        .iter()
                        .any(|i| i.id == id && i.role == Role::Admin)
                {
                    return Err(Error::Forbidden(
                        "Only the owner may revoke a link that grants admin.".into(),
                    ));
                }
            }
            None => self.require_owner(caller, server, "revoke all links")?,
        }
        let n = self.store.revoke_invites(server, id).await?;
        if id.is_some() && n == 0 {
            return Err(Error::NotFound("There is no such link.".into()));
        }
        tracing::info!(server = %server, one = id.is_some(), "invite links revoked");
        self.metrics.revoked(match id {
            Some(_) => Revocation::Link,
            None => Revocation::AllLinks,
        });
        Ok(n)
    }

    /// Exchanges an invite code for a grant of the signed-in user.
    pub async fn accept_invite(&self, identity: &Identity, code: &str) -> Result<Accepted> {
        self.check_enabled()?;
        if !secret::looks_like_token(code) {
            return Err(Error::InviteInvalid);
        }
        let now = self.store.now().await?;
        let accepted = self
            .store
            .accept_invite(&TokenHash::of(code), identity, now)
            .await?;
        tracing::info!(server = %accepted.server, user = %identity.name, role = %accepted.grant.role, "invite accepted");
        self.metrics.invite_accepted();
        self.sharing_changed(&accepted.server).await;
        Ok(accepted)
    }

    /// Grants of a server's current session, with presence.
    pub async fn list_grants(&self, caller: &Caller, server: &ServerRef) -> Result<Vec<GrantView>> {
        self.manager_standing(caller, server).await?;
        let grants = self
            .cache
            .refresh_grants(self.store.as_ref(), server)
            .await?;
        let connected = grants
            .session
            .as_deref()
            .map(|s| self.connections.connected_users(server, s))
            .unwrap_or_default();
        let now = crate::clock::now();
        Ok(grants
            .grants
            .iter()
            .filter(|g| g.is_live(now))
            .map(|g| GrantView {
                connected: matches!(&g.grantee, Grantee::User(u) if connected.contains(u)),
                grant: g.clone(),
            })
            .collect())
    }

    /// Shares a server directly with a user or a group.
    pub async fn share_directly(
        &self,
        caller: &Caller,
        server: &ServerRef,
        grantee: Grantee,
        role: Role,
        expires_in: Option<u64>,
    ) -> Result<Grant> {
        self.check_enabled()?;
        let managing = self.managing(caller, server).await?;
        let standing = managing.standing;
        Self::check_role_grantable(standing, role)?;
        // An admin may add people, or raise someone to `use`; lowering, limiting or replacing
        // an admin is the owner's alone.
        if standing != Standing::Owner
            && let Some(existing) = managing.grants.grants.iter().find(|g| g.grantee == grantee)
            && (existing.role == Role::Admin || role < existing.role || expires_in.is_some())
        {
            return Err(Error::Forbidden(
                "Only the owner may lower, limit or replace an admin's access.".into(),
            ));
        }
        if expires_in.is_some_and(|s| s > MAX_DIRECT_SHARE_SECONDS) {
            return Err(Error::bad_request(
                "expires_in may be at most ten years; leave it out for a share without end.",
            ));
        }
        match &grantee {
            Grantee::User(u) if u == &server.owner => {
                return Err(Error::bad_request("The owner already has full access."));
            }
            Grantee::User(u) if self.identity_of(u).await?.is_none() => {
                return Err(Error::bad_request(format!("There is no user {u}.")));
            }
            Grantee::Group(g) if !self.group_exists(g).await? => {
                return Err(Error::bad_request(format!("There is no group {g}.")));
            }
            _ => {}
        }
        let session = managing
            .session
            .ok_or_else(|| Error::ServerNotRunning(server.label()))?;
        let now: Timestamp = self.store.now().await?;
        let grant = Grant {
            grantee,
            role,
            created_at: now,
            expires_at: expires_in.map(|s| now + s as i64),
            via: Via::Direct {
                by: caller.identity.name.clone(),
            },
        };
        let stored = self.store.put_grant(server, &session, &grant).await;
        // Whatever the store said, this instance looks again (the write may have landed).
        self.sharing_changed(server).await;
        stored?;
        tracing::info!(server = %server, grantee = %grant.grantee.key(), role = %role, "shared directly");
        Ok(grant)
    }

    /// Revokes one grantee. Admins may revoke `view` and `use` grants only.
    pub async fn revoke_grantee(
        &self,
        caller: &Caller,
        server: &ServerRef,
        grantee: &Grantee,
    ) -> Result<()> {
        let managing = self.managing(caller, server).await?;
        if managing.standing != Standing::Owner
            && managing
                .grants
                .grants
                .iter()
                .any(|g| &g.grantee == grantee && g.role == Role::Admin)
        {
            return Err(Error::Forbidden(
                "Only the owner may revoke an admin's access.".into(),
            ));
        }
        // Without a running session there is nothing to revoke: every grant ended with it.
        let Some(session) = managing.session else {
            return Ok(());
        };
        let removed = self
            .store
            .revoke_grant(server, &session, grantee, EndReason::Revoked)
            .await;
        self.sharing_changed(server).await;
        let removed = removed?;
        tracing::info!(server = %server, grantee = %grantee.key(), removed, "grant revoked");
        if removed {
            self.metrics.revoked(Revocation::Grantee);
        }
        Ok(())
    }

    /// Revokes every grant of the server's current session (O(1) in the store).
    pub async fn revoke_all_grantees(&self, caller: &Caller, server: &ServerRef) -> Result<()> {
        self.require_owner(caller, server, "revoke all users")?;
        let revoked = self.store.revoke_all_grants(server).await;
        self.sharing_changed(server).await;
        revoked?;
        tracing::info!(server = %server, "all grants revoked");
        self.metrics.revoked(Revocation::AllGrantees);
        Ok(())
    }

    /// Servers shared with this user (directly or through a group) whose session is running.
    pub async fn shared_with(&self, identity: &Identity) -> Result<Vec<(ServerRef, Grant)>> {
        let now = crate::clock::now();
        let table = self.cache.routes();
        Ok(self
            .store
            .shared_with(identity)
            .await?
            .into_iter()
            .filter(|(s, g)| g.is_live(now) && table.server_route(s).is_some())
            .collect())
    }

    /// The sharee leaves a server shared with them.
    pub async fn leave(&self, user: &UserName, server: &ServerRef) -> Result<()> {
        let session = self
            .cache
            .routes()
            .server_route(server)
            .map(|r| r.session.clone())
            .unwrap_or_default();
        let removed = self
            .store
            .revoke_grant(
                server,
                &session,
                &Grantee::User(user.clone()),
                EndReason::Left,
            )
            .await;
        self.sharing_changed(server).await;
        let removed = removed?;
        if !removed {
            return Err(Error::NotFound(format!(
                "{} is not shared with you directly.",
                server.label()
            )));
        }
        tracing::info!(server = %server, user = %user, "sharee left");
        Ok(())
    }
}
