//! Who is calling: local users, sign-in sessions, API tokens, CSRF, and rate limits.

pub mod cookies;
pub mod csrf;
pub mod oidc;
pub mod password;
pub mod ratelimit;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::UserConfig;
use crate::ids::{GroupName, UserName};

/// A signed-in user, as the rest of latchkey sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub name: UserName,
    pub groups: Vec<GroupName>,
}

/// How the caller proved who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The session cookie: state changes need the XSRF token too.
    Cookie,
    /// Named by the sign-in proxy in front (`[trusted_header]`): a browser as with the
    /// cookie; an `Authorization` it sends is the proxy's, never the upstream's.
    Proxy,
    /// `Authorization: token X` / `Bearer X`: scripts, no XSRF needed.
    Token,
}

impl Credential {
    /// A browser's: its state changes need the XSRF token and latchkey's own origin.
    pub fn is_browser(self) -> bool {
        !matches!(self, Credential::Token)
    }
}

/// The users who may sign in with a password. Only they are "users of the service" who may
/// accept invites.
#[derive(Default)]
pub struct Users {
    by_name: HashMap<UserName, (UserConfig, Arc<Identity>)>,
}

impl Users {
    pub fn new(users: &[UserConfig]) -> Self {
        let entry = |u: &UserConfig| {
            let identity = Identity {
                name: u.name.clone(),
                groups: u.groups.clone(),
            };
            (u.name.clone(), (u.clone(), Arc::new(identity)))
        };
        Users {
            by_name: users.iter().map(entry).collect(),
        }
    }

    /// Who a user is (shared: every request of a signed-in user asks).
    pub fn identity(&self, name: &UserName) -> Option<Arc<Identity>> {
        self.by_name.get(name).map(|(_, i)| i.clone())
    }

    pub fn password_hash(&self, name: &str) -> Option<&str> {
        let name = UserName::parse(name).ok()?;
        self.by_name
            .get(&name)
            .map(|(u, _)| u.password_hash.as_str())
    }

    pub fn exists(&self, name: &UserName) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn is_group(&self, group: &GroupName) -> bool {
        self.by_name.values().any(|(u, _)| u.groups.contains(group))
    }
}

/// A user name from a login method outside latchkey (a provider's claim, a proxy's header):
/// trimmed and lower-cased, if it is a valid name.
pub fn external_name(raw: &str) -> Option<UserName> {
    UserName::parse(&raw.trim().to_lowercase()).ok()
}

/// Group names from a login method outside latchkey: Keycloak's leading '/' dropped, names
/// latchkey cannot use left out, sorted, each once.
pub fn external_groups<'a>(raw: impl Iterator<Item = &'a str>) -> Vec<GroupName> {
    let mut groups: Vec<GroupName> = raw
        .filter_map(|g| GroupName::parse(g.trim().trim_start_matches('/')).ok())
        .collect();
    groups.sort();
    groups.dedup();
    groups
}

/// Whether a user not in the configuration may use the service: one who signed in through the
/// OpenID Connect provider (`from_provider`) while that sign-in is configured (`oidc`) and its
/// allowed groups admit theirs, or one the sign-in proxy named while `[trusted_header]` is on.
pub fn admitted(
    from_provider: bool,
    groups: &[GroupName],
    oidc: Option<&crate::config::OidcConfig>,
    trusted_header: bool,
) -> bool {
    match (from_provider, oidc) {
        (true, Some(oidc)) => oidc.admits(groups),
        (true, None) => false,
        (false, _) => trusted_header,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_users_are_admitted_by_the_login_method_that_named_them() {
        let config = crate::config::Config::from_sources(
            "[api]\ntoken = \"0123456789abcdef\"\n[server]\npublic_url = \"https://s.example.org\"\n[oidc]\nissuer = \"https://id.example.org\"\nclient_id = \"x\"\nallowed_groups = [\"lab\"]\n",
            &[],
        )
        .unwrap();
        let oidc = config.oidc.as_ref();
        let lab = external_groups(["/lab", "lab", "not a group"].into_iter());
        assert_eq!(lab, [GroupName::parse("lab").unwrap()]);
        assert!(admitted(true, &lab, oidc, false));
        assert!(
            !admitted(true, &[], oidc, true),
            "outside the allowed groups"
        );
        assert!(!admitted(true, &lab, None, true), "[oidc] removed");
        assert!(admitted(false, &[], oidc, true), "the proxy's to admit");
        assert!(
            !admitted(false, &lab, oidc, false),
            "[trusted_header] removed"
        );
        assert_eq!(
            external_name(" Nina@Example.org ").unwrap().as_str(),
            "nina@example.org"
        );
        assert!(external_name("nina smith").is_none());
    }
}
