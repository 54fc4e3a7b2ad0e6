//! Bad input gets a clear status and message, and changes nothing.

use http::StatusCode;
use reqwest::Method;
use serde_json::json;

use crate::both_stores;
use crate::helpers::*;

async fn malformed_and_unknown_codes_get_the_same_page_and_grant_nothing(backend: Backend) {
    let (upstream, lk) = johns_server(backend).await;
    let nina = lk.signed_in("nina").await;
    for code in [
        "",
        "short",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "%00%ff",
        "<script>",
    ] {
        let r = nina.get(&format!("/hub/accept-share?code={code}")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{code}");
        let r = nina.accept(code).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{code}");
    }
    assert_eq!(
        nina.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(upstream.hits(), 0);
    // Not signed in: the accept page sends the browser to sign in first, then back.
    let anon = lk.browser();
    let r = anon.get("/hub/accept-share?code=abc").await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/hub/login?next=")
    );
}
both_stores!(malformed_and_unknown_codes_get_the_same_page_and_grant_nothing);

async fn state_changes_without_the_xsrf_token_are_refused(backend: Backend) {
    let (_upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let nina = lk.signed_in("nina").await;
    // API with the cookie but no X-XSRFToken.
    let r = john
        .client
        .post(john.url("/hub/api/share-codes/john/"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = john
        .client
        .post(john.url("/hub/api/share-codes/john/"))
        .header("x-xsrftoken", "wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let codes: serde_json::Value = john
        .get("/hub/api/share-codes/john/")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(codes["_pagination"]["total"], 0, "nothing was created");
    // The accept form without _xsrf grants nothing.
    let (code, _) = john.invite("john/", json!({})).await;
    let r = nina
        .client
        .post(nina.url("/hub/accept-share"))
        .form(&[("code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("XSRF"));
    assert_eq!(
        nina.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
    // The login form without _xsrf signs nobody in.
    let anon = lk.browser();
    let r = anon
        .client
        .post(anon.url("/hub/login"))
        .form(&[("username", "john"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(anon.cookie("latchkey-session", "/").is_none());
}
both_stores!(state_changes_without_the_xsrf_token_are_refused);

async fn cross_site_requests_to_a_shared_server_are_refused(backend: Backend) {
    let (upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let r = john
        .client
        .post(john.url("/user/john/api/contents"))
        .header("origin", "http://evil.example")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = john
        .client
        .post(john.url("/user/john/api/contents"))
        .header("sec-fetch-site", "cross-site")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = john
        .url("/user/john/ws")
        .replacen("http://", "ws://", 1)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "cookie",
        john.cookie_header("/user/john/ws").parse().unwrap(),
    );
    req.headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    assert_eq!(upstream.hits(), 0);
    // Same origin passes.
    let r = john
        .client
        .post(john.url("/user/john/api/contents"))
        .header("origin", lk.base.as_str())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
both_stores!(cross_site_requests_to_a_shared_server_are_refused);

async fn bad_api_bodies_and_parameters_get_400_and_change_nothing(backend: Backend) {
    let (_upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    for body in [
        json!({"expires_in": 3600, "role": "use", "scopes": ["x"]}),
        json!({"role": "owner"}),
        json!({"expires_in": 0}),
        json!({"expires_in": 999999999}),
        json!({"expires_in": "soon"}),
        json!({"groups": ["no-such-group"]}),
    ] {
        let r = john
            .api(
                Method::POST,
                "/hub/api/share-codes/john/",
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    let r = john
        .client
        .post(john.url("/hub/api/share-codes/john/"))
        .header("x-xsrftoken", john.xsrf().await)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    for body in [
        json!({"user": "nina", "group": "team-b"}),
        json!({}),
        json!({"user": "Bad Name"}),
    ] {
        let r = john
            .api(Method::POST, "/hub/api/shares/john/", Some(body.clone()))
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    let r = john
        .api(
            Method::PATCH,
            "/hub/api/shares/john/",
            Some(json!({"user": "nina", "role": "view"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = john.get("/hub/api/shares/john/?limit=many").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // A server that is not running cannot be shared.
    let r = john
        .api(
            Method::POST,
            "/hub/api/share-codes/john/other",
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let codes: serde_json::Value = john
        .get("/hub/api/share-codes/john/")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(codes["_pagination"]["total"], 0);
    let shares: serde_json::Value = john
        .get("/hub/api/shares/john/")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shares["_pagination"]["total"], 0);
    let r = john.get("/hub/api/nothing-here").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
both_stores!(bad_api_bodies_and_parameters_get_400_and_change_nothing);

async fn ambiguous_paths_and_smuggled_identity_headers_are_refused(backend: Backend) {
    let (upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let cookie = john.cookie_header("/user/john/");
    for path in [
        "/user/john/%2e%2e/nina",
        "/user/john/../nina",
        "/user/john%2Fx",
        "/user/john/a%5cb",
    ] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(Latchkey::raw_status(&lk.base, &req).await, 400, "{path}");
    }
    let r = john
        .client
        .get(john.url("/user/john/"))
        .header("x_latchkey_user", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Client copies of identity headers are replaced, never forwarded.
    let r = john
        .client
        .get(john.url("/user/john/"))
        .header("x-latchkey-user", "admin")
        .header("x-forwarded-user", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-latchkey-user"], "john");
    assert!(!seen.headers.contains_key("x-forwarded-user"));
    assert_eq!(upstream.hits(), 1);
}
both_stores!(ambiguous_paths_and_smuggled_identity_headers_are_refused);

async fn sign_in_failures_are_clear_and_redirects_stay_on_this_site(backend: Backend) {
    let lk = Latchkey::spawn(backend).await;
    let b = lk.browser();
    let xsrf = b.xsrf().await;
    let r = b
        .client
        .post(b.url("/hub/login"))
        .form(&[
            ("username", "john"),
            ("password", "wrong"),
            ("_xsrf", xsrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Invalid user name or password")
    );
    let r = b
        .client
        .post(b.url("/hub/login?next=//evil.example/x"))
        .form(&[
            ("username", "john"),
            ("password", PASSWORD),
            ("_xsrf", xsrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/hub/home");
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("latchkey-session="))
        .expect("a session cookie");
    assert!(cookie.contains("HttpOnly"));
    assert!(cookie.contains("SameSite=Lax"));
    // Signing in again rotates the session id.
    let first = b.cookie("latchkey-session", "/").unwrap();
    b.login("john").await;
    let second = b.cookie("latchkey-session", "/").unwrap();
    assert_ne!(first, second);
}
both_stores!(sign_in_failures_are_clear_and_redirects_stay_on_this_site);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_sent_at_once_are_not_all_checked() {
    // 40 guesses in one burst, the limit 3: they wait for their turns, one at a time, and once
    // three have failed the rest are refused without a check (they used to pass the limit
    // together and all be checked).
    let lk = Latchkey::start(None, "[login]\nmax_failures = 3\nfailure_window = 60\n").await;
    let b = lk.browser();
    b.xsrf().await;
    let tries = (0..40).map(|_| b.try_login("john", "wrong"));
    let statuses: Vec<StatusCode> = futures_util::future::join_all(tries)
        .await
        .iter()
        .map(|r| r.status())
        .collect();
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::FORBIDDEN)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((checked, refused), (3, 37), "{statuses:?}");
    lk.stop().await;
}

#[tokio::test]
async fn failed_sign_ins_are_rate_limited_per_client() {
    let lk = Latchkey::start(None, "[login]\nmax_failures = 3\nfailure_window = 60\n").await;
    let b = lk.browser();
    let attempt = |password: &'static str| b.try_login("john", password);
    for _ in 0..3 {
        assert_eq!(attempt("wrong").await.status(), StatusCode::FORBIDDEN);
    }
    let r = attempt(PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert!(b.cookie("latchkey-session", "/").is_none());
    lk.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_site_cannot_sign_a_user_out() {
    let (_upstream, lk) = johns_server(Backend::Memory).await;
    let john = lk.signed_in("john").await;
    let r = john
        .client
        .get(john.url("/hub/logout"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    // Not signed out: asked, with a page whose button posts the sign-out form.
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(page.contains("Sign out of latchkey?"), "{page}");
    assert_eq!(john.get("/user/john/").await.status(), StatusCode::OK);
    // So is a link from another origin over plain HTTP (no Fetch Metadata, a Referer).
    let r = john
        .client
        .get(john.url("/hub/logout"))
        .header("referer", "http://elsewhere.example/page")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(john.get("/user/john/").await.status(), StatusCode::OK);
    // A same-site GET signs out, as JupyterHub's does.
    let r = john.get("/hub/logout").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(john.get("/user/john/").await.status(), StatusCode::FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_and_oversized_heads_are_refused_before_the_upstream() {
    let (upstream, lk) = johns_server(Backend::Memory).await;
    let john = lk.signed_in("john").await;
    let cookie = john.cookie_header("/user/john/");
    let head = |extra: &str| {
        format!("POST /user/john/x HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n{extra}\r\n")
    };
    let cases = [
        (
            head("Content-Length: 5\r\nContent-Length: 6\r\n") + "hello",
            400,
        ),
        (head("X-A: a\r\n folded\r\nContent-Length: 0\r\n"), 400),
        (head("X-A: a\u{1}b\r\nContent-Length: 0\r\n"), 400),
        (
            format!(
                "GET /user/john/{} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n",
                "a".repeat(10_000)
            ),
            414,
        ),
        (
            format!(
                "GET /user/john/ HTTP/1.1\r\nHost: x\r\n{}\r\n",
                (0..200)
                    .map(|i| format!("X-{i}: a\r\n"))
                    .collect::<String>()
            ),
            431,
        ),
    ];
    for (req, status) in cases {
        assert_eq!(
            Latchkey::raw_status(&lk.base, &req).await,
            status,
            "{}",
            req.lines().nth(3).unwrap_or("")
        );
    }
    assert_eq!(upstream.hits(), 0, "none of them reached the upstream");
    // Content-Length with Transfer-Encoding: the chunked framing wins (RFC 9112 section 6.3),
    // and the upstream gets that body re-framed, never the stale length.
    let req = head("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + "0\r\n\r\n";
    assert_eq!(Latchkey::raw_status(&lk.base, &req).await, 200);
    let seen = upstream.last();
    assert_eq!(seen.body_len, 0);
    assert_ne!(
        seen.headers
            .get("content-length")
            .map(|v| v.to_str().unwrap()),
        Some("5")
    );
}

/// A burst of sign-ins queues for the password checks (a few at a time, each about 19 MiB and
/// a core for a moment) and every one of them gets through.
#[tokio::test]
async fn a_burst_of_sign_ins_waits_its_turn_and_all_get_in() {
    let lk = Latchkey::spawn(Backend::Memory).await;
    let browsers: Vec<Browser> = (0..12).map(|_| lk.browser()).collect();
    let signed_in =
        futures_util::future::join_all(browsers.iter().enumerate().map(|(i, b)| async move {
            b.login(if i % 2 == 0 { "john" } else { "nina" }).await;
            b.get("/hub/api/user").await.status()
        }))
        .await;
    assert!(
        signed_in.iter().all(|s| *s == StatusCode::OK),
        "{signed_in:?}"
    );
}

#[tokio::test]
async fn a_users_server_at_its_bare_path_gets_the_slash_before_anything_else() {
    let (upstream, lk) = johns_server(Backend::Memory).await;
    let hits = upstream.hits();
    for (path, to) in [
        ("/user/john", "/user/john/"),
        ("/user/john?token=x&a=1", "/user/john/?token=x&a=1"),
    ] {
        // Not signed in: the slash first, then the sign-in (on the next request).
        let r = lk.browser().get(path).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.headers()["location"], to);
    }
    // Other methods and deeper paths are the server's.
    let nina = lk.signed_in("nina").await;
    assert_eq!(
        nina.get("/user/johnny").await.status(),
        StatusCode::NOT_FOUND
    );
    let r = nina.client.post(lk.url("/user/john")).send().await.unwrap();
    assert_ne!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(upstream.hits(), hits, "nothing reached john's server");
}
