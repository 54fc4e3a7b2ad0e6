//! The configurable-http-proxy compatible route API.

use http::StatusCode;
use serde_json::json;

use crate::both_stores;
use crate::helpers::*;

async fn routes_are_stored_echoed_and_removed_as_chp_does(backend: Backend) {
    let upstream = Upstream::spawn().await;
    let lk = Latchkey::spawn(backend).await;
    let api = lk.route_api();
    // JupyterHub's hub route, posted with a trailing slash and text/plain.
    let s = lk
        .post_route(
            "/",
            json!({"hub": true, "target": upstream.target(), "jupyterhub": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let s = lk
        .post_route(
            "/user/john/",
            json!({"user": "john", "server_name": "", "target": upstream.target(), "jupyterhub": true, "extra": [1, 2]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let all: serde_json::Value = api
        .get(format!("{}/api/routes", lk.api))
        .header("authorization", format!("token {API_TOKEN}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let john = &all["/user/john"];
    assert_eq!(john["user"], "john");
    assert_eq!(john["extra"], json!([1, 2]));
    assert_eq!(john["jupyterhub"], true);
    assert!(john["last_activity"].as_str().unwrap().ends_with('Z'));
    assert_eq!(all["/"]["hub"], true);
    let one = api
        .get(format!("{}/api/routes/user/john", lk.api))
        .header("authorization", format!("token {API_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), StatusCode::OK);
    let missing = api
        .get(format!("{}/api/routes/user/nobody", lk.api))
        .header("authorization", format!("token {API_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // A route without a user (the hub) is forwarded without sharing checks, as CHP would.
    let anon = lk.browser();
    let r = anon.get("/services/x").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(upstream.last().path, "/services/x");
    assert!(!upstream.last().headers.contains_key("x-latchkey-user"));
    assert_eq!(upstream.last().headers["x-forwarded-proto"], "http");

    assert_eq!(lk.delete_route("/user/john/").await, StatusCode::NO_CONTENT);
    assert_eq!(lk.delete_route("/user/john").await, StatusCode::NOT_FOUND);
    let health = api
        .get(format!("{}/_chp_healthz", lk.api))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let health = anon.get("/_chp_healthz").await;
    assert_eq!(
        health.json::<serde_json::Value>().await.unwrap()["status"],
        "OK"
    );
}
both_stores!(routes_are_stored_echoed_and_removed_as_chp_does);

async fn last_activity_follows_traffic_and_inactive_since_filters(backend: Backend) {
    let (_upstream, lk) = johns_server(backend).await;
    let api = lk.route_api();
    let get = |q: &'static str| {
        let api = api.clone();
        let url = format!("{}/api/routes{q}", lk.api);
        async move {
            api.get(url)
                .header("authorization", format!("token {API_TOKEN}"))
                .send()
                .await
                .unwrap()
        }
    };
    let before: serde_json::Value = get("").await.json().await.unwrap();
    let t0 = before["/user/john"]["last_activity"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let john = lk.signed_in("john").await;
    assert_eq!(john.get("/user/john/").await.status(), StatusCode::OK);
    let after: serde_json::Value = get("").await.json().await.unwrap();
    let t1 = after["/user/john"]["last_activity"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(t1 > t0, "{t1} should be after {t0}");
    // Inactive since the far future: everything; since the past: nothing.
    let all: serde_json::Value = get("?inactive_since=2999-01-01T00:00:00Z")
        .await
        .json()
        .await
        .unwrap();
    assert!(all.get("/user/john").is_some());
    let none: serde_json::Value = get("?inactiveSince=2000-01-01T00:00:00Z")
        .await
        .json()
        .await
        .unwrap();
    assert!(none.get("/user/john").is_none());
    let bad = get("?inactive_since=yesterday").await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}
both_stores!(last_activity_follows_traffic_and_inactive_since_filters);

async fn the_route_api_refuses_bad_tokens_and_bad_routes_and_changes_nothing(backend: Backend) {
    let (upstream, lk) = johns_server(backend).await;
    let api = lk.route_api();
    for auth in [
        None,
        Some("token wrong"),
        Some("token "),
        Some("Basic am9objpwdw=="),
    ] {
        let mut rb = api
            .post(format!("{}/api/routes/user/evil", lk.api))
            .body(json!({"target": upstream.target()}).to_string());
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{auth:?}");
        let r = api
            .get(format!("{}/api/routes", lk.api))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    let post = |body: String| {
        let api = api.clone();
        let url = format!("{}/api/routes/user/bad", lk.api);
        async move {
            api.post(url)
                .header("authorization", format!("token {API_TOKEN}"))
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    for body in [
        "not json".to_owned(),
        "[1,2]".to_owned(),
        json!({}).to_string(),
        json!({"target": 7}).to_string(),
        json!({"target": "not a url"}).to_string(),
        json!({"target": "ftp://x"}).to_string(),
        json!({"target": upstream.target(), "user": "bad/name"}).to_string(),
        json!({"target": upstream.target(), "upstream_headers": "x"}).to_string(),
        json!({"target": upstream.target(), "session": "has spaces"}).to_string(),
    ] {
        let r = post(body.clone()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(!v["message"].as_str().unwrap().is_empty());
        assert!(v["request_id"].is_string());
    }
    for path in ["/user/a/../b", "/user/a/%2e%2e/b"] {
        let body = json!({"target": upstream.target()}).to_string();
        let req = format!(
            "POST /api/routes{path} HTTP/1.1\r\nHost: x\r\nAuthorization: token {API_TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(Latchkey::raw_status(&lk.api, &req).await, 400, "{path}");
    }
    let all: serde_json::Value = api
        .get(format!("{}/api/routes", lk.api))
        .header("authorization", format!("token {API_TOKEN}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        all.as_object().unwrap().len(),
        1,
        "only john's route exists: {all}"
    );
}
both_stores!(the_route_api_refuses_bad_tokens_and_bad_routes_and_changes_nothing);

async fn upstream_headers_are_injected_and_strip_prefix_is_honoured(backend: Backend) {
    let upstream = Upstream::spawn().await;
    let lk = Latchkey::spawn(backend).await;
    let s = lk
        .post_route(
            "/user/john/code",
            json!({"user": "john", "server_name": "code", "target": format!("{}/base/", upstream.target()),
                   "strip_prefix": true, "upstream_headers": {"Authorization": "token upstream-secret"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let john = lk.signed_in("john").await;
    let r = john.get("/user/john/code/static/app.js?v=1").await;
    assert_eq!(r.status(), StatusCode::OK);
    let seen = upstream.last();
    assert_eq!(seen.path, "/base/static/app.js?v=1");
    assert_eq!(seen.headers["authorization"], "token upstream-secret");
    // The route API shows which headers are injected, never their values.
    let route: serde_json::Value = lk
        .route_api()
        .get(format!("{}/api/routes/user/john/code", lk.api))
        .header("authorization", format!("token {API_TOKEN}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(route["upstream_headers"]["Authorization"], "<hidden>");
    assert!(!route.to_string().contains("upstream-secret"));
    assert!(seen.headers.contains_key("host"));
    // The injected credential is never shown to anyone but the route API.
    let page = john
        .get("/hub/sharing/john/code")
        .await
        .text()
        .await
        .unwrap();
    assert!(!page.contains("upstream-secret"));
}
both_stores!(upstream_headers_are_injected_and_strip_prefix_is_honoured);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_hub_prefix_leaves_hub_paths_to_a_jupyterhub_behind_latchkey() {
    let hub = Upstream::spawn().await;
    let server = Upstream::spawn().await;
    let lk =
        Latchkey::start_with_env(None, "", &[("LATCHKEY_SERVER_HUB_PREFIX", "/latchkey/")]).await;
    assert_eq!(
        lk.post_route(
            "/",
            json!({"hub": true, "target": hub.target(), "jupyterhub": true})
        )
        .await,
        StatusCode::CREATED
    );
    lk.register_john(&server).await;
    let anon = lk.browser();
    // JupyterHub's own pages are JupyterHub's.
    let r = anon.get("/hub/login").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(hub.last().path, "/hub/login");
    // latchkey's pages moved, links and cookies with them.
    let r = anon.get("/user/john/").await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(
        r.headers()["location"],
        "/latchkey/login?next=%2Fuser%2Fjohn%2F"
    );
    let page = anon.get("/latchkey/login").await;
    assert_eq!(page.status(), StatusCode::OK);
    let set_cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("Path=/latchkey/"), "{set_cookie}");
    let html = page.text().await.unwrap();
    assert!(html.contains("action=\"/latchkey/login"));
    assert!(!html.contains("\"/hub/"));
    let xsrf = anon.cookie("_xsrf", "/latchkey/").unwrap();
    let r = anon
        .client
        .post(anon.url("/latchkey/login"))
        .form(&[
            ("username", "john"),
            ("password", PASSWORD),
            ("_xsrf", xsrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/latchkey/home");
    let r = anon
        .client
        .post(anon.url("/latchkey/api/share-codes/john/"))
        .header("x-xsrftoken", xsrf)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["accept_url"]
            .as_str()
            .unwrap()
            .starts_with("/latchkey/accept-share?code=")
    );
    assert_eq!(anon.get("/user/john/").await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_declared_in_the_config_file_keep_their_session_across_restarts() {
    let upstream = Upstream::spawn().await;
    let redis = Redis::start().await;
    let config = |target: &str| {
        format!(
            "[[routes]]\npath = \"/user/john/\"\ntarget = \"{target}\"\nuser = \"john\"\n\
             upstream_headers = {{ Authorization = \"token t\" }}\n"
        )
    };
    let lk = Latchkey::start(Some(&redis.url()), &config(&upstream.target())).await;
    let john = lk.signed_in("john").await;
    let nina = lk.signed_in("nina").await;
    let (code, _) = john.invite("john/", json!({})).await;
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(nina.get("/user/john/").await.status(), StatusCode::OK);
    assert_eq!(upstream.last().headers["authorization"], "token t");
    let nina_cookie = nina.cookie_header("/user/john/");
    lk.stop().await;

    // The same configuration again: the same session, so nina's grant holds.
    let lk = Latchkey::start(Some(&redis.url()), &config(&upstream.target())).await;
    let get = |lk: &Latchkey| {
        reqwest::Client::new()
            .get(lk.url("/user/john/"))
            .header("cookie", nina_cookie.clone())
            .send()
    };
    assert_eq!(get(&lk).await.unwrap().status(), StatusCode::OK);
    lk.stop().await;

    // The server moved: a new session, and the old grant is void.
    let moved = Upstream::spawn().await;
    let lk = Latchkey::start(Some(&redis.url()), &config(&moved.target())).await;
    assert_eq!(get(&lk).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(moved.hits(), 0);
}

#[test]
fn a_bad_route_in_the_config_file_is_reported() {
    let text = "[api]\ntoken = \"0123456789abcdef\"\n[[routes]]\npath = \"/a/../b\"\ntarget = \"http://x\"\n\
                [[routes]]\npath = \"/c\"\ntarget = \"nope\"\n";
    let problems = latchkey::Config::from_sources(text, &[])
        .unwrap_err()
        .join("\n");
    assert!(
        problems.contains("routes[0]") && problems.contains("routes[1]"),
        "{problems}"
    );
}
