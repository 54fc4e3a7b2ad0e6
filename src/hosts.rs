//! Host-based routing: each user's servers on a host of their own (`john.lab.example.org`),
//! latchkey's pages and API on the public URL's host only.
//!
//! On one origin, a page served by john's server runs with the visitor's cookie on latchkey's
//! origin: it could read the sharing page's XSRF token and act as the visitor, or call another
//! user's server as them. With a host per user, a page of john's server is another origin than
//! latchkey's pages and than nina's server: it can read neither, latchkey's session cookie
//! (host-only) is never sent to it, and a request it makes with the visitor's cookie for
//! another host carries its own `Origin`, which the same-origin check refuses.
//!
//! A user's host knows the visitor by a sign-in of its own, handed over from the sign-in on
//! latchkey's host: the user's host sends the browser to latchkey's host with a random state
//! (also kept in a cookie on the user's host), latchkey's host answers with a one-time code for
//! that host, and the user's host exchanges the code for a host-only cookie when the state
//! matches. The host's sign-in ends with the one it came from.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use crate::http_util::Fields;

/// The hosts of a deployment with host-based routing.
#[derive(Clone, Debug)]
pub struct UserHosts {
    /// `http` or `https`.
    scheme: String,
    /// latchkey's own host (the public URL's), lower case, without the port.
    main: String,
    /// The users' hosts are `<label>.<domain>`.
    domain: String,
    /// The public URL's port, when it names one: the users' hosts share it.
    port: Option<u16>,
}

/// Which of the deployment's hosts a request was addressed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Site {
    /// latchkey's own host (and every request when host-based routing is off).
    Main,
    /// A user's host, by its label (the part before the domain).
    User(String),
    /// Neither: nothing is served there but health checks.
    Unknown,
}

impl UserHosts {
    /// From the checked public URL (`scheme://host[:port]`) and the users' domain.
    pub fn new(public_url: &str, domain: &str) -> Option<UserHosts> {
        let uri: http::Uri = public_url.parse().ok()?;
        Some(UserHosts {
            scheme: uri.scheme_str()?.to_owned(),
            main: uri.host()?.to_ascii_lowercase(),
            domain: domain.to_ascii_lowercase(),
            port: uri.port_u16(),
        })
    }

    /// The site a request's `Host` (or HTTP/2 `:authority`) names.
    pub fn site(&self, authority: Option<&str>) -> Site {
        let Some(host) = authority.map(strip_port) else {
            return Site::Unknown;
        };
        let host = host.to_ascii_lowercase();
        if host == self.main {
            return Site::Main;
        }
        match self.label_in_domain(&host) {
            Some(label) => Site::User(label.to_owned()),
            None => Site::Unknown,
        }
    }

    /// Whether latchkey's own host has the shape of a user's host (`<label>.<domain>`): that
    /// user could not be reached.
    pub fn main_is_a_user_host(&self) -> bool {
        self.label_in_domain(&self.main).is_some()
    }

    /// The label of `<label>.<domain>` (lower case, no port), if `host` has that shape.
    fn label_in_domain<'h>(&self, host: &'h str) -> Option<&'h str> {
        host.strip_suffix(self.domain.as_str())
            .and_then(|h| h.strip_suffix('.'))
            .filter(|l| is_label(l))
    }

    /// The host of a user's servers, without the port.
    pub fn user_host(&self, label: &str) -> String {
        format!("{label}.{}", self.domain)
    }

    /// `scheme://host[:port]` of a user's host, for redirects and the same-origin check.
    pub fn user_origin(&self, label: &str) -> String {
        self.origin(&self.user_host(label))
    }

    /// `scheme://host[:port]` of latchkey's own host.
    pub fn main_origin(&self) -> String {
        self.origin(&self.main)
    }

    fn origin(&self, host: &str) -> String {
        match self.port {
            Some(p) => format!("{}://{host}:{p}", self.scheme),
            None => format!("{}://{host}", self.scheme),
        }
    }

    /// The label of a user host named in a hand-over request, if it is one of this domain.
    pub fn label_of_host(&self, host: &str) -> Option<String> {
        match self.site(Some(host)) {
            Site::User(label) => Some(label),
            _ => None,
        }
    }
}

/// The request's host: HTTP/2's `:authority` (in the URI) or the `Host` field.
pub fn authority<'a>(uri: &'a http::Uri, headers: &'a impl Fields) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get_str("host"))
}

fn strip_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// A domain for the users' hosts: DNS labels (any case) joined by dots, at least two of them,
/// or `localhost`.
pub fn valid_domain(domain: &str) -> bool {
    let lower = domain.to_ascii_lowercase();
    (lower.contains('.') || lower == "localhost") && lower.split('.').all(is_label)
}

/// A DNS label of lower-case letters, digits and inner hyphens, at most 63 long.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The host label of a user: the name itself when it is a DNS label without `--`, else `u--`
/// and 32 hex digits of its SHA-256 (names may hold `.`, `_`, `@` and capitals, which a host
/// cannot, and two names must never share a host). Plain labels never hold `--`, so the two
/// kinds cannot meet.
pub fn label(user: &str) -> Cow<'_, str> {
    if is_label(user) && !user.contains("--") {
        return Cow::Borrowed(user);
    }
    let digest = Sha256::digest(user.as_bytes());
    Cow::Owned(format!("u--{}", &crate::secret::hex(&digest)[..32]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> UserHosts {
        UserHosts::new("https://lab.example.org", "lab.example.org").unwrap()
    }

    #[test]
    fn requests_are_told_apart_by_host() {
        let h = hosts();
        assert_eq!(h.site(Some("lab.example.org")), Site::Main);
        assert_eq!(h.site(Some("LAB.example.org:443")), Site::Main);
        assert_eq!(
            h.site(Some("john.lab.example.org")),
            Site::User("john".into())
        );
        assert_eq!(
            h.site(Some("John.Lab.Example.Org:8443")),
            Site::User("john".into())
        );
        for other in [
            "example.org",
            "evil.org",
            "a.b.lab.example.org",
            ".lab.example.org",
            "-x.lab.example.org",
            "xlab.example.org",
            "127.0.0.1",
            "[::1]:8000",
            "",
            "lab.example.org.",
        ] {
            assert_eq!(h.site(Some(other)), Site::Unknown, "{other}");
        }
        assert_eq!(h.site(None), Site::Unknown);
    }

    #[test]
    fn origins_keep_the_public_urls_scheme_and_port() {
        let h = UserHosts::new("http://lab.test:8000", "lab.test").unwrap();
        assert_eq!(h.user_origin("john"), "http://john.lab.test:8000");
        assert_eq!(h.main_origin(), "http://lab.test:8000");
        assert_eq!(hosts().user_origin("nina"), "https://nina.lab.example.org");
    }

    #[test]
    fn every_user_name_gets_a_host_of_its_own() {
        assert_eq!(label("john"), "john");
        assert_eq!(label("a-b-2"), "a-b-2");
        let odd = [
            "John",
            "john.doe",
            "j_d",
            "x@y",
            "a--b",
            "-a",
            &"a".repeat(64),
        ];
        let labels: Vec<String> = odd.iter().map(|n| label(n).into_owned()).collect();
        for l in &labels {
            assert!(l.starts_with("u--") && l.len() == 35 && is_label(l), "{l}");
        }
        let mut unique = labels.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), labels.len());
        assert_ne!(label("John"), label("john"));
    }
}
