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
    /// `Authorization: token X` / `Bearer X`: scripts, no XSRF needed.
    Token,
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
