//! The whole rule for who may reach a server. Pure: every input, including the time, is an
//! argument, so the rule is tested without sockets or stores.

use http::Method;

use super::{Grant, Grantee, Role};
use crate::auth::Identity;
use crate::clock::Timestamp;
use crate::ids::UserName;

/// What the caller is to a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Owner,
    Grantee(Role),
}

impl Standing {
    pub fn may_manage_sharing(self) -> bool {
        matches!(self, Standing::Owner | Standing::Grantee(Role::Admin))
    }
}

/// The request facts the rule looks at.
#[derive(Clone, Copy, Debug)]
pub struct RequestKind {
    /// GET, HEAD or OPTIONS.
    pub safe_method: bool,
    pub websocket: bool,
}

impl RequestKind {
    pub fn new(method: &Method, websocket: bool) -> Self {
        RequestKind {
            safe_method: matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS),
            websocket,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(Standing),
    /// Nobody is signed in.
    NeedsLogin,
    /// Signed in, but the server is not shared with this user.
    NotShared,
    /// Shared with role `view`, and the request would change something or open a WebSocket.
    ViewOnly,
}

/// Whether a grant is for this user, by name or through one of their groups.
pub fn covers(grant: &Grant, user: &Identity) -> bool {
    match &grant.grantee {
        Grantee::User(u) => u == &user.name,
        Grantee::Group(group) => user.groups.contains(group),
    }
}

/// The grant with the best role among those for this user, live or not.
pub fn best_grant<'a>(
    grants: impl IntoIterator<Item = &'a Grant>,
    user: &Identity,
) -> Option<&'a Grant> {
    grants
        .into_iter()
        .filter(|g| covers(g, user))
        .max_by_key(|g| g.role)
}

/// The caller's best standing on a server whose owner is `owner`, given the live grants of the
/// server's current session.
pub fn standing(
    owner: &UserName,
    caller: &Identity,
    grants: &[Grant],
    now: Timestamp,
) -> Option<Standing> {
    if &caller.name == owner {
        return Some(Standing::Owner);
    }
    best_grant(grants.iter().filter(|g| g.is_live(now)), caller).map(|g| Standing::Grantee(g.role))
}

/// May this caller make this request to a server owned by `owner`?
pub fn decide(
    owner: &UserName,
    caller: Option<&Identity>,
    grants: &[Grant],
    request: RequestKind,
    now: Timestamp,
) -> Decision {
    let Some(caller) = caller else {
        return Decision::NeedsLogin;
    };
    match standing(owner, caller, grants, now) {
        None => Decision::NotShared,
        Some(Standing::Grantee(Role::View)) if request.websocket || !request.safe_method => {
            Decision::ViewOnly
        }
        Some(standing) => Decision::Allow(standing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::GroupName;
    use crate::sharing::Via;

    fn user(name: &str, groups: &[&str]) -> Identity {
        Identity {
            name: UserName::parse(name).unwrap(),
            groups: groups
                .iter()
                .map(|g| GroupName::parse(g).unwrap())
                .collect(),
        }
    }

    fn grant(grantee: Grantee, role: Role, expires_at: Option<Timestamp>) -> Grant {
        Grant {
            grantee,
            role,
            created_at: 0,
            expires_at,
            via: Via::Direct {
                by: UserName::parse("john").unwrap(),
            },
        }
    }

    const GET: RequestKind = RequestKind {
        safe_method: true,
        websocket: false,
    };
    const POST: RequestKind = RequestKind {
        safe_method: false,
        websocket: false,
    };
    const WS: RequestKind = RequestKind {
        safe_method: true,
        websocket: true,
    };

    fn john() -> UserName {
        UserName::parse("john").unwrap()
    }

    #[test]
    fn nobody_signed_in_needs_login() {
        assert_eq!(decide(&john(), None, &[], GET, 0), Decision::NeedsLogin);
    }

    #[test]
    fn the_owner_may_do_anything_without_grants() {
        let j = user("john", &[]);
        assert_eq!(
            decide(&john(), Some(&j), &[], WS, 0),
            Decision::Allow(Standing::Owner)
        );
    }

    #[test]
    fn a_user_without_a_grant_is_refused() {
        let n = user("nina", &[]);
        assert_eq!(decide(&john(), Some(&n), &[], GET, 0), Decision::NotShared);
    }

    #[test]
    fn a_view_grant_allows_reads_but_not_writes_or_websockets() {
        let n = user("nina", &[]);
        let g = [grant(Grantee::User(n.name.clone()), Role::View, None)];
        assert_eq!(
            decide(&john(), Some(&n), &g, GET, 0),
            Decision::Allow(Standing::Grantee(Role::View))
        );
        assert_eq!(decide(&john(), Some(&n), &g, POST, 0), Decision::ViewOnly);
        assert_eq!(decide(&john(), Some(&n), &g, WS, 0), Decision::ViewOnly);
    }

    #[test]
    fn a_group_grant_reaches_members_only_and_the_best_role_wins() {
        let member = user("nina", &["team"]);
        let outsider = user("otto", &["other"]);
        let g = [
            grant(
                Grantee::Group(GroupName::parse("team").unwrap()),
                Role::Use,
                None,
            ),
            grant(Grantee::User(member.name.clone()), Role::View, None),
        ];
        assert_eq!(
            decide(&john(), Some(&member), &g, POST, 0),
            Decision::Allow(Standing::Grantee(Role::Use))
        );
        assert_eq!(
            decide(&john(), Some(&outsider), &g, GET, 0),
            Decision::NotShared
        );
    }

    #[test]
    fn an_expired_grant_counts_for_nothing() {
        let n = user("nina", &[]);
        let g = [grant(Grantee::User(n.name.clone()), Role::Use, Some(100))];
        assert!(matches!(
            decide(&john(), Some(&n), &g, GET, 99),
            Decision::Allow(_)
        ));
        assert_eq!(decide(&john(), Some(&n), &g, GET, 100), Decision::NotShared);
    }
}
