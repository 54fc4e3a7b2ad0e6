//! Cross-site request protection: the `_xsrf` double-submit token and the Origin check.

use http::HeaderMap;

use crate::error::Error;
use crate::http_util::{Fields, text};
use crate::paths::XSRF_COOKIE;

/// Checks that the XSRF token sent with a state-changing request (form field `_xsrf` or header
/// `X-XSRFToken`) matches an `_xsrf` cookie. Any of them: one planted by a sibling host for the
/// whole domain must not make latchkey's own forms fail (whoever planted it knows its value
/// anyway; the Origin check is what stops them).
pub fn check_token(headers: &HeaderMap, form_value: Option<&str>) -> Result<(), Error> {
    let sent = form_value.map(str::to_owned).or_else(|| {
        headers
            .get("x-xsrftoken")
            .or_else(|| headers.get("x-csrftoken"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let Some(sent) = sent.filter(|s| !s.is_empty()) else {
        return Err(Error::XsrfMismatch);
    };
    if crate::secret::matches_any(&sent, super::cookies::find_all(headers, XSRF_COOKIE)) {
        Ok(())
    } else {
        Err(Error::XsrfMismatch)
    }
}

/// The origin latchkey is served at for this request: the configured public URL, or the scheme
/// and Host header.
pub fn own_origin(headers: &impl Fields, public_url: Option<&str>, tls: bool) -> Option<String> {
    if let Some(u) = public_url {
        return Some(u.to_ascii_lowercase());
    }
    let host = headers.get_str("host")?;
    Some(format!("{}://{}", if tls { "https" } else { "http" }, host).to_ascii_lowercase())
}

/// Refuses requests that a browser sent on behalf of another site. Requests without an Origin
/// (scripts, curl) pass; browsers always send one on cross-site POSTs and WebSockets.
pub fn check_same_origin(
    headers: &impl Fields,
    own_origin: Option<&str>,
    request_authority: Option<&str>,
) -> Result<(), Error> {
    if headers
        .get_str("sec-fetch-site")
        .is_some_and(|v| v == "cross-site")
    {
        return Err(Error::CrossOrigin);
    }
    let Some(origin) = headers.get("origin") else {
        return Ok(());
    };
    // A page served with `Referrer-Policy: no-referrer` makes browsers send `Origin: null` on
    // its own form posts; Fetch Metadata then still says where the request came from.
    if origin == b"null" && headers.get("sec-fetch-site") == Some(b"same-origin") {
        return Ok(());
    }
    let origin = text(origin).unwrap_or("null").to_ascii_lowercase();
    let matches_own = own_origin.is_some_and(|o| o == origin);
    // HTTP/2 requests carry the host as the URI authority rather than a Host header.
    let matches_authority = request_authority.is_some_and(|a| {
        let a = a.to_ascii_lowercase();
        origin == format!("http://{a}") || origin == format!("https://{a}")
    });
    if matches_own || matches_authority {
        Ok(())
    } else {
        Err(Error::CrossOrigin)
    }
}

/// [`check_same_origin`] for requests whose XSRF token is checked too (latchkey's forms and its
/// JSON API), with one allowance: over plain HTTP browsers send no Fetch Metadata to a host name
/// (it is for secure origins only), so a form posted from one of latchkey's own `no-referrer`
/// pages arrives with `Origin: null` and nothing else. There, when latchkey is served over plain
/// HTTP and `null_allowed`, the token is the check. Not with host-based routing, where users'
/// pages are on sibling hosts that could plant a `_xsrf` cookie for the domain (and latchkey's
/// pages then send their real origin: see `App::mark_sensitive`); never for proxied requests,
/// which carry no token.
pub fn check_form_origin(
    headers: &impl Fields,
    own_origin: Option<&str>,
    request_authority: Option<&str>,
    null_allowed: bool,
) -> Result<(), Error> {
    let unknowable = null_allowed
        && headers.get("origin") == Some(b"null")
        && headers.get("sec-fetch-site").is_none()
        && own_origin.is_some_and(|o| o.starts_with("http://"));
    if unknowable {
        return Ok(());
    }
    check_same_origin(headers, own_origin, request_authority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_token_must_match_the_cookie() {
        let h = headers(&[("cookie", "_xsrf=abc")]);
        assert!(check_token(&h, Some("abc")).is_ok());
        assert_eq!(check_token(&h, Some("abd")), Err(Error::XsrfMismatch));
        assert_eq!(check_token(&h, None), Err(Error::XsrfMismatch));
        let h = headers(&[("cookie", "_xsrf=abc"), ("x-xsrftoken", "abc")]);
        assert!(check_token(&h, None).is_ok());
        let h = headers(&[("x-xsrftoken", "abc")]);
        assert_eq!(check_token(&h, None), Err(Error::XsrfMismatch));
        // A second _xsrf (planted for the whole domain, sent first) hides nothing.
        let h = headers(&[("cookie", "_xsrf=planted; _xsrf=abc")]);
        assert!(check_token(&h, Some("abc")).is_ok());
        assert!(check_token(&h, Some("planted")).is_ok());
        assert_eq!(check_token(&h, Some("other")), Err(Error::XsrfMismatch));
        let h = headers(&[("cookie", "_xsrf=")]);
        assert_eq!(check_token(&h, Some("")), Err(Error::XsrfMismatch));
    }

    #[test]
    fn foreign_origins_are_refused_and_missing_origins_pass() {
        let own = Some("http://127.0.0.1:8000");
        let h = headers(&[("origin", "http://127.0.0.1:8000")]);
        assert!(check_same_origin(&h, own, None).is_ok());
        let h = headers(&[("origin", "http://evil.example")]);
        assert_eq!(check_same_origin(&h, own, None), Err(Error::CrossOrigin));
        assert!(check_same_origin(&HeaderMap::new(), own, None).is_ok());
        let h = headers(&[("sec-fetch-site", "cross-site")]);
        assert_eq!(check_same_origin(&h, own, None), Err(Error::CrossOrigin));
        let h = headers(&[("origin", "null")]);
        assert_eq!(check_same_origin(&h, own, None), Err(Error::CrossOrigin));
        let h = headers(&[("origin", "null"), ("sec-fetch-site", "same-origin")]);
        assert!(check_same_origin(&h, own, None).is_ok());
    }

    #[test]
    fn a_null_origin_without_fetch_metadata_is_left_to_the_token_over_plain_http_only() {
        let null = headers(&[("origin", "null")]);
        let http = Some("http://lab.test:8000");
        let https = Some("https://lab.test");
        assert!(check_form_origin(&null, http, None, true).is_ok());
        assert_eq!(
            check_form_origin(&null, http, None, false),
            Err(Error::CrossOrigin),
            "not with host-based routing"
        );
        assert_eq!(
            check_form_origin(&null, https, None, true),
            Err(Error::CrossOrigin)
        );
        assert_eq!(
            check_same_origin(&null, http, None),
            Err(Error::CrossOrigin)
        );
        // With Fetch Metadata (any secure origin, or loopback) the usual rules hold.
        let cross = headers(&[("origin", "null"), ("sec-fetch-site", "cross-site")]);
        assert_eq!(
            check_form_origin(&cross, http, None, true),
            Err(Error::CrossOrigin)
        );
        let same_site = headers(&[("origin", "null"), ("sec-fetch-site", "same-site")]);
        assert_eq!(
            check_form_origin(&same_site, http, None, true),
            Err(Error::CrossOrigin)
        );
        let foreign = headers(&[("origin", "http://evil.test")]);
        assert_eq!(
            check_form_origin(&foreign, http, None, true),
            Err(Error::CrossOrigin)
        );
    }
}
