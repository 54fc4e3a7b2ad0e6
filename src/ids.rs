//! Parsed names: once a value is one of these types it has been validated, and nothing
//! downstream checks it again.

use std::fmt;

use serde::{Deserialize, Serialize};

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, String> {
                if valid_name(s, 64) {
                    Ok($name(s.to_owned()))
                } else {
                    Err(format!(
                        "{:?} is not a valid {}: use 1 to 64 letters, digits, '.', '_', '-' or '@', starting with a letter or digit",
                        s, $what
                    ))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                $name::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A user's name, as the login method reports it.
    UserName,
    "user name"
);
name_type!(
    /// A group's name.
    GroupName,
    "group name"
);

/// A server's name under its owner; empty for the owner's default server.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServerName(String);

impl ServerName {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || valid_name(s, 64) {
            Ok(ServerName(s.to_owned()))
        } else {
            Err(format!("{s:?} is not a valid server name"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServerName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ServerName::parse(&s)
    }
}

impl From<ServerName> for String {
    fn from(n: ServerName) -> String {
        n.0
    }
}

/// A server: `owner/name`, where an empty name is the owner's default server.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerRef {
    pub owner: UserName,
    pub name: ServerName,
}

impl ServerRef {
    pub fn new(owner: UserName, name: ServerName) -> Self {
        ServerRef { owner, name }
    }

    /// Parses `owner` or `owner/name` or `owner/` (default server).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (owner, name) = s.split_once('/').unwrap_or((s, ""));
        Ok(ServerRef {
            owner: UserName::parse(owner)?,
            name: ServerName::parse(name)?,
        })
    }

    /// The stable key form, `owner/name` (`owner/` for the default server).
    pub fn key(&self) -> String {
        format!("{}/{}", self.owner, self.name.0)
    }

    /// The default proxy URL path of this server, with a trailing slash.
    pub fn url_path(&self) -> String {
        if self.name.0.is_empty() {
            format!("/user/{}/", self.owner)
        } else {
            format!("/user/{}/{}/", self.owner, self.name.0)
        }
    }

    /// How people read it: `john's server` or `john/rstudio`.
    pub fn label(&self) -> String {
        if self.name.0.is_empty() {
            format!("{}'s server", self.owner)
        } else {
            format!("{}/{}", self.owner, self.name.0)
        }
    }
}

impl fmt::Display for ServerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_reject_empty_slashes_and_leading_punctuation() {
        assert!(UserName::parse("john").is_ok());
        assert!(UserName::parse("j.doe@example.org").is_ok());
        assert!(UserName::parse("").is_err());
        assert!(UserName::parse("a/b").is_err());
        assert!(UserName::parse("-x").is_err());
        assert!(UserName::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn server_refs_parse_default_and_named_servers() {
        let d = ServerRef::parse("john").unwrap();
        assert_eq!(d.key(), "john/");
        assert_eq!(d.url_path(), "/user/john/");
        assert_eq!(ServerRef::parse("john/").unwrap(), d);
        let n = ServerRef::parse("john/lab").unwrap();
        assert_eq!(n.url_path(), "/user/john/lab/");
        assert!(ServerRef::parse("john/a/b").is_err());
    }
}
