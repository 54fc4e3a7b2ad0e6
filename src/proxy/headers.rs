//! Header hygiene between client and upstream. Pure functions, unit-tested without sockets.

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::http_util::Fields;

/// Identity headers latchkey sets for the upstream. Clients may not send their own copies.
pub const USER_HEADER: &str = "x-latchkey-user";
pub const ROLE_HEADER: &str = "x-latchkey-role";

/// Headers an authenticating proxy in front may name the user or their groups in
/// (`[trusted_header]`): each is removed from every request latchkey forwards.
pub const TRUSTED_HEADER_NAMES: [&str; 14] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-preferred-username",
    "x-auth-request-groups",
    "remote-user",
    "remote-email",
    "remote-name",
    "remote-groups",
    "x-remote-user",
    "x-remote-group",
];

/// What a header field is to the proxy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Describes one hop and is never forwarded (RFC 9110 section 7.6.1).
    HopByHop,
    /// Says who the caller is: only latchkey sets these for the upstream.
    Identity,
    /// A way of saying where a request came from that latchkey does not set (Tornado's
    /// xheaders reads X-Real-Ip and X-Scheme): kept only from a trusted proxy.
    OtherForwarding,
    ForwardedFor,
    ForwardedProto,
    ForwardedHost,
    RequestId,
    Cookie,
    Authorization,
    Host,
    ContentLength,
    Other,
}

/// The kind of a header name, in any case.
fn kind(name: &[u8]) -> Kind {
    // Longer than every name below (the longest, x-auth-request-preferred-username, has 33).
    let mut lower = [0u8; 40];
    let Some(lower) = lower.get_mut(..name.len()) else {
        return Kind::Other;
    };
    for (l, b) in lower.iter_mut().zip(name) {
        *l = b.to_ascii_lowercase();
    }
    match &*lower {
        b"connection"
        | b"keep-alive"
        | b"proxy-connection"
        | b"proxy-authenticate"
        | b"proxy-authorization"
        | b"te"
        | b"trailer"
        | b"transfer-encoding"
        | b"upgrade" => Kind::HopByHop,
        b"x-latchkey-user"
        | b"x-latchkey-role"
        | b"x-latchkey-groups"
        | b"x-forwarded-user"
        | b"x-forwarded-email"
        | b"x-forwarded-groups"
        | b"x-forwarded-preferred-username"
        | b"x-forwarded-access-token"
        | b"x-auth-request-user"
        | b"x-auth-request-email"
        | b"x-auth-request-groups"
        | b"x-auth-request-preferred-username"
        | b"remote-user"
        | b"remote-groups"
        | b"remote-email"
        | b"remote-name"
        | b"x-remote-user"
        | b"x-remote-group" => Kind::Identity,
        b"forwarded"
        | b"x-real-ip"
        | b"x-scheme"
        | b"x-forwarded-port"
        | b"x-forwarded-prefix"
        | b"x-forwarded-ssl" => Kind::OtherForwarding,
        b"x-forwarded-for" => Kind::ForwardedFor,
        b"x-forwarded-proto" => Kind::ForwardedProto,
        b"x-forwarded-host" => Kind::ForwardedHost,
        b"x-request-id" => Kind::RequestId,
        b"cookie" => Kind::Cookie,
        b"authorization" => Kind::Authorization,
        b"host" => Kind::Host,
        b"content-length" => Kind::ContentLength,
        _ => Kind::Other,
    }
}

/// True when a header name, with underscores read as dashes, names an identity header. Such
/// names are how a client would smuggle an identity past a server that folds `_` into `-`.
pub fn aliases_identity_header(name: &HeaderName) -> bool {
    let s = name.as_str();
    s.contains('_') && kind(s.replace('_', "-").as_bytes()) == Kind::Identity
}

/// Removes hop-by-hop headers, and those the `Connection` header names, from an answer.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named {
        // Framing and Host are not the sender's to declare hop-by-hop.
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::HOST
        {
            continue;
        }
        headers.remove(name);
    }
    // Most answers carry none of these: one pass over the names present first.
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_hop_by_hop(k.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

/// Whether a header name (in any case) is one of the hop-by-hop headers.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    kind(name) == Kind::HopByHop
}

/// What the upstream is told about the request and the caller.
pub struct Forwarding<'a> {
    /// The client's address (after trusted proxies).
    pub client_ip: &'a str,
    /// The address the request came from: a trusted proxy's, appended to its chain.
    pub peer: std::net::IpAddr,
    /// Whether the peer is a trusted proxy whose X-Forwarded-For chain is kept.
    pub trust_forwarded: bool,
    pub proto: &'static str,
    /// The request URI's authority (HTTP/2 requests carry the host there): the `Host` for the
    /// upstream when the request has no `Host` field.
    pub authority: Option<&'a str>,
    pub user: Option<&'a str>,
    pub role: Option<&'static str>,
    pub request_id: &'a str,
    /// Remove `Authorization`: it carried a latchkey API token, or the sign-in proxy's
    /// credential.
    pub drop_authorization: bool,
    /// Name prefixes of cookies to remove besides latchkey's: the sign-in proxy's.
    pub drop_cookies: &'a [String],
    pub upstream_headers: &'a [(HeaderName, HeaderValue)],
    /// A WebSocket upgrade: `Upgrade` stays, and `Connection` says `upgrade`.
    pub websocket: bool,
}

/// Rewrites request headers for the upstream (see [`rewrite_request`]).
pub fn prepare_request(headers: &mut HeaderMap, f: &Forwarding<'_>) {
    let mut out = HeaderMap::with_capacity(headers.len() + 8);
    rewrite_request(&*headers, f, |name, value| {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            out.append(n, v);
        }
    });
    *headers = out;
}

/// The request's header fields as the upstream gets them, one `emit` per field: the client's
/// fields in order, less what describes one hop (and what `Connection` names), latchkey's
/// session cookies, identity headers, a latchkey API token, and forwarding headers only a
/// trusted proxy may set; then the forwarding and identity headers latchkey sets and the route's
/// upstream headers, each replacing any field of that name. Framing fields (`Content-Length`,
/// `Transfer-Encoding`) and `Host` are never dropped because `Connection` names them.
pub fn rewrite_request(
    fields: &impl Fields,
    f: &Forwarding<'_>,
    mut emit: impl FnMut(&[u8], &[u8]),
) {
    let any_connection = fields.contains("connection");
    let named_by_connection = |name: &[u8]| {
        any_connection
            && fields.get_all("connection").any(|v| {
                v.split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
            })
    };
    let from_route = |name: &[u8]| {
        f.upstream_headers
            .iter()
            .any(|(h, _)| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
    };
    let own_cookies = crate::auth::cookies::without_own(fields.get_all("cookie"), f.drop_cookies);
    let mut has = Has::default();
    // The host the client asked for (its first Host field), for X-Forwarded-Host.
    let mut client_host = None;
    let trusted = f.trust_forwarded;
    for (name, value) in fields.each() {
        let kind = kind(name);
        if kind == Kind::Host && client_host.is_none() {
            client_host = Some(value);
        }
        let upgrade = f.websocket && name.eq_ignore_ascii_case(b"upgrade");
        let kept = match kind {
            Kind::HopByHop => upgrade,
            Kind::Identity | Kind::ForwardedFor | Kind::RequestId => false,
            Kind::OtherForwarding | Kind::ForwardedProto | Kind::ForwardedHost => trusted,
            Kind::Cookie => own_cookies.is_none(),
            Kind::Authorization => !f.drop_authorization,
            Kind::Host | Kind::ContentLength | Kind::Other => true,
        };
        // Framing and Host are not the client's to declare hop-by-hop.
        let named = !matches!(kind, Kind::Host | Kind::ContentLength)
            && !upgrade
            && named_by_connection(name);
        if !kept || named || from_route(name) {
            continue;
        }
        match kind {
            Kind::Host => has.host = true,
            Kind::ForwardedProto => has.proto = true,
            Kind::ForwardedHost => has.forwarded_host = true,
            _ => {}
        }
        emit(name, value);
    }
    // What latchkey adds; the route's upstream headers win over it.
    let mut add = |name: &str, value: &[u8]| {
        if !from_route(name.as_bytes()) && crate::http_util::is_value(value) {
            emit(name.as_bytes(), value);
        }
    };
    if let Some(kept) = own_cookies.filter(|k| !k.is_empty() && !named_by_connection(b"cookie")) {
        add("cookie", &kept);
    }
    // A trusted proxy's chain goes on with the proxy's own address (unless `Connection` named
    // the field, which then ends at that proxy).
    let chain = (f.trust_forwarded && !named_by_connection(b"x-forwarded-for"))
        .then(|| fields.get_str("x-forwarded-for"));
    match chain.flatten() {
        Some(chain) => add("x-forwarded-for", format!("{chain}, {}", f.peer).as_bytes()),
        None => add("x-forwarded-for", f.client_ip.as_bytes()),
    }
    if !has.proto {
        add("x-forwarded-proto", f.proto.as_bytes());
    }
    if let Some(host) = client_host.or(f.authority.map(str::as_bytes)) {
        if !has.host {
            add("host", host);
        }
        if !has.forwarded_host {
            add("x-forwarded-host", host);
        }
    }
    if let Some(user) = f.user {
        add(USER_HEADER, user.as_bytes());
    }
    if let Some(role) = f.role {
        add(ROLE_HEADER, role.as_bytes());
    }
    add("x-request-id", f.request_id.as_bytes());
    if f.websocket {
        add("connection", b"upgrade");
    }
    // One field per name: the last of the route's headers of that name, as the route API
    // accepts names in any case.
    for (i, (name, value)) in f.upstream_headers.iter().enumerate() {
        if !f.upstream_headers[i + 1..].iter().any(|(n, _)| n == name) {
            emit(name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

/// Which of the fields latchkey may add were sent by the client and kept.
#[derive(Default)]
struct Has {
    host: bool,
    proto: bool,
    forwarded_host: bool,
}

/// A response field that lets a service worker control more than its script's directory: an
/// upstream's worker could then answer for latchkey's own paths on the same origin (its pages,
/// or the sign-in hand-over on a user's host). Never passed on.
pub const SERVICE_WORKER_ALLOWED: &str = "service-worker-allowed";
const SERVICE_WORKER_ALLOWED_NAME: HeaderName = HeaderName::from_static(SERVICE_WORKER_ALLOWED);

/// Rewrites response headers for the client: no hop-by-hop headers (except on a 101), no
/// attempt by the upstream to set latchkey's own cookies, and no `Service-Worker-Allowed`.
pub fn prepare_response(headers: &mut HeaderMap, switching_protocols: bool) {
    if !switching_protocols {
        remove_hop_by_hop(headers);
    }
    headers.remove(SERVICE_WORKER_ALLOWED_NAME);
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

/// Whether a `Set-Cookie` value sets one of latchkey's own cookies (the session, or the state of
/// a sign-in hand-over on a user's host).
pub fn sets_own_cookie(value: &[u8]) -> bool {
    let name = value
        .split(|b| *b == b'=')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    crate::auth::cookies::is_own(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarding<'a>(upstream: &'a [(HeaderName, HeaderValue)]) -> Forwarding<'a> {
        Forwarding {
            client_ip: "10.1.2.3",
            peer: [10, 1, 2, 3].into(),
            trust_forwarded: false,
            proto: "http",
            authority: Some("share.example"),
            user: Some("nina"),
            role: Some("use"),
            request_id: "rid",
            drop_authorization: true,
            drop_cookies: &[],
            upstream_headers: upstream,
            websocket: false,
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
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn upgrades_keep_connection_and_upgrade() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade, x-secret"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        let mut f = forwarding(&[]);
        f.websocket = true;
        prepare_request(&mut h, &f);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(
            h.get_all("connection").iter().collect::<Vec<_>>(),
            ["upgrade"]
        );
        assert!(!h.contains_key("x-secret"));
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
        prepare_request(&mut h, &forwarding(&[]));
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
    fn every_header_a_trusted_proxy_may_name_the_user_in_is_removed() {
        for name in TRUSTED_HEADER_NAMES {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_bytes(name.to_ascii_uppercase().as_bytes()).unwrap(),
                HeaderValue::from_static("admin"),
            );
            prepare_request(&mut h, &forwarding(&[]));
            assert!(!h.contains_key(name), "{name}");
            assert_eq!(kind(name.to_ascii_uppercase().as_bytes()), Kind::Identity);
        }
    }

    #[test]
    fn a_trusted_proxy_chain_is_extended_and_upstream_headers_win() {
        let upstream = [(
            HeaderName::from_static("authorization"),
            HeaderValue::from_static("token upstream"),
        )];
        let mut f = forwarding(&upstream);
        f.trust_forwarded = true;
        f.peer = [127, 0, 0, 1].into();
        f.client_ip = "1.1.1.1";
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.insert("authorization", HeaderValue::from_static("token latchkey"));
        prepare_request(&mut h, &f);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "1.1.1.1, 127.0.0.1");
        assert_eq!(h.get("authorization").unwrap(), "token upstream");
    }

    /// The fields `rewrite_request` emits, in order, as text.
    fn rewritten(fields: &[(&str, &str)], f: &Forwarding<'_>) -> Vec<(String, String)> {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = vec![];
        rewrite_request(&h, f, |n, v| {
            out.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            ))
        });
        out
    }

    fn values<'a>(out: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        out.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn requests_lose_what_connection_names_but_never_their_framing_or_host() {
        let out = rewritten(
            &[
                ("host", "share.example"),
                ("connection", "content-length, host, x-secret, cookie"),
                ("content-length", "3"),
                ("x-secret", "1"),
                ("cookie", "latchkey-session=s; a=1"),
                ("te", "trailers"),
                ("accept", "*/*"),
            ],
            &forwarding(&[]),
        );
        assert_eq!(values(&out, "content-length"), ["3"]);
        assert_eq!(values(&out, "host"), ["share.example"]);
        assert_eq!(values(&out, "accept"), ["*/*"]);
        for gone in ["connection", "x-secret", "cookie", "te"] {
            assert!(values(&out, gone).is_empty(), "{gone}: {out:?}");
        }
    }

    #[test]
    fn forwarding_headers_are_latchkeys_unless_a_trusted_proxy_sent_them() {
        let sent = [
            ("host", "share.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-request-id", "forged"),
            ("x-real-ip", "6.6.6.6"),
        ];
        let out = rewritten(&sent, &forwarding(&[]));
        assert_eq!(values(&out, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&out, "x-forwarded-host"), ["share.example"]);
        assert_eq!(values(&out, "x-forwarded-for"), ["10.1.2.3"]);
        assert_eq!(values(&out, "x-request-id"), ["rid"]);
        assert!(values(&out, "x-real-ip").is_empty());
        let mut f = forwarding(&[]);
        f.trust_forwarded = true;
        f.peer = [127, 0, 0, 1].into();
        f.client_ip = "6.6.6.6";
        let out = rewritten(&sent, &f);
        assert_eq!(values(&out, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&out, "x-forwarded-host"), ["evil.example"]);
        assert_eq!(values(&out, "x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
        // A chain that Connection names ends at the proxy that sent it.
        let mut named = sent.to_vec();
        named.push(("connection", "x-forwarded-for"));
        let out = rewritten(&named, &f);
        assert_eq!(values(&out, "x-forwarded-for"), ["6.6.6.6"]);
        assert_eq!(values(&out, "x-request-id"), ["rid"]);
        assert_eq!(values(&out, "x-real-ip"), ["6.6.6.6"]);
    }

    #[test]
    fn a_route_header_replaces_every_field_of_its_name() {
        let upstream = [
            (
                HeaderName::from_static("host"),
                HeaderValue::from_static("internal:8888"),
            ),
            (
                HeaderName::from_static("x-latchkey-user"),
                HeaderValue::from_static("service"),
            ),
        ];
        let out = rewritten(&[("host", "share.example")], &forwarding(&upstream));
        assert_eq!(values(&out, "host"), ["internal:8888"]);
        assert_eq!(values(&out, "x-latchkey-user"), ["service"]);
        assert_eq!(values(&out, "x-forwarded-host"), ["share.example"]);
        // Names given twice (in different case): the last one.
        let twice = [
            (
                HeaderName::from_static("authorization"),
                HeaderValue::from_static("token A"),
            ),
            (
                HeaderName::from_static("authorization"),
                HeaderValue::from_static("token B"),
            ),
        ];
        let out = rewritten(&[], &forwarding(&twice));
        assert_eq!(values(&out, "authorization"), ["token B"]);
    }

    #[test]
    fn a_request_without_host_gets_the_uri_authority() {
        let out = rewritten(&[("accept", "*/*")], &forwarding(&[]));
        assert_eq!(values(&out, "host"), ["share.example"]);
        let mut f = forwarding(&[]);
        f.authority = None;
        let out = rewritten(&[("accept", "*/*")], &f);
        assert!(values(&out, "host").is_empty());
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
    fn an_upstream_cannot_set_latchkeys_cookies_or_widen_a_service_worker() {
        let mut h = HeaderMap::new();
        h.append(
            "set-cookie",
            HeaderValue::from_static("latchkey-session=evil; Path=/"),
        );
        h.append(
            "set-cookie",
            HeaderValue::from_static("__Host-latchkey-host-state=evil; Path=/; Secure"),
        );
        h.append(
            "set-cookie",
            HeaderValue::from_static("latchkey-host-state=evil; Path=/"),
        );
        h.append("service-worker-allowed", HeaderValue::from_static("/"));
        h.append(
            "set-cookie",
            HeaderValue::from_static("_xsrf=ok; Path=/user/john/"),
        );
        prepare_response(&mut h, false);
        let all: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(all, vec!["_xsrf=ok; Path=/user/john/"]);
        assert!(h.get("service-worker-allowed").is_none());
    }
}
