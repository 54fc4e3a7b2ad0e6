//! Reading and writing latchkey's cookies, and removing them before a request goes upstream.

use cookie::{Cookie, SameSite};
use http::HeaderValue;

use crate::http_util::Fields;
use crate::paths::{
    HOST_STATE_COOKIE, HOST_STATE_COOKIE_TLS, OIDC_STATE_COOKIE, OIDC_STATE_COOKIE_TLS,
    SESSION_COOKIE, SESSION_COOKIE_TLS, XSRF_COOKIE,
};

/// Cookie settings that depend on how latchkey is served.
#[derive(Clone, Debug)]
pub struct CookiePolicy {
    pub secure: bool,
    pub max_age: u64,
    /// Path of the XSRF cookie: the hub prefix, so proxied servers never see it.
    pub xsrf_path: String,
}

impl CookiePolicy {
    /// A cookie's name: with the `__Host-` prefix when cookies are `Secure`.
    fn named(&self, plain: &'static str, tls: &'static str) -> &'static str {
        if self.secure { tls } else { plain }
    }

    pub fn session_name(&self) -> &'static str {
        self.named(SESSION_COOKIE, SESSION_COOKIE_TLS)
    }

    pub fn session_cookie(&self, value: &str) -> HeaderValue {
        let c = Cookie::build((self.session_name(), value.to_owned()))
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .max_age(cookie::time::Duration::seconds(self.max_age as i64))
            .build();
        header_value(&c)
    }

    pub fn clear_session_cookie(&self) -> HeaderValue {
        let c = Cookie::build((self.session_name(), ""))
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .max_age(cookie::time::Duration::ZERO)
            .build();
        header_value(&c)
    }

    pub fn host_state_name(&self) -> &'static str {
        self.named(HOST_STATE_COOKIE, HOST_STATE_COOKIE_TLS)
    }

    /// The state of sign-in hand-overs on a user's host: host-only, for ten minutes from the
    /// last hand-over that began.
    pub fn host_state_cookie(&self, value: &str) -> HeaderValue {
        self.state_cookie(self.host_state_name(), value, 10)
    }

    pub fn oidc_state_name(&self) -> &'static str {
        self.named(OIDC_STATE_COOKIE, OIDC_STATE_COOKIE_TLS)
    }

    /// The secret of sign-ins at the identity provider: for ten minutes from the last one that
    /// began (sent back on the provider's redirect, a top-level GET, so `Lax` suffices).
    pub fn oidc_state_cookie(&self, value: &str) -> HeaderValue {
        self.state_cookie(self.oidc_state_name(), value, 10)
    }

    pub fn clear_oidc_state_cookie(&self) -> HeaderValue {
        self.state_cookie(self.oidc_state_name(), "", 0)
    }

    fn state_cookie(&self, name: &'static str, value: &str, minutes: i64) -> HeaderValue {
        let c = Cookie::build((name, value.to_owned()))
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .max_age(cookie::time::Duration::minutes(minutes))
            .build();
        header_value(&c)
    }

    /// The XSRF cookie is readable by scripts (so pages can send `X-XSRFToken`), scoped to
    /// `/hub/`, and lives as long as the browser session.
    pub fn xsrf_cookie(&self, value: &str) -> HeaderValue {
        let c = Cookie::build((XSRF_COOKIE, value.to_owned()))
            .path(self.xsrf_path.clone())
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .build();
        header_value(&c)
    }
}

fn header_value(c: &Cookie<'_>) -> HeaderValue {
    HeaderValue::from_str(&c.encoded().to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// Whether a cookie name (as sent) is one of latchkey's own cookies.
pub fn is_own(name: &[u8]) -> bool {
    crate::paths::OWN_COOKIES
        .iter()
        .any(|n| name == n.as_bytes())
}

/// The value of the first cookie with this name in the request's Cookie headers.
pub fn find<'a>(headers: &'a impl Fields, name: &str) -> Option<&'a str> {
    find_all(headers, name).next()
}

/// The values of every cookie with this name, in the order sent (a browser sends a cookie of
/// a longer path first, and a sibling host may have set one for the whole domain).
pub fn find_all<'a>(headers: &'a impl Fields, name: &str) -> impl Iterator<Item = &'a str> {
    // Bytes, not text: another cookie's non-ASCII value must not hide this one.
    headers
        .get_all("cookie")
        .flat_map(|v| v.split(|b| *b == b';'))
        .filter_map(|pair| {
            let eq = pair.iter().position(|b| *b == b'=')?;
            Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
        })
        .filter(move |(k, _)| *k == name.as_bytes())
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .map(|v| v.trim_matches('"'))
}

/// The cookies for the upstream: every cookie but latchkey's session and hand-over cookies, byte
/// for byte.
/// None when the Cookie fields hold none of latchkey's (they go on unchanged); else the cookies
/// left, joined into one field (empty: send no Cookie field).
/// `also`: name prefixes of more cookies to remove (those of the sign-in proxy in front).
pub fn without_own<'a>(values: impl Iterator<Item = &'a [u8]>, also: &[String]) -> Option<Vec<u8>> {
    let is_ours = |pair: &[u8]| {
        let name = pair
            .split(|b| *b == b'=')
            .next()
            .unwrap_or(b"")
            .trim_ascii();
        is_own(name) || also.iter().any(|p| name.starts_with(p.as_bytes()))
    };
    // Bytes, not text: a cookie value with a non-ASCII byte must not hide latchkey's cookie.
    let mut ours = false;
    let mut kept: Vec<u8> = Vec::new();
    for value in values {
        for pair in value.split(|b| *b == b';').map(<[u8]>::trim_ascii) {
            if pair.is_empty() {
                continue;
            }
            if is_ours(pair) {
                ours = true;
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(pair);
        }
    }
    ours.then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, header};

    #[test]
    fn a_non_ascii_cookie_hides_nothing() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes(b"z=\xc3\xa9; latchkey-session=s; a=1").unwrap(),
        );
        assert_eq!(find(&h, SESSION_COOKIE), Some("s"));
        let kept = without_own(h.get_all(header::COOKIE).iter().map(|v| v.as_bytes()), &[]);
        assert_eq!(kept.as_deref(), Some(&b"z=\xc3\xa9; a=1"[..]));
    }

    #[test]
    fn finds_a_cookie_among_several_headers() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; _xsrf=abc"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("latchkey-session=s"),
        );
        assert_eq!(find(&h, "_xsrf"), Some("abc"));
        assert_eq!(find(&h, SESSION_COOKIE), Some("s"));
        assert_eq!(find(&h, "missing"), None);
    }

    #[test]
    fn stripping_removes_only_latchkey_session_cookies() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("latchkey-session=s; _xsrf=jupyter; x=1"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-latchkey-session=t"),
        );
        // The secret of a sign-in at the identity provider, too.
        h.append(
            header::COOKIE,
            HeaderValue::from_static("latchkey-oidc-state=u; __Host-latchkey-oidc-state=v"),
        );
        let kept = without_own(h.get_all(header::COOKIE).iter().map(|v| v.as_bytes()), &[]);
        assert_eq!(kept.as_deref(), Some(&b"_xsrf=jupyter; x=1"[..]));
    }

    #[test]
    fn stripping_the_only_cookie_removes_the_header() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("latchkey-session=s"),
        );
        let kept = without_own(h.get_all(header::COOKIE).iter().map(|v| v.as_bytes()), &[]);
        assert_eq!(kept.as_deref(), Some(&b""[..]));
        assert_eq!(without_own([&b"a=1; b=2"[..]].into_iter(), &[]), None);
        // The sign-in proxy's cookies, split or not, go too.
        let proxy = ["_oauth2_proxy".to_owned()];
        let kept = without_own(
            [&b"_oauth2_proxy_0=a; x=1; _oauth2_proxy=b"[..]].into_iter(),
            &proxy,
        );
        assert_eq!(kept.as_deref(), Some(&b"x=1"[..]));
    }

    #[test]
    fn session_cookies_are_http_only_and_lax() {
        let p = CookiePolicy {
            secure: true,
            max_age: 60,
            xsrf_path: "/hub/".into(),
        };
        let v = p.session_cookie("abc");
        let s = v.to_str().unwrap();
        assert!(s.starts_with("__Host-latchkey-session=abc"));
        assert!(s.contains("HttpOnly"));
        assert!(s.contains("SameSite=Lax"));
        assert!(s.contains("Secure"));
        assert!(s.contains("Path=/"));
    }
}
