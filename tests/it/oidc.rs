//! Users from an OpenID Connect provider (beyond the browser test against a real provider
//! tests/e2e/oidc.test.mjs): known to every instance on one Redis, reachable by a share with
//! the groups the provider gave them, and a provider that cannot be reached; and users named
//! by a trusted proxy in a header.

use std::time::Duration;

use latchkey::auth::Identity;
use latchkey::ids::{GroupName, UserName};
use reqwest::StatusCode;

use crate::helpers::{
    API_TOKEN, Backend, Browser, Latchkey, Rig, Upstream, closed_within, eventually,
};

/// Sign-in through a provider at an address where nothing listens (latchkey reads its
/// metadata at the first sign-in, not at start).
const OIDC: &str = r#"
[oidc]
issuer = "http://127.0.0.1:9"
client_id = "latchkey"
redirect_url = "http://127.0.0.1:1/hub/oauth_callback"
display_name = "Example ID"
"#;

/// A call of the users API on `lk`'s route API listener, with its token.
async fn users_api(lk: &Latchkey, method: reqwest::Method, rest: &str) -> reqwest::Response {
    lk.route_api()
        .request(method, format!("{}/api/users{rest}", lk.api))
        .header("authorization", format!("token {API_TOKEN}"))
        .send()
        .await
        .unwrap()
}

fn bob() -> Identity {
    Identity {
        name: UserName::parse("bob").unwrap(),
        groups: vec![GroupName::parse("lab").unwrap()],
    }
}

#[tokio::test]
async fn a_provider_user_is_known_to_every_instance_and_reaches_a_server_shared_with_their_group() {
    let rig = Rig::start_with(2, OIDC).await;
    let (a, b) = (&rig.instances[0], &rig.instances[1]);
    let upstream = Upstream::spawn().await;
    a.register_john(&upstream).await;
    let john = a.signed_in("john").await;

    // Before bob's first sign-in, neither he nor his group is known.
    for (kind, name) in [("user", "bob"), ("group", "lab")] {
        let r = john
            .sharing_form(&[
                ("action", "share"),
                ("kind", kind),
                ("name", name),
                ("role", "use"),
            ])
            .await;
        let html = r.text().await.unwrap();
        assert!(
            html.contains(&format!("There is no {kind} {name}.")),
            "{html}"
        );
    }

    // bob signs in through the provider at instance a (what the callback does once the
    // provider's ID token checked out); his browser then goes to instance b.
    let (_, session) = a
        .app
        .start_provider_login(bob(), "sub-of-bob")
        .await
        .unwrap();
    // A sign-in through the provider lasts [oidc] session_max_age (a day), not the local one.
    let login = a
        .app
        .store
        .get_login(&session.hash())
        .await
        .unwrap()
        .expect("the sign-in is stored");
    assert_eq!(login.expires_at - login.created_at, 86_400);
    let browser = Browser::new(&b.base);
    browser.jar.add_cookie_str(
        &format!("latchkey-session={}; Path=/", session.expose()),
        &b.base.parse().unwrap(),
    );
    let home = browser.get("/hub/home").await;
    assert_eq!(home.status(), StatusCode::OK, "instance b knows bob");
    assert!(home.text().await.unwrap().contains("bob"));
    assert_eq!(
        browser.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN,
        "nothing is shared with him yet"
    );

    // His group is known now: john shares with it, and bob gets in at instance b.
    let r = john
        .sharing_form(&[
            ("action", "share"),
            ("kind", "group"),
            ("name", "lab"),
            ("role", "use"),
        ])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        eventually(Duration::from_secs(5), async || {
            browser.get("/user/john/").await.status() == StatusCode::OK
        })
        .await,
        "bob reaches john's server through his group"
    );
    assert_eq!(
        upstream
            .last()
            .headers
            .get("x-latchkey-user")
            .and_then(|v| v.to_str().ok()),
        Some("bob")
    );

    // Removed through the users API at instance a: his WebSocket at instance b closes, and
    // his sign-in works nowhere (until he signs in at the provider again).
    let mut ws = browser
        .websocket("/user/john/ws")
        .await
        .expect("bob's WebSocket opens");
    let listed: serde_json::Value = users_api(a, reqwest::Method::GET, "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["users"][0]["name"], "bob");
    assert_eq!(listed["users"][0]["via"], "oidc");
    assert_eq!(listed["users"][0]["groups"], serde_json::json!(["lab"]));
    let users_before = rig.redis_cli(&["HGET", "lk:users", "bob"]);
    // (Put back below, for the checks that follow.)
    let removed = users_api(a, reqwest::Method::DELETE, "/bob").await;
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    assert!(
        closed_within(&mut ws, Duration::from_secs(1))
            .await
            .is_some(),
        "bob's WebSocket at the other instance closed"
    );
    assert_eq!(browser.get("/hub/home").await.status(), StatusCode::FOUND);
    let again = users_api(a, reqwest::Method::DELETE, "/bob").await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    let unauthorized = a
        .route_api()
        .get(format!("{}/api/users", a.api))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), StatusCode::FORBIDDEN);
    rig.redis_cli(&["HSET", "lk:users", "bob", users_before.trim()]);

    // The provider's user record is in Redis; the session id and code never are.
    let users = rig.redis_cli(&["HGETALL", "lk:users"]);
    assert!(
        users.contains("\"bob\"") && users.contains("\"lab\""),
        "{users}"
    );
    assert!(!rig.redis_cli(&["KEYS", "*"]).contains(session.expose()));

    // Another account at the provider that now calls itself bob does not become bob.
    let taken = b
        .app
        .start_provider_login(bob(), "sub-of-someone-else")
        .await;
    assert!(
        matches!(&taken, Err(latchkey::error::Error::Forbidden(m)) if m.contains("belongs to another account")),
        "{:?}",
        taken.err()
    );
    assert!(
        rig.redis_cli(&["HGET", "lk:users", "bob"])
            .contains("sub-of-bob"),
        "the record is unchanged"
    );

    // An instance whose allowed groups no longer include bob's does not let him in with the
    // same sign-in.
    let strict = Latchkey::start(
        Some(&rig.redis.url()),
        &OIDC.replace("display_name", "allowed_groups = [\"staff\"]\ndisplay_name"),
    )
    .await;
    let there = Browser::new(&strict.base);
    there.jar.add_cookie_str(
        &format!("latchkey-session={}; Path=/", session.expose()),
        &strict.base.parse().unwrap(),
    );
    let r = there.get("/user/john/").await;
    assert_eq!(r.status(), StatusCode::FOUND, "sent to sign in");
    strict.stop().await;

    // A sign-in proxy in front of another instance cannot hand out the provider's bob.
    let mixed = Latchkey::start_with_env(
        Some(&rig.redis.url()),
        &format!("{OIDC}{TRUSTED_HEADER}"),
        &[("LATCHKEY_SERVER_TRUSTED_PROXIES", "127.0.0.1")],
    )
    .await;
    let r = from_proxy(reqwest::Method::GET, mixed.url("/hub/home"), "bob")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("belongs to another account at the sign-in provider")
    );
    mixed.stop().await;
}

#[tokio::test]
async fn an_unreachable_provider_is_a_clear_502_and_passwords_still_work() {
    let lk = Latchkey::spawn_with(Backend::Memory, OIDC).await;
    let page = lk.browser().get("/hub/login?next=/hub/home").await;
    let html = page.text().await.unwrap();
    assert!(html.contains("Sign in with Example ID"), "{html}");
    assert!(
        html.contains("/hub/oauth_login?next=%2Fhub%2Fhome"),
        "{html}"
    );
    assert!(
        html.contains("id=\"password\""),
        "local users keep the password form"
    );

    let r = lk.browser().get("/hub/oauth_login?next=/hub/home").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(r.headers().contains_key("x-request-id"));
    assert!(
        r.headers()
            .get("set-cookie")
            .is_none_or(|c| { !c.to_str().unwrap().contains("latchkey-session") })
    );
    let body = r.text().await.unwrap();
    assert!(
        body.contains("The sign-in provider could not be reached"),
        "{body}"
    );
    assert!(!body.contains("127.0.0.1:9"), "no internal detail: {body}");

    // The callback without this browser's state is refused before the provider is asked.
    let r = lk
        .browser()
        .get("/hub/oauth_callback?code=abc&state=x.L2h1Yi9ob21l")
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    lk.signed_in("nina").await;
    lk.stop().await;
}

#[tokio::test]
async fn without_oidc_its_paths_are_not_pages() {
    let lk = Latchkey::spawn(Backend::Memory).await;
    for path in ["/hub/oauth_login", "/hub/oauth_callback?code=a&state=b"] {
        assert_eq!(lk.browser().get(path).await.status(), StatusCode::NOT_FOUND);
    }
    let html = lk.browser().get("/hub/login").await.text().await.unwrap();
    assert!(!html.contains("oauth_login"));
    lk.stop().await;
}

/// A request as the sign-in proxy in front sends it: its user header naming `user`; redirects
/// not followed.
fn from_proxy(method: reqwest::Method, url: String, user: &str) -> reqwest::RequestBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .request(method, url)
        .header("X-Forwarded-User", user)
}

/// A proxy in front that signs people in and names them in headers (oauth2-proxy's).
const TRUSTED_HEADER: &str = r#"
[trusted_header]
user = "X-Forwarded-User"
groups = "X-Forwarded-Groups"
logout_url = "https://auth.example.org/oauth2/sign_out"
"#;

#[tokio::test]
async fn a_user_named_by_a_trusted_proxy_is_signed_in_and_the_header_never_reaches_the_upstream() {
    let upstream = Upstream::spawn().await;
    // The test's requests come from 127.0.0.1: the trusted proxy.
    let lk = Latchkey::start_with_env(
        None,
        TRUSTED_HEADER,
        &[("LATCHKEY_SERVER_TRUSTED_PROXIES", "127.0.0.1")],
    )
    .await;
    lk.register_john(&upstream).await;
    let john = lk.signed_in("john").await;
    let proxy = |path: &str| {
        from_proxy(reqwest::Method::GET, lk.url(path), "Bob")
            .header("X-Forwarded-Groups", "lab, /physics, not a group")
    };

    let home = proxy("/hub/home").send().await.unwrap();
    assert_eq!(home.status(), StatusCode::OK);
    assert!(home.text().await.unwrap().contains("bob"));
    let r = proxy("/user/john/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "nothing shared yet");

    // bob's groups are known now: john shares with one of them.
    let r = john
        .sharing_form(&[
            ("action", "share"),
            ("kind", "group"),
            ("name", "physics"),
            ("role", "use"),
        ])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // The proxy's own credentials (its cookie, a token it passes on) stay with latchkey.
    let r = proxy("/user/john/")
        .header(
            "Cookie",
            "_oauth2_proxy=secret; _oauth2_proxy_1=more; theme=dark",
        )
        .header("Authorization", "Bearer id-token-of-bob")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-latchkey-user"], "bob");
    for h in ["x-forwarded-user", "x-forwarded-groups", "authorization"] {
        assert!(!seen.headers.contains_key(h), "{h} reached the upstream");
    }
    assert_eq!(seen.headers["cookie"], "theme=dark");

    // A request that names its user twice (a proxy that appends) is refused.
    let r = proxy("/hub/home")
        .header("X-Forwarded-User", "john")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A browser's state changes still need the XSRF token.
    let r = from_proxy(reqwest::Method::POST, lk.url("/hub/leave"), "bob")
        .form(&[("server", "john/")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Signing out goes to the proxy's own sign-out.
    let r = proxy("/hub/logout").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers()["location"],
        "https://auth.example.org/oauth2/sign_out"
    );

    // A name latchkey cannot use, or one of its own users, is refused.
    for (name, says) in [
        ("bob smith", "cannot be used here"),
        ("John", "is an account of latchkey"),
    ] {
        let r = from_proxy(reqwest::Method::GET, lk.url("/hub/home"), name)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{name}");
        assert!(r.text().await.unwrap().contains(says), "{name}");
    }
    lk.stop().await;
}

#[tokio::test]
async fn the_user_header_from_anyone_but_a_trusted_proxy_is_ignored() {
    let lk = Latchkey::start_with_env(
        None,
        TRUSTED_HEADER,
        &[("LATCHKEY_SERVER_TRUSTED_PROXIES", "10.0.0.1")],
    )
    .await;
    let r = from_proxy(reqwest::Method::GET, lk.url("/hub/home"), "bob")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND, "sent to sign in");
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/hub/login")
    );
    lk.stop().await;
}
