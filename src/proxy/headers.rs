//! Header hygiene between client and upstream. Pure functions, unit-tested without sockets.

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Headers that describe one hop and must not be forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Forwarding headers latchkey does not set, dropped unless a trusted proxy sent them.
const UNTRUSTED_FORWARDING: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-scheme",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
];

/// Identity headers latchkey sets for the upstream. Clients may not send their own copies.
pub const USER_HEADER: &str = "x-latchkey-user";
pub const ROLE_HEADER: &str = "x-latchkey-role";
const IDENTITY_HEADERS: &[&str] = &[
    USER_HEADER,
    ROLE_HEADER,
    "x-latchkey-groups",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-auth-request-user",
    "x-auth-request-email",
    "remote-user",
    "x-remote-user",
];

/// True when a header name, with underscores read as dashes, names an identity header. Such
/// names are how a client would smuggle an identity past a server that folds `_` into `-`.
pub fn aliases_identity_header(name: &HeaderName) -> bool {
    let s = name.as_str();
    s.contains('_') && {
        let folded = s.replace('_', "-");
        IDENTITY_HEADERS.contains(&folded.as_str())
    }
}

/// Removes hop-by-hop headers, and those the `Connection` header names. For WebSocket
/// upgrades, `Connection: upgrade` and `Upgrade` must stay.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named {
        if keep_upgrade && (name == header::UPGRADE || name == header::CONNECTION) {
            continue;
        }
        // Framing and Host are not the sender's to declare hop-by-hop.
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::HOST
        {
            continue;
        }
        headers.remove(name);
    }
    // Most requests carry none of these: one pass over the names present is cheaper than a
    // lookup per name.
    if any_of(headers, HOP_BY_HOP) {
        for name in HOP_BY_HOP {
            if keep_upgrade && (*name == "connection" || *name == "upgrade") {
                continue;
            }
            headers.remove(*name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether a header name (in any case) is one of the hop-by-hop headers.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

/// Whether any header present has one of these (lowercase) names.
fn any_of(headers: &HeaderMap, names: &[&str]) -> bool {
    headers.keys().any(|k| names.contains(&k.as_str()))
}

/// What the upstream is told about the request and the caller.
pub struct Forwarding<'a> {
    /// The client's address.
    pub client_ip: &'a str,
    /// Whether the peer is a trusted proxy whose X-Forwarded-For chain is kept.
    pub trust_forwarded: bool,
    pub proto: &'static str,
    /// The `Host` the client asked for.
    pub host: Option<&'a HeaderValue>,
    pub user: Option<&'a str>,
    pub role: Option<&'static str>,
    pub request_id: &'a str,
    /// Remove `Authorization`: it carried a latchkey API token.
    pub drop_authorization: bool,
    pub upstream_headers: &'a [(HeaderName, HeaderValue)],
}

/// Rewrites request headers for the upstream.
pub fn prepare_request(headers: &mut HeaderMap, websocket: bool, f: &Forwarding<'_>) {
    remove_hop_by_hop(headers, websocket);
    crate::auth::cookies::strip_own(headers);
    if any_of(headers, IDENTITY_HEADERS) {
        for name in IDENTITY_HEADERS {
            headers.remove(*name);
        }
    }
    if f.drop_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    // Other ways of saying where a request came from, which some servers believe (Tornado's
    // xheaders reads X-Real-Ip and X-Scheme): only a trusted proxy may say them.
    if !f.trust_forwarded && any_of(headers, UNTRUSTED_FORWARDING) {
        for name in UNTRUSTED_FORWARDING {
            headers.remove(*name);
        }
    }
    match (
        f.trust_forwarded,
        headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()),
    ) {
        (true, Some(chain)) => {
            let xff = format!("{chain}, {}", f.client_ip);
            set(headers, X_FORWARDED_FOR, &xff);
        }
        _ => set(headers, X_FORWARDED_FOR, f.client_ip),
    }
    if !(f.trust_forwarded && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(f.proto));
    }
    if let Some(host) = f.host {
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, host.clone());
        }
        if !(f.trust_forwarded && headers.contains_key(&X_FORWARDED_HOST)) {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
    }
    if let Some(user) = f.user {
        set(headers, HeaderName::from_static(USER_HEADER), user);
    }
    if let Some(role) = f.role {
        headers.insert(
            HeaderName::from_static(ROLE_HEADER),
            HeaderValue::from_static(role),
        );
    }
    set(headers, X_REQUEST_ID, f.request_id);
    for (name, value) in f.upstream_headers {
        headers.insert(name.clone(), value.clone());
    }
}

/// Rewrites response headers for the client: no hop-by-hop headers (except on a 101), and no
/// attempt by the upstream to set latchkey's own session cookie.
pub fn prepare_response(headers: &mut HeaderMap, switching_protocols: bool) {
    if !switching_protocols {
        remove_hop_by_hop(headers, false);
    }
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    if cookies.iter().any(|c| sets_own_cookie(c.as_bytes())) {
        headers.remove(header::SET_COOKIE);
        for c in cookies
            .into_iter()
            .filter(|c| !sets_own_cookie(c.as_bytes()))
        {
            headers.append(header::SET_COOKIE, c);
        }
    }
}

/// Whether a `Set-Cookie` value sets latchkey's own session cookie.
pub fn sets_own_cookie(value: &[u8]) -> bool {
    let name = value
        .split(|b| *b == b'=')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    name == crate::paths::SESSION_COOKIE.as_bytes()
        || name == crate::paths::SESSION_COOKIE_TLS.as_bytes()
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static HOST: HeaderValue = HeaderValue::from_static("share.example");

    fn forwarding<'a>(upstream: &'a [(HeaderName, HeaderValue)]) -> Forwarding<'a> {
        Forwarding {
            client_ip: "10.1.2.3",
            trust_forwarded: false,
            proto: "http",
            host: Some(&HOST),
            user: Some("nina"),
            role: Some("use"),
            request_id: "rid",
            drop_authorization: true,
            upstream_headers: upstream,
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn upgrades_keep_connection_and_upgrade() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn client_identity_headers_cookies_and_tokens_never_reach_the_upstream() {
        let mut h = HeaderMap::new();
        h.insert("x-latchkey-user", HeaderValue::from_static("admin"));
        h.insert("x-forwarded-user", HeaderValue::from_static("admin"));
        h.insert("remote-user", HeaderValue::from_static("admin"));
        h.insert("authorization", HeaderValue::from_static("token abc"));
        h.insert(
            "cookie",
            HeaderValue::from_static("latchkey-session=s; _xsrf=j"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        prepare_request(&mut h, false, &forwarding(&[]));
        assert!(!h.contains_key("x-real-ip"));
        assert!(!h.contains_key("forwarded"));
        assert_eq!(h.get("x-latchkey-user").unwrap(), "nina");
        assert_eq!(h.get("x-latchkey-role").unwrap(), "use");
        assert!(!h.contains_key("x-forwarded-user"));
        assert!(!h.contains_key("remote-user"));
        assert!(!h.contains_key("authorization"));
        assert_eq!(h.get("cookie").unwrap(), "_xsrf=j");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.1.2.3");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "share.example");
        assert_eq!(h.get("x-request-id").unwrap(), "rid");
    }

    #[test]
    fn a_trusted_proxy_chain_is_extended_and_upstream_headers_win() {
        let upstream = [(
            HeaderName::from_static("authorization"),
            HeaderValue::from_static("token upstream"),
        )];
        let mut f = forwarding(&upstream);
        f.trust_forwarded = true;
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.insert("authorization", HeaderValue::from_static("token latchkey"));
        prepare_request(&mut h, false, &f);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "1.1.1.1, 10.1.2.3");
        assert_eq!(h.get("authorization").unwrap(), "token upstream");
    }

    #[test]
    fn underscore_aliases_of_identity_headers_are_recognised() {
        assert!(aliases_identity_header(&HeaderName::from_static(
            "x_latchkey_user"
        )));
        assert!(aliases_identity_header(&HeaderName::from_static(
            "x_forwarded_user"
        )));
        assert!(!aliases_identity_header(&HeaderName::from_static(
            "x_custom"
        )));
        assert!(!aliases_identity_header(&HeaderName::from_static(
            "x-latchkey-user"
        )));
    }

    #[test]
    fn an_upstream_cannot_set_latchkeys_session_cookie() {
        let mut h = HeaderMap::new();
        h.append(
            "set-cookie",
            HeaderValue::from_static("latchkey-session=evil; Path=/"),
        );
        h.append(
            "set-cookie",
            HeaderValue::from_static("_xsrf=ok; Path=/user/john/"),
        );
        prepare_response(&mut h, false);
        let all: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(all, vec!["_xsrf=ok; Path=/user/john/"]);
    }
}
