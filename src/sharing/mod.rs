//! Sharing: roles, grants, invite codes, and the access rule.

pub mod access;
pub mod manage;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::{GroupName, UserName};

/// What a grantee may do on a shared server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read only: safe methods, no WebSocket.
    View,
    /// Full use of the tool.
    Use,
    /// Use, plus may invite others with `view` or `use`.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::View => "view",
            Role::Use => "use",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "view" => Ok(Role::View),
            "use" => Ok(Role::Use),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "{other:?} is not a role: use \"view\", \"use\" or \"admin\""
            )),
        }
    }
}

/// Who a grant is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Grantee {
    User(UserName),
    Group(GroupName),
}

impl Grantee {
    /// The key under which the grant is stored: `u:name` or `g:name`.
    pub fn key(&self) -> String {
        match self {
            Grantee::User(u) => format!("u:{u}"),
            Grantee::Group(g) => format!("g:{g}"),
        }
    }
}

/// How a grant came to be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Via {
    /// Accepted through the invite link with this id.
    Code { id: String },
    /// Shared directly by this user.
    Direct { by: UserName },
}

/// A grantee's access to one server session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub grantee: Grantee,
    pub role: Role,
    /// When the grant was accepted or shared (refreshed on re-accept).
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub via: Via,
}

impl Grant {
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|e| now < e)
    }
}

/// An invite link as stored: never the code itself, only its hash (which is the store key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    /// Public identifier used to list and revoke one link.
    pub id: String,
    pub role: Role,
    pub created_by: UserName,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// When non-empty, only members of one of these groups may accept.
    #[serde(default)]
    pub groups: Vec<GroupName>,
    #[serde(default)]
    pub exchange_count: u64,
    #[serde(default)]
    pub last_exchanged_at: Option<Timestamp>,
}

impl InviteRecord {
    pub fn is_live(&self, now: Timestamp) -> bool {
        now < self.expires_at
    }
}

/// Why a former grantee no longer has access; shown on the refusal page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Revoked,
    ServerRestarted,
    Left,
    Expired,
}

impl EndReason {
    pub fn explain(self, server: &str) -> String {
        match self {
            EndReason::Revoked => format!("The owner revoked your access to {server}."),
            EndReason::ServerRestarted => format!(
                "The owner's server restarted, which ends every share of the previous session of {server}. Ask the owner for a new invite."
            ),
            EndReason::Left => format!("You left {server}."),
            EndReason::Expired => format!("Your access to {server} has expired."),
        }
    }
}
