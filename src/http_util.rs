//! Small helpers for building responses and reading requests.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use serde::Serialize;

use crate::error::Error;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response latchkey sends, proxied or its own.
pub type Body = BoxBody<Bytes, BoxError>;

/// A request's header fields as read: a `HeaderMap` (requests through hyper), or the fields
/// of a head latchkey's own HTTP/1.1 path parsed in place, so that reading them needs no map.
/// Names are looked up in lowercase and match in any case.
pub trait Fields {
    /// Every field, in order: name and value.
    fn each(&self) -> impl Iterator<Item = (&[u8], &[u8])>;

    /// The first value of a field.
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.get_all(name).next()
    }

    /// Every value of a field, in order.
    fn get_all(&self, name: &str) -> impl Iterator<Item = &[u8]> {
        self.each()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The first value of a field, when it is visible ASCII (as `HeaderValue::to_str`).
    fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(text)
    }

    fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

impl Fields for HeaderMap {
    fn each(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
    }

    fn get(&self, name: &str) -> Option<&[u8]> {
        HeaderMap::get(self, name).map(HeaderValue::as_bytes)
    }

    fn get_all(&self, name: &str) -> impl Iterator<Item = &[u8]> {
        HeaderMap::get_all(self, name)
            .into_iter()
            .map(HeaderValue::as_bytes)
    }
}

/// Whether bytes may be a header field value: no control characters but tab (what
/// `HeaderValue::from_bytes` accepts).
pub fn is_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// A header value as text when it is visible ASCII, spaces and tabs: what
/// `HeaderValue::to_str` accepts.
pub fn text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub fn html_response(status: StatusCode, html: String) -> Response<Body> {
    let mut r = Response::new(full(html));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// 303 See Other to `location` (a path on latchkey's own origin).
pub fn redirect(location: &str) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

pub fn no_content() -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// Pages that show invite codes or sharing state must not be cached or leak via Referer.
pub fn mark_sensitive(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// Reads a whole request body of at most `limit` bytes.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Error> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::PayloadTooLarge),
        Err(_) => Err(Error::bad_request("The request body could not be read.")),
    }
}

/// Parses `application/x-www-form-urlencoded` (or a query string) into pairs.
pub fn parse_form(data: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(data).into_owned().collect()
}

pub fn form_value<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The value of a query parameter.
pub fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    let q = query?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

pub fn percent_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Does the client want JSON rather than an HTML page? API paths, XHR, WebSocket upgrades and
/// explicit `Accept: application/json` do.
pub fn wants_json(headers: &impl Fields, path: &str) -> bool {
    if path.starts_with(crate::paths::API) {
        return true;
    }
    if headers.contains("upgrade") {
        return true;
    }
    if headers
        .get_str("x-requested-with")
        .is_some_and(|v| v.eq_ignore_ascii_case("xmlhttprequest"))
    {
        return true;
    }
    let accept = headers.get_str("accept").unwrap_or("");
    accept.contains("application/json") && !accept.contains("text/html")
}

/// An IP address as text, written without the general formatter and without allocating (it is
/// written twice for every proxied request: the forwarding header and the access line).
pub struct IpText {
    buf: [u8; 46],
    len: usize,
}

impl IpText {
    pub fn new(ip: std::net::IpAddr) -> IpText {
        let mut t = IpText {
            buf: [0; 46],
            len: 0,
        };
        match ip {
            std::net::IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if octet >= 100 {
                        t.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        t.push(b'0' + octet / 10 % 10);
                    }
                    t.push(b'0' + octet % 10);
                }
            }
            std::net::IpAddr::V6(v6) => {
                use std::io::Write;
                let mut cursor = std::io::Cursor::new(&mut t.buf[..]);
                let _ = write!(cursor, "{v6}");
                t.len = cursor.position() as usize;
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

#[cfg(test)]
mod ip_text_tests {
    use super::IpText;

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.0.0.7",
            "127.0.0.1",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "2001:db8::ff00:42:8329",
        ] {
            let addr: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(addr).as_str(), addr.to_string());
        }
    }
}
